"""The Payne APOGEE spectrum emulator (El-Badry et al. 2018; The Payne, MIT licence) as a mock generator.

One tiny network per pixel maps 5 stellar labels to continuum-normalised H-band flux on APOGEE's
7214-pixel vacuum grid (15168-16937 A, chip gaps removed). The files live in ../shared/data/payne
beside the checkout (or $SPECAE_PAYNE_DIR) and are never copied into the repository.

    emu = PayneEmulator(default_payne_dir())
    noisy, clean = emu.mock(1000, seed=0)
    labels, label_cov, model_flux = emu.fit(noisy)      # the emulator fitted to each noisy spectrum
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import numpy as np

from specae.data.spectra import Spectra
from specae.data.synthetic import _chunks, _serial, _snr_range
from specae.errors import SpecaeError

LABEL_NAMES = ("TEFF", "LOGG", "FE_H", "MG_FE", "VMACRO")
# Where the emulator is valid (its training set: main-sequence stars): Teff [K], logg, [Fe/H], [Mg/Fe], vmacro [km/s]
VALID_RANGE = np.array([(4200.0, 7000.0), (4.0, 5.0), (-0.8, 0.4), (-0.3, 0.5), (0.0, 45.0)])
_FILES = ("NN_normalized_spectra.npz", "apogee_wavelength.npz", "apogee_mask.npz")
# Coarse grid of fit starts, per label (values inside VALID_RANGE, as fractions of it): Teff, logg and [Fe/H]
# shape the spectrum most and get the finest steps; 6*3*5*3*3 = 810 spectra computed once per fit.
_START_GRID = ((0.05, 0.23, 0.41, 0.59, 0.77, 0.95), (0.15, 0.5, 0.85), (0.1, 0.3, 0.5, 0.7, 0.9),
               (0.2, 0.5, 0.8), (0.15, 0.5, 0.85))


def default_payne_dir() -> Path | None:
    """$SPECAE_PAYNE_DIR if set, else ../shared/data/payne beside the repository, if that folder exists."""
    env = os.environ.get("SPECAE_PAYNE_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data" / "payne"
    return path if path.is_dir() else None


class PayneEmulator:
    """Continuum-normalised APOGEE spectra from (TEFF, LOGG, FE_H, MG_FE, VMACRO).

    Attributes: wave (npix,) vacuum A; bad_pixels (npix,) bool, APOGEE's pixels to ignore. npix is 7214,
    or fewer after `subset`.
    """

    def __init__(self, directory=None):
        directory = default_payne_dir() if directory is None else Path(directory)
        if directory is None:
            raise SpecaeError("no Payne emulator folder: set SPECAE_PAYNE_DIR or pass the directory holding "
                              + ", ".join(_FILES))
        arrays = {}
        for name in _FILES:
            path = Path(directory) / name
            if not path.is_file():
                raise SpecaeError(f"{path}: Payne emulator file not found")
            try:
                with np.load(path) as f:
                    arrays.update({k: f[k] for k in f.files})
            except (OSError, ValueError) as e:
                raise SpecaeError(f"{path}: not a readable .npz file ({e})") from None
        try:
            w0, b0, w1, b1 = (arrays[k] for k in ("w_array_0", "b_array_0", "w_array_1", "b_array_1"))
            self._x_min, self._x_max = arrays["x_min"], arrays["x_max"]
            self.wave = np.asarray(arrays["wavelength"], dtype=np.float64)
            self.bad_pixels = np.asarray(arrays["apogee_mask"], dtype=bool)
        except KeyError as e:
            raise SpecaeError(f"{directory}: Payne emulator arrays incomplete, missing {e}") from None
        npix = self.wave.size
        if (w0.shape != (npix, 5, 5) or b0.shape != (npix, 5) or w1.shape != (npix, 5) or b1.shape != (npix,)
                or self.bad_pixels.shape != (npix,)):
            raise SpecaeError(f"{directory}: Payne emulator arrays do not match the {npix}-pixel wavelength grid")
        self._set_weights(w0, b0, w1, b1)

    def _set_weights(self, w0, b0, w1, b1) -> None:
        """Store the per-pixel networks: w0 (npix, 5 hidden, 5 labels), b0 (npix, 5), w1 (npix, 5), b1 (npix,)."""
        self._w0_pjk = np.ascontiguousarray(w0, dtype=np.float32)                    # for the Jacobian
        # (5 labels, npix*5 hidden units): the first layer of all pixels as one matrix product
        self._w0 = np.ascontiguousarray(w0.transpose(2, 0, 1).reshape(5, -1), dtype=np.float32)
        self._b0 = np.ascontiguousarray(b0, dtype=np.float32)
        self._w1 = np.ascontiguousarray(w1, dtype=np.float32)
        self._b1 = np.ascontiguousarray(b1, dtype=np.float32)

    @property
    def npix(self) -> int:
        return self.wave.size

    def subset(self, pixels) -> "PayneEmulator":
        """The emulator restricted to `pixels` (slice, index or boolean array over the npix grid), e.g. a
        wavelength window for quick benchmarks; every method (spectra, mock, fit) then works on that grid."""
        idx = np.arange(self.npix)[pixels]
        if idx.size == 0:
            raise SpecaeError("PayneEmulator.subset: no pixel selected")
        if np.any(np.diff(idx) <= 0):
            raise SpecaeError("PayneEmulator.subset: pixels must be increasing (the wavelength grid stays sorted)")
        out = copy.copy(self)
        out.wave, out.bad_pixels = self.wave[idx], self.bad_pixels[idx]
        out._set_weights(self._w0_pjk[idx], self._b0[idx], self._w1[idx], self._b1[idx])
        return out

    def _scale(self, labels: np.ndarray) -> np.ndarray:
        """Labels (N, 5) -> the networks' input s = (labels - x_min) / (x_max - x_min) - 0.5, float32."""
        return ((labels - self._x_min) / (self._x_max - self._x_min) - 0.5).astype(np.float32)

    def _forward(self, s: np.ndarray, jacobian: bool = False):
        """Flux (B, npix) for scaled labels s (B, 5); with jacobian=True also d flux / d s, (B, npix, 5)."""
        hidden = (s @ self._w0).reshape(len(s), self.npix, 5)                      # (B, npix, 5)
        hidden += self._b0
        np.negative(hidden, out=hidden)                                            # in place: sigmoid
        np.exp(hidden, out=hidden)
        hidden += 1
        np.reciprocal(hidden, out=hidden)
        # per pixel a (B, 5) @ (5,) product: batched over pixels, so BLAS does the work
        flux = np.matmul(hidden.transpose(1, 0, 2), self._w1[:, :, None])[:, :, 0].T + self._b1
        if not jacobian:
            return flux
        hidden *= 1 - hidden                                                       # sigmoid' = h (1 - h)
        hidden *= self._w1
        jac = np.matmul(hidden.transpose(1, 0, 2), self._w0_pjk).transpose(1, 0, 2)  # (B, npix, 5)
        return flux, jac

    def spectra(self, labels, batch_size: int = 256) -> np.ndarray:
        """(N, npix) float32 normalised flux for labels (N, 5) or (5,) in LABEL_NAMES order.

        Warns when labels leave VALID_RANGE, where the emulator extrapolates."""
        labels = np.asarray(labels, dtype=np.float64)
        single = labels.ndim == 1
        labels = np.atleast_2d(labels)
        if labels.ndim != 2 or labels.shape[1] != 5:
            raise SpecaeError(f"Payne labels must have shape (N, 5) or (5,), got {np.shape(labels)}")
        if not np.all(np.isfinite(labels)):
            raise SpecaeError("Payne labels must be finite")
        outside = (labels < VALID_RANGE[:, 0]) | (labels > VALID_RANGE[:, 1])
        if outside.any():
            warnings.warn(f"{int(outside.any(axis=1).sum())} label sets lie outside the emulator's valid "
                          f"range and are extrapolated", stacklevel=2)
        scaled = self._scale(labels)
        out = np.empty((len(labels), self.npix), np.float32)
        for start in range(0, len(labels), batch_size):      # bounds the (batch, npix, 5) hidden layer
            out[start:start + batch_size] = self._forward(scaled[start:start + batch_size])
        return out[0] if single else out

    def jacobian(self, labels) -> tuple[np.ndarray, np.ndarray]:
        """Flux (N, npix) and its derivatives d flux / d label (N, npix, 5), per label unit (K, dex, km/s),
        for labels (N, 5) in LABEL_NAMES order; closed form, float32."""
        labels = np.atleast_2d(np.asarray(labels, dtype=np.float64))
        flux, jac = self._forward(self._scale(labels), jacobian=True)
        return flux, jac / (self._x_max - self._x_min).astype(np.float32)

    def fit(self, spectra: Spectra, n_starts: int = 2, max_iter: int = 40, batch_size: int = 128,
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The emulator fitted to each spectrum by weighted least squares: the best any denoiser can do
        when the spectra are emulator spectra (the "oracle").

        Minimises chi2 = sum_p ivar_p (flux_p - model_p(labels))^2 over valid pixels (masked pixels and
        ivar == 0 ignored), labels kept inside VALID_RANGE. Starts: the `n_starts` best points of a coarse
        label grid (810 spectra, scored for every spectrum at the cost of one matrix product); from each,
        a batched Levenberg-Marquardt with the networks' analytic Jacobian, steps projected onto the box;
        the lowest chi2 wins.

        Returns labels (N, 5) in LABEL_NAMES order and units; label_cov (N, 5, 5), the Gauss-Newton
        covariance (J^T W J)^-1 at the solution (a label pinned at its bound keeps its curvature-based
        error); model_flux (N, npix) float32, the emulator at the fitted labels.
        """
        if spectra.npix != self.npix or not np.allclose(spectra.wave, self.wave, rtol=1e-10, atol=0):
            raise SpecaeError(f"spectra ({spectra.npix} px) are not on the emulator's {self.npix}-pixel grid; "
                              "use PayneEmulator.subset for a window of it")
        if n_starts < 1:
            raise SpecaeError(f"n_starts must be >= 1, got {n_starts}")
        weights = np.where(spectra.mask, 0.0, spectra.ivar).astype(np.float32)    # (N, npix)
        flux = np.where(spectra.mask, 0.0, spectra.flux).astype(np.float32)
        lo, hi = self._scale(VALID_RANGE[:, 0][None])[0], self._scale(VALID_RANGE[:, 1][None])[0]

        # Coarse grid: chi2 of every spectrum against every grid spectrum in one product (float64 sums).
        frac = np.stack(np.meshgrid(*_START_GRID, indexing="ij"), -1).reshape(-1, 5)
        grid_s = (lo + frac * (hi - lo)).astype(np.float32)
        grid_flux = self.spectra(VALID_RANGE[:, 0] + frac * np.diff(VALID_RANGE, axis=1)[:, 0]).astype(np.float64)
        w64 = weights.astype(np.float64)
        grid_chi2 = (-2 * (w64 * flux) @ grid_flux.T + w64 @ (grid_flux ** 2).T)  # + sum w d^2, same per row
        starts = np.argsort(grid_chi2, axis=1)[:, :n_starts]                       # (N, n_starts)

        best_s, best_chi2 = None, None
        for k in range(starts.shape[1]):
            s, chi2 = np.empty((len(flux), 5), np.float32), np.empty(len(flux))
            for a in range(0, len(flux), batch_size):
                b = slice(a, a + batch_size)
                s[b], chi2[b] = self._levenberg_marquardt(grid_s[starts[b, k]], flux[b], weights[b], lo, hi,
                                                          max_iter)
            if best_s is None:
                best_s, best_chi2 = s, chi2
            else:
                better = chi2 < best_chi2
                best_s[better], best_chi2[better] = s[better], chi2[better]

        labels = (best_s.astype(np.float64) + 0.5) * (self._x_max - self._x_min) + self._x_min
        labels = np.clip(labels, VALID_RANGE[:, 0], VALID_RANGE[:, 1])             # float32 rounding at a bound
        model_flux, cov = np.empty(flux.shape, np.float32), np.empty((len(flux), 5, 5))
        for a in range(0, len(flux), batch_size):
            b = slice(a, a + batch_size)
            model_flux[b], jac = self.jacobian(labels[b])
            cov[b] = np.linalg.inv(_normal(jac, weights[b]))
        return labels, cov, model_flux

    def _levenberg_marquardt(self, s, flux, weights, lo, hi, max_iter):
        """Batched projected Levenberg-Marquardt in scaled labels: s (B, 5) start, flux/weights (B, npix),
        box lo..hi (5,). Returns (s (B, 5), chi2 (B,)). Each spectrum has its own damping and stops on its own
        when a step improves chi2 by less than 1e-6 of itself (or a tiny absolute amount)."""
        s = s.copy()
        lam = np.full(len(s), 1e-3)
        active = np.ones(len(s), bool)
        model = self._forward(s)
        chi2 = (weights * (flux - model) ** 2).sum(1, dtype=np.float64)
        for _ in range(max_iter):
            idx = np.flatnonzero(active)
            if idx.size == 0:
                break
            model, jac = self._forward(s[idx], jacobian=True)
            w = weights[idx]
            normal = _normal(jac, w)                                                    # (b, 5, 5)
            grad = np.matmul(jac.transpose(0, 2, 1), (w * (flux[idx] - model))[:, :, None])[:, :, 0]
            diag = np.einsum("bkk->bk", normal)                                         # (b, 5)
            damping = lam[idx, None] * np.maximum(diag, 1e-12 * diag.max(initial=1.0))     # Marquardt's scaling
            damped = normal + damping[:, :, None] * np.eye(5)
            step = np.linalg.solve(damped, grad[:, :, None])[:, :, 0]
            trial = np.clip(s[idx] + step, lo, hi).astype(np.float32)
            trial_chi2 = (w * (flux[idx] - self._forward(trial)) ** 2).sum(1, dtype=np.float64)
            better = trial_chi2 < chi2[idx]
            gain = chi2[idx] - trial_chi2
            s[idx[better]], lam[idx[better]] = trial[better], lam[idx[better]] / 3
            lam[idx[~better]] *= 4
            # converged: an accepted step that gained almost nothing, or damping so high that steps vanish
            done = (better & (gain <= 1e-6 * chi2[idx] + 1e-9)) | (lam[idx] > 1e8)
            chi2[idx[better]] = trial_chi2[better]
            active[idx[done]] = False
        return s, chi2

    @staticmethod
    def sample_labels(n: int, seed=0) -> np.ndarray:
        """(n, 5) labels drawn uniformly inside VALID_RANGE."""
        rng = np.random.default_rng(seed)
        return VALID_RANGE[:, 0] + rng.uniform(size=(int(n), 5)) * (VALID_RANGE[:, 1] - VALID_RANGE[:, 0])

    def mock(self, n: int, seed=0, snr=(5, 80), masked_chunks: bool = True) -> tuple[Spectra, Spectra]:
        """(noisy, clean) mock APOGEE spectra with labels TEFF, LOGG, FE_H, MG_FE, VMACRO (+ SNR on noisy).

        Noise model of the data README: per-spectrum S/N log-uniform in `snr` (or exactly `snr`),
        sigma = flux / S/N, ivar = 1/sigma^2; APOGEE's bad pixels and, if masked_chunks, 0-3 random
        chunks of 5-60 pixels per spectrum get ivar = 0. `clean` has ivar = 1 and no mask.
        """
        lo, hi = _snr_range(snr)
        rng = np.random.default_rng(seed)
        labels = self.sample_labels(n, rng)
        flux = self.spectra(labels).astype(np.float64)
        s2n = lo * (hi / lo) ** rng.uniform(size=len(flux))
        # |flux| keeps sigma positive if the network dips below zero in a saturated line core
        sigma = np.maximum(np.abs(flux), 1e-3) / s2n[:, None]
        noisy = flux + sigma * rng.standard_normal(flux.shape)
        mask = np.broadcast_to(self.bad_pixels, flux.shape).copy()
        if masked_chunks:
            mask |= _chunks(rng, len(flux), self.npix)
        lab = dict(zip(LABEL_NAMES, labels.T))
        meta = {"flux_unit": "continuum-normalised", "source": "Payne APOGEE emulator", "frame": "rest"}
        ids = _serial("payne", len(flux))
        clean = Spectra(self.wave, flux, np.ones_like(flux), labels=dict(lab), ids=ids, meta=dict(meta))
        noisy = Spectra(self.wave, noisy, np.where(mask, 0.0, sigma**-2.0), mask, {**lab, "SNR": s2n}, ids,
                        meta=meta)
        return noisy, clean


def _normal(jac: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Normal matrices J^T W J (B, 5, 5) float64 from jac (B, npix, 5) and weights (B, npix); a ridge of 1e-9
    of the trace keeps spectra without data invertible (their covariance is then huge, not an error)."""
    normal = np.matmul((jac * weights[:, :, None]).transpose(0, 2, 1), jac).astype(np.float64)
    trace = np.trace(normal, axis1=1, axis2=2)
    return normal + (1e-9 * trace + 1e-30)[:, None, None] * np.eye(5)
