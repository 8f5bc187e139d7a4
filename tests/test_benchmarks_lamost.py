"""The LAMOST benchmark (benchmarks/lamost.py) at a tiny size on the LAMOST files of ../shared/data."""

import json

import pytest

from benchmarks import lamost

from .conftest import shared_dir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_thread):
    shared_dir("lamost")
    argv = ["--quick", "--pixels", "300", "--folds", "2", "--epochs", "1", "--latent-dim", "3",
            "--results-dir", str(tmp_path_factory.mktemp("results"))]
    return json.loads(lamost.main(argv)["lamost-quick.json"].read_text())


def test_every_spectrum_is_tested_once_by_a_model_that_never_saw_it(tiny):
    folds = tiny["figures"]["folds"]
    assert sum(f["test"] for f in folds) == tiny["figures"]["n_spectra"] == 276
    for f in folds:   # each fold trains and validates on the others' spectra only
        assert f["train"] + f["val"] == 276 - f["test"]


def test_held_out_pixels_of_specae_and_pca_on_the_same_pixels(tiny):
    vae, pca = tiny["table"]
    assert vae["method"] == "specae VAE" and pca["method"].startswith("weighted PCA")
    assert vae["held-out pixels"] == pca["held-out pixels"] > 276 * 200
    for row in (vae, pca):
        assert 0 < row["in ±1σ"] < row["in ±2σ"] <= 1 and row["chi²/dof"] > 0
        assert row["error / noise"] >= 0.9   # the noise floor is 1: a prediction cannot beat the noise by much


def test_every_catalogue_star_gets_each_label_with_a_sigma(tiny):
    labels = tiny["tables"]["Catalogue labels of the test folds' stars"]
    assert [r["label"] for r in labels] == ["teff", "logg", "feh"]
    for r in labels:
        # in this window one star has no valid pixel: no estimate, counted apart
        assert r["stars"] + r["no estimate"] == tiny["figures"]["labelled"] == 131 and r["no estimate"] <= 2
        assert r["median sigma"] > 0 and 0 <= r["in ±1σ"] <= r["in ±2σ"] <= 1
