"""`specae train / denoise / heldout / encode / demo` end to end on tiny HDF5 files: what each command writes,
and that bad input ends in one 'specae: error:' line, exit code 2, no output and untouched inputs."""

import collections
import json
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from specae.cli import main
from specae.data.hdf5 import FORMAT_VERSION, read_h5, write_h5
from specae.data.resample import loglam_grid
from specae.data.spectra import Spectra
from specae.data.synthetic import add_noise, galaxy_spectra, stellar_spectra
from specae.train import TrainConfig

from tests.conftest import one_error_line, run

WAVE = loglam_grid(4000, 6000, 1e-3)   # 177 pixels
ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    stars = add_noise(stellar_spectra(30, seed=1, wave=WAVE), seed=2)
    gal = add_noise(galaxy_spectra(30, seed=3, wave=WAVE), seed=4)
    paths = {"stars": d / "stars.h5", "gal": d / "gal.h5", "gal_noz": d / "gal_noz.h5",
             "other_grid": d / "other.h5", "empty": d / "empty.h5"}
    write_h5(stars, paths["stars"])
    write_h5(gal, paths["gal"])
    write_h5(Spectra(gal.wave, gal.flux[:5], gal.ivar[:5], gal.mask[:5],
                     {k: v[:5] for k, v in gal.labels.items() if k != "Z"}, gal.ids[:5]), paths["gal_noz"])
    write_h5(add_noise(stellar_spectra(5, seed=5, wave=loglam_grid(4500, 6000, 1e-3)), seed=6), paths["other_grid"])
    paths["finer_grid"] = d / "finer.h5"
    write_h5(add_noise(stellar_spectra(5, seed=5, wave=loglam_grid(3990, 6010, 0.5e-3)), seed=6), paths["finer_grid"])
    write_h5(Spectra(WAVE, np.zeros((0, WAVE.size)), np.zeros((0, WAVE.size))), paths["empty"])
    return paths


@pytest.fixture(scope="module")
def vae_model(files, tmp_path_factory):
    model = tmp_path_factory.mktemp("vae") / "model"
    assert main(["train", str(files["stars"]), "-o", str(model), "--epochs", "2", "--latent-dim", "3",
                 "--batch-size", "16", "--quiet"]) == 0
    return model


@pytest.fixture(autouse=True)
def inputs_untouched(files):
    """Every test: the input files are byte-identical afterwards."""
    before = {k: p.read_bytes() for k, p in files.items()}
    yield
    assert {k: p.read_bytes() for k, p in files.items()} == before


# ------------------------------------------------------------------------------------------------
# good runs


