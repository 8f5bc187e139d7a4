"""Physical labels from latents, with calibrated uncertainties.

A map latent -> labels is fitted on a labelled set: ridge regression (closed form, numpy) or a small MLP
that predicts a mean and a variance per label (Gaussian NLL, trained through specae.engine). To predict,
draws of each spectrum's latent posterior are pushed through the map; the spread of the mapped draws
(var_latent) and the map's own predictive variance (var_map) make the total

    sigma^2 = a^2 var_latent + b^2 var_map,

with the factors (a, b) per label fitted by maximum likelihood on labelled spectra
the map did not see (a held-out part of the labelled set, or a calibration set: best spectra the VAE
did not train on either), as the denoiser's sigma is calibrated on validation spectra. Labels may be
NaN for some spectra: those spectra are skipped for that label only.

    reg = LabelRegressor(RegressorConfig(kind="mlp")).fit(model, train, ["TEFF", "LOGG", "FE_H"])
    pred = reg.predict(model, test)            # pred.mean, pred.sigma: (N, L) in label units
    reg.save("reg"); reg = LabelRegressor.load("reg")

Saved as a directory: regressor.json (plain JSON: config, labels, calibration, metrics, the fingerprint
of the model whose latents it maps) and weights.pt (tensors only, read with weights_only=True).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from scipy.optimize import minimize

from specae.checkpoints import cpu_tensors, load_tensors, reading, require_files, write_checkpoint
from specae.data.sources import TensorSource
from specae.denoise import Latents, encode
from specae.engine import EngineConfig, Objective, StepContext, adamw
from specae.engine import train as run_engine
from specae.errors import SpecaeError
from specae.models.vae import gaussian_nll
from specae.plumbing import config_from_dict

FORMAT = "specae-regressor"
VERSION = 1
CALIBRATION_RANGE = (0.05, 20.0)   # beyond this the held-out labels cannot be trusted to rescale sigma


# -- ridge and cross-validation (numpy) ---------------------------------------------------------------


def ridge_fit(z: np.ndarray, y: np.ndarray, alpha: float = 1.0) -> tuple[np.ndarray, float]:
    """Ridge regression y ~ intercept + coef . z, intercept unpenalised: (coef (K,), intercept).
    z (N, K), y (N,); alpha in units of z^2 (latents have unit prior variance)."""
    zm, ym = z.mean(0), y.mean()
    zc = z - zm
    coef = np.linalg.solve(zc.T @ zc + alpha * np.eye(z.shape[1]), zc.T @ (y - ym))
    return coef, float(ym - zm @ coef)


def kfold(n: int, folds: int = 5, seed: int = 0) -> list[np.ndarray]:
    """Row indices of `folds` random, disjoint folds covering range(n)."""
    if n < folds:
        raise SpecaeError(f"{folds}-fold cross-validation needs at least {folds} rows, got {n}")
    return np.array_split(np.random.default_rng(seed).permutation(n), folds)


def cv_predict(z: np.ndarray, y: np.ndarray, alpha: float = 1.0, folds: int = 5, seed: int = 0) -> np.ndarray:
    """(N,) out-of-fold ridge predictions: each fold predicted by the fit to the others."""
    pred = np.empty(len(y))
    for hold in kfold(len(y), folds, seed):
        keep = np.ones(len(y), bool)
        keep[hold] = False
        coef, b = ridge_fit(z[keep], y[keep], alpha)
        pred[hold] = b + z[hold] @ coef
    return pred


def cv_r2(z: np.ndarray, y: np.ndarray, alpha: float = 1.0, folds: int = 5, seed: int = 0) -> float:
    """k-fold cross-validated R^2 of ridge regression y ~ z."""
    return r2(cv_predict(z, y, alpha, folds, seed), y)


def r2(pred: np.ndarray, truth: np.ndarray) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot over the entries where both are finite."""
    ok = np.isfinite(pred) & np.isfinite(truth)
    t = truth[ok]
    return float(1 - np.sum((t - pred[ok]) ** 2) / max(np.sum((t - t.mean()) ** 2), 1e-300))


def numeric_labels(labels: dict) -> list[str]:
    """Names of the labels holding numbers (bool and text labels left out), sorted."""
    return sorted(k for k, v in labels.items() if np.asarray(v).dtype.kind in "iuf")


