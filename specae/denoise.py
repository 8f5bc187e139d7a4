"""Denoising with uncertainty, and encoding to latents, for trained models."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from specae.data.spectra import Spectra
from specae.models.vae import SpectrumVAE


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
            seed: int = 0) -> Denoised:
    """Posterior-mean spectrum and per-pixel sigma for each spectrum.

    Draws `n_samples` latents z ~ q(z|x) per spectrum, decodes them all in one batch, and combines
    var = Var_z[mu(z)] + E_z[sigma_model(z)^2], times the model's validation-calibrated
    `sigma_scale`^2 (see specae.uncertainty). The AE (a point posterior) gives sigma = sigma_model.
    Output is in the units of `spectra.flux` (normalisation undone).
    """
    model.eval()
    dev = _device(model)
    data, norm = model.prepare(spectra)
    if len(data) == 0:
        empty = np.zeros((0, spectra.npix), np.float32)
        return Denoised(spectra.wave, empty, empty.copy(), empty.copy())
    gen = torch.Generator(device=dev).manual_seed(seed)
    flux, var, var_lat = [], [], []
    s = n_samples if model.cfg.kind == "vae" else 1
    for i in range(0, len(data), max(1, batch_size // s)):
        b = data[i:i + max(1, batch_size // s)].to(dev)
        mean, logvar = model.encode(b)
        lat = mean[None].expand(s, -1, -1)                                     # (S, B, K)
        if logvar is not None:
            lat = lat + torch.randn(lat.shape, generator=gen, device=dev) * (0.5 * logvar).exp()
        red = None if b.z is None else b.z.repeat(s)
        mu, sig = model.decode(lat.reshape(-1, lat.shape[-1]), red)
        mu, sig = mu.float().view(s, len(b), -1), sig.float().view(s, len(b), -1)   # (S, B, npix)
        m = mu.mean(0)
        v_lat = mu.var(0, unbiased=False)
        flux.append(m.cpu())
        var_lat.append(v_lat.cpu())
        var.append((v_lat + (sig ** 2).mean(0)).cpu())
    flux, var, var_lat = (torch.cat(a).numpy() for a in (flux, var, var_lat))
    a = float(model.sigma_scale)
    out_flux, out_sigma = norm.to_original_units(flux, a * np.sqrt(var))
    return Denoised(spectra.wave, out_flux, out_sigma, norm.to_original_units(a * np.sqrt(var_lat)))


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
