"""Posterior approximation and sigma calibration for denoised spectra (no truth needed).

The denoised variance has two parts: var_latent = Var_z[mu(z)] (the latent posterior pushed through
the decoder) and var_model = E_z[sigma_model^2] (the decoder's own scatter). Each gets one factor,
fitted after training on the validation spectra:
- b, the decoder part, by maximum likelihood of the validation residuals x - m, whose variance is
  1/ivar + b^2 var_model: the latent part is absent there, because m was fitted to the same x;
- a, the latent part, by a parametric bootstrap: the denoised validation spectra, given fresh noise
  from their own ivar and masks, are denoised again, and a^2 is the mean of err^2 / var_latent with
  the truth known. Every spectrum counts equally, so noisy spectra are calibrated too.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize_scalar

FACTOR_RANGE = (0.25, 4.0)   # beyond this the validation data cannot be trusted to rescale sigma


def model_scale(x: np.ndarray, ivar: np.ndarray, mean: np.ndarray, var_model: np.ndarray) -> float:
    """ML factor b with (x - mean)^2 ~ N(0, 1/ivar + b^2 var_model) over valid pixels; arrays (N, npix)."""
    valid = (ivar > 0) & np.isfinite(var_model)
    if not valid.any():
        return 1.0
    r2, vn, vm = (x - mean)[valid] ** 2, 1 / ivar[valid], var_model[valid]

    def nll(logb2):
        v = vn + np.exp(logb2) * vm
        return np.mean(r2 / v + np.log(v))

    lo, hi = 2 * np.log(FACTOR_RANGE[0]), 2 * np.log(FACTOR_RANGE[1])
    return float(np.exp(0.5 * minimize_scalar(nll, bounds=(lo, hi), method="bounded").x))


def latent_scale(err: np.ndarray, var_latent: np.ndarray) -> float:
    """Factor a with err ~ N(0, a^2 var_latent), errors against a known truth; arrays (N, npix).

    Estimated from the median of |err| / sigma (0.6745 for a unit normal), so the +-1 sigma band holds
    68 % of the pixels even when the error distribution has heavier tails than a Gaussian.
    """
    ok = np.isfinite(var_latent) & (var_latent > 0)
    if not ok.any():
        return 1.0
    return float(np.clip(np.median(np.abs(err[ok]) / np.sqrt(var_latent[ok])) / 0.6745, *FACTOR_RANGE))


@torch.no_grad()
def laplace_posterior(model, b, z0: torch.Tensor, n_steps: int = 3, eps: float = 1e-2):
    """Refine latents by Gauss-Newton on the exact log posterior and return its Laplace approximation.

    Minimises 0.5 sum_valid (x - mu(z))^2 / (1/ivar + sigma_model^2) + 0.5 |z|^2 from the encoder's
    mean z0 (B, K), with the decoder Jacobian from central differences (2K + 1 batched decodes per
    step); a step is kept only for spectra whose objective drops. Returns z (B, K) and the posterior
    covariance (J^T S^-1 J + I)^-1 (B, K, K), which scales with each spectrum's own S/N and mask, where
    an amortised q(z|x) tends to be too narrow for noisy spectra.
    """
    k = z0.shape[1]
    valid = b.ivar > 0
    offsets = eps * torch.eye(k, device=z0.device, dtype=z0.dtype)
    reps = 2 * k + 1
    red = None if b.z is None else b.z.repeat(reps)

    def weights(sig):
        return torch.where(valid, 1 / (1 / b.ivar.clamp_min(1e-30) + sig ** 2), torch.zeros_like(sig))

    def objective(mu, w, z):
        return 0.5 * (w * (b.x - mu) ** 2).sum(1) + 0.5 * (z ** 2).sum(1)

    z = z0.float().clone()
    for step in range(n_steps + 1):
        zs = torch.cat([z[None], z[None] + offsets[:, None], z[None] - offsets[:, None]])  # (2K+1, B, K)
        mu, sig = model.decode(zs.reshape(-1, k), red)
        mu, sig = mu.float().view(reps, len(b), -1), sig.float().view(reps, len(b), -1)
        jac = (mu[1:k + 1] - mu[k + 1:]) / (2 * eps)                                   # (K, B, npix)
        w = weights(sig[0])
        hess = torch.einsum("kbn,bn,lbn->bkl", jac, w, jac) + torch.eye(k, device=z.device)
        if step == n_steps:
            break
        grad = torch.einsum("kbn,bn->bk", jac, w * (b.x - mu[0])) - z
        trial = z + torch.linalg.solve(hess, grad)
        mu_t, _ = model.decode(trial, b.z)
        better = objective(mu_t.float(), w, trial) < objective(mu[0], w, z)
        z = torch.where(better[:, None], trial, z)
    return z, torch.linalg.inv(hess)
