import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from specae.data.resample import loglam_grid, parse_grid
from specae.data.spectra import Spectra
from specae.data.tensors import to_batch, window_mask
from specae.errors import SpecaeError


def make(n=4, npix=50, seed=0):
    rng = np.random.default_rng(seed)
    wave = loglam_grid(4000, 5000, 2e-3)[:npix]
    return Spectra(wave, rng.normal(1, 0.1, (n, wave.size)), rng.uniform(1, 10, (n, wave.size)),
                   labels={"Z": np.linspace(0, 0.3, n), "CLASS": np.array(["GAL"] * n)},
                   ids=[f"s{i}" for i in range(n)])


def test_bad_values_are_masked_with_one_warning():
    s = make()
    flux, ivar = s.flux.copy(), s.ivar.copy()
    flux[0, 3], flux[1, 4], ivar[2, 5], ivar[3, 6] = np.nan, np.inf, -1.0, np.nan
    with pytest.warns(UserWarning, match="4 pixels") as rec:
        t = Spectra(s.wave, flux, ivar)
    assert len(rec) == 1
    assert t.mask.sum() == 4 and np.all(t.ivar[t.mask] == 0) and np.all(np.isfinite(t.flux))


def test_mask_and_zero_ivar_agree():
    s = make()
    mask = np.zeros_like(s.mask)
    mask[0, :10] = True
    ivar = s.ivar.copy()
    ivar[1, 20] = 0
    t = Spectra(s.wave, s.flux, ivar, mask)
    assert np.array_equal(t.mask, t.ivar == 0)
    assert t.mask[0, :10].all() and t.mask[1, 20]


def test_validation_errors():
    s = make()
    with pytest.raises(SpecaeError, match="ivar shape"):
        Spectra(s.wave, s.flux, s.ivar[:, :-1])
    with pytest.raises(SpecaeError, match="pixels"):
        Spectra(s.wave[:-1], s.flux, s.ivar)
    with pytest.raises(SpecaeError, match="increasing"):
        Spectra(s.wave[::-1], s.flux, s.ivar)
    with pytest.raises(SpecaeError, match="label"):
        Spectra(s.wave, s.flux, s.ivar, labels={"Z": np.zeros(3)})


def test_empty_spectrum_flagged_and_dropped():
    s = make()
    ivar = s.ivar.copy()
    ivar[2] = 0
    t = Spectra(s.wave, s.flux, ivar, ids=s.ids)
    assert t.has_data.tolist() == [True, True, False, True]
    assert t.drop_empty().ids.tolist() == ["s0", "s1", "s3"]


def test_select_concatenate_split():
    s = make(n=10)
    parts = s.split((0.6, 0.2, 0.2), seed=3)
    assert [len(p) for p in parts] == [6, 2, 2]
    assert sorted(np.concatenate([p.ids for p in parts])) == sorted(s.ids)
    assert [p.ids.tolist() for p in s.split((0.6, 0.2, 0.2), seed=3)] == [p.ids.tolist() for p in parts]
    joined = Spectra.concatenate(list(parts))
    assert len(joined) == 10 and set(joined.labels) == {"Z", "CLASS"}
    row = joined.ids.tolist().index("s7")
    assert joined.labels["Z"][row] == pytest.approx(s.labels["Z"][7])
    with pytest.raises(SpecaeError, match="different wavelength grids"):
        Spectra.concatenate([s, Spectra(s.wave * 1.01, s.flux, s.ivar)])


def test_model_space_keeps_the_scale_that_to_original_units_undoes():
    s = make()
    s2 = Spectra(s.wave, s.flux * np.array([[1.0], [10.0], [100.0], [0.5]]), s.ivar, scale=[1.0, 1.0, 2.0, 1.0])
    b, scale = to_batch(s2)
    n = Spectra(s2.wave, b.x.numpy(), b.ivar.numpy(), scale=scale)
    assert np.allclose(np.median(n.flux, axis=1), 1.0, atol=1e-6)
    assert np.allclose(scale / s2.scale, np.median(s2.flux, axis=1), rtol=1e-6)
    assert np.allclose(n.to_original_units(n.flux), s2.to_original_units(s2.flux), rtol=1e-5)
    assert np.allclose(n.ivar * (scale / s2.scale)[:, None] ** -2, s2.ivar, rtol=1e-5)
    w, _ = to_batch(s2, window_mask(s2.wave, (4200, 4400)))
    inside = (s.wave >= 4200) & (s.wave <= 4400)
    assert np.allclose(np.median(w.x.numpy()[:, inside], axis=1), 1.0, atol=1e-6)
    with pytest.raises(SpecaeError, match="window"):
        window_mask(s2.wave, (9000, 9100))


@settings(max_examples=40, deadline=None)
@given(level=st.floats(0.1, 100), lo=st.floats(4000, 4400), span=st.floats(200, 500),
       step=st.floats(5e-5, 3e-3), seed=st.integers(0, 1000))
