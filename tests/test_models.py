"""Models, likelihood, training and denoising: shapes on survey-sized grids, the loss terms against
their closed forms, the redshift shift, checkpoints, the training loop's stopping rules and failure
modes, and the units and finiteness of denoised output. Everything is tiny, so the file runs in seconds."""

import copy
import json
import math
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import specae.engine.loop
import specae.train
from specae.data.resample import loglam_grid
from specae.data.spectra import Spectra
from specae.data.synthetic import add_noise, galaxy_spectra, stellar_spectra
from specae.data.tensors import Batch
from specae.calibration import Calibration, fit_calibration, model_input, model_terms
from specae.denoise import denoise, encode, heldout
from specae.errormodel import solve
from specae.errors import SpecaeError
from specae.model_dir import load_model, round_weights, save_model
from specae.models import ModelConfig, SpectrumVAE
from specae.models.vae import chi2, gaussian_nll, kl_normal
from specae.train import TrainConfig, build_model, fit

WAVE = loglam_grid(4000, 6000, 1e-3)   # 177 pixels
SMALL = dict(latent_dim=3, dec_hidden=(16, 32), enc_channels=(8, 8, 8), enc_hidden=32, enc_pca=4,
             conv_channels=8)


pytestmark = pytest.mark.usefixtures("one_thread")


def small_cfg(npix=WAVE.size, **kw) -> ModelConfig:
    return ModelConfig(npix=npix, **{**SMALL, **kw})


def tcfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "batch_size": 16, "progress": False, **kw})


def log_grid(npix, start=3.6, step=1e-4):
    return 10 ** (start + step * np.arange(npix))


@pytest.fixture(scope="module")
def stars():
    return add_noise(stellar_spectra(40, seed=1, wave=WAVE), seed=2)


@pytest.fixture(scope="module")
def trained(stars, tmp_path_factory):
    """One 2-epoch run with a checkpoint directory; tests that modify the directory work on a copy."""
    out = tmp_path_factory.mktemp("run") / "model"
    model, history = fit(stars, model_cfg=small_cfg(), cfg=tcfg(), out_dir=out)
    return calibrated(model, history, out), history, out


def calibrated(model, history, out=None):
    """The model with its error model fitted on the run's validation spectra (as `specae train` does), saved."""
    fit_calibration(model, history.pop("validation"))
    if out is not None:
        save_model(model, out, history)
    return model


