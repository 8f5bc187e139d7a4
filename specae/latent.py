"""What the latent space means, and moving through it: label directions, traversals, interpolation, latent
arithmetic, and outlier scores from the latent posterior.

    lat = encode(model, train)                                    # specae.denoise: Laplace posteriors
    dirs = directions(lat, train.labels, names=("TEFF", "FE_H"), orthogonal=True)
    z, flux = traverse(model, lat.mean[0], dirs["TEFF"].step, [-500, 0, 500])   # steps in K
    z, flux = interpolate(model, lat.mean[0], lat.mean[1], 8, kind="slerp")
    z, flux = arithmetic(model, lat.mean[rich], lat.mean[poor], lat.mean[other])   # rich - poor + other
    s = outlier_scores(model, spectra, LatentDensity().fit(lat))  # log_evidence, chi2_dof, log_density
    lat, labels, ids = encode_files(model, ["a.h5", "b.h5"], "laplace")   # files read block by block

Inputs are latents (N, K) (or `Latents`) and Spectra; outputs are numpy arrays. Decoded spectra are the
decoder's mean mu(z) in the model's normalised flux units, on its observed grid (`model.wave`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from specae.denoise import Latents, encode, model_input, no_data, rows_per_batch
from specae.errors import SpecaeError, one_count_warning
from specae.inputs import spectrum_inputs
from specae.models.vae import LOG_2PI
from specae.plumbing import atomic_path
from specae.regress import cv_r2, label_column, numeric_labels, ridge_fit
from specae.uncertainty import pixel_weights, spd_cholesky
from specae.uncertainty import posterior as latent_posterior



def _means(latents) -> np.ndarray:
    """(N, K) float64 latent means from a `Latents` or an array."""
    z = latents.mean if isinstance(latents, Latents) else latents
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2:
        raise SpecaeError(f"latents must have shape (N, K), got {z.shape}")
    return z


# -- directions ----------------------------------------------------------------------------------------


@dataclass
class Direction:
    """How one label varies linearly across the latent space: label ~ intercept + coef . z (ridge)."""
    label: str
    coef: np.ndarray          # (K,) gradient of the fitted label, label units per unit z
    intercept: float
    step: np.ndarray          # (K,) change of z that raises the fitted label by one unit (orthogonalised:
                              #      and leaves the other labels' fits unchanged); the shortest such change
    r2_cv: float              # k-fold cross-validated R^2 of the ridge fit
    n: int                    # spectra with a finite value of the label
    spread: float             # standard deviation of the label over those spectra

    @property
    def unit(self) -> np.ndarray:
        """(K,) unit vector along `step`."""
        return self.step / np.linalg.norm(self.step)

    def predict(self, latents) -> np.ndarray:
        """(N,) the fitted label at latents (N, K)."""
        return self.intercept + _means(latents) @ self.coef

    def to_dict(self) -> dict:
        return {"coef": self.coef.tolist(), "intercept": self.intercept, "step": self.step.tolist(),
                "direction": self.unit.tolist(), "step_norm": float(np.linalg.norm(self.step)),
                "r2_cv": self.r2_cv, "n": self.n, "spread": self.spread}

    @classmethod
    def from_dict(cls, label: str, d: dict) -> "Direction":
        try:
            return cls(label, np.asarray(d["coef"], float), float(d["intercept"]), np.asarray(d["step"], float),
                       float(d["r2_cv"]), int(d["n"]), float(d["spread"]))
        except (KeyError, TypeError, ValueError) as e:
            raise SpecaeError(f"direction {label!r} is incomplete or damaged ({e})") from None


def directions(latents, labels: dict, names=None, orthogonal: bool = False, alpha: float = 1.0,
               folds: int = 5, seed: int = 0) -> dict[str, Direction]:
    """Per label, a ridge fit label ~ z over the spectra where the label is finite (NaN: skipped for that
    label only), its k-fold cross-validated R^2 and the step in z per unit of the label.

    latents (N, K) or `Latents` (their means are used); labels {name: (N,)}; names: the labels to use
    (default: all numeric ones). orthogonal: each step also holds the other labels' fits fixed (the
    shortest z change with d label_i = 1 and d label_j = 0: a column of the pseudo-inverse of the stacked
    gradients), so "more TEFF" does not also mean "more FE_H"; needs no more labels than latents.
    """
    z = _means(latents)
    names = list(numeric_labels(labels) if names is None else names)
    fits = {}
    for name in names:
        y = label_column(labels, name, len(z))
        ok = np.isfinite(y)
        if ok.sum() < max(folds, z.shape[1] + 2):
            raise SpecaeError(f"label {name!r}: only {int(ok.sum())} spectra have a value, too few for a fit "
                              f"over {z.shape[1]} latents")
        coef, intercept = ridge_fit(z[ok], y[ok], alpha)
        if not np.any(coef):
            raise SpecaeError(f"label {name!r} does not vary with the latents (constant label?)")
        fits[name] = (coef, intercept, cv_r2(z[ok], y[ok], alpha, folds, seed), int(ok.sum()), float(y[ok].std()))
    grads = np.stack([f[0] for f in fits.values()]) if fits else np.zeros((0, z.shape[1]))    # (L, K)
    if orthogonal:
        if len(grads) > z.shape[1]:
            raise SpecaeError(f"cannot hold {len(grads) - 1} other labels fixed with only {z.shape[1]} latents")
        steps = np.linalg.pinv(grads).T                                                       # (L, K)
    else:
        steps = grads / np.sum(grads ** 2, axis=1, keepdims=True)
    return {name: Direction(name, c, b, s, r2, n, sd) for (name, (c, b, r2, n, sd)), s in zip(fits.items(), steps)}


DIRECTIONS_FORMAT = "specae-directions"


def save_directions(path, dirs: dict[str, Direction], **info) -> None:
    """Write directions as plain JSON (atomically), with `info` (e.g. latent_dim, posterior) beside them."""
    doc = {"format": DIRECTIONS_FORMAT, "version": 1, **info, "labels": {k: d.to_dict() for k, d in dirs.items()}}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1))


def load_directions(path) -> tuple[dict[str, Direction], dict]:
    """Directions written by `save_directions` and the info stored with them."""
    try:
        doc = json.loads(Path(path).read_text())
        if doc.get("format") != DIRECTIONS_FORMAT:
            raise ValueError("not a specae directions file")
        dirs = {k: Direction.from_dict(k, d) for k, d in doc["labels"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SpecaeError) as e:
        raise SpecaeError(f"{path}: cannot read directions ({str(e).splitlines()[0]})") from None
    return dirs, {k: v for k, v in doc.items() if k != "labels"}


# -- decoding latents ----------------------------------------------------------------------------------


@torch.no_grad()
def decode(model, latents, redshift: float | None = None) -> np.ndarray:
    """(N, npix) decoder means mu(z) for latents (N, K), normalised flux on `model.wave`, times each
    spectrum's fitted amplitude exp(t) when `latents` is a `Latents` that has one. Redshift models decode
    at `redshift` (default: the middle of their training range)."""
    z = _means(latents)
    amp = getattr(latents, "log_amplitude", None)
    if z.shape[1] != model.cfg.latent_dim:
        raise SpecaeError(f"latents have {z.shape[1]} dimensions but the model has {model.cfg.latent_dim}")
    dev = next(model.parameters()).device
    red = None
    if model.cfg.redshift:
        red = float(np.mean(model.cfg.z_range)) if redshift is None else float(redshift)
    rows = rows_per_batch(model)
    out = []
    for a in range(0, len(z), rows):
        lat = torch.as_tensor(z[a:a + rows], dtype=torch.float32, device=dev)
        mu, _ = model.decode(lat, None if red is None else torch.full((len(lat),), red, device=dev))
        out.append(mu.float().cpu().numpy())
    if not out:
        return np.zeros((0, model.cfg.npix), np.float32)
    return np.concatenate(out) * (1.0 if amp is None else np.exp(amp)[:, None].astype(np.float32))


def traverse(model, z0, step, amounts, redshift: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Latents z0 + a * step for each a in `amounts` (S,), and their decoded spectra: ((S, K), (S, npix)).

    With `step` a `Direction.step`, the amounts are in the label's units (e.g. K of TEFF)."""
    z = np.asarray(z0, float)[None] + np.asarray(amounts, float)[:, None] * np.asarray(step, float)[None]
    return z, decode(model, z, redshift)


