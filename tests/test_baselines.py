"""Weighted EM-PCA on synthetic spectra drawn from a known rank-3 model with heteroscedastic noise."""

import numpy as np
import pytest
from scipy.linalg import subspace_angles

from specae.baselines import SavitzkyGolay, WeightedPCA
from specae.data.spectra import Spectra
from specae.errors import SpecaeError

N_TRAIN, N_TEST, NPIX, RANK = 300, 100, 200, 3


def _gauss(x, mu, width):
    return np.exp(-0.5 * ((x - mu) / width) ** 2)


@pytest.fixture(scope="module")
def data():
    """(train, test, truth_test, basis): Spectra with 10% masked pixels, noiseless (N_TEST, NPIX) truth of
    `test`, and the true (RANK, NPIX) basis."""
    rng = np.random.default_rng(42)
    wave = 10 ** (3.6 + 1e-4 * np.arange(NPIX))
    x = np.linspace(0, 1, NPIX)
    mean = 1.0 - 0.5 * _gauss(x, 0.3, 0.01) - 0.3 * _gauss(x, 0.7, 0.02) + 0.2 * x
    basis = np.stack([x - 0.5, _gauss(x, 0.3, 0.02) - 0.5 * _gauss(x, 0.5, 0.05), np.sin(6 * np.pi * x)])
    basis /= basis.std(axis=1, keepdims=True)          # so the coefficient scales below are per-pixel amplitudes
    n = N_TRAIN + N_TEST
    truth = mean + (rng.normal(size=(n, RANK)) * [0.3, 0.2, 0.1]) @ basis
    # Heteroscedastic noise, as in survey spectra: per-spectrum S/N between ~10 and ~50, and "sky line"
    # pixels up to 8x noisier than their neighbours.
    sky = 1 + 7 * sum(_gauss(x, mu, 0.004) for mu in rng.uniform(0, 1, 12))
    sigma = np.exp(rng.uniform(np.log(0.02), np.log(0.1), n))[:, None] * sky
    flux = truth + sigma * rng.normal(size=(n, NPIX))
    mask = rng.random((n, NPIX)) < 0.1
    flux[mask] = 100.0                      # garbage that must be ignored
    spectra = Spectra(wave, flux, np.where(mask, 0, sigma ** -2), mask)
    return spectra[:N_TRAIN], spectra[N_TRAIN:], truth[N_TRAIN:], basis


@pytest.fixture(scope="module")
def model(data):
    return WeightedPCA(n_components=RANK).fit(data[0])


def _rmse(a, b, where=None):
    d = (a - b) if where is None else (a - b)[where]
    return float(np.sqrt(np.mean(d ** 2)))


def _unweighted_pca(train, test):
    """Plain PCA: missing pixels filled with the column mean, SVD, orthogonal projection of `test`."""
    mu = np.nanmean(np.where(train.mask, np.nan, train.flux), axis=0)
    comps = np.linalg.svd(np.where(train.mask, mu, train.flux) - mu, full_matrices=False)[2][:RANK]
    y = np.where(test.mask, mu, test.flux) - mu
    return comps, mu + y @ comps.T @ comps


def test_recovers_subspace_and_beats_unweighted_pca(data, model):
    train, test, truth, basis = data
    plain_comps, plain = _unweighted_pca(train, test)
    # The weakest component (per-pixel amplitude 0.1) is only known to ~0.06 rad from 300 spectra.
    angle = subspace_angles(model.components_.T, basis.T).max()
    plain_angle = subspace_angles(plain_comps.T, basis.T).max()
    print(f"max principal angle: weighted {angle:.4f} rad, unweighted {plain_angle:.4f} rad")
    assert angle < 0.1 and angle < 0.6 * plain_angle
    np.testing.assert_allclose(model.components_ @ model.components_.T, np.eye(RANK), atol=1e-10)
    assert np.all(np.diff(model.explained_variance_) <= 0)

    weighted = model.denoise(test)[0]
    print(f"held-out RMSE to truth: weighted {_rmse(weighted, truth):.4f}, unweighted {_rmse(plain, truth):.4f}")
    assert _rmse(weighted, truth) < 0.5 * _rmse(plain, truth)


