"""The error model of a denoised spectrum, solved exactly: one Gaussian posterior for every pixel.

In model space (normalised flux; one spectrum, pixels i) the data are

    x_i = e^t mu_i(z) + delta_i + n_i
    n_i ~ N(0, s_n^2 / ivar_i)                       measurement noise; ivar 0 (masked): no information
    delta_i = a_i g_i + w_i                          the model's error
    v_i = b^2 f_i^-gamma (1 + d)^c sigma_i^2         its variance: the decoder's scatter sigma (at the posterior
                                                     mode, amplitude e^t included), grown where a fraction f of
                                                     the training set covered the pixel, and for spectra whose
                                                     latents lie far out in the prior, d = E[|z|^2 | x] / K
    a_i^2 = rho v_i,  g ~ OU(length l)               a fraction rho correlated along wavelength: g has unit
                                                     variance and correlation exp(-|i - j| / l)
    w_i ~ N(0, s_i (1 - rho) v_i)                    the rest white, with heavy tails: a scale s_i per pixel,
    log s_i ~ N(-tau^2 / 2, tau^2)                   log-normal with E[s] = 1, on 9 nodes (`tail_loglik`)
    theta = (z, t) ~ N(0, diag(1, .., 1, SCALE_PRIOR^2)), linearised about its Laplace mode theta_hat:
    e^t mu(z) = m + J u,  u = theta - theta_hat.

With R = Cov(delta + n) = A K A + D (A = diag(a), K the OU correlation, D = diag((1 - rho) v + s_n^2 / ivar)),
everything is Gaussian and exact:
    latent posterior   C = (P + J^T R^-1 J)^-1,  u_hat = C (J^T R^-1 r - P theta_hat),  r = x - m
    denoised pixel     E[y | x] = m + J u_hat + Sigma_delta R^-1 (r - J u_hat)
                       Cov[y | x] = G C G^T + Cov[delta | x, u],  G = J - Sigma_delta R^-1 J
    held-out pixel     x_i given all other pixels: mean x_i - [R_x^-1 r']_i / [R_x^-1]_ii, variance
                       1 / [R_x^-1]_ii, R_x = R + J P^-1 J^T (the classic leave-one-out identity)
The decoder learnt its scatter where the training spectra are dense; far out in latent space it has seen few
and errs more than its sigma says. d is set by the latents, not by the residuals, so (unlike a free scale per
spectrum, below) the high-S/N spectra at every d pin b and c apart. d is the posterior mean of |z|^2 / K, not
|z_hat|^2 / K: the mode shrinks towards 0 as the S/N falls, which made d a proxy for S/N (where the held-out pixels
cannot see the model error): calibrated on the demo's 300 validation spectra, sigma came out too narrow (56 % inside
+-1 sigma, err/sigma 1.42; 66 % and 1.10 with the posterior mean).
On the benchmark's galaxies c = 1.0-1.9 (three trainings); at its introduction the held-out likelihood was 7e-4 nats
per pixel (390 nats) above c = 0's.
There is no free scale of v per spectrum. With one (log s ~ N(0, tau^2), s at its mode given the spectrum's own
residuals, as this model had until December 2026) the held-out likelihood cannot tell b from tau: the spectra
whose residuals pin their own s predict their pixels equally well at any b, and those that cannot are
noise-dominated, though b sets most of their sigma. Calibrated on three samples of 100 of the demo's validation
spectra and on all 300 (benchmarks/results/stability-demo.md), the fits with it reached tau 0.03-2.0 and b
0.09-0.29, and 51-66 % of true values inside +-1 sigma; without it 66-77 % (72 % on all 300). A spectrum
unlike the training set widens its sigma through the latent posterior, the decoder's scatter and d; one from
another survey needs the model recalibrated on that survey's spectra.
The tail is a continuous scale mixture, not two components (a fraction eps of the pixels kappa times wider, as until
December 2026): on the benchmark's galaxies the held-out errors form a continuum, most pixels well inside the core
and a few far out at lines the latents cannot make; two components held the core wide and capped a missed line's
variance at kappa, so the data could not win there (three trainings: line pixels' RMSE 0.89 +- 0.29, the noisy
input's 1.05, err/sigma 1.43; with the log-normal 0.54 +- 0.02 and 1.11, the held-out likelihood 9e-4 nats per pixel
higher on the first, one constant instead of two). Where the white model error is small beside the noise the
likelihood is nearly flat in tau; the fit starts it at 0 and at 1 and keeps the likelier (the emulator's stars: 0).
Masked pixels are inpainted by the same posterior (the latents and the correlated part carry their
neighbours' information); where the model misses a strong line, the white part's heavy tail lets the
measurement win. R^-1 needs the posterior of g, whose precision T = K^-1 + A D^-1 A is tridiagonal: its
factorisation (the Kalman filter's variances, a product of 2x2 matrices with non-negative entries) and its
solves (first-order linear recurrences) run as parallel prefix scans, O(npix log npix) in log2(npix) batched
steps, with no loop over pixels. Everything is float64 and differentiable, so the constants are fitted by
gradient on the held-out likelihood (specae.calibration).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from specae.models.vae import LOG_2PI


def _scan(alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """y_i = alpha_i y_{i-1} + beta_i along dim 1 (y_{-1} = 0): alpha (B, n), beta (B, n, C). Hillis-Steele
    doubling, in place (no autograd: `_LinearScan` gives the gradient): stable while |alpha| <= 1, as here."""
    a, b, s, n = alpha.clone(), beta.clone(), 1, alpha.shape[1]
    while s < n:
        b[:, s:] += a[:, s:, None] * b[:, :-s]      # the right side is a new tensor: no overlap with the write
        if 2 * s < n:
            a[:, s:] = a[:, s:] * a[:, :-s]
        s *= 2
    return b


def _shift(x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """x_{i-1} along dim 1, `fill` before the first."""
    return torch.cat([torch.full_like(x[:, :1], fill), x[:, :-1]], 1)


def _ahead(x: torch.Tensor) -> torch.Tensor:
    """x_{i+1} along dim 1, 0 after the last."""
    return torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], 1)


class _LinearScan(torch.autograd.Function):
    """The recurrence's gradient is the same recurrence run backwards (lambda_i = g_i + alpha_{i+1} lambda_{i+1},
    dL/dalpha_i = lambda_i . y_{i-1}): one more scan, instead of autograd through every doubling step."""

    @staticmethod
    def forward(ctx, alpha, beta):
        y = _scan(alpha, beta)
        ctx.save_for_backward(alpha, y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        alpha, y = ctx.saved_tensors
        lam = _scan(_ahead(alpha).flip(1), grad.flip(1)).flip(1)
        return (lam * _shift(y)).sum(-1), lam


def linear_scan(alpha: torch.Tensor, beta: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """y_i = alpha_i y_{i-1} + beta_i along dim 1 (y_{-1} = 0; with `reverse`, y_i = alpha_i y_{i+1} + beta_i):
    alpha (B, n), beta (B, n, C); O(n log n) work in log2(n) batched steps, differentiable."""
    if reverse:
        return linear_scan(alpha.flip(1), beta.flip(1)).flip(1)
    return _LinearScan.apply(alpha, beta)


class _KalmanVariances(torch.autograd.Function):
    """The filtered variances p_i = f(p_{i-1}, h_i) = u / (h_i u + 1), u = phi^2 p_{i-1} + 1 - phi^2, p_{-1} = 1.
    Forward: the Moebius recurrence as a prefix product of non-negative 2x2 matrices (normalised against
    overflow). Backward: its adjoint, lambda_{i-1} = g_{i-1} + lambda_i df_i/dp, a linear scan with
    df/dp = phi^2 / (h u + 1)^2 <= 1, df/dh = -u^2 / (h u + 1)^2 and df/dphi^2 = (p_{i-1} - 1) / (h u + 1)^2."""

    @staticmethod
    def forward(ctx, h, phi2):
        c = 1 - phi2
        one = torch.ones_like(h)
        m = [phi2 * one, c * one, h * phi2, h * c + 1]            # the matrices' entries 00, 01, 10, 11: (B, n) each
        s, n = 1, h.shape[1]
        while s < n:   # M_i <- M_i M_{i-s}, written out: a batched matmul of 2x2 matrices is slower
            a, b = [x[:, s:] for x in m], [x[:, :-s] for x in m]
            prod = [a[0] * b[0] + a[1] * b[2], a[0] * b[1] + a[1] * b[3], a[2] * b[0] + a[3] * b[2],
                    a[2] * b[1] + a[3] * b[3]]
            total = prod[0] + prod[1] + prod[2] + prod[3]
            for x, y in zip(m, prod):
                x[:, s:] = y / total
            s *= 2
        p = (m[0] + m[1]) / (m[2] + m[3])                                                      # M [1, 1]
        ctx.save_for_backward(h, phi2, p)
        return p

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        h, phi2, p = ctx.saved_tensors
        before = _shift(p, 1.0)
        u = phi2 * before + 1 - phi2
        k = 1 / (h * u + 1) ** 2
        lam = linear_scan(_ahead(phi2 * k), grad[..., None], reverse=True)[..., 0]          # dL/dp_i
        return -lam * u * u * k, (lam * (before - 1) * k).sum().reshape(phi2.shape)


class OUPosterior:
    """The tridiagonal precision T = K^-1 + diag(h) of a unit-variance OU process g (correlation phi^|i-j|)
    observed with precision h_i >= 0 per pixel, factorised as T = L diag(d) L^T (B spectra at once).

    The pivots come from the Kalman filter's filtered variances p_i (d_i = 1/p_i + phi^2 q before the last
    pixel, q = 1 / (1 - phi^2)), a Moebius recurrence computed as a product of non-negative 2x2 matrices."""

    def __init__(self, h: torch.Tensor, phi: torch.Tensor):
        self.phi2 = torch.as_tensor(phi, dtype=h.dtype) ** 2
        self.q = 1 / (1 - self.phi2)
        p = _KalmanVariances.apply(h, self.phi2)
        last = torch.zeros_like(h)
        last[:, -1] = 1
        self.d = 1 / p + self.phi2 * self.q * (1 - last)                                         # (B, n)
        self.e = -phi * self.q                                                                 # off-diagonal

    @classmethod
    def from_pivots(cls, d: torch.Tensor, e: float) -> "OUPosterior":
        """The factorisation kept by `solve`'s output (pivots d (B, n), off-diagonal e), for later solves."""
        self = cls.__new__(cls)
        self.d, self.e = d, e
        return self

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """T^-1 rhs for rhs (B, n, C)."""
        ratio = self.e / self.d                                                                # l_i
        fwd = linear_scan(-_shift(ratio), rhs)
        return linear_scan(-ratio, fwd / self.d[..., None], reverse=True)

    def inverse_diagonal(self) -> torch.Tensor:
        """(B, n) diag(T^-1): the posterior variance of g."""
        ratio = self.e / self.d
        return linear_scan(ratio ** 2, (1 / self.d)[..., None], reverse=True)[..., 0]


