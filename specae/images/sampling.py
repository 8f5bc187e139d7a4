"""Using a trained GAN: samples in the training images' units, and the discriminator as a scorer.

    gan = load_gan("GAN")
    x = sample(gan, 64, seed=0)                       # (64, C, H, W) float32, the training images' units
    logits = score(gan.discriminator, gan.stretch, images.pixels)   # (N,) D's logit: > 0 looks real
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn as nn

from specae.errors import SpecaeError
from specae.images.checkpoint import GAN
from specae.images.transforms import AsinhStretch


def latents(n: int, latent: int, seed: int = 0) -> torch.Tensor:
    """n standard normal latent vectors (n, latent), reproducible from `seed` on any device."""
    return torch.randn(n, latent, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def generate(generator: nn.Module, z: torch.Tensor, batch: int = 256, seed: int = 0) -> np.ndarray:
    """G(z) in the stretched range (-1, 1): (N, C, H, W) float32 numpy, for z (N, latent); `seed` draws
    the noise of a generator with noise inputs."""
    device = next(generator.parameters()).device
    rng = torch.Generator(device=device).manual_seed(seed)
    generator.eval()
    return np.concatenate([generator(z[a:a + batch].to(device), rng).float().cpu().numpy()
                           for a in range(0, len(z), batch)])


def sample(gan: GAN, n: int, seed: int = 0, batch: int = 256) -> np.ndarray:
    """n generated images (n, C, H, W) float32 in the training images' units."""
    check_fits(gan, n)
    return gan.stretch.inverse(generate(gan.generator, latents(n, gan.net.latent, seed), batch, seed))


def check_fits(gan: GAN, n: int) -> None:
    """SpecaeError unless n >= 1 and n images of `gan` fit in this machine's memory while they are made (the
    batches, their concatenation and a stretched copy at once), rather than a crash after minutes of work."""
    if n < 1:
        raise SpecaeError(f"number of samples must be at least 1, got {n}")
    per = 4 * (gan.net.channels * gan.net.size ** 2 + gan.net.latent)   # float32 bytes of one image and its z
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):   # the system does not say: no bound
        return
    if 3 * n * per > ram:
        raise SpecaeError(f"{n} samples need {3 * n * per / 2 ** 30:.3g} GiB while they are made, more than this "
                          f"machine's {ram / 2 ** 30:.3g} GiB of memory; ask for at most {ram // (3 * per)}")


@torch.no_grad()
def score(discriminator: nn.Module, stretch: AsinhStretch, pixels: np.ndarray, batch: int = 256) -> np.ndarray:
    """D's logit per image (N,) float32 for images (N, C, H, W) in the training images' units (> 0: D takes
    it for real; sigmoid gives the probability)."""
    cfg = discriminator.cfg
    if pixels.shape[1:] != (cfg.channels, cfg.size, cfg.size):
        raise SpecaeError(f"images of shape {pixels.shape[1:]}; this discriminator scores "
                          f"({cfg.channels}, {cfg.size}, {cfg.size})")
    device = next(discriminator.parameters()).device
    discriminator.eval()
    x = torch.from_numpy(stretch.forward(pixels))
    return np.concatenate([discriminator(x[a:a + batch].to(device)).float().cpu().numpy()
                           for a in range(0, len(x), batch)]).astype(np.float32)
