"""Denoising with uncertainty, and encoding to latents, for trained models."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from specae.data.spectra import Spectra
from specae.errors import SpecaeError
from specae.models.vae import SpectrumVAE
from specae.uncertainty import laplace_posterior


@dataclass
class Denoised:
    """Denoised spectra in the input's flux units; every pixel (masked ones too) has a value and a sigma."""
    wave: np.ndarray     # (npix,) Angstrom
    flux: np.ndarray     # (N, npix) posterior mean of the decoded spectra
    sigma: np.ndarray    # (N, npix) total 1-sigma: latent posterior spread + decoder scatter
    sigma_latent: np.ndarray  # (N, npix) the latent-posterior part alone


def _device(model: SpectrumVAE):
    return next(model.parameters()).device


@torch.no_grad()
def denoise(model: SpectrumVAE, spectra: Spectra, n_samples: int = 64, batch_size: int = 256,
            seed: int = 0, posterior: str = "laplace", combine: bool = False) -> Denoised:
    """Posterior-mean spectrum and per-pixel sigma for each spectrum.

    Draws `n_samples` latents per spectrum from its posterior, decodes them all in one batch, and combines
    var = a^2 Var_z[mu(z)] + b^2 E_z[sigma_model(z)^2], with (a, b) = the model's validation-calibrated
    `sigma_scale` (see specae.uncertainty). The AE (a point posterior) gives sigma = b sigma_model.
    Output is in the units of `spectra.flux` (normalisation undone).

    posterior="encoder" samples the amortised q(z|x); "laplace" (default) starts there, refines z by
    Gauss-Newton on the exact posterior and samples its Laplace approximation (specae.uncertainty),
    which is closer to the truth and honest about noisy or heavily masked spectra.

    combine=True treats that model prediction as a prior for each pixel and updates it with the pixel's
    own measurement (precision-weighted mean of model and data): where the data are more precise than
    the model (strong emission lines at high S/N) they win; masked pixels keep the model's value.
    """
    if posterior not in ("laplace", "encoder"):
        raise SpecaeError(f"unknown posterior {posterior!r} (use 'laplace' or 'encoder')")
    model.eval()
    dev = _device(model)
    data, norm = model.prepare(spectra)
    if len(data) == 0:
        empty = np.zeros((0, spectra.npix), np.float32)
        return Denoised(spectra.wave, empty, empty.copy(), empty.copy())
    gen = torch.Generator(device=dev).manual_seed(seed)
    flux, var_lat, var_mod = [], [], []
    s = n_samples if model.cfg.kind == "vae" else 1
    rows = max(1, batch_size // s)                                             # spectra per decoded batch
    for i in range(0, len(data), rows):
        b = data[i:i + rows].to(dev)
        mean, logvar = model.encode(b)
        lat = mean[None]                                                       # (1 | S, B, K)
        if logvar is not None:
            noise = torch.randn((s,) + mean.shape, generator=gen, device=dev)
            if posterior == "laplace":
                mean, cov = laplace_posterior(model, b, mean)
                lat = mean[None] + torch.einsum("bkl,sbl->sbk", torch.linalg.cholesky(cov), noise)
            else:
                lat = mean[None] + noise * (0.5 * logvar).exp()
        red = None if b.z is None else b.z.repeat(s)
        mu, sig = model.decode(lat.reshape(-1, lat.shape[-1]), red)
        mu, sig = mu.float().view(s, len(b), -1), sig.float().view(s, len(b), -1)   # (S, B, npix)
        m = mu.mean(0)
        v_lat = mu.var(0, unbiased=False)
        flux.append(m.cpu())
        var_lat.append(v_lat.cpu())
        var_mod.append((sig ** 2).mean(0).cpu())
    flux, var_lat, var_mod = (torch.cat(a).numpy() for a in (flux, var_lat, var_mod))
    a, b = model.sigma_scale.tolist()
    var_lat = a ** 2 * var_lat
    var = var_lat + b ** 2 * var_mod
    if combine:
        precision = 1 / np.maximum(var, 1e-30) + norm.ivar
        flux = (flux / np.maximum(var, 1e-30) + norm.flux * norm.ivar) / precision
        shrink = 1 / (precision * np.maximum(var, 1e-30))     # how much of the model variance is left
        var, var_lat = 1 / precision, var_lat * shrink
    out_flux, out_sigma = norm.to_original_units(flux, np.sqrt(var))
    return Denoised(spectra.wave, out_flux, out_sigma, norm.to_original_units(np.sqrt(var_lat)))


@torch.no_grad()
def encode(model: SpectrumVAE, spectra: Spectra, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Latent posterior mean and standard deviation, each (N, K); the AE's std is zero."""
    model.eval()
    dev = _device(model)
    data, _ = model.prepare(spectra)
    if len(data) == 0:
        return np.zeros((0, model.cfg.latent_dim), np.float32), np.zeros((0, model.cfg.latent_dim), np.float32)
    means, stds = [], []
    for i in range(0, len(data), batch_size):
        mean, logvar = model.encode(data[i:i + batch_size].to(dev))
        means.append(mean.float().cpu())
        stds.append(torch.zeros_like(mean).cpu() if logvar is None else (0.5 * logvar).exp().float().cpu())
    return torch.cat(means).numpy(), torch.cat(stds).numpy()
