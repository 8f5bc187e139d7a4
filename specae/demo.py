"""`specae demo`: train a small VAE on the bundled synthetic stars, denoise held-out spectra, report."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from specae.baselines import WeightedPCA
from specae.data.hdf5 import read_h5
from specae.data.synthetic import default_dataset, write_default_data
from specae.denoise import denoise
from specae.metrics import coverage, rmse
from specae.models.config import ModelConfig
from specae.pipeline import fit_calibrated
from specae.plots import plot_denoised, plot_training
from specae.plumbing import atomic_path
from specae.train import TrainConfig

# the source checkout's data/ (an editable or in-place install), then the working directory's
BUNDLED = (Path(__file__).resolve().parents[1] / "data", Path("data"))


def load_bundled(kind: str, directory: Path) -> tuple:
    """(noisy, truth) Spectra of the bundled set from data/, else generated (from its seed) into `directory`."""
    for d in (*BUNDLED, directory):
        if (d / f"{kind}.h5").is_file() and (d / f"{kind}_truth.h5").is_file():
            return read_h5(d / f"{kind}.h5"), read_h5(d / f"{kind}_truth.h5")
    write_default_data(directory)
    return read_h5(directory / f"{kind}.h5"), read_h5(directory / f"{kind}_truth.h5")


# about a minute on 2 idle CPU cores; a count, not a time budget, so a busy machine is slower but not worse
DEMO_EPOCHS = 30
# validation spectra the error model is fitted on (of 300): a count too; all 300 take the calibration minutes
DEMO_CALIBRATION_ROWS = 100


def run_demo(out_dir="specae-demo", epochs: int = DEMO_EPOCHS, seed: int = 0, latent_dim: int = 6,
             n_train: int = 2000, max_minutes: float | None = None) -> str:
    """Run the demo; writes model/, denoised.png, training.png and summary.txt under `out_dir`. Trains exactly
    `epochs` epochs (no early stopping) and calibrates to convergence, so a seed gives the same figures on machines
    with the same thread count; `max_minutes` caps training and calibration (for tests), and then the figures depend
    on its speed. The error model's fit on 100 spectra is fragile: another thread count sums in another order and can
    stop at another optimum of its nearly flat likelihood (two threads: 60.3 % inside +-1 sigma; one: 67.6 %)."""
    t0 = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    noisy, truth = load_bundled("stellar", out / "data")          # the bundled set: denoised, never trained on
    # training spectra: fresh draws from the same generator (another seed), more than the bundled file holds
    train_all, _ = default_dataset("stellar", n=n_train, seed=seed + 1)
    train, val = train_all.split((0.85, 0.15), seed=seed)
    model, history = fit_calibrated(train, val, ModelConfig(npix=noisy.npix, latent_dim=latent_dim),
                                    TrainConfig(epochs=epochs, patience=None, max_minutes=max_minutes, seed=seed,
                                                calib_rows=DEMO_CALIBRATION_ROWS), out_dir=out / "model",
                                    overwrite=True)   # a demo run again replaces its own model
    d = denoise(model, noisy)
    pca_flux, _ = WeightedPCA(latent_dim, seed=seed).fit(train_all).denoise(noisy)
    t, x, valid = truth.flux, noisy.flux, ~noisy.mask
    lines = [
        f"specae demo: VAE (latent {latent_dim}) trained on {len(train)} synthetic stellar spectra "
        f"({noisy.npix} pixels; {len(val)} for validation), denoising the {len(noisy)} bundled held-out spectra",
        f"training: {len(history['epoch'])} epochs in {history['minutes']:.1f} min, stopped by {history['stopped']}, "
        f"best validation chi2/dof {history['best_val_chi2_dof']:.3f} (epoch {history['best_epoch'] + 1})",
        f"RMSE to truth, held-out spectra (valid pixels): noisy input {rmse(x, t, valid):.4g}, "
        f"weighted PCA {rmse(pca_flux, t, valid):.4g}, VAE {rmse(d.flux, t, valid):.4g}",
        f"RMSE to truth on masked pixels (inpainted): PCA {rmse(pca_flux, t, ~valid):.4g}, "
        f"VAE {rmse(d.flux, t, ~valid):.4g}",
        f"VAE sigma calibration, all pixels: {100 * coverage(d.flux, d.sigma, t):.1f} % of true values within "
        f"+-1 sigma (ideal 68.3), {100 * coverage(d.flux, d.sigma, t, 2):.1f} % within +-2 sigma (ideal 95.4)",
    ]
    snr = noisy.labels.get("SNR", np.arange(len(noisy), dtype=float))
    show = np.argsort(snr)[[0, len(noisy) // 2, -1]]
    plot_denoised(out / "denoised.png", noisy.wave, x[show], d.flux[show], d.sigma[show], t[show], noisy.mask[show],
                  titles=[f"{noisy.ids[i]}  S/N {snr[i]:.0f}" for i in show])
    plot_training(out / "training.png", history)
    lines.append(f"the demo took {(time.monotonic() - t0) / 60:.1f} min")
    summary = "\n".join(lines) + f"\nfigures: {out / 'denoised.png'}, {out / 'training.png'}; model: {out / 'model'}\n"
    with atomic_path(out / "summary.txt") as tmp:
        tmp.write_text(summary)
    return summary
