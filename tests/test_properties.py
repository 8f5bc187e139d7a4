"""Property-based tests: random shapes, dtypes and NaN/inf patterns through Spectra, the HDF5 round trip
and small random FITS files of every supported layout.

Whatever the input: no exception other than SpecaeError; every result is finite with ivar >= 0 and
mask == (ivar == 0); a pixel that was valid in the input stays valid with its value.
"""

import warnings

import numpy as np
import pytest
import torch
from astropy.io import fits
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from specae.data.hdf5 import H5Spectra, read_h5, write_h5
from specae.data.readers import read_spectra
from specae.data.resample import loglam_grid
from specae.data.spectra import F32_MAX, Spectra
from specae.data.tensors import normalise
from specae.errors import SpecaeError
from tests.test_readers import apogee_file, desi_coadd_file, desi_stack_file, full_sdss_file, sdss_file

FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -1.0, 1e30, -1e30, 1e39, 1e-30, 1e-50]
FLOATS = [np.float16, np.float32, np.float64]
FITS_FLOATS = [np.float32, np.float64]          # FITS has no float16
NUMBERS = FLOATS + [np.int8, np.int32, np.int64, np.uint8]


@st.composite
def values(draw, shape, dtypes=NUMBERS, low=-1e3, high=1e3):
    """An array of `shape` of a drawn dtype: floats mixing ordinary values with NaN/inf/huge/tiny ones."""
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    if dtype.kind in "iu":
        return draw(hnp.arrays(dtype, shape))
    n = int(np.prod(shape))
    x = np.array(draw(st.lists(st.one_of(st.floats(low, high), st.sampled_from(SPECIAL)), min_size=n, max_size=n)))
    with np.errstate(over="ignore"):
        return x.astype(dtype).reshape(shape)


def valid_wave(npix):
    return loglam_grid(4000, 9000, 1e-3)[:npix]


@st.composite
def waves(draw, npix):
    """Mostly a valid grid; sometimes arbitrary values (then Spectra must refuse them if they are not one)."""
    if draw(st.integers(0, 4)):
        return valid_wave(npix)
    return draw(values((npix,), FLOATS + [np.int32], low=-10, high=1e4))


def is_grid(wave) -> bool:
    w = np.asarray(wave, dtype=np.float64)
    return bool(np.all(np.isfinite(w)) and np.all(w > 0) and np.all(np.diff(w) > 0))


def check_result(s: Spectra):
    assert s.flux.dtype == s.ivar.dtype == np.float32 and s.mask.dtype == bool
    assert np.isfinite(s.flux).all() and np.isfinite(s.ivar).all() and (s.ivar >= 0).all()
    assert np.array_equal(s.mask, s.ivar == 0) and np.isfinite(s.scale).all()


