"""Checkpoints: a directory with config.json (plain JSON), weights.pt (tensors only, read with
specae.checkpoints, so a checkpoint can never run code) and, once calibrated, calibration.json (the error
model's constants, specae.calibration)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from specae.checkpoints import load_tensors, reading, require_files
from specae.data.hdf5 import atomic_path
from specae.errors import SpecaeError
from specae.models.config import ModelConfig
from specae.models.vae import SpectrumVAE


def save_model(model: SpectrumVAE, directory, history: dict | None = None) -> None:
    """Write config.json, weights.pt, calibration.json (if calibrated; else an earlier one is removed) and
    optionally history.json, each atomically."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    rest = model.decoder.loglam_rest
    blob = {"state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "wave": torch.from_numpy(model.wave)}
    if rest is not None:
        blob["wave_rest"] = 10 ** rest.cpu()
    with atomic_path(d / "weights.pt") as tmp:
        torch.save(blob, tmp)
    with atomic_path(d / "config.json") as tmp:
        tmp.write_text(model.cfg.to_json())
    if model.calibration is not None:
        with atomic_path(d / "calibration.json") as tmp:
            tmp.write_text(model.calibration.to_json())
    else:   # one left beside earlier weights would not describe these
        (d / "calibration.json").unlink(missing_ok=True)
    if history is not None:
        with atomic_path(d / "history.json") as tmp:
            tmp.write_text(json.dumps(history, indent=1))


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
        # NaN/inf weights (a diverged or damaged run) would turn every output into NaN without an error
        bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise SpecaeError(f"non-finite (NaN/inf) values in {len(bad)} weight tensors ({', '.join(bad[:3])}"
                              f"{', ...' if len(bad) > 3 else ''}); retrain, or use an earlier checkpoint")
    if (d / "calibration.json").is_file():
        from specae.calibration import Calibration

        model.calibration = Calibration.from_json((d / "calibration.json").read_text(), str(d / "calibration.json"))
    return model.eval()


__all__ = ["save_model", "load_model"]
