"""The `Spectra` container: many spectra on one wavelength grid, with inverse variances.

Every reader returns one, every model consumes one, every writer stores one.
Conventions:
    wave  (npix,)    wavelength in Angstrom, positive and strictly increasing
    flux  (N, npix)  flux density, in `meta["flux_unit"]`
    ivar  (N, npix)  inverse variance of flux; 0 means "no information"
    mask  (N, npix)  True = bad pixel; always consistent with ivar (mask <=> ivar == 0)
    scale (N,)       normalisation factor already divided out of flux (1 = original units)

Input of any real dtype is accepted and stored as float32. Pixels whose flux is NaN/inf or too large
for float32, or whose ivar is NaN/inf/negative, are masked with one warning that counts them; ivar
above float32's range is clipped to it, with a warning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from specae.errors import MaskedPixelsWarning, SpecaeError
from specae.data.resample import (checked_grid, loglam_grid, overlap_pairs, pixel_edges, rebin_matrix,
                                  require_memory)

F32_MAX = float(np.finfo(np.float32).max)


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
        self.wave = checked_grid(self.wave)
        flux, ivar = _numbers("flux", self.flux, ndmin=2), _numbers("ivar", self.ivar, ndmin=2)
        if flux.ndim != 2:
            raise SpecaeError(f"flux must have shape (N, npix) or (npix,), found {flux.shape}")
        n, npix = flux.shape
        if npix == 0 or self.wave.size != npix:
            raise SpecaeError(f"wave has shape {self.wave.shape} but flux has {npix} pixels per spectrum")
        if ivar.shape != flux.shape:
            raise SpecaeError(f"ivar shape {ivar.shape} does not match flux shape {flux.shape}")
        mask = np.zeros((n, npix), bool) if self.mask is None else _numbers("mask", self.mask, ndmin=2).astype(bool)
        if mask.shape != flux.shape:
            raise SpecaeError(f"mask shape {mask.shape} does not match flux shape {flux.shape}")

        bad = ~np.isfinite(flux) | ~np.isfinite(ivar) | (ivar < 0)
        if _wider_than_float32(flux):                      # flux too large for float32 cannot be stored
            bad |= np.abs(flux) > F32_MAX
        n_bad = int(np.count_nonzero(bad & ~mask))
        if n_bad:
            warnings.warn(MaskedPixelsWarning(n_bad), stacklevel=3)
        mask |= bad
        # ivar that large is clipped instead: its weight dominates anyway
        n_huge = int(np.count_nonzero((ivar > F32_MAX) & ~mask)) if _wider_than_float32(ivar) else 0
        if n_huge:
            warnings.warn(f"{n_huge} pixels have ivar above float32's range and were clipped to {F32_MAX:.3g}; "
                          "if the flux is in very small units, scale it (e.g. to 1e-17 erg/s/cm2/A)", stacklevel=3)
            ivar = np.minimum(ivar, F32_MAX)
        self.flux = np.where(bad, 0, flux).astype(np.float32, copy=False)
        self.ivar = np.where(mask, 0, ivar).astype(np.float32, copy=False)
        self.mask = mask | (self.ivar == 0)   # includes ivar below float32's smallest value: no information

        self.labels = {k: np.asarray(v) for k, v in self.labels.items()}
        for k, v in self.labels.items():
            if v.shape[:1] != (n,):
                raise SpecaeError(f"label {k!r} has shape {v.shape}, expected ({n},)")
        self.ids = np.arange(n).astype(str) if self.ids is None else np.asarray(self.ids).astype(str)
        if self.ids.shape != (n,):
            raise SpecaeError(f"ids has shape {self.ids.shape}, expected ({n},)")
        self.scale = np.ones(n) if self.scale is None else _numbers("scale", self.scale).astype(np.float64)
        if self.scale.shape != (n,):
            raise SpecaeError(f"scale has shape {self.scale.shape}, expected ({n},)")
        if not np.all(np.isfinite(self.scale) & (self.scale > 0)):
            raise SpecaeError("scale (the normalisation divided out) must be finite and positive")
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
    def to_original_units(self, flux: np.ndarray, sigma: np.ndarray | None = None):
        """Flux (and sigma) (N, npix) of these spectra, given in their units, times `scale`: in the units before
        the normalisation a file recorded (its `scale`) was divided out."""
        s = self.scale[:, None]
        return (flux * s) if sigma is None else (flux * s, sigma * s)

    def redshifts(self, label: str) -> np.ndarray:
        """(N,) float redshifts from label `label`, checked to be finite and > -1."""
        return self.numeric_label(label, "redshift", lambda z: z > -1, "<= -1 redshifts")

    def numeric_label(self, label: str, what: str, ok, bad_values: str) -> np.ndarray:
        """(N,) float values of label `label` (a `what`: "redshift", "velocity"), checked to be finite and `ok`
        (else an error counting the `bad_values` and naming their ids)."""
        if label not in self.labels:
            raise SpecaeError(f"{what} label {label!r} is not in the data (labels: {sorted(self.labels) or 'none'})")
        try:
            z = np.asarray(self.labels[label], dtype=np.float64)
        except ValueError:
            raise SpecaeError(f"label {label!r} does not hold numbers") from None
        bad = np.flatnonzero(~np.isfinite(z) | ~ok(z))
        if bad.size:
            raise SpecaeError(f"label {label!r} has {bad.size} non-finite or {bad_values} (ids "
                              f"{', '.join(self.ids[bad[:3]])}{', ...' if bad.size > 3 else ''})")
        return z

    # -- specutils (optional: pip install "specae[specutils]") ---------------------------------
    @classmethod
    def from_specutils(cls, spectrum) -> "Spectra":
        """From a specutils `Spectrum` (flux (npix,) or (N, npix)) or `SpectrumList`: wavelengths in Angstrom,
        the flux unit's text in meta["flux_unit"], the uncertainty of any astropy kind as ivar, the mask (see
        `specae.data.specutils.from_specutils`)."""
        from specae.data.specutils import from_specutils

        return from_specutils(spectrum)

    def to_specutils(self):
        """One specutils `Spectrum` of flux (N, npix) in meta["flux_unit"] with an InverseVariance uncertainty and
        the mask; `Spectra.from_specutils` of it gives these spectra back exactly (ids, labels, scale, meta)."""
        from specae.data.specutils import to_specutils

        return to_specutils(self)

    # -- grids ---------------------------------------------------------------------------------
    def resample(self, wave: np.ndarray) -> "Spectra":
        """Rebin onto another grid, conserving flux density per pixel and propagating ivar.

        Each new pixel is the overlap-weighted mean of the valid old pixels it covers; its variance is
        sum(w_i^2 var_i) / (sum w_i)^2. New pixels less than half covered by valid data are masked.
        """
        wave = checked_grid(wave)
        require_memory(len(self), wave.size, f"resampling {len(self)} spectra onto {wave.size} pixels")
        w = rebin_matrix(self.wave, wave)                   # (npix_new, npix_old) overlap lengths
        good, flux, var = self._valid_flux_var(slice(None))
        flux, ivar = _from_sums(wave, *[(m @ a.T).T for m, a in ((w, good), (w, flux), (w.power(2), var))])
        return Spectra(wave, flux, ivar, None, dict(self.labels), self.ids, self.scale, dict(self.meta))

    def to_rest_frame(self, z, wave: np.ndarray | None = None) -> "Spectra":
        """Shift each spectrum to its rest frame and rebin onto one common rest-frame grid.

        z: (N,) redshifts or the name of a label. wave: target rest grid in Angstrom; by default a
        log-linear grid with the input's median log step covering all shifted spectra. Flux density
        values are kept as they are (normalise afterwards). Each spectrum is rebinned exactly as
        `resample` would from its own shifted grid, in blocks of spectra at a time.
        """
        z = self.redshifts(z) if isinstance(z, str) else np.asarray(z, dtype=float)
        if z.shape != (len(self),) or not np.all(np.isfinite(z)) or np.any(z <= -1):
            raise SpecaeError("to_rest_frame needs one finite redshift > -1 per spectrum")
        if wave is None:
            if not len(self):
                raise SpecaeError("to_rest_frame of no spectra needs the rest-frame grid `wave`")
            step = float(np.median(np.diff(np.log10(self.wave))))
            wave = loglam_grid(self.wave[0] / (1 + z.max()), self.wave[-1] / (1 + z.min()), step)
        wave = checked_grid(wave)
        require_memory(len(self), wave.size, f"{len(self)} spectra on a rest-frame grid of {wave.size} pixels")
        e_old, e_new = pixel_edges(self.wave), pixel_edges(wave)
        flux, ivar = np.zeros((2, len(self), wave.size), np.float32)
        block = max(1, 250_000 // (e_old.size + e_new.size))   # ~2.5e5 pixel pairs a block: fits in cache
        for start in range(0, len(self), block):
            rows = slice(start, min(start + block, len(self)))
            f = 1 + z[rows]
            # new pixel j of spectrum i covers [e_new[j], e_new[j+1]] * (1 + z_i) in its observed frame
            pair, k, overlap = overlap_pairs(e_old, np.outer(f, e_new[:-1]).ravel(), np.outer(f, e_new[1:]).ravel())
            i = pair // wave.size                           # spectrum of each pair, within the block
            w = overlap / f[i]                              # overlap in rest-frame Angstrom, as `resample` sees it
            sums = [np.bincount(pair, weight * values[i, k], minlength=f.size * wave.size).reshape(f.size, -1)
                    for weight, values in zip((w, w, w ** 2), self._valid_flux_var(rows))]
            flux[rows], ivar[rows] = _from_sums(wave, *sums)
        return Spectra(wave, flux, ivar, None, dict(self.labels), self.ids, self.scale, {**self.meta, "frame": "rest"})

    def _valid_flux_var(self, rows: slice):
        """(valid, flux with 0 where masked, variance with 0 where masked), each (n, npix), of rows `rows`;
        float64, so that 1/ivar of the smallest float32 ivar cannot overflow."""
        good = ~self.mask[rows]
        var = np.where(good, 1.0 / np.where(good, self.ivar[rows].astype(np.float64), 1.0), 0.0)
        return good, np.where(good, self.flux[rows].astype(np.float64), 0.0), var


def _from_sums(wave: np.ndarray, cover, wflux, w2var) -> tuple[np.ndarray, np.ndarray]:
    """(flux, ivar), float32 (n, npix_new), of spectra rebinned onto `wave`, from sums over the old pixels
    per new pixel: valid overlap `cover`, overlap-weighted flux `wflux`, squared-overlap-weighted variance
    `w2var`. New pixels less than half covered by valid data get ivar 0."""
    ok = (cover >= 0.5 * np.diff(pixel_edges(wave))) & (w2var > 0)
    safe = np.where(ok, cover, 1.0)
    ivar = np.where(ok, safe ** 2 / np.where(ok, w2var, 1.0), 0.0)
    # a mean of float32 values fits float32; ivar summed from pixels near float32's limit may not
    return np.where(ok, wflux / safe, 0.0).astype(np.float32), np.minimum(ivar, F32_MAX).astype(np.float32)


def _numbers(name: str, x, ndmin: int = 0) -> np.ndarray:
    """`x` as a numpy array of a real (bool, int or float) dtype, at least `ndmin`-D; else SpecaeError."""
    a = np.array(x, ndmin=ndmin, copy=None)
    if a.dtype.kind not in "biuf":
        raise SpecaeError(f"{name} holds {a.dtype} values, not real numbers")
    return a


def _wider_than_float32(a: np.ndarray) -> bool:
    """Whether `a`'s dtype can hold finite values too large for float32 (float64 and wider)."""
    return a.dtype.kind == "f" and a.dtype.itemsize > 4


def _masked_median(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N,) median over unmasked entries of each row; NaN where a row has none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(np.where(mask, np.nan, x), axis=1)
