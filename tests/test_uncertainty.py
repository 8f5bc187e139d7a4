import numpy as np
import pytest

from specae.metrics import coverage, rmse
from specae.uncertainty import FACTOR_RANGE, sigma_scale_factor


@pytest.mark.parametrize("true_over_pred", [0.5, 1.0, 1.6])
def test_factor_recovers_the_true_error_scale(true_over_pred):
    rng = np.random.default_rng(0)
    n, npix = 400, 500
    truth = rng.normal(1, 0.2, (n, npix))
    noise = rng.uniform(0.01, 0.1, (n, npix))                  # heteroscedastic noise
    pred_sigma = rng.uniform(0.005, 0.02, (n, npix))           # what the model claims
    mean = truth + true_over_pred * pred_sigma * rng.standard_normal((n, npix))
    x = truth + noise * rng.standard_normal((n, npix))
    ivar = noise ** -2
    ivar[:, :50] = 0                                           # masked pixels carry no information
    a = sigma_scale_factor(x, ivar, mean, pred_sigma)
    assert a == pytest.approx(true_over_pred, rel=0.08)
    # after scaling, the +-1 sigma band covers about 68 % of the truth
    assert 0.64 < coverage(mean, a * pred_sigma, truth) < 0.72


def test_factor_is_bounded_and_safe():
    x = np.ones((2, 10))
    assert sigma_scale_factor(x, np.zeros_like(x), x, np.ones_like(x)) == 1.0   # no valid pixel
    # residuals far below the noise -> the smallest allowed factor, not zero
    assert sigma_scale_factor(x, np.ones_like(x), x, np.ones_like(x)) == FACTOR_RANGE[0]


def test_metrics():
    a, b = np.zeros((2, 3)), np.full((2, 3), 2.0)
    assert rmse(a, b) == 2.0
    where = np.array([[True, False, False], [False, False, False]])
    assert rmse(a, b + np.arange(3), where) == 2.0
    assert coverage(a, np.full((2, 3), 2.5), b) == 1.0 and coverage(a, np.ones((2, 3)), b, k=1.5) == 0.0
