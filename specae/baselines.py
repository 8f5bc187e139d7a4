"""Classical baseline for the VAE: weighted EM-PCA (Bailey 2012, PASP 124, 1015).

Each spectrum is modelled as  flux ~ mean + coeffs @ components,  fitted by weighted least squares with
weights = ivar, so noisy pixels count less and missing pixels (ivar == 0) not at all. Unlike Bailey's
reference code, which refines one eigenvector at a time, all k vectors are updated together by alternating
two batched least-squares problems (per spectrum for the coefficients, per pixel for the vectors, and the
mean spectrum with them, starting from the weighted mean); the final SVD orders the vectors by variance
explained.
"""

from __future__ import annotations

import numpy as np

from specae.data.spectra import Spectra
from specae.errors import SpecaeError

# Ridge added to every normal matrix, relative to its typical diagonal: keeps spectra or pixels with no
# or too little data solvable (their coefficients / vector entries shrink to 0) without biasing the rest.
_RIDGE = 1e-6


class WeightedPCA:
    """Weighted PCA of spectra with per-pixel inverse variances and missing data.

    After `fit` (flux units throughout): mean_ (npix,) mean spectrum; components_ (k, npix) orthonormal
    rows sorted by explained_variance_ (k,), the variance of the training coefficients; model_cov_
    (npix, k+1, k+1) covariance of (mean_[j], components_[:, j]) from the finite training set; wave_
    (npix,) Angstrom; covered_ (npix,) bool, the pixel had data in some training spectrum; ridge_ (float)
    added to every coefficient normal matrix, fixed at fit time so a spectrum's coefficients do not depend
    on which other spectra share its batch.
    """

    def __init__(self, n_components: int = 6, n_iter: int = 20, seed: int = 0):
        self.n_components = n_components
        self.n_iter = n_iter
        self.seed = seed

    def fit(self, spectra: Spectra) -> "WeightedPCA":
        """Fit mean and components to `spectra.flux` weighted by `spectra.ivar`."""
        k = self.n_components
        if not 1 <= k <= min(len(spectra), spectra.npix):
            raise SpecaeError(f"n_components={k} must be between 1 and min(N, npix) = "
                              f"{min(len(spectra), spectra.npix)}")
        x, w = _as_arrays(spectra)
        if not w.any():
            raise SpecaeError("cannot fit WeightedPCA: no spectrum has a valid pixel")
        wsum = w.sum(axis=0)
        self.covered_ = wsum > 0
        mean = np.where(self.covered_, (w * x).sum(axis=0) / np.where(self.covered_, wsum, 1.0), 0.0)

        # Random orthonormal start as in Bailey 2012; the seed makes the fit reproducible.
        rng = np.random.default_rng(self.seed)
        v = np.linalg.qr(rng.standard_normal((spectra.npix, k)))[0].T           # (k, npix)
        c = _solve_ridged(w @ _outer_rows(v.T), (w * (x - mean)) @ v.T)         # (N, k)
        for _ in range(self.n_iter):
            # Per-pixel WLS for mean and vectors together: with missing pixels the weighted mean of each
            # pixel averages over a different subset of spectra, and that scatter, which lies outside the
            # span of the components, would otherwise stay in every reconstruction.
            ones_c = np.column_stack([np.ones(len(c)), c])
            mv = _solve_ridged(w.T @ _outer_rows(ones_c), (w * x).T @ ones_c)    # (npix, 1 + k)
            mean = mv[:, 0]
            # Re-orthonormalising changes only the basis, not the subspace; it stops C and V drifting
            # apart in scale and keeps the next normal matrices well conditioned.
            v = np.linalg.qr(mv[:, 1:])[0].T
            c = _solve_ridged(w @ _outer_rows(v.T), (w * (x - mean)) @ v.T)     # per-spectrum WLS

        # Centre the coefficients of the spectra with data, moving their mean into the mean spectrum, then
        # rotate the rank-k model c @ v into its principal axes via the SVD of the small (N, k) factor.
        good = spectra.has_data
        c, w = c[good], w[good]
        shift = c.mean(axis=0)
        self.mean_ = mean + shift @ v
        u, s, vt = np.linalg.svd(c - shift, full_matrices=False)
        # Fix the sign (largest |entry| positive) so results do not depend on the LAPACK build.
        comps = vt @ v
        sign = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
        self.components_ = comps * sign[:, None]
        self.explained_variance_ = s ** 2 / len(c)
        self.ridge_ = _ridge(w @ (self.components_ ** 2).sum(axis=0), k)
        # Uncertainty of the fitted model itself: the per-pixel WLS covariance of (mean_j, components_j)
        # given the training coefficients. With few training spectra, or at pixels that are noisy in all
        # of them (sky lines), it rivals the coefficient uncertainty, and `denoise` must include it.
        ones_c = np.column_stack([np.ones(len(c)), u * s * sign])
        self.model_cov_ = np.linalg.inv(_ridged(w.T @ _outer_rows(ones_c), k + 1))
        self.wave_ = spectra.wave.copy()
        return self

    def encode(self, spectra: Spectra) -> tuple[np.ndarray, np.ndarray]:
        """Weighted least-squares coefficients (N, k) and their covariance (A^T W A)^-1, (N, k, k)."""
        self._check_grid(spectra)
        x, w = _as_arrays(spectra)
        v = self.components_
        k = v.shape[0]
        normal = (w @ _outer_rows(v.T)).reshape(-1, k, k) + self.ridge_ * np.eye(k)
        cov = np.linalg.inv(normal)
        coeffs = np.einsum("nkl,nl->nk", cov, (w * (x - self.mean_)) @ v.T)
        return coeffs, cov

    def denoise(self, spectra: Spectra) -> tuple[np.ndarray, np.ndarray]:
        """Reconstruction and its propagated 1-sigma error, both (N, npix) float32 in the units of flux.

        Masked pixels are reconstructed too (inpainting). sigma^2 = diag(V^T C V) from the coefficient
        covariance C plus a^T model_cov_[j] a with a = (1, coeffs), the error of the fitted mean and
        components; sigma is inf where no training spectrum had data, as the model knows nothing there.
        """
        coeffs, cov = self.encode(spectra)
        v = self.components_
        flux = self.mean_ + coeffs @ v
        ones_c = np.column_stack([np.ones(len(coeffs)), coeffs])
        var = (cov.reshape(len(cov), -1) @ _outer_rows(v.T).T                    # (N, npix)
               + _outer_rows(ones_c) @ self.model_cov_.reshape(v.shape[1], -1).T)
        sigma = np.where(self.covered_, np.sqrt(np.maximum(var, 0.0)), np.inf)
        return flux.astype(np.float32), sigma.astype(np.float32)

    def save(self, path) -> None:
        """Store the fitted model as an .npz file (plain arrays, no pickle)."""
        np.savez(path, n_components=self.n_components, n_iter=self.n_iter, seed=self.seed, mean=self.mean_,
                 components=self.components_, wave=self.wave_, explained_variance=self.explained_variance_,
                 model_cov=self.model_cov_, covered=self.covered_, ridge=self.ridge_)

    @classmethod
    def load(cls, path) -> "WeightedPCA":
        """Read a model written by `save`."""
        with np.load(path, allow_pickle=False) as f:
            model = cls(int(f["n_components"]), int(f["n_iter"]), int(f["seed"]))
            model.mean_, model.components_, model.wave_ = f["mean"], f["components"], f["wave"]
            model.explained_variance_, model.covered_ = f["explained_variance"], f["covered"]
            model.model_cov_, model.ridge_ = f["model_cov"], float(f["ridge"])
        return model

    def _check_grid(self, spectra: Spectra) -> None:
        if not hasattr(self, "components_"):
            raise SpecaeError("WeightedPCA is not fitted yet; call fit() or load() first")
        if spectra.npix != self.wave_.size or not np.allclose(spectra.wave, self.wave_, rtol=1e-10, atol=0):
            raise SpecaeError("spectra are on a different wavelength grid than the fitted model; resample first")


