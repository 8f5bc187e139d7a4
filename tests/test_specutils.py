"""specutils in and out: Spectra <-> Spectrum (exact round trip), any astropy uncertainty, Denoised.to_specutils."""

import numpy as np
import pytest

from specae.data.resample import loglam_grid
from specae.data.spectra import Spectra
from specae.denoise import Denoised
from specae.errors import SpecaeError

specutils = pytest.importorskip("specutils", reason="specutils is an optional extra (pip install 'specae[specutils]')")
u = pytest.importorskip("astropy.units")
nddata = pytest.importorskip("astropy.nddata")
Spectrum = getattr(specutils, "Spectrum", None) or specutils.Spectrum1D


def spectra(unit="1e-17 erg/s/cm2/A"):
    rng = np.random.default_rng(1)
    wave = loglam_grid(4000, 4400, 1e-3)
    ivar = rng.uniform(0.5, 2, (3, wave.size))
    ivar[1, :4] = 0
    return Spectra(wave, rng.normal(5, 1, (3, wave.size)), ivar,
                   labels={"Z": np.array([0.1, 0.2, 0.3]), "CLASS": np.array(["QSO", "STAR", "GALAXY"])},
                   ids=["a", "b", "c"], scale=np.array([1.0, 2.0, 0.5]),
                   meta={"flux_unit": unit, "source": "sdss", "frame": "rest"})


@pytest.mark.parametrize("unit", ["1e-17 erg/s/cm2/A", "relative", "mJy"])
def test_round_trip_is_exact(unit):
    s = spectra(unit)
    sp = s.to_specutils()
    assert isinstance(sp, Spectrum) and sp.flux.shape == (3, s.npix)
    assert isinstance(sp.uncertainty, nddata.InverseVariance) and sp.meta["flux_unit"] == unit
    expected = {"1e-17 erg/s/cm2/A": 1e-17 * u.erg / u.s / u.cm ** 2 / u.AA, "relative": u.dimensionless_unscaled,
                "mJy": u.mJy}[unit]
    assert sp.flux.unit == expected and sp.uncertainty.unit == expected ** -2
    back = Spectra.from_specutils(sp)
    for key in ("wave", "flux", "ivar", "mask", "ids", "scale"):
        assert np.array_equal(getattr(back, key), getattr(s, key)), key
    assert back.meta == s.meta and back.labels.keys() == s.labels.keys()
    assert all(np.array_equal(back.labels[k], s.labels[k]) for k in s.labels)


def test_any_uncertainty_kind_and_spectral_unit():
    sigma = np.array([0.5, 1.0, 2.0, 4.0])
    flux = np.arange(1.0, 5.0) * u.mJy
    mask = np.array([False, True, False, False])
    std = Spectrum(flux=flux, spectral_axis=[1.0, 1.1, 1.2, 1.3] * u.um, uncertainty=nddata.StdDevUncertainty(
        sigma / 1000 * u.Jy), mask=mask)                           # sigma in Jy, flux in mJy
    s = Spectra.from_specutils(std)
    np.testing.assert_allclose(s.wave, [10000, 11000, 12000, 13000])
    np.testing.assert_allclose(s.ivar[0], [4.0, 0.0, 0.25, 0.0625], rtol=1e-6)
    assert s.mask[0].tolist() == mask.tolist() and s.meta["flux_unit"] == "mJy"
    var = Spectrum(flux=flux, spectral_axis=[270, 280, 290, 300] * u.THz, uncertainty=nddata.VarianceUncertainty(
        sigma ** 2))                                                  # a frequency axis: reversed to wavelength order
    v = Spectra.from_specutils(var)
    assert np.all(np.diff(v.wave) > 0) and v.wave[0] == pytest.approx(2.99792458e18 / 300e12, rel=1e-9)  # c / nu
    np.testing.assert_allclose(v.flux[0], [4, 3, 2, 1])
    np.testing.assert_allclose(v.ivar[0], 1 / sigma[::-1] ** 2, rtol=1e-6)
    with pytest.raises(SpecaeError, match="has no uncertainty"):
        Spectra.from_specutils(Spectrum(flux=flux, spectral_axis=[1.0, 1.1, 1.2, 1.3] * u.um))


def test_spectrum_list_onto_one_grid():
    a, b = spectra(), spectra()
    b = Spectra(b.wave * 1.01, b.flux, b.ivar, b.mask, meta=b.meta)
    s = Spectra.from_specutils(specutils.SpectrumList([a.to_specutils(), b.to_specutils()]))
    assert len(s) == 6 and np.allclose(s.wave[:a.npix], a.wave, rtol=1e-12) and s.wave[-1] * 10 ** 1e-3 > b.wave[-1]
    # b starts 1 % (4.3 pixels) redder; its second spectrum has its first 4 pixels masked
    assert s.mask[3:, :4].all() and not s.mask[[3, 5], 5:-1].any() and s.mask[4, :8].all()
    np.testing.assert_allclose(s.flux[:3, :a.npix], np.where(a.mask, 0, a.flux), rtol=1e-5)  # a's own grid
    with pytest.raises(SpecaeError, match="flux_unit"):
        Spectra.from_specutils(specutils.SpectrumList([a.to_specutils(), spectra("mJy").to_specutils()]))


def test_denoised_to_specutils():
    wave = loglam_grid(4000, 4100, 1e-3)
    n = wave.size
    flux, sigma = np.ones((2, n), np.float32), np.full((2, n), 0.1, np.float32)
    unseen = np.zeros((2, n), bool)
    unseen[1, -3:] = True
    sigma[unseen], flux[unseen] = np.inf, 0
    inpainted = np.zeros((2, n), bool)
    inpainted[0, 2] = True
    d = Denoised(wave, flux, sigma, inpainted, unseen, sigma, np.zeros((2, n), np.float32),
                 flux_unit="1e-17 erg/s/cm2/A")
    sp = d.to_specutils()
    assert sp.flux.unit == 1e-17 * u.erg / u.s / u.cm ** 2 / u.AA and isinstance(sp.uncertainty,
                                                                                 nddata.StdDevUncertainty)
    np.testing.assert_array_equal(sp.uncertainty.array, sigma)
    np.testing.assert_array_equal(sp.mask, unseen)
    assert sp.uncertainty.unit == sp.flux.unit and np.array_equal(sp.meta["inpainted"], inpainted)
    np.testing.assert_allclose(sp.spectral_axis.to_value(u.AA), wave)
    assert d.to_specutils("mJy").flux.unit == u.mJy
    back = Spectra.from_specutils(sp)          # unseen pixels come back masked, the rest with ivar 1/sigma^2
    assert np.array_equal(back.mask, unseen) and np.allclose(back.ivar[~unseen], 100, rtol=1e-5)


def test_without_specutils_a_one_line_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "specutils", None)     # as if it were not installed
    with pytest.raises(SpecaeError, match=r'specutils is not installed: pip install "specae\[specutils\]"'):
        spectra().to_specutils()
