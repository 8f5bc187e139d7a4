"""Calibrating the denoised per-pixel sigma against held-out noisy data (no truth needed).

For a held-out spectrum x with noise variance 1/ivar, a denoised mean m whose error has variance s^2
predicts E[(x - m)^2] = 1/ivar + s^2. Summed over many validation pixels, the excess of the observed
residuals over the noise, sum((x - m)^2 ivar - 1), measures the true error variance of m; comparing it
with the predicted sum(s^2 ivar) gives one factor for all sigmas. The model's own sigma (latent spread
plus decoder scatter) sets the shape across pixels; the factor fixes its overall size, which a
decoder scatter still shrinking when early stopping ends training would otherwise leave too wide.
"""

from __future__ import annotations

import numpy as np

FACTOR_RANGE = (0.25, 4.0)   # beyond this the validation data cannot be trusted to rescale sigma


def sigma_scale_factor(x: np.ndarray, ivar: np.ndarray, mean: np.ndarray, sigma: np.ndarray) -> float:
    """Factor a such that a * sigma explains the validation residual excess; arrays (N, npix)."""
    valid = (ivar > 0) & np.isfinite(sigma)
    if not valid.any():
        return 1.0
    excess = np.sum((x - mean)[valid] ** 2 * ivar[valid] - 1.0)
    predicted = np.sum(sigma[valid] ** 2 * ivar[valid])
    if predicted <= 0:
        return 1.0
    return float(np.sqrt(np.clip(excess / predicted, FACTOR_RANGE[0] ** 2, FACTOR_RANGE[1] ** 2)))