def copy_run(trained, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(trained[2], dst)
    return dst


# ------------------------------------------------------------------------------------------------
# architecture


@pytest.mark.parametrize("npix", [3921, 7214, 7781])
@pytest.mark.parametrize("decoder", ["mlp", "conv"])
def test_decoder_output_has_exactly_npix_pixels(npix, decoder):
    cfg = ModelConfig(npix=npix, decoder=decoder, latent_dim=4, dec_hidden=(16, 32), conv_channels=8,
                      enc_channels=(8, 8, 8), enc_hidden=32, sigma_floor=1e-3)
    model = SpectrumVAE(cfg, log_grid(npix))
    with torch.no_grad():
        mu, sigma = model.decode(torch.randn(3, 4))
    assert mu.shape == sigma.shape == (3, npix)
    assert torch.isfinite(mu).all() and (sigma >= cfg.sigma_floor).all()


@settings(max_examples=12, deadline=None)
@given(npix=st.integers(0, 150).map(lambda k: 2 * k + 1), decoder=st.sampled_from(["mlp", "conv"]),
       floor=st.sampled_from([1e-4, 1e-3, 0.05]))
def test_small_odd_grids_and_sigma_floor(npix, decoder, floor):
    cfg = ModelConfig(npix=npix, decoder=decoder, latent_dim=2, dec_hidden=(16, 32), conv_channels=8,
                      enc_channels=(8, 8, 8), enc_hidden=32, enc_pca=2, sigma_floor=floor)
    wave = log_grid(npix)
    model = SpectrumVAE(cfg, wave)
    with torch.no_grad():
        # push the scatter head towards -inf: sigma must still respect the floor
        model.decoder.log_sigma0.fill_(-50.0)
        mu, sigma = model.decode(10 * torch.randn(5, 2))
        assert mu.shape == sigma.shape == (5, npix)
        assert (sigma >= floor).all() and torch.isfinite(sigma).all()
        rng = np.random.default_rng(npix)
        b, _, _ = model_input(model, Spectra(wave, rng.normal(1, 0.1, (4, npix)), np.full((4, npix), 100.0)))
        mean, logvar = model.encode(b.x, b.ivar)
    assert mean.shape == logvar.shape == (4, 2)


def test_encoder_and_decoder_usable_alone():
    npix, k = 301, 3
    wave = log_grid(npix)
    model = SpectrumVAE(small_cfg(npix), wave).eval()
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-2, 2, 4)] * k, indexing="ij"), -1).reshape(-1, k)
    with torch.no_grad():
        mu, sigma = model.decoder(grid)                           # the decoder module on its own
    assert mu.shape == sigma.shape == (64, npix)
    with torch.no_grad():
        model.decoder.linear.copy_(torch.randn(k, npix))
        mu, _ = model.decoder(grid)
    assert torch.unique(mu, dim=0).shape[0] == 64                 # different latents, different spectra

    rng = np.random.default_rng(0)
    s = Spectra(wave, rng.normal(1, 0.1, (7, npix)), rng.uniform(50, 100, (7, npix)))
    b, scale, _ = model_input(model, s)
    assert isinstance(b, Batch) and b.x.shape == (7, npix) and b.z is None
    np.testing.assert_allclose(np.median(b.x.numpy(), axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(scale, np.median(s.flux, axis=1), rtol=1e-6)
    with torch.no_grad():
        resid = b.x - model.decoder.mean
        mean, logvar = model.encoder(resid, b.ivar, model.project(resid, b.ivar))   # the encoder module alone
        mean2, logvar2 = model.encode(b.x, b.ivar)
    assert mean.shape == logvar.shape == (7, k)
    torch.testing.assert_close(mean, mean2)
    torch.testing.assert_close(logvar, logvar2)


def test_unknown_kind_or_decoder_is_a_user_error():
    with pytest.raises(SpecaeError, match="kind"):
        SpectrumVAE(small_cfg(11, kind="gan"), log_grid(11))
    with pytest.raises(SpecaeError, match="decoder"):
        SpectrumVAE(small_cfg(11, decoder="rnn"), log_grid(11))


# ------------------------------------------------------------------------------------------------
# likelihood and KL


def test_gaussian_nll_hand_computed():
    x = torch.tensor([[1.0, 2.0, -3.0]])
    mu = torch.tensor([[0.5, 2.5, 7.0]])
    ivar = torch.tensor([[4.0, 1.0, 0.0]])
    sig = torch.tensor([[0.5, 1.0, 9.0]])
    # pixel 0: s2 = 1/4 + 1/4 = 1/2, (x-mu)^2 = 1/4; pixel 1: s2 = 2, (x-mu)^2 = 1/4; pixel 2 masked
    expected = 0.5 * (0.25 / 0.5 + math.log(2 * math.pi * 0.5)) + 0.5 * (0.25 / 2 + math.log(2 * math.pi * 2))
    assert gaussian_nll(x, ivar, mu, sig).item() == pytest.approx(expected, rel=1e-6)
    c, n = chi2(x, ivar, mu)
    assert c.item() == pytest.approx(0.25 * 4 + 0.25 * 1) and n.item() == 2



def test_beta_nll_keeps_the_pull_of_pixels_the_model_calls_hard():
    # two pixels with the same residual and noise (1/ivar = 1); the second has a 3x larger learned scatter
    x, ivar = torch.tensor([[1.0, 1.0]]), torch.ones(1, 2)
    sig = torch.tensor([[1.0, 3.0]])
    s2 = 1 + sig ** 2                                                      # 2 and 10
    for beta in (0.0, 0.5, 1.0):
        mu = torch.zeros(1, 2, requires_grad=True)
        gaussian_nll(x, ivar, mu, sig, beta).sum().backward()
        # d/d mu of 0.5 r^2 / s2 is -r / s2, weighted by (s2 / noise)^beta, held constant
        torch.testing.assert_close(mu.grad, -(1 / s2) * s2 ** beta)
    assert gaussian_nll(x, ivar, torch.zeros(1, 2), sig, 1.0).item() == pytest.approx(
        (0.5 * (1 / s2 + torch.log(2 * math.pi * s2)) * s2).sum().item(), rel=1e-6)

@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), garbage=st.floats(-1e6, 1e6), frac=st.floats(0, 1))
def test_gaussian_nll_closed_form_and_masked_pixels_count_for_nothing(seed, garbage, frac):
    g = torch.Generator().manual_seed(seed)
    x, mu = torch.randn(3, 20, generator=g), torch.randn(3, 20, generator=g)
    sig = torch.rand(3, 20, generator=g) + 0.01
    ivar = torch.rand(3, 20, generator=g) * 10 + 0.1
    ivar[torch.rand(3, 20, generator=g) < frac] = 0.0
    valid = ivar > 0
    s2 = 1 / ivar.double() + sig.double() ** 2
    closed = torch.where(valid, 0.5 * ((x - mu).double() ** 2 / s2 + torch.log(2 * math.pi * s2)), 0.0).sum(1)
    nll = gaussian_nll(x, ivar, mu, sig)
    assert nll.shape == (3,)
    torch.testing.assert_close(nll.double(), closed, rtol=1e-5, atol=1e-4)
    # anything under the mask (flux, model mean or model sigma) changes nothing, value or gradient
    x2, mu2, sig2 = x.clone(), mu.clone().requires_grad_(), sig.clone().requires_grad_()
    x2[~valid] = garbage
    with torch.no_grad():
        mu2[~valid] = -garbage
        sig2[~valid] = abs(garbage) + 1
    nll2 = gaussian_nll(x2, ivar, mu2, sig2)
    assert torch.equal(nll, nll2.detach())
    nll2.sum().backward()
    assert torch.all(mu2.grad[~valid] == 0) and torch.all(sig2.grad[~valid] == 0)
    assert torch.isfinite(mu2.grad).all() and torch.isfinite(sig2.grad).all()


