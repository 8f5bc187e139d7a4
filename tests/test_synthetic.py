"""Synthetic generators (stars, galaxies, noise) and the Payne APOGEE emulator: shapes, determinism,
physics that the truth must obey, and a noise model whose ivar is honest."""

from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import median_filter

from specae.data.hdf5 import read_h5
from specae.data.payne import LABEL_NAMES, VALID_RANGE, PayneEmulator, default_payne_dir
from specae.data.synthetic import (GALAXY_LABELS, STELLAR_LABELS, add_noise, add_survey_noise, default_dataset,
                                   galaxy_spectra, galaxy_wave, stellar_spectra, stellar_wave, write_default_data)
from specae.errors import SpecaeError

DATA = Path(__file__).resolve().parents[1] / "data"
PAYNE = default_payne_dir()
needs_payne = pytest.mark.skipif(PAYNE is None, reason="Payne emulator files not found "
                                 "(../shared/data/payne beside the checkout, or set SPECAE_PAYNE_DIR)")


@pytest.fixture(scope="module")
def stars():
    return stellar_spectra(150, seed=3)


@pytest.fixture(scope="module")
def galaxies():
    return galaxy_spectra(150, seed=4)


def _chi2(noisy, clean):
    good = ~noisy.mask
    return float(((noisy.flux - clean.flux) ** 2 * noisy.ivar)[good].mean())


def _window(spectra, lo, hi):
    return (spectra.wave >= lo) & (spectra.wave <= hi)


# -- shapes, ranges, determinism ----------------------------------------------------------------

def test_stellar_shapes_and_labels(stars):
    assert stars.flux.shape == (150, stellar_wave().size) and np.array_equal(stars.wave, stellar_wave())
    assert np.all(stars.ivar == 1) and not stars.mask.any() and np.all(np.isfinite(stars.flux))
    assert np.all(stars.flux > 0) and np.all(stars.flux < 2)
    lab = stars.labels
    assert set(lab) == set(STELLAR_LABELS)
    for name, lo, hi in (("TEFF", 4000, 7500), ("LOGG", 1, 5), ("FE_H", -2, 0.5)):
        assert lo <= lab[name].min() and lab[name].max() <= hi and np.ptp(lab[name]) > 0.7 * (hi - lo)
    assert len(set(stars.ids)) == 150


def test_galaxy_shapes_and_labels(galaxies):
    g = galaxies
    assert g.flux.shape == (150, galaxy_wave().size) and g.meta["frame"] == "observed"
    assert np.all(np.isfinite(g.flux)) and np.all(g.flux > 0)
    lab = g.labels
    assert set(lab) == set(GALAXY_LABELS)
    assert 0.02 <= lab["Z"].min() and lab["Z"].max() <= 0.3
    assert 0.1 <= lab["AGE"].min() and lab["AGE"].max() <= 12
    assert 50 <= lab["VDISP"].min() and lab["VDISP"].max() <= 350
    emitting = lab["HA_EW"] > 0
    assert 0.2 < emitting.mean() < 0.95, "a mix of passive and line-emitting galaxies"
    assert np.all((lab["HA_EW"][emitting] >= 2) & (lab["HA_EW"][emitting] <= 200))
    assert 1.0 < lab["D4000"].min() and lab["D4000"].max() < 2.3

    rest = galaxy_spectra(3, seed=4, rest_wave=np.linspace(3500, 7000, 500))
    assert rest.meta["frame"] == "rest" and rest.flux.shape == (3, 500)
    with pytest.raises(SpecaeError):
        galaxy_spectra(3, wave=galaxy_wave(), rest_wave=galaxy_wave())


@pytest.mark.parametrize("make", [lambda s: stellar_spectra(5, seed=s), lambda s: galaxy_spectra(5, seed=s),
                                  lambda s: add_noise(stellar_spectra(5, seed=0), seed=s),
                                  lambda s: add_survey_noise(stellar_spectra(5, seed=0), seed=s)])
def test_seed_determines_everything(make):
    a, b, c = make(7), make(7), make(8)
    assert np.array_equal(a.flux, b.flux) and np.array_equal(a.ivar, b.ivar) and np.array_equal(a.mask, b.mask)
    assert all(np.array_equal(a.labels[k], b.labels[k]) for k in a.labels)
    assert not np.array_equal(a.flux, c.flux)


