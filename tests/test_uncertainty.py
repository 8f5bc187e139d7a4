import numpy as np
import torch
import pytest

from specae.metrics import coverage, error_over_sigma, rmse
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
        assert model_scale(x, ivar, np.zeros_like(x), var_mod) == (pytest.approx(b_true, rel=0.1), 0.0)


def test_model_scale_finds_the_growth_where_training_coverage_is_thin():
    # the decoder misses by f^-gamma/2 more where a fraction f of the training set covered the pixel
    rng = np.random.default_rng(3)
    n, npix = 400, 500
    noise = rng.uniform(0.005, 0.05, (n, 1)) * np.ones((1, npix))
    var_mod = rng.uniform(0.005, 0.02, (n, npix)) ** 2
    f = np.broadcast_to(np.exp(np.linspace(np.log(0.01), 0, npix)), (n, npix))
    ivar = noise ** -2
    for b_true, g_true in ((0.6, 0.0), (0.6, 0.6), (1.2, 1.0)):
        err = b_true * np.sqrt(var_mod * f ** -g_true) * rng.standard_normal((n, npix))
        x = err + noise * rng.standard_normal((n, npix))
        b, gamma = model_scale(x, ivar, np.zeros_like(x), var_mod, coverage=f)
        assert b == pytest.approx(b_true, rel=0.1) and gamma == pytest.approx(g_true, abs=0.1)
        sigma = b * np.sqrt(var_mod * f ** -gamma)
        for cols in (slice(0, 100), slice(400, 500)):          # thin and full coverage alike
            assert 0.64 < coverage(err[:, cols], sigma[:, cols], np.zeros_like(err[:, cols])) < 0.72


def test_latent_scale_gives_68_percent_coverage():
    rng = np.random.default_rng(1)
    var_lat = rng.uniform(0.01, 0.1, (300, 200)) ** 2
    err = 1.7 * np.sqrt(var_lat) * rng.standard_t(5, var_lat.shape)    # heavier tails than a Gaussian
    a = latent_scale(err, var_lat)
    assert 0.66 < coverage(err, a * np.sqrt(var_lat), np.zeros_like(err)) < 0.70


def test_scales_are_bounded_and_safe():
    x = np.ones((2, 10))
    one = np.ones_like(x)
    assert model_scale(x, np.zeros_like(x), x, one) == (1.0, 0.0)                # no valid pixel
    assert model_scale(x, one, x, one)[0] == pytest.approx(FACTOR_RANGE[0], rel=1e-3)   # residuals below the noise
    assert latent_scale(np.zeros_like(x), np.zeros_like(x)) == 1.0
    assert latent_scale(100 * one, one) == FACTOR_RANGE[1]


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
    from specae.denoise import model_input
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


def test_student_factor_widens_few_draws():
    from scipy.stats import t

    from specae.uncertainty import student_factor

    assert student_factor(4) == pytest.approx(1.25 * t.ppf(0.8413447, 3) ** 2, rel=1e-4)
    assert student_factor(64) == pytest.approx(1.0, abs=0.04)
    assert student_factor(2) > student_factor(4) > student_factor(16) > student_factor(64) > 1


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


def test_misfit_variance_flags_a_line_the_model_lacks_and_nothing_else():
    import torch

    from specae.denoise import misfit_variance
    rng = np.random.default_rng(3)
    n, npix, sigma = 400, 200, 0.1
    truth = np.ones((n, npix))
    truth[:, 100:103] += [0.5, 2.0, 0.5]                           # an emission line the prediction lacks
    x = truth + sigma * rng.standard_normal((n, npix))
    ivar = np.full((n, npix), sigma ** -2)
    ivar[:, 150] = 0                                               # a masked pixel gets the test of its neighbours
    mu, var = np.ones((n, npix)), np.full((n, npix), 1e-4)
    extra = misfit_variance(*(torch.from_numpy(a) for a in (x, ivar, mu, var))).numpy()
    # on the line: about the squared error of the neighbours, from the neighbours only; well above the
    # noise variance, so the combination follows the data there
    assert np.mean(extra[:, 99:104] > 5 * sigma ** 2) > 0.99
    assert 0.5 < np.median(extra[:, 101]) / np.mean([0.5 ** 2, 0.5 ** 2, 0, 0]) < 2
    # elsewhere the data agree with the prediction: hardly a false alarm (the test's level is 1e-5)
    quiet = np.r_[0:95, 108:200]
    assert np.mean(extra[:, quiet] > 0) < 1e-3
    assert np.isfinite(extra).all() and (extra >= 0).all()


