"""`specae convert`: survey FITS files (SDSS/BOSS, DESI, APOGEE, LAMOST) -> one specae HDF5 file."""

from __future__ import annotations

from specae.errors import SpecaeError


def _convert(args) -> None:
    from specae.data.hdf5 import write_h5
    from specae.data.readers import parse_mask_bits, read_many
    from specae.data.resample import parse_grid
    from specae.plumbing import expand_paths

    wave = None
    if args.grid and args.grid_from:
        raise SpecaeError("give either --grid or --grid-from, not both")
    if bool(args.catalogue) != bool(args.labels):
        raise SpecaeError("--catalogue and --labels go together: the table, and which of its columns to take")
    mask_bits = parse_mask_bits(args.mask_bits)     # checked before any file is read
    if args.grid:
        wave = parse_grid(args.grid)
    elif args.grid_from:
        from specae.data.hdf5 import H5Spectra
        with H5Spectra(args.grid_from) as h5:
            wave = h5.wave
    spectra = read_many(expand_paths(args.files), wave=wave, exposures=args.exposures, mask_bits=mask_bits,
                        catalogue=args.catalogue, labels=args.labels)
    write_h5(spectra, args.output)
    notes = []
    n_empty = int((~spectra.has_data).sum())
    if n_empty:
        notes.append(f"{n_empty} without any valid pixel")
    if args.catalogue:
        notes.append(f"{int((~spectra.labels['IN_CATALOGUE']).sum())} not in the catalogue")
    print(f"wrote {len(spectra)} spectra x {spectra.npix} pixels to {args.output}"
          + (f" ({'; '.join(notes)})" if notes else ""))


def register(sub) -> None:
    c = sub.add_parser("convert", help="read SDSS/BOSS, DESI, APOGEE or LAMOST FITS files into one specae HDF5 file")
    c.add_argument("files", nargs="+", metavar="FILE", help="FITS files (or glob patterns)")
    c.add_argument("-o", "--output", required=True, metavar="OUT.h5")
    c.add_argument("--grid", metavar="loglam:START:STOP:STEP",
                   help="common output grid (START/STOP in Angstrom, STEP in dex); default: from the inputs")
    c.add_argument("--grid-from", metavar="FILE.h5", help="use the wavelength grid of an existing specae file")
    c.add_argument("--exposures", action="store_true",
                   help="SDSS/BOSS full spec files: one spectrum per exposure (on the coadd grid) instead of the coadd")
    c.add_argument("--mask-bits", action="append", metavar="SURVEY=BITS",
                   help="which flag bits mask a pixel, e.g. sdss=FULLREJECT,NOSKY,BRIGHTSKY, lamost=0,1, apogee=all or "
                        "desi=none (bit numbers or names; repeat for several surveys); default: each survey's "
                        "documented choice")
    c.add_argument("--catalogue", metavar="TABLE", help="CSV or FITS table of labels, joined by file name or obsid")
    c.add_argument("--labels", metavar="COL,COL", help="the catalogue columns to add as labels (with their _err "
                                                       "columns); spectra not in the catalogue get NaN")
    c.set_defaults(func=_convert)
