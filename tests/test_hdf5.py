import warnings

import h5py
import numpy as np
import pytest

from specae.data.hdf5 import (CHUNK_BYTES, FORMAT_VERSION, SIGMA_NAMES, WAVE_NAMES, H5Spectra, default_chunk_rows,
                              iter_h5, read_h5, write_h5)
from specae.errors import SpecaeError
from tests.conftest import write_mismatched_h5


def test_round_trip_is_exact(tmp_path, small_spectra):
    s = small_spectra
    s.scale = np.linspace(0.5, 2.0, len(s))   # a normalisation divided out, kept exactly
    path = tmp_path / "s.h5"
    write_h5(s, path)
    r = read_h5(path)
    for name in ("wave", "flux", "ivar", "mask", "ids", "scale"):
        a, b = getattr(s, name), getattr(r, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert set(r.labels) == {"Z", "CLASS"}
    assert np.array_equal(r.labels["Z"], s.labels["Z"]) and r.labels["CLASS"].tolist() == s.labels["CLASS"].tolist()
    assert r.meta == s.meta
    with h5py.File(path) as f:
        assert f.attrs["specae_format"] == FORMAT_VERSION
        assert f["flux"].dtype == np.float32 and f["wave"].dtype == np.float64 and f["flux"].chunks is not None
    assert [p.name for p in tmp_path.iterdir()] == ["s.h5"]      # no temporary left behind


def test_lazy_batches_return_the_same_rows(tmp_path, small_spectra):
    path = tmp_path / "s.h5"
    write_h5(small_spectra, path)
    batches = list(iter_h5(path, batch_size=4))
    assert [len(b) for b in batches] == [4, 4, 1]
    full = read_h5(path)
    assert np.array_equal(np.concatenate([b.flux for b in batches]), full.flux)
    assert np.concatenate([b.ids for b in batches]).tolist() == full.ids.tolist()
    with H5Spectra(path) as h5:
        part = h5.read(slice(3, 6))
        assert part.ids.tolist() == ["obj3", "obj4", "obj5"]
        assert np.array_equal(part.labels["Z"], small_spectra.labels["Z"][3:6])
        assert np.array_equal(h5.read_label("Z"), small_spectra.labels["Z"])
        assert h5.read_label("CLASS", slice(0, 2)).tolist() == ["GALAXY", "QSO"]
        with pytest.raises(SpecaeError, match=r"s.h5: no label 'ZZ' \(labels: CLASS, Z\)"):
            h5.read_label("ZZ")


def test_truncated_file_is_a_clear_error(tmp_path, small_spectra):
    path = tmp_path / "s.h5"
    write_h5(small_spectra, path)
    data = path.read_bytes()
    bad = tmp_path / "cut.h5"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(SpecaeError, match="cut.h5"):
        read_h5(bad)


def test_not_a_spectrum_file_and_missing(tmp_path):
    with pytest.raises(SpecaeError, match="no such file"):
        read_h5(tmp_path / "nope.h5")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(SpecaeError, match=r"other.h5: not a spectrum file: it lacks a wavelength dataset \(wave, "
                                          r"wavelength, lambda, lam, loglam.*'flux'.*ivar, or 1-sigma error, err, "
                                          r"sigma, flux_err\); it holds x$"):
        read_h5(other)
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(SpecaeError, match="not a readable HDF5 file"):
        read_h5(text)


def test_mismatched_shapes_in_file(tmp_path):
    path = tmp_path / "bad.h5"
    write_mismatched_h5(path)
    with pytest.raises(SpecaeError, match="inconsistent shapes"):
        read_h5(path)


def test_failed_write_leaves_no_file(tmp_path, small_spectra):
    with pytest.raises(SpecaeError, match="does not exist"):
        write_h5(small_spectra, tmp_path / "missing_dir" / "out.h5")
    path = tmp_path / "out.h5"
    with pytest.raises(TypeError):
        write_h5(small_spectra, path, extra={"bad": np.array([object()])})
    assert list(tmp_path.iterdir()) == []


# -- files users write themselves ------------------------------------------------------------------
def _plain(path, names=("wave", "flux", "ivar"), n=5, npix=30, attrs=None, **extra):
    """A plain HDF5 file with wavelength/flux/uncertainty under `names`; returns (wave, flux, uncertainty)."""
    rng = np.random.default_rng(1)
    wave = np.linspace(4000.0, 5000.0, npix)
    flux = rng.normal(1, 0.1, (n, npix))
    unc = rng.uniform(0.5, 2.0, (n, npix))
    with h5py.File(path, "w") as f:
        f.attrs.update(attrs or {})
        f[names[0]] = np.log10(wave) if names[0].lower() == "loglam" else wave
        f[names[1]] = flux
        f[names[2]] = unc
        for k, v in extra.items():
            f[k] = v
    return wave, flux, unc


def test_plain_file_without_format_attribute_is_read_with_a_note(tmp_path):
    path = tmp_path / "mine.h5"
    wave, flux, ivar = _plain(path)
    with pytest.warns(UserWarning, match=r"mine.h5: no specae_format attribute; reading it as a plain "
                                         r"wave/flux/ivar file") as rec:
        s = read_h5(path)
    assert len(rec) == 1
    np.testing.assert_array_equal(s.wave, wave)
    np.testing.assert_array_equal(s.flux, flux.astype(np.float32))
    np.testing.assert_array_equal(s.ivar, ivar.astype(np.float32))
    assert not s.mask.any() and s.ids.tolist() == ["0", "1", "2", "3", "4"] and s.labels == {}


def test_specae_file_gives_no_note(tmp_path, small_spectra):
    write_h5(small_spectra, tmp_path / "s.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_h5(tmp_path / "s.h5")


@pytest.mark.parametrize("wave_name", WAVE_NAMES + ("Wavelength", "LAMBDA"))
def test_wavelength_names_are_recognised(tmp_path, wave_name):
    path = tmp_path / "w.h5"
    wave, flux, _ = _plain(path, (wave_name, "flux", "ivar"), attrs={"specae_format": 1})
    s = read_h5(path)
    np.testing.assert_allclose(s.wave, wave, rtol=1e-12)   # loglam (log10 Angstrom) is converted
    np.testing.assert_array_equal(s.flux, flux.astype(np.float32))


@pytest.mark.parametrize("sigma_name", SIGMA_NAMES + ("ERROR",))
def test_sigma_is_converted_to_ivar_and_bad_sigma_masked(tmp_path, sigma_name):
    path = tmp_path / "e.h5"
    rng = np.random.default_rng(2)
    sigma = rng.uniform(0.5, 2.0, (3, 20))
    sigma[0, 1], sigma[1, 2], sigma[2, 3], sigma[2, 4] = 0.0, -1.0, np.nan, np.inf
    with h5py.File(path, "w") as f:
        f.attrs["specae_format"] = 1
        f["wave"], f["flux"], f[sigma_name] = 4000 + np.arange(20.0), np.ones((3, 20)), sigma
    s = read_h5(path)
    bad = ~np.isfinite(sigma) | (sigma <= 0)
    assert np.array_equal(s.mask, bad) and bad.sum() == 4
    np.testing.assert_allclose(s.ivar[~bad], 1 / sigma[~bad] ** 2, rtol=1e-6)
    assert np.all(s.ivar[bad] == 0)


def test_ivar_is_preferred_to_sigma_and_mask_is_honoured(tmp_path):
    path = tmp_path / "both.h5"
    mask = np.zeros((5, 30), bool)
    mask[1, 3:6] = True
    _, _, ivar = _plain(path, attrs={"specae_format": 1}, sigma=np.full((5, 30), 7.0), mask=mask)
    s = read_h5(path)
    assert np.array_equal(s.mask, mask)
    np.testing.assert_array_equal(s.ivar[~mask], ivar[~mask].astype(np.float32))


def test_one_dimensional_flux_is_one_spectrum(tmp_path):
    path = tmp_path / "one.h5"
    with h5py.File(path, "w") as f:
        f.attrs["specae_format"] = 1
        f["lambda"], f["flux"], f["err"] = 5000 + np.arange(10.0), np.arange(10.0), np.full(10, 0.5)
        f["labels/Z"] = 0.3
    s = read_h5(path)
    assert s.flux.shape == (1, 10) and s.labels["Z"].tolist() == [0.3]
    np.testing.assert_array_equal(s.flux[0], np.arange(10.0))
    assert np.all(s.ivar == 4.0)
    with H5Spectra(path) as h5:
        assert len(h5) == 1 and h5.shape == (1, 10) and len(h5.read(slice(1, 2))) == 0


def test_lazy_reading_works_for_aliased_files(tmp_path):
    path = tmp_path / "alias.h5"
    wave, flux, sigma = _plain(path, ("loglam", "flux", "flux_err"), n=7, attrs={"specae_format": 1})
    with H5Spectra(path) as h5:
        part = h5.read(slice(2, 5))
        batches = list(h5.batches(3))
    np.testing.assert_array_equal(part.flux, flux[2:5].astype(np.float32))
    np.testing.assert_allclose(part.ivar, 1 / sigma[2:5] ** 2, rtol=1e-6)
    assert [len(b) for b in batches] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([b.flux for b in batches]), flux.astype(np.float32))


def test_newer_format_is_refused(tmp_path):
    path = tmp_path / "future.h5"
    _plain(path, attrs={"specae_format": FORMAT_VERSION + 1})
    with pytest.raises(SpecaeError, match=rf"future.h5: written in specae HDF5 format {FORMAT_VERSION + 1}, but "
                                          rf"this specae reads format {FORMAT_VERSION} at most: upgrade specae"):
        read_h5(path)
    _plain(path, attrs={"specae_format": "soon"})
    with pytest.raises(SpecaeError, match="future.h5: its specae_format attribute 'soon' is not a version number"):
        read_h5(path)


@pytest.mark.parametrize("drop, missing", [
    ("wave", r"a wavelength dataset \(wave, wavelength, lambda, lam, loglam; loglam in log10 Angstrom\)"),
    ("flux", "a 'flux' dataset"),
    ("ivar", r"an uncertainty dataset \(ivar, or 1-sigma error, err, sigma, flux_err\)")])
def test_missing_dataset_names_the_file_and_the_accepted_names(tmp_path, drop, missing):
    path = tmp_path / "part.h5"
    _plain(path)
    with h5py.File(path, "a") as f:
        del f[drop]
    with pytest.raises(SpecaeError, match=rf"part.h5: not a spectrum file: it lacks {missing}; it holds "):
        read_h5(path)


def test_wavelength_grid_of_other_shape_is_refused(tmp_path):
    path = tmp_path / "grid2d.h5"
    _plain(path, ("wave", "flux", "ivar"))
    with h5py.File(path, "a") as f:
        del f["wave"]
        f["wave"] = np.tile(np.linspace(4000.0, 5000.0, 30), (5, 1))
    with pytest.raises(SpecaeError, match=r"grid2d.h5: datasets flux \(5, 30\) and wave \(5, 30\) have "
                                          r"inconsistent shapes \(one wavelength grid of 30 pixels is needed\)"):
        read_h5(path)


# -- chunking for streaming ------------------------------------------------------------------------
@pytest.mark.parametrize("n, npix", [(2000, 3921), (3, 3921), (50, 100000), (10, 7)])
def test_chunks_are_whole_rows_of_at_most_one_mebibyte(tmp_path, n, npix):
    from specae.data.spectra import Spectra

    wave = np.linspace(4000.0, 9000.0, npix)
    s = Spectra(wave, np.ones((n, npix)), np.ones((n, npix)))
    path = tmp_path / "c.h5"
    write_h5(s, path, extra={"flux_sigma": np.ones((n, npix), np.float32)})
    rows = min(n, max(1, CHUNK_BYTES // (4 * npix)))
    with h5py.File(path) as f:
        for name in ("flux", "ivar", "mask", "flux_sigma"):
            assert f[name].chunks == (rows, npix), name
        assert f["flux"].compression is None and f["ivar"].compression is None
        assert f["mask"].compression == "gzip" and f["mask"].compression_opts == 1
    with H5Spectra(path) as h5:
        assert h5.chunk_rows == rows
    if n > rows:   # the chunk is as large as fits in CHUNK_BYTES
        assert rows * npix * 4 <= CHUNK_BYTES < (rows + 1) * npix * 4 or rows == 1


def test_chunk_rows_of_unchunked_and_one_spectrum_files(tmp_path):
    path = tmp_path / "plain.h5"
    _plain(path, n=5, npix=3921, attrs={"specae_format": 1})          # h5py writes contiguous datasets
    with H5Spectra(path) as h5:
        assert h5.chunk_rows == default_chunk_rows(3921) == CHUNK_BYTES // (4 * 3921)
    with h5py.File(path, "w") as f:
        f.attrs["specae_format"] = 1
        f["wave"], f["flux"], f["ivar"] = 4000 + np.arange(10.0), np.ones(10), np.ones(10)
    with H5Spectra(path) as h5:
        assert h5.chunk_rows == default_chunk_rows(10)
    with h5py.File(path, "w") as f:
        f.attrs["specae_format"] = 1
        f["wave"] = 4000 + np.arange(10.0)
        f.create_dataset("flux", data=np.ones((40, 10)), chunks=(8, 5))
        f["ivar"] = np.ones((40, 10))
    with H5Spectra(path) as h5:
        assert h5.chunk_rows == 8


def test_log_wavelengths_under_another_name_give_a_warning(tmp_path):
    path = tmp_path / "logwave.h5"
    wave, _, _ = _plain(path, attrs={"specae_format": 1})
    with h5py.File(path, "a") as f:
        f["wave"][...] = np.log10(wave)
    with pytest.warns(UserWarning, match=r"logwave.h5: wavelengths 3.602-3.699 do not look like Angstrom.*'loglam'"):
        s = read_h5(path)
    np.testing.assert_array_equal(s.wave, np.log10(wave))     # read as given: only the user can know the unit
