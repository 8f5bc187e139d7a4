"""Reliability (issue #25): no silent wrong numbers, and one bad value does bounded damage.

Where specae refuses, it is one 'specae: error:' line and exit code 2; where it goes on, every output value is
finite or its pixel (spectrum) is masked, and what was masked is counted in one warning.
"""

import json
import re
import shutil

import h5py
import numpy as np
import pytest
import torch

from specae.cli import main
from specae.data.hdf5 import read_h5, write_h5
from specae.data.resample import loglam_grid
from specae.data.spectra import Spectra
from specae.data.synthetic import add_noise, galaxy_spectra, stellar_spectra
from specae.errors import SpecaeError
from tests.conftest import one_error_line, run

WAVE = loglam_grid(4000, 6000, 1e-3)   # 177 pixels

pytestmark = pytest.mark.usefixtures("one_thread")


def warnings_of(err, text):
    """The warning lines of stderr that contain `text`."""
    return [line for line in err.splitlines() if line.startswith("specae: warning:") and text in line]


def counted(line) -> int:
    return int(re.search(r"warning: (\d+) ", line).group(1))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    stars = add_noise(stellar_spectra(30, seed=1, wave=WAVE), seed=2)
    paths = {k: d / f"{k}.h5" for k in ("stars", "tiny", "huge_ivar", "dead", "gal_bad_z")}
    write_h5(stars, paths["stars"])
    # the same stars in units of ~1e-17 (erg/s/cm2/A): the largest ivar just inside float32, so 1/sigma^2 of a
    # denoised pixel (smaller sigma) is not
    unit = np.sqrt(stars.ivar.max() / 3e38)
    write_h5(Spectra(WAVE, stars.flux * unit, stars.ivar / unit ** 2, stars.mask, ids=stars.ids), paths["tiny"])
    write_h5(Spectra(WAVE, stars.flux, np.where(stars.mask, 0, 1e30), stars.mask, ids=stars.ids), paths["huge_ivar"])
    dead = stars.mask.copy()
    dead[[2, 5, 7]] = True                       # three spectra without a single valid pixel
    write_h5(Spectra(WAVE, stars.flux, stars.ivar, dead, dict(stars.labels), stars.ids), paths["dead"])
    gal = add_noise(galaxy_spectra(24, seed=3, wave=WAVE), seed=4)
    z = gal.labels["Z"].copy()
    z[[3, 11]] = 1e6, -0.999
    write_h5(Spectra(WAVE, gal.flux, gal.ivar, gal.mask, {"Z": z}, gal.ids), paths["gal_bad_z"])
    return paths


@pytest.fixture(scope="module")
def model(files, tmp_path_factory):
    m = tmp_path_factory.mktemp("vae") / "model"
    assert main(["train", str(files["stars"]), "-o", str(m), "--epochs", "2", "--latent-dim", "3",
                 "--batch-size", "16", "--quiet"]) == 0
    return m


def copy_model(model, where, change=None):
    """A copy of `model` in `where`, with `change(state)` applied to its weights."""
    shutil.copytree(model, where)
    if change:
        blob = torch.load(where / "weights.pt", weights_only=True)
        change(blob["state"])
        torch.save(blob, where / "weights.pt")
    return where


def finite_or_masked(path) -> dict:
    """The datasets of a denoise output, checked: only finite values, except sigma inf exactly where masked;
    ivar 0 exactly where masked, 1/sigma^2 elsewhere (float32)."""
    with h5py.File(path) as f:
        d = {k: f[k][()] for k in ("flux", "ivar", "flux_sigma", "mask", "scale")}
    m = d["mask"]
    assert np.isfinite(d["flux"]).all() and np.isfinite(d["ivar"]).all() and np.isfinite(d["scale"]).all()
    assert np.all(d["ivar"][m] == 0) and np.all(np.isinf(d["flux_sigma"][m]))
    assert np.all(d["ivar"][~m] > 0) and np.isfinite(d["flux_sigma"][~m]).all()
    np.testing.assert_allclose(d["ivar"][~m], 1 / d["flux_sigma"][~m].astype(np.float64) ** 2, rtol=1e-5)
    return d


