"""Training the VAE/AE: data sources, the model's PCA start, its objective for the engine.

`fit` takes spectra in memory or HDF5 files to stream, builds the model from a bounded random sample of rows
and trains it through the one engine (specae.engine: device, precision, DDP, schedule, early stopping,
checkpoints) with the `VAEObjective` step. It only trains: the error model is calibrated afterwards
(specae.calibration) on the validation spectra, which `fit` returns a sample of; specae.pipeline does both.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from specae.baselines import WeightedPCA
from specae.checkpoints import reading, require_files
from specae.data.resample import loglam_grid
from specae.data.sources import H5Blocks, H5Source, TensorSource
from specae.data.spectra import Spectra
from specae.data.tensors import batch_normaliser, to_batch, window_mask
from specae.engine import EngineConfig, Objective, Runtime, StepContext, adamw
from specae.engine import train as run_engine
from specae.engine.loop import STATE, load_history
from specae.errors import CountWarning, SpecaeError
from specae.model_dir import load_model, round_weights, save_model
from specae.models.card import data_summary
from specae.models.config import ModelConfig
from specae.models.vae import SpectrumVAE, chi2, gaussian_nll, kl_normal
from specae.plumbing import config_from_dict, expand_paths


@dataclass
class TrainConfig(EngineConfig):
    """Engine settings (epochs, budget, device, precision, ...) plus those of the VAE objective."""
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4         # on weights only (see SpectrumVAE.no_decay)
    ema: float | None = 0.99           # validate and keep the moving average of the weights (0.59x weighted PCA-6
                                       # on the emulator's stars against 0.64x for the weights themselves)
    beta: float = 1.0                  # KL weight (VAE)
    kl_warmup: int = 5                 # epochs over which beta ramps up from 0
    val_fraction: float = 0.1          # used when no validation set is given
    augment: float = 0.5               # probability of hiding a random chunk from the encoder
    beta_nll: float = 1.0              # beta-NLL weight on the learned scatter (specae.models.vae.gaussian_nll): on
                                       # galaxies ±1σ holds 74 % of all true values against 80 % at 0, lines 0.58 vs
                                       # 0.59; neutral on the emulator's stars
    init_rows: int = 5000              # rows sampled for the PCA start and the normalisation statistics
    calib_rows: int = 2000             # validation rows returned for calibrating the error model
    num_workers: int = 2               # DataLoader workers when streaming from HDF5


# -- the model's start ----------------------------------------------------------------------------------
def build_model(sample: Spectra, cfg: ModelConfig, z_all: np.ndarray | None = None) -> SpectrumVAE:
    """A fresh model for `sample`'s grid, started at the weighted-PCA solution of `sample` (a bounded
    random sample of the training rows) with data-derived normalisation. In redshift mode the rest grid
    covers the redshifts `z_all` of the whole training set (default: the sample's)."""
    window = window_mask(sample.wave, cfg.norm_window)
    batch, _ = to_batch(sample, window)
    norm = Spectra(sample.wave, batch.x.numpy(), batch.ivar.numpy(), meta=dict(sample.meta))
    good = norm.ivar > 0
    if not good.any():
        raise SpecaeError("the training data hold no valid pixel")
    cfg = replace(cfg, npix=sample.npix, ivar_scale=float(np.median(np.sqrt(norm.ivar[good]))))
    wave_rest = None
    if cfg.redshift:
        z = sample.redshifts(cfg.redshift) if z_all is None else np.asarray(z_all, dtype=np.float64)
        # rest grid at half the observed log step, with room for redshifts a little outside the training range
        step = float(np.median(np.diff(np.log10(sample.wave)))) / 2
        margin = 10 ** 0.01
        wave_rest = loglam_grid(sample.wave[0] / (1 + z.max()) / margin, sample.wave[-1] / (1 + z.min()) * margin, step)
        norm = norm.to_rest_frame(sample.redshifts(cfg.redshift), wave_rest)   # the decoder's grid
        cfg = replace(cfg, rest_npix=wave_rest.size, z_range=(float(z.min()), float(z.max())))
    if not 1 <= cfg.latent_dim <= min(len(sample), norm.npix):
        raise SpecaeError(f"latent size {cfg.latent_dim} must be between 1 and the number of spectra ({len(sample)})")
    cfg = replace(cfg, enc_pca=min(max(cfg.enc_pca, cfg.latent_dim), len(sample)))
    model = SpectrumVAE(cfg, sample.wave, wave_rest)
    pca = WeightedPCA(cfg.enc_pca, n_iter=10, seed=0).fit(norm)
    mean = _weighted_mean(norm.flux, norm.ivar)
    var = np.maximum(pca.explained_variance_, 1e-12)
    with torch.no_grad():
        model.decoder.mean.copy_(torch.from_numpy(mean.astype(np.float32)))
        model.basis.copy_(torch.from_numpy(pca.components_.astype(np.float32)))
        model.basis_var.copy_(torch.from_numpy(var.astype(np.float32)))
        counts = (norm.ivar > 0).sum(0)
        model.seen.copy_(torch.from_numpy((counts / counts.max()).astype(np.float32)))
        k = cfg.latent_dim
        model.decoder.linear.copy_(torch.from_numpy((pca.components_[:k] * np.sqrt(var[:k, None])).astype(np.float32)))
    return model


def _weighted_mean(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(npix,) ivar-weighted mean spectrum; pixels without data interpolated from their neighbours."""
    wsum = w.sum(0)
    mean = np.where(wsum > 0, (x * w).sum(0) / np.where(wsum > 0, wsum, 1), np.nan)
    ok = np.isfinite(mean)
    idx = np.arange(mean.size)
    return np.interp(idx, idx[ok], mean[ok]).astype(np.float32)


# -- the objective ---------------------------------------------------------------------------------------
def hide_chunks(ivar: torch.Tensor, prob: float, gen: torch.Generator) -> torch.Tensor:
    """Zero a random chunk (up to 10 % of the pixels) in a fraction `prob` of the rows; random numbers
    drawn on the device."""
    b, n = ivar.shape
    u = torch.rand(b, 3, generator=gen, device=ivar.device)
    start, length = u[:, :1] * n, u[:, 1:2] * 0.1 * n * (u[:, 2:] < prob)
    pix = torch.arange(n, device=ivar.device)[None]
    return ivar.masked_fill((pix >= start) & (pix < start + length), 0.0)


class VAEObjective(Objective):
    """The VAE/AE step: heteroscedastic Gaussian likelihood (+ KL with warm-up for the VAE), per pixel so the
    learning rate does not depend on npix; validation chi2/dof of the posterior mean picks the best epoch."""

    schedule = "cosine"
    monitor = "chi2_dof"

    def __init__(self, model: SpectrumVAE, cfg: TrainConfig):
        self.model, self.cfg = model, cfg

    def modules(self):
        return {"model": self.model}

    def optimizers(self):
        skip = self.model.no_decay()
        named = list(self.model.named_parameters())
        decay = [p for n, p in named if p.ndim >= 2 and n not in skip]
        rest = [p for n, p in named if not (p.ndim >= 2 and n not in skip)]
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
        return {"model": adamw(groups, self.cfg.lr)}

    def train_step(self, batch, ctx: StepContext):
        x, ivar, z = batch["x"], batch["ivar"], batch.get("z")
        vae = self.model.cfg.kind == "vae"
        eps = torch.randn(x.shape[0], self.model.cfg.latent_dim, generator=ctx.generator, device=x.device) if vae else None
        ivar_enc = hide_chunks(ivar, self.cfg.augment, ctx.generator)
        with ctx.autocast():
            mu, sigma, mean, logvar = ctx.trained("model")(x, ivar, z, ivar_enc, eps)
        nll = gaussian_nll(x, ivar, mu, sigma, self.cfg.beta_nll)
        beta = self.cfg.beta * min(1.0, (ctx.epoch + 1) / max(self.cfg.kl_warmup, 1))
        kl = kl_normal(mean, logvar) if vae else torch.zeros_like(nll)
        loss = (nll + beta * kl).mean() / self.model.cfg.npix
        ctx.optimizer_step("model", loss)
        return {"loss": loss.detach() * self.model.cfg.npix}

    def eval_step(self, batch, ctx):
        """Sums for the chi2/dof of the reconstruction and the negative ELBO."""
        x, ivar, z = batch["x"], batch["ivar"], batch.get("z")
        mu, sigma, mean, logvar = self.model(x, ivar, z)
        nll = gaussian_nll(x, ivar, mu, sigma)
        kl = kl_normal(mean, logvar) if logvar is not None else torch.zeros_like(nll)
        c, n = chi2(x, ivar, mu)
        return {"chi2": c, "n_valid": n.double(), "loss": (nll + kl).sum(), "count": torch.tensor(float(len(x)))}

    def summarise(self, sums):
        return {"chi2_dof": sums["chi2"] / max(sums["n_valid"], 1), "loss": sums["loss"] / max(sums["count"], 1)}

    def export(self, directory, history):
        save_model(self.model, directory, history)


# -- data ------------------------------------------------------------------------------------------------
def _tensor_source(spectra: Spectra, model: SpectrumVAE, cfg: TrainConfig, shuffle: bool, rt: Runtime) -> TensorSource:
    b, _ = to_batch(spectra, window_mask(spectra.wave, model.cfg.norm_window), model.cfg.redshift)
    tensors = {"x": b.x, "ivar": b.ivar, **({"z": b.z} if b.z is not None else {})}
    src = TensorSource(tensors, cfg.batch_size, shuffle=shuffle, seed=cfg.seed)
    if rt.device.type == "cuda":
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if size < torch.cuda.mem_get_info(rt.device)[0] // 4:   # small enough: no transfers per step
            src = src.to(rt.device)
    return src


def _sample_rows(blocks: H5Blocks, chosen: list, n_rows: int, seed: int) -> Spectra:
    """At most `n_rows` rows from random whole blocks of `chosen` (bounded memory, aligned reads)."""
    from specae.data.hdf5 import H5Spectra

    order = np.random.default_rng(seed).permutation(len(chosen))
    parts, total = [], 0
    for i in order:
        f, a, b = chosen[i]
        with H5Spectra(blocks.paths[f]) as h5:
            parts.append(h5.read(slice(a, b)))
        total += b - a
        if total >= n_rows:
            break
    s = Spectra.concatenate(parts)
    return s.select(np.sort(np.random.default_rng(seed).permutation(len(s))[:n_rows])) if len(s) > n_rows else s


def _all_redshifts(blocks: H5Blocks, label: str) -> np.ndarray:
    """The redshift label of every row of the files (one small column each)."""
    from specae.data.hdf5 import H5Spectra

    zs = []
    for p in blocks.paths:
        with H5Spectra(p) as h5:
            if label not in h5.label_names:
                raise SpecaeError(f"{p}: redshift label {label!r} is not in the file (labels: {h5.label_names or 'none'})")
            zs.append(np.asarray(h5.read_label(label), dtype=np.float64))
    z = np.concatenate(zs)
    if not np.all(np.isfinite(z)) or np.any(z <= -1):
        raise SpecaeError(f"label {label!r} has non-finite or <= -1 redshifts")
    lo, hi = plausible_range(z, h5.wave)
    bad = np.flatnonzero((z <= lo) | (z >= hi))
    if bad.size:
        raise SpecaeError(f"label {label!r} has {bad.size} redshifts outside {lo:.4g}-{hi:.4g}, where a spectrum's "
                          f"rest frame shares no wavelength with the median one's (rows {', '.join(map(str, bad[:3]))}"
                          f"{', ...' if bad.size > 3 else ''} counted across the files); remove those spectra "
                          "(training in memory leaves them out)")
    return z


def plausible_range(z: np.ndarray, wave: np.ndarray) -> tuple[float, float]:
    """The open range of redshifts a rest-frame model can learn from, for redshifts `z` (N,) observed on `wave`.

    A spectrum at z covers rest wavelengths wave / (1 + z). One whose rest window shares no wavelength with the
    window at the median redshift has nothing in common with the bulk of the set for the decoder to learn, and
    only stretches the rest grid (one z = 1e6 among z ~ 0.1 made it 33 times longer): so (1 + z) must lie within
    a factor wave[-1] / wave[0] of 1 + median(z). No tuned constant, and the rest grid stays within three
    observed windows.
    """
    ratio, mid = wave[-1] / wave[0], 1 + float(np.median(z))
    return mid / ratio - 1, mid * ratio - 1


def _plausible(train: Spectra, val: Spectra, label: str) -> tuple[Spectra, Spectra]:
    """`train` and `val` without the spectra whose redshift lies outside `plausible_range` of the training
    redshifts, counted in one warning naming them: the model is trained on, and records, the range kept."""
    lo, hi = plausible_range(train.redshifts(label), train.wave)
    keep = [(z > lo) & (z < hi) for z in (train.redshifts(label), val.redshifts(label))]
    left = np.concatenate([s.ids[~k] for s, k in zip((train, val), keep)])
    if left.size:
        warnings.warn(CountWarning(left.size, f"spectra with redshifts outside {lo:.4g}-{hi:.4g} were left out of "
                                   "training: their rest frame shares no wavelength with the median one's", left),
                      stacklevel=3)
    return train.select(keep[0]), val.select(keep[1])


# Training sets whose flux and ivar take up to this much memory are read into it; larger ones are streamed
IN_MEMORY_BYTES = 1 << 30


def training_data(data, val=None, stream: bool = False) -> tuple:
    """(train, val, file names) for `fit` from HDF5 files (paths or glob patterns; `val` None: none given): the
    spectra read into memory when the training files' flux and ivar take at most IN_MEMORY_BYTES and not
    `stream`, else the paths, which `fit` streams by row blocks."""
    from specae.data.hdf5 import H5Spectra, read_h5

    paths = expand_paths(data)
    val_paths = expand_paths(val) if val else None
    size = 0
    for p in paths:
        with H5Spectra(p) as h5:
            size += 8 * h5.shape[0] * h5.shape[1]
    names = [p.name for p in paths]
    if stream or size > IN_MEMORY_BYTES:
        return paths, val_paths, names
    return (Spectra.concatenate([read_h5(p) for p in paths]),
            Spectra.concatenate([read_h5(p) for p in val_paths]) if val_paths else None, names)


# -- what a run trained on, and what a resumed run must keep ----------------------------------------------
# settings that may change when a run is resumed (how long, where and how it runs); the others are the run's
PER_INVOCATION = ("epochs", "max_minutes", "device", "precision", "distributed", "num_workers", "progress")


def describe(data: Spectra | H5Blocks) -> dict:
    """What a run trains or validates on, kept in its history ("data") and checked on resume: the grid, the
    rows, and a fingerprint of the values of up to 8 rows spread over the set (cheap for files of any size,
    and the same whether the set is held in memory or streamed)."""
    n = len(data) if isinstance(data, Spectra) else data.n_rows
    h = hashlib.sha256(np.asarray(data.wave, np.float64).tobytes())
    for r in np.unique(np.linspace(0, n - 1, 8).astype(int)) if n else ():
        row = data.select(slice(r, r + 1)) if isinstance(data, Spectra) else _read_row(data, int(r))
        h.update(np.asarray(row.flux, np.float32).tobytes() + np.asarray(row.ivar, np.float32).tobytes())
    return {**_grid(data.wave), "rows": int(n), "fingerprint": h.hexdigest()[:16]}


def _grid(wave: np.ndarray) -> dict:
    return {"npix": int(wave.size), "wave": [float(wave[0]), float(wave[-1])]}


def _read_row(blocks: H5Blocks, r: int) -> Spectra:
    """Row `r` of the files of `blocks`, counted across them in order."""
    from specae.data.hdf5 import H5Spectra

    for f, a, b in blocks.blocks:
        if r < b - a:
            with H5Spectra(blocks.paths[f]) as h5:
                return h5.read(slice(a + r, a + r + 1))
        r -= b - a
    raise IndexError(r)


_SHOWN = {"npix": "{} pixels", "wave": "wavelengths {0[0]:.6g}-{0[1]:.6g} A", "rows": "{} rows",
          "fingerprint": "fingerprint {}"}


def _refuse_difference(here: dict, there: dict, what: str, where: str, fix: str = "") -> None:
    """SpecaeError naming the first property (in _SHOWN's order) in which record `here` differs from `there`."""
    for key, shown in _SHOWN.items():
        if key in here and key in there:
            a, b = here[key], there[key]
            if not (np.allclose(a, b, rtol=1e-10, atol=0) if key == "wave" else a == b):
                raise SpecaeError(f"{what} ({shown.format(a)}) differ from {where} ({shown.format(b)}){fix}")


def _history(d: Path) -> dict:
    return load_history(d / "history.json") if (d / "history.json").is_file() else {}


def _earlier_run(out_dir) -> Path:
    if out_dir is None:
        raise SpecaeError("--resume needs the model directory of the earlier run")
    d = Path(out_dir)
    if not (d / STATE).is_file():
        raise SpecaeError(f"--resume: no earlier run to continue in {d}"
                          + ("; its training state was removed when it ended (train with --keep-state to resume "
                             "later)" if (d / "weights.pt").is_file() else ""))
    return d


def resumed_config(out_dir, model_options: dict, options: dict) -> TrainConfig:
    """The settings to continue the run saved in `out_dir`: its own, with the PER_INVOCATION ones of `options`.
    Any other setting given (ModelConfig fields in `model_options`, TrainConfig fields in `options`) must be
    the run's: a SpecaeError naming both values otherwise, rather than a setting silently ignored."""
    d = _earlier_run(out_dir)
    require_files(d, ("config.json",), "model")
    with reading(d, "checkpoint"):
        saved_model = asdict(ModelConfig.from_json((d / "config.json").read_text()))
    run_cfg = _history(d).get("train_config", {})   # settings of levers since removed are left out
    saved = {k: v for k, v in asdict(config_from_dict(TrainConfig, run_cfg)).items() if k in run_cfg}
    fixed = {k: v for k, v in options.items() if k not in PER_INVOCATION}
    for given, run in ((model_options, saved_model), (fixed, saved)):
        for name, value in given.items():
            if name in run and value != run[name]:
                raise SpecaeError(f"--resume: {name} {value} given, but the run in {d} has {name} {run[name]}; "
                                  "leave it out to continue that run, or train afresh in another directory")
    return replace(config_from_dict(TrainConfig, saved), **options)


def fit(train, val=None, model_cfg: ModelConfig | None = None, cfg: TrainConfig | None = None, out_dir=None,
        resume: bool = False, callbacks: tuple = (), files: list[str] | None = None) -> tuple[SpectrumVAE, dict]:
    """Train a VAE/AE; returns the model with the best validation chi2/dof and its history, whose "validation"
    holds up to `calib_rows` validation spectra (not written to history.json) to calibrate the error model on
    (`specae.calibration.fit_calibration`).

    train, val: `Spectra` in memory, or HDF5 paths / glob patterns / lists of them, streamed by row
    blocks (never read whole). Without `val`, a random `val_fraction` of the spectra (of the row blocks,
    for files) is held out. With `out_dir`, the best model is written there whenever it improves, and
    the last state every epoch, so an interrupted run resumes (`resume=True`) where it stopped, on the data
    it recorded (history "data", see `describe`) and nothing else.
    Under torchrun with `cfg.distributed`, every rank trains its share of each batch (DDP).
    `files`: the names of the files in-memory `train` was read from, for the model card (history "training_data").
    """
    cfg = cfg or TrainConfig()
    rt = Runtime.create(cfg.device, cfg.precision, cfg.distributed)
    torch.manual_seed(cfg.seed)
    if isinstance(train, Spectra):
        seen = {"training": describe(train), "validation": None if val is None else describe(val)}
        train = train.drop_empty()
        if val is None:
            train, val = train.split((1 - cfg.val_fraction, cfg.val_fraction), seed=cfg.seed)
        val = val.drop_empty()
        if model_cfg and model_cfg.redshift:
            train, val = _plausible(train, val, model_cfg.redshift)
        if len(train) < 2 or len(val) < 1:
            raise SpecaeError(f"too few spectra with valid pixels to train ({len(train)} train, {len(val)} validation)")
        pick = np.random.default_rng(cfg.seed).permutation(len(train))[:cfg.init_rows]
        sample, z_all = train.select(np.sort(pick)), None
        if model_cfg and model_cfg.redshift:
            z_all = train.redshifts(model_cfg.redshift)
        model = _start(sample, model_cfg, z_all, out_dir, resume, seen)
        train_src = _tensor_source(train, model, cfg, True, rt)
        val_src = _tensor_source(val, model, cfg, False, rt)
        val_cal = val.select(slice(0, cfg.calib_rows))
        n_train, n_val = len(train), len(val)
    else:
        blocks = H5Blocks(train)
        if val is None:
            train_blocks, val_blocks = blocks.split(cfg.val_fraction, cfg.seed)
            val_files = blocks
        else:
            train_blocks, val_files = blocks.blocks, H5Blocks(val)
            val_blocks = val_files.blocks
        seen = {"training": describe(blocks), "validation": None if val is None else describe(val_files)}
        if not train_blocks or not val_blocks:
            raise SpecaeError(f"too few rows to hold out validation spectra ({blocks.n_rows} rows); give --val")
        sample = _sample_rows(blocks, train_blocks, cfg.init_rows, cfg.seed).drop_empty()
        if len(sample) < 2:
            raise SpecaeError("too few spectra with valid pixels to train")
        z_all = _all_redshifts(blocks, model_cfg.redshift) if model_cfg and model_cfg.redshift else None
        model = _start(sample, model_cfg, z_all, out_dir, resume, seen)
        window = window_mask(model.wave, model.cfg.norm_window)
        common = dict(redshift=model.cfg.redshift, seed=cfg.seed, num_workers=cfg.num_workers,
                      transform=batch_normaliser(window, rt.device), pin_memory=rt.device.type == "cuda")
        train_src = H5Source(blocks, train_blocks, cfg.batch_size, shuffle=True, **common)
        val_src = H5Source(val_files, val_blocks, 4 * cfg.batch_size, shuffle=False, **common)
        val_cal = _sample_rows(val_files, val_blocks, cfg.calib_rows, cfg.seed + 1).drop_empty()
        n_train, n_val = len(train_src), len(val_src)
        files = [Path(p).name for p in blocks.paths]
    extra = {"train_config": asdict(cfg), "n_train": n_train, "n_val": n_val, "data": seen,
             "training_data": data_summary(sample, files or [])}
    history = run_engine(VAEObjective(model, cfg), train_src, val_src, cfg, out_dir, resume, callbacks, rt, extra)
    round_weights(model)   # the best weights as saved (float16 layers): the model calibrated and used is that one
    history["validation"] = val_cal
    return model, history


def _start(sample: Spectra, model_cfg: ModelConfig | None, z_all, out_dir, resume: bool, seen: dict) -> SpectrumVAE:
    """The model to train: the saved one when resuming (its architecture; the engine loads the last
    state), else a fresh one started at the sample's weighted PCA. `seen` (`describe` of the training and
    validation data) is checked first: validation on the training grid; when resuming, the model's grid and
    the data the run recorded."""
    if seen["validation"]:   # the grid only: other rows are the point of validation
        _refuse_difference({k: seen["validation"][k] for k in ("npix", "wave")}, seen["training"],
                           "the validation data", "the training data", "; put them on one grid (specae convert --grid-from)")
    if not resume:
        return build_model(sample, model_cfg or ModelConfig(npix=sample.npix), z_all)
    d = _earlier_run(out_dir)
    model = load_model(d)
    fix = "; resume on the run's own data, or train afresh in another directory"
    _refuse_difference(seen["training"], _grid(model.wave), "--resume: the training data", f"the model in {d}", fix)
    for part, had in (_history(d).get("data") or {}).items():
        if (seen.get(part) is None) != (had is None):
            raise SpecaeError(f"--resume: the run in {d} " + ("validated on --val files; give them again" if had
                              else "held out its own validation spectra; resume without --val"))
        if had:
            _refuse_difference(seen[part], had, f"--resume: the {part} data", f"the run's in {d}", fix)
    model.calibration = None   # it describes the saved weights, not those trained now (save_model drops its file)
    return model