@dataclass
class Inputs:
    """What the error model conditions on, B spectra in model space (float64)."""
    x: torch.Tensor            # (B, n) normalised flux
    ivar: torch.Tensor         # (B, n) its inverse variance as stated; 0 = masked
    m: torch.Tensor            # (B, n) the model spectrum e^t mu(z) at the posterior mode
    jac: torch.Tensor          # (B, n, P) its Jacobian with respect to theta = (z, t); P = 0 for the AE
    theta: torch.Tensor        # (B, P) the mode
    prior: torch.Tensor        # (P,) prior precision of theta
    var_model: torch.Tensor    # (B, n) the decoder's variance sigma^2 at the mode (uncalibrated)
    coverage: torch.Tensor     # (B, n) training coverage f in (0, 1]
    distance: torch.Tensor     # (B,) d = E[|z|^2 | x] / K (0 for the AE: no prior to measure it against)

    def cpu(self) -> "Inputs":
        return Inputs(**{k: v.cpu() for k, v in vars(self).items()})


def latent_distance(mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """(B,) d = E[|z|^2] / K under a posterior with these means and variances (B, K) of the latents."""
    return (mean ** 2 + var).mean(1)


def variance_factor(cal, coverage: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """(B, n) b^2 f^-gamma (1 + d)^c: the calibrated factor on the decoder's variance sigma^2 (module docstring)."""
    return cal.model_scale ** 2 * coverage ** -cal.coverage_power * (1 + distance[:, None]) ** cal.distance_power


def _rowquad(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(B, n) diag(A C A^T) for A (B, n, P), C (B, P, P)."""
    return torch.einsum("bnp,bpq,bnq->bn", a, c, a)


def solve(inp: Inputs, cal, inflate: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The posterior of every pixel and the held-out prediction of every valid one (module docstring).

    `cal` holds the constants (floats or 0-d tensors): noise_scale s_n, model_scale b, coverage_power gamma,
    smooth_fraction rho, smooth_length l (pixels), distance_power c. `inflate` (B, n) multiplies the white model
    variance (the tail's scale given each residual). Returns (B, n) tensors: "mean", "var" (the truth's posterior),
    "loo_mean", "loo_var" (the measurement x_i predicted from the other pixels, noise included), "white" (the
    white model variance), and what the pixel covariance needs ("factor" (B, n, P), "diag", "band", and the
    OU factorisation "ou")."""
    valid = inp.ivar > 0
    r = torch.where(valid, inp.x - inp.m, torch.zeros_like(inp.x))
    noise = torch.where(valid, cal.noise_scale ** 2 / inp.ivar.clamp_min(1e-300), torch.ones_like(inp.x))
    v = variance_factor(cal, inp.coverage, inp.distance) * inp.var_model
    rho = cal.smooth_fraction
    white = (1 - rho) * v * (1 if inflate is None else inflate)
    amp = (rho * v + 1e-300).sqrt()          # not sqrt(0): its infinite derivative would make the gradient NaN
    dinv = torch.where(valid, 1 / (white + noise), torch.zeros_like(v))
    ou = OUPosterior(amp * amp * dinv, torch.exp(-1 / torch.as_tensor(cal.smooth_length, dtype=v.dtype)))

    y = torch.cat([inp.jac, r[..., None]], -1)                                           # (B, n, P + 1)
    g_y = ou.solve((amp * dinv)[..., None] * y)                                          # E[g | y]
    r_inv = dinv[..., None] * (y - amp[..., None] * g_y)                                 # R^-1 y
    p = inp.jac.shape[-1]
    rj, rr, gj, gr = r_inv[..., :p], r_inv[..., p], g_y[..., :p], g_y[..., p]
    hess = torch.diag_embed(inp.prior.expand(len(r), -1)) + inp.jac.transpose(1, 2) @ rj     # (B, P, P)
    cov = torch.cholesky_inverse(torch.linalg.cholesky(hess)) if p else hess
    grad = torch.einsum("bnp,bn->bp", inp.jac, rr) - inp.prior * inp.theta
    u = (cov @ grad[..., None])[..., 0]                                                  # (B, P)
    rr = rr - (rj @ u[..., None])[..., 0]                                                # R^-1 (r - J u)
    gr = gr - (gj @ u[..., None])[..., 0]
    t_diag = ou.inverse_diagonal()
    diag_rx = dinv - (amp * dinv) ** 2 * t_diag - _rowquad(rj, cov)                       # [R_x^-1]_ii
    safe = torch.where(valid, diag_rx, torch.ones_like(diag_rx)).clamp_min(1e-300)
    k = white * dinv                                                                     # the measurement's weight
    g = inp.jac - amp[..., None] * gj - white[..., None] * rj                            # (B, n, P)
    band = (1 - k) * amp
    out = {"mean": inp.m + (inp.jac @ u[..., None])[..., 0] + amp * gr + white * rr,
           "var": _rowquad(g, cov) + band ** 2 * t_diag + white * (1 - k),
           "loo_mean": inp.x - rr / safe, "loo_var": 1 / safe, "white": white,
           "factor": g @ torch.linalg.cholesky(cov) if p else g, "diag": white * (1 - k), "band": band, "ou": ou}
    return out


# The expectation over log s on 9 Gauss-Hermite nodes: the tail fitted and used is this mixture of 9 scales, the
# widest exp(4.5 tau - tau^2 / 2) (90 at the galaxies' tau 1.1)
_NODES, _WEIGHTS = np.polynomial.hermite.hermgauss(9)


def tail_scales(tau) -> tuple[torch.Tensor, torch.Tensor]:
    """The quadrature of log s ~ N(-tau^2 / 2, tau^2): scales s_m (M,) and log-weights (M,) (float64)."""
    tau = torch.as_tensor(tau, dtype=torch.float64)
    return torch.exp(tau * torch.from_numpy(_NODES * math.sqrt(2)) - tau ** 2 / 2), \
        torch.from_numpy(np.log(_WEIGHTS / math.sqrt(math.pi)))


def tail_loglik(x, loo_mean, loo_var, white, tau) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-likelihood of held-out measurements x under the scale mixture of N(loo_mean, loo_var + (s - 1) white)
    over the white part's scale s (module docstring), and E[s | x], the scale given the residual; (B, n) each.
    A residual far beyond the core gets a scale of about its square: where the model misses a strong line, the
    measurement wins."""
    s, logw = tail_scales(tau)
    rest = (loo_var - white).clamp_min(1e-300)   # >= 0 exactly (noise included); not below it by rounding
    var = rest[..., None] + s.to(loo_var.dtype) * white[..., None]                       # (B, n, M)
    lk = logw - 0.5 * ((x - loo_mean)[..., None] ** 2 / var + torch.log(var) + LOG_2PI)
    return torch.logsumexp(lk, -1), (torch.softmax(lk, -1) * s).sum(-1)


def sum_variance(factor, diag, band, ou: OUPosterior, weights) -> torch.Tensor:
    """(B,) variance of sum_i weights_i y_i under the pixel covariance factor factor^T + diag(diag) + diag(band)
    T^-1 diag(band) (the output of `solve`): the latent part, the white part and the correlated part."""
    w = weights.to(factor.dtype)
    latent = ((factor * w[..., None]).sum(1) ** 2).sum(1)
    bw = (band * w)[..., None]
    return latent + (diag * w * w).sum(1) + (bw * ou.solve(bw)).sum((1, 2))