def slerp(za, zb, t) -> np.ndarray:
    """(len(t), K) spherical interpolation from za to zb (K,): the direction turns along the great circle
    at a constant rate and the norm changes linearly, so the path keeps to the typical radius of the
    N(0, I) prior instead of cutting through its improbable centre."""
    za, zb, t = np.asarray(za, float), np.asarray(zb, float), np.asarray(t, float)[:, None]
    na, nb = np.linalg.norm(za), np.linalg.norm(zb)
    if min(na, nb) < 1e-12:
        return (1 - t) * za + t * zb
    ua, ub = za / na, zb / nb
    omega = np.arccos(np.clip(ua @ ub, -1, 1))
    if omega < 1e-6 or np.pi - omega < 1e-6:          # (anti)parallel: the great circle is not unique
        return (1 - t) * za + t * zb
    unit = (np.sin((1 - t) * omega) * ua + np.sin(t * omega) * ub) / np.sin(omega)
    return ((1 - t) * na + t * nb) * unit


def interpolate(model, za, zb, n: int = 8, kind: str = "linear", redshift: float | None = None):
    """n latents from za to zb (both ends included), straight ("linear") or along the great circle
    ("slerp"), and their decoded spectra: ((n, K), (n, npix))."""
    t = np.linspace(0, 1, n)
    if kind == "linear":
        z = (1 - t)[:, None] * np.asarray(za, float) + t[:, None] * np.asarray(zb, float)
    elif kind == "slerp":
        z = slerp(za, zb, t)
    else:
        raise SpecaeError(f"unknown interpolation {kind!r} (use linear or slerp)")
    return z, decode(model, z, redshift)


