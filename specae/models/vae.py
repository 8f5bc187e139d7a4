"""SpectrumVAE: encoder + decoder + the heteroscedastic Gaussian likelihood (VAE or plain AE)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from specae.errors import SpecaeError
from specae.models.config import ModelConfig
from specae.models.decoder import Decoder
from specae.models.encoder import Encoder

LOG_2PI = math.log(2 * math.pi)


class SpectrumVAE(nn.Module):
    """Encoder + decoder with the weighted-PCA basis they start from; tensors in, tensors out.

    Inputs are model-space tensors (specae.data.tensors): x, ivar (B, npix) normalised flux and its
    inverse variance (0 = masked) and, in redshift mode, z (B,).
    """

    def __init__(self, cfg: ModelConfig, wave: np.ndarray, wave_rest: np.ndarray | None = None):
        super().__init__()
        if cfg.kind not in ("vae", "ae"):
            raise SpecaeError(f"unknown model kind {cfg.kind!r} (use 'vae' or 'ae')")
        if cfg.decoder not in ("mlp", "conv"):
            raise SpecaeError(f"unknown decoder {cfg.decoder!r} (use 'mlp' or 'conv')")
        if not 1 <= cfg.latent_dim <= cfg.enc_pca:
            raise SpecaeError(f"latent_dim {cfg.latent_dim} must be between 1 and enc_pca ({cfg.enc_pca})")
        if len(wave) != cfg.npix:
            raise SpecaeError(f"the model's grid has {len(wave)} pixels but its config says npix={cfg.npix}")
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg, torch.from_numpy(np.log10(wave)),
                               None if wave_rest is None else torch.from_numpy(np.log10(wave_rest)))
        n_dec = cfg.npix if wave_rest is None else len(wave_rest)
        # weighted-PCA basis on the decoder grid and its prior variances, set at fit
        self.register_buffer("basis", torch.zeros(cfg.enc_pca, n_dec))
        self.register_buffer("basis_var", torch.ones(cfg.enc_pca))
        # the fraction of the training sample with data at each decoder pixel, relative to the best-covered
        # pixel: 0 where no training spectrum had any (the model knows nothing there)
        self.register_buffer("seen", torch.ones(n_dec))
        # the error model's constants (specae.calibration.Calibration), fitted after training; None before
        self.calibration = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before the error model kept their sigma factors here; they need recalibrating
        state_dict.pop(prefix + "sigma_scale", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def wave(self) -> np.ndarray:
        """(npix,) the observed grid in Angstrom."""
        return 10 ** self.decoder.loglam_obs.cpu().numpy()

    def _observed(self, rest: torch.Tensor, z: torch.Tensor | None, n: int) -> torch.Tensor:
        """Decoder-grid rows (R, n_dec) -> observed frame: (1, R, npix), or (B, R, npix) in redshift mode."""
        if self.cfg.redshift is None:
            return rest[None]
        r = rest.shape[0]
        return self.decoder.to_observed(rest[None].expand(n, -1, -1).reshape(n * r, -1),
                                        z.repeat_interleave(r)).view(n, r, -1)

    def project(self, resid: torch.Tensor, ivar: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 2P) Bayesian weighted least-squares projection of `resid` (B, npix) onto the PCA basis.

        Prior c ~ N(0, basis_var), so spectra with little or no data get coefficients near 0 and large
        variances instead of noise. Returned in prior units: c / sqrt(var_prior), log(var_post / var_prior).
        """
        n = resid.shape[0]
        basis = self._observed(self.basis, z, n).expand(n, -1, -1).double()     # (B, P, npix)
        # in float64: one pixel of S/N 1e6 among ordinary ones left a float32 normal matrix not positive definite.
        # S/N beyond 1e6 per pixel adds nothing here.
        ivar, resid = ivar.double().clamp(max=1e12), resid.double()
        normal = torch.einsum("bpn,bn,bqn->bpq", basis, ivar, basis) + torch.diag(1 / self.basis_var.double())
        chol = torch.linalg.cholesky(normal)                                       # SPD: prior term > 0
        rhs = torch.einsum("bpn,bn->bp", basis, ivar * resid)
        c = torch.cholesky_solve(rhs[..., None], chol)[..., 0]
        var = torch.diagonal(torch.cholesky_inverse(chol), dim1=1, dim2=2)
        bv = self.basis_var.double()
        return torch.cat([c / bv.sqrt(), torch.log(var / bv)], 1).float()

    def encode(self, x: torch.Tensor, ivar: torch.Tensor, z: torch.Tensor | None = None):
        """(mean, logvar) of q(z|x), each (B, K); logvar is None for the AE."""
        mean_obs = self._observed(self.decoder.mean[None], z, x.shape[0])[:, 0]
        resid = torch.where(ivar > 0, x - mean_obs, torch.zeros_like(x))
        return self.encoder(resid, ivar, self.project(resid, ivar, z), z)

    def decode(self, latent: torch.Tensor, z: torch.Tensor | None = None):
        """latent (B, K) -> mu, sigma_model (B, npix) in normalised flux units."""
        return self.decoder(latent, z)

    def unseen(self, z: torch.Tensor | None, n: int) -> torch.Tensor:
        """(B, npix) bool: observed pixels whose rest wavelength no training spectrum covered (or that
        fall off the decoder's grid); the model would only invent values there."""
        if self.cfg.redshift is None:
            return (self.seen <= 0)[None].expand(n, -1)
        seen = self.decoder.to_observed((self.seen > 0).to(self.seen.dtype)[None].expand(n, -1), z, outside=0.0)
        return seen < 1 - 1e-6

    def coverage(self, z: torch.Tensor | None, n: int) -> torch.Tensor:
        """(B, npix) the training coverage f in (0, 1] of each observed pixel (`seen`), floored at the
        least-covered pixel the model saw, so pixels it never saw (see `unseen`) stay finite."""
        seen = self.seen[self.seen > 0]
        f = self.seen.clamp_min(float(seen.min()) if seen.numel() else 1.0)
        return self._observed(f[None], z, n)[:, 0].expand(n, -1)

    def forward(self, x, ivar, z=None, ivar_enc=None, eps=None):
        """The training pass: encode (seeing `ivar_enc` if given: the spectrum with chunks hidden), draw the
        latent with noise `eps` (B, K) (VAE), decode. Returns mu, sigma_model, mean, logvar."""
        mean, logvar = self.encode(x, ivar if ivar_enc is None else ivar_enc, z)
        latent = mean
        if logvar is not None and eps is not None:
            latent = mean + eps * (0.5 * logvar).exp()
        mu, sigma = self.decode(latent, z)
        return mu, sigma, mean, logvar

    def no_decay(self) -> set[str]:
        """Parameter names kept out of weight decay: the mean spectrum, the PCA-initialised linear terms
        and the baseline scatter, whose scale is the data's, not a regularisation choice."""
        return {"decoder.mean", "decoder.linear", "decoder.log_sigma0", "encoder.skip.weight"}


