"""Latent-space tools: label directions (checked against the Payne emulator's own derivative and the
synthetic generator's finite differences), traversal, interpolation, arithmetic, outlier scores, and the
latent commands end to end.

Two tiny VAEs are trained once per session (`payne_case`, `star_case`) and shared with test_regress.py.
"""

import functools
import json
import pickle

import h5py
import numpy as np
import pytest
import torch

from specae.cli import main
from specae.data.hdf5 import read_h5, write_h5
from specae.data.resample import loglam_grid
from specae.data.spectra import Spectra
from specae.data.synthetic import add_noise, galaxy_spectra, stellar_spectra
from specae.denoise import Latents, encode
from specae.errors import SpecaeError
from specae.latent import (LatentDensity, arithmetic, decode, directions, interpolate, load_directions, outlier_scores,
                           save_directions, slerp, traverse)
from specae.model_dir import save_model
from specae.models.config import ModelConfig
from specae.train import TrainConfig
from tests.conftest import SHARED, fit_calibrated, shared_dir

pytestmark = pytest.mark.usefixtures("one_thread")

PAYNE_WINDOW = slice(2000, 2400)      # 400 px around 15.6 um: few bad pixels, Teff- and [Fe/H]-sensitive lines
STAR_WAVE = loglam_grid(4800, 6000, 2e-4)   # 485 px: Mg b, Na D, many metal lines
TINY = dict(latent_dim=4, dec_hidden=(32, 128), enc_channels=(8, 8, 8), enc_hidden=32, enc_pca=8)


def train_tiny(spectra: Spectra, epochs: int = 30) -> dict:
    torch.manual_seed(0)
    tr, va = spectra.split((0.85, 0.15), seed=0)
    model, history = fit_calibrated(tr, va, ModelConfig(npix=spectra.npix, **TINY),
                         TrainConfig(epochs=epochs, batch_size=32, lr=2e-3, progress=False))
    return {"model": model, "history": history, "train_latents": encode(model, spectra)}


@functools.cache
def _payne_case():
    from specae.data.payne import PayneEmulator

    torch.set_num_threads(1)
    emu = PayneEmulator(SHARED / "payne").subset(PAYNE_WINDOW)
    train, _ = emu.mock(800, seed=0, snr=(10, 80))
    test, clean = emu.mock(300, seed=1, snr=(10, 80))
    calib, _ = emu.mock(300, seed=2, snr=(10, 80))
    case = train_tiny(train)
    return {**case, "emu": emu, "train": train, "test": test, "clean": clean, "calib": calib,
            "test_latents": encode(case["model"], test)}


def payne_case() -> dict:
    """A 4-latent VAE on 800 emulator spectra (S/N 10-80, masked chunks), their latents, 300 test spectra and
    300 more labelled spectra the VAE never saw (to calibrate label maps)."""
    shared_dir("payne")
    return _payne_case()


@functools.cache
def star_case() -> dict:
    """A 4-latent VAE on 500 synthetic stars (S/N 20-60) and their latents."""
    torch.set_num_threads(1)
    train = add_noise(stellar_spectra(500, seed=1, wave=STAR_WAVE), seed=2, snr=(20, 60))
    return {**train_tiny(train), "train": train}


def same_noise(clean: Spectra, seed: int, snr: float = 30) -> Spectra:
    """Noisy copies at one S/N, no masks: spectra that differ only in what they are."""
    s = add_noise(clean, seed=seed, snr=snr, masked_chunks=False, dead_pixels=False)
    return Spectra(s.wave, s.flux, s.ivar, s.mask)


# -- directions ----------------------------------------------------------------------------------------