def test_kl_normal():
    assert torch.equal(kl_normal(torch.zeros(4, 3), torch.zeros(4, 3)), torch.zeros(4))
    mean = torch.tensor([[0.5, -1.0, 2.0]])
    logvar = torch.tensor([[0.0, math.log(0.25), math.log(3.0)]])
    per_dim = [0.5 * 0.25, 0.5 * (1 + 0.25 - 1 - math.log(0.25)), 0.5 * (4 + 3 - 1 - math.log(3.0))]
    assert kl_normal(mean, logvar).item() == pytest.approx(sum(per_dim), rel=1e-6)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    ref = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(kl_normal(mean, logvar), ref)


# ------------------------------------------------------------------------------------------------
# redshift mode


def redshift_model(line=4500.0, width=3.0):
    obs = loglam_grid(4200, 6000, 2e-4)
    rest = loglam_grid(4200 / 1.35, 6000, 1e-4)
    cfg = small_cfg(obs.size, latent_dim=2, redshift="Z", rest_npix=rest.size)
    model = SpectrumVAE(cfg, obs, rest).eval()
    with torch.no_grad():   # flat continuum with a narrow emission line, width in rest pixels
        x = (np.log10(rest) - np.log10(line)) / 1e-4
        model.decoder.mean.copy_(torch.from_numpy(1 + np.exp(-0.5 * (x / width) ** 2)).float())
    return model, obs


def test_to_observed_puts_rest_line_at_lambda_1_plus_z():
    line = 4500.0
    model, obs = redshift_model(line)
    z = torch.tensor([0.0, 0.013, 0.05, 0.1234, 0.3])
    with torch.no_grad():
        mu, sigma = model.decode(torch.zeros(len(z), 2), z)
    assert mu.shape == sigma.shape == (len(z), obs.size)
    loglam = np.log10(obs)
    for i, zi in enumerate(z.tolist()):
        excess = mu[i].double().numpy() - 1
        expected = math.log10(line * (1 + zi))
        assert abs(loglam[np.argmax(excess)] - expected) <= 2e-4          # peak within one observed pixel
        centroid = np.sum(excess * loglam) / np.sum(excess)
        assert abs(centroid - expected) < 0.25 * 2e-4                       # centroid well within a pixel
        assert np.sum(excess) == pytest.approx(np.sum(excess[np.abs(loglam - expected) < 2e-3]), rel=1e-6)


def test_to_observed_is_differentiable_in_flux_and_redshift():
    model, obs = redshift_model()
    # first moment of the line about a fixed wavelength: grows linearly as the line moves redward
    weight = torch.from_numpy((np.log10(obs) - math.log10(4500 * 1.1)) / 2e-4).float()
    objective = lambda mu: ((mu - 1) * weight).sum(-1)  # noqa: E731
    z = torch.tensor([0.05, 0.2], requires_grad=True)
    mu, sigma = model.decode(torch.zeros(2, 2), z)
    objective(mu).sum().backward()
    assert model.decoder.mean.grad is not None and model.decoder.mean.grad.abs().sum() > 0
    assert z.grad is not None and torch.isfinite(z.grad).all() and (z.grad > 0).all()
    # matches a finite difference; the line moves by d log10(1+z) / dz / 2e-4 observed pixels per unit z
    with torch.no_grad():
        h = 1e-3
        f = lambda zz: objective(model.decode(torch.zeros(1, 2), torch.tensor([zz]))[0])[0].item()  # noqa: E731
        fd = (f(0.05 + h) - f(0.05 - h)) / (2 * h)
    assert z.grad[0].item() == pytest.approx(fd, rel=0.03)


# ------------------------------------------------------------------------------------------------
# training, checkpoints