def test_fixing_labels_keeps_the_other_draws():
    free = galaxy_spectra(4, seed=9)
    fixed = galaxy_spectra(4, seed=9, labels={"Z": 0.1, "AGE": [1, 2, 3, 4]})
    assert np.all(fixed.labels["Z"] == 0.1) and np.array_equal(fixed.labels["AGE"], [1, 2, 3, 4])
    assert np.array_equal(fixed.labels["VDISP"], free.labels["VDISP"])
    with pytest.raises(SpecaeError, match="D4000"):
        galaxy_spectra(2, labels={"D4000": 1.5})          # measured, not drawn
    with pytest.raises(SpecaeError):
        stellar_spectra(2, labels={"TEFF": [5000, -1]})
    with pytest.raises(SpecaeError):
        stellar_spectra(2, labels={"TEFF": [5000, 6000, 7000]})


# -- physics ----------------------------------------------------------------------------------

def test_hotter_star_is_bluer():
    s = stellar_spectra(2, labels={"TEFF": [4500, 7000], "LOGG": 4.5, "FE_H": 0.0})
    blue, red = _window(s, 4400, 4800), _window(s, 7000, 7500)
    colour = np.median(s.flux[:, blue], axis=1) / np.median(s.flux[:, red], axis=1)
    assert colour[1] > 1.5 * colour[0]


def test_metal_rich_star_has_deeper_metal_lines():
    s = stellar_spectra(2, labels={"TEFF": 5500, "LOGG": 4.5, "FE_H": [-1.5, 0.3]})
    # same Teff, so the same continuum: compare line cores directly
    for line in (5185.04, 5271.01, 5891.58, 4384.78):
        core = np.argmin(np.abs(s.wave - line))
        assert s.flux[1, core] < s.flux[0, core] - 0.05, line
    assert s.flux[1, _window(s, 4000, 5500)].mean() < 0.95 * s.flux[0, _window(s, 4000, 5500)].mean()
    envelope = np.percentile(s.flux[:, _window(s, 6000, 7500)], 95, axis=1)    # continuum-dominated
    assert envelope[1] == pytest.approx(envelope[0], rel=0.03)


def test_halpha_emission_lands_at_its_redshift():
    z = np.array([0.03, 0.12, 0.27])
    fixed = {"Z": z, "HA_EW": 50.0, "NII_HA": -1.5, "VDISP": 100.0, "AGE": 2.0}
    line = galaxy_spectra(3, seed=5, labels=fixed)
    base = galaxy_spectra(3, seed=5, labels={**fixed, "HA_EW": 0.0})
    emission = (line.flux - base.flux).astype(np.float64)
    centre = 6564.61 * (1 + z)
    pixel = np.median(np.diff(line.wave))
    for i in range(3):
        near = np.abs(line.wave - centre[i]) < 30
        peak = line.wave[near][np.argmax(emission[i, near])]
        assert abs(peak - centre[i]) <= 2 * pixel * (centre[i] / np.median(line.wave))
        # flux conserved on the pixels: observed EW = rest EW (1+z), continuum beside the line
        core = np.abs(line.wave - centre[i]) < 12 * (1 + z[i])
        cont = np.median(base.flux[i, np.abs(line.wave - 6650 * (1 + z[i])) < 30 * (1 + z[i])])
        ew = np.sum(emission[i, core] * np.gradient(line.wave)[core]) / cont
        assert ew == pytest.approx(50 * (1 + z[i]), rel=0.12)


def test_4000_break_grows_with_age():
    age = np.array([0.15, 0.6, 2.0, 6.0, 12.0])
    g = galaxy_spectra(5, seed=6, labels={"AGE": age, "Z": 0.1, "HA_EW": 0.0, "EBV": 0.1})
    assert np.all(np.diff(g.labels["D4000"]) > 0)
    assert g.labels["D4000"][0] < 1.2 and g.labels["D4000"][-1] > 1.7
    # the same break, measured on the observed spectrum (F_nu ~ F_lambda lambda^2)
    f_nu = g.flux * g.wave**2
    red, blue = _window(g, 4000 * 1.1, 4100 * 1.1), _window(g, 3850 * 1.1, 3950 * 1.1)
    measured = f_nu[:, red].mean(axis=1) / f_nu[:, blue].mean(axis=1)
    assert np.all(np.diff(measured) > 0)
    assert measured == pytest.approx(g.labels["D4000"], rel=0.05)


