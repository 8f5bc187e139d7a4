"""Training: AdamW, warm-up + cosine schedule, clipping, early stopping on validation chi2/dof."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from specae.baselines import WeightedPCA
from specae.data.resample import loglam_grid
from specae.data.spectra import Spectra
from specae.denoise import denoise
from specae.errors import SpecaeError
from specae.models.checkpoint import load_json, load_model, load_train_state, save_model
from specae.models.config import ModelConfig
from specae.models.vae import Batch, SpectrumVAE, chi2, gaussian_nll, kl_normal
from specae.uncertainty import latent_scale, model_scale


@dataclass
class TrainConfig:
    epochs: int = 200
    max_minutes: float | None = None   # wall-clock budget; the best model so far is kept
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    clip: float = 5.0                  # gradient-norm clip
    beta: float = 1.0                  # KL weight (VAE)
    kl_warmup: int = 5                 # epochs over which beta ramps up from 0
    free_bits: float = 0.0             # minimum KL per latent dimension [nats]
    patience: int = 15                 # epochs without val improvement before stopping
    val_fraction: float = 0.1          # used when no validation set is given
    augment: float = 0.5               # probability of hiding a random chunk from the encoder
    seed: int = 0
    device: str = "auto"
    max_bad_batches: int = 10          # consecutive non-finite batches before giving up
    progress: bool = True


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SpecaeError("--device cuda was requested but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise SpecaeError(f"unknown device {name!r} (use auto, cpu or cuda)")
    return torch.device(name)


def build_model(train: Spectra, cfg: ModelConfig) -> SpectrumVAE:
    """A fresh model for `train`'s grid, with data-derived normalisation (ivar scale, mean spectrum)."""
    norm = train.normalise(cfg.norm_window)
    good = norm.ivar > 0
    if not good.any():
        raise SpecaeError("the training data hold no valid pixel")
    cfg = replace(cfg, npix=train.npix, ivar_scale=float(np.median(np.sqrt(norm.ivar[good]))))
    wave_rest = None
    if cfg.redshift:
        z = train.redshifts(cfg.redshift)
        # rest grid at half the observed log step, with room for redshifts a little outside the training range
        step = float(np.median(np.diff(np.log10(train.wave)))) / 2
        margin = 10 ** 0.01
        wave_rest = loglam_grid(train.wave[0] / (1 + z.max()) / margin, train.wave[-1] / (1 + z.min()) * margin, step)
        norm = norm.to_rest_frame(z, wave_rest)   # the decoder's grid: PCA and the mean live there
        cfg = replace(cfg, rest_npix=wave_rest.size)
    if not 1 <= cfg.latent_dim <= min(len(train), norm.npix):
        raise SpecaeError(f"latent size {cfg.latent_dim} must be between 1 and the number of spectra ({len(train)})")
    cfg = replace(cfg, enc_pca=min(max(cfg.enc_pca, cfg.latent_dim), len(train)))
    model = SpectrumVAE(cfg, train.wave, wave_rest)
    pca = WeightedPCA(cfg.enc_pca, n_iter=10, seed=0).fit(norm)
    mean = np.where(pca.covered_, pca.mean_, _weighted_mean(norm.flux, norm.ivar))
    var = np.maximum(pca.explained_variance_, 1e-12)
    with torch.no_grad():
        model.decoder.mean.copy_(torch.from_numpy(mean.astype(np.float32)))
        model.basis.copy_(torch.from_numpy(pca.components_.astype(np.float32)))
        model.basis_var.copy_(torch.from_numpy(var.astype(np.float32)))
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


def _hide_chunks(ivar: torch.Tensor, prob: float, gen: torch.Generator) -> torch.Tensor:
    """Zero a random chunk (up to 10 % of the pixels) in a fraction `prob` of the rows."""
    b, n = ivar.shape
    start = torch.rand(b, 1, generator=gen) * n
    length = torch.rand(b, 1, generator=gen) * 0.1 * n * (torch.rand(b, 1, generator=gen) < prob)
    pix = torch.arange(n)[None]
    hide = ((pix >= start) & (pix < start + length)).to(ivar.device)
    return torch.where(hide, torch.zeros_like(ivar), ivar)


