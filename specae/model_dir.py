"""Model directories, written and read here: config.json (plain JSON), weights.pt (the weights and buffers, tensors
only, through specae.checkpoints, so a model can never run code; the network layers' weight matrices in float16,
`round_weights`), history.json (the run) and, once
calibrated, calibration.json (the error model's constants, specae.calibration) and the model card MODEL.md
(specae.models.card). train_state.pt (optimizer moments, the moving average, the last and best weights: about 5x
the weights) exists only while a run trains, or when it is kept for --resume."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import torch

from specae.checkpoints import cpu_tensors, load_tensors, reading, require_files, write_checkpoint
from specae.engine.loop import load_history
from specae.errors import SpecaeError
from specae.models.card import CARD, model_card
from specae.models.config import ModelConfig
from specae.models.decoder import PerPixelLinear
from specae.models.vae import SpectrumVAE


LAYERS = (torch.nn.Linear, torch.nn.Conv1d, PerPixelLinear)


def _layer_weights(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The weight matrices of the network layers (dense, convolutional, per-pixel), by state-dict name: nearly all
    the bytes. Not the linear model the decoder starts from (mean, basis, scatter), biases or buffers, which set
    the flux directly."""
    return {f"{name}.weight": m.weight for name, m in model.named_modules() if isinstance(m, LAYERS)}


@torch.no_grad()
def round_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Round the layers' weight matrices to float16 values in place, as save_model stores them: a trained model is
    these numbers (`fit` ends here, `load_model` too), so a model denoises the same before and after saving, in
    half the bytes. The layers learn the nonlinear part on top of the linear model, so the rounding is relative to
    that part: on two 7214-pixel emulator models it moved the denoised flux by 1e-6 and 4e-6 rms (errors against the
    truth 7.4e-3 and 6.4e-3, unchanged to 4 digits) and sigma by 2e-5 and 4e-5 relative."""
    for w in _layer_weights(model).values():
        w.copy_(w.half())
    return model


# every file a model directory may hold (train_state.pt: specae.engine.loop.STATE)
MODEL_FILES = ("config.json", "weights.pt", "history.json", "calibration.json", CARD, "train_state.pt")


def save_model(model: SpectrumVAE, directory, history: dict | None = None) -> None:
    """Write config.json, weights.pt, calibration.json and MODEL.md (if calibrated; else earlier ones are removed)
    and optionally history.json, each atomically. The card is made from `history`, or the directory's history.json."""
    d = Path(directory)
    halves = _layer_weights(model)
    state = {k: v.half() if k in halves else v for k, v in cpu_tensors(model).items()}
    blob = {"state": state, "wave": torch.from_numpy(model.wave)}
    if model.decoder.loglam_rest is not None:
        blob["wave_rest"] = 10 ** model.decoder.loglam_rest.cpu()
    files = {"weights.pt": blob, "config.json": model.cfg.to_json()}
    if history is not None:
        files["history.json"] = history
    if model.calibration is not None:
        known = history if history is not None else (load_history(d / "history.json")
                                                     if (d / "history.json").is_file() else {})
        files |= {"calibration.json": model.calibration.to_json(), CARD: model_card(model, known)}
    write_checkpoint(d, files)
    if model.calibration is None:   # ones left beside earlier weights would not describe these
        (d / "calibration.json").unlink(missing_ok=True)
        (d / CARD).unlink(missing_ok=True)


def load_model(directory, map_location="cpu") -> SpectrumVAE:
    """Rebuild a SpectrumVAE from a checkpoint directory written by `save_model`."""
    d = Path(directory)
    require_files(d, ("config.json", "weights.pt"), "model")
    with reading(d, "checkpoint"):
        cfg = ModelConfig.from_json((d / "config.json").read_text())
        blob = load_tensors(d / "weights.pt", map_location)
        wave_rest = blob.get("wave_rest")
        model = SpectrumVAE(cfg, blob["wave"].numpy(), None if wave_rest is None else wave_rest.numpy())
        model.load_state_dict(blob["state"])
        round_weights(model)   # a no-op for what save_model wrote; older files come out as a model saved now
        # NaN/inf weights (a diverged or damaged run) would turn every output into NaN without an error
        bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise SpecaeError(f"non-finite (NaN/inf) values in {len(bad)} weight tensors ({', '.join(bad[:3])}"
                              f"{', ...' if len(bad) > 3 else ''}); retrain, or use an earlier checkpoint")
    if (d / "calibration.json").is_file():
        from specae.calibration import Calibration

        model.calibration = Calibration.from_json((d / "calibration.json").read_text(), str(d / "calibration.json"))
    return model.eval()


def holds_model(directory) -> bool:
    """Whether `directory` holds any file of a model or of a run (MODEL_FILES)."""
    return any((Path(directory) / name).exists() for name in MODEL_FILES)


def refuse_existing(directory, resume: bool = False, overwrite: bool = False) -> None:
    """SpecaeError if `directory` already holds a model or a run and neither `resume` nor `overwrite` is given:
    training there would silently replace it."""
    if resume and overwrite:
        raise SpecaeError("--resume continues the run in the directory and --overwrite replaces it: give one")
    if directory is not None and not (resume or overwrite) and holds_model(directory):
        raise SpecaeError(f"{directory} already holds a model (or an interrupted run): give --overwrite to replace it "
                          "once the new one is written, --resume to continue its run, or another directory")


def replace_model(new, directory) -> None:
    """Put the complete model directory `new` in the place of `directory`, whose files are removed: the two swap by
    renaming, so `directory` holds either model whole, never a mix. Files of `directory` that are no model's (a
    user's own) move over to the new one."""
    new, d = Path(new), Path(directory).resolve()
    if d.is_dir():
        for p in d.iterdir():
            if p.name not in MODEL_FILES and not p.name.startswith(".") and not (new / p.name).exists():
                os.replace(p, new / p.name)
        old = d.with_name(f".{d.name}.replaced")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(d, old)
        os.replace(new, d)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, d)


@contextlib.contextmanager
def staged(directory, overwrite: bool = False):
    """The directory to write a model into: `directory` itself, unless `overwrite` and it already holds a model; then
    a hidden one beside it, which takes its place (`replace_model`) when the block ends without error and is removed
    when it does not, so an interrupted run leaves the earlier model as it was. Refused as `refuse_existing` says
    without `overwrite`."""
    refuse_existing(directory, overwrite=overwrite)
    if directory is None or not holds_model(directory):
        yield directory
        return
    work = Path(directory).resolve()   # resolved: "." has no name to stage beside
    work = work.with_name(f".{work.name}.new")
    main = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0   # under torchrun: rank 0's
    if main:
        shutil.rmtree(work, ignore_errors=True)   # left by a run killed before it could clean up
    try:
        yield work
        if main:
            replace_model(work, directory)
    except BaseException:
        if main:
            shutil.rmtree(work, ignore_errors=True)
        raise


__all__ = ["MODEL_FILES", "save_model", "load_model", "holds_model", "refuse_existing", "replace_model",
           "staged", "round_weights"]