# -- noise ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["stars", "galaxies"])
def test_noise_is_honest(kind, request):
    clean = request.getfixturevalue(kind)
    before = clean.flux.copy()
    noisy = add_noise(clean, seed=11, snr=(5, 80))
    assert np.array_equal(clean.flux, before), "the truth is not modified"
    assert _chi2(noisy, clean) == pytest.approx(1.0, abs=0.05)
    assert np.all(noisy.ivar[noisy.mask] == 0) and np.all(noisy.ivar[~noisy.mask] > 0)
    assert np.all(np.isfinite(noisy.flux))
    assert 0.005 < noisy.mask.mean() < 0.15
    assert noisy.mask[:, 0].any() and noisy.mask[:, -1].any(), "some spectra have masked ends"
    assert np.array_equal(noisy.ids, clean.ids) and set(noisy.labels) == set(clean.labels) | {"SNR"}
    snr = noisy.labels["SNR"]
    assert 5 <= snr.min() and snr.max() <= 80 and snr.max() / snr.min() > 5
    good = ~noisy.mask
    measured = np.array([np.median(np.abs(clean.flux[i, g])) * np.median(np.sqrt(noisy.ivar[i, g]))
                         for i, g in enumerate(good)])
    assert measured == pytest.approx(snr, rel=0.1)


def test_noise_options():
    clean = stellar_spectra(20, seed=1)
    plain = add_noise(clean, seed=2, snr=30, sky_lines=False, masked_chunks=False, dead_pixels=False)
    assert not plain.mask.any() and np.all(plain.labels["SNR"] == 30)
    sky = add_noise(clean, seed=2, snr=30, masked_chunks=False, dead_pixels=False)
    oi = np.argmin(np.abs(clean.wave - 5578.89))       # the [OI] 5577 night-sky line
    ratio = np.sqrt(plain.ivar[:, oi] / sky.ivar[:, oi])
    assert np.all(ratio > 2)
    with pytest.raises(SpecaeError):
        add_noise(clean, snr=(10, 5))


@pytest.mark.parametrize("kind", ["stars", "galaxies"])
def test_survey_noise_is_honest_and_unlike_add_noise(kind, request):
    clean = request.getfixturevalue(kind)
    before = clean.flux.copy()
    noisy = add_survey_noise(clean, seed=11)
    assert np.array_equal(clean.flux, before) and np.array_equal(noisy.ids, clean.ids)
    good = ~noisy.mask
    assert _chi2(noisy, clean) == pytest.approx(1.0, abs=0.05)
    # S/N 3-100, beyond add_noise's 5-80 at both ends, and as the label says
    snr = noisy.labels["SNR"]
    assert 3 <= snr.min() < 5 and 80 < snr.max() <= 100
    measured = np.array([np.median(np.abs(clean.flux[i, g])) * np.median(np.sqrt(noisy.ivar[i, g]))
                         for i, g in enumerate(good)])
    assert measured == pytest.approx(snr, rel=0.1)
    # inflated pixels: sigma over 1.6x its running median (a cluster is at most 5 of 15 pixels), 2-5 % of the
    # pixels, and their ivar records the inflation (chi2 ~ 1 there alone)
    sigma = 1 / np.sqrt(np.where(good, noisy.ivar, np.nan))
    local = median_filter(np.where(good, sigma, np.nanmedian(sigma, axis=1, keepdims=True)), size=(1, 15))
    inflated = good & (sigma > 1.6 * local)
    assert 0.02 < inflated.mean() < 0.05
    chi2 = (noisy.flux - clean.flux) ** 2 * noisy.ivar
    assert chi2[inflated].mean() == pytest.approx(1.0, abs=0.1)
    # masks: ivar 0, finite garbage unlike the truth (zeros, or 10-1000x the median flux), single dead pixels
    # and 1-2 runs per spectrum
    mask = noisy.mask
    assert np.all(noisy.ivar[mask] == 0) and np.all(noisy.ivar[good] > 0) and np.all(np.isfinite(noisy.flux))
    assert np.all(noisy.flux[mask] != clean.flux[mask]) and 0.005 < mask.mean() < 0.05
    garbage = noisy.flux[mask]
    big = np.abs(garbage) > 10 * np.broadcast_to(np.median(np.abs(clean.flux), axis=1)[:, None], mask.shape)[mask]
    assert 0.2 < np.mean(garbage == 0) < 0.4 and np.mean(big) > 0.6 and (garbage < 0).any()
    edges = np.diff(np.pad(mask, ((0, 0), (1, 1))).astype(int), axis=1)
    runs = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)       # lengths of the masked runs
    assert (runs == 1).sum() > len(clean) and (runs >= 5).sum() >= len(clean) // 2
    assert np.all(mask.any(axis=1)), "every spectrum has a dead run"