@torch.no_grad()
def evaluate(model: SpectrumVAE, data: Batch, batch_size: int, device) -> dict:
    """Validation chi2/dof of the posterior-mean reconstruction and the mean negative ELBO per spectrum."""
    model.eval()
    c2 = nv = loss = 0.0
    for i in range(0, len(data), batch_size):
        b = data[i:i + batch_size].to(device)
        mu, sigma, mean, logvar = model(b, sample=False)
        nll = gaussian_nll(b.x, b.ivar, mu, sigma)
        kl = kl_normal(mean, logvar) if logvar is not None else torch.zeros_like(nll)
        c, n = chi2(b.x, b.ivar, mu)
        c2, nv, loss = c2 + c.item(), nv + n.item(), loss + (nll + kl).sum().item()
    return {"chi2_dof": c2 / max(nv, 1), "loss": loss / max(len(data), 1)}


def calibrate(model: SpectrumVAE, val: Spectra, seed: int = 0) -> list[float]:
    """Fit the model's two sigma factors on validation spectra (see specae.uncertainty); returns them."""
    model.sigma_scale.fill_(1.0)
    d = denoise(model, val, n_samples=16, seed=seed)
    var_lat = d.sigma_latent.astype(np.float64) ** 2
    b = model_scale(val.flux, val.ivar, d.flux, d.sigma.astype(np.float64) ** 2 - var_lat)
    a = 1.0
    if model.cfg.kind == "vae":
        rng = np.random.default_rng(seed)
        noise = rng.standard_normal(val.flux.shape) / np.sqrt(np.where(val.ivar > 0, val.ivar, 1.0))
        redo = Spectra(val.wave, np.where(val.mask, 0.0, d.flux + noise), val.ivar, val.mask, val.labels, val.ids,
                       meta=val.meta)
        d2 = denoise(model, redo, n_samples=16, seed=seed + 1)
        a = latent_scale(d2.flux - d.flux, d2.sigma_latent.astype(np.float64) ** 2)
    model.sigma_scale.copy_(torch.tensor([a, b]))
    return [a, b]


