"""Encoder: a spectrum and its noise -> latent posterior q(z|x) (or a point, for the AE)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from specae.models.config import ModelConfig


class Encoder(nn.Module):
    """Strided 1D convolutions over (residual flux, S/N-weighted residual, sqrt(ivar)), then an MLP.

    The network sees the noise as well as the flux, so masked (ivar = 0) and noisy pixels cannot pull
    the latent. The dense stage also gets the spectrum's weighted least-squares projection onto a
    weighted-PCA basis (coefficients and their log variances, in prior units), which is exact for the
    linear part of the problem whatever the mask; a linear skip from it starts the encoder as that
    Bayesian PCA posterior, and the convolutional path learns the rest. In redshift mode log(1 + z)
    joins the dense stage.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        chans = (3,) + tuple(cfg.enc_channels)
        # stride 2 then 4s: about npix / 128 cells before pooling
        strides = [2] + [4] * (len(chans) - 2)
        self.convs = nn.ModuleList(nn.Conv1d(a, b, 7, stride=s, padding=3)
                                   for a, b, s in zip(chans[:-1], chans[1:], strides))
        self.pool = nn.AdaptiveAvgPool1d(cfg.enc_pool)
        n_proj = 2 * cfg.enc_pca
        n_in = chans[-1] * cfg.enc_pool + n_proj + (1 if cfg.redshift else 0)
        k = cfg.latent_dim
        n_out = k * (2 if cfg.kind == "vae" else 1)
        self.mlp = nn.Sequential(nn.Linear(n_in, cfg.enc_hidden), nn.GELU(),
                                 nn.Linear(cfg.enc_hidden, cfg.enc_hidden), nn.GELU(),
                                 nn.Linear(cfg.enc_hidden, n_out))
        self.skip = nn.Linear(n_proj, n_out)
        with torch.no_grad():   # start as the PCA posterior: z_k = c_k, logvar_k = log var(c_k)
            for lin in (self.mlp[-1], self.skip):
                lin.weight.zero_()
                lin.bias.zero_()
            self.skip.weight[torch.arange(k), torch.arange(k)] = 1.0
            if cfg.kind == "vae":
                self.skip.weight[k + torch.arange(k), cfg.enc_pca + torch.arange(k)] = 1.0

    def forward(self, resid: torch.Tensor, ivar: torch.Tensor, proj: torch.Tensor, z: torch.Tensor | None = None):
        """resid, ivar: (B, npix) flux minus the mean spectrum (0 where masked) and its ivar;
        proj: (B, 2 * enc_pca) projection coefficients and log variances.

        Returns (mean, logvar), each (B, K); logvar is None for the AE.
        """
        sq = ivar.clamp_min(0).sqrt() / self.cfg.ivar_scale           # (B, npix), ~1 for typical S/N
        h = torch.stack([resid, (resid * sq).clamp(-50, 50), sq], 1)  # (B, 3, npix)
        for conv in self.convs:
            h = F.gelu(conv(h))
        h = torch.cat([self.pool(h).flatten(1), proj], 1)             # (B, C * enc_pool + 2P)
        if self.cfg.redshift:
            h = torch.cat([h, torch.log1p(z)[:, None]], 1)
        out = self.mlp(h) + self.skip(proj)
        if self.cfg.kind == "ae":
            return out, None
        mean, logvar = out.chunk(2, dim=1)
        return mean, logvar.clamp(-20, 10)