def test_fit_writes_a_loadable_best_checkpoint(trained):
    model, history, out = trained
    assert history["epoch"] == [0, 1] and history["stopped"] == "epochs"
    assert 0 <= history["best_epoch"] <= 1
    assert np.isfinite(history["train_loss"]).all() and np.isfinite(history["val_chi2_dof"]).all()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["npix"] == WAVE.size and cfg["latent_dim"] == 3 and cfg["kind"] == "vae"
    blob = torch.load(out / "weights.pt", weights_only=True)
    assert set(blob) >= {"state", "wave"} and np.allclose(blob["wave"].numpy(), WAVE, rtol=1e-12)
    torch.load(out / "train_state.pt", weights_only=True)
    saved = json.loads((out / "history.json").read_text())
    assert saved["epoch"] == [0, 1] and saved["best_val_chi2_dof"] == pytest.approx(history["best_val_chi2_dof"])
    assert saved["best_val_chi2_dof"] == pytest.approx(min(history["val_chi2_dof"]))


def test_load_model_round_trip_gives_identical_denoising(trained, stars):
    model, _, out = trained
    loaded = load_model(out)
    assert not loaded.training and loaded.cfg == model.cfg
    a, b = denoise(model, stars[:6]), denoise(loaded, stars[:6])
    np.testing.assert_array_equal(a.flux, b.flux)
    np.testing.assert_array_equal(a.sigma, b.sigma)
    la, lb = encode(model, stars[:6]), encode(loaded, stars[:6])
    np.testing.assert_array_equal(la.mean, lb.mean)
    np.testing.assert_array_equal(la.cov, lb.cov)
    # and once more through save_model into a fresh directory
    save_model(loaded, out.parent / "copy")
    c = denoise(load_model(out.parent / "copy"), stars[:6])
    np.testing.assert_array_equal(a.flux, c.flux)


def test_checkpoint_written_before_the_error_model_loads_and_asks_for_a_calibration(trained, stars, tmp_path):
    # checkpoints from before the error model kept sigma factors in the weights: they load, and denoising asks
    # for a calibration instead of guessing one; an interrupted run of that time resumes
    out = copy_run(trained, tmp_path)
    (out / "calibration.json").unlink()
    blob = torch.load(out / "weights.pt", weights_only=True)
    blob["state"]["sigma_scale"] = torch.tensor([1.0, 1.0, 0.5])
    torch.save(blob, out / "weights.pt")
    loaded = load_model(out)
    assert loaded.calibration is None
    with pytest.raises(SpecaeError, match="specae calibrate"):
        denoise(loaded, stars[:4])
    loaded.calibration = trained[0].calibration
    np.testing.assert_array_equal(denoise(loaded, stars[:4]).sigma, denoise(trained[0], stars[:4]).sigma)
    state = torch.load(out / "train_state.pt", weights_only=True)
    state["modules"]["model"]["sigma_scale"] = torch.tensor([1.0, 1.0, 0.5])
    torch.save(state, out / "train_state.pt")
    _, history = fit(stars, model_cfg=small_cfg(), cfg=tcfg(epochs=3), out_dir=out, resume=True)
    assert history["epoch"] == [0, 1, 2]


def test_resume_continues_the_run(trained, stars, tmp_path):
    out = copy_run(trained, tmp_path)
    _, history = fit(stars, model_cfg=small_cfg(), cfg=tcfg(epochs=4), out_dir=out, resume=True)
    assert history["epoch"] == [0, 1, 2, 3]
    assert history["val_chi2_dof"][:2] == pytest.approx(trained[1]["val_chi2_dof"])
    assert history["best_val_chi2_dof"] <= trained[1]["best_val_chi2_dof"]
    assert json.loads((out / "history.json").read_text())["epoch"] == [0, 1, 2, 3]


def test_resume_without_an_earlier_run_is_a_user_error(stars, tmp_path):
    with pytest.raises(SpecaeError, match="resume"):
        fit(stars, model_cfg=small_cfg(), cfg=tcfg(), out_dir=tmp_path / "nothing", resume=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecaeError, match="resume"):
        fit(stars, model_cfg=small_cfg(), cfg=tcfg(), out_dir=tmp_path / "empty", resume=True)


def test_time_budget_stops_after_one_epoch(stars, tmp_path):
    model, history = fit(stars, model_cfg=small_cfg(), cfg=tcfg(epochs=50, max_minutes=0.0), out_dir=tmp_path / "m")
    assert history["epoch"] == [0] and history["stopped"] == "time budget"
    assert (tmp_path / "m" / "weights.pt").is_file()


def test_early_stopping_with_patience(stars, monkeypatch):
    # validation never improves after the first epoch -> stop `patience` epochs later, keep epoch 0
    # (a tie with the untrained start keeps the trained epoch)
    monkeypatch.setattr(specae.engine.loop, "evaluate", lambda *a, **k: {"chi2_dof": 1.0, "loss": 0.0})
    _, history = fit(stars, model_cfg=small_cfg(), cfg=tcfg(epochs=30, patience=2))
    assert history["epoch"] == [0, 1, 2] and history["start"] == {"val_chi2_dof": 1.0, "val_loss": 0.0}
    assert history["stopped"] == "early stopping" and history["best_epoch"] == 0


