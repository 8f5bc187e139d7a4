"""Decoder: latent z -> mean spectrum mu(x|z) and model scatter sigma_model(x|z) on the pixel grid.

Two bodies share one head: an MLP and a convolutional stack (a dense stage to a coarse grid, x2
upsampling convolutions that see a wavelength-position encoding, then a per-pixel output layer, so
features at fixed wavelengths are cheap to learn while most weights are shared across wavelength).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from specae.models.config import ModelConfig


class MLPBody(nn.Module):
    """z (B, K) -> (B, 2, n): widths cfg.dec_hidden, then one dense layer to 2 outputs per pixel."""

    def __init__(self, cfg: ModelConfig, n: int):
        super().__init__()
        widths = (cfg.latent_dim,) + tuple(cfg.dec_hidden)
        layers = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.GELU()]
        self.hidden = nn.Sequential(*layers)
        self.out = nn.Linear(widths[-1], 2 * n)
        nn.init.zeros_(self.out.weight)   # start at the linear model; the nonlinear part grows from zero
        nn.init.zeros_(self.out.bias)
        self.n = n

    def forward(self, z):
        return self.out(self.hidden(z)).view(-1, 2, self.n)

    def forward_and_jacobian(self, z):
        """out (B, 2, n) and d out[:, 0] / dz (K, B, n): forward-mode through the small hidden layers,
        then the big output layer applied to the K tangents of the mean rows only."""
        k = z.shape[1]
        eye = torch.eye(k, device=z.device, dtype=z.dtype).repeat_interleave(z.shape[0], 0)   # (K B, K)
        h, dh = torch.func.jvp(self.hidden, (z.repeat(k, 1),), (eye,))                       # (K B, H)
        h = h[:z.shape[0]]
        w_mu = self.out.weight.view(2, self.n, -1)[0]                                        # (n, H)
        return self.out(h).view(-1, 2, self.n), (dh @ w_mu.T).view(k, z.shape[0], self.n)


class PerPixelLinear(nn.Module):
    """A 1x1 convolution with its own weights at every pixel: (B, C, n) -> (B, out, n)."""

    def __init__(self, channels: int, n: int, out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out, channels, n))   # starts at the linear model
        self.bias = nn.Parameter(torch.zeros(out, n))

    def forward(self, h):
        # one broadcast product per output channel: einsum would run a tiny matmul per pixel, and a single
        # broadcast over all outputs would need a (B, C, out, n) temporary
        return torch.stack([(h * w).sum(1) for w in self.weight], 1) + self.bias


class ConvBody(nn.Module):
    """z (B, K) -> (B, C, n/16) -> 2 x [upsample x2, conv] -> (B, C/2, n/4) -> linear interpolation
    to n -> per-pixel layer.

    The latent enters every coarse cell alike (a linear map added to a learned embedding of the cell, which
    tells the convolutions where in the spectrum they are, then a 1x1 convolution), so no weight grows
    with n before the last layer: the convolutions are shared across wavelength and run on coarse grids;
    what is specific to a wavelength (a line at a fixed rest wavelength) is the per-pixel layer's job, with
    C/2 inputs per pixel instead of the MLP's 1024. About the MLP's cost per spectrum, 1/30 of its weights.
    """

    def __init__(self, cfg: ModelConfig, n: int):
        super().__init__()
        c, self.n = cfg.conv_channels, n
        self.coarse = math.ceil(n / cfg.conv_coarse)
        self.latent = nn.Linear(cfg.latent_dim, c)
        self.cell = nn.Parameter(0.1 * torch.randn(c, self.coarse))         # learned embedding of each cell
        self.mix = nn.Conv1d(c, c, 1)
        widths = [c, c, max(c // 2, 1)]
        self.convs = nn.ModuleList(nn.Conv1d(a, b, 5, padding=2) for a, b in zip(widths[:-1], widths[1:]))
        self.out = PerPixelLinear(widths[-1], n, 2)

    def forward(self, z):
        h = F.gelu(self.mix(F.gelu(self.latent(z)[:, :, None] + self.cell)))   # (B, C, n / 16)
        for conv in self.convs:
            h = F.interpolate(h, scale_factor=2, mode="linear", align_corners=False)
            h = F.gelu(conv(h))                                          # (B, C', 2 * length)
        h = F.interpolate(h, size=self.n, mode="linear", align_corners=False)   # (B, C/2, n)
        return self.out(h)                                               # (B, 2, n)

    def forward_and_jacobian(self, z, eps: float = 1e-2):
        """out (B, 2, n) and d out[:, 0] / dz (K, B, n) by central differences, one latent direction at a
        time: on CPUs forward-mode differentiation through convolutions costs several times more, and the
        error, O(eps^2) in prior units, is far below any posterior width."""
        out = self(z)
        jac = []
        for k in range(z.shape[1]):
            step = torch.zeros_like(z)
            step[:, k] = eps
            jac.append((self(z + step)[:, 0] - self(z - step)[:, 0]) / (2 * eps))
        return out, torch.stack(jac)


class Decoder(nn.Module):
    """z -> (mu, sigma_model) on the observed grid.

    mu = mean spectrum + z @ linear + body(z): the linear term starts as the weighted-PCA components
    (scaled to unit prior variance), so training begins at the PCA solution and the nonlinear body only
    has to learn what PCA misses. sigma_model = floor + softplus(...), so the model scatter can never
    collapse to zero. In redshift mode the body works on a rest-frame log-lambda grid and the result is
    shifted to each spectrum's observed frame by linear interpolation in log-lambda (differentiable).
    """

    def __init__(self, cfg: ModelConfig, loglam_obs: torch.Tensor, loglam_rest: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("loglam_obs", loglam_obs.double())                    # (npix,)
        self.register_buffer("loglam_rest", None if loglam_rest is None else loglam_rest.double())
        n = cfg.npix if loglam_rest is None else loglam_rest.numel()
        self.body = (MLPBody if cfg.decoder == "mlp" else ConvBody)(cfg, n)
        self.mean = nn.Parameter(torch.zeros(n))              # set to the weighted mean spectrum at fit
        self.linear = nn.Parameter(torch.zeros(cfg.latent_dim, n))   # set to scaled PCA components at fit
        self.log_sigma0 = nn.Parameter(torch.full((n,), -4.0))

    def forward(self, z: torch.Tensor, redshift: torch.Tensor | None = None):
        """z: (B, K); redshift: (B,) in redshift mode. Returns mu, sigma_model: (B, npix)."""
        out = self.body(z)
        mu = self.mean + z @ self.linear + out[:, 0]
        sigma = self.cfg.sigma_floor + F.softplus(self.log_sigma0 + out[:, 1])
        if self.loglam_rest is not None:
            mu, sigma = self.to_observed(mu, redshift), self.to_observed(sigma, redshift)
        return mu, sigma

    def forward_and_jacobian(self, z: torch.Tensor, redshift: torch.Tensor | None = None):
        """mu, sigma_model (B, npix) and the exact Jacobian d mu / dz (K, B, npix), for Gauss-Newton and
        for propagating a latent covariance to the pixels."""
        out, d_out = self.body.forward_and_jacobian(z)
        mu = self.mean + z @ self.linear + out[:, 0]
        sigma = self.cfg.sigma_floor + F.softplus(self.log_sigma0 + out[:, 1])
        jac = self.linear[:, None, :] + d_out                                   # (K, B, n)
        if self.loglam_rest is not None:
            k, b = jac.shape[:2]
            mu, sigma = self.to_observed(mu, redshift), self.to_observed(sigma, redshift)
            jac = self.to_observed(jac.reshape(k * b, -1), redshift.repeat(k)).view(k, b, -1)
        return mu, sigma, jac

    def to_observed(self, rest: torch.Tensor, redshift: torch.Tensor, outside: float | None = None) -> torch.Tensor:
        """Rest-frame (B, n_rest) -> observed-frame (B, npix) for redshifts (B,).

        Observed pixels whose rest wavelength falls off the rest grid take the edge value, or `outside`
        if given (e.g. 0 for a coverage mask, so the caller can tell them apart).
        """
        with torch.autocast(rest.device.type, enabled=False):   # wavelengths need float64, not bf16
            l0, step = self.loglam_rest[0], self.loglam_rest[1] - self.loglam_rest[0]
            pos = (self.loglam_obs[None] - torch.log10(1 + redshift.double())[:, None] - l0) / step
            off = (pos < 0) | (pos > rest.shape[1] - 1)
            pos = pos.clamp(0, rest.shape[1] - 1)
            i0 = pos.floor().long().clamp(max=rest.shape[1] - 2)
            frac = (pos - i0).to(rest.dtype)
        out = torch.gather(rest, 1, i0) * (1 - frac) + torch.gather(rest, 1, i0 + 1) * frac
        return out if outside is None else torch.where(off, torch.full_like(out, outside), out)
