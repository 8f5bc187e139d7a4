"""The latent posterior, its propagation to the pixels, and the calibration of the denoised sigma.

One posterior API serves denoising, encoding, label regression and plots: `posterior(model, batch)`
returns a `LatentPosterior` (mean and full K x K covariance per spectrum) of one of three kinds:
- "laplace" (the default): from the encoder's guess, Gauss-Newton steps on the exact log posterior
  (the ivar likelihood with the decoder's scatter, and the N(0, I) prior), then the Laplace
  approximation (J^T W J + I)^-1 at the optimum, with J the decoder's exact Jacobian;
- "decoder": the same optimisation run to convergence with damping, for spectra the encoder has never
  seen (another survey, an odd mask); it needs no more than the decoder;
- "encoder": the amortised q(z|x) (diagonal), as trained.
The K x K algebra is done in float64 with a symmetric (Cholesky) solve; jitter is added only to the
matrices that fail to factorise.

The denoised variance has two parts, each with a factor calibrated after training on validation
spectra without truth (`calibrate` in specae.train): var_latent, the latent posterior pushed through
the decoder, and var_model = sigma_model^2, the decoder's own scatter.
- a (latent part, one per posterior kind), by a parametric bootstrap: the denoised validation spectra,
  given fresh noise from their own ivar and masks, are denoised again, and a is fixed by the median of
  |err| / sigma_latent with the truth known. Every spectrum counts equally.
- b and gamma (decoder part), by maximum likelihood on held-out pixels: a tenth of the valid validation
  pixels at a time is hidden, predicted from the rest, and compared with its measurement, whose variance
  is 1/ivar + a^2 var_latent + b^2 f^-gamma var_model for the pixels the model follows, with f the
  fraction of the training set that covered the pixel; a wider component takes the outliers
  (`model_scale`), and pixels whose neighbours reject the model (a line stronger than the latents can
  make) are left out, both being the misfit variance's to cover in the combination. The held-out noise
  is independent of the prediction, so what the model misses of real spectra (and the bootstrap cannot
  see) ends up in b and gamma.
- rho and the correlation length of the smooth part of the model error (specae.denoise.combination), and a
  factor c on the model variance the combination starts from, by the likelihood of held-out validation pixels
  predicted by the whole combination with the data (`smooth_error_fit` in specae.train): each candidate of a
  grid gets its own c (`predictive_scale`, the mixture of `model_scale`), and the candidate most likely at its
  own c is kept with that c. rho = 0 where the model's errors are not smooth along wavelength; c corrects what
  b, fitted before the spectra's own scales and the smooth part, leaves mis-stated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize, minimize_scalar
from scipy.stats import t as student_t

from specae.errors import SpecaeError

FACTOR_RANGE = (0.25, 4.0)   # beyond this the validation data cannot be trusted to rescale sigma
KINDS = ("laplace", "decoder", "encoder")
# entries of model.sigma_scale
SCALE_INDEX = {"laplace": 0, "decoder": 0, "encoder": 1, "model": 2, "coverage": 3, "smooth": 4, "length": 5,
               "combined": 6}


# Prior std of each spectrum's log amplitude: the normalisation (a median of noisy flux) is uncertain by
# about 1 / (S/N sqrt(npix)); a wide prior lets the spectrum's own pixels set its level with the latents.
SCALE_PRIOR = 0.1


@dataclass
class LatentPosterior:
    """Gaussian posterior over the latents of B spectra (and, for laplace/decoder, each spectrum's log
    amplitude t: the model spectrum is exp(t) mu(z), which absorbs the error of the normalisation)."""
    mean: torch.Tensor        # (B, K) posterior mean (the mode, for laplace/decoder)
    cov: torch.Tensor         # (B, K, K) float64 covariance (zeros for the AE's point estimate)
    kind: str
    log_scale: torch.Tensor | None = None    # (B,) t, the log amplitude
    joint_cov: torch.Tensor | None = None    # (B, K+1, K+1) float64 covariance of (z, t)

    @property
    def std(self) -> torch.Tensor:
        """(B, K) marginal standard deviations."""
        return torch.diagonal(self.cov, dim1=1, dim2=2).clamp_min(0).sqrt()

    def params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P) parameter mean and (B, P, P) covariance: (z, t) when the amplitude is fitted, else z."""
        if self.log_scale is None:
            return self.mean, self.cov
        return torch.cat([self.mean, self.log_scale[:, None].to(self.mean.dtype)], 1), self.joint_cov

    def neg_log_prior(self) -> torch.Tensor:
        """(B,) 0.5 |z|^2 (+ 0.5 t^2 / SCALE_PRIOR^2): minus the log prior, up to its constant."""
        out = 0.5 * (self.mean.double() ** 2).sum(1)
        return out if self.log_scale is None else out + 0.5 * (self.log_scale.double() / SCALE_PRIOR) ** 2