def test_directions_recover_a_known_linear_latent_space():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((2000, 4))
    y_a = 5000 + 300 * z[:, 0] + 100 * z[:, 1] + 30 * rng.standard_normal(2000)     # R^2 = 1e5 / (1e5 + 900)
    y_b = z[:, 1] - z[:, 2]
    y_b[::3] = np.nan                                       # missing for a third: skipped for B only
    dirs = directions(z, {"A": y_a, "B": y_b, "NAME": np.array(["x"] * 2000)})
    assert sorted(dirs) == ["A", "B"]                       # text labels are left out
    a, b = dirs["A"], dirs["B"]
    np.testing.assert_allclose(a.coef, [300, 100, 0, 0], atol=3)
    assert a.r2_cv == pytest.approx(1e5 / (1e5 + 900), abs=0.002)
    assert (a.n, b.n) == (2000, 1333) and b.r2_cv > 0.999
    assert a.coef @ a.step == pytest.approx(1.0)            # one unit of the label per step ...
    np.testing.assert_allclose(a.unit, a.coef / np.linalg.norm(a.coef))   # ... along the gradient
    assert b.coef @ (1000 * a.step) == pytest.approx(1.0, abs=0.02)   # 1000 more of A also means 1 more B ...
    orth = directions(z, {"A": y_a, "B": y_b}, orthogonal=True)
    assert orth["A"].coef @ orth["A"].step == pytest.approx(1.0)
    assert orth["B"].coef @ orth["A"].step == pytest.approx(0.0, abs=1e-9)   # ... but not orthogonalised
    assert orth["A"].coef @ orth["B"].step == pytest.approx(0.0, abs=1e-9)
    assert np.linalg.norm(orth["A"].step) >= np.linalg.norm(a.step)         # the shortest step is the plain one
    ok = ~np.isnan(y_b)
    alone = directions(z[ok], {"B": y_b[ok]})["B"]
    np.testing.assert_allclose(b.coef, alone.coef)          # NaN rows did not enter B's fit


def test_directions_refuse_what_they_cannot_fit():
    z = np.random.default_rng(1).standard_normal((50, 2))
    with pytest.raises(SpecaeError, match="only 3 spectra"):
        directions(z, {"A": np.r_[1.0, 2.0, 3.0, np.full(47, np.nan)]})
    with pytest.raises(SpecaeError, match="not in the data"):
        directions(z, {"A": z[:, 0]}, names=["B"])
    three = {k: z @ w for k, w in zip("ABC", np.eye(2).tolist() + [[1.0, 1.0]])}
    with pytest.raises(SpecaeError, match="only 2 latents"):
        directions(z, three, orthogonal=True)
    with pytest.raises(SpecaeError, match="does not vary"):
        directions(z, {"A": np.ones(50)})


def test_directions_round_trip_through_json(tmp_path):
    z = np.random.default_rng(2).standard_normal((100, 3))
    dirs = directions(z, {"A": z[:, 0] + 0.1 * z[:, 1]})
    save_directions(tmp_path / "d.json", dirs, latent_dim=3)
    back, info = load_directions(tmp_path / "d.json")
    assert info["latent_dim"] == 3
    np.testing.assert_allclose(back["A"].step, dirs["A"].step)
    (tmp_path / "bad.json").write_text('{"format": "specae-directions", "labels": {"A": {"coef": [1]}}}')
    with pytest.raises(SpecaeError, match="bad.json"):
        load_directions(tmp_path / "bad.json")


def _strongest_change(d_model, d_true, usable, n=20):
    """Sign agreement (per star and pixel) and the median size ratio at the n pixels where the true change
    is largest on average."""
    idx = np.flatnonzero(usable)[np.argsort(-np.abs(d_true[:, usable]).mean(0))[:n]]
    a, b = d_model[:, idx], d_true[:, idx]
    return np.mean(np.sign(a) == np.sign(b)), np.median(a.mean(0) / b.mean(0))


def test_teff_direction_changes_spectra_as_the_emulator_teff_does():
    from specae.data.payne import LABEL_NAMES

    case = payne_case()
    d = directions(case["train_latents"], case["train"].labels, names=["TEFF", "LOGG", "FE_H"], orthogonal=True)
    assert d["TEFF"].r2_cv > 0.7 and d["FE_H"].r2_cv > 0.5
    z = case["test_latents"].mean
    moved = decode(case["model"], z + 100 * d["TEFF"].step) - decode(case["model"], z)    # +100 K, normalised flux
    labels = np.stack([case["test"].labels[k] for k in LABEL_NAMES], 1)
    flux, jac = case["emu"].jacobian(labels)
    true = 100 * jac[:, :, 0] / np.median(flux, 1, keepdims=True)          # d (flux / median) per +100 K
    agree, ratio = _strongest_change(moved, true, ~case["emu"].bad_pixels)
    assert agree > 0.8
    assert 0.5 < ratio < 2.5           # the ridge slope on noisy latents is attenuated: the step overshoots a little


