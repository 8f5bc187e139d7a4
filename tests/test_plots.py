"""Figures: each is written as a PNG, and what is drawn is the data given (read back from the Axes)."""

import numpy as np
import pytest
from scipy.stats import norm

from specae.errors import SpecaeError
from specae.plots import plot_calibration, plot_denoised, plot_latent_space, plot_training, plot_traversal

PNG = b"\x89PNG\r\n\x1a\n"


def written(path):
    return path.is_file() and path.read_bytes()[:8] == PNG and not list(path.parent.glob(".*.tmp"))


def test_denoised_panel_shows_input_band_truth_and_masked_pixels(tmp_path):
    rng = np.random.default_rng(0)
    wave = np.linspace(4000, 5000, 50)
    truth = 1 + 0.1 * np.sin(wave / 50)[None].repeat(2, 0)
    noisy = truth + 0.05 * rng.standard_normal(truth.shape)
    den, sig = truth + 0.01, np.full_like(truth, 0.02)
    mask = np.zeros(truth.shape, bool)
    mask[1, 10:15] = True
    fig = plot_denoised(tmp_path / "d.png", wave, noisy, den, sig, truth, mask, ["a", "b"])
    assert written(tmp_path / "d.png")
    ax = fig.axes[1]
    noisy_line, den_line, truth_line, ticks = ax.lines
    np.testing.assert_array_equal(noisy_line.get_ydata()[~mask[1]], noisy[1][~mask[1]])
    assert np.isnan(noisy_line.get_ydata()[mask[1]]).all()            # masked input pixels are not drawn
    np.testing.assert_array_equal(den_line.get_ydata(), den[1])
    np.testing.assert_array_equal(truth_line.get_ydata(), truth[1])
    np.testing.assert_array_equal(ticks.get_xdata(), wave[10:15])      # ... but marked
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx((den[1] - sig[1]).min())
    assert band[:, 1].max() == pytest.approx((den[1] + sig[1]).max())
    assert len(fig.axes[0].lines) == 3                                  # no masked pixel, no ticks


def test_traversal_rows_are_the_decoded_spectra_with_their_label_values(tmp_path):
    wave = np.linspace(15000, 15100, 30)
    flux = 1 - np.outer(np.linspace(0.1, 0.3, 4), np.exp(-0.5 * ((wave - 15050) / 5) ** 2))
    values = np.array([4500.0, 5000, 5500, 6000])
    fig = plot_traversal(tmp_path / "t.png", wave, flux, values, "TEFF", offset=0.5)
    assert written(tmp_path / "t.png")
    ax = fig.axes[0]
    for i, line in enumerate(ax.lines):
        np.testing.assert_allclose(line.get_ydata(), flux[i] + 0.5 * i)
    assert [t.get_text().strip() for t in ax.texts] == [f"TEFF = {v:.4g}" for v in values]


def test_latent_space_scatters_every_pair_coloured_by_the_label(tmp_path):
    rng = np.random.default_rng(1)
    z = rng.standard_normal((40, 3))
    color = z[:, 0] * 100 + 5000
    color[:3] = np.nan                                                 # missing label: drawn grey
    fig = plot_latent_space(tmp_path / "l.png", z, color, ["z0", "z1", "z2"], "TEFF")
    assert written(tmp_path / "l.png")
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"][:3]
    for ax, (i, j) in zip(panels, [(0, 1), (0, 2), (1, 2)]):
        grey, coloured = ax.collections
        np.testing.assert_array_equal(grey.get_offsets(), z[:3][:, [i, j]])
        np.testing.assert_array_equal(coloured.get_offsets(), z[3:][:, [i, j]])
        np.testing.assert_array_equal(coloured.get_array(), color[3:])
        assert (ax.get_xlabel(), ax.get_ylabel()) == (f"z{i}", f"z{j}")


def test_calibration_histograms_are_densities_against_the_unit_normal(tmp_path):
    rng = np.random.default_rng(2)
    groups = {"TEFF": rng.standard_normal(4000), "FE_H": 2 * rng.standard_normal(4000)}
    groups["FE_H"][0] = np.nan
    fig = plot_calibration(tmp_path / "c.png", groups)
    assert written(tmp_path / "c.png")
    for ax, (name, v) in zip(fig.axes, groups.items()):
        heights = np.array([p.get_height() for p in ax.patches])
        assert heights.sum() * 0.25 == pytest.approx(1.0)
        np.testing.assert_allclose(ax.lines[0].get_ydata(), norm.pdf(ax.lines[0].get_xdata()))
        inside = np.mean(np.abs(v[np.isfinite(v)]) <= 1)
        assert f"{100 * inside:.1f} %" in ax.get_title() and name in ax.get_title()


@pytest.mark.parametrize("history", [
    {"epoch": [0, 1, 2], "train_loss": [3, 2, 1.5], "val_loss": [3.1, 2.2, 1.9], "val_chi2_dof": [2, 1.3, 1.1],
     "best_epoch": 2},
    {"epoch": [0, 1], "train_nll": [1.0, 0.5], "val_nll": [1.1, 0.7], "best_epoch": 1}])
def test_training_curves_for_a_vae_and_a_label_map(tmp_path, history):
    fig = plot_training(tmp_path / "h.png", history)
    assert written(tmp_path / "h.png")
    a, b = fig.axes
    train_key = "train_loss" if "train_loss" in history else "train_nll"
    np.testing.assert_array_equal(a.lines[0].get_ydata(), history[train_key])
    metric = history.get("val_chi2_dof", history.get("val_nll"))
    np.testing.assert_array_equal(b.lines[0].get_ydata(), metric)
    assert b.lines[1].get_xdata()[0] == history["best_epoch"]


def test_a_figure_is_written_whole_or_not_at_all(tmp_path):
    with pytest.raises(SpecaeError, match="does not exist"):
        plot_calibration(tmp_path / "no" / "c.png", {"x": np.zeros(3)})
    assert not (tmp_path / "no").exists()
    fig = plot_calibration(None, {"x": np.zeros(3)})                    # drawn, not written
    assert fig.axes and not list(tmp_path.iterdir())
