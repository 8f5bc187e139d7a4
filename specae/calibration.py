"""The error model's constants, fitted after training by one held-out likelihood, saved with the model.

`Calibration` names every constant that shapes the denoised sigma (the equations are specae.errormodel's):
the survey's noise scale s_n, the decoder scatter's factor b, its growth f^-gamma where the training
coverage f is thin and (1 + d)^c for spectra whose latents lie far out in the prior, the fraction rho of the
model error that is correlated along wavelength and its length l, and the spread tau of the white part's heavy
tail. `fit_calibration(model, spectra)` fits them all at once on spectra the model did not train on (the
validation set, or another survey's spectra: no truth is needed): each valid pixel is predicted from all
the other pixels of its spectrum (the exact leave-one-out identity of the linearised Gaussian model), and
the constants maximise the mean log-likelihood of those predictions (L-BFGS-B on exact gradients). The
likelihood has separate optima (a model error correlated over a few pixels or over the whole spectrum; a narrow
or a wide tail), so the first fit runs from several starts on a quarter of the spectra, and goes on
from the start most likely on all of them. The latent posterior is then refitted under the calibrated weights
and the constants fitted once more.
No constant is chosen against a truth.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, replace
from types import SimpleNamespace

import numpy as np
import torch
from scipy.optimize import minimize

from specae.data.spectra import Spectra
from specae.data.tensors import Batch, on_grid, to_batch, window_mask
from specae.errormodel import Inputs, latent_distance, solve, tail_loglik
from specae.errors import SpecaeError
from specae.plumbing import config_from_dict
from specae.uncertainty import SCALE_PRIOR
from specae.uncertainty import posterior as latent_posterior

# 2: no spectrum_spread (specae.errormodel says why); 3: distance_power; 4: the log-normal tail (tail_spread) in
# place of two components (outlier_fraction, outlier_scale): a different model, so older calibrations are refused
CALIBRATION_VERSION = 4
READABLE = (CALIBRATION_VERSION,)


@dataclass
class Calibration:
    """The fitted constants of the error model (specae.errormodel), plus what they were fitted on."""
    noise_scale: float = 1.0         # s_n: the stated noise sigma times s_n is the noise
    model_scale: float = 1.0         # b on the decoder's scatter
    coverage_power: float = 0.0      # gamma: growth f^-gamma of the model variance where coverage f is thin
    smooth_fraction: float = 0.0     # rho: the part of the model variance correlated along wavelength
    smooth_length: float = 1.0       # l: its correlation length [pixels]
    tail_spread: float = 0.0         # tau: sd of the log-normal scale of the white model error (heavy tails)
    distance_power: float = 0.0      # c: growth (1 + d)^c of the model variance, d = E[|z|^2 | x] / K
    n_spectra: int = 0               # spectra and held-out pixels it was fitted on
    n_pixels: int = 0
    heldout_nll: float | None = None   # mean negative log-likelihood per held-out pixel at the fit
    version: int = CALIBRATION_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str, where: str = "calibration") -> "Calibration":
        """Read what `to_json` wrote; a calibration of another version is refused with the fix."""
        try:
            d = json.loads(text)
            version = d.get("version")
        except (ValueError, AttributeError):
            raise SpecaeError(f"{where}: damaged calibration file") from None
        if version not in READABLE:
            raise SpecaeError(f"{where}: calibration version {version}, this specae reads {CALIBRATION_VERSION}: "
                              f"recalibrate with 'specae calibrate MODEL DATA -o NEW_MODEL'")
        return config_from_dict(cls, {**d, "version": CALIBRATION_VERSION})


# The fitted constants: (name, bounds, log scale); coverage_power only in redshift mode, where coverage varies,
# distance_power only for the VAE (the AE's latents have no prior to measure a distance against).
# The bounds are the range where the held-out pixels can say anything, not a prior.
FITTED = (("noise_scale", (0.5, 2.0), True), ("model_scale", (1e-2, 1e2), True), ("coverage_power", (0.0, 2.0), False),
          ("smooth_fraction", (0.0, 0.95), False), ("smooth_length", (1.0, None), True),
          ("tail_spread", (0.0, 3.0), False), ("distance_power", (-4.0, 4.0), False))
# Where the fit starts: off the boundary of rho, whose gradient vanishes there (tau: TAIL_STARTS)
START = Calibration(smooth_fraction=0.3, smooth_length=10.0)
# Held-out pixels per fit: bounds its cost whatever the set's size; 1e6 pixels resolve differences of about 1e-3
# in the log-likelihood per pixel, a few per cent in the model variance where the noise is 80 times larger
CALIBRATION_PIXELS = 1_000_000
CHUNK_PIXELS = 100_000             # pixels per autograd pass (memory)
ROUNDS = 2                         # fit, refit the latent posterior under the fitted weights, fit again
# The first fit starts from each of these tails and lengths, on a quarter of the spectra, and goes on from the one
# most likely on all of them. The model error's correlation length has one optimum over a few pixels and one over the
# whole spectrum (the demo's stars: from l = 10 one fit in four stayed at 10, 3e-4 nats per pixel less likely than
# the others at the whole spectrum). The likelihood's gradient in tau vanishes at 0 (a symmetric spread), and tau
# is nearly flat where the white model error is small beside the noise, so a fit stays near its start: no tail
# (a normal white error) and a wide one are both tried. From 0.3, 1 and 2 alone the demo's stars ended at tau
# 0.6-1.6, in three of benchmarks.stability's four calibrations less likely than the fits with a normal white error
# (by 3e-5 to 7e-5 nats per pixel), with sigma too narrow (err/sigma up to 1.57)
TAIL_STARTS = (0.0, 1.0)
LENGTH_STARTS = (10.0, 0.25)       # pixels; a number under 1: that fraction of the spectrum
# Stop when the mean log-likelihood per pixel changes by under 1e-7 (relative): 0.1 nat over 1e6 pixels
FTOL = 1e-7
MAX_ITER = 100
# Evaluations of the likelihood over all the pixels that a fit takes (beside ROUNDS passes of the model terms), for
# a time budget: on the demo's stars (1.9e5 pixels) six starts on a quarter, the choice among them and the two full
# fits took the work of 60 (now four starts)
EVALS = 60


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


@torch.no_grad()
def model_terms(model, b: Batch, cal: Calibration, kind: str = "laplace") -> Inputs:
    """The error model's inputs for one batch: the latent posterior's mode (under `cal`'s weights), the model
    spectrum, its Jacobian and the decoder's variance there, float64. Pixels the model never saw count as masked."""
    saved, model.calibration = model.calibration, cal
    try:
        post, at = latent_posterior(model, b.x, b.ivar, b.z, kind)
    finally:
        model.calibration = saved
    n = len(b)
    if at is None:
        if kind == "encoder":
            raise SpecaeError("denoising needs the laplace or decoder posterior (the encoder's has no Jacobian)")
        m, sig = model.decode(post.mean, b.z)                   # the AE: its point estimate, no latent uncertainty
        jac, theta, prior = m.new_zeros(n, m.shape[1], 0), m.new_zeros(n, 0), m.new_zeros(0)
    else:
        m, sig, jac = at
        theta, cov = post.params()
        jac = jac.permute(1, 2, 0)                                                    # (B, npix, K+1)
        k = post.mean.shape[1]
        prior = torch.tensor([1.0] * k + [SCALE_PRIOR ** -2], device=m.device)
    ivar = torch.where(model.unseen(b.z, n), torch.zeros_like(b.ivar), b.ivar)
    distance = m.new_zeros(n) if at is None else latent_distance(theta[:, :-1],
                                                                 torch.diagonal(cov, dim1=1, dim2=2)[:, :-1])
    return Inputs(*(t.double() for t in (b.x, ivar, m, jac, theta, prior, sig.float() ** 2,
                                         model.coverage(b.z, n), distance)))


def _as_params(cal: Calibration, active) -> np.ndarray:
    return np.array([math.log(getattr(cal, name)) if log else getattr(cal, name) for name, _, log in active])


def _negloglik(chunks: list[Inputs], values: torch.Tensor, active, base: Calibration) -> torch.Tensor:
    """Mean negative held-out log-likelihood per pixel over `chunks`, gradients accumulated into `values`."""
    total = sum(int((c.ivar > 0).sum()) for c in chunks)
    loss = 0.0
    for inp in chunks:
        cal = dict(asdict(base))
        for (name, _, log), v in zip(active, values):
            cal[name] = v.exp() if log else v
        cal = SimpleNamespace(**cal)      # constants that may be tensors, for gradients
        out = solve(inp, cal)
        ll, _ = tail_loglik(inp.x, out["loo_mean"], out["loo_var"], out["white"], cal.tail_spread)
        part = -torch.where(inp.ivar > 0, ll, torch.zeros_like(ll)).sum() / total
        part.backward()
        loss += float(part.detach())
    return loss


def _likelihood(chunks: list[Inputs], cal: Calibration, active) -> float:
    """Mean negative held-out log-likelihood per pixel of `cal` over `chunks`."""
    return _negloglik(chunks, torch.tensor(_as_params(cal, active), requires_grad=True), active, cal)


class _OutOfTime(Exception):
    """The deadline of a fit passed."""


def _fit_constants(chunks: list[Inputs], start: Calibration, active, deadline: float = math.inf
                   ) -> tuple[Calibration, float]:
    """The constants of `active` most likely on `chunks`, from `start`; once `deadline` (time.monotonic) has
    passed, the fit stops at its next evaluation with the most likely constants evaluated so far."""
    best = [math.inf, None]

    def fun(p):
        if best[1] is not None and time.monotonic() > deadline:
            raise _OutOfTime
        values = torch.tensor(p, dtype=torch.float64, requires_grad=True)
        nll = _negloglik(chunks, values, active, start)
        if nll < best[0]:
            best[:] = nll, p.copy()
        return nll, values.grad.numpy().copy()

    bounds = [tuple(None if b is None else (math.log(b) if log else b) for b in bnd) for _, bnd, log in active]
    p0 = np.clip(_as_params(start, active), [lo for lo, _ in bounds], [np.inf if hi is None else hi for _, hi in bounds])
    try:
        res = minimize(fun, p0, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": MAX_ITER, "ftol": FTOL})
        nll, p = res.fun, res.x
    except _OutOfTime:
        nll, p = best
    fitted = {name: float(math.exp(v) if log else v) for (name, _, log), v in zip(active, p)}
    return replace(start, **fitted), float(nll)


def fit_calibration(model, spectra: Spectra, kind: str = "laplace", max_pixels: int = CALIBRATION_PIXELS,
                    seed: int = 0, seconds: float | None = None) -> Calibration:
    """Fit the error model's constants on `spectra` (no truth needed; spectra the model did not train on) and
    set them on the model (`model.calibration`); returns them. At most `max_pixels` valid pixels are used
    (whole spectra, drawn at random), so the cost does not grow with the set.

    With `seconds`, the fit takes about that long: the pixels are cut to what EVALS evaluations of the likelihood
    take, as timed on the first spectra on this machine, and past the deadline each fit stops at its next
    evaluation with the most likely constants so far (`n_pixels` says how many pixels they rest on).
    """
    deadline = math.inf if seconds is None else time.monotonic() + seconds
    model.eval()
    dev = next(model.parameters()).device
    data, _, spectra = model_input(model, spectra)
    n_valid = (data.ivar > 0).sum(1).numpy()
    order = np.random.default_rng(seed).permutation(len(data))
    order = order[n_valid[order] > 0]
    if not len(order):
        raise SpecaeError("no valid pixel to calibrate the model on")
    npix = data.x.shape[1]
    per_chunk = max(1, CHUNK_PIXELS // npix)
    skip = (set() if model.cfg.redshift else {"coverage_power"}) | (set() if model.cfg.kind == "vae"
                                                                    else {"distance_power"})
    active = [(name, (lo, npix if hi is None else hi), log) for name, (lo, hi), log in FITTED if name not in skip]

    def terms(rows, cal):
        return [model_terms(model, data[rows[i:i + per_chunk]].to(dev), cal, kind).cpu()
                for i in range(0, len(rows), per_chunk)]

    def taking(pixels):   # the first spectra of `order` holding at most `pixels` valid pixels (at least one)
        return np.sort(order[:max(1, int(np.searchsorted(np.cumsum(n_valid[order]), pixels, side="right")))])

    rows = taking(max_pixels)
    cal = replace(START)
    if seconds is not None:   # time the terms and one evaluation on the first chunk, then take what fits
        t0 = time.monotonic()
        first = terms(rows[:per_chunk], cal)
        t1 = time.monotonic()
        _likelihood(first, cal, active)
        per_pixel = (ROUNDS * (t1 - t0) + EVALS * (time.monotonic() - t1)) / int(n_valid[rows[:per_chunk]].sum())
        rows = taking(min(max_pixels, (deadline - time.monotonic()) / per_pixel))
    for step in range(ROUNDS):
        if step and time.monotonic() > deadline:
            break   # no time left to refit the latent posterior under the fitted constants
        chunks = terms(rows, cal)
        if step == 0:
            quarter = terms(rows[::4], cal)   # every fourth spectrum (every fourth chunk was all of a small set)
            starts = [_fit_constants(quarter, replace(START, tail_spread=k, smooth_length=l if l >= 1 else l * npix),
                                     active, deadline)[0] for k in TAIL_STARTS for l in LENGTH_STARTS]
            cal = min(starts, key=lambda c: _likelihood(chunks, c, active))
        cal, nll = _fit_constants(chunks, cal, active, deadline)
    cal = replace(cal, n_spectra=len(rows), n_pixels=int(n_valid[rows].sum()), heldout_nll=nll)
    model.calibration = cal
    return cal


def require_calibration(model) -> Calibration:
    """The model's calibration, or the one-line error that says how to get one."""
    if model.calibration is None:
        raise SpecaeError("the model has no calibration of its error model (trained by an older specae, or not "
                          "calibrated yet): run 'specae calibrate MODEL DATA -o NEW_MODEL' or "
                          "specae.calibration.fit_calibration(model, validation_spectra)")
    return model.calibration
