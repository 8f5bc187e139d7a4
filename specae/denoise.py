"""Denoising with uncertainty, encoding to latent posteriors, and the held-out pixel check of sigma on
spectra without truth, for trained models.

Spectra go in, results in the spectra's own units come out; in between everything is model-space
tensors (specae.data.tensors) and the one latent posterior API (specae.uncertainty).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import chi2

from specae.data.spectra import Spectra
from specae.data.tensors import Batch, on_grid, to_batch, window_mask
from specae.engine.runtime import Runtime
from specae.errors import SpecaeError
from specae.uncertainty import SCALE_INDEX, pixel_cov_factor, spd_cholesky, student_factor
from specae.uncertainty import posterior as latent_posterior


@dataclass
class Denoised:
    """Denoised spectra in the input's flux units on the model's grid.

    Every pixel the model has seen gets a value and a sigma, masked input pixels too (inpainted); pixels
    the model never saw (outside the training data's rest-frame coverage) get flux 0 and sigma inf.
    """
    wave: np.ndarray          # (npix,) Angstrom
    flux: np.ndarray          # (N, npix) posterior predictive mean
    sigma: np.ndarray         # (N, npix) total 1-sigma: latent posterior + decoder scatter
    sigma_latent: np.ndarray  # (N, npix) the latent-posterior part alone
    inpainted: np.ndarray     # (N, npix) bool: the input pixel was masked; the value is the model's alone
    unseen: np.ndarray        # (N, npix) bool: the model never saw this wavelength; no estimate
    cov_factor: np.ndarray | None = None   # (N, npix, K+1): posterior part of the pixel covariance = L L^T


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


def model_input(model, spectra: Spectra) -> tuple[Batch, np.ndarray, Spectra]:
    """(Batch, scale (N,), spectra on the model's grid): what the model sees of `spectra`.

    Spectra on another grid are resampled when they cover the model's range. In redshift mode, spectra
    outside the training redshifts are accepted with a warning; the pixels this leaves the model blind to
    are flagged as unseen by `denoise`.
    """
    spectra = on_grid(spectra, model.wave)
    cfg = model.cfg
    batch, scale = to_batch(spectra, window_mask(model.wave, cfg.norm_window), cfg.redshift)
    if cfg.redshift and cfg.z_range and len(spectra):
        z = batch.z.numpy()
        out = (z < cfg.z_range[0]) | (z > cfg.z_range[1])
        if out.any():
            warnings.warn(f"{int(out.sum())} spectra have redshifts outside the training range "
                          f"{cfg.z_range[0]:.4g}-{cfg.z_range[1]:.4g}; pixels the model never saw are masked "
                          f"in the output", stacklevel=3)
    return batch, scale, spectra


# The local goodness-of-fit test of the combination: neighbours within MISFIT_HALF_WIDTH pixels (about a
# resolved line's width at survey resolutions), rejecting the model at false-alarm probability MISFIT_ALPHA.
# A false alarm swaps a pixel's model value for its noisy measurement: at 1e-3 that cost 3-7 % RMSE on the
# APOGEE emulator's 7214 pixels; at 1e-5 it costs nothing measurable and still catches strong lines
MISFIT_HALF_WIDTH = 2
MISFIT_ALPHA = 1e-5


def neighbour_sum(t: torch.Tensor, half_width: int) -> torch.Tensor:
    """(B, npix) sums of t over each pixel's neighbours within `half_width` pixels, the pixel itself left out."""
    kernel = torch.ones(1, 1, 2 * half_width + 1, dtype=t.dtype, device=t.device)
    kernel[..., half_width] = 0
    return F.conv1d(t[:, None], kernel, padding=half_width)[:, 0]


def misfit_variance(x, ivar, mu, var, half_width: int = MISFIT_HALF_WIDTH, alpha: float = MISFIT_ALPHA):
    """Model error variance (B, npix) that the data show but the model's variance `var` does not, from
    each pixel's neighbours (the pixel itself left out, so its measurement is not counted twice).

    The neighbours' chi^2 of x against the prediction mu, with variance 1/ivar + var, is tested against its
    chi^2 distribution; where it rejects the model (a line stronger than any the latents can make), the
    extra variance is the neighbours' mean excess squared residual over that variance; elsewhere 0.
    """
    valid = (ivar > 0).to(mu.dtype)
    total = torch.where(ivar > 0, 1 / ivar.clamp_min(1e-30), torch.ones_like(ivar)) + var
    r2 = valid * (x - mu) ** 2
    n = neighbour_sum(valid, half_width)
    stat, excess = neighbour_sum(r2 / total, half_width), neighbour_sum(valid * (r2 - total), half_width)
    quantile = torch.as_tensor(chi2.isf(alpha, np.arange(1, 2 * half_width + 1)), dtype=mu.dtype, device=mu.device)
    limit = torch.cat([quantile.new_full((1,), np.inf), quantile])[n.round().long()]
    return torch.where(stat > limit, excess / n.clamp_min(1), torch.zeros_like(mu)).clamp_min(0)


# The spread of one spectrum's model error around the population's: log s^2 ~ N(0, SPECTRUM_SCALE_PRIOR^2), a
# weakly informative prior (a factor e in variance at 1 sigma) that lets a spectrum's own residuals move its
# model variance only as far as they can tell. Within a spectrum, the stretch of LOCAL_HALF_WIDTH pixels on
# either side of a pixel may need more (a line stronger than the latents make) or less: a local factor with
# the same prior around the spectrum's (one galaxy model: RMSE 0.0997 -> 0.0988, line pixels 0.580 -> 0.553,
# their ±1σ coverage 61.4 -> 62.4 %; 4 pixels as good as 8 or 16 at a quarter of the cost)
SPECTRUM_SCALE_PRIOR = 1.0
LOCAL_HALF_WIDTH = 4


def spectrum_scale(x, ivar, mu, var_other, var_model, prior: float = SPECTRUM_SCALE_PRIOR, steps: int = 10,
                   half_width: int | None = None):
    """Factor s^2 on the model variance from the spectrum's own residuals: (B, 1) for each whole spectrum,
    or (B, npix) for each pixel from its neighbours within `half_width` pixels (the pixel itself left out,
    so its measurement is not counted twice).

    The model variance is calibrated on a population, whose fits are good for most spectra and poor for a
    few (heavier tails from spectrum to spectrum than one scale describes). With each pixel's prediction mu
    from the *other* pixels, x - mu ~ N(0, 1/ivar + var_other + s^2 var_model) over the valid pixels; s^2
    is the posterior mode under the prior log s^2 ~ N(0, prior^2) (Fisher scoring on log s^2). Where the
    residuals cannot tell (low S/N, or a model variance far below the noise), s^2 stays near 1; where they
    can, it moves to what they say.
    """
    valid = ivar > 0
    r2 = torch.where(valid, (x - mu) ** 2, torch.zeros_like(mu))
    base = torch.where(valid, 1 / ivar.clamp_min(1e-30), torch.ones_like(ivar)) + var_other
    vm = torch.where(valid, var_model, torch.zeros_like(var_model))
    if half_width is None:
        parts, total = [(r2, base, vm)], (lambda a: a.sum(1, keepdim=True))
        t = torch.zeros(x.shape[0], 1, dtype=mu.dtype, device=mu.device)                   # log s^2
    else:
        # every pixel's neighbour at offset o, as views into padded copies (padding: no information, vm = 0)
        n, h = x.shape[1], half_width
        pad = [F.pad(a, (h, h), value=fill) for a, fill in ((r2, 0.0), (base, 1.0), (vm, 0.0))]
        parts = [tuple(a[:, h + o:h + o + n] for a in pad) for o in range(-h, h + 1) if o]
        total = (lambda a: a)
        t = torch.zeros_like(mu)
    for _ in range(steps):
        s = t.exp()
        grad, info = t / prior ** 2, torch.full_like(t, 1 / prior ** 2)
        for r2_o, base_o, vm_o in parts:
            v = base_o + s * vm_o
            w = s * vm_o / v                                                           # d log v / d log s^2
            grad = grad + total(0.5 * w * (1 - r2_o / v))
            info = info + total(0.5 * w * w)
        t = (t - grad / info).clamp(-10, 10)
    return t.exp()


# A masked pixel's model error is taken as shared by its immediate neighbours only: on one galaxy model and one
# star model, with the local scale's and the misfit's excess alone, windows of 4, 2 and 1 pixels on either side
# gave masked-pixel RMSE 0.16506, 0.16497 and 0.16452 on the synthetic galaxies (0.1648 without the shift; stars
# unchanged at 0.00494), and held-out pixels of real spectra missed by 2.20, 2.09 and 2.10 noise sigma
# (SDSS/DESI; 3.01 without) and 3.89, 3.62, 3.60 (APOGEE; 6.09). Counting the spectrum's own scale in the excess
# too (the default): 0.16475, and 1.73 and 2.22 noise sigma with 65 % and 68 % inside +-1 sigma (82 % and 76 %
# without it: the spectrum-wide misfit of a spectrum unlike the training set is locally constant as well)
INPAINT_HALF_WIDTH = 1


def inpaint_offset(x, ivar, mu, excess, half_width: int = INPAINT_HALF_WIDTH):
    """Shift (B, npix) of masked pixels' predictions toward their neighbours' data, and the variance it
    removes: where the spectrum's own residuals called for more model variance than the population's
    calibration gives (`excess`: the spectrum's scale, the local scale and the misfit), the error is taken
    as locally constant with prior N(0, excess), and its estimate, the neighbours' noise-weighted mean
    residual (variance 1 / sum ivar), is added with the usual shrinkage k = excess / (excess + 1 / sum ivar).
    Valid pixels have their own measurement and are left alone, so are pixels where the population's
    calibration suffices (excess 0).

    On spectra unlike the training set this is what keeps a masked pixel near its neighbours.
    """
    valid = ivar > 0
    weight = torch.where(valid, ivar, torch.zeros_like(ivar))
    info = neighbour_sum(weight, half_width)                                       # sum of the neighbours' ivar
    mean = neighbour_sum(weight * torch.where(valid, x - mu, torch.zeros_like(mu)), half_width) / info.clamp_min(1e-30)
    k = torch.where(~valid & (info > 0), excess / (excess + 1 / info.clamp_min(1e-30)), torch.zeros_like(mu))
    return k * mean, k * excess


# The model's error is smooth along wavelength: on one synthetic galaxy model its correlation (truth against the
# model's prediction, in units of sigma) was 0.51 at 1 pixel, 0.43 at 8, 0.35 at 50 and 0.29 at 100, while the
# noise is white. So a fraction rho of the model variance is taken as a smooth error with correlation exp(-lag /
# length) pixels, which the residuals of many neighbouring pixels measure where each pixel's noise hides it;
# rho and the length are fitted on held-out validation pixels with a factor c on the model variance, which the
# noisy held-out pixels need to tell the candidates apart (`smooth_error_fit` in specae.train; rho = 0 is the
# pixel-by-pixel combination). The smooth part's amplitude is the model variance's running median over
# SMOOTH_HALF_WIDTH pixels on either side (capped at the pixel's own), so a narrow feature's extra variance (a
# line's) stays in the white part, pixel by pixel (12 and 50 pixels gave the same figures).
SMOOTH_HALF_WIDTH = 16


def running_median(t: torch.Tensor, half_width: int) -> torch.Tensor:
    """(B, npix) median of t over each pixel's window of +-`half_width` pixels (edges repeated)."""
    padded = F.pad(t[:, None], (half_width, half_width), mode="replicate")[:, 0]
    return padded.unfold(1, 2 * half_width + 1, 1).median(-1).values


def ar1_smoother(y, noise, amp, length: float):
    """Posterior mean and variance (B, npix) of g, a unit-variance Gaussian process along the pixels with
    correlation exp(-lag / length), from y = amp g + e, e ~ N(0, noise) (noise inf: no data), by the Kalman
    filter and the Rauch-Tung-Striebel smoother: exact, in O(npix) per spectrum. float64 in and out."""
    phi = float(np.exp(-1 / length))
    b, n = y.shape
    seen = torch.isfinite(noise)
    noise = torch.where(seen, noise, torch.ones_like(noise))
    m_pred, p_pred, m_filt, p_filt = (torch.empty_like(y) for _ in range(4))
    m, p = y.new_zeros(b), y.new_ones(b)
    for i in range(n):
        if i:
            m, p = phi * m, phi * phi * p + (1 - phi * phi)
        m_pred[:, i], p_pred[:, i] = m, p
        gain = torch.where(seen[:, i], p * amp[:, i] / (amp[:, i] ** 2 * p + noise[:, i]), torch.zeros_like(p))
        m, p = m + gain * (y[:, i] - amp[:, i] * m), p - gain * amp[:, i] * p
        m_filt[:, i], p_filt[:, i] = m, p
    mean, var = m_filt.clone(), p_filt.clone()
    for i in range(n - 2, -1, -1):
        c = p_filt[:, i] * phi / p_pred[:, i + 1]
        mean[:, i] = m_filt[:, i] + c * (mean[:, i + 1] - m_pred[:, i + 1])
        var[:, i] = p_filt[:, i] + c * c * (var[:, i + 1] - p_pred[:, i + 1])
    return mean, var


def combination(x, ivar, mu, var_smooth, var_white, length: float, excess=None):
    """Each pixel's posterior (mean, variance (B, npix)) given the data, for truth = mu + smooth + white with
    smooth ~ GP(0, var_smooth, correlation exp(-lag / length)) and white ~ N(0, var_white) independent per
    pixel; x = truth + noise (1/ivar; ivar 0 = masked). var_smooth = 0 is the pixel-by-pixel precision-weighted
    mean of the prediction mu and the measurement.

    With `excess` (the model variance the spectrum's own residuals called for beyond the population's), a
    masked pixel's white error is taken as shared by its neighbours (`inpaint_offset`).
    """
    dtype = mu.dtype
    x, ivar, mu, var_smooth, var_white = (t.double() for t in (x, ivar, mu, var_smooth, var_white))
    valid = ivar > 0
    noise = torch.where(valid, 1 / ivar.clamp_min(1e-300), torch.ones_like(ivar))
    amp = var_smooth.clamp_min(0).sqrt()
    resid = torch.where(valid, x - mu, torch.zeros_like(x))
    smooth, smooth_var = torch.zeros_like(x), torch.zeros_like(x)
    if bool((amp > 0).any()):
        no_data = torch.full_like(x, float("inf"))
        g, g_var = ar1_smoother(resid, torch.where(valid, var_white + noise, no_data), amp, length)
        smooth, smooth_var = amp * g, amp ** 2 * g_var
    if excess is not None:
        shift, explained = inpaint_offset(x, ivar, mu + smooth, torch.minimum(excess.double(), var_white))
        mu, var_white = mu + shift, var_white - explained
    k = torch.where(valid, var_white / (var_white + noise), torch.zeros_like(x))   # the measurement's weight
    mean, var = mu + (1 - k) * smooth + k * resid, (1 - k) ** 2 * smooth_var + (1 - k) * var_white
    return mean.to(dtype), var.to(dtype)


def combination_inputs(b: Batch, mu, var_lat, var_mod, a, b2, growth) -> dict[str, torch.Tensor]:
    """What the combination with the data starts from, (B, npix) each: the prediction of every pixel from all the
    *other* pixels ("mu"), its calibrated latent variance ("latent"), the model variance in all ("total": latent
    + decoder, the decoder's rescaled by the spectrum's own residuals, by each stretch's and by the local misfit),
    the part of it that may be smooth along wavelength ("smooth", see SMOOTH_HALF_WIDTH) and the excess over the
    population's calibration ("excess").

    mu, var_lat, var_mod: the model spectrum, its latent variance (before the factor a) and the decoder's
    variance sigma_model^2 under the posterior; b2 and growth (`coverage_growth`) the calibrated factors
    b^2 f^-gamma on it. The growth where few training spectra cover a pixel stays out of the smooth part: it
    was calibrated pixel by pixel (on the synthetic galaxies, with it in, the thinly covered pixels held 57 %
    inside +-1 sigma instead of 63 %).
    """
    # leave pixel i out: with s = j^T C j and w its weight, the rest predict mu - w r s / (1 - w s) with
    # latent variance s / (1 - w s) (Sherman-Morrison on the posterior precision)
    w = torch.where(b.ivar > 0, 1 / (1 / b.ivar.clamp_min(1e-30) + var_mod), torch.zeros_like(var_mod))
    keep = (1 - w * var_lat).clamp_min(1e-6)
    mu = mu - torch.where(b.ivar > 0, w * (b.x - mu) * var_lat / keep, torch.zeros_like(mu))
    latent = a ** 2 * var_lat / keep
    population = b2 * growth * var_mod
    spectrum = population * spectrum_scale(b.x, b.ivar, mu, latent, population)
    var = spectrum * spectrum_scale(b.x, b.ivar, mu, latent, spectrum, half_width=LOCAL_HALF_WIDTH)
    var = var + misfit_variance(b.x, b.ivar, mu, latent + var)
    smooth = latent + spectrum / growth
    smooth = torch.minimum(smooth, running_median(smooth, SMOOTH_HALF_WIDTH))
    return {"mu": mu, "latent": latent, "total": latent + var, "smooth": torch.minimum(smooth, latent + var),
            "excess": (var - population).clamp_min(0)}


def _device(model) -> torch.device:
    return next(model.parameters()).device


def rows_per_batch(model, n_draws: int = 1, budget: int | None = None) -> int:
    """Spectra per batch so the denoising temporaries (latent draws, Jacobian) fit in memory: half of the
    free GPU memory, or 512 MB on the CPU, unless `budget` (bytes) is given."""
    dev = _device(model)
    if budget is None:
        budget = torch.cuda.mem_get_info(dev)[0] // 2 if dev.type == "cuda" else 512 << 20
    n_dec = model.decoder.mean.numel() + model.cfg.npix
    per_row = 4 * n_dec * (4 * model.cfg.latent_dim + 8 + 2 * n_draws) + 4 * n_dec * max(model.cfg.dec_hidden) // 64
    return int(np.clip(budget // per_row, 1, 1 << 16))


def sigma_points(model, post, z=None):
    """Mean, variance (B, npix) of the model spectrum and its rms decoder scatter under a Gaussian
    posterior of (z, t), by the unscented transform: the 2P points mean +- sqrt(P) (columns of the
    Cholesky factor) match the posterior's mean and covariance exactly and capture the decoder's curvature
    to second order, with no sampling noise, so the result does not depend on a number of draws."""
    theta, cov = post.params()
    p, b, k = theta.shape[1], theta.shape[0], post.mean.shape[1]
    cols = (p ** 0.5) * spd_cholesky(cov).float().transpose(1, 2)                  # (B, P, P): row j = column j
    pts = torch.cat([theta[:, None] + cols, theta[:, None] - cols], 1).reshape(-1, p)   # (B 2P, P)
    red = None if z is None else z.repeat_interleave(2 * p)
    mus, sigs = model.decode(pts[:, :k], red)
    amp = pts[:, k:].exp() if p > k else 1.0
    mus, sigs = (amp * mus.float()).view(b, 2 * p, -1), (amp * sigs.float()).view(b, 2 * p, -1)   # (B, 2P, n)
    return mus.mean(1), mus.var(1, unbiased=False), (sigs ** 2).mean(1).sqrt()


def coverage_growth(model, b: Batch) -> torch.Tensor:
    """(B, npix) f^-gamma, the growth of the decoder's variance where a fraction f of the training set covered
    the pixel (`SpectrumVAE.coverage`), gamma from `model.sigma_scale`."""
    gamma = model.sigma_scale.float()[SCALE_INDEX["coverage"]]
    return model.coverage(b.z, len(b)).float() ** -gamma


@torch.no_grad()
def predict_batch(model, b: Batch, kind: str = "laplace", n_samples: int = 16, gen=None, combine: bool | None = None,
                  covariance: bool = False) -> dict[str, torch.Tensor]:
    """Model-space posterior predictive for one batch: flux, var_latent, var_model (B, npix), calibrated
    with the model's sigma factors, plus `factor` (B, npix, K+1) if `covariance`.

    kind "laplace"/"decoder": the posterior is propagated through the decoder by its sigma points
    (`sigma_points`: deterministic, no draws needed); "encoder": `n_samples` draws of q(z|x), their
    unbiased variance widened for the Monte Carlo error and the small-sample quantile (`student_factor`).

    `combine` updates each pixel with its own measurement: the model's prediction of that pixel from all
    the *other* pixels (the Laplace posterior with the pixel left out, a rank-one downdate) is averaged
    with the measurement by their precisions, so no pixel is counted twice. Those predictions also set
    each spectrum's own model-variance scale, each stretch's around it (`spectrum_scale`) and the local
    misfit (`misfit_variance`); where these call for more model variance than the population's, a masked
    pixel moves toward its neighbours (`inpaint_offset`). The part of the model error that is smooth along
    wavelength (a fraction rho, correlation length in pixels, both fitted on validation pixels with a factor c
    on the model variance) is estimated from the residuals of all the pixels around (`combination`), which
    each pixel's noise alone hides.
    Where the model is sure (a stellar continuum) this is the model's value; where the data are (a strong
    emission line the latents cannot follow) it is the data's. None (default): on for the laplace and
    decoder posteriors, which allow it; False: the model's prediction alone.
    """
    post, at = latent_posterior(model, b.x, b.ivar, b.z, kind)
    a = model.sigma_scale.float()[SCALE_INDEX.get(post.kind, 0)]
    out = {}
    if at is not None:
        _, _, jac = at
        mu, var_lat, sig = sigma_points(model, post, b.z)
        if covariance:
            out["factor"] = a * pixel_cov_factor(jac, post.params()[1])
    elif post.kind == "encoder":
        if n_samples < 2:
            raise SpecaeError("the encoder posterior needs at least 2 draws (--samples) to estimate its spread")
        eps = torch.randn((n_samples,) + post.mean.shape, generator=gen, device=post.mean.device)
        lat = post.mean[None] + eps * post.std.float()[None]                              # (S, B, K)
        red = None if b.z is None else b.z.repeat(n_samples)
        mus, sigs = model.decode(lat.reshape(-1, lat.shape[-1]), red)
        mus, sigs = mus.float().view(n_samples, len(b), -1), sigs.float().view(n_samples, len(b), -1)
        mu, var_lat = mus.mean(0), mus.var(0, unbiased=True) * student_factor(n_samples)
        sig = (sigs ** 2).mean(0).sqrt()
    else:   # the AE's point estimate
        mu, sig = model.decode(post.mean, b.z)
        var_lat = torch.zeros_like(mu)
    mu, sig = mu.float(), sig.float()
    var_mod = sig ** 2
    growth = coverage_growth(model, b)
    b2 = model.sigma_scale.float()[SCALE_INDEX["model"]] ** 2
    if combine and at is None:
        raise SpecaeError("combining with the data needs the laplace or decoder posterior")
    if combine or (combine is None and at is not None):
        parts = combination_inputs(b, mu, var_lat, var_mod, a, b2, growth)
        rho, length, c = (float(model.sigma_scale[SCALE_INDEX[k]]) for k in ("smooth", "length", "combined"))
        parts = {k: v * c ** 2 if k != "mu" else v for k, v in parts.items()}
        mu, var = combination(b.x, b.ivar, parts["mu"], rho * parts["smooth"], parts["total"] - rho * parts["smooth"],
                              length, parts["excess"])
        latent = var * parts["latent"] / parts["total"].clamp_min(1e-30)      # the latent part's share
        return {"flux": mu, "var_latent": latent, "var_model": var - latent, **out}
    return {"flux": mu, "var_latent": a ** 2 * var_lat, "var_model": b2 * growth * var_mod, **out}


def denoise(model, spectra: Spectra, n_samples: int = 16, batch_size: int | None = None, seed: int = 0,
            posterior: str = "laplace", combine: bool | None = None, pixel_covariance: bool = False,
            precision: str = "fp32") -> Denoised:
    """Posterior predictive spectrum and per-pixel sigma for each spectrum (see `predict_batch`; by default
    each pixel is combined with its own measurement, counted once).

    sigma^2 = a^2 var_latent + b^2 var_model with the validation-calibrated factors of the model;
    output in the units of `spectra.flux` on the model's grid. `batch_size` (spectra per batch) defaults
    to what fits in memory; `pixel_covariance` also returns the low-rank latent part of each spectrum's
    pixel covariance (use it when summing pixels, e.g. for a line flux: neighbouring denoised pixels are
    strongly correlated).
    """
    model.eval()
    dev = _device(model)
    rt = Runtime(dev, precision)
    data, scale, spectra = model_input(model, spectra)
    n, npix = len(spectra), model.cfg.npix
    gen = torch.Generator(device=dev).manual_seed(seed)
    rows = batch_size or rows_per_batch(model, n_samples if posterior == "encoder" else 1)
    parts = []
    for i in range(0, n, rows):
        b = data[i:i + rows].to(dev)
        with rt.autocast():
            res = predict_batch(model, b, posterior, n_samples, gen, combine, pixel_covariance)
        unseen = model.unseen(b.z, len(b))
        parts.append({k: v.float().cpu() for k, v in res.items()} | {"unseen": unseen.cpu()})
    if not parts:
        empty = np.zeros((0, npix), np.float32)
        return Denoised(spectra.wave, empty, empty.copy(), empty.copy(), np.zeros((0, npix), bool),
                        np.zeros((0, npix), bool), np.zeros((0, npix, model.cfg.latent_dim), np.float32)
                        if pixel_covariance else None)

    def cat(key):
        return torch.cat([p[key] for p in parts]).numpy()

    unseen = cat("unseen")
    s = scale[:, None]
    flux = np.where(unseen, 0.0, cat("flux") * s).astype(np.float32)
    var_lat = cat("var_latent")
    sigma = np.where(unseen, np.inf, np.sqrt(var_lat + cat("var_model")) * s).astype(np.float32)
    sigma_lat = np.where(unseen, np.inf, np.sqrt(var_lat) * s).astype(np.float32)
    factor = (cat("factor") * s[:, :, None]).astype(np.float32) if pixel_covariance else None
    return Denoised(spectra.wave, flux, sigma, sigma_lat, spectra.mask.copy(), unseen, factor)


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


def heldout(model, spectra: Spectra, passes: int = 10, seed: int = 0, **options) -> HeldOut:
    """Hide each valid pixel once (a random 1/`passes` of them at a time), predict it from the rest, and score
    it against its measurement. `model`: a trained specae model (`options` go to `denoise`; spectra on another
    grid are resampled onto the model's) or a baseline with denoise(spectra) -> (flux, sigma) on the spectra's
    grid (specae.baselines).

    The measurement's noise is part of z, so where it dominates the predicted sigma z says little about that
    sigma; where the model is unsure or wrong (spectra unlike its training set) z tests it directly.
    """
    if isinstance(model, torch.nn.Module):
        spectra = on_grid(spectra, model.wave)

        def predict(s):
            d = denoise(model, s, **options)
            return d.flux, d.sigma
    else:
        predict = model.denoise
    valid = spectra.ivar > 0
    part = np.random.default_rng(seed).integers(0, passes, size=valid.shape)
    flux = np.full(valid.shape, np.nan)
    sigma = np.full(valid.shape, np.nan)
    for k in range(passes):
        hide = valid & (part == k)
        f, sig = predict(Spectra(spectra.wave, spectra.flux, np.where(hide, 0, spectra.ivar), spectra.mask | hide,
                                 spectra.labels, spectra.ids, spectra.scale, spectra.meta))
        flux[hide], sigma[hide] = f[hide], sig[hide]
    scored = valid & np.isfinite(sigma)
    var = sigma ** 2 + 1 / np.where(valid, spectra.ivar, 1.0)
    z = np.where(scored, (spectra.flux - flux) / np.sqrt(np.where(scored, var, 1.0)), np.nan)
    return HeldOut(flux, sigma, z)


def encode(model, spectra: Spectra, posterior: str = "laplace", batch_size: int | None = None) -> Latents:
    """Latent posterior (mean and full K x K covariance) of every spectrum; see specae.uncertainty.

    The AE gives its point estimate with zero covariance, whatever `posterior` says.
    """
    model.eval()
    dev = _device(model)
    data, _, _ = model_input(model, spectra)
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
    return Latents(torch.cat(means).numpy(), torch.cat(covs).numpy(), kind,
                   torch.cat(amps).numpy() if amps else None)
