"""SDSS/BOSS spec and spec-lite files (also `gelato-*.fits`, and files whose HDUs lost their names)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from specae.data.spectra import Spectra
from specae.data.surveys.fitsfile import columns, is_table, open_fits, warn_mostly_masked
from specae.data.surveys.maskbits import DEFAULT_MASK_BITS, flagged
from specae.errors import SpecaeError

FLUX_UNIT = "1e-17 erg/s/cm2/A"
# SDSS catalogue HDU: a specObj row in SDSS-I/II spec files, an spAll row in BOSS/eBOSS ones
SDSS_CATALOGUES = ("SPECOBJ", "SPALL")
SDSS_LABELS = ("Z", "Z_ERR", "ZWARNING")
SDSS_STRING_LABELS = ("CLASS", "SUBCLASS")
COADD_COLUMNS = {"flux", "loglam", "ivar"}


def coadd_index(hdul) -> int | None:
    """Index of the coadd table: HDU COADD, or (HDUs without names, as other tools rewrite spec files) HDU 1
    when its columns are the coadd's; None if neither."""
    names = [h.name for h in hdul]
    if "COADD" in names:
        i = names.index("COADD")
        return i if is_table(hdul, i) and "loglam" in columns(hdul[i]) else None
    return 1 if is_table(hdul, 1) and COADD_COLUMNS <= columns(hdul[1]) else None


def read_sdss(path, exposures: bool = False, mask_bits: int | None = None) -> Spectra:
    """SDSS/BOSS spec or spec-lite file (also ``gelato-*.fits``), flux in 1e-17 erg/s/cm2/A.

    The coadd (HDU COADD, or HDU 1 of a file whose HDUs carry no names): one spectrum, pixels whose
    ``and_mask`` (bad in every exposure) holds any of `mask_bits` masked (default
    ``maskbits.DEFAULT_MASK_BITS["sdss"]``: FULLREJECT, NOSKY, BRIGHTSKY). Labels from the catalogue HDU,
    SPECOBJ (SDSS-I/II) or SPALL (BOSS) (unnamed: HDU 2 with columns Z and CLASS): Z, Z_ERR, ZWARNING, CLASS,
    SUBCLASS (those present; strings stripped). ids: PLATE-MJD-FIBERID, else the file stem.

    exposures=True (full spec files): one spectrum per exposure HDU (HDU 4+, one per camera and
    exposure, EXTNAME like ``b1-00123456-00123455-00123450``), rebinned onto the coadd's grid with
    `Spectra.resample`, so pixels outside the camera's range are masked; pixels whose ``mask`` holds any of
    `mask_bits` masked. Labels: the coadd's, plus EXPOSURE (the EXTNAME, or HDUn), CAMERA (b1, r1, b2, r2)
    and EXP_MJD (exposure start, MJD in TAI, from TAI-BEG; NaN if absent). ids: PLATE-MJD-FIBERID:EXTNAME.
    """
    with open_fits(path, "SDSS spec") as hdul:
        return read(hdul, Path(path), exposures, mask_bits)


def read(hdul, path: Path, exposures: bool = False, mask_bits: int | None = None) -> Spectra:
    bits = DEFAULT_MASK_BITS["sdss"] if mask_bits is None else mask_bits
    i = coadd_index(hdul)
    if i is None:
        raise SpecaeError(f"{path}: not an SDSS spec file (no COADD table with flux, loglam and ivar)")
    labels, ident = _catalogue(hdul, path, i)
    wave, flux, ivar, bad = _table(hdul[i].data, bits)
    warn_mostly_masked(bad, ivar > 0, [ident], path)
    coadd = Spectra(wave, flux, ivar, bad, labels, [ident], meta={"flux_unit": FLUX_UNIT, "source": "sdss"})
    return _exposures(hdul, coadd, i, bits) if exposures else coadd


def _table(t, bits: int) -> tuple:
    """(wave (npix,) Angstrom, flux, ivar, pixels flagged with `bits` (1, npix)) from an SDSS table of
    loglam/flux/ivar/mask."""
    loglam = np.asarray(t["loglam"], dtype=np.float64)
    # loglam is float32 (~0.005 A error); the coadd grid is exact multiples of 1e-4 dex, so restore it
    snapped = np.round(loglam, 4)
    if np.allclose(snapped, loglam, rtol=0, atol=1e-6):
        loglam = snapped
    flags = t["and_mask"] if "and_mask" in columns(t) else t["mask"]
    with np.errstate(over="ignore"):       # absurd loglam -> inf, which Spectra refuses with a clear message
        wave = 10 ** loglam
    return wave, np.asarray(t["flux"])[None], np.asarray(t["ivar"])[None], flagged(flags, bits)[None]


def _catalogue(hdul, path: Path, coadd: int) -> tuple[dict, str]:
    """(labels, each (1,), and the PLATE-MJD-FIBERID id) from the catalogue HDU; ({}, file stem) without one."""
    name = next((n for n in SDSS_CATALOGUES if n in hdul), None)
    if name is None and coadd == 1 and is_table(hdul, 2) and {"z", "class"} <= columns(hdul[2]):
        name = 2
    table = hdul[name].data if name is not None else None
    if table is None or len(table) == 0:
        return {}, path.stem
    # columns of the first row taken one by one: slicing a wide spAll FITS_rec rebuilds its ~1000 column objects
    cols = columns(hdul[name])
    row = {k: np.asarray(table.field(k)[:1]) for k in SDSS_LABELS + SDSS_STRING_LABELS + ("PLATE", "MJD", "FIBERID")
           if k.lower() in cols}
    labels = {k: row[k] for k in SDSS_LABELS if k in row}
    labels |= {k: np.char.strip(row[k].astype(str)) for k in SDSS_STRING_LABELS if k in row}
    if not {"PLATE", "MJD", "FIBERID"} <= set(row):
        return labels, path.stem
    return labels, f"{int(row['PLATE'][0]):04d}-{int(row['MJD'][0]):05d}-{int(row['FIBERID'][0]):04d}"


def _exposures(hdul, coadd: Spectra, coadd_hdu: int, bits: int) -> Spectra:
    """The exposure HDUs of a full spec file as spectra on `coadd`'s grid (see `read_sdss`)."""
    hdus = [(i, h) for i, h in enumerate(hdul) if i != coadd_hdu and is_table(hdul, i)
            and {"loglam", "flux", "ivar"} <= columns(h)]
    if not hdus:
        raise SpecaeError("has no per-exposure HDUs (a spec-lite file?); exposures need the full spec- file")
    items = []
    for i, h in hdus:
        name = str(h.header.get("EXTNAME", h.name)).strip() or f"HDU{i}"
        labels = {**coadd.labels, "EXPOSURE": np.array([name]), "CAMERA": np.array([name.split("-")[0].lower()]),
                  "EXP_MJD": np.array([float(h.header.get("TAI-BEG", np.nan)) / 86400])}
        try:
            items.append(Spectra(*_table(h.data, bits), labels, [f"{coadd.ids[0]}:{name}"], meta=coadd.meta)
                         .resample(coadd.wave))
        except SpecaeError as e:
            raise SpecaeError(f"exposure HDU {name}: {e}") from None
    return Spectra.concatenate(items)
