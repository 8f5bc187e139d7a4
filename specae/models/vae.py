"""SpectrumVAE: encoder + decoder + the heteroscedastic Gaussian likelihood (VAE or plain AE)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from specae.data.spectra import Spectra
from specae.errors import SpecaeError
from specae.models.config import ModelConfig
from specae.models.decoder import Decoder
from specae.models.encoder import Encoder

LOG_2PI = math.log(2 * math.pi)


@dataclass
class Batch:
    """Model-space tensors for a set of spectra: normalised flux, its ivar, redshift."""
    x: torch.Tensor              # (B, npix) normalised flux, 0 where masked
    ivar: torch.Tensor           # (B, npix) ivar of x, 0 where masked
    z: torch.Tensor | None       # (B,) redshift in redshift mode

    def to(self, device) -> "Batch":
        return Batch(self.x.to(device), self.ivar.to(device), None if self.z is None else self.z.to(device))

    def __getitem__(self, idx) -> "Batch":
        return Batch(self.x[idx], self.ivar[idx], None if self.z is None else self.z[idx])

    def __len__(self) -> int:
        return self.x.shape[0]


class SpectrumVAE(nn.Module):
    def __init__(self, cfg: ModelConfig, wave: np.ndarray, wave_rest: np.ndarray | None = None):
        super().__init__()
        if cfg.kind not in ("vae", "ae"):
            raise SpecaeError(f"unknown model kind {cfg.kind!r} (use 'vae' or 'ae')")
        if cfg.decoder not in ("mlp", "conv"):
            raise SpecaeError(f"unknown decoder {cfg.decoder!r} (use 'mlp' or 'conv')")
        if not 1 <= cfg.latent_dim <= cfg.enc_pca:
            raise SpecaeError(f"latent_dim {cfg.latent_dim} must be between 1 and enc_pca ({cfg.enc_pca})")
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg, torch.from_numpy(np.log10(wave)),
                               None if wave_rest is None else torch.from_numpy(np.log10(wave_rest)))
        n_dec = cfg.npix if wave_rest is None else len(wave_rest)
        # weighted-PCA basis on the decoder grid and its prior variances, set at fit
        self.register_buffer("basis", torch.zeros(cfg.enc_pca, n_dec))
        self.register_buffer("basis_var", torch.ones(cfg.enc_pca))
        # factors on the latent-posterior and decoder parts of the denoised sigma, calibrated on
        # validation data after training (specae.uncertainty)
        self.register_buffer("sigma_scale", torch.ones(2))

    @property
    def wave(self) -> np.ndarray:
        return 10 ** self.decoder.loglam_obs.cpu().numpy()

    # -- data -> tensors ---------------------------------------------------------------------------
    def prepare(self, spectra: Spectra) -> tuple[Batch, Spectra]:
        """Normalise `spectra` the way the model was trained; returns tensors and the normalised Spectra."""
        if spectra.npix != self.cfg.npix or not np.allclose(spectra.wave, self.wave, rtol=1e-7):
            raise SpecaeError(f"spectra are on a different wavelength grid ({spectra.npix} pixels, "
                              f"{spectra.wave[0]:.1f}-{spectra.wave[-1]:.1f} A) than the model "
                              f"({self.cfg.npix} pixels); resample them onto the model's grid first")
        z = torch.from_numpy(spectra.redshifts(self.cfg.redshift)).float() if self.cfg.redshift else None
        norm = spectra.normalise(self.cfg.norm_window)
        return Batch(torch.from_numpy(norm.flux), torch.from_numpy(norm.ivar), z), norm

    # -- forward -----------------------------------------------------------------------------------
    def _observed(self, rest: torch.Tensor, b: Batch) -> torch.Tensor:
        """Decoder-grid rows (R, n_dec) -> observed frame: (1, R, npix), or (B, R, npix) in redshift mode."""
        if self.cfg.redshift is None:
            return rest[None]
        r = rest.shape[0]
        return self.decoder.to_observed(rest[None].expand(len(b), -1, -1).reshape(len(b) * r, -1),
                                        b.z.repeat_interleave(r)).view(len(b), r, -1)

    def project(self, b: Batch, resid: torch.Tensor) -> torch.Tensor:
        """(B, 2P) Bayesian weighted least-squares projection of `resid` onto the PCA basis.

        Prior c ~ N(0, basis_var), so spectra with little or no data get coefficients near 0 and large
        variances instead of noise. Returned in prior units: c / sqrt(var_prior), log(var_post / var_prior).
        """
        basis = self._observed(self.basis, b).expand(len(b), -1, -1)              # (B, P, npix)
        normal = torch.einsum("bpn,bn,bqn->bpq", basis, b.ivar, basis) + torch.diag(1 / self.basis_var)
        cov = torch.linalg.inv(normal)                                            # (B, P, P)
        c = torch.einsum("bpq,bq->bp", cov, torch.einsum("bpn,bn->bp", basis, b.ivar * resid))
        var = torch.diagonal(cov, dim1=1, dim2=2)
        return torch.cat([c / self.basis_var.sqrt(), torch.log(var / self.basis_var)], 1)

    def encode(self, b: Batch):
        """(mean, logvar) of q(z|x), each (B, K); logvar is None for the AE."""
        mean_obs = self._observed(self.decoder.mean[None], b)[:, 0]
        resid = torch.where(b.ivar > 0, b.x - mean_obs, torch.zeros_like(b.x))
        return self.encoder(resid, b.ivar, self.project(b, resid), b.z)

    def decode(self, latent: torch.Tensor, redshift: torch.Tensor | None = None):
        """latent (B, K) -> mu, sigma_model (B, npix) in normalised flux units."""
        return self.decoder(latent, redshift)

    def forward(self, b: Batch, sample: bool = True):
        mean, logvar = self.encode(b)
        latent = mean
        if sample and logvar is not None:
            latent = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        mu, sigma = self.decode(latent, b.z)
        return mu, sigma, mean, logvar


def gaussian_nll(x, ivar, mu, sigma_model) -> torch.Tensor:
    """(B,) negative log-likelihood summed over valid pixels, variance 1/ivar + sigma_model^2."""
    valid = ivar > 0
    s2 = torch.where(valid, 1 / ivar.clamp_min(1e-30), 1.0) + sigma_model.float() ** 2
    nll = 0.5 * ((x - mu.float()) ** 2 / s2 + torch.log(s2) + LOG_2PI)
    return torch.where(valid, nll, 0.0).sum(1)


def kl_normal(mean, logvar, free_bits: float = 0.0) -> torch.Tensor:
    """(B,) KL(q(z|x) || N(0, I)); each dimension contributes at least `free_bits` nats."""
    kl = 0.5 * (mean.float() ** 2 + logvar.float().exp() - 1 - logvar.float())   # (B, K)
    if free_bits > 0:
        kl = kl.clamp_min(free_bits)
    return kl.sum(1)


def chi2(x, ivar, mu) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of (x - mu)^2 ivar over valid pixels and the number of valid pixels (scalars)."""
    valid = ivar > 0
    return torch.where(valid, (x - mu.float()) ** 2 * ivar, 0.0).sum(), valid.sum()
