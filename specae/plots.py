"""Figures: the latent space coloured by a label, traversal grids, denoised spectra with their band,
calibration histograms and training curves.

Each `plot_*` takes arrays (computed by specae.denoise / specae.latent / specae.regress), draws them on a
matplotlib Figure (a fresh one, or `fig`), writes it as PNG to `path` atomically unless `path` is None,
and returns the Figure, so what was drawn can be checked. No pyplot: no global state, no display needed.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from scipy.stats import norm

from specae.plumbing import atomic_path



def wave_label(frame: str = "") -> str:
    """The wavelength axis: unit, and the frame when known ('observed', 'rest')."""
    return f"{frame + ' ' if frame else ''}wavelength [$\\AA$]"


def flux_label(unit: str = "", what: str = "flux") -> str:
    """The flux axis: `what` with the flux unit as the readers record it (e.g. '1e-17 erg/s/cm2/A', set in
    LaTeX by astropy); none for an unknown unit, 'normalised' said as such."""
    from specae.data.specutils import astropy_unit

    if not unit.strip():
        return what
    u = astropy_unit(unit)
    if u.physical_type == "dimensionless":
        return f"{what} ({unit})"
    return f"{what} [{u.to_string('latex_inline')}]"


def _figure(fig: Figure | None, size: tuple) -> Figure:
    return Figure(figsize=size, layout="constrained") if fig is None else fig


def _save(fig: Figure, path) -> Figure:
    if path is not None:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return fig


def plot_denoised(path, wave, noisy, denoised, sigma, truth=None, mask=None, titles=None, fig=None,
                  flux_unit: str = "", frame: str = "") -> Figure:
    """One panel per spectrum: noisy input (masked pixels as red ticks along the bottom), denoised
    +-1 sigma band, and the truth when known; the axes say the flux unit and the frame (`Spectra.meta`).

    wave (npix,) Angstrom; noisy, denoised, sigma, truth, mask (n, npix); mask True = bad input pixel.
    """
    n = len(denoised)
    fig = _figure(fig, (11, 2.6 * n))
    axes = fig.subplots(n, 1, squeeze=False, sharex=True)[:, 0]
    for i, ax in enumerate(axes):
        shown = noisy[i] if mask is None else np.where(mask[i], np.nan, noisy[i])
        ax.plot(wave, shown, color="0.65", lw=0.5, label="noisy input")
        ax.fill_between(wave, denoised[i] - sigma[i], denoised[i] + sigma[i], color="C0", alpha=0.3,
                        lw=0, label="denoised $\\pm1\\sigma$")
        ax.plot(wave, denoised[i], color="C0", lw=0.8, label="denoised")
        if truth is not None:
            ax.plot(wave, truth[i], color="C3", lw=0.6, ls="--", label="truth")
        lo, hi = np.nanpercentile(np.concatenate([denoised[i], shown]), [0.5, 99.5])
        if mask is not None and mask[i].any():
            ax.plot(wave[mask[i]], np.full(int(mask[i].sum()), lo - 0.05 * (hi - lo)), "|", color="C3", ms=4,
                    label="masked pixel")
        ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo))
        ax.set_ylabel(flux_label(flux_unit))
        if titles is not None:
            ax.set_title(titles[i], fontsize=9, loc="left")
    axes[0].legend(loc="upper right", fontsize=8, ncol=5)
    axes[-1].set_xlabel(wave_label(frame))
    return _save(fig, path)


def plot_training(path, history: dict, fig=None) -> Figure:
    """Training and validation loss against epoch, and the monitored validation metric (chi2/dof for the
    VAE) with the best epoch marked; works for any engine history (VAE, label map)."""
    fig = _figure(fig, (10, 3.5))
    a, b = fig.subplots(1, 2)
    epochs = history["epoch"]
    for key, name in (("train_loss", "train"), ("val_loss", "validation"), ("train_nll", "train"),
                      ("val_nll", "validation")):
        if key in history:
            a.plot(epochs, history[key], label=name)
    a.set_xlabel("epoch")
    a.set_ylabel("loss (-ELBO per spectrum, or NLL per label)")
    a.legend()
    metric = next((k for k in ("val_chi2_dof", "val_nll", "val_loss") if k in history), None)
    if metric:
        b.plot(epochs, history[metric], color="C1")
        b.set_ylabel("validation " + {"val_chi2_dof": "$\\chi^2$/dof", "val_nll": "NLL", "val_loss": "loss"}[metric])
    b.axvline(history.get("best_epoch", -1), color="0.5", ls=":", label="best")
    b.set_xlabel("epoch")
    b.legend()
    return _save(fig, path)


def plot_latent_space(path, points, color, axis_names, color_name: str, fig=None) -> Figure:
    """The encoded set coloured by a label: points (N, D) with D >= 2 (latents, or the fitted values of two
    label directions), one scatter panel per pair of axes (i < j); color (N,) (NaN drawn grey)."""
    points, color = np.asarray(points, float), np.asarray(color, float)
    d = points.shape[1]
    pairs = [(i, j) for i in range(d) for j in range(i + 1, d)]
    ncol = min(len(pairs), 4 if d > 3 else len(pairs))
    nrow = -(-len(pairs) // ncol)
    fig = _figure(fig, (3.2 * ncol + 1, 3 * nrow))
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    known = np.isfinite(color)
    lo, hi = (np.percentile(color[known], [1, 99]) if known.any() else (0, 1))
    for ax, (i, j) in zip(axes, pairs):
        ax.scatter(points[~known, i], points[~known, j], s=4, color="0.7", lw=0)
        sc = ax.scatter(points[known, i], points[known, j], c=color[known], s=4, lw=0, cmap="viridis", vmin=lo,
                        vmax=hi)
        ax.set_xlabel(axis_names[i])
        ax.set_ylabel(axis_names[j])
    for ax in axes[len(pairs):]:
        ax.set_visible(False)
    fig.colorbar(sc, ax=list(axes[:len(pairs)]), label=color_name)
    return _save(fig, path)


def plot_traversal(path, wave, flux, values, label: str, offset: float | None = None, fig=None,
                   frame: str = "") -> Figure:
    """Decoded spectra along a latent direction, one row per step, stacked with a vertical `offset`
    (default: a quarter of the flux range), each annotated with the label value of its row.

    wave (npix,) Angstrom in `frame`; flux (S, npix) in the model's normalised units; values (S,) the label at
    each row.
    """
    flux = np.asarray(flux, float)
    if offset is None:
        offset = 0.25 * float(np.ptp(flux)) or 1.0
    fig = _figure(fig, (11, 1.0 + 0.6 * len(flux)))
    ax = fig.subplots()
    colors = colormaps["coolwarm"](np.linspace(0, 1, len(flux)))
    for i, (row, value) in enumerate(zip(flux, values)):
        ax.plot(wave, row + i * offset, color=colors[i], lw=0.8)
        ax.text(wave[-1], row[-1] + i * offset, f"  {label} = {value:.4g}", fontsize=8, va="center")
    ax.set_xlabel(wave_label(frame))
    ax.set_ylabel(f"decoded flux (normalised) + offset ({offset:.3g} per row)")
    ax.set_title(f"decoded spectra along the {label} direction", fontsize=10, loc="left")
    return _save(fig, path)


def plot_calibration(path, normalised: dict, fig=None) -> Figure:
    """Histograms of (prediction - truth) / sigma against the unit normal, one panel per entry of
    `normalised` {name: array} (e.g. one per label, or valid and masked pixels), with the fraction inside
    +-1 sigma (68.3 % if calibrated). Non-finite values are left out."""
    n = len(normalised)
    fig = _figure(fig, (3.6 * n, 3.2))
    axes = fig.subplots(1, n, squeeze=False)[0]
    grid = np.linspace(-5, 5, 201)
    for ax, (name, values) in zip(axes, normalised.items()):
        v = np.asarray(values, float).ravel()
        v = v[np.isfinite(v)]
        ax.hist(np.clip(v, -5, 5), bins=np.linspace(-5, 5, 41), density=True, color="C0", alpha=0.6, label="data")
        ax.plot(grid, norm.pdf(grid), color="k", lw=1, label="N(0, 1)")
        inside = float(np.mean(np.abs(v) <= 1)) if v.size else float("nan")
        ax.set_title(f"{name}: {100 * inside:.1f} % within $\\pm1\\sigma$", fontsize=9)
        ax.set_xlabel("(prediction - truth) / $\\sigma$")
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=8)
    return _save(fig, path)

