import numpy as np
import pytest

from specae.metrics import coverage, error_over_sigma, rmse


def test_metrics():
    a, b = np.zeros((2, 3)), np.full((2, 3), 2.0)
    assert rmse(a, b) == 2.0
    where = np.array([[True, False, False], [False, False, False]])
    assert rmse(a, b + np.arange(3), where) == 2.0
    assert coverage(a, np.full((2, 3), 2.5), b) == 1.0 and coverage(a, np.ones((2, 3)), b, k=1.5) == 0.0
    # error / sigma: 1 for Gaussian errors of the stated sigma, 1/2 for a sigma twice too wide; pixels without
    # a finite sigma (never seen by the model) are left out
    rng = np.random.default_rng(8)
    sigma = rng.uniform(0.1, 2.0, 200_000)
    err = sigma * rng.standard_normal(sigma.size)
    assert error_over_sigma(err, sigma, np.zeros_like(err)) == pytest.approx(1.0, rel=0.01)
    assert error_over_sigma(err, 2 * sigma, np.zeros_like(err)) == pytest.approx(0.5, rel=0.01)
    sigma[:1000] = np.inf
    everywhere = np.ones(sigma.size, bool)
    assert error_over_sigma(err, sigma, np.zeros_like(err), everywhere) == error_over_sigma(err[1000:], sigma[1000:],
                                                                                          np.zeros(sigma.size - 1000))
    # heavy tails: +-1 sigma reads 68 % while the variance is 1.6x what sigma says
    t = rng.standard_t(3, 200_000)
    s68 = np.quantile(np.abs(t), 0.6827)
    assert coverage(t, np.full(t.size, s68), np.zeros_like(t)) == pytest.approx(0.6827, abs=0.002)
    assert error_over_sigma(t, np.full(t.size, s68), np.zeros_like(t)) > 1.3


def tiny_model(n=60, snr=10):
    from specae.data.resample import loglam_grid
    from specae.data.synthetic import add_noise, stellar_spectra
    from specae.calibration import model_input
    from specae.models.config import ModelConfig
    from specae.train import build_model

    wave = loglam_grid(4000, 6000, 1e-3)
    noisy = add_noise(stellar_spectra(n, seed=1, wave=wave), seed=2, snr=snr)
    model = build_model(noisy, ModelConfig(npix=wave.size, latent_dim=3, dec_hidden=(16, 32), enc_pca=4))
    b, _, _ = model_input(model, noisy)
    return model, b


def objective(model, b, latent, log_scale=None):
    """The negative log posterior of (z, t): amplitude exp(t) on the model spectrum, t ~ N(0, SCALE_PRIOR)."""
    import torch

    from specae.uncertainty import SCALE_PRIOR

    t = torch.zeros(len(latent)) if log_scale is None else log_scale.float()
    mu, sig = model.decode(latent)
    mu, sig = t.exp()[:, None] * mu, t.exp()[:, None] * sig
    w = torch.where(b.ivar > 0, 1 / (1 / b.ivar.clamp_min(1e-30) + sig ** 2), 0.0)
    return 0.5 * (w * (b.x - mu) ** 2).sum(1) + 0.5 * (latent ** 2).sum(1) + 0.5 * (t / SCALE_PRIOR) ** 2


