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

Given a calibration (specae.calibration), the Gauss-Newton weights are the calibrated ones: measurement
noise s_n^2 / ivar plus the model's variance b^2 f^-gamma (1 + d)^c sigma_model^2 (d under the encoder's q),
so the posterior is that of the error model the denoised sigma comes from (specae.errormodel).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specae.errormodel import latent_distance, variance_factor
from specae.errors import SpecaeError

KINDS = ("laplace", "decoder", "encoder")


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


def laplace(model, x, ivar, z=None, start=None, n_steps: int = 3, damping: float = 0.0, tol: float = 0.0,
            var_factor: torch.Tensor | float = 1.0):
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
        w = pixel_weights(ivar, sig * var_factor ** 0.5)
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
    factor, cal = 1.0, getattr(model, "calibration", None)
    if cal is not None:   # the weights of the calibrated error model (specae.errormodel)
        ivar = ivar / cal.noise_scale ** 2
        # the distance d under the encoder's posterior, as the mode is not known yet
        d = torch.zeros(len(x), device=x.device) if logvar is None else latent_distance(mean.float(),
                                                                                        logvar.float().exp())
        factor = variance_factor(cal, model.coverage(z, len(x)).float(), d)
    if logvar is None:   # the AE: a point estimate
        b, k = mean.shape
        return LatentPosterior(mean.float(), torch.zeros(b, k, k, dtype=torch.float64, device=mean.device), "point"), None
    if kind == "encoder":
        return LatentPosterior(mean.float(), torch.diag_embed(logvar.double().exp()), "encoder"), None
    if kind == "decoder":
        post, at = laplace(model, x, ivar, z, mean, n_steps=30, damping=1e-3, tol=1e-6, var_factor=factor)
        post.kind = "decoder"
        return post, at
    return laplace(model, x, ivar, z, mean, var_factor=factor)