def test_train_writes_a_model_directory(vae_model):
    names = {p.name for p in vae_model.iterdir()}
    assert {"config.json", "weights.pt", "history.json", "calibration.json"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    cfg = json.loads((vae_model / "config.json").read_text())
    assert cfg["kind"] == "vae" and cfg["latent_dim"] == 3 and cfg["npix"] == WAVE.size
    torch.load(vae_model / "weights.pt", weights_only=True)
    history = json.loads((vae_model / "history.json").read_text())
    assert history["epoch"] == [0, 1] and history["engine_config"]["ema"] == 0.99   # the default average
    assert history["train_config"]["beta_nll"] == TrainConfig.beta_nll


def test_train_reports_one_summary_line(files, tmp_path, capsys):
    code, out, err = run(capsys, "train", files["stars"], "-o", tmp_path / "m", "--epochs", "1",
                         "--latent-dim", "2", "--quiet", "--decoder", "conv", "--device", "cpu", "--ema", "0",
                         "--beta-nll", "0.5")
    assert code == 0 and out.count("\n") == 1 and out.startswith("trained vae on 27 spectra (3 for validation)")
    assert "stopped by epochs" in out and str(tmp_path / "m") in out
    assert json.loads((tmp_path / "m" / "config.json").read_text())["decoder"] == "conv"
    history = json.loads((tmp_path / "m" / "history.json").read_text())
    assert history["engine_config"]["ema"] is None and history["train_config"]["beta_nll"] == 0.5   # --ema 0


def test_denoise_writes_flux_sigma_ids_labels(files, vae_model, tmp_path, capsys):
    out = tmp_path / "den.h5"
    code, stdout, _ = run(capsys, "denoise", vae_model, files["stars"], "-o", out)
    assert code == 0 and "denoised 30 spectra" in stdout
    src, res = read_h5(files["stars"]), read_h5(out)
    np.testing.assert_array_equal(res.wave, src.wave)
    np.testing.assert_array_equal(res.ids, src.ids)
    assert set(res.labels) == set(src.labels)
    for k in src.labels:
        np.testing.assert_array_equal(res.labels[k], src.labels[k])
    with h5py.File(out) as f:
        sigma, input_mask = f["flux_sigma"][()], f["input_mask"][()]
    assert res.flux.shape == sigma.shape == (30, WAVE.size)
    assert np.isfinite(res.flux).all() and np.isfinite(sigma).all() and (sigma > 0).all()
    assert not res.mask.any()                     # every pixel gets a value, masked input pixels too
    assert src.mask.any()
    np.testing.assert_array_equal(input_mask, src.mask)   # which pixels were measured, which inpainted
    np.testing.assert_allclose(res.ivar, 1 / sigma.astype(np.float64) ** 2, rtol=1e-5)
    # the denoised spectra lie closer to the noise-free truth than the noisy input does (valid pixels)
    truth = stellar_spectra(30, seed=1, wave=WAVE).flux
    good = ~src.mask
    assert np.sqrt(np.mean((res.flux - truth)[good] ** 2)) < np.sqrt(np.mean((src.flux - truth)[good] ** 2))


def test_heldout_writes_per_spectrum_checks_and_one_summary_line(files, vae_model, tmp_path, capsys):
    from specae.denoise import heldout
    from specae.model_dir import load_model

    out = tmp_path / "check.h5"
    code, stdout, _ = run(capsys, "heldout", vae_model, files["stars"], "-o", out, "--passes", "3")
    assert code == 0 and "checked 30 spectra" in stdout
    expect = heldout(load_model(vae_model), read_h5(files["stars"]), passes=3)
    with h5py.File(out) as f:
        z, n = f["heldout_pull"][()], f["n_heldout"][()]
        within1, chi2 = f["heldout_within_1sigma"][()], f["heldout_chi2_dof"][()]
        ids = np.array([s.decode() for s in f["ids"][()]])
    np.testing.assert_array_equal(n, expect.n)
    np.testing.assert_allclose(z, expect.z, rtol=1e-5, equal_nan=True)
    np.testing.assert_allclose(within1, expect.within(1))
    np.testing.assert_allclose(chi2, expect.chi2_dof(), rtol=1e-6)
    np.testing.assert_array_equal(ids, read_h5(files["stars"]).ids)
    pooled = np.sum(expect.within(1) * expect.n) / expect.n.sum()
    assert f"{expect.n.sum()} held-out pixels: {100 * pooled:.1f} % inside +-1 sigma" in stdout


def test_encode_writes_latents(files, vae_model, tmp_path, capsys):
    out = tmp_path / "z.h5"
    code, stdout, _ = run(capsys, "encode", vae_model, files["stars"], "-o", out)
    assert code == 0 and "encoded 30 spectra to 3 latents" in stdout
    src = read_h5(files["stars"])
    with h5py.File(out) as f:
        z_mean, z_std, z_cov = f["latent_mean"][()], f["latent_std"][()], f["latent_cov"][()]
        log_amp = f["log_amplitude"][()]
        ids = np.array([s.decode() for s in f["ids"][()]])
        labels = {k: f["labels"][k][()] for k in f["labels"]}
        assert f.attrs["specae_format"] == FORMAT_VERSION
    assert z_mean.shape == z_std.shape == (30, 3) and z_cov.shape == (30, 3, 3)
    assert np.isfinite(z_mean).all() and (z_std > 0).all()
    # each spectrum's fitted amplitude: a small correction of the normalisation (prior std 0.1)
    assert log_amp.shape == (30,) and np.all(np.abs(log_amp) < 0.5) and np.std(log_amp) > 0
    np.testing.assert_allclose(z_std, np.sqrt(np.diagonal(z_cov, axis1=1, axis2=2)), rtol=1e-5)
    np.testing.assert_allclose(z_cov, np.transpose(z_cov, (0, 2, 1)), rtol=1e-5, atol=1e-9)
    np.testing.assert_array_equal(ids, src.ids)
    assert set(labels) == set(src.labels)
    for k in src.labels:
        np.testing.assert_array_equal(labels[k], src.labels[k])


def test_ae_model(files, tmp_path, capsys):
    model = tmp_path / "ae"
    code, out, _ = run(capsys, "train", files["stars"], "-o", model, "--epochs", "2", "--latent-dim", "3",
                       "--model", "ae", "--batch-size", "16", "--quiet")
    assert code == 0 and out.startswith("trained ae")
    assert json.loads((model / "config.json").read_text())["kind"] == "ae"
    assert run(capsys, "encode", model, files["stars"], "-o", tmp_path / "z.h5")[0] == 0
    with h5py.File(tmp_path / "z.h5") as f:
        assert f["latent_mean"].shape == (30, 3) and np.all(f["latent_std"][()] == 0)
    assert run(capsys, "denoise", model, files["stars"], "-o", tmp_path / "d.h5")[0] == 0
    with h5py.File(tmp_path / "d.h5") as f:
        assert np.isfinite(f["flux_sigma"][()]).all() and (f["flux_sigma"][()] > 0).all()


def test_redshift_model(files, tmp_path, capsys):
    model = tmp_path / "gal"
    code, _, _ = run(capsys, "train", files["gal"], "-o", model, "--epochs", "2", "--latent-dim", "3",
                     "--redshift", "Z", "--batch-size", "16", "--quiet")
    assert code == 0
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["redshift"] == "Z" and cfg["rest_npix"] > WAVE.size
    assert run(capsys, "denoise", model, files["gal"], "-o", tmp_path / "d.h5")[0] == 0
    assert np.isfinite(read_h5(tmp_path / "d.h5").flux).all()
    for cmd in ("denoise", "encode"):
        out = tmp_path / f"noz_{cmd}.h5"
        code, _, err = run(capsys, cmd, model, files["gal_noz"], "-o", out)
        assert code == 2 and one_error_line(err) and "'Z'" in err
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.h5", "gal"]


def test_train_redshift_label_missing(files, tmp_path, capsys):
    code, _, err = run(capsys, "train", files["stars"], "-o", tmp_path / "m", "--epochs", "1", "--redshift", "Z",
                       "--quiet")
    assert code == 2 and one_error_line(err) and "Z" in err
    assert not (tmp_path / "m").exists()


def test_resume(files, tmp_path, capsys):
    model = tmp_path / "m"
    args = ["train", files["stars"], "-o", model, "--latent-dim", "2", "--batch-size", "16", "--quiet"]
    assert run(capsys, *args, "--epochs", "1", "--keep-state")[0] == 0
    assert run(capsys, *args, "--epochs", "3", "--resume")[0] == 0
    assert json.loads((model / "history.json").read_text())["epoch"] == [0, 1, 2]
    code, _, err = run(capsys, *args[:3], tmp_path / "fresh", *args[4:], "--epochs", "1", "--resume")
    assert code == 2 and one_error_line(err) and "resume" in err


# ------------------------------------------------------------------------------------------------
# bad input


def test_train_on_truncated_file(files, tmp_path, capsys):
    cut = tmp_path / "cut.h5"
    cut.write_bytes(files["stars"].read_bytes()[:2000])
    code, _, err = run(capsys, "train", cut, "-o", tmp_path / "m", "--epochs", "1", "--quiet")
    assert code == 2 and one_error_line(err) and "cut.h5" in err
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_latent_dim_above_number_of_spectra(files, tmp_path, capsys):
    code, _, err = run(capsys, "train", files["stars"], "-o", tmp_path / "m", "--latent-dim", "500", "--quiet")
    assert code == 2 and one_error_line(err) and "latent" in err
    assert not (tmp_path / "m").exists()


def test_denoise_with_a_non_model_directory(files, tmp_path, capsys):
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "afile").write_text("x")
    for model in (tmp_path / "notamodel", tmp_path / "afile", tmp_path / "missing"):
        for cmd in ("denoise", "encode"):
            code, _, err = run(capsys, cmd, model, files["stars"], "-o", tmp_path / "out.h5")
            assert code == 2 and one_error_line(err) and "not a specae model" in err
            assert not (tmp_path / "out.h5").exists()


