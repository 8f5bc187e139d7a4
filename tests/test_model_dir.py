"""Model directories (issue #26): what a finished run leaves (weights, config, calibration, history, the card
MODEL.md; no training state unless --keep-state) and its size, the card's figures, `specae info`, an existing
model directory refused unless --resume or --overwrite, --overwrite replacing a model only whole, and the
README's Python example running as written."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from specae.cli import main
from specae.data.hdf5 import read_h5, write_h5
from specae.data.resample import loglam_grid
from specae.data.synthetic import add_noise, stellar_spectra
from specae.model_dir import save_model
from specae.models import ModelConfig, SpectrumVAE
from tests.conftest import SHARED, one_error_line, run

WAVE = loglam_grid(4000, 6000, 1e-3)   # 177 pixels
ROOT = Path(__file__).resolve().parents[1]
FINISHED = {"config.json", "weights.pt", "history.json", "calibration.json", "MODEL.md"}
TRAIN = ["--epochs", "2", "--latent-dim", "3", "--batch-size", "16", "--quiet"]

pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(d):
    return {p.name: p.read_bytes() for p in d.iterdir()}


@pytest.fixture(scope="module")
def stars(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "stars.h5"
    write_h5(add_noise(stellar_spectra(30, seed=1, wave=WAVE), seed=2), path)
    return path


@pytest.fixture(scope="module")
def model(stars, tmp_path_factory):
    m = tmp_path_factory.mktemp("run") / "model"
    assert main(["train", str(stars), "-o", str(m), *TRAIN]) == 0
    return m


def test_a_finished_run_leaves_weights_config_calibration_history_and_card_only(model):
    assert {p.name for p in model.iterdir()} == FINISHED   # train_state.pt removed, no temporaries
    blob = torch.load(model / "weights.pt", weights_only=True)
    tensors = list(blob["state"].values()) + [blob["wave"]]
    layers = {k for k, t in blob["state"].items() if t.dtype == torch.float16}
    assert layers == {k for k in blob["state"] if k.endswith(".weight") and ("encoder." in k or ".body." in k)}
    assert all(t.dtype == torch.float32 for k, t in blob["state"].items() if k not in layers and "loglam" not in k)
    # the file is the tensors' bytes and little else: nothing but the model is stored
    assert (model / "weights.pt").stat().st_size < sum(t.numel() * t.element_size() for t in tensors) + 64 * 1024


def test_a_6_latent_model_of_a_4000_pixel_grid_is_under_20_mb(tmp_path):
    """The default MLP decoder's output layer (1024 x 2 x npix, float16) is most of it: 18.7 MB for 4000 pixels
    (37 MB in float32). The conv decoder's per-pixel layer is far smaller."""
    wave = loglam_grid(3800, 3800 * 10 ** (4000e-4), 1e-4)[:4000]
    sizes = {}
    for decoder in ("mlp", "conv"):
        m = SpectrumVAE(ModelConfig(npix=4000, latent_dim=6, decoder=decoder), wave)
        save_model(m, tmp_path / decoder)
        sizes[decoder] = (tmp_path / decoder / "weights.pt").stat().st_size
    assert 17e6 < sizes["mlp"] < 20e6 and sizes["conv"] < 3e6, sizes


def test_a_model_is_its_rounded_weights_in_memory_and_on_disk(model, stars, tmp_path):
    # fit ends with the layers' weights rounded to float16 values, as saved: the model calibrated and used in
    # memory is the one on disk, to the bit; a float32 model from elsewhere is rounded on loading
    from specae.denoise import denoise
    from specae.model_dir import load_model, round_weights

    loaded = load_model(model)
    for w in (loaded.decoder.body.out.weight, loaded.encoder.mlp[0].weight):
        assert torch.equal(w, w.half().float())
    assert not torch.equal(loaded.decoder.linear, loaded.decoder.linear.half().float())   # the linear model: float32
    save_model(loaded, tmp_path / "again")
    first, again = (torch.load(d / "weights.pt", weights_only=True)["state"] for d in (model, tmp_path / "again"))
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    spectra = read_h5(stars)
    a = denoise(loaded, spectra)
    b = denoise(load_model(tmp_path / "again"), spectra)
    np.testing.assert_array_equal(a.flux, b.flux)
    np.testing.assert_array_equal(a.sigma, b.sigma)
    with torch.no_grad():
        loaded.decoder.body.out.weight.add_(1e-5)    # not a float16 value any more
    rounded = round_weights(loaded).decoder.body.out.weight
    assert torch.equal(rounded, rounded.half().float())