def pixel_weights(ivar: torch.Tensor, sigma_model: torch.Tensor) -> torch.Tensor:
    """1 / (1/ivar + sigma_model^2) on valid pixels, 0 on masked ones: each pixel's weight in the fit."""
    valid = ivar > 0
    return torch.where(valid, 1 / (1 / ivar.clamp_min(1e-30) + sigma_model.float() ** 2), torch.zeros_like(ivar))


def _neg_log_post(x, w, mu, theta, prior) -> torch.Tensor:
    """(B,) 0.5 sum w (x - mu)^2 + 0.5 theta^T P theta, the objective the posterior mode minimises
    (theta (B, P) the parameters, prior (P,) the diagonal prior precision P)."""
    return 0.5 * (w * (x - mu.float()) ** 2).sum(1) + 0.5 * (theta.double() ** 2 * prior).sum(1)


def spd_cholesky(a: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor of symmetric positive (semi)definite (B, K, K) matrices, in float64.

    Matrices that do not factorise get a jitter (relative to their trace, growing tenfold until they do);
    the others are left exactly as they are.
    """
    a = 0.5 * (a + a.transpose(-1, -2)).double()
    chol, info = torch.linalg.cholesky_ex(a)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    scale = torch.diagonal(a, dim1=-2, dim2=-1).abs().mean(-1).clamp_min(1e-300)
    jitter = 1e-12
    while bool((info > 0).any()) and jitter < 1:
        bad = info > 0
        fixed, info_fix = torch.linalg.cholesky_ex(a[bad] + (jitter * scale[bad])[:, None, None] * eye)
        chol[bad], info[bad] = fixed, info_fix
        jitter *= 10
    return chol


def laplace(model, x, ivar, z=None, start=None, n_steps: int = 3, damping: float = 0.0, tol: float = 0.0):
    """Posterior mode of the latents and the log amplitude by (damped) Gauss-Newton from `start` (default
    the encoder mean; amplitude 1), and its Laplace covariance. x, ivar (B, npix) model space; z (B,)
    redshifts in redshift mode.

    A step is kept only for spectra whose objective drops; with `damping` > 0 (Levenberg-Marquardt) a
    rejected spectrum's damping grows tenfold and an accepted one's shrinks, and iteration stops early
    once no objective changes by more than `tol` (relative). Returns the posterior and, at its mean, the
    model spectrum exp(t) mu, its scatter exp(t) sigma_model (B, npix) and the Jacobian of the model
    spectrum with respect to (z, t) (K+1, B, npix), for propagation to the pixels.
    """
    if start is None:
        start, _ = model.encode(x, ivar, z)
    k, b = start.shape[1], start.shape[0]
    theta = torch.cat([start.float().detach(), torch.zeros(b, 1, device=start.device)], 1)   # (B, K+1): z, t
    prior = torch.tensor([1.0] * k + [SCALE_PRIOR ** -2], dtype=torch.float64, device=start.device)

    def model_spectrum(th):
        mu, sig, jac = model.decoder.forward_and_jacobian(th[:, :k], z)
        amp = th[:, k:].exp()
        mu, sig = amp * mu.float(), amp * sig.float()
        return mu, sig, torch.cat([amp[None] * jac.float(), mu[None]])                          # (K+1, B, n)

    lam = torch.full((b,), float(damping), dtype=torch.float64, device=start.device)
    converged = False
    for step in range(n_steps + 1):
        mu, sig, jac = model_spectrum(theta)
        w = pixel_weights(ivar, sig)
        jd, wd = jac.double(), w.double()
        hess = torch.einsum("kbn,bn,lbn->bkl", jd, wd, jd) + torch.diag(prior)                  # (B, K+1, K+1)
        if step == n_steps or converged:
            break
        grad = torch.einsum("kbn,bn->bk", jd, wd * (x.double() - mu.double())) - prior * theta.double()
        chol = spd_cholesky(hess + lam[:, None, None] * torch.diag_embed(torch.diagonal(hess, dim1=1, dim2=2)))
        trial = theta + torch.cholesky_solve(grad[..., None], chol)[..., 0].float()
        mu_t, _ = model.decode(trial[:, :k], z)
        mu_t = trial[:, k:].exp() * mu_t.float()
        before, after = _neg_log_post(x, w, mu, theta, prior), _neg_log_post(x, w, mu_t, trial, prior)
        better = after < before
        theta = torch.where(better[:, None], trial, theta)
        if damping > 0:
            lam = torch.where(better, lam / 10, lam * 10)
            converged = tol > 0 and not bool(((before - after).abs() > tol * before.abs()).any())
    cov = torch.cholesky_inverse(spd_cholesky(hess))
    return LatentPosterior(theta[:, :k], cov[:, :k, :k], "laplace", theta[:, k], cov), (mu, sig, jac)


@torch.no_grad()
def posterior(model, x, ivar, z=None, kind: str = "laplace"):
    """The latent posterior of kind "laplace", "decoder" or "encoder" (module docstring) for B spectra.

    Returns the LatentPosterior and, for laplace/decoder, (mu, sigma_model, jacobian) at its mean, else None.
    """
    if kind not in KINDS:
        raise SpecaeError(f"unknown posterior {kind!r} (use {', '.join(KINDS)})")
    mean, logvar = model.encode(x, ivar, z)
    if logvar is None:   # the AE: a point estimate
        b, k = mean.shape
        return LatentPosterior(mean.float(), torch.zeros(b, k, k, dtype=torch.float64, device=mean.device), "point"), None
    if kind == "encoder":
        return LatentPosterior(mean.float(), torch.diag_embed(logvar.double().exp()), "encoder"), None
    if kind == "decoder":
        post, at = laplace(model, x, ivar, z, mean, n_steps=30, damping=1e-3, tol=1e-6)
        post.kind = "decoder"
        return post, at
    return laplace(model, x, ivar, z, mean)


def pixel_cov_factor(jac: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """(B, npix, P) factor L with L L^T the posterior's part of the pixel covariance (rank P, the latents and
    the amplitude), linearised: jac (P, B, npix), cov (B, P, P)."""
    return torch.einsum("kbn,blk->bnl", jac.double(), spd_cholesky(cov)).float()


def student_factor(n_draws: int) -> float:
    """Variance factor for a predictive variance estimated from `n_draws` draws: (1 + 1/S) for the Monte
    Carlo error of their mean, times the squared Student-t / normal ratio of the 1-sigma quantile for
    S - 1 degrees of freedom, so a +-1 sigma band still holds 68 % with few draws."""
    q = 0.5 + 0.5 * 0.682689492          # the normal's 1-sigma quantile is 1 by definition
    return (1 + 1 / n_draws) * student_t.ppf(q, n_draws - 1) ** 2


# The model's error is heavy-tailed: most pixels scatter about the prediction as the decoder says, a few
# (a line's wings, a feature the latents cannot make) miss by much more. One Gaussian fitted to both is
# too wide for the first: on the synthetic galaxies +-1 sigma then held 82 % of true values. b describes
# the pixels the model follows; the outliers, like the pixels the local misfit test rejects, are left to
# the misfit variance of the combination (specae.denoise).
OUTLIER_SCALE = (1.0, 1e4)     # range of the outliers' variance factor c^2 over the core's
OUTLIER_FRACTION = (1e-4, 0.5)
# Where few training spectra cover a wavelength (the rest-frame ends of a redshift survey), the decoder's mean
# is less constrained than its scatter, learned from those few, says: on the synthetic galaxies the pixels
# covered by under a tenth of the training set held 46 % of true values inside +-1 sigma. The decoder part
# grows there as f^-gamma (gamma = 1: the error of a mean from f N spectra).
COVERAGE_POWER = (0.0, 2.0)


def _mixture_fit(r2: np.ndarray, vn: np.ndarray, vm: np.ndarray, log_f: np.ndarray | None):
    """Maximum likelihood of r2 ~ (1 - eps) N(0, vn + s^2 f^-gamma vm) + eps N(0, vn + c^2 s^2 f^-gamma vm) (squared
    residuals, flat float64 arrays): returns (s, gamma, mean negative log-likelihood per pixel); gamma = 0
    without log f."""
    power = COVERAGE_POWER if log_f is not None else (0.0, 0.0)
    log_f = np.zeros_like(vm) if log_f is None else log_f

    def nll(p):
        logs2, gamma, logc2, eps = p
        v = np.exp(logs2 - gamma * log_f) * vm
        core, wide = vn + v, vn + np.exp(logc2) * v
        return -np.mean(np.logaddexp(np.log1p(-eps) - 0.5 * (r2 / core + np.log(core)),
                                     np.log(eps) - 0.5 * (r2 / wide + np.log(wide))))

    lo, hi = 2 * np.log(FACTOR_RANGE[0]), 2 * np.log(FACTOR_RANGE[1])
    gauss = minimize_scalar(lambda t: nll((t, 0.0, 0.0, OUTLIER_FRACTION[0])), bounds=(lo, hi), method="bounded").x
    fit = minimize(nll, [gauss, 0.0, np.log(10.0), 0.05], method="L-BFGS-B",
                   bounds=[(lo, hi), power, tuple(np.log(OUTLIER_SCALE)), OUTLIER_FRACTION])
    return float(np.exp(0.5 * fit.x[0])), float(fit.x[1]), float(fit.fun)


def model_scale(x: np.ndarray, ivar: np.ndarray, mean: np.ndarray, var_model: np.ndarray,
                var_other: np.ndarray | float = 0.0, coverage: np.ndarray | None = None) -> tuple[float, float]:
    """Factor b of the decoder scatter on the pixels the model follows and the power gamma of its growth
    where the training coverage f (0 < f <= 1) is thin, by maximum likelihood of the residuals
    x - mean ~ (1 - eps) N(0, v + b^2 f^-gamma var_model) + eps N(0, v + c^2 b^2 f^-gamma var_model), with
    v = 1/ivar + var_other and a fraction eps of outliers c^2 times wider; arrays (N, npix) or flat arrays
    of selected pixels. Without `coverage`, gamma = 0; without outliers b is the Gaussian maximum-likelihood b.
    Returns (b, gamma).
    """
    valid = (ivar > 0) & np.isfinite(var_model)
    if not valid.any():
        return 1.0, 0.0
    other = np.broadcast_to(var_other, np.shape(x))[valid]
    r2, vm = (x - mean)[valid].astype(np.float64) ** 2, var_model[valid].astype(np.float64)
    vn = 1 / ivar[valid].astype(np.float64) + other
    log_f = None if coverage is None else np.log(np.broadcast_to(coverage, np.shape(x))[valid])
    b, gamma, _ = _mixture_fit(r2, vn, vm, log_f)
    return b, gamma


def predictive_scale(r2: np.ndarray, noise: np.ndarray, var: np.ndarray) -> tuple[float, float]:
    """Factor c on the variance `var` of held-out predictions whose squared residuals to the measurement are r2
    (measurement variance `noise`; flat arrays), by the same two-component mixture as `model_scale`; returns
    (c, mean negative log-likelihood per pixel at c), the latter to compare predictions of the same pixels."""
    if r2.size == 0:
        return 1.0, 0.0
    c, _, nll = _mixture_fit(r2.astype(np.float64), noise.astype(np.float64), var.astype(np.float64), None)
    return c, nll


def latent_scale(err: np.ndarray, var_latent: np.ndarray) -> float:
    """Factor a with err ~ N(0, a^2 var_latent), errors against a known truth; arrays (N, npix).

    Estimated from the median of |err| / sigma (0.6745 for a unit normal), so the +-1 sigma band holds
    68 % of the pixels even when the error distribution has heavier tails than a Gaussian.
    """
    ok = np.isfinite(var_latent) & (var_latent > 0)
    if not ok.any():
        return 1.0
    return float(np.clip(np.median(np.abs(err[ok]) / np.sqrt(var_latent[ok])) / 0.6745, *FACTOR_RANGE))