def damage(model_dir: Path, how: str):
    if how == "truncated_weights":
        (model_dir / "weights.pt").write_bytes((model_dir / "weights.pt").read_bytes()[:1000])
    elif how == "garbage_config":
        (model_dir / "config.json").write_text("{ not json")
    elif how == "config_not_an_object":
        (model_dir / "config.json").write_text("[1, 2, 3]")
    elif how == "config_other_npix":
        cfg = json.loads((model_dir / "config.json").read_text())
        (model_dir / "config.json").write_text(json.dumps({**cfg, "npix": cfg["npix"] + 1}))
    elif how == "pickled_object":   # what weights_only=True exists to refuse
        torch.save({"state": collections.OrderedDict(), "obj": torch.nn.Linear(2, 2)}, model_dir / "weights.pt")
    elif how == "weights_not_a_dict":
        torch.save([1, 2, 3], model_dir / "weights.pt")


@pytest.mark.parametrize("how", ["truncated_weights", "garbage_config", "config_not_an_object",
                                 "config_other_npix", "pickled_object", "weights_not_a_dict"])
def test_damaged_checkpoint(files, vae_model, tmp_path, capsys, how):
    model = tmp_path / "model"
    model.mkdir()
    for p in vae_model.iterdir():
        (model / p.name).write_bytes(p.read_bytes())
    damage(model, how)
    code, _, err = run(capsys, "denoise", model, files["stars"], "-o", tmp_path / "out.h5")
    assert code == 2 and one_error_line(err) and str(model) in err
    assert not (tmp_path / "out.h5").exists()