@pytest.mark.parametrize("start_is_best", [True, False])
def test_early_stopping_restores_the_best_weights(stars, monkeypatch, start_is_best):
    # the untrained start is scored first: when no epoch beats it, it is what the model ends as
    scores = iter([0.5, 2.0, 3.0, 4.0, 5.0] if start_is_best else [9.0, 0.5, 2.0, 3.0, 4.0, 5.0])
    snapshots = []
    real = specae.engine.loop.evaluate

    def fake(objective, *a, **k):
        snapshots.append({k2: v.clone() for k2, v in objective.model.state_dict().items()})
        real(objective, *a, **k)
        return {"chi2_dof": next(scores), "loss": 0.0}

    monkeypatch.setattr(specae.engine.loop, "evaluate", fake)
    model, history = fit(stars, model_cfg=small_cfg(), cfg=tcfg(epochs=30, patience=3))
    assert history["epoch"] == [0, 1, 2, 3]
    assert history["best_epoch"] == (-1 if start_is_best else 0)
    best = copy.deepcopy(model)
    best.load_state_dict(snapshots[0 if start_is_best else 1])   # the start's evaluation, or epoch 0's
    best = round_weights(best).state_dict()                         # as fit ends: as saved
    for k, v in model.state_dict().items():
        assert torch.equal(v, best[k]), k


def nan_nll(x, ivar, mu, sigma, beta=0.0):
    return torch.full((x.shape[0],), float("nan"))


def test_nonfinite_loss_raises_diverged(stars, monkeypatch):
    monkeypatch.setattr(specae.train, "gaussian_nll", nan_nll)
    with pytest.raises(SpecaeError, match="diverged"):
        fit(stars, model_cfg=small_cfg(), cfg=tcfg(epochs=20, max_bad_steps=4))


def test_divergence_keeps_the_earlier_good_checkpoint(stars, tmp_path, monkeypatch):
    out = tmp_path / "model"
    calibrated(*fit(stars, model_cfg=small_cfg(), cfg=tcfg(epochs=1), out_dir=out), out)
    model_files = ("config.json", "weights.pt")
    before = {name: (out / name).read_bytes() for name in model_files}
    good = denoise(load_model(out), stars[:4])
    monkeypatch.setattr(specae.train, "gaussian_nll", nan_nll)
    with pytest.raises(SpecaeError, match="diverged") as err:
        fit(stars, model_cfg=small_cfg(), cfg=tcfg(epochs=20, max_bad_steps=4), out_dir=out, resume=True)
    assert str(out) in str(err.value)
    assert {name: (out / name).read_bytes() for name in model_files} == before
    assert not list(out.glob(".*.tmp"))
    again = denoise(load_model(out), stars[:4])
    np.testing.assert_array_equal(again.flux, good.flux)
    assert np.isfinite(again.flux).all() and np.isfinite(again.sigma).all()


def test_divergence_message_does_not_promise_a_missing_checkpoint(stars, tmp_path, monkeypatch):
    # 36 training spectra in batches of 16: the run gives up inside epoch 0, before any checkpoint exists
    monkeypatch.setattr(specae.train, "gaussian_nll", nan_nll)
    out = tmp_path / "model"
    with pytest.raises(SpecaeError, match="diverged") as err:
        fit(stars, model_cfg=small_cfg(), cfg=tcfg(epochs=20, max_bad_steps=2), out_dir=out)
    assert "checkpoint" not in str(err.value)
    assert not (out / "weights.pt").exists()


def test_build_model_rejects_bad_latent_size_and_empty_data(stars):
    for k in (0, 41):
        with pytest.raises(SpecaeError, match="latent"):
            build_model(stars, small_cfg(latent_dim=k))
    empty = Spectra(WAVE, np.ones((3, WAVE.size)), np.zeros((3, WAVE.size)))
    with pytest.raises(SpecaeError):
        build_model(empty, small_cfg())
    with pytest.raises(SpecaeError, match="too few"):
        fit(empty, model_cfg=small_cfg(), cfg=tcfg())


def test_latent_dim_above_enc_pca_is_a_user_error():
    # ModelConfig documents enc_pca >= latent_dim and build_model enforces it; a model built directly
    # (or a hand-edited config.json) raises SpecaeError, not IndexError
    with pytest.raises(SpecaeError, match="enc_pca"):
        SpectrumVAE(small_cfg(50, latent_dim=6, enc_pca=4), log_grid(50))


# ------------------------------------------------------------------------------------------------
# AE


