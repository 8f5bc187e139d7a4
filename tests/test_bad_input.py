"""Bad input, tried systematically at the library level.

File-level problems raise one-line SpecaeErrors naming the file; per-pixel problems are masked with one
warning that counts them, leaving a finite result. Input files are never modified, and a failed write
leaves no output file.
"""

import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from astropy.io import fits

from specae.data.hdf5 import read_h5, write_h5
from specae.data.readers import read_many, read_sdss, read_spectra
from specae.data.resample import loglam_grid
from specae.data.spectra import F32_MAX, Spectra
from specae.data.tensors import to_batch
from specae.errors import MaskedPixelsWarning, SpecaeError
from tests.conftest import write_mismatched_h5
from tests.test_readers import DATA, desi_coadd_file, full_sdss_file, needs_data, sdss_file

LOGLAM = np.round(np.log10(3700) + 1e-4 * np.arange(40), 4)


def spec(path, flux=None, ivar=None, loglam=LOGLAM, **kw) -> Path:
    """An SDSS spec-lite file with the given coadd arrays (defaults: flux 1, ivar 4)."""
    sdss_file(path, loglam, np.ones(loglam.size) if flux is None else flux,
              np.full(loglam.size, 4.0) if ivar is None else ivar, **kw)
    return path


def plain_h5(path, wave=None, flux=None, ivar=None, **extra) -> Path:
    """A plain wave/flux/ivar HDF5 file (3 spectra x 40 pixels by default) marked as specae format 1."""
    with h5py.File(path, "w") as f:
        f.attrs["specae_format"] = 1
        f["wave"] = np.linspace(4000.0, 5000.0, 40) if wave is None else wave
        f["flux"] = np.ones((3, 40)) if flux is None else flux
        f["ivar"] = np.full((3, 40), 4.0) if ivar is None else ivar
        for k, v in extra.items():
            f[k] = v
    return path


def one_line_error_naming(path, fn, *args, match=None, **kw) -> str:
    """Call fn and check it raises a one-line SpecaeError naming `path` (and matching `match`); returns it."""
    with pytest.raises(SpecaeError, match=match) as err:
        fn(*args, **kw)
    message = str(err.value)
    assert str(path) in message and "\n" not in message, message
    return message


