"""The model card, MODEL.md: what a model directory holds, what it was trained on and how well it did, in a few
lines a person reads (`specae info MODEL`). Written with the calibrated model (`save_model`), from its config, its
calibration and its history (the run's counts, files, data summary and held-out check, `HeldOut.pooled`)."""

from __future__ import annotations

import datetime

import numpy as np

import specae

CARD = "MODEL.md"


def data_summary(spectra, files: list[str]) -> dict:
    """What the card says about the training data: the file names, and each spectrum's median S/N over its valid
    pixels (min, median, max over `spectra`, a sample of the training rows, and how many)."""
    valid = spectra.ivar > 0
    snr = np.abs(spectra.flux) * np.sqrt(np.where(valid, spectra.ivar, 0))
    per = np.array([np.median(r[v]) for r, v in zip(snr, valid) if v.any()])
    return {"files": list(files), "snr": [float(per.min()), float(np.median(per)), float(per.max())] if per.size else None,
            "snr_rows": int(per.size)}


def model_card(model, history: dict) -> str:
    """MODEL.md for `model` (a SpectrumVAE, calibrated or not) and its run's `history` (may be empty)."""
    cfg, wave = model.cfg, model.wave
    step = float(np.median(np.diff(np.log10(wave))))
    data = history.get("training_data") or {}
    lines = [f"# specae model: {cfg.kind.upper()}, {cfg.latent_dim} latents, {cfg.decoder} decoder", "",
             f"Written {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by specae {specae.__version__}.",
             "", "## Training data", ""]
    files = data.get("files") or []
    lines.append(f"- files: {', '.join(files) if files else 'spectra given in memory'}")
    if "n_train" in history:
        lines.append(f"- spectra: {history['n_train']} training, {history['n_val']} validation")
    lines.append(f"- grid: {wave[0]:.2f}-{wave[-1]:.2f} A, {wave.size} pixels, log10 step {step:.3g}")
    if cfg.redshift:
        lo, hi = cfg.z_range
        lines.append(f"- redshift (label {cfg.redshift!r}): {lo:.4g}-{hi:.4g}; decoded in the rest frame "
                     f"({cfg.rest_npix} pixels)")
    else:
        lines.append("- redshift: not used (an observed-frame model)")
    if data.get("snr"):
        lo, mid, hi = data["snr"]
        lines.append(f"- S/N per pixel (each spectrum's median): {lo:.3g}-{hi:.3g}, median {mid:.3g}, "
                     f"over {data['snr_rows']} training spectra")
    lines += ["", "## Measured", ""]
    if "best_val_chi2_dof" in history:
        best = history["best_epoch"]
        lines.append(f"- best validation chi2/dof: {history['best_val_chi2_dof']:.4f} "
                     + (f"at epoch {best + 1}" if best >= 0 else "at the PCA start (no epoch beat it)")
                     + f" of {len(history.get('epoch', []))}, stopped by {history.get('stopped')}")
    cal = model.calibration
    if cal is None:
        lines.append("- error model: not calibrated (denoise refuses it): run specae calibrate")
    else:
        lines.append(f"- error model: mean -log L {cal.heldout_nll:.4f} per held-out pixel, fitted on "
                     f"{cal.n_pixels} pixels of {cal.n_spectra} spectra")
    check = history.get("check")
    if check:
        lines.append(f"- held-out check on {check['spectra']} of those spectra ({check['pixels']} pixels, each hidden "
                     f"once and predicted from the rest): {100 * check['within_1sigma']:.1f} % within 1 sigma (68.3 % "
                     f"if calibrated), {100 * check['within_2sigma']:.1f} % within 2 sigma (95.4 %), chi2/dof "
                     f"{check['chi2_dof']:.3f}")
    return "\n".join(lines) + "\n"


__all__ = ["CARD", "model_card", "data_summary"]
