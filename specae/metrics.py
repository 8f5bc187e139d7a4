"""Quality figures for denoised spectra against a known truth."""

from __future__ import annotations

import numpy as np


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
