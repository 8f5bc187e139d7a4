"""The flux stretch between physical units and the generator's tanh range, and photometry-safe augmentation.

    y = asinh(x / scale) / asinh(peak / scale)      per channel; x in the images' units, y in [-1, 1]

`scale` is a multiple of the sky noise (linear below it, logarithmic above, as in Lupton et al. 1999),
`peak` the largest |x| of the training images, so zero flux stays 0 and the stretch is exactly invertible.
Augmentation is the 8 flips and 90-degree rotations of the square only: they move pixels, never change
their values, so fluxes and colours survive (the sky has no preferred orientation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from specae.errors import SpecaeError

MAD_TO_SIGMA = 1.4826   # standard deviation of a Gaussian per median absolute deviation


@dataclass
class AsinhStretch:
    scale: tuple[float, ...]   # (C,) softening per channel, images' units (default: the sky noise)
    peak: tuple[float, ...]    # (C,) the largest |x| per channel; maps to +-1

    @classmethod
    def fit(cls, pixels: np.ndarray, softening: float = 1.0) -> "AsinhStretch":
        """The stretch for images (N, C, H, W): scale = `softening` x the robust noise of the sky (1.4826 MAD),
        peak = max |x|. A softening of 1 shows the faintest structure (display); a generator learns better
        with the noise compressed (specae.images.objective.GANConfig.softening)."""
        if not softening > 0:
            raise SpecaeError(f"stretch softening must be positive, got {softening}")
        flat = np.moveaxis(np.asarray(pixels, np.float64), 1, 0).reshape(pixels.shape[1], -1)   # (C, N*H*W)
        peak = np.abs(flat).max(axis=1)
        if not (peak > 0).all():
            raise SpecaeError("the images hold no signal (a channel is zero everywhere); cannot fit a stretch")
        mad = np.median(np.abs(flat - np.median(flat, axis=1, keepdims=True)), axis=1)
        scale = np.where(mad > 0, MAD_TO_SIGMA * mad, 1e-3 * peak)   # noise-free images: soften at 1e-3 of the peak
        return cls(tuple(map(float, softening * scale)), tuple(map(float, peak)))

    def _ab(self) -> tuple[np.ndarray, np.ndarray]:
        """scale and asinh(peak / scale), (C, 1, 1): broadcast over images (..., C, H, W)."""
        s = np.asarray(self.scale, np.float64).reshape(-1, 1, 1)
        return s, np.arcsinh(np.asarray(self.peak, np.float64).reshape(-1, 1, 1) / s)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Images (..., C, H, W) in the images' units -> float32 in [-1, 1] (computed in float64)."""
        s, a = self._ab()
        return (np.arcsinh(np.asarray(x, np.float64) / s) / a).astype(np.float32)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """Stretched images (..., C, H, W) -> float32 in the images' units (the exact inverse of `forward`)."""
        s, a = self._ab()
        return (s * np.sinh(np.asarray(y, np.float64) * a)).astype(np.float32)

    def to_dict(self) -> dict:
        return {"scale": list(self.scale), "peak": list(self.peak)}

    @classmethod
    def from_dict(cls, d: dict) -> "AsinhStretch":
        return cls(tuple(float(v) for v in d["scale"]), tuple(float(v) for v in d["peak"]))


def dihedral(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Apply symmetry k[i] in 0..7 of the square to image x[i]: k % 4 quarter turns, then a left-right flip
    when k >= 4. x (B, C, H, W) with H == W, k (B,) int on x's device. One gather, no host synchronisation."""
    b, c, h, w = x.shape
    idx = torch.arange(h * w, device=x.device).view(1, h, w)
    maps = [torch.rot90(idx, j % 4, dims=(1, 2)) for j in range(8)]
    maps = torch.cat([m.flip(2) if j >= 4 else m for j, m in enumerate(maps)]).flatten(1)   # (8, H*W)
    src = maps[k][:, None, :].expand(b, c, h * w)                                            # (B, C, H*W)
    return x.flatten(2).gather(2, src).view(b, c, h, w)


def flip_rot(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image (B, C, H, W) under one of the 8 flips/rotations of the square, drawn on x's device."""
    k = torch.randint(0, 8, (x.shape[0],), generator=generator, device=x.device)
    return dihedral(x, k)


def translate(x: torch.Tensor, generator: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    """DiffAugment translation (Zhao et al. 2020): each image (B, C, H, W) shifted by up to `ratio` of its
    side in x and y, the uncovered border filled with 0 (zero flux after the stretch); differentiable."""
    b, _, h, w = x.shape
    pad = max(1, int(h * ratio + 0.5))
    shift = torch.randint(-pad, pad + 1, (2, b, 1), generator=generator, device=x.device)   # (2, B, 1)
    iy = (torch.arange(h, device=x.device) + shift[0] + pad).clamp_(0, h + 2 * pad - 1)    # (B, H)
    ix = (torch.arange(w, device=x.device) + shift[1] + pad).clamp_(0, w + 2 * pad - 1)    # (B, W)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))                              # (B, C, H+2p, W+2p)
    rows = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[rows, iy[:, :, None], ix[:, None, :]].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, generator: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    """DiffAugment cutout: a square of `ratio` of the side, at a random place in each image, set to 0."""
    b, _, h, _ = x.shape
    side = max(1, int(h * ratio + 0.5))
    corner = torch.randint(0, h - side + 1, (2, b, 1), generator=generator, device=x.device)   # (2, B, 1)
    pos = torch.arange(h, device=x.device)                                                   # H == W
    inside = (pos >= corner) & (pos < corner + side)                                           # (2, B, H)
    hole = inside[0][:, :, None] & inside[1][:, None, :]                                       # (B, H, W)
    return x * (~hole)[:, None].to(x.dtype)


DIFFAUG = {"translation": translate, "cutout": cutout}


def diff_augment(x: torch.Tensor, policy: tuple[str, ...], generator: torch.Generator) -> torch.Tensor:
    """The DiffAugment transforms named in `policy` (keys of DIFFAUG), applied in order."""
    for name in policy:
        x = DIFFAUG[name](x, generator)
    return x