def test_teff_direction_changes_synthetic_stars_as_the_generator_does():
    case = star_case()
    d = directions(case["train_latents"], case["train"].labels, names=["TEFF"])
    test_clean = stellar_spectra(40, seed=3, wave=STAR_WAVE)
    z = encode(case["model"], same_noise(test_clean, seed=4)).mean
    moved = decode(case["model"], z + 200 * d["TEFF"].step) - decode(case["model"], z)
    lab = {k: test_clean.labels[k] for k in ("TEFF", "LOGG", "FE_H")}
    hotter = stellar_spectra(40, wave=STAR_WAVE, labels={**lab, "TEFF": lab["TEFF"] + 200}).flux
    true = hotter / np.median(hotter, 1, keepdims=True) - test_clean.flux / np.median(test_clean.flux, 1, keepdims=True)
    agree, ratio = _strongest_change(moved, true, np.ones(STAR_WAVE.size, bool))
    assert agree > 0.8 and 0.5 < ratio < 2.0


# -- moving through the latent space -------------------------------------------------------------------


def test_traverse_interpolate_and_slerp():
    model = star_case()["model"]
    za, zb = np.array([1.0, 0, 0, 0]), np.array([0.0, 2, 0, 0])
    z, flux = traverse(model, za, [0, 1, 0, 0], [-1, 0, 2])
    np.testing.assert_allclose(z[:, 1], [-1, 0, 2])
    np.testing.assert_allclose(flux[1], decode(model, za[None])[0], rtol=1e-6)
    z, flux = interpolate(model, za, zb, 5)
    np.testing.assert_allclose(z[2], (za + zb) / 2)
    np.testing.assert_allclose(flux[[0, -1]], decode(model, np.stack([za, zb])), rtol=1e-6)
    z, _ = interpolate(model, za, zb, 5, kind="slerp")
    np.testing.assert_allclose(z[[0, -1]], [za, zb], atol=1e-12)
    angles = np.arctan2(z[:, 1], z[:, 0])
    np.testing.assert_allclose(np.diff(angles), np.pi / 8)                   # equal angular steps ...
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), np.linspace(1, 2, 5))   # ... and norms
    np.testing.assert_allclose(slerp(za, -za, [0.5]), [[0, 0, 0, 0]])        # antiparallel: straight line
    with pytest.raises(SpecaeError, match="unknown interpolation"):
        interpolate(model, za, zb, 3, kind="cubic")
    with pytest.raises(SpecaeError, match="3 dimensions"):
        decode(model, np.zeros((1, 3)))


def test_decoding_a_fitted_posterior_includes_each_spectrum_amplitude():
    case = star_case()
    model, test = case["model"], case["train"][:20]
    lat = encode(model, test)                                     # Laplace: latents and log amplitude
    assert lat.log_amplitude.shape == (20,) and np.any(lat.log_amplitude != 0)
    np.testing.assert_allclose(decode(model, lat), decode(model, lat.mean) * np.exp(lat.log_amplitude)[:, None],
                               rtol=1e-5)
    assert encode(model, test, posterior="encoder").log_amplitude is None   # q(z|x) has no amplitude


