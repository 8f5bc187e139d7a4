"""Survey readers against the real files in ../shared/data, plus synthetic files for bad input.

Tests that need the reference data skip with a clear reason when the folder is absent.
"""

from functools import cache
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from specae.data.readers import (APOGEE_BAD_BITS, APOGEE_PARAMS, detect_format, read_apogee, read_desi, read_many,
                                 read_sdss, read_spectra)
from specae.errors import SpecaeError

DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"reference data folder {DATA} (shared/data beside the "
                                                          "checkout) is absent")


def _files(sub: str, pattern: str = "*.fits") -> list[Path]:
    # a placeholder keeps the parametrised tests collectable (and skipped by needs_data) without the data
    return sorted((DATA / sub).glob(pattern)) if DATA.is_dir() else [DATA / sub / pattern]


SDSS = _files("sdss")
DESI_COADDS = _files("desi", "coadd-*.fits")
APOGEE = _files("apogee")
ASPCAP = _files("apogee", "aspcapStar-*.fits")
APSTAR = _files("apogee", "apStar-*.fits")
APVISIT = _files("apogee", "apVisit-*.fits")
SPECTRA = SDSS + DESI_COADDS + _files("desi", "stack-*.fits") + APOGEE


def name(path: Path) -> str:
    """Test id: the file name."""
    return path.name


@cache
def _read(path: Path):
    return read_spectra(path)


# -- every file ------------------------------------------------------------------------------------------
@needs_data
@pytest.mark.parametrize("path", SPECTRA, ids=name)
def test_every_spectrum_file_reads_and_is_detected(path):
    survey = path.parent.name
    assert detect_format(path) == survey
    s = _read(path)
    assert len(s) == 1 and s.meta["source"] == survey
    assert np.all(np.diff(s.wave) > 0) and np.all(np.isfinite(s.flux)) and np.all(s.ivar >= 0)
    assert np.array_equal(s.mask, s.ivar == 0)
    if "spec-0269-51581-0003" not in path.name:
        assert s.has_data.all() and (~s.mask).mean() > 0.5, "more than half the pixels masked"


@needs_data
@pytest.mark.parametrize("path", _files("desi", "redrock-*.fits") + _files("desi", "LICENSE*"), ids=name)
def test_non_spectrum_files_are_rejected_with_their_name(path):
    for fn in (detect_format, read_spectra):
        with pytest.raises(SpecaeError, match=path.name):
            fn(path)


# -- SDSS ------------------------------------------------------------------------------------------------
@needs_data
@pytest.mark.parametrize("path", SDSS, ids=name)
def test_sdss_matches_file(path):
    s = read_sdss(path)
    with fits.open(path) as h:
        c, obj = h["COADD"].data, h["SPECOBJ"].data[0]
        loglam, flux, ivar, and_mask = (np.asarray(c[k], dtype=float) for k in ("loglam", "flux", "ivar", "and_mask"))
        assert s.labels["Z"][0] == obj["Z"] and s.labels["Z_ERR"][0] == obj["Z_ERR"]
        assert s.labels["ZWARNING"][0] == obj["ZWARNING"] and s.labels["CLASS"][0] == obj["CLASS"].strip()
        assert s.ids[0] == f"{obj['PLATE']:04d}-{obj['MJD']:05d}-{obj['FIBERID']:04d}"
    np.testing.assert_allclose(s.wave, 10 ** loglam, rtol=1e-6)
    assert 3550 < s.wave[0] < 4000 and 7000 < s.wave[-1] < 10450
    np.testing.assert_allclose(np.diff(np.log10(s.wave)), 1e-4, rtol=1e-9)  # float32 loglam snapped to the grid
    assert np.array_equal(s.mask[0], (and_mask != 0) | (ivar == 0))
    assert np.all(s.ivar[0][and_mask != 0] == 0)
    good = ~s.mask[0]
    np.testing.assert_array_equal(s.flux[0][good], flux[good].astype(np.float32))
    np.testing.assert_array_equal(s.ivar[0][good], ivar[good].astype(np.float32))


@needs_data
def test_sdss_dead_fibre_has_no_data():
    s = read_sdss(DATA / "sdss" / "spec-0269-51581-0003.fits")
    assert not s.has_data[0] and s.mask.all() and s.labels["ZWARNING"][0] == 6
    assert len(s.drop_empty()) == 0


