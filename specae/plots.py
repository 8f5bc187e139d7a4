"""Figures: denoised spectra with their uncertainty band, training curves. Written atomically as PNG."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from specae.data.hdf5 import atomic_path  # noqa: E402


def _save(fig, path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_denoised(path, wave, noisy, denoised, sigma, truth=None, mask=None, titles=None) -> None:
    """One panel per spectrum: noisy input, denoised +-1 sigma band, and the truth when known.

    wave (npix,) Angstrom; noisy, denoised, sigma, truth, mask (n, npix); mask True = bad input pixel.
    """
    n = len(denoised)
    fig, axes = plt.subplots(n, 1, figsize=(11, 2.6 * n), squeeze=False, sharex=True)
    for i, ax in enumerate(axes[:, 0]):
        shown = noisy[i] if mask is None else np.where(mask[i], np.nan, noisy[i])
        ax.plot(wave, shown, color="0.65", lw=0.5, label="noisy input")
        ax.fill_between(wave, denoised[i] - sigma[i], denoised[i] + sigma[i], color="C0", alpha=0.3,
                        lw=0, label="denoised $\\pm1\\sigma$")
        ax.plot(wave, denoised[i], color="C0", lw=0.8, label="denoised")
        if truth is not None:
            ax.plot(wave, truth[i], color="C3", lw=0.6, ls="--", label="truth")
        lo, hi = np.nanpercentile(np.concatenate([denoised[i], shown]), [0.5, 99.5])
        ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo))
        ax.set_ylabel("flux")
        if titles is not None:
            ax.set_title(titles[i], fontsize=9, loc="left")
    axes[0, 0].legend(loc="upper right", fontsize=8, ncol=4)
    axes[-1, 0].set_xlabel("wavelength [$\\AA$]")
    _save(fig, path)


def plot_training(path, history: dict) -> None:
    """Training loss and validation chi2/dof against epoch, the best epoch marked."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.plot(history["epoch"], history["train_loss"], label="train")
    a.plot(history["epoch"], history["val_loss"], label="validation")
    a.set_xlabel("epoch")
    a.set_ylabel("-ELBO per spectrum")
    a.legend()
    b.plot(history["epoch"], history["val_chi2_dof"], color="C1")
    b.axvline(history["best_epoch"], color="0.5", ls=":", label="best")
    b.set_xlabel("epoch")
    b.set_ylabel("validation $\\chi^2$/dof")
    b.legend()
    fig.tight_layout()
    _save(fig, path)