def test_latent_arithmetic_moves_a_star_towards_the_emulator_star_with_more_metals():
    case = payne_case()
    lab, z = case["train"].labels, case["train_latents"].mean
    rich, poor = lab["FE_H"] > 0.1, lab["FE_H"] < -0.5
    other = np.flatnonzero(poor & (lab["TEFF"] > 6000) & (lab["SNR"] > 40))[:5]
    z_new, flux = arithmetic(case["model"], z[rich], z[poor], z[other])
    np.testing.assert_allclose(z_new, z[rich].mean(0) - z[poor].mean(0) + z[other].mean(0), rtol=1e-5)
    np.testing.assert_allclose(flux, decode(case["model"], z_new[None])[0], rtol=1e-6)
    # the emulator's spectrum of the C stars with [Fe/H] raised by mean(A) - mean(B) is what the result should be
    from specae.data.payne import LABEL_NAMES

    labels = np.stack([lab[k][other] for k in LABEL_NAMES], 1)
    shifted = labels.copy()
    shifted[:, 2] += lab["FE_H"][rich].mean() - lab["FE_H"][poor].mean()
    emu = case["emu"]
    want = emu.spectra(np.clip(shifted, None, [7000, 5, 0.4, 0.5, 45])).mean(0)
    before = emu.spectra(labels).mean(0)
    good = ~emu.bad_pixels
    lines = good & (np.abs(want - before) > 0.01)                          # the metal lines that should deepen
    assert lines.sum() > 20
    got = flux / np.median(flux) * np.median(want)
    assert np.corrcoef(got[lines] - before[lines], want[lines] - before[lines])[0, 1] > 0.8
    with pytest.raises(SpecaeError, match="at least one spectrum"):
        arithmetic(case["model"], z[:0], z, z)


# -- outlier scores ------------------------------------------------------------------------------------


def test_a_galaxy_and_an_artefact_rank_as_the_top_outliers():
    case = star_case()
    stars = same_noise(stellar_spectra(40, seed=3, wave=STAR_WAVE), seed=4)
    galaxy = same_noise(galaxy_spectra(1, seed=5, wave=STAR_WAVE), seed=6)
    ghost = same_noise(stellar_spectra(1, seed=7, wave=STAR_WAVE), seed=8)
    ghost.flux[0, 200:215] += 0.5 * np.median(ghost.flux)                  # an unflagged artefact
    spectra = Spectra.concatenate([stars, galaxy, ghost])
    density = LatentDensity().fit(case["train_latents"])
    for posterior in ("laplace", "decoder"):
        s = outlier_scores(case["model"], spectra, density, posterior)
        assert set(np.argsort(s["chi2_dof"])[-2:]) == {40, 41}
        assert set(np.argsort(s["log_evidence"])[:2]) == {40, 41}
        assert np.all(np.abs(s["chi2_dof"][:40] - 1) < 0.3)                 # normal stars are explained
        assert s["log_density"][40] < s["log_density"][:40].min()           # the galaxy lies off the stars' latents
        assert np.all(s["n_valid"] == STAR_WAVE.size)


def test_latent_density_is_a_gaussian_kde_widened_by_the_posterior():
    k = 2
    prior = LatentDensity()
    cov = np.array([[[0.0, 0], [0, 0]], [[3.0, 0], [0, 3.0]]])
    got = prior.log_density(np.array([[0.0, 0], [2.0, 0]]), cov)
    assert got[0] == pytest.approx(-k / 2 * np.log(2 * np.pi))                         # N(0; 0, I)
    assert got[1] == pytest.approx(-np.log(2 * np.pi * 4) - 0.5 * 4 / 4)                # N((2, 0); 0, 4 I)
    pts = np.random.default_rng(3).standard_normal((50, k))
    kde = LatentDensity().fit(pts)
    h = kde.bandwidth_
    q = np.array([0.3, -0.2])
    d = pts - q
    kernels = np.exp(-0.5 * np.einsum("mk,kl,ml->m", d, np.linalg.inv(h), d)) / (2 * np.pi * np.sqrt(np.linalg.det(h)))
    direct = kernels.mean()
    assert kde.log_density(q[None])[0] == pytest.approx(np.log(direct))
    with pytest.raises(SpecaeError, match="needs more than"):
        LatentDensity().fit(pts[:3])


