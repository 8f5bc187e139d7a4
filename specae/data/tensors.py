"""Spectra -> model-space tensors: the one place where flux is normalised and put on a model's grid.

Models see only what this module hands them: a `Batch` of normalised flux `x`, its inverse variance and
(in redshift mode) the redshift of each spectrum. The normalisation is a per-spectrum median, computed
in torch so the same code serves spectra held in memory and batches streamed to a GPU, and the scale
it divides out is kept so results go back to the input's units.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from specae.data.spectra import Spectra
from specae.errors import CountWarning, SpecaeError

F32_MAX = float(torch.finfo(torch.float32).max)


@dataclass
class Batch:
    """Model-space tensors for B spectra."""
    x: torch.Tensor              # (B, npix) normalised flux, 0 where masked
    ivar: torch.Tensor           # (B, npix) inverse variance of x, 0 where masked
    z: torch.Tensor | None = None  # (B,) redshift, in redshift mode

    def to(self, device, non_blocking: bool = False) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(move(self.x), move(self.ivar), move(self.z))

    def __getitem__(self, idx) -> "Batch":
        return Batch(self.x[idx], self.ivar[idx], None if self.z is None else self.z[idx])

    def __len__(self) -> int:
        return self.x.shape[0]


def masked_median(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B,) median of each row over `valid` entries (the mean of the middle two for even counts, as
    numpy's); NaN for rows without any. values, valid: (B, n)."""
    s = torch.where(valid, values, torch.full_like(values, torch.inf)).sort(dim=1).values
    n = valid.sum(1, keepdim=True)
    lo, hi = ((n - 1).clamp_min(0) // 2), (n // 2).clamp(max=values.shape[1] - 1)
    med = 0.5 * (s.gather(1, lo) + s.gather(1, hi))[:, 0]
    return torch.where(n[:, 0] > 0, med, torch.full_like(med, torch.nan))


def normalise(flux: torch.Tensor, ivar: torch.Tensor, window: torch.Tensor | None = None):
    """Divide each spectrum by the median of its valid flux inside `window` ((npix,) bool; None = all).

    Spectra whose median is not positive fall back to the median |flux| of their valid pixels, then to 1.
    Non-finite flux or ivar and ivar <= 0 count as masked (x = 0, ivar = 0).
    Returns x, ivar_x (B, npix) float32 and the scale (B,) float64 that was divided out.
    """
    valid = torch.isfinite(flux) & torch.isfinite(ivar) & (ivar > 0)
    flux = torch.where(valid, flux, torch.zeros_like(flux))
    inside = valid if window is None else valid & window
    norm = masked_median(flux, inside).double()
    fallback = masked_median(flux.abs(), valid).double()
    norm = torch.where(norm > 0, norm, torch.where(fallback > 0, fallback, torch.ones_like(norm)))
    x = (flux.double() / norm[:, None]).float()
    # float64 for the product: ivar ~ 1e30 times norm^2 must saturate, not overflow to inf
    ivar_x = (ivar.double() * norm[:, None] ** 2).clamp(max=F32_MAX).float()
    # a pixel whose chi^2 against zero, x^2 ivar, is beyond float32's range cannot be weighed in the model's float32
    # arithmetic (one glitch of 1e25 among fluxes ~1 made the latent posterior's Hessian NaN): masked
    valid &= x.double() ** 2 * ivar_x.double() <= F32_MAX
    return torch.where(valid, x, torch.zeros_like(x)), torch.where(valid, ivar_x, torch.zeros_like(ivar_x)), norm


def batch_normaliser(window: torch.Tensor | None, device):
    """The on-device transform of streamed batches (specae.data.sources): {"flux", "ivar"[, "z"]} (B, npix) in
    the files' units -> {"x", "ivar"[, "z"]} in the model's, by `normalise`."""
    window = None if window is None else window.to(device)

    def transform(batch):
        x, ivar, _ = normalise(batch["flux"], batch["ivar"], window)
        return {"x": x, "ivar": ivar, **({"z": batch["z"]} if "z" in batch else {})}
    return transform


def window_mask(wave: np.ndarray, window) -> torch.Tensor | None:
    """(npix,) bool tensor of the pixels inside `window` = (lo, hi) Angstrom, or None for no window."""
    if window is None:
        return None
    inside = (wave >= window[0]) & (wave <= window[1])
    if not inside.any():
        raise SpecaeError(f"normalisation window {tuple(window)} lies outside {wave[0]:.1f}-{wave[-1]:.1f} A")
    return torch.from_numpy(inside)


def on_grid(spectra: Spectra, wave: np.ndarray, what: str = "the model") -> Spectra:
    """`spectra` on the grid `wave`: unchanged when already there, resampled (flux-conserving, with a
    warning) when its grid covers `wave`, otherwise a SpecaeError saying what is missing."""
    if spectra.npix == wave.size and np.allclose(spectra.wave, wave, rtol=1e-7, atol=0):
        return spectra
    # half a pixel of slack at each end: resampling keeps pixels that are at least half covered
    if spectra.wave[0] > wave[0] + 0.5 * (wave[1] - wave[0]) or spectra.wave[-1] < wave[-1] - 0.5 * (wave[-1] - wave[-2]):
        # wavelengths in nm or micron read as Angstrom: say so when that factor would make them overlap
        unit = next((f"; in {name}? specae reads wavelengths in Angstrom (multiply them by {f:g})"
                     for name, f in (("nm", 10), ("micron", 1e4))
                     if spectra.wave[0] * f < wave[-1] and spectra.wave[-1] * f > wave[0]), "")
        raise SpecaeError(f"the spectra cover {spectra.wave[0]:.4g}-{spectra.wave[-1]:.4g} A but {what} needs "
                          f"{wave[0]:.1f}-{wave[-1]:.1f} A ({wave.size} pixels){unit or '; give spectra that cover its range'}")
    warnings.warn(f"spectra resampled from their {spectra.npix}-pixel grid onto {what}'s {wave.size}-pixel grid",
                  stacklevel=3)
    return spectra.resample(wave)


UNWEIGHABLE = "pixels were masked: beyond float32's range in the model's units (flux^2 ivar, or ivar underflowing)"


def to_batch(spectra: Spectra, window: torch.Tensor | None = None, redshift: str | None = None):
    """Model-space `Batch` of `spectra` (already on the model's grid) and the (N,) scale divided out.

    The scale includes `spectra.scale`, so multiplying model-space flux by it gives the original units.
    """
    x, ivar, norm = normalise(torch.from_numpy(spectra.flux), torch.from_numpy(spectra.ivar), window)
    lost = int(((torch.from_numpy(spectra.ivar) > 0) & (ivar == 0)).sum())
    if lost:
        warnings.warn(CountWarning(lost, UNWEIGHABLE), stacklevel=2)
    z = torch.from_numpy(spectra.redshifts(redshift)).float() if redshift else None
    return Batch(x, ivar, z), spectra.scale * norm.numpy()