def quietly(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


def valid_pixels(flux, ivar, mask=None):
    """Input pixels that are valid: finite flux within float32, finite ivar > 0 that float32 can hold."""
    f, i = np.asarray(flux, dtype=np.float64), np.asarray(ivar, dtype=np.float64)
    with np.errstate(over="ignore"):
        ok = np.isfinite(f) & (np.abs(f) <= F32_MAX) & np.isfinite(i) & (i.astype(np.float32) > 0)
    return ok if mask is None else ok & ~np.asarray(mask, dtype=bool)


def check_kept(s: Spectra, flux, ivar, ok):
    """Pixels `ok` of the input are unmasked in `s`, with the input's values (ivar clipped to float32)."""
    ok = np.broadcast_to(ok, s.flux.shape)
    assert not s.mask[ok].any()
    flux, ivar = (np.broadcast_to(np.asarray(a, np.float64), ok.shape)[ok] for a in (flux, ivar))
    np.testing.assert_array_equal(s.flux[ok], flux.astype(np.float32))
    np.testing.assert_array_equal(s.ivar[ok], np.minimum(ivar, F32_MAX).astype(np.float32))


# -- Spectra ---------------------------------------------------------------------------------------------------
@FEW
@given(data=st.data(), n=st.integers(0, 4), npix=st.integers(1, 8))
def test_spectra_validation_and_operations(data, n, npix):
    wave = data.draw(waves(npix))
    flux, ivar = data.draw(values((n, npix))), data.draw(values((n, npix)))
    mask = data.draw(hnp.arrays(bool, (n, npix))) if data.draw(st.booleans()) else None
    try:
        s = quietly(Spectra, wave, flux, ivar, mask)
    except SpecaeError:
        assert not is_grid(wave)
        return
    assert is_grid(wave)
    check_result(s)
    check_kept(s, flux, ivar, valid_pixels(flux, ivar, mask))
    if npix < 2:
        return
    z = data.draw(st.lists(st.floats(-0.5, 3.0), min_size=n, max_size=n))
    rest = None if n else valid_wave(5)      # the default rest grid spans the redshifts: none without spectra
    for out in (quietly(s.resample, loglam_grid(4100, 5000, 3e-3)), quietly(s.to_rest_frame, z, rest)):
        check_result(out)
        assert len(out) == n
    # the model's normalisation: finite, masked where the input is, positive scales
    x, ivar_x, norm = normalise(torch.from_numpy(s.flux), torch.from_numpy(s.ivar))
    assert torch.isfinite(x).all() and torch.isfinite(ivar_x).all() and (norm > 0).all()
    assert not (ivar_x[torch.from_numpy(s.ivar <= 0)] > 0).any()


def test_masking_warning_counts_the_new_bad_pixels():
    flux = np.ones((2, 6))
    ivar = np.ones((2, 6))
    mask = np.zeros((2, 6), bool)
    flux[0, 0], ivar[1, 1], ivar[1, 2], mask[1, 2] = np.nan, -1.0, np.nan, True   # (1, 2) was masked already
    with pytest.warns(UserWarning, match="^2 pixels with NaN/inf") as rec:
        Spectra(valid_wave(6), flux, ivar, mask)
    assert len(rec) == 1


# -- HDF5 round trip ----------------------------------------------------------------------------------------------
TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF, exclude_categories=("Cs",)), max_size=6)


@FEW
@given(data=st.data(), n=st.integers(0, 5), npix=st.integers(1, 7))
def test_hdf5_round_trip_is_exact(tmp_path, data, n, npix):
    labels = {"F": data.draw(values((n,), FLOATS)), "I": data.draw(values((n,), [np.int16, np.int64])),
              "S": np.array(data.draw(st.lists(TEXT, min_size=n, max_size=n)), dtype=str)}
    ids = data.draw(st.lists(TEXT, min_size=n, max_size=n))
    scale = data.draw(st.lists(st.floats(1e-30, 1e30), min_size=n, max_size=n))
    s = quietly(Spectra, valid_wave(npix), data.draw(values((n, npix))), data.draw(values((n, npix))), None, labels,
                ids, scale if n else None, {"source": "t", "flux_unit": "u"})
    path = tmp_path / "rt.h5"
    write_h5(s, path)
    r = read_h5(path)
    for name in ("wave", "flux", "ivar", "mask", "scale"):
        a, b = getattr(s, name), getattr(r, name)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), name
    assert r.ids.tolist() == s.ids.tolist() and r.meta == s.meta and r.labels.keys() == s.labels.keys()
    for k, v in s.labels.items():
        assert r.labels[k].dtype.kind == v.dtype.kind and np.array_equal(r.labels[k], v, equal_nan=v.dtype.kind == "f")
    start, stop = data.draw(st.integers(0, n)), data.draw(st.integers(0, n))
    with H5Spectra(path) as h5:
        part = h5.read(slice(start, stop))
    assert np.array_equal(part.flux, s.flux[start:stop]) and part.ids.tolist() == s.ids[start:stop].tolist()