# -- the commands end to end ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    """A tiny model (the synthetic-star VAE) and labelled / unlabelled files on its grid."""
    d = tmp_path_factory.mktemp("latent_cli")
    case = star_case()
    save_model(case["model"], d / "model", case["history"])
    train = case["train"]
    labels = dict(train.labels)
    labels["FE_H"] = labels["FE_H"].copy()
    labels["FE_H"][::4] = np.nan                                            # missing for a quarter
    labels["CLASS"] = np.array(["STAR"] * len(train))
    write_h5(Spectra(train.wave, train.flux, train.ivar, train.mask, labels, train.ids), d / "train.h5")
    test = add_noise(stellar_spectra(30, seed=11, wave=STAR_WAVE), seed=12, snr=(20, 60))
    write_h5(test, d / "test.h5")
    write_h5(add_noise(stellar_spectra(60, seed=13, wave=STAR_WAVE), seed=14, snr=(20, 60)), d / "calib.h5")
    write_h5(Spectra(test.wave, test.flux[:7], test.ivar[:7], ids=test.ids[:7]), d / "nolabels.h5")
    write_h5(stellar_spectra(30, seed=11, wave=STAR_WAVE), d / "truth.h5")
    return d


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_directions(cli_files, capsys):
    d = cli_files
    code, out, _ = run(capsys, "directions", d / "model", d / "train.h5", "-o", d / "dirs.json",
                       "--labels", "TEFF,FE_H")
    assert code == 0 and "TEFF R^2" in out
    dirs, info = load_directions(d / "dirs.json")
    assert sorted(dirs) == ["FE_H", "TEFF"] and info["latent_dim"] == 4 and info["posterior"] == "laplace"
    assert dirs["TEFF"].r2_cv > 0.8 and dirs["FE_H"].n == 375                # NaN rows skipped for FE_H only
    assert dirs["TEFF"].n == 500
    code, _, _ = run(capsys, "directions", d / "model", d / "train.h5", "-o", d / "all.json", "--orthogonal")
    dirs, _ = load_directions(d / "all.json")
    assert sorted(dirs) == ["FE_H", "LOGG", "SNR", "TEFF"]                   # every numeric label
    code, out, err = run(capsys, "directions", d / "model", d / "train.h5", "-o", d / "x.json", "--labels", "AGE")
    assert code == 2 and err.startswith("specae: error: ") and "train.h5" in err and "'AGE'" in err
    assert err.count("\n") == 1 and not (d / "x.json").exists()


def test_cli_regress_predict_and_calibration_plot(cli_files, capsys):
    d = cli_files
    code, out, _ = run(capsys, "regress", d / "model", d / "train.h5", "--labels", "TEFF,FE_H", "-o", d / "reg",
                       "--epochs", "30", "--calibration", d / "calib.h5", "--quiet")
    assert code == 0 and "calibrated on 60" in out
    assert json.loads((d / "reg" / "regressor.json").read_text())["metrics_calibration"]["TEFF"]["n"] == 60
    assert {p.name for p in (d / "reg").iterdir()} == {"regressor.json", "weights.pt", "history.json"}
    code, out, _ = run(capsys, "predict", d / "model", d / "reg", d / "test.h5", "-o", d / "pred.h5", "--quiet")
    assert code == 0
    test = read_h5(d / "test.h5")
    with h5py.File(d / "pred.h5", "r") as f:
        assert sorted(f["predicted"]) == ["FE_H", "TEFF"] and sorted(f["predicted_sigma"]) == ["FE_H", "TEFF"]
        assert "labels_sigma" not in f and sorted(f["labels"]) == sorted(test.labels)   # the given labels, copied
        assert list(f["ids"][()].astype(str)) == list(test.ids)
        teff, sigma = f["predicted/TEFF"][()], f["predicted_sigma/TEFF"][()]
        np.testing.assert_array_equal(f["labels/TEFF"][()], test.labels["TEFF"])
    assert np.corrcoef(teff, test.labels["TEFF"])[0, 1] > 0.9 and np.all(sigma > 0)
    code, _, _ = run(capsys, "predict", d / "model", d / "reg", d / "nolabels.h5", d / "test.h5", "-o", d / "many",
                     "--quiet")
    assert code == 0
    with h5py.File(d / "many" / "nolabels.h5", "r") as f:                  # rows in the input's order
        np.testing.assert_allclose(f["predicted/TEFF"][()], teff[:7], rtol=1e-5)
    code, out, _ = run(capsys, "plot", "calibration", d / "pred.h5", d / "test.h5", "-o", d / "cal.png")
    assert code == 0 and (d / "cal.png").is_file() and "FE_H, TEFF" in out
    code, _, err = run(capsys, "plot", "calibration", d / "pred.h5", d / "nolabels.h5", "-o", d / "bad.png")
    assert code == 2 and "ids differ" in err and not (d / "bad.png").exists()