def test_the_card_states_the_data_and_the_measured_figures(model, stars):
    card = (model / "MODEL.md").read_text()
    history = json.loads((model / "history.json").read_text())
    cal = json.loads((model / "calibration.json").read_text())
    assert card.startswith("# specae model: VAE, 3 latents, mlp decoder")
    assert "- files: stars.h5\n" in card and "- spectra: 27 training, 3 validation\n" in card
    assert f"- grid: {WAVE[0]:.2f}-{WAVE[-1]:.2f} A, 177 pixels, log10 step 0.001\n" in card
    assert "- redshift: not used" in card and "specae 0.1.0" in card
    # S/N: each training spectrum's median over its valid pixels, computed here from the file
    train, _ = read_h5(stars).drop_empty().split((0.9, 0.1), seed=0)
    per = [np.median(np.abs(f[i > 0]) * np.sqrt(i[i > 0])) for f, i in zip(train.flux, train.ivar)]
    assert f"S/N per pixel (each spectrum's median): {min(per):.3g}-{max(per):.3g}, median {np.median(per):.3g}, " \
           "over 27 training spectra" in card
    assert f"best validation chi2/dof: {history['best_val_chi2_dof']:.4f} at epoch {history['best_epoch'] + 1} of 2" in card
    assert f"mean -log L {cal['heldout_nll']:.4f} per held-out pixel, fitted on {cal['n_pixels']} pixels of 3 spectra" in card
    check = history["check"]
    assert check["spectra"] == 3 and check["pixels"] == cal["n_pixels"]   # every valid pixel, hidden once
    assert 0.4 < check["within_1sigma"] < check["within_2sigma"] <= 1 and check["within_2sigma"] > 0.8
    assert f"{100 * check['within_1sigma']:.1f} % within 1 sigma" in card


def test_info_prints_the_card_and_refuses_what_is_not_a_model(model, tmp_path, capsys):
    code, out, err = run(capsys, "info", model)
    assert code == 0 and out == (model / "MODEL.md").read_text() and err == ""
    for target in (tmp_path, tmp_path / "missing", model / "config.json"):
        code, out, err = run(capsys, "info", target)
        assert code == 2 and one_error_line(err) and "not a specae model" in err and out == ""
    # a model without a card (older, or not calibrated): one is made from what the directory holds
    old = tmp_path / "old"
    old.mkdir()
    for name in ("config.json", "weights.pt", "history.json"):
        shutil.copy(model / name, old / name)
    code, out, _ = run(capsys, "info", old)
    assert code == 0 and "- spectra: 27 training, 3 validation" in out and "not calibrated" in out
    assert sorted(p.name for p in old.iterdir()) == ["config.json", "history.json", "weights.pt"]


def test_calibrate_rewrites_the_card(model, stars, tmp_path, capsys):
    new = tmp_path / "recal"
    assert run(capsys, "calibrate", model, stars, "-o", new)[0] == 0
    cal = json.loads((new / "calibration.json").read_text())
    card = (new / "MODEL.md").read_text()
    assert cal["n_spectra"] == 30
    assert f"fitted on {cal['n_pixels']} pixels of 30 spectra" in card and "held-out check on 30 of those" in card
    assert "- spectra: 27 training, 3 validation" in card   # the training run's, carried over