def test_data_not_covering_the_model_grid_is_exit_2(files, vae_model, tmp_path, capsys):
    for cmd in ("denoise", "encode"):
        out = tmp_path / "out.h5"
        code, _, err = run(capsys, cmd, vae_model, files["other_grid"], "-o", out)
        assert code == 2 and one_error_line(err) and "cover" in err and "4000.0-5998.7 A" in err
        assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_data_covering_the_model_grid_are_resampled_onto_it(files, vae_model, tmp_path, capsys):
    out = tmp_path / "out.h5"
    code, _, err = run(capsys, "denoise", vae_model, files["finer_grid"], "-o", out)
    assert code == 0 and "specae: warning: spectra resampled" in err
    res = read_h5(out)
    np.testing.assert_allclose(res.wave, WAVE, rtol=1e-12)
    assert res.flux.shape == (5, WAVE.size) and np.isfinite(res.flux).all()


def test_output_directory_missing(files, vae_model, tmp_path, capsys):
    code, _, err = run(capsys, "denoise", vae_model, files["stars"], "-o", tmp_path / "no" / "out.h5")
    assert code == 2 and one_error_line(err)


def test_empty_input_file_gives_an_empty_result(files, vae_model, tmp_path, capsys):
    # zero spectra: a valid, empty result with the same layout (a pipeline step with nothing to do)
    for cmd, names in (("denoise", ("flux", "flux_sigma", "input_mask")), ("encode", ("latent_mean", "latent_std", "latent_cov"))):
        out = tmp_path / f"{cmd}.h5"
        code, stdout, err = run(capsys, cmd, vae_model, files["empty"], "-o", out)
        assert code == 0 and f"{cmd}d 0 spectra" in stdout and err == ""
        with h5py.File(out) as f:
            assert all(f[n].shape[0] == 0 for n in names) and f["ids"].shape == (0,)
    code, _, err = run(capsys, "train", files["empty"], "-o", tmp_path / "m", "--epochs", "1", "--quiet")
    assert code == 2 and one_error_line(err)


