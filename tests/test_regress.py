"""Label regression from latents: ridge and k-fold CV in numpy, missing labels, sigma calibration (on
latents with a known noise, and on the Payne emulator), persistence that never runs code."""

import json
import pickle

import numpy as np
import pytest
import torch

from specae.baselines import WeightedPCA
from specae.denoise import Latents
from specae.errors import SpecaeError
from specae.regress import (LabelRegressor, RegressorConfig, cv_r2, kfold, label_scores, model_fingerprint, r2,
                            ridge_fit)
from tests.test_latent import payne_case, star_case

pytestmark = pytest.mark.usefixtures("one_thread")


def test_ridge_and_kfold():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((300, 3))
    y = 2 + z @ [1.0, -2.0, 0.5] + 0.5 * rng.standard_normal(300)
    coef, b = ridge_fit(z, y, alpha=0.0)
    want = np.linalg.lstsq(np.column_stack([np.ones(300), z]), y, rcond=None)[0]
    np.testing.assert_allclose([b, *coef], want)
    shrunk, _ = ridge_fit(z, y, alpha=1e4)
    assert np.linalg.norm(shrunk) < 0.2 * np.linalg.norm(coef)
    folds = kfold(300, 5, seed=1)
    assert sorted(np.concatenate(folds).tolist()) == list(range(300)) and {len(f) for f in folds} == {60}
    assert cv_r2(z, y) == pytest.approx(5.25 / 5.5, abs=0.02)              # signal var 5.25, noise 0.25
    assert cv_r2(z, rng.standard_normal(300)) < 0.02                        # no signal: no skill out of fold
    with pytest.raises(SpecaeError, match="at least 5 rows"):
        kfold(4)