def test_spectrum_scale_follows_what_a_spectrum_s_residuals_can_tell():
    import torch

    from specae.denoise import spectrum_scale
    rng = np.random.default_rng(4)
    npix, var_model = 2000, 0.01
    # rows: model error 4x the calibrated variance, bright (noise << model error); the same, faint (noise
    # >> model error); as calibrated, bright; a quarter of it, bright; with masked pixels
    true_var = np.array([4, 4, 1, 0.25, 4])[:, None] * var_model
    noise_var = np.array([1e-4, 10.0, 1e-4, 1e-4, 1e-4])[:, None]
    r = np.sqrt(true_var + noise_var) * rng.standard_normal((5, npix))
    ivar = np.broadcast_to(1 / noise_var, (5, npix)).copy()
    ivar[4, :1500] = 0
    x, mu = torch.from_numpy(r), torch.zeros(5, npix, dtype=torch.float64)
    s2 = spectrum_scale(x, torch.from_numpy(ivar), mu, 0.0, torch.full((5, npix), var_model, dtype=torch.float64))
    s2 = s2.numpy()[:, 0]
    assert s2.shape == (5,) and np.isfinite(s2).all()
    assert 3.5 < s2[0] < 4.5 and 3.5 < s2[4] < 4.6          # bright: what the residuals say (500 pixels suffice)
    assert 0.8 < s2[1] < 1.25                                # faint: the residuals cannot tell; the prior holds
    assert 0.9 < s2[2] < 1.1 and 0.2 < s2[3] < 0.3


def test_local_scale_follows_a_stretch_of_poor_fit_and_leaves_each_pixel_out_of_its_own():
    import torch

    from specae.denoise import spectrum_scale
    rng = np.random.default_rng(5)
    npix, var_model = 400, 0.01
    # row 0 bright (noise << model error), model error 9x the calibrated variance in pixels 180-219 (a line
    # the latents make too weak), as calibrated elsewhere; row 1 the same but faint (noise >> model error)
    true_var = np.full((2, npix), var_model)
    true_var[:, 180:220] *= 9
    noise_var = np.array([1e-3, 10.0])[:, None]
    x = np.sqrt(true_var + noise_var) * rng.standard_normal((2, npix))
    ivar = np.broadcast_to(1 / noise_var, (2, npix)).copy()
    ivar[0, 200] = 0                                          # a masked pixel inside the stretch

    def local(flux):
        return spectrum_scale(torch.from_numpy(flux), torch.from_numpy(ivar), torch.zeros(2, npix, dtype=torch.float64),
                              0.0, torch.full((2, npix), var_model, dtype=torch.float64), half_width=4).numpy()
    s2 = local(x)
    assert s2.shape == (2, npix) and np.isfinite(s2).all()
    inside, outside = np.r_[184:216], np.r_[0:170, 230:400]
    assert np.median(s2[0, inside]) > 4 and s2[0, 200] > 3   # the stretch, and the masked pixel from its neighbours
    assert 0.7 < np.median(s2[0, outside]) < 1.4 and np.quantile(s2[0, outside], 0.95) < 3.5
    assert np.all(np.abs(np.log(s2[1])) < 0.1)                # faint: the residuals cannot tell; the prior holds
    # a pixel's own residual does not set its own scale, only its neighbours'
    y = x.copy()
    y[0, 300] += 100 * np.sqrt(var_model)
    s2y = local(y)
    assert s2y[0, 300] == s2[0, 300] and s2y[0, 301] > 10 * s2[0, 301]