def test_cli_predict_refuses_a_regressor_of_another_model_or_a_malicious_one(cli_files, capsys, tmp_path):
    d = cli_files
    if not (d / "reg").is_dir():
        assert main(["regress", str(d / "model"), str(d / "train.h5"), "--labels", "TEFF", "-o", str(d / "reg"),
                     "--kind", "ridge"]) == 0
    other = star_case()["model"]
    torch.manual_seed(1)
    twin = type(other)(other.cfg, other.wave)                                # same shape, other weights
    save_model(twin, tmp_path / "twin")
    code, _, err = run(capsys, "predict", tmp_path / "twin", d / "reg", d / "test.h5", "-o", tmp_path / "p.h5")
    assert code == 2 and "another model" in err and not (tmp_path / "p.h5").exists()

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    bad = tmp_path / "bad_reg"
    bad.mkdir()
    (bad / "regressor.json").write_text((d / "reg" / "regressor.json").read_text())
    (bad / "weights.pt").write_bytes(pickle.dumps({"weight": Evil()}))
    code, _, err = run(capsys, "predict", d / "model", bad, d / "test.h5", "-o", tmp_path / "p.h5")
    assert code == 2 and "damaged or incompatible regressor" in err
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "p.h5").exists()


def test_cli_score(cli_files, capsys):
    d = cli_files
    code, _, _ = run(capsys, "score", d / "model", d / "test.h5", "-o", d / "score.h5", "--reference", d / "train.h5",
                     "--quiet")
    assert code == 0
    with h5py.File(d / "score.h5", "r") as f:
        assert {"log_evidence", "chi2_dof", "log_density", "n_valid", "ids", "labels"} <= set(f)
        assert f.attrs["latent_density"] == "500 reference spectra"
        chi2 = f["chi2_dof"][()]
        assert len(chi2) == 30 and np.all(np.abs(chi2 - 1) < 0.4)
    s = outlier_scores(star_case()["model"], read_h5(d / "test.h5"))
    np.testing.assert_allclose(chi2, s["chi2_dof"], rtol=1e-5)


def test_cli_plots(cli_files, capsys):
    d = cli_files
    if not (d / "dirs.json").is_file():
        assert main(["directions", str(d / "model"), str(d / "train.h5"), "-o", str(d / "dirs.json"),
                     "--labels", "TEFF,FE_H"]) == 0
    commands = {
        "latent.png": ["latent", d / "model", d / "train.h5", "--color", "TEFF"],
        "latent_dirs.png": ["latent", d / "model", d / "train.h5", "--color", "LOGG", "--directions", d / "dirs.json"],
        "traversal.png": ["traversal", d / "model", d / "dirs.json", "--label", "TEFF", "--data", d / "test.h5",
                          "--row", "3"],
        "denoised.png": ["denoised", d / "model", d / "test.h5", "--rows", "0,5", "--truth", d / "truth.h5"],
        "training.png": ["training", d / "model"],
    }
    for name, argv in commands.items():
        code, _, err = run(capsys, "plot", *argv, "-o", d / name)
        assert code == 0, err
        assert (d / name).read_bytes()[:4] == b"\x89PNG"
    code, _, err = run(capsys, "plot", "traversal", d / "model", d / "dirs.json", "--label", "AGE", "-o", d / "t.png")
    assert code == 2 and "no direction for 'AGE'" in err and not (d / "t.png").exists()
    code, _, err = run(capsys, "plot", "denoised", d / "model", d / "test.h5", "--rows", "99", "-o", d / "x.png")
    assert code == 2 and "no row 99" in err


def test_encoded_latents_feed_every_tool():
    """Latents objects and plain arrays are accepted alike."""
    case = star_case()
    lat = case["train_latents"]
    assert isinstance(lat, Latents)
    a = directions(lat, case["train"].labels, names=["TEFF"])["TEFF"]
    b = directions(lat.mean, case["train"].labels, names=["TEFF"])["TEFF"]
    np.testing.assert_allclose(a.step, b.step)