@needs_data
def test_gelato_file_is_spec_lite():
    path = DATA / "sdss" / "gelato-1237652899686318136.fits"
    s = read_spectra(path)
    assert s.ids[0] == "0665-52168-0284" and s.labels["SUBCLASS"][0] == "AGN"


# -- DESI ------------------------------------------------------------------------------------------------
@needs_data
@pytest.mark.parametrize("path", DESI_COADDS, ids=name)
def test_desi_coadd_grid_and_redrock_labels(path):
    s = read_desi(path)
    with fits.open(path.with_name(path.name.replace("coadd", "redrock"))) as h:
        z = h["REDSHIFTS"].data
        row = np.flatnonzero(z["TARGETID"] == int(s.ids[0]))
        assert row.size == 1
        assert s.labels["Z"][0] == z["Z"][row[0]] and s.labels["ZWARN"][0] == z["ZWARN"][row[0]]
        assert s.labels["SPECTYPE"][0] == z["SPECTYPE"][row[0]].strip()
    with fits.open(path) as h:
        assert s.ids[0] == str(h["FIBERMAP"].data["TARGETID"][0])
    assert s.wave[0] == pytest.approx(3600.0) and s.wave[-1] == pytest.approx(9824.0)
    np.testing.assert_allclose(np.diff(s.wave), 0.8, rtol=1e-6)
    assert s.npix == round((9824 - 3600) / 0.8) + 1


@needs_data
@pytest.mark.parametrize("path", DESI_COADDS, ids=name)
def test_desi_overlap_is_ivar_weighted(path):
    s = read_desi(path)
    with fits.open(path) as h:
        arm = {a: (h[f"{a}_WAVELENGTH"].data, h[f"{a}_FLUX"].data[0].astype(float),
                   h[f"{a}_IVAR"].data[0].astype(float)) for a in "BRZ"}
    for (a, b), w in ((("B", "R"), 5780.0), (("R", "Z"), 7560.0)):
        i = int(np.argmin(np.abs(s.wave - w)))
        ka, kb = (int(np.argmin(np.abs(arm[x][0] - s.wave[i]))) for x in (a, b))
        fa, ia = arm[a][1][ka], arm[a][2][ka]
        fb, ib = arm[b][1][kb], arm[b][2][kb]
        assert s.ivar[0, i] == pytest.approx(ia + ib, rel=1e-6)
        assert s.flux[0, i] == pytest.approx((fa * ia + fb * ib) / (ia + ib), rel=1e-5)
    i = int(np.argmin(np.abs(s.wave - 4000.0)))  # B only
    k = int(np.argmin(np.abs(arm["B"][0] - 4000.0)))
    assert s.ivar[0, i] == np.float32(arm["B"][2][k]) and s.flux[0, i] == np.float32(arm["B"][1][k])


@needs_data
def test_desi_redrock_argument_and_missing_sibling(tmp_path):
    src = DESI_COADDS[0]
    lone = tmp_path / src.name
    lone.write_bytes(src.read_bytes())
    assert read_desi(lone).labels == {}
    rr = src.with_name(src.name.replace("coadd", "redrock"))
    assert read_desi(lone, redrock=rr).labels["Z"][0] == read_desi(src).labels["Z"][0]
    with pytest.raises(SpecaeError, match="nope.fits"):
        read_desi(lone, redrock=tmp_path / "nope.fits")


@needs_data
def test_desi_lrg_stack_is_read_as_rest_frame_spectrum():
    path = DATA / "desi" / "stack-LRG.fits"
    s = read_desi(path)
    with fits.open(path) as h:
        np.testing.assert_array_equal(s.wave, h["WAVE"].data)
        np.testing.assert_array_equal(s.flux, h["FLUX"].data)
        assert s.labels["ZMED"][0] == h["STACKINFO"].data["ZMED"][0]
    assert s.meta["frame"] == "rest" and 2480 < s.wave[0] < s.wave[-1] < 6980