def test_model_scale_describes_the_pixels_the_model_follows_not_its_outliers():
    rng = np.random.default_rng(2)
    n, npix = 300, 400
    noise = rng.uniform(0.01, 0.05, (n, 1)) * np.ones((1, npix))
    var_mod = rng.uniform(0.01, 0.05, (n, npix)) ** 2
    wide = rng.uniform(size=(n, npix)) < 0.1                    # a tenth of the pixels miss by 5x more
    err = 0.6 * np.sqrt(var_mod) * np.where(wide, 5.0, 1.0) * rng.standard_normal((n, npix))
    x = err + noise * rng.standard_normal((n, npix))
    ivar = noise ** -2
    b, _ = model_scale(x, ivar, np.zeros_like(x), var_mod)
    assert b == pytest.approx(0.6, rel=0.1)                      # one Gaussian: about 1.1
    assert 0.66 < coverage(err[~wide], b * np.sqrt(var_mod[~wide]), np.zeros(int((~wide).sum()))) < 0.71


def test_inpaint_offset_moves_masked_pixels_toward_neighbours_the_model_misses_and_nothing_else():
    import torch

    from specae.denoise import inpaint_offset
    rng = np.random.default_rng(6)
    n, npix, sigma = 300, 200, 0.05
    truth = np.ones((n, npix))
    truth[:, 60:140] += 0.5                                      # a broad feature the prediction (1.0) lacks
    x = truth + sigma * rng.standard_normal((n, npix))
    ivar = np.full((n, npix), sigma ** -2)
    hidden = [30, 100, 170]                                      # masked: one under the feature, two outside it
    ivar[:, hidden] = 0
    excess = np.zeros((n, npix))
    excess[:, 55:145] = 0.5 ** 2                                 # what the local tests put under the feature
    mu = torch.ones(n, npix, dtype=torch.float64)
    shift, explained = (t.numpy() for t in inpaint_offset(*(torch.from_numpy(a) for a in (x, ivar)), mu,
                                                             torch.from_numpy(excess)))
    # under the feature the masked pixels move to the data, to about the neighbours' mean's precision
    err = 1 + shift[:, 100] - truth[:, 100]
    assert abs(np.mean(err)) < 0.01 and np.std(err) < 1.2 * sigma / np.sqrt(2)      # two neighbours' mean
    assert np.all(explained[:, 100] > 0.9 * excess[:, 100]) and np.all(explained[:, 100] < excess[:, 100])
    # where the neighbours follow the model (excess 0), and at every valid pixel, nothing moves
    for j in (30, 170):
        assert np.all(shift[:, j] == 0) and np.all(explained[:, j] == 0)
    valid = ivar > 0
    assert np.all(shift[valid] == 0) and np.all(explained[valid] == 0)
    # a masked pixel with no valid neighbour has nothing to move toward
    lone = np.zeros((1, 9))
    s, e = inpaint_offset(torch.ones(1, 9), torch.from_numpy(lone), torch.zeros(1, 9), torch.ones(1, 9))
    assert torch.all(s == 0) and torch.all(e == 0)


def _gp_draw(rng, b, n, length):
    """(b, n) draws of a unit-variance Gaussian process with correlation exp(-lag / length)."""
    lag = np.abs(np.arange(n)[:, None] - np.arange(n)[None])
    return rng.standard_normal((b, n)) @ np.linalg.cholesky(np.exp(-lag / length)).T