def test_seen_holds_the_training_coverage_and_the_decoder_variance_grows_where_it_is_thin(stars):
    # a third of the training spectra lack pixels 20-39, all of them pixels 0-4
    s = stars.select(np.arange(30))
    ivar, mask = s.ivar.copy(), s.mask.copy()
    ivar[:10, 20:40], mask[:10, 20:40] = 0, True
    ivar[:, :5], mask[:, :5] = 0, True
    s = Spectra(s.wave, s.flux, ivar, mask)
    model = build_model(s, small_cfg()).eval()
    counts = (s.ivar > 0).sum(0)
    np.testing.assert_allclose(model.seen.numpy(), counts / counts.max(), rtol=1e-6)
    assert model.seen.max() == 1 and np.all(model.seen.numpy()[20:40] <= 20 / counts.max() + 1e-6)
    unseen = model.unseen(None, 2)
    assert unseen[:, :5].all() and not unseen[:, 5:].any()
    f = model.coverage(None, 2)
    assert f.shape == (2, s.npix) and torch.all(f[:, :5] == f[:, 5:].min())      # floored, finite
    b, _, _ = model_input(model, s[:2])
    flat, grown = (Calibration(model_scale=0.5, coverage_power=gamma) for gamma in (0.0, 1.0))
    white = [solve(model_terms(model, b, cal), cal)["white"] for cal in (flat, grown)]
    # (the weights differ, so the posterior mode, where the decoder's variance is read, moves a little)
    np.testing.assert_allclose((white[1] / white[0]).numpy(), (1 / f).double().numpy(), rtol=2e-3)


def test_ae_has_point_posterior_and_decoder_sigma(stars):
    model = build_model(stars, small_cfg(kind="ae")).eval()
    s = stars[:5]
    lat = encode(model, s)
    assert lat.mean.shape == lat.std.shape == (5, 3) and np.all(lat.std == 0) and lat.kind == "point"
    model.calibration = Calibration()
    d = denoise(model, s, covariance=True)
    assert d.covariance.factor.shape == (5, s.npix, 0)           # no latent uncertainty
    b, scale, _ = model_input(model, s)
    with torch.no_grad():
        mean, logvar = model.encode(b.x, b.ivar)
        mu, sig = model.decode(mean)
    assert logvar is None
    # each pixel: the decoder's prediction and the measurement averaged by their precisions; inpainted: the decoder's
    mu, v, x, ivar = mu.double().numpy(), sig.double().numpy() ** 2, b.x.double().numpy(), b.ivar.double().numpy()
    k = np.where(ivar > 0, v * ivar / (1 + v * ivar), 0)
    np.testing.assert_allclose(d.flux, (mu + k * (x - mu)) * scale[:, None], rtol=1e-4)
    np.testing.assert_allclose(d.sigma, np.sqrt(v * (1 - k)) * scale[:, None], rtol=1e-4)


def test_ae_trains(stars):
    model, history = fit(stars, model_cfg=small_cfg(kind="ae"), cfg=tcfg(epochs=1))
    assert model.cfg.kind == "ae" and np.isfinite(history["val_chi2_dof"]).all()


# ------------------------------------------------------------------------------------------------
# denoising


def test_denoise_is_finite_on_masked_chunks_and_marks_empty_spectra_as_no_estimate(trained, stars):
    from specae.errors import CountWarning

    model = trained[0]
    s = stars[:4]
    s.mask[1] = True                     # a dead fibre: no valid pixel at all
    s.ivar[1] = 0
    s.mask[2, 20:90] = True              # a large masked chunk
    s.ivar[2, 20:90] = 0
    s = Spectra(s.wave, s.flux, s.ivar, s.mask, s.labels, s.ids)
    with pytest.warns(CountWarning, match="1 spectra without a valid pixel"):
        d = denoise(model, s)
    assert d.flux.shape == d.sigma.shape == d.sigma_core.shape == (4, WAVE.size)
    np.testing.assert_array_equal(d.wave, s.wave)
    live = [0, 2, 3]
    for a in (d.flux, d.sigma, d.sigma_core):
        assert np.isfinite(a[live]).all()
    assert (d.sigma[live] > 0).all() and (d.sigma[live] >= d.sigma_core[live] * (1 - 1e-6)).all()
    # the dead fibre: no estimate (the model's prior mean would pass for one), masked with an infinite sigma
    assert d.unseen[1].all() and not d.unseen[live].any() and np.isinf(d.sigma[1]).all()
    with pytest.warns(CountWarning, match="1 spectra without a valid pixel"):
        lat = encode(model, s)
    assert np.isfinite(lat.mean[live]).all() and np.isfinite(lat.std[live]).all() and (lat.std[live] > 0).all()
    assert np.isnan(lat.mean[1]).all() and np.isinf(lat.std[1]).all()


