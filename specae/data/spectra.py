"""The `Spectra` container: many spectra on one wavelength grid, with inverse variances.

Every reader returns one, every model consumes one, every writer stores one.
Conventions:
    wave  (npix,)    wavelength in Angstrom, strictly increasing
    flux  (N, npix)  flux density, in `meta["flux_unit"]`
    ivar  (N, npix)  inverse variance of flux; 0 means "no information"
    mask  (N, npix)  True = bad pixel; always consistent with ivar (mask <=> ivar == 0)
    scale (N,)       normalisation factor already divided out of flux (1 = original units)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from specae.errors import SpecaeError
from specae.data.resample import loglam_grid, pixel_edges, rebin_matrix


@dataclass
class Spectra:
    wave: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    mask: np.ndarray | None = None
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    ids: np.ndarray | None = None
    scale: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.wave = np.asarray(self.wave, dtype=np.float64)
        self.flux = np.array(self.flux, dtype=np.float32, ndmin=2)
        self.ivar = np.array(self.ivar, dtype=np.float32, ndmin=2)
        n, npix = self.flux.shape
        if self.wave.ndim != 1 or self.wave.size != npix:
            raise SpecaeError(f"wave has shape {self.wave.shape} but flux has {npix} pixels per spectrum")
        if self.ivar.shape != self.flux.shape:
            raise SpecaeError(f"ivar shape {self.ivar.shape} does not match flux shape {self.flux.shape}")
        if not np.all(np.isfinite(self.wave)):
            raise SpecaeError("wave contains NaN or inf")
        if npix > 1 and not np.all(np.diff(self.wave) > 0):
            raise SpecaeError("wave must be strictly increasing")
        mask = np.zeros((n, npix), bool) if self.mask is None else np.array(self.mask, dtype=bool, ndmin=2)
        if mask.shape != self.flux.shape:
            raise SpecaeError(f"mask shape {mask.shape} does not match flux shape {self.flux.shape}")

        bad = ~np.isfinite(self.flux) | ~np.isfinite(self.ivar) | (self.ivar < 0)
        n_bad = int(np.count_nonzero(bad & ~mask))
        if n_bad:
            warnings.warn(f"{n_bad} pixels with NaN/inf flux or NaN/inf/negative ivar were masked",
                          stacklevel=3)
        mask |= bad | (self.ivar == 0)
        self.flux[bad] = 0.0
        self.ivar[mask] = 0.0
        self.mask = mask

        self.labels = {k: np.asarray(v) for k, v in self.labels.items()}
        for k, v in self.labels.items():
            if v.shape[:1] != (n,):
                raise SpecaeError(f"label {k!r} has shape {v.shape}, expected ({n},)")
        self.ids = np.arange(n).astype(str) if self.ids is None else np.asarray(self.ids).astype(str)
        if self.ids.shape != (n,):
            raise SpecaeError(f"ids has shape {self.ids.shape}, expected ({n},)")
        self.scale = np.ones(n) if self.scale is None else np.asarray(self.scale, dtype=np.float64)
        if self.scale.shape != (n,):
            raise SpecaeError(f"scale has shape {self.scale.shape}, expected ({n},)")
        self.meta = {"flux_unit": "", "source": "", "frame": "observed", **self.meta}

    # -- basic facts -------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.flux.shape[0]

    @property
    def npix(self) -> int:
        return self.wave.size

    @property
    def has_data(self) -> np.ndarray:
        """(N,) bool: the spectrum has at least one valid pixel."""
        return (~self.mask).any(axis=1)

    def __repr__(self) -> str:
        return (f"Spectra(N={len(self)}, npix={self.npix}, wave={self.wave[0]:.1f}-{self.wave[-1]:.1f} A, "
                f"labels={sorted(self.labels)}, frame={self.meta['frame']!r})")

    # -- selection -----------------------------------------------------------------------------
    def select(self, idx) -> "Spectra":
        """A new Spectra holding rows `idx` (slice, integer array or boolean mask)."""
        idx = np.arange(len(self))[idx]
        return Spectra(self.wave, self.flux[idx], self.ivar[idx], self.mask[idx],
                       {k: v[idx] for k, v in self.labels.items()}, self.ids[idx], self.scale[idx],
                       dict(self.meta))

    __getitem__ = select

    def drop_empty(self) -> "Spectra":
        """Drop spectra without a single valid pixel (e.g. dead fibres)."""
        return self.select(self.has_data)

    @classmethod
    def concatenate(cls, items: list["Spectra"]) -> "Spectra":
        """Stack spectra that share one wavelength grid (resample first if they do not)."""
        if not items:
            raise SpecaeError("nothing to concatenate")
        first = items[0]
        for s in items[1:]:
            if s.npix != first.npix or not np.allclose(s.wave, first.wave, rtol=1e-10, atol=0):
                raise SpecaeError("cannot concatenate spectra on different wavelength grids; resample first")
        common = set.intersection(*(set(s.labels) for s in items))
        return cls(first.wave, np.concatenate([s.flux for s in items]), np.concatenate([s.ivar for s in items]),
                   np.concatenate([s.mask for s in items]),
                   {k: np.concatenate([s.labels[k] for s in items]) for k in sorted(common)},
                   np.concatenate([s.ids for s in items]), np.concatenate([s.scale for s in items]),
                   dict(first.meta))

    def split(self, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> tuple["Spectra", ...]:
        """Random disjoint subsets (train, val, test, ...) with the given fractions."""
        fractions = np.asarray(fractions, dtype=float)
        if np.any(fractions < 0) or fractions.sum() > 1 + 1e-9:
            raise SpecaeError(f"split fractions {fractions.tolist()} must be >= 0 and sum to <= 1")
        order = np.random.default_rng(seed).permutation(len(self))
        edges = np.round(np.cumsum(np.concatenate([[0], fractions])) * len(self)).astype(int)
        return tuple(self.select(np.sort(order[a:b])) for a, b in zip(edges[:-1], edges[1:]))

    # -- units ---------------------------------------------------------------------------------
    def normalise(self, window: tuple[float, float] | None = None) -> "Spectra":
        """Divide each spectrum by the median of its valid flux in `window` (Angstrom; None = all).

        The factor is multiplied into `scale`, so `to_original_units` undoes it. Spectra whose median is
        not positive (no valid pixel in the window, or flux around zero) fall back to the median absolute
        flux over all valid pixels, then to 1.
        """
        inside = np.ones(self.npix, bool) if window is None else (self.wave >= window[0]) & (self.wave <= window[1])
        if not inside.any():
            raise SpecaeError(f"normalisation window {window} lies outside {self.wave[0]:.1f}-{self.wave[-1]:.1f} A")
        norm = _masked_median(self.flux[:, inside], self.mask[:, inside])
        fallback = _masked_median(np.abs(self.flux), self.mask)
        norm = np.where(norm > 0, norm, np.where(fallback > 0, fallback, 1.0))
        return Spectra(self.wave, self.flux / norm[:, None], self.ivar * norm[:, None] ** 2, self.mask,
                       dict(self.labels), self.ids, self.scale * norm, dict(self.meta))

    def to_original_units(self, flux: np.ndarray, sigma: np.ndarray | None = None):
        """Multiply model-space flux (and sigma) of these spectra back by `scale`. Shapes (N, npix)."""
        s = self.scale[:, None]
        return (flux * s) if sigma is None else (flux * s, sigma * s)

    def redshifts(self, label: str) -> np.ndarray:
        """(N,) float redshifts from label `label`, checked to be finite and > -1."""
        if label not in self.labels:
            raise SpecaeError(f"redshift label {label!r} is not in the data (labels: {sorted(self.labels) or 'none'})")
        try:
            z = np.asarray(self.labels[label], dtype=np.float64)
        except ValueError:
            raise SpecaeError(f"label {label!r} does not hold numbers") from None
        if not np.all(np.isfinite(z)) or np.any(z <= -1):
            raise SpecaeError(f"label {label!r} has non-finite or <= -1 redshifts")
        return z

    # -- grids ---------------------------------------------------------------------------------
    def resample(self, wave: np.ndarray) -> "Spectra":
        """Rebin onto another grid, conserving flux density per pixel and propagating ivar.

        Each new pixel is the overlap-weighted mean of the valid old pixels it covers; its variance is
        sum(w_i^2 var_i) / (sum w_i)^2. New pixels less than half covered by valid data are masked.
        """
        wave = np.asarray(wave, dtype=np.float64)
        w = rebin_matrix(self.wave, wave)                   # (npix_new, npix_old) overlap lengths
        good = ~self.mask                                   # (N, npix_old)
        cover = (w @ good.T.astype(np.float64)).T           # (N, npix_new) valid overlap length
        ok = cover >= 0.5 * np.diff(pixel_edges(wave))
        safe = np.where(ok, cover, 1.0)
        flux = (w @ np.where(good, self.flux, 0.0).T).T / safe
        var = np.where(good, 1.0 / np.where(good, self.ivar, 1.0), 0.0)
        var_new = (w.power(2) @ var.T).T / safe ** 2
        ivar = np.where(ok & (var_new > 0), 1.0 / np.where(var_new > 0, var_new, 1.0), 0.0)
        return Spectra(wave, np.where(ok, flux, 0.0), ivar, ~ok, dict(self.labels), self.ids, self.scale,
                       dict(self.meta))

    def to_rest_frame(self, z, wave: np.ndarray | None = None) -> "Spectra":
        """Shift each spectrum to its rest frame and rebin onto one common rest-frame grid.

        z: (N,) redshifts or the name of a label. wave: target rest grid in Angstrom; by default a
        log-linear grid with the input's median log step covering all shifted spectra. Flux density
        values are kept as they are (normalise afterwards); ivar is propagated by `resample`.
        """
        z = self.redshifts(z) if isinstance(z, str) else np.asarray(z, dtype=float)
        if z.shape != (len(self),) or not np.all(np.isfinite(z)) or np.any(z <= -1):
            raise SpecaeError("to_rest_frame needs one finite redshift > -1 per spectrum")
        if wave is None:
            step = float(np.median(np.diff(np.log10(self.wave))))
            wave = loglam_grid(self.wave[0] / (1 + z.max()), self.wave[-1] / (1 + z.min()), step)
        parts = [Spectra(self.wave / (1 + zi), self.flux[i:i + 1], self.ivar[i:i + 1], self.mask[i:i + 1])
                 .resample(wave) for i, zi in enumerate(z)]
        return Spectra(wave, np.concatenate([p.flux for p in parts]), np.concatenate([p.ivar for p in parts]),
                       np.concatenate([p.mask for p in parts]), dict(self.labels), self.ids, self.scale,
                       {**self.meta, "frame": "rest"})


def _masked_median(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N,) median over unmasked entries of each row; NaN where a row has none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(np.where(mask, np.nan, x), axis=1)