def label_column(labels: dict, name: str, n: int) -> np.ndarray:
    """(n,) float64 values of label `name`; SpecaeError if it is absent or not numeric."""
    if name not in labels:
        raise SpecaeError(f"label {name!r} is not in the data (labels: {', '.join(sorted(labels)) or 'none'})")
    v = np.asarray(labels[name])
    if v.dtype.kind not in "iuf" or v.shape != (n,):
        raise SpecaeError(f"label {name!r} does not hold one number per spectrum")
    return v.astype(np.float64)


# -- the maps ------------------------------------------------------------------------------------------


class Standardise(nn.Module):
    """Fixed affine maps of the inputs (K,) and labels (L,), so the networks see unit-scale numbers."""

    def __init__(self, k: int, n_labels: int):
        super().__init__()
        for name, size in (("z_loc", k), ("z_scale", k), ("y_loc", n_labels), ("y_scale", n_labels)):
            self.register_buffer(name, torch.zeros(size) if name.endswith("loc") else torch.ones(size))

    def set(self, z: np.ndarray, y: np.ndarray) -> None:
        """From training latents (N, K) and labels (N, L) with NaN for missing values."""
        sd_z, sd_y = z.std(0), np.nanstd(y, 0)
        for name, v in (("z_loc", z.mean(0)), ("z_scale", np.where(sd_z > 0, sd_z, 1.0)),
                        ("y_loc", np.nanmean(y, 0)), ("y_scale", np.where(sd_y > 0, sd_y, 1.0))):
            getattr(self, name).copy_(torch.as_tensor(v, dtype=torch.float32))


class RidgeMap(nn.Module):
    """label_l = bias_l + weight_l . z, with a constant predictive variance per label (out-of-fold
    residual variance). Fitted in closed form by `fit`; (B, K) -> mean, var (B, L)."""

    def __init__(self, k: int, n_labels: int):
        super().__init__()
        self.register_buffer("weight", torch.zeros(n_labels, k))
        self.register_buffer("bias", torch.zeros(n_labels))
        self.register_buffer("var", torch.ones(n_labels))

    def fit(self, z: np.ndarray, y: np.ndarray, alpha: float, seed: int = 0) -> None:
        """Per label, over the rows where it is finite: z (N, K), y (N, L)."""
        for j in range(y.shape[1]):
            ok = np.isfinite(y[:, j])
            coef, b = ridge_fit(z[ok], y[ok, j], alpha)
            resid = y[ok, j] - cv_predict(z[ok], y[ok, j], alpha, min(5, int(ok.sum())), seed)
            self.weight[j], self.bias[j] = torch.as_tensor(coef), b
            self.var[j] = float(np.mean(resid ** 2))

    def forward(self, z):
        return z @ self.weight.T + self.bias, self.var.expand(z.shape[0], -1)


class MLPMap(nn.Module):
    """A small MLP predicting a Gaussian per label: (B, K) -> mean, var (B, L) in label units."""

    def __init__(self, k: int, n_labels: int, hidden: tuple = (64, 64)):
        super().__init__()
        self.norm = Standardise(k, n_labels)
        widths = (k,) + tuple(hidden)
        layers = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.GELU()]
        self.body = nn.Sequential(*layers, nn.Linear(widths[-1], 2 * n_labels))

    def forward(self, z):
        n = self.norm
        out = self.body((z - n.z_loc) / n.z_scale).view(z.shape[0], 2, -1)                # (B, 2, L)
        # log variance bounded: a label the latents fix exactly must not give a zero or infinite NLL
        return n.y_loc + n.y_scale * out[:, 0], n.y_scale ** 2 * out[:, 1].clamp(-12, 8).exp()


