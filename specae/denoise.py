"""Denoising with uncertainty, encoding to latent posteriors, and the held-out pixel check of sigma on
spectra without truth, for trained models.

Spectra go in, results in the spectra's own units come out; in between everything is model-space
tensors (specae.data.tensors), the one latent posterior API (specae.uncertainty) and the error model
(specae.errormodel) with the model's calibrated constants (specae.calibration).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import erf

from specae.calibration import Calibration, model_input, model_terms, require_calibration
from specae.data.spectra import F32_MAX, Spectra
from specae.data.tensors import Batch, on_grid
from specae.engine.runtime import Runtime
from specae.errors import CountWarning
from specae.errormodel import OUPosterior, solve, sum_variance, tail_loglik, tail_scales
from specae.uncertainty import posterior as latent_posterior


@dataclass
class PixelCovariance:
    """The covariance of each spectrum's denoised pixels, in the flux units of the output, in compact form:
    factor factor^T (the latent posterior, rank K+1) + diag(diag) (the white model error) + diag(band) T^-1
    diag(band) (the part correlated along wavelength, T tridiagonal: its pivots and off-diagonal)."""
    factor: np.ndarray   # (N, npix, P)
    diag: np.ndarray     # (N, npix)
    band: np.ndarray     # (N, npix)
    pivots: np.ndarray   # (N, npix)
    off: float

    def sum_variance(self, weights: np.ndarray) -> np.ndarray:
        """(N,) the variance of sum_i weights[n, i] flux[n, i] (a line flux, a band): weights (N, npix)."""
        t = {k: torch.from_numpy(np.asarray(getattr(self, k), np.float64)) for k in ("factor", "diag", "band", "pivots")}
        ou = OUPosterior.from_pivots(t["pivots"], self.off)
        w = torch.from_numpy(np.nan_to_num(np.asarray(weights, np.float64)))
        return sum_variance(t["factor"], t["diag"], t["band"], ou, w).numpy()


@dataclass
class Denoised:
    """Denoised spectra in the input's flux units on the model's grid: each pixel's posterior mean and standard
    deviation under the error model (specae.errormodel).

    Every pixel the model has seen gets a value and a sigma, masked input pixels too (inpainted); pixels
    the model never saw (outside the training data's rest-frame coverage) get flux 0 and sigma inf. Where the
    model's errors have heavy tails (a calibrated tail spread tau), an inpainted pixel's predictive distribution
    is a scale mixture: a normal core of sd sigma_core plus the white model error, whose variance
    sigma^2 - sigma_core^2 is scaled by s, log s ~ N(-tail_spread^2 / 2, tail_spread^2); sigma is the mixture's sd.
    """
    wave: np.ndarray          # (npix,) Angstrom
    flux: np.ndarray          # (N, npix) posterior mean
    sigma: np.ndarray         # (N, npix) posterior standard deviation
    inpainted: np.ndarray     # (N, npix) bool: the input pixel was masked
    unseen: np.ndarray        # (N, npix) bool: the model never saw this wavelength; no estimate
    sigma_core: np.ndarray    # (N, npix) sd of the predictive's normal core (= sigma where tail_spread is 0)
    tail_spread: np.ndarray   # (N, npix) tau of the rest's log-normal scale; 0 where the predictive is normal
    covariance: PixelCovariance | None = None
    scale: np.ndarray | None = None   # (N,) the model's normalisation: input units per model-space unit
    flux_unit: str = ""               # the input's flux unit (its meta["flux_unit"]), for to_specutils

    def to_specutils(self, flux_unit: str | None = None):
        """A specutils `Spectrum` (N, npix) of the denoised flux in `flux_unit` (default: the input's, the field
        `flux_unit`) with StdDevUncertainty(sigma), masked where unseen (no estimate); meta["inpainted"] marks the
        masked input pixels. Needs specutils (pip install "specae[specutils]")."""
        from specae.data.specutils import denoised_to_specutils

        return denoised_to_specutils(self, self.flux_unit if flux_unit is None else flux_unit)

    def predicted_coverage(self, k: float = 1.0) -> np.ndarray:
        """(N, npix) the probability, under the predictive distribution, that the truth lies within +-k sigma
        (0.683 at k = 1 where it is Gaussian)."""
        sig, core, tau = (np.asarray(a, np.float64) for a in (self.sigma, self.sigma_core, self.tail_spread))
        p = np.where(np.isfinite(sig), erf(k / np.sqrt(2)), np.nan)
        t = (tau > 0) & np.isfinite(sig)
        s, logw = (a.numpy() for a in tail_scales(torch.from_numpy(tau[t])[:, None]))     # (T, M), (M,)
        var = core[t][:, None] ** 2 + s * (sig[t] ** 2 - core[t] ** 2)[:, None]
        p[t] = (np.exp(logw) * erf(k * sig[t][:, None] / np.sqrt(2 * var))).sum(-1)
        return p


@dataclass
class Latents:
    """Latent posteriors of N spectra (numpy)."""
    mean: np.ndarray   # (N, K)
    cov: np.ndarray    # (N, K, K)
    kind: str          # laplace | decoder | encoder | point
    log_amplitude: np.ndarray | None = None   # (N,) t of the fitted spectrum exp(t) mu(z) (laplace, decoder)

    @property
    def std(self) -> np.ndarray:
        """(N, K) marginal standard deviations."""
        return np.sqrt(np.clip(np.diagonal(self.cov, axis1=1, axis2=2), 0, None))


def _device(model) -> torch.device:
    return next(model.parameters()).device


EMPTY = "spectra without a valid pixel came out fully masked (no estimate)"


def no_data(ivar, ids) -> np.ndarray:
    """(N,) bool: the spectra without a valid pixel (ivar (N, npix), array or CPU tensor), counted in a warning
    naming them (`ids`): a model can only return its prior for them, which would pass for an estimate."""
    empty = ~(np.asarray(ivar) > 0).any(1)
    if empty.any():
        warnings.warn(CountWarning(int(empty.sum()), EMPTY, np.asarray(ids)[empty]), stacklevel=3)
    return empty


def rows_per_batch(model, budget: int | None = None) -> int:
    """Spectra per batch so the denoising temporaries (Jacobian, the error model's float64 scans) fit in memory:
    half of the free GPU memory, or 512 MB on the CPU, unless `budget` (bytes) is given."""
    dev = _device(model)
    if budget is None:
        budget = torch.cuda.mem_get_info(dev)[0] // 2 if dev.type == "cuda" else 512 << 20
    n_dec, k = model.decoder.mean.numel() + model.cfg.npix, model.cfg.latent_dim
    per_row = 4 * n_dec * (4 * k + 10) + 4 * n_dec * max(model.cfg.dec_hidden) // 64 + 48 * model.cfg.npix * (k + 2)
    return int(np.clip(budget // per_row, 1, 1 << 16))


@torch.no_grad()
def predict_batch(model, b: Batch, cal: Calibration, kind: str = "laplace", covariance: bool = False,
                  rt: Runtime | None = None) -> dict[str, torch.Tensor]:
    """The error model's posterior for one batch in model space: "flux", "var", "core_var", "tail" (B, npix) and,
    with `covariance`, the compact pixel covariance ("factor", "diag", "band", "pivots").

    Where the calibration has a heavy tail (tau > 0), each measured pixel's white model error takes the scale its
    held-out residual gives it (E[s | x]), and the posterior is solved once more: a strong line the latents cannot
    make then follows the data. An inpainted pixel keeps the prior's scale mixture (`Denoised`). The scale is taken
    at its posterior mean; its own uncertainty is not propagated, so where a residual is far out the sigma is too
    narrow (a linear set with tau 1.5, pixels given a scale above 5: err/sigma 1.4; the galaxies' lines 1.11).
    """
    with rt.autocast() if rt else torch.autocast("cpu", enabled=False):
        inp = model_terms(model, b, cal, kind)
    out = solve(inp, cal)
    tail = torch.zeros_like(inp.x)
    core_var = out["var"]
    if cal.tail_spread > 0:
        _, scale = tail_loglik(inp.x, out["loo_mean"], out["loo_var"], out["white"], cal.tail_spread)
        masked = inp.ivar <= 0
        out = solve(inp, cal, inflate=torch.where(masked, torch.ones_like(scale), scale))   # E[s] = 1 where masked
        # an inpainted pixel's predictive: the rest normal, its white model error (unseen: all of it) scaled by s
        tail = torch.where(masked, torch.full_like(scale, cal.tail_spread), tail)
        core_var = torch.where(masked, out["var"] - out["white"], out["var"])
    res = {"flux": out["mean"], "var": out["var"], "core_var": core_var, "tail": tail}
    if covariance:
        res |= {"factor": out["factor"], "diag": out["diag"], "band": out["band"], "pivots": out["ou"].d,
                "off": out["ou"].e}
    return res


def denoise(model, spectra: Spectra, batch_size: int | None = None, posterior: str = "laplace",
            covariance: bool = False, precision: str = "fp32") -> Denoised:
    """Each pixel's posterior mean and standard deviation under the model's calibrated error model
    (specae.errormodel), in the units of `spectra.flux` on the model's grid.

    `batch_size` (spectra per batch) defaults to what fits in memory; `posterior` "laplace" (default) or
    "decoder" (optimised to convergence: spectra the encoder never saw); `covariance` also returns each
    spectrum's pixel covariance (`PixelCovariance`: use it when summing pixels, e.g. for a line flux:
    neighbouring denoised pixels are correlated).
    """
    cal = require_calibration(model)
    model.eval()
    dev = _device(model)
    rt = Runtime(dev, precision)
    data, scale, spectra = model_input(model, spectra)
    n, npix = len(spectra), model.cfg.npix
    rows = batch_size or rows_per_batch(model)
    parts, off = [], 0.0
    for i in range(0, n, rows):
        b = data[i:i + rows].to(dev)
        res = predict_batch(model, b, cal, posterior, covariance, rt)
        off = float(res.pop("off", 0.0))
        parts.append({k: v.cpu() for k, v in res.items()} | {"unseen": model.unseen(b.z, len(b)).cpu()})
    empty = no_data(data.ivar, spectra.ids)

    def cat(key, shape=(npix,)):
        return torch.cat([p[key] for p in parts]).numpy() if parts else np.zeros((0, *shape))

    unseen = cat("unseen").astype(bool) | empty[:, None]
    s = scale[:, None]
    flux = np.where(unseen, 0.0, cat("flux") * s).astype(np.float32)
    sigma = np.where(unseen, np.inf, np.sqrt(cat("var")) * s).astype(np.float32)
    core = np.where(unseen, np.inf, np.sqrt(cat("core_var")) * s).astype(np.float32)
    cov = None
    if covariance:
        k = model.cfg.latent_dim + 1 if model.cfg.kind == "vae" else 0      # the latents and the amplitude
        cov = PixelCovariance((cat("factor", (npix, k)) * s[:, :, None]).astype(np.float32),
                              (cat("diag") * s ** 2).astype(np.float32), (cat("band") * s).astype(np.float32),
                              cat("pivots"), off)
    return Denoised(spectra.wave, flux, sigma, spectra.mask.copy(), unseen, core,
                    np.where(unseen, 0.0, cat("tail")).astype(np.float32), cov, scale, spectra.meta["flux_unit"])


UNREPRESENTABLE = ("denoised pixels were masked: their sigma is 0 or beyond float32's range even in the model's "
                   "units (ivar ~1e30 for flux ~1? check the data's units)")


def output_arrays(d: Denoised) -> dict[str, np.ndarray]:
    """The datasets `specae denoise` writes of `d`: flux, flux_sigma, ivar = 1/sigma^2 (float32), mask (no estimate),
    input_mask and scale (N,) (flux * scale is in the input's units), with the mixture and covariance parts if any.

    A spectrum whose ivar overflows float32 in the input's units (flux ~1e-17 with ivar ~1e37) is written in the
    model's units instead (its `scale` the model's normalisation), so the values stay finite and consistent with
    each other. Pixels still without a positive, finite sigma and ivar are masked (ivar 0, sigma inf) and counted.
    """
    n = len(d.flux)
    with np.errstate(divide="ignore", over="ignore"):
        ivar = 1 / d.sigma.astype(np.float64) ** 2
        big = (np.isfinite(d.sigma) & (ivar > F32_MAX)).any(1)
        scale = np.where(big, np.ones(n) if d.scale is None else d.scale, 1.0)
        s = scale[:, None]
        flux, sigma = d.flux / s, d.sigma / s
        ivar = 1 / sigma.astype(np.float64) ** 2
    bad = ~d.unseen & ~((sigma > 0) & (ivar <= F32_MAX) & np.isfinite(flux))
    if bad.any():
        warnings.warn(CountWarning(int(bad.sum()), UNREPRESENTABLE), stacklevel=2)
    mask = d.unseen | bad
    res = {"flux": np.where(mask & ~np.isfinite(flux), 0, flux).astype(np.float32),
           "ivar": np.where(mask, 0, ivar).astype(np.float32),
           "flux_sigma": np.where(mask, np.inf, sigma).astype(np.float32), "mask": mask,
           "input_mask": d.inpainted, "scale": scale}
    if d.tail_spread.any():
        res |= {"flux_sigma_core": (d.sigma_core / s).astype(np.float32), "flux_tail_spread": d.tail_spread}
    if d.covariance is not None:
        c = d.covariance
        res |= {"flux_cov_factor": (c.factor / s[:, :, None]).astype(np.float32),
                "flux_cov_diag": (c.diag / s ** 2).astype(np.float32), "flux_cov_band": (c.band / s).astype(np.float32),
                "flux_cov_pivots": c.pivots.astype(np.float32), "flux_cov_off": np.full(n, c.off)}
    return res


@dataclass
class HeldOut:
    """Each valid pixel predicted from the other pixels of its spectrum (`heldout`), on the grid the model
    works on: a check of the denoised sigma that needs no truth. Unscored pixels (masked, or unseen by the model)
    are NaN."""
    flux: np.ndarray    # (N, npix) the prediction of each pixel with the pixel hidden
    sigma: np.ndarray   # (N, npix) its denoised sigma
    z: np.ndarray       # (N, npix) (measured - flux) / sqrt(sigma^2 + 1/ivar): unit normal if sigma is right

    @property
    def n(self) -> np.ndarray:
        """(N,) scored pixels per spectrum."""
        return np.isfinite(self.z).sum(1)

    def within(self, k: float = 1.0) -> np.ndarray:
        """(N,) fraction of each spectrum's scored pixels with |z| < k (calibrated: 68.3 % at k = 1, 95.4 %
        at 2); NaN for a spectrum without any."""
        inside = np.where(np.isfinite(self.z), np.abs(self.z) < k, False).sum(1)
        return np.where(self.n > 0, inside / np.maximum(self.n, 1), np.nan)

    def chi2_dof(self) -> np.ndarray:
        """(N,) mean z^2 over each spectrum's scored pixels: about 1 where prediction and sigma are right."""
        return np.where(self.n > 0, np.nansum(self.z ** 2, 1) / np.maximum(self.n, 1), np.nan)

    def pooled(self) -> dict:
        """The figures over all scored pixels: spectra and pixels scored, the fractions within 1 and 2 sigma, and
        the chi2/dof."""
        z = self.z[np.isfinite(self.z)]
        return {"spectra": int((self.n > 0).sum()), "pixels": int(z.size),
                "within_1sigma": float(np.mean(np.abs(z) < 1)) if z.size else float("nan"),
                "within_2sigma": float(np.mean(np.abs(z) < 2)) if z.size else float("nan"),
                "chi2_dof": float(np.mean(z ** 2)) if z.size else float("nan")}


def pool(figures: list[dict]) -> dict:
    """`HeldOut.pooled` figures of several parts (files, blocks) pooled into those of all their pixels at once."""
    n = sum(f["pixels"] for f in figures)
    mean = {k: sum(f[k] * f["pixels"] for f in figures if f["pixels"]) / n if n else float("nan")
            for k in ("within_1sigma", "within_2sigma", "chi2_dof")}
    return {"spectra": sum(f["spectra"] for f in figures), "pixels": n, **mean}


def heldout(model, spectra: Spectra, passes: int = 10, seed: int = 0, **options) -> HeldOut:
    """Hide each valid pixel once (a random 1/`passes` of them at a time), predict it from the rest, and score
    it against its measurement. `model`: a trained specae model (`options` go to `denoise`; spectra on another
    grid are resampled onto the model's) or a baseline with denoise(spectra) -> (flux, sigma) on the spectra's
    grid (specae.baselines).

    The measurement's noise (with the model's calibrated noise scale) is part of z, so where it dominates the predicted sigma z says little about that
    sigma; where the model is unsure or wrong (spectra unlike its training set) z tests it directly.
    """
    noise2 = 1.0                               # the measurement's variance is noise2 / ivar
    if isinstance(model, torch.nn.Module):
        spectra = on_grid(spectra, model.wave)
        noise2 = require_calibration(model).noise_scale ** 2

        def predict(s):
            d = denoise(model, s, **options)
            return d.flux, d.sigma
    else:
        predict = model.denoise
    valid = spectra.ivar > 0
    no_data(spectra.ivar, spectra.ids)
    part = np.random.default_rng(seed).integers(0, passes, size=valid.shape)
    flux = np.full(valid.shape, np.nan)
    sigma = np.full(valid.shape, np.nan)
    for k in range(passes):
        hide = valid & (part == k)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CountWarning)   # counted once above, not per pass of hidden pixels
            f, sig = predict(Spectra(spectra.wave, spectra.flux, np.where(hide, 0, spectra.ivar), spectra.mask | hide,
                                     spectra.labels, spectra.ids, spectra.scale, spectra.meta))
        flux[hide], sigma[hide] = f[hide], sig[hide]
    scored = valid & np.isfinite(sigma)
    var = sigma ** 2 + noise2 / np.where(valid, spectra.ivar, 1.0)
    z = np.where(scored, (spectra.flux - flux) / np.sqrt(np.where(scored, var, 1.0)), np.nan)
    return HeldOut(flux, sigma, z)