# -- readers on random files of every layout -------------------------------------------------------------------------
def read_checked(path, **kw):
    """read_spectra, which may refuse the file with a SpecaeError naming it; a result is checked finite."""
    try:
        s = quietly(read_spectra, path, **kw)
    except SpecaeError as e:
        assert str(path) in str(e) and "\n" not in str(e)
        return None
    check_result(s)
    return s


@FEW
@given(data=st.data(), npix=st.integers(1, 12), n_exp=st.integers(0, 2),
       catalogue=st.sampled_from(["SPECOBJ", "SPALL", None]), good_grid=st.booleans())
def test_random_sdss_files(tmp_path, data, npix, n_exp, catalogue, good_grid):
    loglam = np.round(np.log10(3700) + 1e-4 * np.arange(npix), 4) if good_grid else \
        data.draw(values((npix,), FITS_FLOATS, low=-1, high=5))
    flux, ivar = data.draw(values((npix,), FITS_FLOATS)), data.draw(values((npix,), FITS_FLOATS))
    and_mask = data.draw(hnp.arrays(np.int32, npix, elements=st.sampled_from([0, 0, 0, 1 << 18])))
    exps = []
    for k in range(n_exp):
        m = data.draw(st.integers(1, 15))
        e_loglam = np.log10(3690) + 1.1e-4 * np.arange(m) if data.draw(st.booleans()) else \
            data.draw(values((m,), FITS_FLOATS, low=3, high=4))
        e_flux, e_ivar = data.draw(values((m,), FITS_FLOATS)), data.draw(values((m,), FITS_FLOATS))
        exps.append((f"B1-{k:08d}-1-2", e_loglam, e_flux, e_ivar, np.zeros(m, np.int32), 5e9))
    path = tmp_path / "spec-r.fits"
    with np.errstate(over="ignore", invalid="ignore"):     # FITS 'E' columns: float64 specials cast to float32
        sdss_file(path, loglam, flux, ivar, and_mask, catalogue=catalogue, exposures=exps)
    s = read_checked(path)
    if good_grid:
        assert s is not None and len(s) == 1
        with np.errstate(over="ignore"):                   # what the file holds: its 'E' columns are float32
            flux, ivar = flux.astype(np.float32), ivar.astype(np.float32)
        check_kept(s, flux, ivar, valid_pixels(flux, ivar, and_mask != 0))
    e = read_checked(path, exposures=True)
    assert e is None or (len(e) == n_exp and e.npix == npix)


@FEW
@given(data=st.data(), nspec=st.integers(1, 3), npix=st.integers(1, 8), two_arms=st.booleans())
def test_random_desi_coadds(tmp_path, data, nspec, npix, two_arms):
    arms = {}
    for a, start in (("B", 3600.0), ("R", 3600.0 + 0.8 * max(npix - 2, 0)))[:1 + two_arms]:
        rows = data.draw(st.sampled_from([nspec, nspec, nspec + 1]))        # sometimes a row too many
        arms[a] = (start + 0.8 * np.arange(npix), data.draw(values((rows, npix), FITS_FLOATS)),
                   data.draw(values((nspec, npix), FITS_FLOATS)), data.draw(hnp.arrays(np.int32, (nspec, npix),
                                                                                  elements=st.sampled_from([0, 0, 1]))))
    path = tmp_path / "coadd-r.fits"
    desi_coadd_file(path, arms, np.arange(nspec))
    s = read_checked(path)
    if s is not None:
        assert len(s) == nspec


@FEW
@given(data=st.data(), nspec=st.integers(1, 3), npix=st.integers(1, 8))
def test_random_desi_stacks(tmp_path, data, nspec, npix):
    wave = data.draw(waves(npix)).astype(np.float64)
    path = tmp_path / "stack-r.fits"
    flux, ivar = data.draw(values((nspec, npix), FITS_FLOATS)), data.draw(values((nspec, npix), FITS_FLOATS))
    desi_stack_file(path, wave, flux, ivar)
    s = read_checked(path)
    assert (s is not None) == is_grid(wave)