def test_desi_synthetic_coadd_masked_overlap_and_unmatched_target(tmp_path):
    """Two spectra; B/R overlap with one masked R pixel; a redrock file that lacks the second target."""
    wb, wr = 3600 + 0.8 * np.arange(10), 3600 + 0.8 * np.arange(7, 15)
    fb, fr = np.ones((2, 10)), 3 * np.ones((2, 8))
    ib, ir = np.ones((2, 10)), 2 * np.ones((2, 8))
    mr = np.zeros((2, 8), np.int32)
    mr[0, 1] = 1  # wavelength index 8: R masked there
    hdus = [fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("TARGETID", "K", array=[11, 22])],
                                                            name="FIBERMAP")]
    for a, w, f, i, m in (("B", wb, fb, ib, np.zeros((2, 10), np.int32)), ("R", wr, fr, ir, mr)):
        hdus += [fits.ImageHDU(w, name=f"{a}_WAVELENGTH"), fits.ImageHDU(f, name=f"{a}_FLUX"),
                 fits.ImageHDU(i, name=f"{a}_IVAR"), fits.ImageHDU(m, name=f"{a}_MASK")]
    fits.HDUList(hdus).writeto(tmp_path / "coadd-t.fits")
    cols = [fits.Column("TARGETID", "K", array=[11]), fits.Column("Z", "D", array=[0.5]),
            fits.Column("ZERR", "D", array=[1e-4]), fits.Column("ZWARN", "K", array=[0]),
            fits.Column("SPECTYPE", "6A", array=["QSO"])]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="REDSHIFTS")]).writeto(
        tmp_path / "redrock-t.fits")

    s = read_spectra(tmp_path / "coadd-t.fits")
    assert s.npix == 15 and list(s.ids) == ["11", "22"]
    np.testing.assert_allclose(s.ivar[0], [1] * 7 + [3, 1, 3] + [2] * 5)
    np.testing.assert_allclose(s.flux[0], [1] * 7 + [7 / 3, 1, 7 / 3] + [3] * 5)
    np.testing.assert_allclose(s.labels["Z"], [0.5, np.nan])
    assert list(s.labels["ZWARN"]) == [0, -1] and list(s.labels["SPECTYPE"]) == ["QSO", ""]


# -- APOGEE ----------------------------------------------------------------------------------------------
@needs_data
@pytest.mark.parametrize("path", ASPCAP, ids=name)
def test_aspcapstar_labels_wave_and_mask(path):
    s = read_apogee(path)
    with fits.open(path) as h:
        t = h[4].data[0]
        for k, label in enumerate(APOGEE_PARAMS):
            assert s.labels[label][0] == pytest.approx(t["FPARAM"][k], abs=0) or t["FPARAM"][k] <= -9999
        assert s.ids[0] == t["APOGEE_ID"].strip()
        flux, err = h[1].data.astype(float), h[2].data.astype(float)
        h1 = h[1].header
        np.testing.assert_allclose(s.wave, 10 ** (h1["CRVAL1"] + h1["CDELT1"] * np.arange(h1["NAXIS1"])))
    assert 15100 < s.wave[0] < 15101 and 16999 < s.wave[-1] < 17000
    assert s.mask[0][(err <= 0) | (flux == 0)].all()  # chip gaps (err 0) and dropped pixels (flux 0, err 10)
    good = ~s.mask[0]
    np.testing.assert_allclose(s.ivar[0][good], 1 / err[good] ** 2, rtol=1e-6)
    assert s.meta["flux_unit"] == "continuum-normalised" and s.meta["frame"] == "rest"


@needs_data
@pytest.mark.parametrize("path", APSTAR, ids=name)
def test_apstar_takes_combined_row_and_masks_bad_pixels(path):
    s = read_apogee(path)
    with fits.open(path) as h:
        flux, err, bits = h[1].data[0], h[2].data[0], h[3].data[0]
        assert s.ids[0] == h[0].header["OBJID"] and s.labels["SNR"][0] == h[0].header["SNR"]
    huge = np.isfinite(err) & (err > 1e9)
    assert huge.any() and s.mask[0][huge].all()
    assert s.mask[0][(bits & APOGEE_BAD_BITS) != 0].all() and s.mask[0][~np.isfinite(flux)].all()
    good = ~s.mask[0]
    assert good.mean() > 0.85
    np.testing.assert_allclose(s.flux[0][good], flux[good], rtol=1e-6)
    np.testing.assert_allclose(s.ivar[0][good], 1 / err[good] ** 2, rtol=1e-6)
    assert 15100 < s.wave[0] < 15101 and 16999 < s.wave[-1] < 17000