def test_a_heavy_tailed_calibration_marks_inpainted_pixels_and_writes_their_tail(trained, stars):
    from dataclasses import replace

    from specae.denoise import output_arrays

    model = copy.deepcopy(trained[0])
    model.calibration = replace(model.calibration, tail_spread=1.0)
    s = stars[:3]
    s.mask[:, 30:60] = True
    s.ivar[:, 30:60] = 0
    d = denoise(model, Spectra(s.wave, s.flux, s.ivar, s.mask, s.labels, s.ids))
    masked = d.inpainted & ~d.unseen
    assert masked[:, 30:60].all() and masked.sum() >= 90
    # inpainted pixels: the prior's scale mixture (tau 1), a normal core inside sigma, at least a normal's 68.3 %
    # inside +-1 sigma (more where the white part is much of the variance); measured pixels: a normal predictive
    assert (d.tail_spread[masked] == 1.0).all() and (d.tail_spread[~d.inpainted] == 0).all()
    assert (d.sigma_core[masked] < d.sigma[masked]).all()
    np.testing.assert_array_equal(d.sigma_core[~d.inpainted], d.sigma[~d.inpainted])
    p1 = d.predicted_coverage(1.0)
    normal = math.erf(1 / math.sqrt(2))
    assert (p1[masked] > normal - 1e-4).all() and p1[masked].max() > 0.7 and np.allclose(p1[~d.inpainted], normal)
    out = output_arrays(d)
    np.testing.assert_array_equal(out["flux_tail_spread"], d.tail_spread)
    np.testing.assert_allclose(out["flux_sigma_core"] * out["scale"][:, None], d.sigma_core, rtol=1e-5)


def test_denoise_of_zero_spectra_gives_empty_output(trained):
    model = trained[0]
    none = Spectra(WAVE, np.zeros((0, WAVE.size)), np.zeros((0, WAVE.size)))
    d = denoise(model, none)
    assert d.flux.shape == d.sigma.shape == (0, WAVE.size)
    lat = encode(model, none)
    assert lat.mean.shape == lat.std.shape == (0, 3) and lat.cov.shape == (0, 3, 3)


