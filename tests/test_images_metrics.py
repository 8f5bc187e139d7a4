"""Image metrics on cases with known answers: morphology of analytic profiles, the normalised Wasserstein
distance, KID, k-NN precision/recall (and mode collapse), nearest-image distances, AUC."""

import numpy as np
import pytest

from specae.images.evaluate import auc
from specae.images.metrics import (MORPHOLOGY, gini, kid, morphology, morphology_distances, nearest_distances,
                                   normalised_wasserstein, petrosian_radius, precision_recall, standardise)

RNG = np.random.default_rng(0)


def gaussian(sx, sy=None, size=33, theta=0.0, centre=None):
    """(1, 1, size, size) elliptical Gaussian of widths sx, sy [pixels] rotated by theta [rad]."""
    sy = sx if sy is None else sy
    c = (size - 1) / 2 if centre is None else centre
    y, x = np.mgrid[:size, :size] - c
    u, v = x * np.cos(theta) + y * np.sin(theta), -x * np.sin(theta) + y * np.cos(theta)
    return np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))[None, None]


def test_morphology_of_analytic_profiles():
    round_ = morphology(100 * gaussian(2.5))
    assert np.isclose(round_["flux"][0], 100 * 2 * np.pi * 2.5 ** 2, rtol=1e-3)
    assert abs(round_["r50"][0] / (2.5 * np.sqrt(2 * np.log(2))) - 1) < 0.1   # Gaussian half-light radius
    assert abs(round_["concentration"][0] / np.sqrt(np.log(5) / np.log(1.25)) - 1) < 0.1   # r80/r20 = 2.69
    assert round_["ellipticity"][0] < 0.01 and round_["asymmetry"][0] < 1e-9
    flat = morphology(np.concatenate([gaussian(4, 2), gaussian(4, 2, theta=np.pi / 2), gaussian(4, 2, theta=0.7)]))
    assert (flat["ellipticity"] > 0.3).all() and np.ptp(flat["ellipticity"]) < 0.02   # orientation-free
    off = morphology(gaussian(2.0, centre=12.0))                     # off the image centre: asymmetric
    assert off["asymmetry"][0] > 0.5
    assert morphology(np.ones((1, 1, 9, 9)))["gini"][0] < 1e-12     # flux spread evenly
    spike = np.zeros((1, 1, 9, 9))
    spike[0, 0, 4, 4] = 1
    assert morphology(spike)["gini"][0] == pytest.approx(1.0)         # all flux in one pixel
    assert round_["smoothness"][0] < 0.03                           # only the core's curvature
    lumpy = 100 * gaussian(2.5)
    lumpy[0, 0, 12:20:3, 12:20:3] += 20                              # 9 one-pixel knots in the disk
    assert morphology(lumpy)["smoothness"][0] > 2 * round_["smoothness"][0]
    bands = morphology(np.concatenate([gaussian(2.5), gaussian(2.5)], axis=1))
    assert np.isclose(bands["flux"][0], 2 * round_["flux"][0] / 100)   # bands are summed


def test_petrosian_radius_of_a_gaussian_and_of_a_flat_image():
    # Gaussian: I(r) / <I(<r)> = x e^-x / (1 - e^-x) with x = r^2 / 2 sigma^2 equals 0.2 at r = 2.31 sigma
    img = gaussian(3.0, size=41)[0, 0]
    y, x = np.mgrid[:41, :41] - 20.0
    r_p = petrosian_radius(img.reshape(1, -1), np.hypot(x, y).reshape(1, -1), 20.0)[0]
    assert abs(r_p - 2.31 * 3.0) <= 1.0                              # to the 1-pixel annulus
    flat = np.ones((1, 41 * 41))
    assert petrosian_radius(flat, np.hypot(x, y).reshape(1, -1), 20.0)[0] == 20.0   # never falls: the cap


def test_gini_matches_the_formula_with_a_mask():
    x = np.array([[1.0, 2.0, 3.0, 4.0, 100.0]])
    use = np.array([[True, True, True, True, False]])
    xs = np.array([1.0, 2.0, 3.0, 4.0])
    expected = ((2 * np.arange(1, 5) - 4 - 1) * xs).sum() / (3 * xs.sum())
    assert gini(x, use)[0] == pytest.approx(expected)


def test_normalised_wasserstein_is_a_shift_in_units_of_the_real_spread():
    real = RNG.normal(0, 2, 4000)
    assert normalised_wasserstein(real, real + 1) == pytest.approx(1 / real.std(), rel=1e-9)
    assert normalised_wasserstein(10 * real, 10 * real + 10) == pytest.approx(1 / real.std(), rel=1e-9)
    assert normalised_wasserstein(real, real) == 0
    same = {k: RNG.normal(0, 1, 2000) for k in MORPHOLOGY}
    other = {k: RNG.normal(0, 1, 2000) for k in same}
    assert max(morphology_distances(same, other).values()) < 0.1