def encode(model, spectra: Spectra, posterior: str = "laplace", batch_size: int | None = None) -> Latents:
    """Latent posterior (mean and full K x K covariance) of every spectrum; see specae.uncertainty.

    The AE gives its point estimate with zero covariance, whatever `posterior` says. Spectra without a valid
    pixel get mean NaN and infinite variances (no estimate), counted in a warning.
    """
    model.eval()
    dev = _device(model)
    data, _, spectra = model_input(model, spectra)
    empty = no_data(data.ivar, spectra.ids)
    k = model.cfg.latent_dim
    rows = batch_size or rows_per_batch(model)
    means, covs, amps, kind = [], [], [], posterior
    with torch.no_grad():
        for i in range(0, len(data), rows):
            b = data[i:i + rows].to(dev)
            post, _ = latent_posterior(model, b.x, b.ivar, b.z, posterior)
            means.append(post.mean.float().cpu())
            covs.append(post.cov.cpu())
            if post.log_scale is not None:
                amps.append(post.log_scale.float().cpu())
            kind = post.kind
    if not means:
        return Latents(np.zeros((0, k), np.float32), np.zeros((0, k, k)), kind)
    mean, cov = torch.cat(means).numpy(), torch.cat(covs).numpy()
    mean[empty], cov[empty] = np.nan, np.diag(np.full(k, np.inf))
    amp = torch.cat(amps).numpy() if amps else None
    if amp is not None:
        amp[empty] = np.nan
    return Latents(mean, cov, kind, amp)