def arithmetic(model, a, b, c, redshift: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """mean z of set A - mean z of set B + mean z of set C (each (N_i, K) or `Latents`), and its decoded
    spectrum: ((K,), (npix,)). E.g. metal-rich - metal-poor + a metal-poor star of another Teff."""
    sets = [_means(s) for s in (a, b, c)]
    if min(len(s) for s in sets) == 0:
        raise SpecaeError("latent arithmetic needs at least one spectrum in each of the three sets")
    z = sets[0].mean(0) - sets[1].mean(0) + sets[2].mean(0)
    return z, decode(model, z[None], redshift)[0]


# -- outlier scores ------------------------------------------------------------------------------------


class LatentDensity:
    """Density of a reference set's latents (e.g. the training spectra): a Gaussian kernel density with
    Scott's bandwidth H on the set's covariance. A query with posterior covariance C is scored by
    p(z) = mean_i N(z; z_i, H + C), so an uncertain latent is not called unusual for its noise alone.
    Without `fit` it is the prior N(0, I) (one kernel at 0, H = I).
    """

    def __init__(self, max_points: int = 5000, seed: int = 0):
        self.max_points, self.seed = max_points, seed
        self.points_, self.bandwidth_ = None, None

    def fit(self, latents) -> "LatentDensity":
        z = _means(latents)
        if len(z) < z.shape[1] + 2:
            raise SpecaeError(f"a latent density needs more than {z.shape[1] + 1} reference spectra, got {len(z)}")
        if len(z) > self.max_points:
            z = z[np.sort(np.random.default_rng(self.seed).choice(len(z), self.max_points, replace=False))]
        n, k = z.shape
        self.points_ = z
        self.bandwidth_ = n ** (-2 / (k + 4)) * np.cov(z, rowvar=False).reshape(k, k)
        return self

    def log_density(self, mean, cov=None, rows: int = 256) -> np.ndarray:
        """(B,) log p at latents mean (B, K), each smeared by its covariance cov (B, K, K) if given."""
        z = _means(mean)
        k = z.shape[1]
        points = np.zeros((1, k)) if self.points_ is None else self.points_
        band = np.eye(k) if self.bandwidth_ is None else self.bandwidth_
        cov = np.zeros((len(z), k, k)) if cov is None else np.asarray(cov, np.float64)
        out = np.empty(len(z))
        for a in range(0, len(z), rows):
            chol = spd_cholesky(torch.from_numpy(band + cov[a:a + rows])).numpy()          # (b, K, K)
            diff = z[a:a + rows, None, :] - points[None]                                    # (b, M, K)
            white = np.linalg.solve(chol[:, None], diff[..., None])[..., 0]                 # (b, M, K)
            log_det = 2 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(1)                # (b,)
            log_k = -0.5 * (white ** 2).sum(2) - 0.5 * (log_det[:, None] + k * LOG_2PI)     # (b, M)
            top = log_k.max(1)
            out[a:a + rows] = top + np.log(np.exp(log_k - top[:, None]).mean(1))
        return out


@torch.no_grad()
def outlier_scores(model, spectra, density: LatentDensity | None = None, posterior: str = "laplace",
                   batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Per spectrum (N,), from its latent posterior (specae.uncertainty; normalised flux units):

    log_evidence  Laplace estimate of log p(x) [nats]: fit term + prior + log-determinant,
                  sum_valid [-w r^2 + log(w / 2 pi)] / 2 - |z|^2 / 2 + log det(C) / 2, with r the residual of
                  the posterior mean and w = 1 / (1/ivar + sigma_model^2); NaN for the AE (no prior)
    chi2_dof      sum w r^2 / n_valid: about 1 for a spectrum the model can explain
    log_density   log density of the latent under `density` (default the prior N(0, I))
    n_valid       valid pixels
    Spectra unlike the training set have low log_evidence and log_density and high chi2_dof. Spectra without a
    valid pixel get NaN scores (no estimate), counted in a warning.
    """
    model.eval()
    dev = next(model.parameters()).device
    data, _, spectra = model_input(model, spectra)
    empty = no_data(data.ivar, spectra.ids)
    density = density or LatentDensity()
    rows = batch_size or rows_per_batch(model)
    out = {"log_evidence": [], "chi2_dof": [], "log_density": [], "n_valid": []}
    for a in range(0, len(data), rows):
        b = data[a:a + rows].to(dev)
        post, at = latent_posterior(model, b.x, b.ivar, b.z, posterior)
        mu, sig = (at[0], at[1]) if at is not None else model.decode(post.mean, b.z)
        w = pixel_weights(b.ivar, sig).double()
        valid = b.ivar > 0
        fit = (w * (b.x.double() - mu.double()) ** 2).sum(1)                              # (B,)
        n_valid = valid.sum(1).double()
        if post.kind == "point":
            log_ev = torch.full_like(fit, math.nan)
        else:
            log_w = torch.where(valid, torch.log(w.clamp_min(1e-300)) - LOG_2PI, torch.zeros_like(w)).sum(1)
            cov = post.params()[1]
            log_det = 2 * torch.log(torch.diagonal(spd_cholesky(cov), dim1=1, dim2=2)).sum(1)
            log_ev = 0.5 * (log_w - fit) - post.neg_log_prior() + 0.5 * log_det
        out["log_evidence"].append(log_ev.cpu().numpy())
        out["chi2_dof"].append((fit / n_valid.clamp_min(1)).cpu().numpy())
        out["log_density"].append(density.log_density(post.mean.cpu().numpy(), post.cov.cpu().numpy()))
        out["n_valid"].append(n_valid.cpu().numpy().astype(np.int64))
    out = {k: np.concatenate(v) if v else np.zeros(0, np.int64 if k == "n_valid" else float) for k, v in out.items()}
    for k in ("log_evidence", "chi2_dof", "log_density"):
        out[k][empty] = np.nan
    return out


def encode_files(model, paths, posterior: str, batch_size=None, names=None, max_rows: int | None = None):
    """Latent posteriors of the spectra in `paths`, read block by block: (Latents, labels {name: (N,)},
    ids (N,)). Labels `names` (default: the numeric labels all files share) must be in every file; only
    the first `max_rows` rows are read if given. FITS files are read together onto the model's grid
    (specae.inputs). Spectra without a valid pixel are left out (counted in a warning: their latents are no
    estimate)."""
    means, covs, labels, ids, kind, total = [], [], [], [], posterior, 0
    with one_count_warning():   # one for all blocks and files
        for src in spectrum_inputs(paths, model.wave):
            for part in src.blocks():
                if max_rows is not None and total >= max_rows:
                    break
                part = part[: None if max_rows is None else max_rows - total]
                wanted = numeric_labels(part.labels) if names is None else names
                try:
                    labels.append({n: label_column(part.labels, n, len(part)) for n in wanted})
                except SpecaeError as e:
                    raise SpecaeError(f"{src.name}: {e}") from None
                lat = encode(model, part, posterior, batch_size)
                means.append(lat.mean)
                covs.append(lat.cov)
                ids.append(part.ids)
                kind, total = lat.kind, total + len(part)
    if total == 0:
        raise SpecaeError(f"{', '.join(map(str, paths))}: no spectra")
    common = [n for n in labels[0] if all(n in d for d in labels)]
    mean = np.concatenate(means)
    keep = np.isfinite(mean).all(1)
    if not keep.any():
        raise SpecaeError(f"{', '.join(map(str, paths))}: no spectra with a valid pixel")
    return (Latents(mean[keep], np.concatenate(covs)[keep], kind),
            {n: np.concatenate([d[n] for d in labels])[keep] for n in common}, np.concatenate(ids)[keep])