def test_kid_is_about_zero_for_one_distribution_and_positive_for_two():
    a, b = RNG.normal(0, 1, (500, 16)), RNG.normal(0, 1, (500, 16))
    shifted = RNG.normal(0.5, 1, (500, 16))
    same, different = kid(a, b), kid(a, shifted)
    assert abs(same) < 0.01 and different > 0.1 and different > 20 * abs(same)
    assert -0.05 < kid(a, a) < 0                                     # unbiased: O(1/n) below 0 for one set twice


def test_precision_recall_against_itself_another_draw_and_a_collapsed_set():
    real = RNG.normal(0, 1, (600, 8))
    assert precision_recall(real, real) == {"precision": 1.0, "recall": 1.0}
    fresh = precision_recall(real, RNG.normal(0, 1, (600, 8)))
    assert fresh["precision"] > 0.7 and fresh["recall"] > 0.7
    collapsed = real[RNG.integers(0, 600, 5)].repeat(120, axis=0) + RNG.normal(0, 0.01, (600, 8))
    pr = precision_recall(real, collapsed)
    assert pr["precision"] > 0.95 and pr["recall"] < 0.1


def test_standardise_drops_features_that_never_vary_among_the_real_ones():
    real, fake = RNG.normal(3, 2, (300, 5)), RNG.normal(3, 2, (300, 5))
    real[:, 2] = 0.0                                                 # a unit that never fires on real images
    fake[:7, 2] = 5.0                                                # ... but does on a few samples
    r, f = standardise(real, fake)
    assert r.shape == (300, 4) and f.shape == (300, 4)
    np.testing.assert_allclose(r.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(r.std(axis=0), 1)
    assert abs(kid(r, f)) < 0.05 and precision_recall(r, f)["recall"] < 1


def test_nearest_distances_and_auc():
    ref = RNG.normal(0, 1, (50, 1, 4, 4))
    copies = ref[[3, 7]] + 0.0
    d = nearest_distances(np.concatenate([copies, ref[:1] + 10]), ref, chunk=2)
    assert d[:2].tolist() == [0.0, 0.0] and d[2] > 30
    assert auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auc(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.5
    assert auc(np.array([0.0]), np.array([1.0])) == 0.0


def lopsided(noise: float = 0.0, seed: int = 0, size: int = 96) -> np.ndarray:
    """(1, 1, size, size) an elliptical Gaussian disc at the image centre with an off-centre clump and a grid of
    one-pixel knots (asymmetric and lumpy; Petrosian radius about 13 pixels, where statmorph's smoothing
    boxcar, 0.25 r_P, is 3x3 as ours), plus white sky noise of sigma `noise`."""
    c = (size - 1) / 2
    img = 4 * gaussian(6.8, 4.8, size=size, theta=0.5) + 3 * gaussian(1.2, size=size, centre=c + 3.5)
    img[..., size // 2 - 8:size // 2 + 8:4, size // 2 - 8:size // 2 + 8:4] += 1
    return img + noise * np.random.default_rng(seed).normal(size=img.shape)


def test_asymmetry_and_smoothness_subtract_the_sky():
    # a smooth galaxy symmetric about the image centre: both are 0 without noise, and stay about 0 with it;
    # without the sky terms the noise alone made them 0.25 and 0.18
    for seed in range(3):
        noisy = morphology(4 * gaussian(6.8, 4.8, size=64, theta=0.5) + 0.3 * RNG.normal(size=(1, 1, 64, 64)))
        assert abs(noisy["asymmetry"][0]) < 0.03 and abs(noisy["smoothness"][0]) < 0.02, (seed, noisy)
    clean = morphology(lopsided())
    assert clean["asymmetry"][0] > 0.05 and clean["smoothness"][0] > 0.01   # the clump and knots are seen


def test_asymmetry_and_smoothness_agree_with_statmorph():
    statmorph = pytest.importorskip("statmorph", reason="statmorph (pip install statmorph; a test-only extra)")
    import warnings

    size = 96
    c = (size - 1) / 2
    y, x = np.mgrid[:size, :size]
    segmap = (np.hypot(x - c, y - c) < 24).astype(int)   # the galaxy; statmorph's sky box lies outside it

    def both(img):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            src = statmorph.source_morphology(img[0, 0], segmap, weightmap=np.full(img.shape[2:], 0.3))[0]
            assert src.flag == 0
            # statmorph turns about the centre that minimises A, interpolating, which smooths the noise of the
            # turned image; about the image centre (ours) the turn is exact
            theirs = (src._asymmetry_function((c, c), src._cutout_stamp_maskzeroed, "cas"), src.smoothness)
        ours = morphology(img)
        return np.array(theirs), np.array([ours["asymmetry"][0], ours["smoothness"][0]])

    theirs, ours = both(lopsided())                                  # no noise: the definitions agree
    assert (np.abs(ours - theirs) < [0.005, 0.003]).all(), (ours, theirs)
    # with noise each estimate of the sky's terms scatters (statmorph's from one 32 x 32 box): compare means
    pairs = np.array([both(lopsided(0.3, seed)) for seed in range(6)])   # (6, 2, 2)
    theirs, ours = pairs.mean(axis=0)
    assert (np.abs(ours - theirs) < [0.015, 0.006]).all(), (ours, theirs)