def test_denoised_closer_to_truth_than_input(data, model):
    _, test, truth, _ = data
    flux = model.denoise(test)[0]
    ratio = _rmse(flux, truth, ~test.mask) / _rmse(test.flux, truth, ~test.mask)
    print(f"RMSE denoised / noisy = {ratio:.3f}")
    assert ratio < 0.5


def test_sigma_is_calibrated(data, model):
    _, test, truth, _ = data
    flux, sigma = model.denoise(test)
    coverage = float(np.mean(np.abs(flux - truth) < sigma))
    print(f"fraction within 1 sigma {coverage:.3f}")
    assert 0.55 < coverage < 0.8


def test_masked_pixels_are_inpainted(data, model):
    _, test, truth, _ = data
    flux, sigma = model.denoise(test)
    err_masked = _rmse(flux, truth, test.mask)
    noise = float(np.median(test.ivar[~test.mask] ** -0.5))
    print(f"RMSE on masked pixels {err_masked:.4f}, median noise sigma {noise:.4f}")
    assert err_masked < 0.3 * noise
    assert np.all(np.isfinite(sigma[test.mask]))


def test_wrong_grid_raises(data, model):
    test = data[1]
    shifted = Spectra(test.wave * 1.001, test.flux, test.ivar, test.mask)
    with pytest.raises(SpecaeError, match="wavelength grid"):
        model.denoise(shifted)
    with pytest.raises(SpecaeError, match="wavelength grid"):
        model.encode(Spectra(test.wave[:-1], test.flux[:, :-1], test.ivar[:, :-1]))


def test_deterministic_and_save_load(data, model, tmp_path):
    train, test, _, _ = data
    again = WeightedPCA(n_components=RANK).fit(train)
    np.testing.assert_array_equal(again.components_, model.components_)
    model.save(tmp_path / "pca.npz")
    loaded = WeightedPCA.load(tmp_path / "pca.npz")
    for a, b in zip(loaded.denoise(test), model.denoise(test)):
        np.testing.assert_array_equal(a, b)


def test_spectra_and_pixels_without_data(data):
    train, test, _, _ = data
    mask = train.mask.copy()
    mask[:, 50] = True                      # a pixel no training spectrum covers
    model = WeightedPCA(n_components=RANK).fit(Spectra(train.wave, train.flux, train.ivar, mask))
    two = test[:2]
    two.mask[0] = True                      # the first held-out spectrum has no valid pixel
    flux, sigma = model.denoise(Spectra(two.wave, two.flux, two.ivar, two.mask))
    np.testing.assert_allclose(flux[0], model.mean_, atol=1e-6)       # no data: the mean, with a huge error
    assert np.isinf(sigma[:, 50]).all()
    sigma = np.delete(sigma, 50, axis=1)
    assert np.isfinite(sigma).all() and np.all(sigma[0] > 10 * sigma[1])


# -- Savitzky-Golay -----------------------------------------------------------------------------------------

SG_NPIX = 400


