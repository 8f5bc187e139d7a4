"""Quality figures for denoised spectra against a known truth."""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.special import erf


def rmse(pred: np.ndarray, truth: np.ndarray, where: np.ndarray | None = None) -> float:
    """Root-mean-square difference over the pixels selected by `where` (default: all)."""
    d = (pred - truth) if where is None else (pred - truth)[where]
    return float(np.sqrt(np.mean(d ** 2)))


def coverage(pred: np.ndarray, sigma: np.ndarray, truth: np.ndarray, k: float = 1.0,
             where: np.ndarray | None = None) -> float:
    """Fraction of pixels whose true value lies within +-k sigma of the prediction (0.683 for k=1 if calibrated)."""
    inside = np.abs(pred - truth) <= k * sigma
    return float(np.mean(inside if where is None else inside[where]))


def error_over_sigma(pred: np.ndarray, sigma: np.ndarray, truth: np.ndarray, where: np.ndarray | None = None) -> float:
    """RMS of (prediction - truth) / sigma over the selected pixels with a finite sigma: 1 when sigma is right
    in variance, below 1 when it is too wide. With heavy-tailed errors +-1 sigma can hold 68 % while this is
    far from 1, so a calibration is judged on both."""
    ok = np.isfinite(sigma) & (sigma > 0)
    if where is not None:
        ok &= where
    return float(np.sqrt(np.mean(((pred - truth)[ok] / sigma[ok]) ** 2)))


def gaussian_coverage(k: float) -> float:
    """Probability that a Gaussian value lies within +-k sigma of its mean (0.683 for k=1, 0.954 for k=2)."""
    return float(erf(k / np.sqrt(2)))


def quantile_bins(values: np.ndarray, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Equal-count bins of a per-spectrum quantity (e.g. S/N terciles): edges (n+1,) and members (n, N) bool;
    the last bin includes its upper edge, so every value is in exactly one bin."""
    edges = np.quantile(values, np.linspace(0, 1, n + 1))
    index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, n - 1)
    return edges, index == np.arange(n)[:, None]


def random_windows(where: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """(N, npix) weights, 1 on `length` adjacent pixels all inside `where` (N, npix), placed uniformly at
    random among such places in each spectrum; all 0 in spectra without room for one."""
    n, npix = where.shape
    if length > npix:
        return np.zeros((n, npix))
    count = np.pad(np.cumsum(where, axis=1), ((0, 0), (1, 0)))
    fits = count[:, length:] - count[:, :-length] == length          # (N, npix - length + 1): window start ok
    start = np.argmax(np.where(fits, rng.uniform(size=fits.shape), -1.0), axis=1)
    pix = np.arange(npix)
    inside = (pix >= start[:, None]) & (pix < start[:, None] + length)
    return (inside & fits.any(axis=1)[:, None]).astype(float)


def sum_coverage(pred: np.ndarray, truth: np.ndarray, sum_variance: Callable[[np.ndarray], np.ndarray],
                 where: np.ndarray, length: int, windows: int = 3, k: float = 1.0, seed=0) -> float | None:
    """Fraction of sums of `length` adjacent pixels inside `where` whose true value lies within +-k sigma of
    the predicted sum, sigma^2 = sum_variance(weights (N, npix)) -> (N,) (from the pixel covariance:
    neighbouring denoised pixels are correlated, so per-pixel sigmas alone misstate a sum's). `windows`
    random windows per spectrum; None when no spectrum has room for one. 0.683 for k=1 when calibrated."""
    rng = np.random.default_rng(seed)
    inside = []
    for _ in range(windows):
        w = random_windows(where, length, rng)
        has = w.any(axis=1)
        err = np.abs(((pred - truth) * w).sum(axis=1))
        inside.append((err <= k * np.sqrt(sum_variance(w)))[has])
    inside = np.concatenate(inside)
    return float(inside.mean()) if inside.size else None