@settings(max_examples=5, deadline=None)
@given(factor=st.sampled_from([100.0, 1e-3, 7.5, 1e5]))
def test_denoise_undoes_the_normalisation(trained, stars, factor):
    model = trained[0]
    s = stars[:5]
    scaled = Spectra(s.wave, s.flux * factor, s.ivar / factor**2, s.mask, s.labels, s.ids)
    a, b = denoise(model, s), denoise(model, scaled)
    # the Gauss-Newton refinement is an optimiser: float rounding may accept a step in one case only
    np.testing.assert_allclose(b.flux, factor * a.flux, rtol=2e-3, atol=1e-6 * factor)
    np.testing.assert_allclose(b.sigma, factor * a.sigma, rtol=2e-3, atol=1e-6 * factor)
    za, zb = encode(model, s, posterior="encoder"), encode(model, scaled, posterior="encoder")
    np.testing.assert_allclose(za.mean, zb.mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(za.cov, zb.cov, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("posterior", ["laplace", "decoder"])
def test_denoise_is_reproducible_and_independent_of_the_batch_split(trained, stars, posterior):
    model = trained[0]
    a, b = denoise(model, stars[:6], posterior=posterior), denoise(model, stars[:6], posterior=posterior)
    np.testing.assert_array_equal(a.flux, b.flux)
    np.testing.assert_array_equal(a.sigma, b.sigma)
    for rows in (1, 4):                  # each spectrum on its own: the batch split changes nothing
        d = denoise(model, stars[:6], batch_size=rows, posterior=posterior)
        np.testing.assert_allclose(d.flux, a.flux, rtol=1e-4, atol=1e-6)   # float32 BLAS blocking
        np.testing.assert_allclose(d.sigma, a.sigma, rtol=1e-4, atol=1e-6)
    with pytest.raises(SpecaeError, match="laplace or decoder"):
        denoise(model, stars[:2], posterior="encoder")


def test_heldout_predicts_each_valid_pixel_without_its_own_measurement(trained, stars, monkeypatch):
    model = trained[0]
    s = stars[:5]
    s.ivar[1, 30:60] = 0                  # masked pixels have no measurement to score
    s = Spectra(s.wave, s.flux, s.ivar, s.ivar == 0, s.labels, s.ids)
    h = heldout(model, s, passes=4)
    valid = s.ivar > 0
    np.testing.assert_array_equal(np.isfinite(h.z), valid)
    np.testing.assert_array_equal(h.n, valid.sum(1))
    noise_var = model.calibration.noise_scale ** 2 / np.where(valid, s.ivar, 1)
    np.testing.assert_allclose(h.z[valid], ((s.flux - h.flux) / np.sqrt(h.sigma ** 2 + noise_var))[valid], rtol=1e-6)
    np.testing.assert_allclose(h.chi2_dof(), np.nanmean(h.z ** 2, 1), rtol=1e-6)
    np.testing.assert_allclose(h.within(2), (valid & (np.abs(np.nan_to_num(h.z)) < 2)).sum(1) / valid.sum(1))
    pooled = h.pooled()   # over all scored pixels: the per-spectrum figures weighted by their pixels
    assert pooled["spectra"] == 5 and pooled["pixels"] == valid.sum()
    assert pooled["within_2sigma"] == pytest.approx(np.sum(h.within(2) * h.n) / h.n.sum())
    assert pooled["chi2_dof"] == pytest.approx(np.sum(h.chi2_dof() * h.n) / h.n.sum())
    # a pixel's prediction does not see its own measurement: move it and only its z changes
    j = np.flatnonzero(valid[0])[valid[0].sum() // 2]
    moved = Spectra(s.wave, s.flux.copy(), s.ivar, s.mask, s.labels, s.ids)
    moved.flux[0, j] += 5.0
    h2 = heldout(model, moved, passes=4)
    assert h2.flux[0, j] == pytest.approx(h.flux[0, j], rel=1e-5)
    assert h2.z[0, j] == pytest.approx(h.z[0, j] + 5.0 / np.sqrt(h.sigma[0, j] ** 2 + noise_var[0, j]), rel=1e-4)
    # a sigma ten times too wide puts nearly everything inside +-1 sigma, and the chi2 falls
    import specae.denoise as dn
    plain = dn.denoise

    def wide(*args, **kw):
        d = plain(*args, **kw)
        d.sigma = 10 * d.sigma
        return d
    monkeypatch.setattr(dn, "denoise", wide)
    h3 = heldout(model, s, passes=4)
    assert np.all(h3.within(1) >= h.within(1)) and np.all(h3.chi2_dof() < h.chi2_dof())
    assert np.nanmin(h3.within(1)) > 0.9


def test_data_on_another_grid_are_resampled_when_they_cover_the_model_else_refused(trained, stars):
    model = trained[0]
    finer = loglam_grid(3990, 6010, 0.5e-3)          # covers the model's 4000-5999 A at twice the resolution
    truth = stellar_spectra(3, seed=5, wave=finer)
    other = add_noise(truth, seed=6, snr=50)
    with pytest.warns(UserWarning, match="resampled"):
        d = denoise(model, other)
    np.testing.assert_array_equal(d.wave, model.wave)
    on_model = stellar_spectra(3, seed=5, wave=WAVE).flux
    assert d.flux.shape == (3, WAVE.size) and np.isfinite(d.flux).all()
    assert np.sqrt(np.mean((d.flux - on_model) ** 2)) < 0.5 * np.sqrt(np.mean((other.resample(WAVE).flux - on_model) ** 2))
    shifted = Spectra(WAVE * 1.003, stars.flux[:3], stars.ivar[:3])   # misses the model's first pixel
    with pytest.raises(SpecaeError, match="cover"):
        encode(model, shifted)
    with pytest.raises(SpecaeError, match="4000.0-5998.7 A"):
        short = loglam_grid(4500, 6000, 1e-3)
        denoise(model, Spectra(short, np.ones((2, short.size)), np.ones((2, short.size))))


def test_redshift_model_needs_its_label(tmp_path):
    gal = add_noise(galaxy_spectra(30, seed=3, wave=WAVE), seed=4)
    model, history = fit(gal, model_cfg=small_cfg(redshift="Z"), cfg=tcfg(epochs=1), out_dir=tmp_path / "m")
    model = calibrated(model, history, tmp_path / "m")
    assert model.cfg.redshift == "Z" and model.cfg.rest_npix > WAVE.size
    d = denoise(load_model(tmp_path / "m"), gal[:3])
    assert d.flux.shape == (3, WAVE.size) and np.isfinite(d.flux).all() and np.isfinite(d.sigma).all()
    bare = Spectra(gal.wave, gal.flux[:3], gal.ivar[:3])
    with pytest.raises(SpecaeError, match="'Z'"):
        denoise(model, bare)
    with pytest.raises(SpecaeError, match="'Z'"):
        encode(model, bare)
    bad = Spectra(gal.wave, gal.flux[:3], gal.ivar[:3], labels={"Z": np.array([0.1, np.nan, 0.2])})
    with pytest.raises(SpecaeError, match="redshift"):
        denoise(model, bad)
    with pytest.raises(SpecaeError, match="label"):
        fit(Spectra(gal.wave, gal.flux, gal.ivar), model_cfg=small_cfg(redshift="Z"), cfg=tcfg(epochs=1))


def test_learning_rate_anneals_within_the_time_budget(stars):
    # with a budget far shorter than the epochs, the cosine decay follows the clock instead
    cfg = tcfg(epochs=10_000, max_minutes=0.05, patience=10_000)
    _, history = fit(stars, model_cfg=small_cfg(), cfg=cfg)
    assert history["stopped"] == "time budget" and len(history["epoch"]) >= 3
    assert history["lr"][-1] < 0.5 * cfg.lr
    assert history["lr"][-1] < history["lr"][1]