def test_resample_conserves_flat_spectrum_and_propagates_ivar(level, lo, span, step, seed):
    rng = np.random.default_rng(seed)
    wave = loglam_grid(3900, 5100, 4e-4)
    ivar = rng.uniform(0.5, 5, (2, wave.size))
    s = Spectra(wave, np.full((2, wave.size), level), ivar)
    new = loglam_grid(lo, lo + span, step)
    r = s.resample(new)
    assert r.has_data.all()
    assert np.allclose(r.flux[~r.mask], level, rtol=1e-5)
    # var_new = sum(w^2 var) / (sum w)^2: never worse than the worst contributing pixel, never better
    # than the best one times the number of old pixels a new pixel spans
    valid = ~r.mask
    span_pix = np.log10(new[1] / new[0]) / 4e-4 + 2
    assert np.all(r.ivar[valid] >= ivar.min() * (1 - 1e-5))
    assert np.all(r.ivar[valid] <= ivar.max() * span_pix * (1 + 1e-5))


def test_resample_exact_variance_for_integer_binning():
    wave = loglam_grid(4000, 5000, 1e-4)
    s = Spectra(wave, np.ones((1, wave.size)), np.full((1, wave.size), 4.0))
    r = s.resample(wave[1::3][:-1])   # three old pixels per new pixel, edges aligned
    # mean of 3 independent pixels: var = var_old / 3
    assert np.allclose(r.ivar[0, 1:-1], 12.0, rtol=2e-3)


def test_resample_onto_finer_grid_keeps_ivar():
    wave = loglam_grid(4000, 5000, 1e-3)
    ivar = np.random.default_rng(1).uniform(1, 9, (1, wave.size))
    s = Spectra(wave, np.ones_like(ivar), ivar)
    fine = loglam_grid(4100, 4900, 1e-4)
    r = s.resample(fine)
    from specae.data.resample import pixel_edges
    e_old, e_new = pixel_edges(wave), pixel_edges(fine)
    home = np.searchsorted(e_old, e_new[:-1], side="right") - 1
    inside = home == np.searchsorted(e_old, e_new[1:], side="left") - 1   # new pixel within one old pixel
    assert inside.sum() > 100
    assert np.allclose(r.ivar[0, inside], ivar[0, home[inside]], rtol=1e-5)


def test_resample_masks_pixels_without_coverage():
    s = make()
    mask = np.zeros_like(s.mask)
    mask[:, 20:30] = True
    t = Spectra(s.wave, s.flux, s.ivar, mask)
    wider = loglam_grid(3500, 6000, 2e-3)
    r = t.resample(wider)
    outside = (wider < s.wave[0] - 5) | (wider > s.wave[-1] + 5)
    assert r.mask[:, outside].all()
    hole = (wider > s.wave[21]) & (wider < s.wave[28])
    assert r.mask[:, hole].all()
    assert np.all(r.ivar[r.mask] == 0)


def test_rest_frame_shift_moves_a_line():
    wave = loglam_grid(4000, 8000, 1e-4)
    z = np.array([0.0, 0.1, 0.25])
    line = 5000.0
    flux = 1 + np.exp(-0.5 * ((wave[None] - line * (1 + z[:, None])) / 2.0) ** 2)
    s = Spectra(wave, flux, np.ones_like(flux), labels={"Z": z})
    r = s.to_rest_frame("Z")
    assert r.meta["frame"] == "rest"
    peaks = r.wave[np.argmax(np.where(r.mask, 0, r.flux), axis=1)]
    assert np.allclose(peaks, line, atol=1.5)
    with pytest.raises(SpecaeError):
        s.to_rest_frame(np.array([0.1, np.nan, 0.2]))


def test_parse_grid():
    g = parse_grid("loglam:3600:10000:1e-4")
    assert g[0] == pytest.approx(3600) and g[-1] <= 10000 and np.allclose(np.diff(np.log10(g)), 1e-4)
    for bad in ("linear:1:2:3", "loglam:a:2:3", "loglam:5000:4000:1e-4"):
        with pytest.raises(SpecaeError):
            parse_grid(bad)


def test_no_warning_for_clean_input():
    s = make()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Spectra(s.wave, s.flux, s.ivar)


def test_rest_frame_equals_resampling_each_shifted_spectrum():
    rng = np.random.default_rng(5)
    wave = loglam_grid(3800, 9200, 2e-4)     # 1921 pixels: blocks of ~55 spectra, so 150 spectra take three
    n = 150
    flux = rng.normal(1, 0.2, (n, wave.size))
    ivar = rng.uniform(0.5, 4, (n, wave.size))
    ivar[rng.uniform(size=ivar.shape) < 0.05] = 0
    z = rng.uniform(0, 0.5, n)
    s = Spectra(wave, flux, ivar)
    r = s.to_rest_frame(z)
    assert r.wave[0] == pytest.approx(wave[0] / (1 + z.max())) and r.wave[-1] <= wave[-1] / (1 + z.min())
    for i in range(n):
        one = Spectra(wave / (1 + z[i]), s.flux[i], s.ivar[i], s.mask[i]).resample(r.wave)
        assert np.array_equal(one.mask[0], r.mask[i])
        np.testing.assert_allclose(r.flux[i], one.flux[0], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(r.ivar[i], one.ivar[0], rtol=1e-6)


def test_rest_frame_of_no_spectra_needs_a_grid_and_grids_are_checked():
    s = make(n=3)[:0]
    with pytest.raises(SpecaeError, match="needs the rest-frame grid"):
        s.to_rest_frame(np.zeros(0))
    assert s.to_rest_frame(np.zeros(0), s.wave).flux.shape == (0, s.npix)
    for bad in (s.wave[::-1], np.r_[s.wave[:-1], np.nan], -s.wave[::-1]):
        with pytest.raises(SpecaeError, match="wave must be"):
            make().resample(bad)
