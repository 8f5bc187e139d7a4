"""Wavelength grids and the overlap matrix used for flux-conserving rebinning."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from specae.errors import SpecaeError


def pixel_edges(wave: np.ndarray) -> np.ndarray:
    """(npix + 1,) pixel boundaries: midpoints between centres, ends mirrored outwards."""
    wave = np.asarray(wave, dtype=np.float64)
    if wave.size < 2:
        raise SpecaeError("a wavelength grid needs at least two pixels")
    mid = 0.5 * (wave[1:] + wave[:-1])
    return np.concatenate([[2 * wave[0] - mid[0]], mid, [2 * wave[-1] - mid[-1]]])


def rebin_matrix(old: np.ndarray, new: np.ndarray) -> sp.csr_matrix:
    """Sparse (len(new), len(old)) matrix of overlap lengths [Angstrom] between new and old pixels."""
    e_old, e_new = pixel_edges(old), pixel_edges(new)
    # every pair (new j, old i) that can overlap, found by merging the two sorted edge lists
    lo = np.clip(np.searchsorted(e_old, e_new[:-1], side="right") - 1, 0, old.size - 1)
    hi = np.clip(np.searchsorted(e_old, e_new[1:], side="left") - 1, 0, old.size - 1)
    counts = hi - lo + 1
    rows = np.repeat(np.arange(new.size), counts)
    cols = np.repeat(lo, counts) + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    overlap = (np.minimum(e_new[1:][rows], e_old[1:][cols]) - np.maximum(e_new[:-1][rows], e_old[:-1][cols]))
    keep = overlap > 0
    return sp.csr_matrix((overlap[keep], (rows[keep], cols[keep])), shape=(new.size, old.size))


def loglam_grid(start: float, stop: float, step: float) -> np.ndarray:
    """Log-linear grid from `start` to `stop` Angstrom with `step` in log10(Angstrom)."""
    if not (0 < start < stop) or step <= 0:
        raise SpecaeError(f"bad log-lambda grid: start={start}, stop={stop}, step={step}")
    n = int(np.floor((np.log10(stop) - np.log10(start)) / step + 1e-9)) + 1
    return 10 ** (np.log10(start) + step * np.arange(n))


def parse_grid(text: str) -> np.ndarray:
    """Parse a CLI grid spec 'loglam:START:STOP:STEP' (START/STOP in Angstrom, STEP in dex)."""
    parts = text.split(":")
    if len(parts) != 4 or parts[0] != "loglam":
        raise SpecaeError(f"grid {text!r} is not of the form loglam:START:STOP:STEP")
    try:
        start, stop, step = map(float, parts[1:])
    except ValueError:
        raise SpecaeError(f"grid {text!r} has a value that is not a number") from None
    return loglam_grid(start, stop, step)