def _as_arrays(spectra: Spectra) -> tuple[np.ndarray, np.ndarray]:
    """flux and weights (N, npix) float64; weight 0 wherever the pixel is masked, whatever its flux."""
    w = np.where(spectra.mask, 0.0, spectra.ivar.astype(np.float64))
    x = np.where(spectra.mask, 0.0, spectra.flux.astype(np.float64))
    return x, w


def _outer_rows(a: np.ndarray) -> np.ndarray:
    """(n, k) -> (n, k*k): row-wise outer products a_i a_i^T, flattened.

    Sum_i w_ij a_i a_i^T for every j is then one matrix product (w.T @ _outer_rows(a)), which batches all
    normal matrices in BLAS without an (N, k, npix) temporary.
    """
    return (a[:, :, None] * a[:, None, :]).reshape(len(a), -1)


def _ridge(traces: np.ndarray, k: int) -> float:
    """eps = _RIDGE * mean diagonal of a batch of (k, k) normal matrices, given their traces."""
    return _RIDGE * float(traces.mean()) / k


def _ridged(flat_normal: np.ndarray, k: int) -> np.ndarray:
    """Stacked normal matrices (n, k*k) -> (n, k, k) with the batch ridge eps * I added."""
    normal = flat_normal.reshape(-1, k, k)
    return normal + _ridge(np.trace(normal, axis1=1, axis2=2), k) * np.eye(k)


def _solve_ridged(flat_normal: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve the stacked systems (M_n + eps I) z_n = rhs_n; flat_normal (n, k*k), rhs (n, k) -> (n, k)."""
    return np.linalg.solve(_ridged(flat_normal, rhs.shape[1]), rhs[:, :, None])[:, :, 0]