def test_calibrate_refuses_an_existing_model_and_overwrites_only_when_asked(model, stars, tmp_path, capsys):
    m = tmp_path / "m"
    shutil.copytree(model, m)
    (m / "notes.txt").write_text("mine")
    before, other = snapshot(m), snapshot(model)
    for extra in ((), ("--overwrite",)):   # the model itself: an input, never overwritten
        code, _, err = run(capsys, "calibrate", m, stars, "-o", m, *extra)
        assert code == 2 and one_error_line(err) and "would replace the input" in err, err
    code, _, err = run(capsys, "calibrate", model, stars, "-o", m)   # another model
    assert code == 2 and one_error_line(err) and "already holds a model" in err and "--overwrite" in err, err
    assert snapshot(m) == before and snapshot(model) == other
    cal = json.loads((m / "calibration.json").read_text())
    assert run(capsys, "calibrate", model, tmp_path / "absent.h5", "-o", m, "--overwrite")[0] == 2
    assert snapshot(m) == before                                   # a failed run leaves it as it was
    assert run(capsys, "calibrate", model, stars, "-o", m, "--overwrite")[0] == 0
    assert {p.name for p in m.iterdir()} == FINISHED | {"notes.txt"} and (m / "notes.txt").read_text() == "mine"
    assert json.loads((m / "calibration.json").read_text())["n_spectra"] == 30 != cal["n_spectra"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no staging directory left


def test_calibrate_takes_a_time_budget(model, stars, tmp_path, capsys, monkeypatch):
    import specae.pipeline as pipeline

    asked, real = [], pipeline.fit_calibration
    monkeypatch.setattr(pipeline, "fit_calibration", lambda *a, **k: asked.append(k["seconds"]) or real(*a, **k))
    assert run(capsys, "calibrate", model, stars, "-o", tmp_path / "a", "--max-minutes", "0.5")[0] == 0
    assert run(capsys, "calibrate", model, stars, "-o", tmp_path / "b")[0] == 0
    assert asked == [30.0, None]
    assert json.loads((tmp_path / "a" / "calibration.json").read_text())["n_spectra"] == 30   # 30 s: all of them
    with pytest.raises(SystemExit) as e:   # refused where it is parsed
        run(capsys, "calibrate", model, stars, "-o", tmp_path / "c", "--max-minutes", "0")
    err = capsys.readouterr().err
    assert e.value.code == 2 and one_error_line(err) and "--max-minutes" in err and not (tmp_path / "c").exists()


def test_training_into_an_existing_model_is_refused_before_any_work(model, stars, tmp_path, capsys):
    before = snapshot(model)
    for data in (stars, tmp_path / "no-such-file.h5"):   # refused before the data are even looked at
        code, out, err = run(capsys, "train", data, "-o", model, *TRAIN)
        assert code == 2 and one_error_line(err) and "already holds a model" in err and "--overwrite" in err, err
    with pytest.raises(SystemExit) as e:   # refused where it is parsed
        run(capsys, "train", stars, "-o", model, *TRAIN, "--resume", "--overwrite")
    err = capsys.readouterr().err
    assert e.value.code == 2 and one_error_line(err) and "--overwrite: not allowed with argument --resume" in err
    assert snapshot(model) == before


def test_overwrite_replaces_the_model_whole_and_only_when_written(model, stars, tmp_path, capsys, monkeypatch):
    import specae.pipeline as pipeline

    m = tmp_path / "m"
    shutil.copytree(model, m)
    (m / "notes.txt").write_text("mine")
    before = snapshot(m)

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "fit_calibration", interrupted)
        code, _, err = run(capsys, "train", stars, "-o", m, *TRAIN, "--overwrite", "--latent-dim", "2")
    assert code != 0 and "interrupted" in err
    assert snapshot(m) == before and sorted(p.name for p in tmp_path.iterdir()) == ["m"]   # nothing staged is left

    code, out, _ = run(capsys, "train", stars, "-o", m, *TRAIN, "--overwrite", "--latent-dim", "2")
    assert code == 0 and str(m) in out
    assert {p.name for p in m.iterdir()} == FINISHED | {"notes.txt"} and (m / "notes.txt").read_text() == "mine"
    assert json.loads((m / "config.json").read_text())["latent_dim"] == 2
    assert "2 latents" in (m / "MODEL.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_keep_state_then_resume_and_an_interrupted_run_keeps_its_state(stars, tmp_path, capsys, monkeypatch):
    import specae.pipeline as pipeline

    m = tmp_path / "m"
    code, out, _ = run(capsys, "train", stars, "-o", m, *TRAIN, "--epochs", "1", "--keep-state")
    assert code == 0 and "training state kept" in out and {p.name for p in m.iterdir()} == FINISHED | {"train_state.pt"}
    code, out, err = run(capsys, "train", stars, "-o", m, *TRAIN, "--epochs", "2", "--resume")
    assert code == 0, err
    assert json.loads((m / "history.json").read_text())["epoch"] == [0, 1]
    assert {p.name for p in m.iterdir()} == FINISHED   # this run was not told to keep it
    code, _, err = run(capsys, "train", stars, "-o", m, *TRAIN, "--epochs", "3", "--resume")
    assert code == 2 and one_error_line(err) and "--keep-state" in err

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    fresh = tmp_path / "fresh"
    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "fit_calibration", interrupted)
        assert run(capsys, "train", stars, "-o", fresh, *TRAIN, "--epochs", "1")[0] != 0
    assert (fresh / "train_state.pt").is_file() and not (fresh / "MODEL.md").exists()
    code, _, err = run(capsys, "train", stars, "-o", fresh, *TRAIN, "--epochs", "2", "--resume")
    assert code == 0, err
    assert {p.name for p in fresh.iterdir()} == FINISHED


def readme_python() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_example_runs_as_written(tmp_path, monkeypatch):
    code = readme_python()
    for folder in sorted(set(re.findall(r'"(\w+)/[^"]*\.fits"', code))):
        data = SHARED / folder
        if not data.is_dir():
            pytest.skip(f"reference data folder {data} is absent (it sits beside the checkout in CI)")
        (tmp_path / folder).symlink_to(data)   # the example's relative paths, without copying the data
    monkeypatch.chdir(tmp_path)
    names = {}
    exec(compile(code, "README.md", "exec"), names)
    result, check = names["result"], names["check"]
    assert result.flux.shape == (len(names["test"]), names["spectra"].npix) and np.isfinite(names["band_var"]).all()
    assert (tmp_path / "model" / "MODEL.md").is_file() and not (tmp_path / "model" / "train_state.pt").exists()
    assert np.all(np.isfinite(check.within(1)))
