"""DESI coadds (B/R/Z arms merged onto one grid, redrock labels) and desigal stack files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from specae.data.spectra import Spectra
from specae.data.surveys.fitsfile import open_fits, warn_mostly_masked
from specae.data.surveys.maskbits import DEFAULT_MASK_BITS, flagged
from specae.data.surveys.sdss import FLUX_UNIT
from specae.errors import SpecaeError


def recognise(hdul) -> bool:
    """A DESI coadd ({B,R,Z}_WAVELENGTH ...) or stack (FLUX, IVAR, WAVE)."""
    names = {h.name for h in hdul}
    return any(n.endswith("_WAVELENGTH") for n in names) or {"FLUX", "IVAR", "WAVE"} <= names

def read_desi(path, redrock=None, mask_bits: int | None = None) -> Spectra:
    """DESI coadd (B/R/Z arms merged onto one grid) or a desigal stack file (FLUX/IVAR/WAVE).

    Coadd arms share one linear 0.8 A grid; the merged grid is their union, and where arms overlap the
    flux is the ivar-weighted mean and ivar the sum. Pixels whose ``{arm}_MASK`` holds any of `mask_bits`
    (default ``maskbits.DEFAULT_MASK_BITS["desi"]``: any bit) are masked. ids are TARGETIDs.
    Labels Z, ZERR, ZWARN, SPECTYPE come from `redrock` (default: the sibling file named with
    'coadd' -> 'redrock', if it exists), matched by TARGETID; targets it lacks get NaN/-1/"".
    Stacks are rest-frame and normalised; their STACKINFO columns become labels.
    """
    with open_fits(path, "DESI") as hdul:
        return read(hdul, Path(path), redrock, mask_bits)


def read(hdul, path: Path, redrock=None, mask_bits: int | None = None) -> Spectra:
    bits = DEFAULT_MASK_BITS["desi"] if mask_bits is None else mask_bits
    if "WAVE" in hdul:
        return _stack(hdul, path)
    arms = sorted((h.name[:-len("_WAVELENGTH")] for h in hdul if h.name.endswith("_WAVELENGTH")),
                  key=lambda a: hdul[f"{a}_WAVELENGTH"].data[0])
    if not arms:
        from specae.data.surveys.detect import sniff

        raise SpecaeError(f"{path}: not a DESI file (no X_WAVELENGTH or WAVE HDU); it is {sniff(hdul) or 'unknown'}")
    waves = [np.asarray(hdul[f"{a}_WAVELENGTH"].data, dtype=np.float64) for a in arms]
    # pixel index of every arm pixel on the shared linear grid (overlap wavelengths differ by ~1e-10 A)
    step, w0 = float(np.median(np.diff(waves[0]))), min(w[0] for w in waves)
    idx = [np.rint((w - w0) / step).astype(np.int64) for w in waves]
    if any(np.abs(w - (w0 + i * step)).max() > 1e-3 * step for w, i in zip(waves, idx)):
        raise SpecaeError(f"{path}: the DESI arms {arms} are not on one common linear wavelength grid")
    wave = w0 + step * np.arange(max(i[-1] for i in idx) + 1)
    nspec = hdul[f"{arms[0]}_FLUX"].shape[0]
    wsum, wflux = np.zeros((nspec, wave.size)), np.zeros((nspec, wave.size))
    flagged_all, usable_all = [], []
    for arm, w, i in zip(arms, waves, idx):
        wave[i] = w  # keep the file's own wavelengths
        flux, ivar, flags = (np.asarray(hdul[f"{arm}_{k}"].data) for k in ("FLUX", "IVAR", "MASK"))
        if not flux.shape == ivar.shape == flags.shape == (nspec, w.size):
            raise SpecaeError(f"{arm}_FLUX, {arm}_IVAR, {arm}_MASK have shapes {flux.shape}, {ivar.shape}, "
                              f"{flags.shape}; expected {nspec} spectra x {w.size} pixels")
        flux, ivar = flux.astype(np.float64), ivar.astype(np.float64)
        usable = np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0)
        bad = flagged(flags, bits)
        flagged_all.append(bad)
        usable_all.append(usable)
        good = usable & ~bad
        ivar = np.where(good, ivar, 0.0)
        wsum[:, i] += ivar
        wflux[:, i] += ivar * np.where(good, flux, 0.0)
    flux = wflux / np.where(wsum > 0, wsum, 1.0)

    targetid = np.asarray(hdul["FIBERMAP"].data["TARGETID"])
    if targetid.shape != (nspec,):
        raise SpecaeError(f"{path}: FIBERMAP has {targetid.size} rows for {nspec} spectra")
    # the arms' own pixels (their overlap counted twice)
    warn_mostly_masked(np.hstack(flagged_all), np.hstack(usable_all), targetid, path)
    return Spectra(wave, flux, wsum, wsum == 0, _redrock_labels(path, redrock, targetid), targetid.astype(str),
                   meta={"flux_unit": FLUX_UNIT, "source": "desi"})


def _redrock_labels(coadd: Path, redrock, targetid: np.ndarray) -> dict:
    """Z, ZERR, ZWARN, SPECTYPE for each TARGETID from a redrock file's REDSHIFTS HDU ({} if none)."""
    if redrock is None:
        sibling = coadd.with_name(coadd.name.replace("coadd", "redrock"))
        if "coadd" not in coadd.name or not sibling.is_file():
            return {}
        redrock = sibling
    with open_fits(redrock, "DESI redrock") as hdul:
        z = hdul["REDSHIFTS"].data
        tid = np.asarray(z["TARGETID"])
        order = np.argsort(tid)
        pick = order[np.clip(np.searchsorted(tid, targetid, sorter=order), 0, tid.size - 1)]
        found = tid[pick] == targetid
        return {"Z": np.where(found, z["Z"][pick], np.nan),
                "ZERR": np.where(found, z["ZERR"][pick], np.nan),
                "ZWARN": np.where(found, z["ZWARN"][pick], -1),  # -1: no redrock row for this target
                "SPECTYPE": np.where(found, np.char.strip(np.asarray(z["SPECTYPE"][pick]).astype(str)), "")}


def _stack(hdul, path: Path) -> Spectra:
    wave = np.asarray(hdul["WAVE"].data, dtype=np.float64)
    flux = np.atleast_2d(np.asarray(hdul["FLUX"].data, dtype=np.float64))
    ivar = np.atleast_2d(np.asarray(hdul["IVAR"].data, dtype=np.float64))
    labels, ids = {}, np.array([f"{path.stem}-{k}" for k in range(len(flux))])
    if "STACKINFO" in hdul and len(hdul["STACKINFO"].data) == len(flux):
        info = hdul["STACKINFO"].data
        labels = {c: np.asarray(info[c]) for c in info.columns.names if np.asarray(info[c]).ndim == 1}
        if "STACKID" in labels:
            ids = np.array([f"{path.stem}-{k}" for k in labels["STACKID"]])
    bad = ~np.isfinite(flux) | ~np.isfinite(ivar)
    return Spectra(wave, np.where(bad, 0.0, flux), np.where(bad, 0.0, ivar), bad, labels, ids,
                   meta={"flux_unit": "normalised", "source": "desi", "frame": "rest"})
