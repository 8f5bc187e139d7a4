"""The house (issue #27): the VAE's estimator with the baselines' verbs, built on the library's functions; settings of
removed levers still loading; the CLI's defaults stated once, in the config dataclasses; held-out figures pooled
over parts as over their pixels at once; and the import arrows the design allows."""

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from specae.cli import build_parser, config_values
from specae.data.resample import loglam_grid
from specae.data.synthetic import add_noise, stellar_spectra
from specae.denoise import HeldOut, denoise, encode, heldout, pool
from specae.errors import SpecaeError
from specae.models.config import ModelConfig
from specae.pipeline import Autoencoder
from specae.plumbing import config_from_dict
from specae.regress import RegressorConfig
from specae.train import TrainConfig

WAVE = loglam_grid(4000, 6000, 1e-3)   # 177 pixels
PACKAGE = Path(__file__).resolve().parents[1] / "specae"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stars():
    return add_noise(stellar_spectra(40, seed=1, wave=WAVE), seed=2)


@pytest.fixture(scope="module")
def fitted(stars):
    train, test = stars[:32], stars[32:]
    return Autoencoder(ModelConfig(latent_dim=3), TrainConfig(epochs=2, batch_size=16, progress=False)).fit(train), test


def test_the_estimator_has_the_baselines_verbs_and_gives_the_functions_results(fitted):
    ae, test = fitted
    assert ae.model_.cfg.npix == WAVE.size and ae.model_.cfg.latent_dim == 3   # npix taken from the data
    assert ae.calibration_ is ae.model_.calibration and ae.calibration_.n_pixels > 0
    assert len(ae.history_["epoch"]) == 2 and "validation" not in ae.history_ and ae.history_["check"]["pixels"] > 0
    d, ref = ae.denoise(test), denoise(ae.model_, test)
    assert d.flux.shape == (8, WAVE.size)
    np.testing.assert_array_equal(d.flux, ref.flux)
    np.testing.assert_array_equal(d.sigma, ref.sigma)
    lat = ae.encode(test)
    assert lat.mean.shape == (8, 3) and lat.cov.shape == (8, 3, 3)
    np.testing.assert_array_equal(lat.mean, encode(ae.model_, test).mean)
    np.testing.assert_array_equal(ae.heldout(test, passes=2).z, heldout(ae.model_, test, passes=2).z)


def test_the_estimator_saves_and_loads_the_same_model(fitted, tmp_path):
    ae, test = fitted
    ae.save(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"config.json", "weights.pt", "history.json",
                                                             "calibration.json", "MODEL.md"}
    back = Autoencoder.load(tmp_path / "m")
    assert back.train_cfg == ae.train_cfg and back.model_.cfg == ae.model_.cfg
    assert back.history_["check"] == ae.history_["check"] and back.calibration_ == ae.calibration_
    np.testing.assert_array_equal(back.denoise(test).flux, ae.denoise(test).flux)


def test_an_unfitted_estimator_says_so(stars):
    for verb in ("denoise", "encode", "heldout"):
        with pytest.raises(SpecaeError, match="not fitted yet"):
            getattr(Autoencoder(), verb)(stars)


def test_settings_of_removed_levers_are_ignored_when_a_config_loads():
    old = {"epochs": 7, "noise_augment": 0.5, "free_bits": 0.1, "holdout": 0.1, "monitor": "heldout_chi2_dof"}
    assert config_from_dict(TrainConfig, old) == TrainConfig(epochs=7)
    cfg = ModelConfig.from_json(json.dumps({"npix": 5, "dec_hidden": [8, 16], "z_range": None, "gone": 1}))
    assert cfg == ModelConfig(npix=5, dec_hidden=(8, 16)) and isinstance(cfg.dec_hidden, tuple)


def test_a_model_whose_history_holds_removed_levers_loads(fitted, tmp_path):
    ae, test = fitted
    ae.save(tmp_path / "old")
    history = json.loads((tmp_path / "old" / "history.json").read_text())
    history["train_config"] |= {"noise_augment": 0.3, "free_bits": 0.2, "monitor": "heldout_chi2_dof"}
    (tmp_path / "old" / "history.json").write_text(json.dumps(history))
    back = Autoencoder.load(tmp_path / "old")
    assert back.train_cfg.epochs == 2 and not hasattr(back.train_cfg, "noise_augment")
    assert np.isfinite(back.denoise(test).flux).all()


