"""`specae convert`: survey FITS files -> one specae HDF5 file."""

from __future__ import annotations

from specae.errors import SpecaeError


def _convert(args) -> None:
    from specae.data.hdf5 import write_h5
    from specae.data.readers import read_many
    from specae.data.resample import parse_grid
    from specae.paths import expand_paths

    wave = None
    if args.grid and args.grid_from:
        raise SpecaeError("give either --grid or --grid-from, not both")
    if args.grid:
        wave = parse_grid(args.grid)
    elif args.grid_from:
        from specae.data.hdf5 import H5Spectra
        with H5Spectra(args.grid_from) as h5:
            wave = h5.wave
    spectra = read_many(expand_paths(args.files), wave=wave, exposures=args.exposures)
    write_h5(spectra, args.output)
    n_empty = int((~spectra.has_data).sum())
    print(f"wrote {len(spectra)} spectra x {spectra.npix} pixels to {args.output}"
          + (f" ({n_empty} without any valid pixel)" if n_empty else ""))


def register(sub) -> None:
    c = sub.add_parser("convert", help="read SDSS/DESI/APOGEE FITS files into one specae HDF5 file")
    c.add_argument("files", nargs="+", metavar="FILE", help="FITS files (or glob patterns)")
    c.add_argument("-o", "--output", required=True, metavar="OUT.h5")
    c.add_argument("--grid", metavar="loglam:START:STOP:STEP",
                   help="common output grid (START/STOP in Angstrom, STEP in dex); default: from the inputs")
    c.add_argument("--grid-from", metavar="FILE.h5", help="use the wavelength grid of an existing specae file")
    c.add_argument("--exposures", action="store_true",
                   help="SDSS/BOSS full spec files: one spectrum per exposure (on the coadd grid) instead of the coadd")
    c.set_defaults(func=_convert)