def noisy_latents(n: int, seed: int):
    """Latents measured with a known per-spectrum noise (cov = s^2 I, s 0.02-0.6) and labels that depend on
    the true latents nonlinearly, with an intrinsic scatter of 0.1."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 3))
    s = 0.02 * 30 ** rng.uniform(size=n)
    y = np.column_stack([2 * z[:, 0] + np.sin(2 * z[:, 1]), 1.5 * np.tanh(2 * z[:, 2]) + 0.5 * z[:, 0]])
    y += 0.1 * rng.standard_normal((n, 2))
    cov = s[:, None, None] ** 2 * np.eye(3)
    return Latents(z + s[:, None] * rng.standard_normal((n, 3)), cov, "laplace"), y, s


@pytest.mark.parametrize("kind", ["ridge", "mlp"])
def test_sigmas_cover_68_percent_for_precise_and_noisy_latents(kind):
    lat, y, _ = noisy_latents(2000, seed=0)
    y[::4, 1] = np.nan                                                       # a label missing for a quarter
    y[1::50] = np.nan                                                        # spectra with no label at all
    reg = LabelRegressor(RegressorConfig(kind=kind, progress=False, epochs=60)).fit_latents(lat, y, ["A", "B"])
    assert reg.metrics_["n_train"] + reg.metrics_["n_calibration"] == 2000 - 40
    test, truth, s = noisy_latents(2000, seed=1)
    pred = reg.predict_latents(test)
    scores = label_scores(pred, {"A": truth[:, 0], "B": truth[:, 1]})
    assert scores["A"]["r2"] > (0.75 if kind == "ridge" else 0.9)
    if kind == "mlp":
        assert scores["B"]["r2"] > 0.85 > scores["B"]["r2"] - 0.1 > 0         # beyond ridge's reach
    for j, name in enumerate(("A", "B") if kind == "mlp" else ("A",)):     # B: a linear map is misspecified
        inside = np.abs(pred.mean[:, j] - truth[:, j]) <= pred.sigma[:, j]
        for sel in (s < 0.1, s > 0.2):                                       # precise and noisy latents alike
            assert 0.60 <= inside[sel].mean() <= 0.76, (name, inside[sel].mean())
    assert np.all(pred.sigma_latent[s > 0.3].mean(0) > pred.sigma_latent[s < 0.05].mean(0))


def test_missing_labels_are_skipped_for_that_label_only():
    lat, y, _ = noisy_latents(400, seed=2)
    y_nan = y.copy()
    y_nan[::3, 1] = np.nan
    cfg = RegressorConfig(kind="ridge", holdout=0.25)
    full = LabelRegressor(cfg).fit_latents(lat, y, ["A", "B"])
    part = LabelRegressor(cfg).fit_latents(lat, y_nan, ["A", "B"])
    torch.testing.assert_close(full.map_.weight[0], part.map_.weight[0])   # A saw the same spectra
    assert not torch.allclose(full.map_.weight[1], part.map_.weight[1])
    assert part.metrics_["B"]["n"] < part.metrics_["A"]["n"] == 100
    y_nan[:395, 1] = np.nan
    with pytest.raises(SpecaeError, match="label 'B'"):
        LabelRegressor(cfg).fit_latents(lat, y_nan, ["A", "B"])


@pytest.mark.parametrize("kind", ["ridge", "mlp"])
def test_spectra_without_latents_are_left_out_of_the_fit_like_missing_labels(kind):
    """A labelled spectrum without a valid pixel has NaN latents (encode): the fit leaves it out instead of
    diverging (the MLP's loss went non-finite on two such LAMOST spectra)."""
    lat, y, _ = noisy_latents(300, seed=3)
    mean, cov = lat.mean.copy(), lat.cov.copy()
    mean[::10], cov[::10] = np.nan, np.inf * np.eye(3)
    cfg = RegressorConfig(kind=kind, progress=False, epochs=20)
    reg = LabelRegressor(cfg).fit_latents(Latents(mean, cov, "laplace"), y, ["A", "B"])
    assert reg.metrics_["n_train"] + reg.metrics_["n_calibration"] == 270
    pred = reg.predict_latents(Latents(mean, cov, "laplace"))
    assert np.isnan(pred.mean[::10]).all() and np.isinf(pred.sigma[::10]).all()
    keep = np.isfinite(mean).all(1)
    assert np.isfinite(pred.mean[keep]).all() and np.isfinite(pred.sigma[keep]).all()


def test_payne_labels_beat_ridge_on_pca_with_calibrated_sigmas():
    case = payne_case()
    train, test, names = case["train"], case["test"], ["TEFF", "LOGG", "FE_H"]
    reg = LabelRegressor(RegressorConfig(kind="mlp", progress=False)).fit(case["model"], train, names, case["calib"])
    assert reg.metrics_["n_calibration"] == 300
    pred = reg.predict(case["model"], test)
    scores = label_scores(pred, test.labels)
    pca = WeightedPCA(case["model"].cfg.latent_dim).fit(train)               # as many numbers per spectrum
    c_train, c_test = pca.encode(train)[0], pca.encode(test)[0]
    for name in names:
        coef, b = ridge_fit(c_train, train.labels[name])
        baseline = r2(b + c_test @ coef, test.labels[name])
        assert scores[name]["r2"] > max(baseline, 0.1), (name, scores[name]["r2"], baseline)
    assert scores["TEFF"]["r2"] > 0.8 and scores["FE_H"]["r2"] > 0.7
    # Coverage is checked where the latents pin the label down: this tiny model barely knows LOGG, and errors
    # of a label drawn uniformly (the mock's LOGG) fall within +-1 sigma of a matching Gaussian only 58 % of the time.
    known = [0, 2]
    truth = np.stack([test.labels[n] for n in names], 1)
    inside = (np.abs(pred.mean - truth) <= pred.sigma)[:, known]
    assert np.all((inside.mean(0) >= 0.60) & (inside.mean(0) <= 0.76)), inside.mean(0)
    snr = test.labels["SNR"]
    for sel in (snr < 28, snr >= 28):   # ~150 spectra each, calibrated on 300: +-4 % binomial noise on each side
        assert np.all((inside[sel].mean(0) > 0.55) & (inside[sel].mean(0) < 0.82)), inside[sel].mean(0)


def test_save_load_round_trip_and_refusals(tmp_path):
    case = star_case()
    model, train = case["model"], case["train"]
    reg = LabelRegressor(RegressorConfig(kind="mlp", epochs=5, progress=False)).fit(model, train[:200], ["TEFF"])
    reg.save(tmp_path / "reg")
    back = LabelRegressor.load(tmp_path / "reg")
    a, b = reg.predict(model, train[200:220]), back.predict(model, train[200:220])
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.sigma, b.sigma)
    assert back.fingerprint_ == model_fingerprint(model) and back.names_ == ["TEFF"]

    twin = type(model)(model.cfg, model.wave)
    with pytest.raises(SpecaeError, match="another model"):
        back.predict(twin, train[:5])

    info = json.loads((tmp_path / "reg" / "regressor.json").read_text())
    info["config"]["weights_path"] = str(tmp_path / "elsewhere.pt")         # unknown keys are ignored, never followed
    (tmp_path / "reg" / "regressor.json").write_text(json.dumps(info))
    assert LabelRegressor.load(tmp_path / "reg").cfg.kind == "mlp"

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    (tmp_path / "reg" / "weights.pt").write_bytes(pickle.dumps({"body.0.weight": Evil()}))
    with pytest.raises(SpecaeError, match="damaged or incompatible regressor"):
        LabelRegressor.load(tmp_path / "reg")
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(SpecaeError, match="missing regressor.json"):
        LabelRegressor.load(tmp_path)
    with pytest.raises(SpecaeError, match="unknown regressor"):
        LabelRegressor(RegressorConfig(kind="forest"))
