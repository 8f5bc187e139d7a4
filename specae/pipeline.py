"""From spectra to a calibrated model directory: train (specae.train.fit), fit the error model on the validation
spectra (specae.calibration), check it on held-out pixels for the model card, save. As a function,
`fit_calibrated` (what `specae train` runs), and as an estimator with the baselines' verbs, `Autoencoder`:

    ae = Autoencoder(ModelConfig(latent_dim=4), TrainConfig(epochs=50)).fit(train, val)
    result = ae.denoise(test)               # specae.denoise.Denoised: .flux, .sigma (N, npix), input units
    latents = ae.encode(test)               # specae.denoise.Latents: .mean (N, K), .cov (N, K, K)
    ae.save("model"); ae = Autoencoder.load("model")

Training knows nothing of calibration or denoising; this module, on the inference side, puts them in order.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from specae.calibration import Calibration, fit_calibration
from specae.data.spectra import Spectra
from specae.denoise import Denoised, HeldOut, Latents, denoise, encode, heldout
from specae.engine.loop import load_history, remove_state
from specae.errors import SpecaeError
from specae.model_dir import load_model, refuse_existing, save_model, staged
from specae.models.config import ModelConfig
from specae.models.vae import SpectrumVAE
from specae.plumbing import config_from_dict
from specae.train import TrainConfig, fit


# With a time budget, training stops at this share of it and the error model is fitted in the rest (more, when
# training ends sooner): calibration is a fifth of a run, not an overrun after it
TRAIN_SHARE = 0.8


# Validation spectra of the model card's held-out check (specae.denoise.heldout: 10 denoising passes each): 15 s on
# one CPU core for 4000 pixels, small beside training
CHECK_ROWS = 100


def calibrate_and_check(model, spectra: Spectra, history: dict, kind: str = "laplace", seed: int = 0,
                        seconds: float | None = None) -> None:
    """Fit the error model on `spectra` (specae.calibration.fit_calibration, within `seconds`) and record in
    `history["check"]` a held-out check of it on up to CHECK_ROWS of them, for the model card."""
    fit_calibration(model, spectra, kind, seed=seed, seconds=seconds)
    history["check"] = heldout(model, spectra.drop_empty().select(slice(0, CHECK_ROWS)), seed=seed,
                               posterior=kind).pooled()


def fit_calibrated(train, val=None, model_cfg: ModelConfig | None = None, cfg: TrainConfig | None = None,
                   out_dir=None, resume: bool = False, callbacks: tuple = (), files: list[str] | None = None,
                   keep_state: bool = False, overwrite: bool = False) -> tuple[SpectrumVAE, dict]:
    """`fit`, then the error model fitted on the validation spectra (specae.calibration.fit_calibration), a
    held-out check of it on up to CHECK_ROWS of them (history "check"), and the calibrated model saved in `out_dir`
    with its card (MODEL.md), all within `cfg.max_minutes` (the check aside). Until the calibrated model is written
    last, `out_dir` holds no calibration.json, so an interrupted run leaves a model that `denoise` refuses, and its
    training state, to resume; a finished run removes the state unless `keep_state`. An `out_dir` that already
    holds a model is refused unless `resume` or `overwrite`; with `overwrite` the run trains beside it and takes
    its place only once written whole (an interrupted run leaves the earlier model as it was). Under torchrun only
    rank 0 calibrates and saves (the others return the uncalibrated model)."""
    refuse_existing(out_dir, resume, overwrite)
    cfg = cfg or TrainConfig()
    t0 = time.monotonic()
    budget = None if cfg.max_minutes is None else 60 * cfg.max_minutes
    share = cfg if budget is None else replace(cfg, max_minutes=TRAIN_SHARE * cfg.max_minutes)
    with contextlib.nullcontext(out_dir) if resume else staged(out_dir, overwrite) as work:
        model, history = fit(train, val, model_cfg, share, work, resume, callbacks, files)
        validation = history.pop("validation")
        if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
            return model, history
        history["train_config"] = asdict(cfg)   # the budget given, not the training share of it
        calibrate_and_check(model, validation, history, seed=cfg.seed,
                            seconds=None if budget is None else budget - (time.monotonic() - t0))
        if work is not None:
            save_model(model, work, history)
            if not keep_state:
                remove_state(work)
    return model, history


class Autoencoder:
    """The VAE (or AE) with the baselines' surface (specae.baselines.WeightedPCA): settings in the constructor,
    `fit` returning self, learned state with a trailing underscore. `fit` is `fit_calibrated`; the other verbs are
    specae.denoise's functions with the fitted model and this estimator's `posterior`.

    After `fit` or `load`: model_ (the calibrated specae.models.SpectrumVAE, in eval mode), history_ (the run:
    epochs, data, the held-out check), calibration_ (its specae.calibration.Calibration).
    """

    def __init__(self, model_cfg: ModelConfig | None = None, train_cfg: TrainConfig | None = None,
                 posterior: str = "laplace"):
        self.model_cfg, self.train_cfg, self.posterior = model_cfg, train_cfg, posterior

    def fit(self, train, val=None, **options) -> "Autoencoder":
        """Train and calibrate on `train` (Spectra, or HDF5 paths to stream), validating on `val` (default: a
        held-out fraction of `train`); `options` (out_dir, resume, overwrite, keep_state, ...) as `fit_calibrated`."""
        self.model_, self.history_ = fit_calibrated(train, val, self.model_cfg, self.train_cfg, **options)
        return self

    @property
    def calibration_(self) -> Calibration:
        return self._fitted().calibration

    def denoise(self, spectra: Spectra, **options) -> Denoised:
        """Each pixel's posterior mean and sigma (N, npix) in the units of `spectra` (specae.denoise.denoise)."""
        return denoise(self._fitted(), spectra, posterior=self.posterior, **options)

    def encode(self, spectra: Spectra, batch_size: int | None = None) -> Latents:
        """Latent posteriors: mean (N, K) and covariance (N, K, K) (specae.denoise.encode)."""
        return encode(self._fitted(), spectra, self.posterior, batch_size)

    def heldout(self, spectra: Spectra, passes: int = 10, seed: int = 0, **options) -> HeldOut:
        """Each valid pixel predicted with itself hidden, scored against its measurement (specae.denoise.heldout)."""
        return heldout(self._fitted(), spectra, passes, seed, posterior=self.posterior, **options)

    def save(self, directory) -> None:
        """Write the model directory (specae.model_dir.save_model): weights, config, calibration, history, card."""
        save_model(self._fitted(), directory, self.history_)

    @classmethod
    def load(cls, directory, posterior: str = "laplace", map_location="cpu") -> "Autoencoder":
        """The estimator of a model directory written by `save`, `fit(out_dir=...)` or `specae train`."""
        d = Path(directory)
        model = load_model(d, map_location)
        history = load_history(d / "history.json") if (d / "history.json").is_file() else {}
        est = cls(model.cfg, config_from_dict(TrainConfig, history.get("train_config", {})), posterior)
        est.model_, est.history_ = model, history
        return est

    def _fitted(self) -> SpectrumVAE:
        if not hasattr(self, "model_"):
            raise SpecaeError("the Autoencoder is not fitted yet; call fit() or load() first")
        return self.model_


__all__ = ["Autoencoder", "fit_calibrated", "calibrate_and_check", "TRAIN_SHARE", "CHECK_ROWS"]