@FEW
@given(data=st.data(), kind=st.sampled_from(["aspcapStar", "apStar", "apVisit"]), npix=st.integers(2, 10))
def test_random_apogee_files(tmp_path, data, kind, npix):
    shape = (3, npix) if kind != "aspcapStar" else (npix,)
    flux, err = data.draw(values(shape, FITS_FLOATS)), data.draw(values(shape, FITS_FLOATS))
    bits = data.draw(hnp.arrays(np.int32, shape, elements=st.sampled_from([0, 0, 1, 1 << 9])))
    wave = None
    if kind == "apVisit":   # chips stored red to blue, each in decreasing wavelength
        wave = np.array([16500.0, 16000.0, 15200.0])[:, None] + 0.3 * np.arange(npix)[::-1]
        if data.draw(st.booleans()):
            wave = data.draw(values(shape, FITS_FLOATS, low=15000, high=17000))
    path = tmp_path / f"{kind}-r.fits"
    apogee_file(path, kind, flux, err, bits, wave=wave)
    read_checked(path)


@FEW
@given(data=st.data(), npix=st.integers(1, 10), dr7=st.booleans(), coeff1=st.sampled_from([1e-4, 0.0, -1e-4, 50.0]))
def test_random_lamost_files(tmp_path, data, npix, dr7, coeff1):
    rows = data.draw(values((5, npix), FITS_FLOATS))
    rows[3] = data.draw(hnp.arrays(np.int32, npix, elements=st.sampled_from([0, 0, 1, 1 << 5])))
    if dr7 and data.draw(st.booleans()):
        with np.errstate(over="ignore"):
            rows[2] = 10 ** (3.5682 + coeff1 * np.arange(npix))
    hdu = fits.PrimaryHDU(rows)
    hdu.header.update({"EXTEN0": "Flux, Inverse, Wavelength, Andmask, Ormask" if dr7 else
                       "Flux Inverse Subcontinuum Andmask Ormask", "COEFF0": 3.5682, "COEFF1": coeff1, "CLASS": "STAR"})
    path = tmp_path / "spec-r.fits"
    hdu.writeto(path, overwrite=True)
    s = read_checked(path)
    assert (s is not None) <= (coeff1 > 0 or npix == 1)       # a grid that does not increase is refused
    if s is not None:
        assert len(s) == 1 and s.mask[0][rows[3] != 0].all()


# -- damaged files ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("good")
    fits_path, h5_path = d / "spec-good.fits", d / "good.h5"
    full_sdss_file(fits_path)
    rng = np.random.default_rng(0)
    wave = valid_wave(30)
    write_h5(Spectra(wave, rng.normal(1, 0.1, (4, 30)), np.ones((4, 30)), labels={"Z": np.arange(4.0)}), h5_path)
    return fits_path.read_bytes(), h5_path.read_bytes()


@FEW
@given(data=st.data())
def test_truncated_or_corrupted_fits_files_are_refused_or_read_finite(tmp_path, good_files, data):
    blob = bytearray(good_files[0])
    if data.draw(st.booleans()):
        blob = blob[:data.draw(st.integers(0, len(blob) - 1))]
    else:   # overwrite a few bytes, mostly in the headers (first HDUs), where parsing can go astray
        for _ in range(data.draw(st.integers(1, 8))):
            blob[data.draw(st.integers(0, data.draw(st.sampled_from([3 * 2880, len(blob) - 1]))))] = \
                data.draw(st.integers(0, 255))
    path = tmp_path / "bad.fits"
    path.write_bytes(bytes(blob))
    read_checked(path)
    read_checked(path, exposures=True)


@FEW
@given(data=st.data())
def test_truncated_hdf5_files_are_refused(tmp_path, good_files, data):
    # (bytes overwritten inside a valid HDF5 file are left out: the HDF5 library itself can loop forever
    # on some corrupt metadata, which no reader above it can prevent)
    path = tmp_path / "cut.h5"
    path.write_bytes(good_files[1][:data.draw(st.integers(0, len(good_files[1]) - 1))])
    with pytest.raises(SpecaeError) as err:
        read_h5(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