def fit(train: Spectra, val: Spectra | None = None, model_cfg: ModelConfig | None = None,
        cfg: TrainConfig | None = None, out_dir=None, resume: bool = False) -> tuple[SpectrumVAE, dict]:
    """Train a VAE/AE on `train`; returns the model with the best validation chi2/dof and its history.

    With `out_dir`, the best checkpoint is written there (atomically) whenever it improves, so an
    interrupted or diverged run leaves the last good model behind; `resume` continues from it.
    """
    cfg = cfg or TrainConfig()
    model_cfg = model_cfg or ModelConfig(npix=train.npix)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    train = train.drop_empty()
    if val is None:
        train, val = train.split((1 - cfg.val_fraction, cfg.val_fraction), seed=cfg.seed)
    val = val.drop_empty()
    if len(train) < 2 or len(val) < 1:
        raise SpecaeError(f"too few spectra with valid pixels to train ({len(train)} train, {len(val)} validation)")

    state = load_train_state(out_dir) if (resume and out_dir) else None
    if resume and state is None:
        raise SpecaeError(f"--resume: no earlier run to continue in {out_dir}")
    model = load_model(out_dir) if state else build_model(train, model_cfg)
    model.to(device)
    tr, _ = model.prepare(train)
    va, _ = model.prepare(val)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(tr) / cfg.batch_size)
    total, warm = cfg.epochs * steps_per_epoch, min(200, steps_per_epoch * 2)
    t0 = time.monotonic()

    def progress(step: int) -> float:
        # cosine decay to the end of the epochs or of the time budget, whichever comes first
        done = step / total
        if cfg.max_minutes:
            done = max(done, (time.monotonic() - t0) / (60 * cfg.max_minutes))
        return min(done, 1.0)

    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress(s)))))
    history = {"epoch": [], "train_loss": [], "val_chi2_dof": [], "val_loss": [], "lr": [],
               "best_epoch": -1, "best_val_chi2_dof": math.inf, "skipped_batches": 0,
               "train_config": asdict(cfg), "n_train": len(tr), "n_val": len(va)}
    if state:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history = {**history, **(load_json(f"{out_dir}/history.json") or {}), "train_config": asdict(cfg)}
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    start_epoch = history["epoch"][-1] + 1 if history["epoch"] else 0
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    bad_run, since_best = 0, 0
    saved = bool(state)   # a checkpoint exists in out_dir
    stop = "epochs"
    bar = tqdm(range(start_epoch, cfg.epochs), disable=not cfg.progress, desc="training", unit="epoch")
    for epoch in bar:
        model.train()
        order = torch.randperm(len(tr), generator=gen)
        beta = cfg.beta * min(1.0, (epoch + 1) / max(cfg.kl_warmup, 1))
        losses = []
        for i in range(0, len(tr), cfg.batch_size):
            b = tr[order[i:i + cfg.batch_size]].to(device)
            with autocast:
                mean, logvar = model.encode(Batch(b.x, _hide_chunks(b.ivar, cfg.augment, gen), b.z))
                latent = mean if logvar is None else mean + torch.randn_like(mean) * (0.5 * logvar).exp()
                mu, sigma = model.decode(latent, b.z)
            nll = gaussian_nll(b.x, b.ivar, mu, sigma)
            kl = kl_normal(mean, logvar, cfg.free_bits) if logvar is not None else torch.zeros_like(nll)
            loss = (nll + beta * kl).mean() / model.cfg.npix   # per pixel, so the lr does not depend on npix
            if not torch.isfinite(loss):
                history["skipped_batches"] += 1
                bad_run += 1
                if bad_run >= cfg.max_bad_batches:
                    model.load_state_dict(best_state)
                    raise SpecaeError(f"training diverged: {bad_run} batches in a row had a non-finite loss"
                                      + (f"; the best checkpoint so far is kept in {out_dir}" if out_dir and saved else ""))
                opt.zero_grad(set_to_none=True)
                continue
            bad_run = 0
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            sched.step()
            losses.append(loss.item() * model.cfg.npix)
        ev = evaluate(model, va, 4 * cfg.batch_size, device)
        for k, v in (("epoch", epoch), ("train_loss", float(np.mean(losses)) if losses else math.nan),
                     ("val_chi2_dof", ev["chi2_dof"]), ("val_loss", ev["loss"]), ("lr", sched.get_last_lr()[0])):
            history[k].append(v)
        bar.set_postfix(loss=f"{history['train_loss'][-1]:.4g}", val_chi2_dof=f"{ev['chi2_dof']:.4f}")
        if ev["chi2_dof"] < history["best_val_chi2_dof"]:
            history["best_val_chi2_dof"], history["best_epoch"], since_best = ev["chi2_dof"], epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if out_dir:
                save_model(model, out_dir, history, {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()})
                saved = True
        else:
            since_best += 1
        if since_best >= cfg.patience:
            stop = "early stopping"
            break
        if cfg.max_minutes is not None and time.monotonic() - t0 > 60 * cfg.max_minutes:
            stop = "time budget"
            break
    bar.close()
    history["stopped"] = stop
    history["minutes"] = (time.monotonic() - t0) / 60
    model.load_state_dict(best_state)
    model.eval()
    history["sigma_scale"] = calibrate(model, val, cfg.seed)
    if out_dir:
        save_model(model, out_dir, history)
    return model, history