def test_laplace_posterior_refines_and_narrows_with_signal_to_noise(one_thread):
    import torch

    from specae.uncertainty import posterior

    torch.manual_seed(0)
    model, b = tiny_model()
    with torch.no_grad():
        for p in model.decoder.body.parameters():   # a nonlinear decoder, so Gauss-Newton has work to do
            p.normal_(0, 0.05)
        z0, _ = model.encode(b.x, b.ivar)
    post, (mu, sig, jac) = posterior(model, b.x, b.ivar)
    assert post.mean.shape == (60, 3) and post.cov.shape == (60, 3, 3) and post.cov.dtype == torch.float64
    assert post.log_scale.shape == (60,) and post.joint_cov.shape == (60, 4, 4) and jac.shape == (4, 60, b.x.shape[1])
    with torch.no_grad():
        found = objective(model, b, post.mean, post.log_scale)
        assert torch.all(found <= objective(model, b, z0) * (1 + 1e-5))   # float32 recomputation
        assert (found < objective(model, b, z0) - 1e-3).any()
        mu_ref, sig_ref = model.decode(post.mean)
    amp = post.log_scale.exp()[:, None].float()
    torch.testing.assert_close(mu, amp * mu_ref)
    torch.testing.assert_close(sig, amp * sig_ref)
    torch.testing.assert_close(post.cov, post.joint_cov[:, :3, :3])
    torch.testing.assert_close(post.joint_cov, post.joint_cov.transpose(1, 2))
    assert torch.all(torch.linalg.eigvalsh(post.joint_cov) > 0)
    # ten times the S/N: a narrower posterior for every spectrum
    sharp, _ = posterior(model, b.x, b.ivar * 100)
    assert torch.all(torch.linalg.det(sharp.cov) < torch.linalg.det(post.cov))
    # the decoder-only posterior optimises further and never ends worse than the 3-step one
    dec, _ = posterior(model, b.x, b.ivar, kind="decoder")
    with torch.no_grad():
        assert torch.all(objective(model, b, dec.mean, dec.log_scale) <= found * (1 + 1e-5))


def test_jacobian_is_exact(one_thread):
    import torch

    model, b = tiny_model(n=8)
    for decoder in ("mlp", "conv"):
        from specae.models import SpectrumVAE
        m = SpectrumVAE(type(model.cfg)(**{**model.cfg.__dict__, "decoder": decoder, "conv_channels": 8}), model.wave)
        with torch.no_grad():
            for p in m.decoder.parameters():
                p.normal_(0, 0.1)
            lat = torch.randn(5, 3, dtype=torch.float32)
            mu, sig, jac = m.decoder.forward_and_jacobian(lat)
            h = 1e-3
            for k in range(3):
                e = torch.zeros(3)
                e[k] = h
                fd = (m.decode(lat + e)[0] - m.decode(lat - e)[0]) / (2 * h)
                torch.testing.assert_close(jac[k], fd, rtol=2e-2, atol=2e-3)


def test_very_high_signal_to_noise_does_not_break_the_posterior(one_thread):
    import torch

    from specae.uncertainty import posterior, spd_cholesky

    model, b = tiny_model(n=10)
    for factor in (1e8, 1e16, 1e30):   # an ill-conditioned Hessian; ivar near float32's limit
        post, _ = posterior(model, b.x, (b.ivar.double() * factor).clamp(max=3e38).float())
        assert torch.isfinite(post.mean).all() and torch.isfinite(post.cov).all()
        assert torch.all(torch.diagonal(post.cov, dim1=1, dim2=2) >= 0)
    # jitter only where a matrix does not factorise
    good = torch.eye(3, dtype=torch.float64)[None] * 2
    singular = torch.zeros(1, 3, 3, dtype=torch.float64)
    chol = spd_cholesky(torch.cat([good, singular]))
    torch.testing.assert_close(chol[0], torch.eye(3, dtype=torch.float64) * 2 ** 0.5)
    assert torch.isfinite(chol[1]).all()


def test_the_amplitude_absorbs_a_normalisation_error(one_thread):
    # the same spectra scaled by 3 %: the fitted log amplitude moves by log(1.03), the latents do not
    import math

    import torch

    from specae.uncertainty import posterior

    model, b = tiny_model(n=20, snr=50)
    base, _ = posterior(model, b.x, b.ivar)
    scaled, _ = posterior(model, b.x * 1.03, b.ivar / 1.03 ** 2)
    torch.testing.assert_close(scaled.log_scale - base.log_scale, torch.full((20,), math.log(1.03)), atol=3e-3, rtol=0)
    torch.testing.assert_close(scaled.mean, base.mean, atol=2e-2, rtol=0)