def label_nll(mean: torch.Tensor, var: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gaussian negative log-likelihood (specae.models.vae.gaussian_nll) summed over the finite entries of y,
    and their count; mean, var, y (B, L). Missing labels weigh nothing (ivar 0)."""
    ok = torch.isfinite(y)
    nll = gaussian_nll(torch.where(ok, y, 0.0), torch.where(ok, 1 / var, 0.0), mean, torch.zeros_like(mean))
    return nll.sum(), ok.sum()


class MapObjective(Objective):
    """The MLP map's step for the engine: Gaussian NLL of the standardised labels (missing ones skipped),
    with variance var_map(z) + g^T C g, where g = d mean / dz and C the spectrum's latent posterior
    covariance: the scatter a noisy latent explains is not learnt into var_map, which keeps only what the
    latents cannot tell, as prediction (latent draws + var_map) assumes."""

    monitor = "nll"
    schedule = "cosine"

    def __init__(self, net: MLPMap, cfg: "RegressorConfig"):
        self.net, self.cfg = net, cfg

    def modules(self):
        return {"map": self.net}

    def optimizers(self):
        return {"map": adamw(self.net.parameters(), self.cfg.lr, weight_decay=self.cfg.weight_decay)}

    def _nll(self, net, batch):
        n, z = self.net.norm, batch["z"]
        k, b = z.shape[1], z.shape[0]
        eye = torch.eye(k, device=z.device, dtype=z.dtype).repeat_interleave(b, 0)                # (K B, K)
        (mean, var), (grad, _) = torch.func.jvp(net, (z.repeat(k, 1),), (eye,))
        mean, var, grad = mean[:b], var[:b], grad.view(k, b, -1)                                 # (B, L), (K, B, L)
        var_lat = torch.einsum("kbl,bkm,mbl->bl", grad, batch["cov"], grad)
        return label_nll((mean - n.y_loc) / n.y_scale, (var + var_lat) / n.y_scale ** 2,
                         (batch["y"] - n.y_loc) / n.y_scale)

    def train_step(self, batch, ctx: StepContext):
        with ctx.autocast():
            total, count = self._nll(ctx.trained("map"), batch)
        loss = total / count.clamp_min(1)
        ctx.optimizer_step("map", loss)
        return {"nll": loss.detach()}

    def eval_step(self, batch, ctx):
        total, count = self._nll(self.net, batch)
        return {"nll": total, "count": count.double()}

    def summarise(self, sums):
        return {"nll": sums["nll"] / max(sums["count"], 1)}


# -- the regressor -------------------------------------------------------------------------------------


@dataclass
class RegressorConfig(EngineConfig):
    """The map and its training (engine settings for the MLP inherited: epochs, max_minutes, device, ...)."""
    kind: str = "mlp"                  # "mlp" (mean and variance per label) or "ridge"
    hidden: tuple = (64, 64)           # MLP widths
    alpha: float = 1.0                 # ridge penalty, in units of z^2
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    patience: int | None = 20
    holdout: float = 0.2               # labelled fraction held out to calibrate sigma (and stop the MLP early),
                                       # unless calibration spectra are given
    n_draws: int = 64                  # latent posterior draws pushed through the map (antithetic pairs)
    posterior: str = "laplace"         # latent posterior of the spectra (specae.uncertainty)



@dataclass
class LabelPrediction:
    """Predicted labels of N spectra, in the labels' units."""
    names: list[str]
    mean: np.ndarray              # (N, L) posterior predictive mean
    sigma: np.ndarray             # (N, L) calibrated total 1-sigma
    sigma_latent: np.ndarray      # (N, L) the latent posterior's part alone (calibrated)
    sigma_map: np.ndarray         # (N, L) the map's own part alone (calibrated)

    def __getitem__(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(mean, sigma), each (N,), of label `name`."""
        j = self.names.index(name)
        return self.mean[:, j], self.sigma[:, j]


def model_fingerprint(model) -> str:
    """sha256 of a model's weights and buffers: identifies the latent space a regressor was fitted on."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def check_fitted_on(model, latent_dim: int, fingerprint: str | None, where: str, fix: str) -> None:
    """SpecaeError (naming `where`, advising `fix`) unless `model` is the one whose latents something was fitted on
    (a regressor, directions): `latent_dim` latents and, where known, the weights' `fingerprint`."""
    if model.cfg.latent_dim != latent_dim:
        raise SpecaeError(f"{where} maps {latent_dim} latents but the model has {model.cfg.latent_dim}")
    if fingerprint is not None and model_fingerprint(model) != fingerprint:
        raise SpecaeError(f"{where} was fitted on the latents of another model (its fingerprint differs); {fix}")


def _draws(n_draws: int, k: int, seed: int) -> np.ndarray:
    """(S, K) standard normal draws in antithetic pairs (+e, -e): the mapped mean of a linear map is then
    exact, and the same draws serve every spectrum, so results do not depend on how rows are batched."""
    half = np.random.default_rng(seed).standard_normal(((n_draws + 1) // 2, k))
    return np.concatenate([half, -half])


def _sqrt_cov(cov: np.ndarray) -> np.ndarray:
    """(N, K, K) symmetric square roots of covariances (N, K, K); zero covariances (the AE) stay zero."""
    vals, vecs = np.linalg.eigh(0.5 * (cov + cov.transpose(0, 2, 1)))
    return vecs * np.sqrt(np.clip(vals, 0, None))[:, None, :]


def _calibrate(resid: np.ndarray, var_lat: np.ndarray, var_map: np.ndarray) -> np.ndarray:
    """ML factors (L, 2): (a_l, b_l) with resid_l ~ N(0, a_l^2 var_lat + b_l^2 var_map) for each label l;
    arrays (n, L), resid NaN where the label is missing. With no latent variance (the AE's point estimates)
    a_l has no gradient and stays 1."""
    bounds = [tuple(np.log(CALIBRATION_RANGE))] * 2
    out = np.ones((resid.shape[1], 2))
    for j in range(resid.shape[1]):
        ok = np.isfinite(resid[:, j])
        r2_, vl, vm = resid[ok, j] ** 2, var_lat[ok, j], var_map[ok, j]

        def nll(p):
            v = np.exp(2 * p[0]) * vl + np.exp(2 * p[1]) * vm
            return np.mean(r2_ / v + np.log(v))

        out[j] = np.exp(minimize(nll, np.zeros(2), bounds=bounds, method="L-BFGS-B").x)
    return out


def _labelled(latents: Latents, y, names: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z (n, K) float64, cov (n, K, K), y (n, L)) of the spectra with at least one finite label and latents
    (a spectrum without a valid pixel has none: `encode` gives it NaN, and counts it)."""
    y = np.asarray(y, np.float64).reshape(len(latents.mean), -1)
    if len(names) != y.shape[1] or not names:
        raise SpecaeError(f"{y.shape[1]} label columns but names {names}")
    keep = np.isfinite(y).any(1) & np.isfinite(latents.mean).all(1)
    return latents.mean[keep].astype(np.float64), latents.cov[keep], y[keep]


class LabelRegressor:
    """Map latent posteriors to labels with calibrated sigmas (module docstring). After `fit`: names_ (L,),
    map_ (RidgeMap or MLPMap), scale_ (L, 2) calibration factors (a, b), metrics_ on the calibration spectra,
    history_ (MLP training), latent_dim_, fingerprint_ (of the model, or None when fitted on latents)."""

    def __init__(self, cfg: RegressorConfig | None = None):
        self.cfg = cfg or RegressorConfig()
        if self.cfg.kind not in ("mlp", "ridge"):
            raise SpecaeError(f"unknown regressor {self.cfg.kind!r} (use mlp or ridge)")
        self.fingerprint_ = None
        self.history_ = {}

    def fit(self, model, spectra, names, calibration=None) -> "LabelRegressor":
        """Encode `spectra` with `model` (cfg.posterior) and fit labels `names` (NaN = missing); calibrate on
        the labelled Spectra `calibration` if given (see `fit_latents`)."""
        names = list(names)

        def encoded(s):
            return encode(model, s, self.cfg.posterior), np.stack([label_column(s.labels, n, len(s)) for n in names], 1)

        return self.fit_latents(*encoded(spectra), names, None if calibration is None else encoded(calibration), model)

    def fit_latents(self, latents: Latents, y: np.ndarray, names, calibration=None, model=None) -> "LabelRegressor":
        """Fit on latent posteriors (N spectra) and labels y (N, L), NaN where missing; `model`, the one that gave
        the latents, is recorded (`fingerprint_`) so that `predict` refuses any other.

        The sigma factors are calibrated (and the MLP stopped early) on `calibration` = (Latents, y) if given,
        else on a random `cfg.holdout` of the spectra. Give spectra the VAE did not train on where you can:
        the latents of its own training spectra are a little better than those of new spectra, and sigmas
        calibrated on them come out too small.
        """
        names = list(names)
        z, cov, y = _labelled(latents, y, names)
        if calibration is None:
            order = np.random.default_rng(self.cfg.seed).permutation(len(y))
            hold = np.zeros(len(y), bool)
            hold[order[:int(round(self.cfg.holdout * len(y)))]] = True
            (z, cov, y), (z_c, cov_c, y_c) = (z[~hold], cov[~hold], y[~hold]), (z[hold], cov[hold], y[hold])
        else:
            z_c, cov_c, y_c = _labelled(*calibration, names)
        for j, name in enumerate(names):
            n_tr, n_ca = int(np.isfinite(y[:, j]).sum()), int(np.isfinite(y_c[:, j]).sum())
            if n_tr < z.shape[1] + 2 or n_ca < 5:
                raise SpecaeError(f"label {name!r}: {n_tr} training and {n_ca} calibration spectra have a value; "
                                  f"too few to fit and calibrate")
        self.names_, self.latent_dim_, self.kind_ = names, z.shape[1], latents.kind
        self.fingerprint_ = None if model is None else model_fingerprint(model)
        k, n_lab = z.shape[1], len(names)
        if self.cfg.kind == "ridge":
            self.map_ = RidgeMap(k, n_lab)
            self.map_.fit(z, y, self.cfg.alpha, self.cfg.seed)
        else:
            torch.manual_seed(self.cfg.seed)       # the initial weights: the engine seeds only the epochs
            self.map_ = MLPMap(k, n_lab, self.cfg.hidden)
            self.map_.norm.set(z, y)

            def source(*arrays, **kw):
                tensors = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in zip(("z", "cov", "y"), arrays)}
                return TensorSource(tensors, **kw)
            self.history_ = run_engine(MapObjective(self.map_, self.cfg),
                                       source(z, cov, y, batch_size=self.cfg.batch_size, seed=self.cfg.seed),
                                       source(z_c, cov_c, y_c, batch_size=4096, shuffle=False), self.cfg)
            self.map_.cpu().eval()
        mean, var_lat, var_map = self._mapped(z_c, cov_c)
        self.scale_ = _calibrate(y_c - mean, var_lat, var_map)
        pred = self._combine(mean, var_lat, var_map)
        self.metrics_ = {"n_train": len(y), "n_calibration": len(y_c),
                         **{n: _scores(pred.mean[:, j], pred.sigma[:, j], y_c[:, j]) for j, n in enumerate(names)}}
        return self

    @torch.no_grad()
    def _mapped(self, z: np.ndarray, cov: np.ndarray, rows: int = 4096):
        """Draws of N(z, cov) through the map: mean, var_latent, var_map (N, L), uncalibrated."""
        eps = _draws(self.cfg.n_draws, z.shape[1], self.cfg.seed)                              # (S, K)
        out = [], [], []
        for a in range(0, len(z), rows):
            draws = z[a:a + rows, None] + np.einsum("nkl,sl->nsk", _sqrt_cov(cov[a:a + rows]), eps)  # (n, S, K)
            m, v = self.map_(torch.as_tensor(draws.reshape(-1, z.shape[1]), dtype=torch.float32))
            m, v = m.double().view(len(draws), len(eps), -1).numpy(), v.double().view(len(draws), len(eps), -1).numpy()
            for lst, value in zip(out, (m.mean(1), m.var(1, ddof=1), v.mean(1))):
                lst.append(value)
        return tuple(np.concatenate(lst) if lst else np.zeros((0, len(self.names_))) for lst in out)

    def _combine(self, mean, var_lat, var_map) -> LabelPrediction:
        a, b = self.scale_[:, 0], self.scale_[:, 1]
        s_lat, s_map = a * np.sqrt(var_lat), b * np.sqrt(var_map)
        return LabelPrediction(list(self.names_), mean, np.hypot(s_lat, s_map), s_lat, s_map)

    def predict_latents(self, latents: Latents) -> LabelPrediction:
        """Labels of spectra with latent posteriors `latents` (mean (N, K), cov (N, K, K))."""
        if latents.mean.shape[1] != self.latent_dim_:
            raise SpecaeError(f"the regressor maps {self.latent_dim_} latents, these have {latents.mean.shape[1]}")
        ok = np.isfinite(latents.mean).all(1)        # spectra without a valid pixel have no latents (encode)
        mean, var_lat, var_map = self._mapped(np.where(ok[:, None], latents.mean, 0).astype(np.float64),
                                              np.where(ok[:, None, None], latents.cov, np.eye(self.latent_dim_)))
        mean[~ok], var_lat[~ok] = np.nan, np.inf     # no estimate: NaN with an infinite sigma
        return self._combine(mean, var_lat, var_map)

    def predict(self, model, spectra, batch_size: int | None = None) -> LabelPrediction:
        """Labels of `spectra` (no labels needed), encoded with `model` and the posterior kind of the fit."""
        self.check_model(model)
        return self.predict_latents(encode(model, spectra, self.cfg.posterior, batch_size))

    def check_model(self, model, where: str = "the regressor") -> None:
        """SpecaeError unless `model` is the one whose latents this regressor maps."""
        check_fitted_on(model, self.latent_dim_, self.fingerprint_, where, "refit it with this model (specae regress)")

    # -- persistence ------------------------------------------------------------------------------------

    def save(self, directory) -> None:
        """Write weights.pt, history.json (the MLP's) and regressor.json into `directory`, atomically."""
        info = {"format": FORMAT, "version": VERSION, "config": asdict(self.cfg), "labels": self.names_,
                "latent_dim": self.latent_dim_, "latent_kind": self.kind_, "model_fingerprint": self.fingerprint_,
                "calibration": {n: {"a_latent": float(a), "b_map": float(b)}
                                for n, (a, b) in zip(self.names_, self.scale_)},
                "metrics_calibration": self.metrics_}
        # regressor.json last: its presence means the rest is complete
        write_checkpoint(directory, {"weights.pt": cpu_tensors(self.map_),
                                     **({"history.json": self.history_} if self.history_ else {}),
                                     "regressor.json": info})

    @classmethod
    def load(cls, directory) -> "LabelRegressor":
        """Read a regressor written by `save`; the weights are read as tensors only (weights_only=True)."""
        d = Path(directory)
        require_files(d, ("regressor.json", "weights.pt"), "regressor")
        with reading(d, "regressor"):
            info = json.loads((d / "regressor.json").read_text())
            if info.get("format") != FORMAT or int(info.get("version", 0)) > VERSION:
                raise ValueError("not a specae regressor of a version this specae reads")
            reg = cls(config_from_dict(RegressorConfig, info["config"]))
            reg.names_, reg.latent_dim_, reg.kind_ = list(info["labels"]), int(info["latent_dim"]), info["latent_kind"]
            reg.fingerprint_, reg.metrics_ = info["model_fingerprint"], info["metrics_calibration"]
            reg.scale_ = np.array([[info["calibration"][n]["a_latent"], info["calibration"][n]["b_map"]]
                                   for n in reg.names_], dtype=np.float64)
            k, n_lab = reg.latent_dim_, len(reg.names_)
            reg.map_ = RidgeMap(k, n_lab) if reg.cfg.kind == "ridge" else MLPMap(k, n_lab, reg.cfg.hidden)
            reg.map_.load_state_dict(load_tensors(d / "weights.pt"))
        reg.map_.eval()
        return reg


def _scores(mean: np.ndarray, sigma: np.ndarray, truth: np.ndarray) -> dict:
    """R^2, median absolute error and +-1 sigma coverage over the finite truths; arrays (N,)."""
    ok = np.isfinite(truth)
    err = mean[ok] - truth[ok]
    return {"n": int(ok.sum()), "r2": r2(mean[ok], truth[ok]), "mae_median": float(np.median(np.abs(err))),
            "coverage_1sigma": float(np.mean(np.abs(err) <= sigma[ok]))}


def label_scores(pred: LabelPrediction, labels: dict) -> dict[str, dict]:
    """Per label of `pred`: R^2, median absolute error and +-1 sigma coverage against true `labels`
    {name: (N,)} (NaN truths skipped)."""
    return {n: _scores(pred.mean[:, j], pred.sigma[:, j], np.asarray(labels[n], np.float64))
            for j, n in enumerate(pred.names) if n in labels}


__all__ = ["LabelRegressor", "RegressorConfig", "LabelPrediction", "ridge_fit", "cv_r2", "cv_predict", "r2",
           "kfold", "label_scores", "model_fingerprint"]
