"""`specae demo`: train a small VAE on the bundled synthetic stars, denoise held-out spectra, report."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from specae.baselines import WeightedPCA
from specae.data.hdf5 import atomic_path, read_h5
from specae.data.synthetic import write_default_data
from specae.denoise import denoise
from specae.metrics import coverage, rmse
from specae.models.config import ModelConfig
from specae.plots import plot_denoised, plot_training
from specae.train import TrainConfig, fit

# the source checkout's data/ (an editable or in-place install), then the working directory's
BUNDLED = (Path(__file__).resolve().parents[1] / "data", Path("data"))


def load_bundled(kind: str, directory: Path) -> tuple:
    """(noisy, truth) Spectra of the bundled set from data/, else generated (from its seed) into `directory`."""
    for d in (*BUNDLED, directory):
        if (d / f"{kind}.h5").is_file() and (d / f"{kind}_truth.h5").is_file():
            return read_h5(d / f"{kind}.h5"), read_h5(d / f"{kind}_truth.h5")
    write_default_data(directory)
    return read_h5(directory / f"{kind}.h5"), read_h5(directory / f"{kind}_truth.h5")


def run_demo(out_dir="specae-demo", minutes: float = 1.0, seed: int = 0, latent_dim: int = 6) -> str:
    """Run the demo; writes model/, denoised.png, training.png and summary.txt under `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    noisy, truth = load_bundled("stellar", out / "data")
    order = np.random.default_rng(seed).permutation(len(noisy))
    n_test = max(1, len(noisy) // 5)
    test, rest = np.sort(order[:n_test]), np.sort(order[n_test:])
    train, val = noisy[rest].split((0.85, 0.15), seed=seed)
    model, history = fit(train, val, ModelConfig(npix=noisy.npix, latent_dim=latent_dim),
                         TrainConfig(max_minutes=minutes, seed=seed), out_dir=out / "model")
    d = denoise(model, noisy[test])
    pca_flux, _ = WeightedPCA(latent_dim, seed=seed).fit(noisy[rest]).denoise(noisy[test])
    t, x, valid = truth.flux[test], noisy.flux[test], ~noisy.mask[test]
    lines = [
        f"specae demo: VAE (latent {latent_dim}) on {len(train)} synthetic stellar spectra "
        f"({noisy.npix} pixels), {len(val)} for validation, {n_test} held out",
        f"training: {len(history['epoch'])} epochs in {history['minutes']:.1f} min, stopped by {history['stopped']}, "
        f"best validation chi2/dof {history['best_val_chi2_dof']:.3f}",
        f"RMSE to truth, held-out spectra (valid pixels): noisy input {rmse(x[valid], t[valid]):.4g}, "
        f"weighted PCA {rmse(pca_flux[valid], t[valid]):.4g}, VAE {rmse(d.flux[valid], t[valid]):.4g}",
        f"RMSE to truth on masked pixels (inpainted): PCA {rmse(pca_flux[~valid], t[~valid]):.4g}, "
        f"VAE {rmse(d.flux[~valid], t[~valid]):.4g}",
        f"VAE sigma calibration, all pixels: {100 * coverage(d.flux, d.sigma, t):.1f} % of true values within "
        f"+-1 sigma (ideal 68.3), {100 * coverage(d.flux, d.sigma, t, 2):.1f} % within +-2 sigma (ideal 95.4)",
    ]
    show = np.argsort(noisy.labels["SNR"][test])[[0, n_test // 2, -1]] if "SNR" in noisy.labels else np.arange(3)
    plot_denoised(out / "denoised.png", noisy.wave, x[show], d.flux[show], d.sigma[show], t[show],
                  noisy.mask[test][show], titles=[f"{noisy.ids[test][i]}" + (
                      f"  S/N {noisy.labels['SNR'][test][i]:.0f}" if "SNR" in noisy.labels else "") for i in show])
    plot_training(out / "training.png", history)
    summary = "\n".join(lines) + f"\nfigures: {out / 'denoised.png'}, {out / 'training.png'}; model: {out / 'model'}\n"
    with atomic_path(out / "summary.txt") as tmp:
        tmp.write_text(summary)
    return summary