def test_subprocess_error_has_no_traceback(files, tmp_path):
    (tmp_path / "notamodel").mkdir()
    r = subprocess.run([sys.executable, "-m", "specae.cli", "denoise", str(tmp_path / "notamodel"),
                        str(files["stars"]), "-o", str(tmp_path / "out.h5")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("specae: error: ") and not (tmp_path / "out.h5").exists()


# ------------------------------------------------------------------------------------------------
# demo


def test_demo_trains_the_epochs_asked_and_reports_its_time(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)   # the demo reads the bundled ./data set when it is there
    out = tmp_path / "demo"
    # a budget as well, for the calibration's sake: far more than 2 epochs need, so the epochs stop training
    code, stdout, _ = run(capsys, "demo", "-o", out, "--epochs", "2", "--max-minutes", "0.5")
    assert code == 0
    for name in ("summary.txt", "denoised.png", "training.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "denoised.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"config.json", "weights.pt"} <= {p.name for p in (out / "model").iterdir()}
    summary = (out / "summary.txt").read_text()
    assert summary.strip() == stdout.strip() and "training: 2 epochs in " in summary and "stopped by epochs" in summary
    took = float(re.search(r"the demo took ([\d.]+) min", summary).group(1))
    assert 0 <= took < 5
    assert "RMSE" in summary and "nan" not in summary.lower()
    assert not [p for p in out.rglob("*.tmp")]
    assert not (out / "data").exists()   # the bundled set was used, not regenerated


def test_denoise_writes_a_pixel_covariance_that_gives_back_each_sigma(files, vae_model, tmp_path, capsys):
    from specae.denoise import PixelCovariance

    out = tmp_path / "cov.h5"
    assert run(capsys, "denoise", vae_model, files["stars"], "-o", out, "--pixel-covariance")[0] == 0
    with h5py.File(out) as f:
        sigma = f["flux_sigma"][()]
        cov = PixelCovariance(f["flux_cov_factor"][()], f["flux_cov_diag"][()], f["flux_cov_band"][()],
                              f["flux_cov_pivots"][()], float(f["flux_cov_off"][0]))
    assert cov.factor.shape == (30, WAVE.size, 4)                 # 3 latents and the amplitude
    for pixel in (0, 50, WAVE.size - 1):
        one = np.zeros_like(sigma)
        one[:, pixel] = 1
        np.testing.assert_allclose(np.sqrt(cov.sum_variance(one)), sigma[:, pixel], rtol=1e-3)
    # neighbouring pixels' errors are correlated: a sum of 20 has more variance than its pixels' alone
    band = np.zeros_like(sigma)
    band[:, 40:60] = 1
    assert np.all(cov.sum_variance(band) > (sigma[:, 40:60].astype(np.float64) ** 2).sum(1))


def test_calibrate_refits_the_error_model_on_other_spectra_without_retraining(files, vae_model, tmp_path, capsys):
    src = read_h5(files["stars"])
    loud = tmp_path / "loud.h5"                                   # a survey whose stated noise is 20 % too small
    write_h5(Spectra(src.wave, src.flux, src.ivar * 1.25 ** 2, src.mask, src.labels, src.ids), loud)
    before = {p.name: p.read_bytes() for p in vae_model.iterdir()}
    new, same = tmp_path / "recal", tmp_path / "same"
    code, out, _ = run(capsys, "calibrate", vae_model, loud, "-o", new)
    assert code == 0 and "of 30 spectra" in out and "noise_scale" in out
    assert run(capsys, "calibrate", vae_model, files["stars"], "-o", same)[0] == 0
    assert {p.name: p.read_bytes() for p in vae_model.iterdir()} == before   # the trained model is untouched
    new_cal, same_cal = (json.loads((d / "calibration.json").read_text()) for d in (new, same))
    # the same spectra with their noise stated 1.25 times too small: the fitted noise scale says so
    assert new_cal["noise_scale"] / same_cal["noise_scale"] == pytest.approx(1.25, rel=0.03)
    assert (new / "weights.pt").is_file() and (new / "config.json").read_bytes() == before["config.json"]
    assert run(capsys, "denoise", new, loud, "-o", tmp_path / "d.h5")[0] == 0


def test_a_model_without_a_calibration_is_refused_with_the_fix(files, vae_model, tmp_path, capsys):
    old = tmp_path / "old"
    old.mkdir()
    for name in ("config.json", "weights.pt"):
        (old / name).write_bytes((vae_model / name).read_bytes())
    code, _, err = run(capsys, "denoise", old, files["stars"], "-o", tmp_path / "d.h5")
    assert code == 2 and one_error_line(err) and "specae calibrate" in err
    assert not (tmp_path / "d.h5").exists()