# -- 1. float32 overflow of the output ivar --------------------------------------------------------------
def test_denoise_in_tiny_flux_units_writes_finite_ivar_scaled(files, model, tmp_path, capsys):
    code, _, err = run(capsys, "denoise", model, files["tiny"], "-o", tmp_path / "tiny.h5")
    assert code == 0 and "overflow" not in err
    tiny = finite_or_masked(tmp_path / "tiny.h5")
    assert not tiny["mask"].any() and np.any(tiny["scale"] != 1)   # written in the model's units where needed
    assert run(capsys, "denoise", model, files["stars"], "-o", tmp_path / "stars.h5")[0] == 0
    stars = finite_or_masked(tmp_path / "stars.h5")
    assert np.all(stars["scale"] == 1)
    # flux * scale is in the input's units: the same stars, `unit` times smaller
    unit = np.sqrt(read_h5(files["stars"]).ivar.max() / 3e38)
    np.testing.assert_allclose(tiny["flux"] * tiny["scale"][:, None] / unit, stars["flux"], rtol=1e-3, atol=1e-4)


def test_denoise_with_ivar_1e30_is_finite_or_masked_and_counted(files, model, tmp_path, capsys):
    code, _, err = run(capsys, "denoise", model, files["huge_ivar"], "-o", tmp_path / "out.h5")
    assert code == 0 and "overflow" not in err
    d = finite_or_masked(tmp_path / "out.h5")
    lines = warnings_of(err, "denoised pixels were masked")
    # no pixel with sigma 0 and ivar 0 unmasked: every masked pixel is counted in one warning
    assert (len(lines), counted(lines[0]) if lines else 0) == ((1, d["mask"].sum()) if d["mask"].any() else (0, 0))


# -- 2. non-finite weights -------------------------------------------------------------------------------
def test_a_checkpoint_with_nan_weights_is_refused(files, model, tmp_path, capsys):
    def poison(state):
        state[next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)].view(-1)[0] = np.nan

    bad = copy_model(model, tmp_path / "nan_model", poison)
    code, _, err = run(capsys, "denoise", bad, files["stars"], "-o", tmp_path / "out.h5")
    assert code == 2 and one_error_line(err) and str(bad) in err and "non-finite" in err
    assert not (tmp_path / "out.h5").exists()


# -- 3. spectra without a valid pixel ----------------------------------------------------------------------
def test_spectra_without_a_valid_pixel_come_out_masked_in_every_command(files, model, tmp_path, capsys):
    dead = [2, 5, 7]
    assert run(capsys, "regress", model, files["stars"], "-o", tmp_path / "reg", "--kind", "ridge",
               "--labels", "TEFF", "--quiet")[0] == 0
    outputs = {}
    for cmd, *extra in (("denoise",), ("encode",), ("heldout", "--passes", "2"), ("score",),
                        ("predict", tmp_path / "reg")):
        out = tmp_path / f"{cmd}.h5"
        args = [model, *extra, files["dead"]] if cmd == "predict" else [model, files["dead"], *extra]
        code, _, err = run(capsys, cmd, *args, "-o", out, "--quiet")
        lines = warnings_of(err, "without a valid pixel")
        assert code == 0 and len(lines) == 1 and counted(lines[0]) == 3, (cmd, err)
        assert "star-000002, star-000005, star-000007" in lines[0]
        with h5py.File(out) as f:
            outputs[cmd] = {k: f[k][()] for k in f if isinstance(f[k], h5py.Dataset)}
            if cmd == "predict":
                outputs[cmd] |= {"TEFF": f["predicted/TEFF"][()], "TEFF_sigma": f["predicted_sigma/TEFF"][()]}
    live = np.setdiff1d(np.arange(30), dead)
    d = finite_or_masked(tmp_path / "denoise.h5")
    assert d["mask"][dead].all() and not d["mask"][live].any()
    e = outputs["encode"]
    assert np.isnan(e["latent_mean"][dead]).all() and np.isinf(e["latent_std"][dead]).all()
    assert np.isfinite(e["latent_mean"][live]).all() and np.isfinite(e["latent_std"][live]).all()
    h, s, p = outputs["heldout"], outputs["score"], outputs["predict"]
    assert np.isnan(h["heldout_chi2_dof"][dead]).all() and np.all(h["n_heldout"][dead] == 0)
    assert np.isfinite(h["heldout_chi2_dof"][live]).all()
    for k in ("chi2_dof", "log_evidence", "log_density"):
        assert np.isnan(s[k][dead]).all() and np.isfinite(s[k][live]).all(), k
    assert np.isnan(p["TEFF"][dead]).all() and np.isinf(p["TEFF_sigma"][dead]).all()
    assert np.isfinite(p["TEFF"][live]).all() and np.isfinite(p["TEFF_sigma"][live]).all()