def test_default_dataset_and_files(tmp_path):
    noisy, clean = default_dataset("galaxy", n=8, seed=2)
    assert np.array_equal(noisy.ids, clean.ids) and np.array_equal(noisy.labels["Z"], clean.labels["Z"])
    with pytest.raises(SpecaeError):
        default_dataset("quasar")
    paths = write_default_data(tmp_path, seed=1, sizes={"stellar": 6, "galaxy": 5})
    assert sorted(p.name for p in paths) == ["galaxy.h5", "galaxy_truth.h5", "stellar.h5", "stellar_truth.h5"]
    noisy, truth = read_h5(tmp_path / "galaxy.h5"), read_h5(tmp_path / "galaxy_truth.h5")
    assert len(noisy) == 5 and "SNR" in noisy.labels and np.array_equal(noisy.ids, truth.ids)
    assert _chi2(noisy, truth) == pytest.approx(1.0, abs=0.2)


@pytest.mark.skipif(not (DATA / "stellar.h5").exists(), reason="bundled data missing: run data/make_default.py")
def test_bundled_data():
    for kind in ("stellar", "galaxy"):
        noisy, truth = read_h5(DATA / f"{kind}.h5"), read_h5(DATA / f"{kind}_truth.h5")
        assert len(noisy) >= 100 and noisy.flux.shape == truth.flux.shape
        assert np.array_equal(noisy.ids, truth.ids) and _chi2(noisy, truth) == pytest.approx(1.0, abs=0.05)


# -- Payne --------------------------------------------------------------------------------------

def test_payne_missing_files_name_the_path(tmp_path):
    with pytest.raises(SpecaeError, match="NN_normalized_spectra.npz"):
        PayneEmulator(tmp_path)


@pytest.fixture(scope="module")
def payne():
    return PayneEmulator(PAYNE)


@needs_payne
def test_payne_spectra(payne):
    labels = payne.sample_labels(20, seed=0)
    assert labels.shape == (20, 5)
    assert np.all((labels >= VALID_RANGE[:, 0]) & (labels <= VALID_RANGE[:, 1]))
    flux = payne.spectra(labels)
    assert flux.shape == (20, 7214) and payne.wave.shape == (7214,)
    assert np.all(np.isfinite(flux)) and 0.8 < flux.mean() < 1.05
    assert np.allclose(payne.spectra(labels[3]), flux[3])
    cool, hot = payne.spectra([[4500, 4.5, 0, 0, 5], [6800, 4.5, 0, 0, 5]])
    assert (1 - cool).sum() > (1 - hot).sum(), "cool stars have more line absorption in the H band"
    with pytest.raises(SpecaeError):
        payne.spectra(np.ones((3, 4)))


@needs_payne
def test_payne_mock_noise(payne):
    noisy, clean = payne.mock(60, seed=1, snr=(5, 80))
    assert noisy.flux.shape == clean.flux.shape == (60, 7214)
    assert set(LABEL_NAMES) <= set(noisy.labels) and "SNR" in noisy.labels
    assert np.all(noisy.mask[:, payne.bad_pixels]) and np.all(noisy.ivar[noisy.mask] == 0)
    assert _chi2(noisy, clean) == pytest.approx(1.0, abs=0.05)
    assert 5 <= noisy.labels["SNR"].min() and noisy.labels["SNR"].max() <= 80
    again, _ = payne.mock(60, seed=1, snr=(5, 80))
    assert np.array_equal(again.flux, noisy.flux)