def _smooth_set(n, seed, wiggle=0.0, mask_frac=0.0):
    """(noisy Spectra, truth): a smooth continuum (plus `wiggle`-amplitude 3-pixel features) with per-spectrum
    S/N 10-50 and, optionally, random masked runs of 5-30 pixels holding garbage."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, SG_NPIX)
    truth = (1 + 0.3 * np.sin(2 * np.pi * (x[None] * rng.uniform(1, 2, (n, 1)) + rng.uniform(0, 1, (n, 1))))
             - wiggle * sum(_gauss(x, mu, 0.004) for mu in np.linspace(0.05, 0.95, 25)))
    sigma = np.broadcast_to(rng.uniform(0.02, 0.1, (n, 1)), truth.shape)
    flux = truth + sigma * rng.normal(size=truth.shape)
    mask = np.zeros(truth.shape, bool)
    if mask_frac:
        for i in range(n):
            for start in rng.integers(0, SG_NPIX, int(mask_frac * SG_NPIX / 15)):
                mask[i, start:start + rng.integers(5, 31)] = True
        flux[mask] = 100.0
    wave = 10 ** (3.6 + 1e-4 * np.arange(SG_NPIX))
    return Spectra(wave, flux, np.where(mask, 0, sigma ** -2), mask), truth


@pytest.fixture(scope="module")
def smooth():
    train, _ = _smooth_set(100, 1)
    test, truth = _smooth_set(200, 2)
    return SavitzkyGolay().fit(train), test, truth


def test_savgol_reduces_rmse_on_a_smooth_signal(smooth):
    sg, test, truth = smooth
    flux, _ = sg.denoise(test)
    ratio = _rmse(flux, truth) / _rmse(test.flux, truth)
    print(f"window {sg.window_}, RMSE smoothed / noisy = {ratio:.3f}")
    assert sg.window_ >= 25 and ratio < 0.4


def test_savgol_sigma_is_calibrated_on_a_smooth_signal(smooth):
    sg, test, truth = smooth
    flux, sigma = sg.denoise(test)
    inside1, inside2 = (float(np.mean(np.abs(flux - truth) < k * sigma)) for k in (1, 2))
    print(f"within 1 sigma {inside1:.3f}, 2 sigma {inside2:.3f}")
    assert 0.63 < inside1 < 0.74 and 0.92 < inside2 < 0.98


def test_savgol_sigma_matches_the_scatter_over_noise_draws():
    """The propagated sigma is the standard deviation of the output over noise realisations, edges included."""
    one, truth = _smooth_set(1, 3)
    sg = SavitzkyGolay(window=15).fit(one)
    sigma = sg.denoise(one)[1][0]
    rng = np.random.default_rng(4)
    noise = one.ivar[0] ** -0.5 * rng.normal(size=(2000, SG_NPIX))
    draws = Spectra(one.wave, truth + noise, np.broadcast_to(one.ivar, noise.shape))
    scatter = sg.denoise(draws)[0].std(axis=0)
    np.testing.assert_allclose(sigma, scatter, rtol=0.08)
    assert sigma[0] > 1.5 * sigma[SG_NPIX // 2]            # the end polynomial extrapolates: noisier


def test_savgol_window_follows_the_data():
    """Sharp features call for a shorter window than a smooth continuum."""
    smooth_train, _ = _smooth_set(100, 5)
    sharp_train, _ = _smooth_set(100, 5, wiggle=0.5)
    w_smooth, w_sharp = SavitzkyGolay().fit(smooth_train).window_, SavitzkyGolay().fit(sharp_train).window_
    print(f"chosen windows: smooth {w_smooth}, sharp {w_sharp}")
    assert w_sharp < w_smooth


def test_savgol_bridges_masked_pixels_with_inflated_sigma():
    train, _ = _smooth_set(100, 6, wiggle=0.3, mask_frac=0.15)
    test, truth = _smooth_set(200, 7, wiggle=0.3, mask_frac=0.15)
    sg = SavitzkyGolay().fit(train)
    flux, sigma = sg.denoise(test)
    assert np.isfinite(flux).all() and np.isfinite(sigma).all()
    m = test.mask
    err_masked = _rmse(flux, truth, m)
    inside = float(np.mean((np.abs(flux - truth) < sigma)[m]))
    print(f"masked pixels: RMSE {err_masked:.4f}, within 1 sigma {inside:.3f}; gap_var_ {sg.gap_var_}")
    assert err_masked < 0.2                               # the garbage (100) under the mask is ignored
    assert 0.5 < inside < 0.9
    assert np.median(sigma[m]) > 1.5 * np.median(sigma[~m])


def test_savgol_spectrum_without_data_and_bad_settings():
    train, _ = _smooth_set(20, 8)
    sg = SavitzkyGolay(window=9).fit(train)
    two = train[:2]
    mask = two.mask.copy()
    mask[0] = True
    flux, sigma = sg.denoise(Spectra(two.wave, two.flux, two.ivar, mask))
    assert flux[0].tolist() == [0.0] * SG_NPIX and np.isinf(sigma[0]).all() and np.isfinite(sigma[1]).all()
    with pytest.raises(SpecaeError, match="odd"):
        SavitzkyGolay(window=10)
    with pytest.raises(SpecaeError, match="not fitted"):
        SavitzkyGolay().denoise(two)