# -- 4. directions of another model --------------------------------------------------------------------------
def test_plot_traversal_refuses_directions_of_another_model(files, model, tmp_path, capsys):
    assert run(capsys, "directions", model, files["stars"], "-o", tmp_path / "dirs.json", "--labels", "TEFF")[0] == 0
    other = copy_model(model, tmp_path / "other", lambda state: next(v for v in state.values()
                                                                      if v.is_floating_point()).add_(1e-3))
    for kind, args in (("traversal", [other, tmp_path / "dirs.json", "--label", "TEFF"]),
                       ("latent", [other, files["stars"], "--color", "TEFF", "--directions", tmp_path / "dirs.json"])):
        code, _, err = run(capsys, "plot", kind, *args, "-o", tmp_path / "fig.png")
        assert code == 2 and one_error_line(err) and "another model" in err and "dirs.json" in err, err
    assert not (tmp_path / "fig.png").exists()
    assert run(capsys, "plot", "traversal", model, tmp_path / "dirs.json", "--label", "TEFF",
               "-o", tmp_path / "fig.png")[0] == 0


# -- 5. implausible redshifts -----------------------------------------------------------------------------------
def test_implausible_redshifts_are_left_out_of_training_and_named(files, tmp_path, capsys):
    code, _, err = run(capsys, "train", files["gal_bad_z"], "-o", tmp_path / "m", "--epochs", "1", "--latent-dim", "2",
                       "--redshift", "Z", "--batch-size", "16", "--quiet")
    assert code == 0, err
    lines = warnings_of(err, "redshifts outside")
    assert len(lines) == 1 and counted(lines[0]) == 2 and "gal-000003" in lines[0] and "gal-000011" in lines[0]
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    z = np.delete(read_h5(files["gal_bad_z"]).labels["Z"], [3, 11])
    assert cfg["z_range"] == pytest.approx([z.min(), z.max()])          # the range actually trained on
    assert cfg["rest_npix"] < 4 * WAVE.size         # twice the grid (half its step) and the z spread, not ~100 times


def test_implausible_redshifts_are_refused_when_streaming(files, tmp_path, capsys):
    code, _, err = run(capsys, "train", files["gal_bad_z"], "-o", tmp_path / "m", "--epochs", "1", "--redshift", "Z",
                       "--stream", "--val", files["stars"], "--workers", "0", "--quiet")
    assert code == 2 and one_error_line(err) and "2 redshifts outside" in err and "rows 3, 11" in err, err


# -- 6. grids beyond memory ---------------------------------------------------------------------------------------
def test_a_grid_beyond_memory_is_refused_before_it_is_built(files, tmp_path, capsys):
    code, _, err = run(capsys, "convert", files["stars"], "-o", tmp_path / "out.h5", "--grid", "loglam:3600:10000:1e-12")
    assert code == 2 and one_error_line(err) and "GiB of memory" in err
    assert not (tmp_path / "out.h5").exists()


def test_resampling_beyond_memory_is_refused(monkeypatch, small_spectra):
    import specae.data.resample as resample

    monkeypatch.setattr(resample, "available_memory", lambda: 1 << 20)   # 1 MiB
    grid = loglam_grid(4000, 5000, 1e-5)                                  # 9 spectra x 9692 pixels x 80 bytes
    for fn in (lambda: small_spectra.resample(grid), lambda: small_spectra.to_rest_frame("Z", grid)):
        with pytest.raises(SpecaeError, match="GiB of memory"):
            fn()


