"""The Payne emulator as an oracle: analytic Jacobian, pixel subsets, and the least-squares fit of its labels."""

import time

import numpy as np
import pytest

from specae.data.payne import LABEL_NAMES, VALID_RANGE, PayneEmulator
from specae.data.spectra import Spectra
from specae.errors import SpecaeError

from .conftest import shared_dir


@pytest.fixture(scope="module")
def emu():
    return PayneEmulator(shared_dir("payne"))


def _truth(clean):
    return np.stack([clean.labels[n] for n in LABEL_NAMES], axis=1)


def test_jacobian_matches_finite_differences(emu):
    labels = emu.sample_labels(4, seed=1)
    flux, jac = emu.jacobian(labels)
    assert flux.shape == (4, emu.npix) and jac.shape == (4, emu.npix, 5)
    np.testing.assert_allclose(flux, emu.spectra(labels), atol=1e-6)
    for k in range(5):
        step = np.zeros(5)
        step[k] = 1e-3 * np.diff(VALID_RANGE[k])[0]
        numeric = (emu.spectra(labels + step).astype(np.float64) - emu.spectra(labels - step)) / (2 * step[k])
        scale = np.abs(jac[:, :, k]).max()
        assert np.abs(numeric - jac[:, :, k]).max() < 2e-3 * scale + 1e-6, LABEL_NAMES[k]


def test_subset_is_a_window_of_the_full_emulator(emu):
    sub = emu.subset(slice(1000, 1300))
    labels = emu.sample_labels(3, seed=2)
    assert sub.npix == 300 and np.array_equal(sub.wave, emu.wave[1000:1300])
    np.testing.assert_allclose(sub.spectra(labels), emu.spectra(labels)[:, 1000:1300], atol=1e-6)
    np.testing.assert_allclose(sub.jacobian(labels)[1], emu.jacobian(labels)[1][:, 1000:1300], atol=1e-6)
    with pytest.raises(SpecaeError, match="increasing"):
        emu.subset([5, 3])


@pytest.fixture(scope="module")
def fitted(emu):
    noisy, clean = emu.mock(200, seed=3, snr=50)
    t0 = time.perf_counter()
    labels, cov, model = emu.fit(noisy)
    return noisy, clean, labels, cov, model, time.perf_counter() - t0


def test_fit_recovers_labels_at_snr_50(fitted):
    noisy, clean, labels, cov, model, seconds = fitted
    err = np.abs(labels - _truth(clean))
    good = (err[:, 0] < 50) & (err[:, 1] < 0.1) & (err[:, 2] < 0.05)
    print(f"fit of 200 spectra in {seconds:.1f} s; median |error| {np.median(err, axis=0).round(4)}; "
          f"{good.mean():.1%} within 50 K, 0.1 dex, 0.05 dex")
    assert good.mean() > 0.9
    assert np.all((labels >= VALID_RANGE[:, 0]) & (labels <= VALID_RANGE[:, 1]))
    assert seconds < 60                                   # ~3 s on one core; the benchmark fits 500 at a time


def test_fit_model_is_far_closer_to_the_truth_than_the_noise(emu, fitted):
    noisy, clean, labels, cov, model, _ = fitted
    ev = ~emu.bad_pixels
    err_model = np.sqrt(np.mean((model - clean.flux)[:, ev] ** 2))
    err_noisy = np.sqrt(np.mean((noisy.flux - clean.flux)[~noisy.mask] ** 2))
    print(f"RMSE to truth: fitted emulator {err_model:.5f}, noisy input {err_noisy:.5f}")
    assert err_model < 0.1 * err_noisy
    chi2_fit = (noisy.ivar * (noisy.flux - model) ** 2).sum(axis=1)
    chi2_true = (noisy.ivar * (noisy.flux - clean.flux) ** 2).sum(axis=1)
    assert np.all(chi2_fit <= chi2_true + 1.0)            # the global minimum was found for every star


def test_fit_covariance_is_calibrated(fitted):
    _, clean, labels, cov, _, _ = fitted
    pulls = (labels - _truth(clean)) / np.sqrt(np.einsum("nkk->nk", cov))
    print(f"std of (fit - truth) / sigma per label: {pulls.std(axis=0).round(2)}")
    assert np.all((pulls.std(axis=0) > 0.75) & (pulls.std(axis=0) < 1.3))


def test_fit_ignores_masked_pixels_and_checks_the_grid(emu):
    noisy, clean = emu.mock(10, seed=4, snr=50)
    garbage = noisy.flux.copy()
    garbage[noisy.mask] = 50.0                             # what sits under the mask must not matter
    labels, _, _ = emu.fit(Spectra(noisy.wave, garbage, noisy.ivar, noisy.mask))
    np.testing.assert_allclose(labels, emu.fit(noisy)[0], rtol=1e-5)
    with pytest.raises(SpecaeError, match="grid"):
        emu.fit(Spectra(noisy.wave[:100], noisy.flux[:, :100], noisy.ivar[:, :100]))
