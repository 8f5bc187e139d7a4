"""Image grids as PNG: samples, traversals, interpolations; the latent tools' figures. Written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from specae.data.hdf5 import atomic_path
from specae.images.checkpoint import GAN
from specae.images.latent import latent_panels
from specae.images.transforms import AsinhStretch


def grid_array(pixels: np.ndarray, ncol: int | None = None, stretch: AsinhStretch | None = None,
               gap: int = 1) -> np.ndarray:
    """Images (N, C, H, W) tiled row by row into one displayable array: (rows*(H+gap), ncol*(W+gap)) in
    [0, 1] for one band (or any number other than 3, summed), (..., 3) RGB for three bands. Brightness is
    an asinh stretch shared by all images (fitted on them unless given), so fluxes compare across tiles."""
    n, c, h, w = pixels.shape
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / ncol))
    x = pixels if c == 3 else pixels.sum(axis=1, keepdims=True)
    stretch = stretch if stretch is not None and len(stretch.scale) == x.shape[1] else AsinhStretch.fit(x)
    shown = np.clip(stretch.forward(x), 0, 1)                       # (N, C', H, W); sky below 0 is black
    out = np.ones((rows * (h + gap) - gap, ncol * (w + gap) - gap, shown.shape[1]), np.float32)
    for i in range(n):
        r, k = divmod(i, ncol)
        out[r * (h + gap):r * (h + gap) + h, k * (w + gap):k * (w + gap) + w] = shown[i].transpose(1, 2, 0)
    return out if c == 3 else out[..., 0]


def write_grid(path, pixels: np.ndarray, ncol: int | None = None, stretch: AsinhStretch | None = None,
               zoom: int = 3) -> None:
    """`grid_array` of `pixels` (N, C, H, W), each pixel drawn as zoom x zoom, written to PNG `path`."""
    import matplotlib.image as mpimg

    arr = grid_array(pixels, ncol, stretch).repeat(zoom, axis=0).repeat(zoom, axis=1)
    with atomic_path(path) as tmp:
        mpimg.imsave(tmp, arr, format="png", cmap="gray", vmin=0, vmax=1, origin="upper")


def write_latent_figures(gan: GAN, out_dir, n: int = 2000, seed: int = 0) -> dict:
    """specae.images.latent.latent_panels as PNGs in `out_dir` (direction_r50.png, direction_ellipticity.png,
    interpolation.png, arithmetic.png); returns its report."""
    panels, report = latent_panels(gan, n, seed)   # first: a refused n leaves no directory behind
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, (pixels, ncol) in panels.items():
        write_grid(out / f"{name}.png", pixels, ncol=ncol)
    return report