# -- 7. the time budget covers calibration; an interrupted calibration leaves no calibrated-looking model ----
def test_calibration_within_seconds_takes_fewer_pixels_and_stops_at_the_deadline(files, model):
    from time import monotonic

    from specae.calibration import START, fit_calibration
    from specae.model_dir import load_model

    m, spectra = load_model(model), read_h5(files["stars"])
    t = monotonic()
    full = fit_calibration(m, spectra)
    t_full = monotonic() - t
    t = monotonic()
    rushed = fit_calibration(m, spectra, seconds=0.0)
    t_rushed = monotonic() - t
    per_spectrum = int((spectra.ivar > 0).sum(1).max())
    assert full.n_spectra == 30 and rushed.n_spectra == 1 and 0 < rushed.n_pixels <= per_spectrum
    assert t_rushed < t_full / 2                  # one evaluation per fit, not fits to convergence
    # with no time left, the most likely constants evaluated: the fits' starting points, on one spectrum
    assert rushed.noise_scale == START.noise_scale and rushed.model_scale == START.model_scale
    assert np.isfinite(rushed.heldout_nll) and np.isfinite(full.heldout_nll)


def test_max_minutes_covers_calibration_and_is_recorded(files, tmp_path, capsys, monkeypatch):
    import specae.pipeline as pipeline

    seen = {}
    fit = pipeline.fit_calibration

    def timed(*args, seconds=None, **kw):
        seen["seconds"] = seconds
        return fit(*args, seconds=seconds, **kw)

    monkeypatch.setattr(pipeline, "fit_calibration", timed)
    code, out, _ = run(capsys, "train", files["stars"], "-o", tmp_path / "m", "--max-minutes", "0.05",
                       "--latent-dim", "3", "--quiet")
    assert code == 0 and "error model calibrated" in out
    history = json.loads((tmp_path / "m" / "history.json").read_text())
    assert history["train_config"]["max_minutes"] == 0.05     # the budget given, of which training took a share
    assert history["minutes"] <= 0.8 * 0.05 + 0.05             # training stopped at its share (plus its last epoch)
    assert 0 < seen["seconds"] <= 3.0                          # calibration was given what was left of 3 s
    assert (tmp_path / "m" / "calibration.json").is_file()


def test_an_interrupted_calibration_leaves_a_model_denoise_refuses(files, tmp_path, capsys, monkeypatch):
    import specae.pipeline as pipeline

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "fit_calibration", interrupted)
    code, _, err = run(capsys, "train", files["stars"], "-o", tmp_path / "m", "--epochs", "1", "--latent-dim", "3",
                       "--quiet")
    assert code != 0 and "interrupted" in err and "Traceback" not in err
    assert (tmp_path / "m" / "weights.pt").is_file() and not (tmp_path / "m" / "calibration.json").exists()
    code, _, err = run(capsys, "denoise", tmp_path / "m", files["stars"], "-o", tmp_path / "d.h5")
    assert code == 2 and one_error_line(err) and "no calibration" in err and not (tmp_path / "d.h5").exists()


# -- 8. wavelengths in other units ------------------------------------------------------------------------
@pytest.mark.parametrize("unit,factor", [("nm", 10), ("micron", 1e4)])
def test_wavelengths_in_nm_or_micron_are_refused_naming_the_file_and_the_unit(files, model, tmp_path, capsys,
                                                                                 unit, factor):
    stars = read_h5(files["stars"])
    path = tmp_path / f"in_{unit}.h5"
    write_h5(Spectra(stars.wave / factor, stars.flux, stars.ivar, stars.mask, ids=stars.ids), path)
    code, _, err = run(capsys, "denoise", model, path, "-o", tmp_path / "out.h5")
    assert code == 2 and one_error_line(err) and str(path) in err, err
    assert f"in {unit}? specae reads wavelengths in Angstrom (multiply them by {factor:g})" in err
    assert not (tmp_path / "out.h5").exists()
