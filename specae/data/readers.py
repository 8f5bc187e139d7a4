"""Readers for survey spectrum files: SDSS/BOSS spec and spec-lite, DESI coadds and stacks, APOGEE, LAMOST.

Each reader returns a :class:`.Spectra` (wave in Angstrom, flux/ivar of shape (N, npix)). Formats are
recognised from a file's HDUs and headers, never its name (`specae.data.surveys.detect`); each survey has its
module in `specae.data.surveys`. Anything wrong with a file (missing, not FITS, not a spectrum, a column
missing, damaged or truncated) raises :class:`.SpecaeError` with one line naming the file; masked bad pixels
give one warning naming it, and a spectrum of which the survey's flags mask more than 40 % of the pixels a
warning naming it and its file. Which flag bits mask a pixel: `mask_bits` (see `parse_mask_bits`). Files are
opened read-only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from specae.data.catalogue import Catalogue
from specae.data.resample import SPECTRA_BYTES, loglam_grid, require_memory
from specae.data.spectra import Spectra
from specae.data.surveys import apogee, desi, lamost, sdss
from specae.data.surveys.apogee import APOGEE_BAD_BITS, APOGEE_HUGE_ERR, APOGEE_PARAMS, read_apogee
from specae.data.surveys.desi import read_desi
from specae.data.surveys.detect import sniff
from specae.data.surveys.fitsfile import open_fits
from specae.data.surveys.lamost import read_lamost
from specae.data.surveys.maskbits import DEFAULT_MASK_BITS, parse_mask_bits, resolve_mask_bits
from specae.data.surveys.sdss import FLUX_UNIT, read_sdss
from specae.errors import SpecaeError, one_count_warning, one_masking_warning

__all__ = ["APOGEE_BAD_BITS", "APOGEE_HUGE_ERR", "APOGEE_PARAMS", "DEFAULT_MASK_BITS", "FLUX_UNIT", "detect_format",
           "parse_mask_bits", "read_apogee", "read_desi", "read_lamost", "read_many", "read_sdss", "read_spectra",
           "stack_spectra"]


def detect_format(path) -> str:
    """Survey format of a spectrum file: 'sdss', 'desi', 'apogee' or 'lamost' (from its HDUs, not its name)."""
    with open_fits(path) as hdul:
        return _require_format(hdul, path)


def _require_format(hdul, path) -> str:
    fmt = sniff(hdul)
    if fmt is None:
        layout = ", ".join(h.name or f"HDU{i}" for i, h in enumerate(hdul))
        raise SpecaeError(f"{path}: FITS file is not a recognised SDSS, DESI, APOGEE or LAMOST spectrum "
                          f"(HDUs: {layout})")
    return fmt


def read_spectra(path, exposures: bool = False, mask_bits=None) -> Spectra:
    """Read any supported spectrum file, dispatching on :func:`detect_format`.

    exposures: SDSS/BOSS full spec files only: one spectrum per exposure instead of the coadd (see
    :func:`.read_sdss`). mask_bits: which flag bits mask a pixel, per survey: None (each survey's documented
    default), `SURVEY=BITS` text(s) (:func:`.parse_mask_bits`) or a dict survey -> int.
    """
    bits = resolve_mask_bits(mask_bits)
    with open_fits(path) as hdul:
        fmt = _require_format(hdul, path)
        if fmt == "sdss":
            return sdss.read(hdul, Path(path), exposures, bits["sdss"])
        if exposures:
            raise SpecaeError(f"per-exposure spectra come from SDSS/BOSS full spec files; this is a {fmt.upper()} file")
        if fmt == "desi":
            return desi.read(hdul, Path(path), mask_bits=bits["desi"])
        return {"apogee": apogee.read, "lamost": lamost.read}[fmt](hdul, Path(path), bits[fmt])


def read_many(paths, wave=None, exposures: bool = False, mask_bits=None, catalogue=None, labels=None) -> Spectra:
    """Read several files onto one grid and stack them (with `exposures`, each file's exposures).

    wave, and the stacking: see :func:`stack_spectra`. mask_bits: see :func:`read_spectra`. Pixels masked
    for bad values give one warning for all files, and so do the spectra mostly masked by their flags.
    catalogue, labels: a table (a CSV or FITS file, or an astropy Table) and the names of its columns to add
    as labels, each with its ``_err`` column when there is one, joined by file name or obsid, with the bool label
    IN_CATALOGUE (:class:`specae.data.catalogue.Catalogue`); checked before any file is read.
    """
    paths = list(paths)
    if not paths:
        raise SpecaeError("read_many: no files given")
    bits = resolve_mask_bits(mask_bits)
    table = None if catalogue is None else Catalogue.read(catalogue, labels or [])
    with one_masking_warning(f"{len(paths)} files"), one_count_warning():
        items = [read_spectra(p, exposures, bits) for p in paths]
    out = stack_spectra(items, wave, [str(p) for p in paths])
    return out if table is None else table.join(out, np.repeat([str(p) for p in paths], [len(s) for s in items]))


def stack_spectra(items: list[Spectra], wave=None, names=None) -> Spectra:
    """Spectra of several sources (files) rebinned onto one grid and concatenated.

    wave: target grid in Angstrom; default a log-linear grid with the median of the items' median log10
    steps, covering the union of their ranges. Items not on it are rebinned with `Spectra.resample`. Labels
    missing from some items are kept, filled with NaN (numeric) or "" (string). All items must share flux unit
    and frame (normalise/shift them first otherwise). names: each item's name (a file) for errors.
    """
    names = names or [f"item {k}" for k in range(len(items))]
    for key in ("flux_unit", "frame"):
        for p, s in zip(names, items):
            if s.meta[key] != items[0].meta[key]:
                raise SpecaeError(f"{p} has {key} {s.meta[key]!r} but {names[0]} has {items[0].meta[key]!r}; "
                                  "read them separately")
    if wave is None:
        step = float(np.median([np.median(np.diff(np.log10(s.wave))) for s in items]))
        # half a step of headroom so float rounding in `step` cannot drop the last pixel of the union
        wave = loglam_grid(min(s.wave[0] for s in items), max(s.wave[-1] for s in items) * 10 ** (0.5 * step), step)
    wave = np.asarray(wave, dtype=np.float64)
    # the rebinned items and their concatenation are held at once
    require_memory(sum(map(len, items)), wave.size, f"{sum(map(len, items))} spectra on a grid of {wave.size} pixels",
                   2 * SPECTRA_BYTES)
    items = [s if np.array_equal(s.wave, wave) else s.resample(wave) for s in items]

    kinds = {}
    for s in items:
        for k, v in s.labels.items():
            kinds.setdefault(k, v.dtype.kind in "USO")
    for s in items:
        for k, is_str in kinds.items():
            if k not in s.labels:
                s.labels[k] = np.full(len(s), "" if is_str else np.nan)
    out = Spectra.concatenate(items)
    out.meta["source"] = "+".join(dict.fromkeys(s.meta["source"] for s in items))
    return out
