"""LAMOST low-resolution spectra, DR1 to the latest: one primary image whose rows the header's EXTEN0 names."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from specae.data.spectra import Spectra
from specae.data.surveys.fitsfile import fits_stem, is_image, open_fits, warn_mostly_masked
from specae.data.surveys.maskbits import DEFAULT_MASK_BITS, flagged
from specae.errors import SpecaeError

# LAMOST spectra are relatively flux-calibrated ("flux density given in relative unit",
# https://www.lamost.org/public/dr/algorithms/ff); the files carry no BUNIT, which would win if present
LAMOST_FLUX_UNIT = "relative"
# the Wavelength row (DR7+) is float32: its relative error is ~1e-7; a grid off by more is another grid
WAVE_RTOL = 1e-5


def _rows(head) -> list[str]:
    """The image rows' names from EXTEN0, lower case: DR1 'Flux Inverse Subcontinuum Andmask Ormask', DR7+
    'Flux, Inverse, Wavelength, Andmask, Ormask'."""
    return [w.lower() for w in re.split(r"[,\s]+", str(head.get("EXTEN0", ""))) if w]


def recognise(hdul) -> bool:
    """A 2-D primary image whose EXTEN0 names Flux and Inverse rows, on a COEFF0/COEFF1 log-linear grid."""
    if not is_image(hdul, 0) or len(hdul[0].shape) != 2:
        return False
    head = hdul[0].header
    return {"flux", "inverse"} <= set(_rows(head)) and "COEFF0" in head and "COEFF1" in head


def read_lamost(path, mask_bits: int | None = None) -> Spectra:
    """LAMOST low-resolution spectrum file (.fits or .fits.gz): one spectrum, vacuum wavelengths, heliocentric.

    Rows by the header's EXTEN0 (flux, ivar "Inverse", andmask; DR1's third row is the continuum-subtracted
    flux, DR7+'s the wavelength). Grid: log10 lambda = COEFF0 + i COEFF1, checked against the Wavelength row
    where there is one. Pixels whose andmask (bad in every exposure) holds any of `mask_bits` (default
    ``maskbits.DEFAULT_MASK_BITS["lamost"]``: any bit) are masked. Labels from the header: CLASS, SUBCLASS,
    Z, Z_ERR, the S/N per band SNRU, SNRG, SNRR, SNRI, SNRZ (DR1 writes SN_U ...), OBSID (DR7+). ids: the
    OBSID, else the file name without its suffix. Flux unit: the header's BUNIT, else "relative".
    """
    with open_fits(path, "LAMOST") as hdul:
        return read(hdul, Path(path), mask_bits)


def read(hdul, path: Path, mask_bits: int | None = None) -> Spectra:
    bits = DEFAULT_MASK_BITS["lamost"] if mask_bits is None else mask_bits
    if not recognise(hdul):
        raise SpecaeError(f"{path}: not a LAMOST spectrum (a primary image with EXTEN0 naming Flux and Inverse rows, "
                          "and COEFF0/COEFF1)")
    head, names = hdul[0].header, _rows(hdul[0].header)
    data = np.asarray(hdul[0].data, dtype=np.float64)
    if data.shape[0] != len(names):
        raise SpecaeError(f"{path}: the LAMOST image has {data.shape[0]} rows but EXTEN0 names {len(names)} "
                          f"({head['EXTEN0']})")
    row = dict(zip(names, data))
    npix = data.shape[1]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):   # absurd COEFFs: Spectra refuses the grid
        wave = 10 ** (float(head["COEFF0"]) + float(head["COEFF1"]) * np.arange(npix))
        off = float(np.max(np.abs(row["wavelength"] / wave - 1))) if "wavelength" in row else 0.0
    if "wavelength" in row:
        if not off <= WAVE_RTOL:     # NaN too
            raise SpecaeError(f"{path}: the Wavelength row differs from the grid 10^(COEFF0 + i COEFF1) by up to "
                              f"{off:.2g} of the wavelength")
    flux, ivar = row["flux"][None], row["inverse"][None]
    andmask = row.get("andmask", np.zeros(npix))
    bad = flagged(np.nan_to_num(andmask).astype(np.int64), bits)[None]

    labels = {k: np.array([str(head.get(k, "")).strip()]) for k in ("CLASS", "SUBCLASS")}
    labels |= {k: np.array([float(head.get(k, np.nan))]) for k in ("Z", "Z_ERR")}
    labels |= {f"SNR{b}": np.array([float(head.get(f"SNR{b}", head.get(f"SN_{b}", np.nan)))]) for b in "UGRIZ"}
    if "OBSID" in head:
        labels["OBSID"] = np.array([int(head["OBSID"])])
    ids = [str(labels["OBSID"][0]) if "OBSID" in labels else fits_stem(path)]
    warn_mostly_masked(bad, np.isfinite(flux) & (ivar > 0), ids, path)
    unit = str(head.get("BUNIT", "")).strip() or LAMOST_FLUX_UNIT
    return Spectra(wave, flux, ivar, bad, labels, ids, meta={"flux_unit": unit, "source": "lamost"})