def read_with_one_masking_warning(fn, *args, count, where):
    """Call fn, check it warns exactly once that `count` pixels were masked, naming `where`; return its result."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args)
    masked = [w.message for w in caught if issubclass(w.category, MaskedPixelsWarning)]
    assert len(masked) == 1 and masked[0].count == count, [str(m) for m in masked]
    assert str(masked[0]).startswith(f"{where}: {count} pixels with NaN/inf")
    return out


# -- per-pixel problems: masked, counted once, finite result -----------------------------------------------
def test_nan_inf_flux_and_negative_nan_ivar_in_a_fits_file(tmp_path):
    flux, ivar = np.ones(40), np.full(40, 4.0)
    flux[[2, 3]] = np.nan, np.inf
    ivar[[5, 6]] = -1.0, np.nan
    path = spec(tmp_path / "spec-nan.fits", flux, ivar)
    s = read_with_one_masking_warning(read_sdss, path, count=4, where=path)
    assert s.mask[0].tolist() == [k in (2, 3, 5, 6) for k in range(40)]
    assert np.isfinite(s.flux).all() and np.isfinite(s.ivar).all() and np.all(s.ivar[s.mask] == 0)
    assert np.all(s.flux[~s.mask] == 1) and np.all(s.ivar[~s.mask] == 4)


def test_nan_inf_flux_and_negative_nan_ivar_in_an_hdf5_file(tmp_path):
    flux, ivar = np.ones((3, 40)), np.full((3, 40), 4.0)
    flux[0, 1], flux[1, 2], ivar[2, 3], ivar[2, 4], ivar[0, 5] = np.nan, -np.inf, -2.0, np.nan, np.inf
    path = plain_h5(tmp_path / "nan.h5", flux=flux, ivar=ivar)
    s = read_with_one_masking_warning(read_h5, path, count=5, where=path)
    assert s.mask.sum() == 5 and np.isfinite(s.flux).all() and np.isfinite(s.ivar).all()


def test_bad_pixels_in_many_files_give_one_warning_with_the_total(tmp_path):
    paths = []
    for k in range(5):
        flux = np.ones(40)
        flux[:k + 1] = np.nan
        paths.append(spec(tmp_path / f"spec-{k}.fits", flux))
    s = read_with_one_masking_warning(read_many, paths, count=15,
                                      where=f"{paths[0]}, {paths[1]}, {paths[2]} and 2 more files")
    assert len(s) == 5 and np.isfinite(s.flux).all()


def test_all_pixels_masked(tmp_path):
    path = spec(tmp_path / "spec-dead.fits", ivar=np.zeros(40))
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # ivar 0 is "no data", not a bad value: no warning
        s = read_sdss(path)
        b, scale = to_batch(s)
        r = s.resample(loglam_grid(3750, 3800, 2e-4))
        rest = s.to_rest_frame([0.1])
    assert not s.has_data[0] and len(s.drop_empty()) == 0
    assert scale[0] == 1.0 and np.all(b.x.numpy() == 0) and np.all(b.ivar.numpy() == 0)
    for t in (s, r, rest):
        assert t.mask.all() and np.all(t.ivar == 0) and np.isfinite(t.flux).all()
    write_h5(s, tmp_path / "dead.h5")
    assert read_h5(tmp_path / "dead.h5").mask.all()


def test_spectrum_of_zeros():
    wave = loglam_grid(4000, 4100, 1e-3)
    s = Spectra(wave, np.zeros((2, wave.size)), np.ones((2, wave.size)))
    b, scale = to_batch(s)
    assert scale.tolist() == [1.0, 1.0] and np.all(b.x.numpy() == 0) and np.all(b.ivar.numpy() == 1)
    rest = s.to_rest_frame([0.0, 0.5])
    assert np.isfinite(rest.flux).all() and np.all(rest.flux[~rest.mask] == 0)


def test_huge_values_do_not_overflow(tmp_path):
    """1e30 in flux and in ivar (and ivar from sigma 1e-30): everything stays finite, no overflow warning."""
    wave = loglam_grid(4000, 4100, 1e-3)
    flux, ivar = np.ones((2, wave.size)), np.ones((2, wave.size))
    flux[0] = 1e30
    ivar[1, :5] = 1e30
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = Spectra(wave, flux, ivar)
        results = [s, s.resample(loglam_grid(4010, 4090, 3e-3)), s.to_rest_frame([0.01, 0.02])]
        write_h5(s, tmp_path / "huge.h5")
        results.append(read_h5(tmp_path / "huge.h5"))
        # dividing out a norm of 1e30 multiplies ivar 1 by 1e60, beyond float32: saturated at its largest value
        b, scale = to_batch(s)
    for r in results:
        assert np.isfinite(r.flux).all() and np.isfinite(r.ivar).all() and np.isfinite(r.scale).all()
        assert r.has_data.all()
    assert scale[0] == pytest.approx(1e30) and np.allclose(b.x[0].numpy(), 1.0)
    assert np.all(b.ivar[0].numpy() == np.float32(F32_MAX))
    assert not s.mask.any() and s.ivar[1, 0] == np.float32(1e30) and s.flux[0, 0] == np.float32(1e30)
    assert results[2].ivar[1, 0] > 1e29                      # a 1e30 pixel keeps its weight through rebinning

    sigma = np.ones((3, 40))
    sigma[0, :3] = 1e-30
    path = plain_h5(tmp_path / "tiny_sigma.h5", ivar=None)
    with h5py.File(path, "a") as f:
        del f["ivar"]
        f["sigma"] = sigma
    with pytest.warns(UserWarning, match="3 pixels have ivar above float32's range and were clipped"):
        r = read_h5(path)
    assert np.all(r.ivar[0, :3] == np.float32(F32_MAX)) and not r.mask.any() and np.isfinite(r.ivar).all()


def test_flux_beyond_float32_is_masked_and_counted():
    wave = np.arange(1.0, 11.0)
    flux = np.ones((1, 10))
    flux[0, 3] = 1e39
    with pytest.warns(MaskedPixelsWarning, match="1 pixels with NaN/inf"):
        s = Spectra(wave, flux, np.ones((1, 10)))
    assert s.mask[0].tolist() == [k == 3 for k in range(10)] and np.isfinite(s.flux).all()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int16, np.int32, np.int64, np.uint8])
def test_flux_ivar_label_dtypes(tmp_path, dtype):
    flux = (np.arange(120).reshape(3, 40) % 7).astype(dtype)
    ivar = np.full((3, 40), 2).astype(dtype)
    z = np.array([0, 1, 2], dtype=dtype)
    path = plain_h5(tmp_path / "t.h5", flux=flux, ivar=ivar, **{"labels/Z": z})
    s = read_h5(path)
    assert s.flux.dtype == np.float32 and s.ivar.dtype == np.float32
    np.testing.assert_array_equal(s.flux, flux.astype(np.float32))
    assert np.all(s.ivar == 2) and s.labels["Z"].dtype == dtype and s.labels["Z"].tolist() == [0, 1, 2]
    write_h5(s, tmp_path / "back.h5")
    back = read_h5(tmp_path / "back.h5")
    assert back.labels["Z"].dtype == dtype and np.array_equal(back.flux, s.flux)


def test_non_numeric_flux_is_an_error(tmp_path):
    path = plain_h5(tmp_path / "strings.h5", flux=np.full((3, 40), b"x"))
    one_line_error_naming(path, read_h5, path, match=r"flux holds \|S1 values, not real numbers")
    with pytest.raises(SpecaeError, match="ivar holds complex128 values"):
        Spectra(np.arange(1.0, 4.0), np.ones(3), np.ones(3) * 1j)


# -- labels with NaN ---------------------------------------------------------------------------------------
def test_labels_with_nan(tmp_path, small_spectra):
    z = small_spectra.labels["Z"].copy()
    z[[2, 5]] = np.nan
    s = Spectra(small_spectra.wave, small_spectra.flux, small_spectra.ivar, labels={"Z": z}, ids=small_spectra.ids)
    write_h5(s, tmp_path / "z.h5")
    back = read_h5(tmp_path / "z.h5")
    np.testing.assert_array_equal(back.labels["Z"], z)          # NaN kept in place (array_equal treats NaN==NaN)
    assert np.isnan(back.labels["Z"][[2, 5]]).all()
    with pytest.raises(SpecaeError, match=r"label 'Z' has 2 non-finite or <= -1 redshifts \(ids obj2, obj5\)"):
        back.to_rest_frame("Z")
    assert len(back.select(np.isfinite(back.labels["Z"])).to_rest_frame("Z")) == 7


# -- file-level problems: one-line error naming the file ------------------------------------------------------
def test_wavelength_not_increasing(tmp_path):
    path = spec(tmp_path / "spec-back.fits", loglam=LOGLAM[::-1])
    one_line_error_naming(path, read_sdss, path, match="wave must be strictly increasing")
    h5 = plain_h5(tmp_path / "back.h5", wave=np.linspace(5000.0, 4000.0, 40))
    one_line_error_naming(h5, read_h5, h5, match="wave must be strictly increasing")
    h5 = plain_h5(tmp_path / "nanwave.h5", wave=np.r_[np.nan, np.linspace(4000.0, 5000.0, 39)])
    one_line_error_naming(h5, read_h5, h5, match="wave must be finite and positive")


def test_mismatched_shapes(tmp_path):
    h5 = tmp_path / "mismatch.h5"
    write_mismatched_h5(h5)
    one_line_error_naming(h5, read_h5, h5, match=r"datasets flux \(3, 10\) and ivar \(3, 11\) have inconsistent")
    h5 = plain_h5(tmp_path / "mask.h5", mask=np.zeros((3, 41), bool))
    one_line_error_naming(h5, read_h5, h5, match=r"and mask \(3, 41\) have inconsistent shapes")
    h5 = plain_h5(tmp_path / "labels.h5", **{"labels/Z": np.zeros(4)})
    one_line_error_naming(h5, read_h5, h5, match=r"label 'Z' has shape \(4,\), expected \(3,\)")
    desi = tmp_path / "coadd-x.fits"
    w = 3600 + 0.8 * np.arange(10)
    desi_coadd_file(desi, {"B": (w, np.ones((2, 10)), np.ones((2, 9)), np.zeros((2, 10), np.int32))}, [1, 2])
    one_line_error_naming(desi, read_spectra, desi, match=r"B_FLUX, B_IVAR, B_MASK have shapes \(2, 10\), \(2, 9\), "
                                                          r"\(2, 10\); expected 2 spectra x 10 pixels")


def test_missing_ivar(tmp_path):
    h5 = plain_h5(tmp_path / "noivar.h5")
    with h5py.File(h5, "a") as f:
        del f["ivar"]
    one_line_error_naming(h5, read_h5, h5, match="it lacks an uncertainty dataset")
    fitsfile = tmp_path / "spec-noivar.fits"
    cols = [fits.Column("flux", "E", array=np.ones(40)), fits.Column("loglam", "E", array=LOGLAM),
            fits.Column("and_mask", "J", array=np.zeros(40, np.int32))]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="COADD")]).writeto(fitsfile)
    one_line_error_naming(fitsfile, read_spectra, fitsfile, match=r"not a complete .*ivar")


def _damaged(tmp_path, good: Path) -> list[Path]:
    """Truncated copies of `good` at several lengths, a random-bytes file and an empty file, same suffix."""
    data = good.read_bytes()
    out = []
    for frac in (0.02, 0.3, 0.6, 0.9):
        p = tmp_path / f"cut{int(frac * 100)}{good.suffix}"
        p.write_bytes(data[:int(len(data) * frac)])
        out.append(p)
    noise = tmp_path / f"noise{good.suffix}"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    empty = tmp_path / f"empty{good.suffix}"
    empty.write_bytes(b"")
    return out + [noise, empty]


def test_truncated_random_and_empty_hdf5_files(tmp_path, small_spectra):
    good = tmp_path / "good.h5"
    write_h5(small_spectra, good)
    for path in _damaged(tmp_path, good):
        one_line_error_naming(path, read_h5, path)


def test_truncated_random_and_empty_fits_files(tmp_path):
    good = tmp_path / "spec-good.fits"
    full_sdss_file(good)
    for path in _damaged(tmp_path, good):
        for fn in (read_spectra, read_sdss):
            one_line_error_naming(path, fn, path)


def test_hdf5_given_to_the_fits_reader_says_so(tmp_path, small_spectra):
    path = tmp_path / "s.h5"
    write_h5(small_spectra, path)
    one_line_error_naming(path, read_spectra, path, match="an HDF5 file, not FITS")


def test_multi_line_messages_are_folded():
    assert str(SpecaeError("a\n  b\r\nc")) == "a b c"


# -- files are left alone ------------------------------------------------------------------------------------
def test_input_files_are_never_modified(tmp_path, small_spectra):
    flux = np.ones(40)
    flux[3] = np.nan
    files = [spec(tmp_path / "spec-nan.fits", flux), tmp_path / "spec-full.fits", tmp_path / "s.h5",
             plain_h5(tmp_path / "plain.h5", flux=np.where(np.eye(3, 40) > 0, np.nan, 1.0))]
    full_sdss_file(files[1])
    write_h5(small_spectra, files[2])
    if DATA.is_dir():
        files += sorted(DATA.glob("*/spec-*.fits"))[::4] + sorted(DATA.glob("*/a*.fits"))[::8]
    before = {p: p.read_bytes() for p in files}
    stat = {p: p.stat().st_mtime_ns for p in files}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for p in files:
            if p.suffix == ".h5":
                to_batch(read_h5(p))
            else:
                to_batch(read_spectra(p))
        read_spectra(files[1], exposures=True)
    for p in files:
        assert p.read_bytes() == before[p] and p.stat().st_mtime_ns == stat[p], p


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, small_spectra):
    out = tmp_path / "out.h5"
    write_h5(small_spectra, out)
    old = out.read_bytes()
    with pytest.raises(TypeError):
        write_h5(small_spectra, out, extra={"bad": np.array([object()] * len(small_spectra))})
    bad_label = Spectra(small_spectra.wave, small_spectra.flux, small_spectra.ivar,
                        labels={"a/b": np.zeros(len(small_spectra))})
    one_line_error_naming("a/b", write_h5, bad_label, out, match="contains '/'")
    assert out.read_bytes() == old and sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]


@needs_data
def test_real_dead_fibre_reads_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = read_spectra(DATA / "sdss" / "spec-0269-51581-0003.fits")
    assert s.mask.all()