@needs_data
@pytest.mark.parametrize("path", APVISIT, ids=name)
def test_apvisit_chips_merged_in_wavelength_order(path):
    s = read_apogee(path)
    with fits.open(path) as h:
        wave, flux = h[4].data, h[1].data
        assert s.ids[0].startswith(h[0].header["OBJID"])
    own = np.isin(s.wave, wave)
    assert own.sum() == wave.size  # every chip pixel kept, the rest fills the two chip gaps
    assert s.mask[0][~own].all() and (~own).sum() < 0.1 * s.npix
    order = np.argsort(wave.ravel())
    np.testing.assert_array_equal(s.wave[own], wave.ravel()[order])
    good = ~s.mask[0][own]
    np.testing.assert_allclose(s.flux[0][own][good], flux.ravel()[order][good], rtol=1e-6)
    assert 15100 < s.wave[0] and s.wave[-1] < 17000 and s.meta["frame"] == "observed"


# -- bad input -------------------------------------------------------------------------------------------
def _bad_files(tmp_path):
    garbage = tmp_path / "garbage.fits"
    garbage.write_bytes(b"this is not a FITS file\n" * 200)
    empty = tmp_path / "empty.fits"
    fits.PrimaryHDU().writeto(empty)
    table = tmp_path / "table.fits"
    fits.BinTableHDU.from_columns([fits.Column("X", "D", array=[1.0])]).writeto(table)
    return [tmp_path / "missing.fits", tmp_path, garbage, empty, table]


@pytest.mark.parametrize("fn", [detect_format, read_spectra, read_sdss, read_desi, read_apogee],
                         ids=lambda f: f.__name__)
def test_bad_input_raises_specae_error_naming_the_file(tmp_path, fn):
    for path in _bad_files(tmp_path):
        with pytest.raises(SpecaeError) as err:
            fn(path)
        message = str(err.value)
        assert str(path) in message and "\n" not in message


@needs_data
def test_reader_for_the_wrong_survey_names_the_file():
    path = APOGEE[0]
    for fn in (read_sdss, read_desi):
        with pytest.raises(SpecaeError, match=path.name):
            fn(path)
    with pytest.raises(SpecaeError, match=SDSS[0].name):
        read_apogee(SDSS[0])


# -- many files ------------------------------------------------------------------------------------------
@needs_data
def test_read_many_sdss_on_one_loglam_grid():
    paths = [DATA / "sdss" / "spec-0266-51602-0107.fits", DATA / "sdss" / "spec-1931-53358-0251.fits"]
    one = [read_sdss(p) for p in paths]
    s = read_many(paths)
    assert len(s) == 2 and list(s.ids) == [o.ids[0] for o in one]
    np.testing.assert_allclose(np.diff(np.log10(s.wave)), 1e-4, rtol=1e-6)
    assert s.wave[0] == pytest.approx(min(o.wave[0] for o in one), rel=1e-9)
    assert s.wave[-1] >= max(o.wave[-1] for o in one) * (1 - 1e-9)
    np.testing.assert_array_equal(s.labels["Z"], [o.labels["Z"][0] for o in one])
    assert s.mask[1, s.wave > 7400].all()  # spec-1931 stops at 7350 A
    # both files already lie on the 1e-4 dex grid, so rebinning leaves valid pixels unchanged
    i = np.searchsorted(s.wave, one[0].wave[100])
    assert s.flux[0, i] == pytest.approx(one[0].flux[0, 100], rel=1e-5)


@needs_data
def test_read_many_keeps_partial_labels_and_explicit_grid():
    sdss, desi = DATA / "sdss" / "spec-0266-51602-0107.fits", DESI_COADDS[0]
    wave = np.geomspace(4000, 9000, 2000)
    s = read_many([sdss, desi], wave=wave)
    np.testing.assert_array_equal(s.wave, wave)
    assert list(s.labels["CLASS"]) == ["GALAXY", ""] and list(s.labels["SPECTYPE"]) == ["", "GALAXY"]
    assert s.labels["ZWARNING"][0] == 0 and np.isnan(s.labels["ZWARNING"][1])
    assert s.labels["Z"][1] == pytest.approx(read_desi(desi).labels["Z"][0])
    assert s.meta["source"] == "sdss+desi" and s.has_data.all()


@needs_data
def test_read_many_refuses_mixed_flux_units():
    with pytest.raises(SpecaeError, match="flux_unit"):
        read_many([SDSS[0], ASPCAP[0]])


def test_read_many_needs_files():
    with pytest.raises(SpecaeError):
        read_many([])
