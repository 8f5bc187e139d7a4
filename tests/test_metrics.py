"""Quality figures (specae.metrics) on synthetic arrays whose answer is known."""

import numpy as np
import pytest
from scipy.signal import lfilter

from specae.metrics import (coverage, error_over_sigma, gaussian_coverage, quantile_bins, random_windows, rmse,
                            sum_coverage)


def test_pixel_figures_of_gaussian_errors():
    rng = np.random.default_rng(0)
    truth = rng.uniform(1, 2, (200, 300))
    sigma = rng.uniform(0.1, 1, truth.shape)
    pred = truth + sigma * rng.standard_normal(truth.shape)
    assert coverage(pred, sigma, truth) == pytest.approx(gaussian_coverage(1), abs=0.005)
    assert coverage(pred, sigma, truth, k=2) == pytest.approx(gaussian_coverage(2), abs=0.003)
    assert error_over_sigma(pred, sigma, truth) == pytest.approx(1, abs=0.01)
    assert error_over_sigma(pred, 2 * sigma, truth) == pytest.approx(0.5, abs=0.005)      # too wide
    assert rmse(pred, truth, sigma < 0.2) < 0.2
    assert (gaussian_coverage(1), gaussian_coverage(2)) == pytest.approx((0.6827, 0.9545), abs=1e-4)


def test_quantile_bins_put_each_spectrum_in_one_bin():
    edges, members = quantile_bins(np.array([9.0, 1, 5, 3, 7, 2, 8, 4, 6]))
    assert edges == pytest.approx([1, 11 / 3, 19 / 3, 9])
    assert members.shape == (3, 9) and np.all(members.sum(axis=0) == 1)
    assert [sorted(np.array([9, 1, 5, 3, 7, 2, 8, 4, 6])[m]) for m in members] == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_random_windows_lie_inside_the_allowed_pixels():
    rng = np.random.default_rng(1)
    where = rng.uniform(size=(500, 60)) < 0.9
    where[0] = False                                     # no room at all
    where[1] = np.arange(60) < 5                         # exactly one place
    w = random_windows(where, 5, rng)
    assert set(np.unique(w)) == {0.0, 1.0} and np.all(w[~where] == 0)
    assert not w[0].any() and np.array_equal(w[1], where[1].astype(float))
    has = w.any(axis=1)
    assert np.all(w[has].sum(axis=1) == 5) and np.all(np.diff(np.flatnonzero(w[2])) == 1)
    starts = np.argmax(w[has], axis=1)
    assert np.ptp(starts) > 40                           # spread over the spectrum, not always the first place
    assert not random_windows(where, 61, rng).any()


def test_sum_coverage_needs_the_covariance_of_correlated_errors():
    """AR(1) errors (correlation 0.9 between neighbours): the covariance gives 68 % for sums of any length,
    the per-pixel variances alone (pixels taken as independent) far less."""
    rng = np.random.default_rng(2)
    n, npix, rho = 4000, 120, 0.9
    err = lfilter([np.sqrt(1 - rho**2)], [1, -rho], rng.standard_normal((n, npix + 200)), axis=1)[:, 200:]
    truth = rng.uniform(0, 5, (n, npix))
    cov = rho ** np.abs(np.subtract.outer(np.arange(npix), np.arange(npix)))      # unit variance per pixel

    def full(w):
        return np.einsum("ni,ij,nj->n", w, cov, w)

    def diagonal(w):
        return (w**2).sum(axis=1)

    where = np.ones((n, npix), bool)
    for length in (5, 20, 50):
        assert sum_coverage(truth + err, truth, full, where, length) == pytest.approx(gaussian_coverage(1), abs=0.02)
        assert sum_coverage(truth + err, truth, diagonal, where, length) < 0.5
    assert sum_coverage(truth + err, truth, full, where, 5, k=2) == pytest.approx(gaussian_coverage(2), abs=0.01)
    assert sum_coverage(truth, truth, full, np.zeros((n, npix), bool), 5) is None