@pytest.mark.parametrize("command,defaults,same_named", [
    ("train", {**{k: getattr(ModelConfig(), k) for k in ("kind", "latent_dim", "decoder")},
               **{k: getattr(TrainConfig(), k) for k in ("epochs", "batch_size", "lr", "ema", "beta_nll", "seed",
                                                         "num_workers")}}, ("device", "precision", "distributed")),
    ("regress", {k: getattr(RegressorConfig(), k) for k in ("kind", "holdout", "epochs", "seed")}, ("device",)),
])
def test_config_options_state_the_dataclasses_defaults_and_read_back_only_what_is_given(command, defaults, same_named):
    """Each config option is None unless given, its help shows the dataclass's default, and `config_values` reads
    back the given ones only (never an option that merely shares a field's name, like regress --batch-size)."""
    parser = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    formatter = parser._get_formatter()
    shown = {a.dest: formatter._expand_help(a) for a in parser._actions if hasattr(a, "config_default")}
    assert set(shown) == set(defaults)
    for name, value in defaults.items():
        assert shown[name].endswith(f"(default {value})"), (name, shown[name])
    cls = TrainConfig if command == "train" else RegressorConfig
    words = ["x.h5", "-o", "m"] if command == "train" else ["model", "x.h5", "-o", "reg"]
    args = parser.parse_args(words)
    assert all(getattr(args, name) is None for name in defaults)
    assert set(config_values(args, cls, *same_named)) <= {"device", "precision", "distributed"}
    args = parser.parse_args([*words, "--epochs", "3", "--seed", "5", "--batch-size", "32"])
    given = config_values(args, cls, *same_named)
    assert given["epochs"] == 3 and given["seed"] == 5
    assert ("batch_size" in given) == (command == "train")   # regress --batch-size is the encoding's, not the map's
    assert f"(default {defaults['epochs']})" in parser.format_help()


def test_held_out_figures_pooled_over_parts_are_those_of_all_their_pixels():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.3, (10, 50))
    z[rng.random(z.shape) < 0.2] = np.nan
    z[3] = np.nan                                   # a spectrum without a scored pixel
    whole = HeldOut(z, z, z).pooled()
    parts = [HeldOut(z[a:b], z[a:b], z[a:b]).pooled() for a, b in ((0, 2), (2, 7), (7, 10))]
    pooled = pool(parts)
    assert pooled["pixels"] == whole["pixels"] == np.isfinite(z).sum() and pooled["spectra"] == whole["spectra"] == 9
    for key in ("within_1sigma", "within_2sigma", "chi2_dof"):
        assert pooled[key] == pytest.approx(whole[key], rel=1e-12)
    assert np.isnan(pool([HeldOut(z[3:4], z[3:4], z[3:4]).pooled()])["chi2_dof"])


def imported(path: Path) -> set[str]:
    """The specae modules a source file imports (at any level of it)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("specae"):
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("specae")}
    return names


@pytest.mark.parametrize("part,forbidden", [
    ("models", ("specae.data", "specae.plumbing.atomic_path", "specae.checkpoints", "specae.model_dir")),
    ("engine", ("specae.data",)),
    ("train.py", ("specae.denoise", "specae.calibration", "specae.uncertainty", "specae.errormodel",
                  "specae.pipeline", "specae.regress", "specae.latent")),
])
def test_no_import_arrow_the_design_forbids(part, forbidden):
    """Models see tensors (no files, no data), the engine trains on sources it is given, training knows nothing
    of calibration or denoising (specae.pipeline puts them in order)."""
    files = sorted((PACKAGE / part).rglob("*.py")) if (PACKAGE / part).is_dir() else [PACKAGE / part]
    arrows = [(f.name, m) for f in files for m in imported(f) if m.startswith(forbidden)]
    assert files and not arrows
    if part == "models":   # and they write no files
        assert not [f.name for f in files if any(w in f.read_text() for w in ("torch.save(", "write_text(", "open("))]