def gaussian_nll(x, ivar, mu, sigma_model, beta: float = 0.0) -> torch.Tensor:
    """(B,) negative log-likelihood summed over valid pixels, variance 1/ivar + sigma_model^2.

    beta > 0 weights each pixel by (1 + sigma_model^2 ivar)^beta, held constant (a beta-NLL, Seitzer et
    al. 2022, on the learned part only): a pixel the model declares hard by widening its scatter keeps
    its pull on the mean instead of being explained away. beta = 0 is the plain likelihood.
    """
    valid = ivar > 0
    noise = torch.where(valid, 1 / ivar.clamp_min(1e-30), 1.0)
    s2 = noise + sigma_model.float() ** 2
    nll = 0.5 * ((x - mu.float()) ** 2 / s2 + torch.log(s2) + LOG_2PI)
    if beta:
        nll = nll * (s2 / noise).detach() ** beta
    return torch.where(valid, nll, 0.0).sum(1)


def kl_normal(mean, logvar) -> torch.Tensor:
    """(B,) KL(q(z|x) || N(0, I)); mean, logvar (B, K)."""
    return 0.5 * (mean.float() ** 2 + logvar.float().exp() - 1 - logvar.float()).sum(1)


def chi2(x, ivar, mu) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of (x - mu)^2 ivar over valid pixels and the number of valid pixels (scalars)."""
    valid = ivar > 0
    return torch.where(valid, (x - mu.float()) ** 2 * ivar, 0.0).sum(), valid.sum()
