import numpy as np
import pytest

from specae.metrics import coverage, rmse
from specae.uncertainty import FACTOR_RANGE, latent_scale, model_scale


def test_model_scale_recovers_the_decoder_error_scale():
    rng = np.random.default_rng(0)
    n, npix = 400, 500
    noise = rng.uniform(0.005, 0.1, (n, 1)) * np.ones((1, npix))
    var_mod = rng.uniform(0.002, 0.02, (n, npix)) ** 2
    for b_true in (0.6, 1.0, 1.7):
        x = np.sqrt(noise ** 2 + b_true ** 2 * var_mod) * rng.standard_normal((n, npix))   # mean 0
        ivar = noise ** -2
        ivar[:, :50] = 0
        assert model_scale(x, ivar, np.zeros_like(x), var_mod) == pytest.approx(b_true, rel=0.1)


def test_latent_scale_gives_68_percent_coverage():
    rng = np.random.default_rng(1)
    var_lat = rng.uniform(0.01, 0.1, (300, 200)) ** 2
    err = 1.7 * np.sqrt(var_lat) * rng.standard_t(5, var_lat.shape)    # heavier tails than a Gaussian
    a = latent_scale(err, var_lat)
    assert 0.66 < coverage(err, a * np.sqrt(var_lat), np.zeros_like(err)) < 0.70


def test_scales_are_bounded_and_safe():
    x = np.ones((2, 10))
    one = np.ones_like(x)
    assert model_scale(x, np.zeros_like(x), x, one) == 1.0                       # no valid pixel
    assert model_scale(x, one, x, one) == pytest.approx(FACTOR_RANGE[0], rel=1e-3)   # residuals below the noise
    assert latent_scale(np.zeros_like(x), np.zeros_like(x)) == 1.0
    assert latent_scale(100 * one, one) == FACTOR_RANGE[1]


def test_metrics():
    a, b = np.zeros((2, 3)), np.full((2, 3), 2.0)
    assert rmse(a, b) == 2.0
    where = np.array([[True, False, False], [False, False, False]])
    assert rmse(a, b + np.arange(3), where) == 2.0
    assert coverage(a, np.full((2, 3), 2.5), b) == 1.0 and coverage(a, np.ones((2, 3)), b, k=1.5) == 0.0


def test_laplace_posterior_refines_and_narrows_with_signal_to_noise(one_thread):
    import torch

    from specae.data.synthetic import add_noise, stellar_spectra
    from specae.data.resample import loglam_grid
    from specae.models.config import ModelConfig
    from specae.train import build_model
    from specae.uncertainty import laplace_posterior

    wave = loglam_grid(4000, 6000, 1e-3)
    clean = stellar_spectra(60, seed=1, wave=wave)
    noisy = add_noise(clean, seed=2, snr=10)
    model = build_model(noisy, ModelConfig(npix=wave.size, latent_dim=3, dec_hidden=(16, 32), enc_pca=4))
    b, _ = model.prepare(noisy)
    z0, _ = model.encode(b)
    z, cov = laplace_posterior(model, b, z0)
    mu0, s0 = model.decode(z0)
    mu1, _ = model.decode(z)

    def objective(mu, latent):
        w = torch.where(b.ivar > 0, 1 / (1 / b.ivar.clamp_min(1e-30) + s0 ** 2), 0.0)
        return 0.5 * (w * (b.x - mu) ** 2).sum(1) + 0.5 * (latent ** 2).sum(1)

    assert torch.all(objective(mu1, z) <= objective(mu0, z0) + 1e-3)
    # ten times the S/N: a narrower posterior for every spectrum
    sharp = type(b)(b.x, b.ivar * 100, b.z)
    _, cov_sharp = laplace_posterior(model, sharp, z0)
    assert torch.all(torch.linalg.det(cov_sharp) < torch.linalg.det(cov))