def test_ar1_smoother_is_the_exact_gaussian_process_posterior():
    from specae.denoise import ar1_smoother
    rng = np.random.default_rng(3)
    b, n, length = 3, 40, 7.0
    y = rng.standard_normal((b, n))
    amp = rng.uniform(0.2, 2.0, (b, n))
    noise = rng.uniform(0.1, 3.0, (b, n))
    noise[rng.random((b, n)) < 0.2] = np.inf                     # masked pixels carry no data
    noise[1, 10:25] = np.inf                                     # and a masked chunk
    mean, var = (t.numpy() for t in ar1_smoother(*(torch.from_numpy(a) for a in (y, noise, amp)), length))
    k = np.exp(-np.abs(np.arange(n)[:, None] - np.arange(n)[None]) / length)
    for i in range(b):
        o = np.isfinite(noise[i])
        ka = k[:, o] * amp[i, o]                                 # cov(g, y_observed)
        cov_y = amp[i, o][:, None] * k[np.ix_(o, o)] * amp[i, o][None] + np.diag(noise[i, o])
        np.testing.assert_allclose(mean[i], ka @ np.linalg.solve(cov_y, y[i, o]), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(var[i], np.diag(k - ka @ np.linalg.solve(cov_y, ka.T)), rtol=1e-8, atol=1e-10)


def test_combination_without_a_smooth_part_is_the_precision_weighted_mean_and_masked_pixels_keep_the_model():
    from specae.denoise import combination
    rng = np.random.default_rng(4)
    x, mu = rng.standard_normal((2, 50)), rng.standard_normal((2, 50))
    ivar, v = rng.uniform(0.5, 4, (2, 50)), rng.uniform(0.1, 2, (2, 50))
    ivar[:, ::7] = 0
    mean, var = (t.numpy() for t in combination(*(torch.from_numpy(a) for a in (x, ivar, mu, 0 * v, v)), 30.0))
    np.testing.assert_allclose(mean, (mu / v + x * ivar) / (1 / v + ivar), rtol=1e-10)
    np.testing.assert_allclose(var, 1 / (1 / v + ivar), rtol=1e-10)
    np.testing.assert_array_equal(mean[:, ::7], mu[:, ::7])
    np.testing.assert_allclose(var[:, ::7], v[:, ::7], rtol=1e-12)


@pytest.mark.parametrize("smooth", [True, False])
def test_held_out_pixels_choose_the_smooth_model_error_only_where_there_is_one_and_rescale_its_variance(smooth):
    # a model error below the noise per pixel: nine tenths of it smooth along wavelength (correlation length
    # 50 pixels), or all white, and the model's variance half the error's. Held-out pixels pick the smooth part
    # exactly when it is there and the factor c that restores the variance, and with them the combination
    # recovers much of the error that each pixel's noise hides, with a calibrated sigma
    from specae.denoise import combination
    from specae.train import choose_smooth_error, heldout_predictions
    rng = np.random.default_rng(5)
    b, n, v_model = 200, 400, 0.01
    white = rng.standard_normal((b, n))
    error = np.sqrt(v_model) * (np.sqrt(0.9) * _gp_draw(rng, b, n, 50.0) + np.sqrt(0.1) * white if smooth else white)
    mu = np.zeros((b, n))
    truth = mu + error
    ivar = np.full((b, n), 25.0)                                  # noise variance 4x the model error's
    ivar[rng.random((b, n)) < 0.05] = 0
    x = np.where(ivar > 0, truth + rng.standard_normal((b, n)) / np.sqrt(np.maximum(ivar, 1e-30)), 0.0)
    t = {k: torch.from_numpy(a) for k, a in (("x", x), ("ivar", ivar), ("mu", mu))}
    hold = (t["ivar"] > 0) & torch.from_numpy(rng.random((b, n)) < 0.2)
    total = torch.full((b, n), v_model / 2, dtype=torch.float64)
    parts = {"mu": t["mu"], "total": total, "smooth": total, "excess": torch.zeros_like(total)}
    grid = [(0.0, 1.0), (0.5, 10.0), (0.9, 10.0), (0.9, 50.0), (0.9, 300.0)]
    rho, length, c = choose_smooth_error(heldout_predictions(t["x"], t["ivar"], hold, parts, grid), grid)
    assert (rho, length) == ((0.9, 50.0) if smooth else (0.0, 1.0))
    assert 1.15 < c < 1.7                                         # sqrt(2) restores the error's variance
    total = c ** 2 * total
    mean, var = (a.numpy() for a in combination(t["x"], t["ivar"], t["mu"], rho * total, (1 - rho) * total, length))
    rmse, rmse_model = np.sqrt(np.mean((mean - truth) ** 2)), np.sqrt(np.mean((mu - truth) ** 2))
    inside = np.mean(np.abs(mean - truth) < np.sqrt(var))
    assert rmse < (0.7 if smooth else 1.0) * rmse_model
    assert 0.63 < inside < 0.73
