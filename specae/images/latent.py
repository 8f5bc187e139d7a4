"""Latent-space tools on a generator: directions for a physical property, latent arithmetic, interpolation.

Properties are measured on the generated images themselves (specae.images.metrics.morphology), so a
direction means "what makes G's galaxies larger", whatever G learned.

    d = property_direction(gan, "r50")             # unit vector (latent,), R^2 of the linear fit
    grid = traverse(gan, d["direction"], latents(6, gan.net.latent), np.linspace(-3, 3, 7))
    panels, report = latent_panels(gan)            # image grids: directions, interpolation, arithmetic
"""

from __future__ import annotations

import numpy as np
import torch

from specae.errors import SpecaeError
from specae.images.checkpoint import GAN
from specae.images.metrics import MORPHOLOGY, morphology
from specae.images.sampling import check_fits, generate, latents
from specae.latent import slerp
from specae.regress import r2, ridge_fit


def render(gan: GAN, z: np.ndarray | torch.Tensor) -> np.ndarray:
    """G(z) in the training images' units (N, C, H, W) for latents z (N, latent)."""
    return gan.stretch.inverse(generate(gan.generator, torch.as_tensor(np.asarray(z), dtype=torch.float32)))


def measured(gan: GAN, n: int, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """n latents (n, latent) and the morphology statistics (n,) each of their images."""
    check_fits(gan, n)
    z = latents(n, gan.net.latent, seed).numpy()
    return z, morphology(render(gan, z))


def property_direction(gan: GAN, prop: str, n: int = 2000, seed: int = 0, ridge: float = 1.0,
                       sample: tuple | None = None) -> dict:
    """The latent direction along which property `prop` (a MORPHOLOGY name) of G(z) grows: ridge regression
    y = b.z + c over n samples (or the given (z, statistics) `sample`). Returns direction b/|b| (latent,),
    slope |b| (change of `prop` per unit step along it) and r2, the fraction of the variance of `prop` it
    explains."""
    if prop not in MORPHOLOGY:
        raise SpecaeError(f"unknown property {prop!r} (use one of {', '.join(MORPHOLOGY)})")
    z, stats = sample if sample is not None else measured(gan, n, seed)
    y = stats[prop].astype(np.float64)
    b, intercept = ridge_fit(np.asarray(z, np.float64), y, ridge)                   # (latent,)
    norm = float(np.linalg.norm(b))
    return {"property": prop, "direction": b / max(norm, 1e-300), "slope": norm, "r2": r2(z @ b + intercept, y)}


def traverse(gan: GAN, direction: np.ndarray, z0: np.ndarray | torch.Tensor, steps: np.ndarray) -> np.ndarray:
    """Images (m * len(steps), C, H, W), row by row: each start z0[i] (m, latent) moved by steps * direction."""
    z = np.asarray(z0, np.float64)[:, None] + np.asarray(steps)[None, :, None] * direction    # (m, S, latent)
    return render(gan, z.reshape(-1, z.shape[-1]))


def interpolation_grid(gan: GAN, pairs: int = 6, steps: int = 8, seed: int = 0) -> np.ndarray:
    """Images (pairs * steps, C, H, W): each row interpolates between two random latents."""
    z = latents(2 * pairs, gan.net.latent, seed).numpy()
    t = np.linspace(0, 1, steps)
    return render(gan, np.concatenate([slerp(z[2 * i], z[2 * i + 1], t) for i in range(pairs)]))


def typical(z: np.ndarray) -> np.ndarray:
    """z (..., latent) scaled to the radius sqrt(latent) where N(0, I) latents lie: a mean of many latents
    sits near the origin, where G was never trained."""
    return z * np.sqrt(z.shape[-1]) / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


def arithmetic(z_a: np.ndarray, z_b: np.ndarray, z_c: np.ndarray) -> np.ndarray:
    """The latent mean(z_a) - mean(z_b) + mean(z_c) (latent,) (Radford et al. 2016), at the typical radius."""
    return typical(z_a.mean(axis=0) - z_b.mean(axis=0) + z_c.mean(axis=0))


def size_shape_analogy(gan: GAN, z: np.ndarray, stats: dict) -> dict:
    """large round - small round + small elongated = large elongated? Groups are the quartiles of r50 and
    ellipticity among samples z (n, latent). Returns the four latents (the groups' means and A - B + C, all
    at the typical radius) and the r50 and ellipticity measured on their images."""
    big, small = stats["r50"] >= np.quantile(stats["r50"], 0.75), stats["r50"] <= np.quantile(stats["r50"], 0.25)
    flat, round_ = (stats["ellipticity"] >= np.quantile(stats["ellipticity"], 0.75),
                    stats["ellipticity"] <= np.quantile(stats["ellipticity"], 0.25))
    groups = {"large_round": big & round_, "small_round": small & round_, "small_elongated": small & flat}
    if min(g.sum() for g in groups.values()) < 1:
        raise SpecaeError("too few samples to form the size/shape groups; use more samples")
    zs = {k: typical(z[g].mean(axis=0)) for k, g in groups.items()}
    zs["result"] = arithmetic(*(z[g] for g in groups.values()))
    m = morphology(render(gan, np.stack(list(zs.values()))))
    return {"latents": zs, "r50": dict(zip(zs, m["r50"].tolist())), "ellipticity": dict(zip(zs, m["ellipticity"].tolist()))}


def latent_panels(gan: GAN, n: int = 2000, seed: int = 0) -> tuple[dict[str, tuple[np.ndarray, int]], dict]:
    """The latent tools on `gan` from n samples: panels, name -> (images (m, C, H, W) in the training
    images' units, columns): direction_r50 and direction_ellipticity (rows: 6 random starts moved from -3 to
    +3 along the direction), interpolation, arithmetic (A, B, C, A - B + C); and the report: the directions'
    slopes and R^2 and the analogy's measured properties. specae.images.figures writes them."""
    z, stats = measured(gan, n, seed)
    starts = latents(6, gan.net.latent, seed + 1).numpy()
    steps = np.linspace(-3, 3, 7)
    panels, report = {}, {}
    for prop in ("r50", "ellipticity"):
        d = property_direction(gan, prop, sample=(z, stats))
        panels[f"direction_{prop}"] = traverse(gan, d["direction"], starts, steps), len(steps)
        report[prop] = {"slope": d["slope"], "r2": d["r2"]}
    panels["interpolation"] = interpolation_grid(gan, seed=seed + 2), 8
    analogy = size_shape_analogy(gan, z, stats)
    panels["arithmetic"] = render(gan, np.stack(list(analogy["latents"].values()))), 4
    report["arithmetic"] = {"r50": analogy["r50"], "ellipticity": analogy["ellipticity"]}
    return panels, report
