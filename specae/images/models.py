"""Generators and discriminators: the DCGAN (Radford et al. 2016) and the dense GAN it improves on.

The DCGAN follows PyTorch's DCGAN example: the generator lifts z (B, latent) to a 4x4 map and doubles it
with 4x4 stride-2 transposed convolutions (batch norm, ReLU) up to the image, tanh out; the
discriminator halves the image with 4x4 stride-2 convolutions (LeakyReLU 0.2, batch norm on every layer
but the input one) down to 4x4 and ends in one logit. Weights start at N(0, 0.02), batch-norm scales at
N(1, 0.02). With `spectral_norm` every discriminator layer is spectrally normalised and batch norm is
left out (Miyato et al. 2018). Widths: `width` channels at the image-side layer, doubling towards 4x4.
With `noise` the generators add per-pixel Gaussian noise with a learned scale per channel after every
(transposed) convolution or at their output (StyleGAN's noise inputs, Karras et al. 2019): the sky and
detector noise that fill a cutout then need no latent capacity. Off by default (the reference DCGAN).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm as sn

from specae.plumbing import config_from_dict


@dataclass
class NetConfig:
    size: int = 32                # image side [pixels], a power of two >= 8
    channels: int = 1             # bands
    latent: int = 100             # z dimensions
    width: int = 64               # channels of the image-side layers (DCGAN ngf = ndf); dense: hidden units / 4
    dense: bool = False           # fully connected GAN instead of the DCGAN
    spectral_norm: bool = False   # spectral norm on the discriminator's layers (and no batch norm there)
    noise: bool = False           # per-pixel noise inputs in the generator

    def __post_init__(self):
        if self.size < 8 or self.size & (self.size - 1):
            raise ValueError(f"image size {self.size} is not a power of two >= 8")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "NetConfig":
        return config_from_dict(cls, d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def init_weights(m: nn.Module) -> None:
    """DCGAN initialisation: conv and linear weights N(0, 0.02), batch-norm scales N(1, 0.02), biases 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def _init(module: nn.Module, spectral: bool) -> None:
    """DCGAN initialisation, then (for discriminators with `spectral`) spectral norm on every weight layer:
    initialising first, because a spectrally normalised layer's weight is computed, not stored."""
    module.apply(init_weights)
    if spectral:
        for m in list(module.modules()):
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                sn(m)


def _stages(size: int) -> int:
    """Doublings between the 4x4 map and the image."""
    return int(math.log2(size)) - 2


class NoiseInput(nn.Module):
    """x + scale[c] * n, n ~ N(0, 1) per pixel (shared by the channels), drawn from `generator`; scale
    starts at 0, so training begins from the noise-free network."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n = torch.randn(x.shape[0], 1, *x.shape[2:], generator=generator, device=x.device, dtype=x.dtype)   # (B, 1, H, W)
        return x + self.scale.to(x.dtype).view(1, -1, 1, 1) * n


class DCGANGenerator(nn.Module):
    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        k = _stages(cfg.size)
        chans = [cfg.latent] + [cfg.width * 2 ** (k - 1 - i) for i in range(k)] + [cfg.channels]   # 32x32: [z, 4w, 2w, w, C]
        self.convs = nn.ModuleList(nn.ConvTranspose2d(a, b, 4, 1 if i == 0 else 2, 0 if i == 0 else 1, bias=False)
                                   for i, (a, b) in enumerate(zip(chans[:-1], chans[1:])))
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) for c in chans[1:-1])
        self.noise = nn.ModuleList(NoiseInput(c) for c in chans[1:]) if cfg.noise else None
        self.apply(init_weights)

    def forward(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = z[:, :, None, None]                        # (B, latent, 1, 1)
        for i, conv in enumerate(self.convs):
            x = conv(x)                                # (B, chans[i + 1], 4 * 2^i, 4 * 2^i)
            if self.noise is not None:
                x = self.noise[i](x, generator)
            if i < len(self.norms):
                x = F.relu(self.norms[i](x))
        return torch.tanh(x)                           # (B, C, size, size) in (-1, 1)


class DCGANDiscriminator(nn.Module):
    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        k = _stages(cfg.size)
        chans = [cfg.width * 2 ** i for i in range(k)]                # e.g. 32x32: [w, 2w, 4w]
        layers = [nn.Conv2d(cfg.channels, chans[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for a, b in zip(chans[:-1], chans[1:]):
            layers.append(nn.Conv2d(a, b, 4, 2, 1, bias=False))
            if not cfg.spectral_norm:
                layers.append(nn.BatchNorm2d(b))
            layers.append(nn.LeakyReLU(0.2, True))
        layers.append(nn.Conv2d(chans[-1], 1, 4, 1, 0, bias=False))   # the 4x4 map -> one logit
        self.net = nn.Sequential(*layers)
        _init(self, cfg.spectral_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()                  # (B, C, size, size) -> (B,) logits


class DenseGenerator(nn.Module):
    """z -> 4w -> 8w -> 16w hidden units (batch norm, ReLU) -> all pixels (with noise inputs), tanh."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        dims = [cfg.latent, 4 * cfg.width, 8 * cfg.width, 16 * cfg.width]
        layers = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b, bias=False), nn.BatchNorm1d(b), nn.ReLU(True)]
        layers.append(nn.Linear(dims[-1], cfg.channels * cfg.size ** 2))
        self.net = nn.Sequential(*layers)
        self.noise = NoiseInput(cfg.channels) if cfg.noise else None
        self.apply(init_weights)

    def forward(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        c, s = self.cfg.channels, self.cfg.size
        x = self.net(z).view(-1, c, s, s)             # (B, latent) -> (B, C, size, size)
        if self.noise is not None:
            x = self.noise(x, generator)
        return torch.tanh(x)


class DenseDiscriminator(nn.Module):
    """All pixels -> 8w -> 4w hidden units (LeakyReLU 0.2) -> one logit."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        dims = [cfg.channels * cfg.size ** 2, 8 * cfg.width, 4 * cfg.width]
        layers = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Linear(dims[-1], 1))
        self.net = nn.Sequential(*layers)
        _init(self, cfg.spectral_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1)).flatten()       # (B, C, size, size) -> (B,) logits


def build_generator(cfg: NetConfig) -> nn.Module:
    return DenseGenerator(cfg) if cfg.dense else DCGANGenerator(cfg)


def build_discriminator(cfg: NetConfig) -> nn.Module:
    return DenseDiscriminator(cfg) if cfg.dense else DCGANDiscriminator(cfg)
