"""Wavelength grids and the overlap matrix used for flux-conserving rebinning."""

from __future__ import annotations

import os

import numpy as np
import scipy.sparse as sp

from specae.errors import SpecaeError


# bytes per (spectrum, pixel): held in a Spectra (float32 flux and ivar, bool mask), and at the peak of rebinning
# onto a grid (the float64 sums, ivar and temporaries of the rebinning, then the new Spectra's arrays)
SPECTRA_BYTES = 9
REBIN_BYTES = 80


def available_memory() -> int:
    """Bytes of memory a process can expect to get: MemAvailable on Linux, else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) << 10 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def require_memory(n_spectra: int, npix: int, what: str, per_value: int = REBIN_BYTES) -> None:
    """SpecaeError before `n_spectra` x `npix` values of `per_value` bytes are allocated beyond the memory
    available: refused in one line, instead of the process being killed without a message."""
    need, have = float(n_spectra) * npix * per_value, available_memory()
    if need > have:
        raise SpecaeError(f"{what} would need about {need / 2 ** 30:.3g} GiB of memory, more than the "
                          f"{have / 2 ** 30:.3g} GiB available; use a coarser grid or fewer spectra at a time")


def checked_grid(wave) -> np.ndarray:
    """`wave` as a float64 (npix,) grid in Angstrom: finite, positive and strictly increasing, else SpecaeError."""
    try:
        wave = np.asarray(wave, dtype=np.float64)
    except (TypeError, ValueError):
        raise SpecaeError("wave does not hold numbers") from None
    if wave.ndim != 1:
        raise SpecaeError(f"wave must be 1-D (npix,), found shape {wave.shape}")
    if not np.all(np.isfinite(wave)) or np.any(wave <= 0):
        raise SpecaeError("wave must be finite and positive (Angstrom); it holds NaN/inf or values <= 0")
    if not np.all(np.diff(wave) > 0):
        raise SpecaeError("wave must be strictly increasing")
    return wave


def pixel_edges(wave: np.ndarray) -> np.ndarray:
    """(npix + 1,) pixel boundaries: midpoints between centres, ends mirrored outwards."""
    wave = np.asarray(wave, dtype=np.float64)
    if wave.size < 2:
        raise SpecaeError("a wavelength grid needs at least two pixels")
    mid = 0.5 * (wave[1:] + wave[:-1])
    return np.concatenate([[2 * wave[0] - mid[0]], mid, [2 * wave[-1] - mid[-1]]])


def overlap_pairs(edges: np.ndarray, left: np.ndarray, right: np.ndarray):
    """Overlaps of intervals [left_j, right_j] (sorted within each run) with pixels of boundaries `edges`.

    Returns (j, i, length) for every overlapping pair (interval j, pixel i), length in Angstrom > 0.
    """
    npix = edges.size - 1
    # each interval overlaps at most pixels lo..hi, found by bisection in the sorted edges
    lo = np.clip(np.searchsorted(edges, left, side="right") - 1, 0, npix - 1)
    hi = np.clip(np.searchsorted(edges, right, side="left") - 1, 0, npix - 1)
    counts = hi - lo + 1
    j = np.repeat(np.arange(left.size), counts)
    i = np.repeat(lo, counts) + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    length = np.minimum(right[j], edges[1:][i]) - np.maximum(left[j], edges[:-1][i])
    keep = length > 0
    return j[keep], i[keep], length[keep]


def rebin_matrix(old: np.ndarray, new: np.ndarray) -> sp.csr_matrix:
    """Sparse (len(new), len(old)) matrix of overlap lengths [Angstrom] between new and old pixels."""
    e_new = pixel_edges(new)
    j, i, length = overlap_pairs(pixel_edges(old), e_new[:-1], e_new[1:])
    return sp.csr_matrix((length, (j, i)), shape=(new.size, old.size))


def loglam_grid(start: float, stop: float, step: float) -> np.ndarray:
    """Log-linear grid from `start` to `stop` Angstrom with `step` in log10(Angstrom)."""
    if not (0 < start < stop < np.inf) or not 0 < step < np.inf:
        raise SpecaeError(f"bad log-lambda grid: start={start}, stop={stop}, step={step}")
    n = int(np.floor((np.log10(stop) - np.log10(start)) / step + 1e-9)) + 1
    # a grid not even one spectrum could be rebinned onto is refused before it is built
    require_memory(1, n, f"a log-lambda grid of {n} pixels ({start:g}-{stop:g} A, step {step:g} dex)")
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
