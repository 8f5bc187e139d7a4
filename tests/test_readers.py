"""Survey readers against the real files in ../shared/data, plus synthetic files for bad input.

Tests that need the reference data skip with a clear reason when the folder is absent.
"""

import warnings
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from specae.data.readers import (APOGEE_BAD_BITS, APOGEE_PARAMS, DEFAULT_MASK_BITS, detect_format, read_apogee,
                                 read_desi, read_many, read_sdss, read_spectra)
from specae.data.surveys.maskbits import ALL_BITS
from specae.errors import CountWarning, SpecaeError

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


# -- synthetic files, modelled on the real layouts (used by test_bad_input and test_properties too) --------------
def sdss_file(path, loglam, flux, ivar, and_mask=None, catalogue="SPECOBJ", exposures=(), plate=(266, 51602, 107)):
    """Write an SDSS spec file: PRIMARY, COADD with the spec-lite columns, catalogue HDU `catalogue` (None: none),
    SPZLINE and one exposure table per item of `exposures`: (extname, loglam, flux, ivar, mask, tai_beg)."""
    npix = len(flux)
    zeros = np.zeros(npix, np.float32)
    coadd = [fits.Column("flux", "E", array=flux), fits.Column("loglam", "E", array=loglam),
             fits.Column("ivar", "E", array=ivar),
             fits.Column("and_mask", "J", array=np.zeros(npix, np.int32) if and_mask is None else and_mask),
             fits.Column("or_mask", "J", array=np.zeros(npix, np.int32)), fits.Column("wdisp", "E", array=zeros + 1),
             fits.Column("sky", "E", array=zeros), fits.Column("model", "E", array=zeros)]
    hdus = [fits.PrimaryHDU(), fits.BinTableHDU.from_columns(coadd, name="COADD")]
    if catalogue:
        cat = [fits.Column("PLATE", "J", array=[plate[0]]), fits.Column("MJD", "J", array=[plate[1]]),
               fits.Column("FIBERID", "J", array=[plate[2]]), fits.Column("Z", "E", array=[0.25]),
               fits.Column("Z_ERR", "E", array=[1e-4]), fits.Column("ZWARNING", "J", array=[4]),
               fits.Column("CLASS", "6A", array=["QSO   "]), fits.Column("SUBCLASS", "21A", array=["BROADLINE"])]
        hdus.append(fits.BinTableHDU.from_columns(cat, name=catalogue))
    hdus.append(fits.BinTableHDU.from_columns([fits.Column("LINENAME", "13A", array=["Ha_6564"]),
                                               fits.Column("LINEZ", "E", array=[0.25])], name="SPZLINE"))
    for name, e_loglam, e_flux, e_ivar, e_mask, tai in exposures:
        n = len(e_flux)
        cols = [fits.Column("loglam", "E", array=e_loglam), fits.Column("flux", "E", array=e_flux),
                fits.Column("ivar", "E", array=e_ivar), fits.Column("mask", "J", array=e_mask),
                fits.Column("wdisp", "E", array=np.ones(n)), fits.Column("sky", "E", array=np.zeros(n)),
                fits.Column("x", "E", array=np.zeros(n)), fits.Column("calib", "E", array=np.ones(n))]
        hdu = fits.BinTableHDU.from_columns(cols, name=name)
        hdu.header["TAI-BEG"] = tai
        hdus.append(hdu)
    fits.HDUList(hdus).writeto(path, overwrite=True)


def exposure(camera, expid, lo, hi, signal, tai=51602.25 * 86400, bad=slice(0, 0)):
    """One exposure table's content on a native, slightly irregular log grid from `lo` to `hi` Angstrom."""
    k = np.arange(int(np.log10(hi / lo) / 1e-4))
    loglam = np.log10(lo) + 1e-4 * k + 2e-10 * k ** 1.5
    mask = np.zeros(k.size, np.int32)
    mask[bad] = 1 << 18                                   # FULLREJECT
    return (f"{camera}-{expid:08d}-00123400-00123401", loglam, signal(10 ** loglam), np.full(k.size, 4.0), mask,
            tai)


def smooth(wave):
    return 2 + np.sin(wave / 300)


def full_sdss_file(path, catalogue="SPALL", **kw):
    """A BOSS-like full spec file: a coadd on the 1e-4 dex grid and two exposures, each blue (b1) and red (r1)."""
    loglam = np.round(np.log10(3700) + 1e-4 * np.arange(3800), 4)
    exps = [exposure(cam, expid, lo, hi, smooth, tai=51602.25 * 86400 + 1000 * k, **kw)
            for k, expid in enumerate((123456, 123457)) for cam, lo, hi in (("b1", 3650, 6350), ("r1", 5900, 10300))]
    sdss_file(path, loglam, smooth(10 ** loglam), np.full(loglam.size, 9.0), catalogue=catalogue, exposures=exps)


def desi_coadd_file(path, arms, targetid):
    """Write a DESI coadd: FIBERMAP (TARGETID) and {arm}_WAVELENGTH/_FLUX/_IVAR/_MASK for arms {name: (w, f, i, m)}."""
    hdus = [fits.PrimaryHDU(),
            fits.BinTableHDU.from_columns([fits.Column("TARGETID", "K", array=targetid)], name="FIBERMAP")]
    for a, (w, f, i, m) in arms.items():
        hdus += [fits.ImageHDU(w, name=f"{a}_WAVELENGTH"), fits.ImageHDU(f, name=f"{a}_FLUX"),
                 fits.ImageHDU(i, name=f"{a}_IVAR"), fits.ImageHDU(m, name=f"{a}_MASK")]
    fits.HDUList(hdus).writeto(path, overwrite=True)


def desi_stack_file(path, wave, flux, ivar):
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(flux, name="FLUX"), fits.ImageHDU(ivar, name="IVAR"),
                  fits.ImageHDU(wave, name="WAVE")]).writeto(path, overwrite=True)


def apogee_file(path, kind, flux, err, bits=None, crval=4.179, cdelt=6e-6, wave=None):
    """Write an APOGEE aspcapStar, apStar (log-linear header grid) or apVisit (chips, wave in HDU4) file."""
    primary = fits.PrimaryHDU()
    primary.header.update({"OBJID": "2M00000000+0000000", "SNR": 50.0, "VHELIO": -12.0, "PLATE": "9999",
                           "MJD5": 58000, "FIBERID": 7})
    images = [fits.ImageHDU(flux), fits.ImageHDU(err),
              fits.ImageHDU(np.zeros(np.shape(flux), np.int32) if bits is None else bits)]
    for h in images[:2]:
        h.header.update({"CTYPE1": "LOG-LINEAR", "CRVAL1": crval, "CDELT1": cdelt, "CRPIX1": 1})
    if kind == "aspcapStar":
        t = [fits.Column("APOGEE_ID", "18A", array=["2M00000000+0000000"]),
             fits.Column("FPARAM", "9E", array=[np.arange(9.0) - 1.0]), fits.Column("SNR", "E", array=[80.0]),
             fits.Column("VHELIO", "E", array=[3.0])]
        images.append(fits.BinTableHDU.from_columns(t))
    elif kind == "apVisit":
        images.append(fits.ImageHDU(wave))
        images[-1].header["BUNIT"] = "Wavelength (Ang)"
    fits.HDUList([primary] + images).writeto(path, overwrite=True)


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
    flagged = (and_mask.astype(np.int64) & DEFAULT_MASK_BITS["sdss"]) != 0
    assert np.array_equal(s.mask[0], flagged | (ivar == 0))
    assert np.all(s.ivar[0][flagged] == 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CountWarning)       # some are mostly masked by every bit (test_surveys)
        every_bit = read_sdss(path, mask_bits=ALL_BITS)
    assert np.array_equal(every_bit.mask[0], (and_mask != 0) | (ivar == 0))
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


@pytest.mark.parametrize("catalogue", ["SPECOBJ", "SPALL"])
def test_sdss_labels_from_specobj_or_spall(tmp_path, catalogue):
    path = tmp_path / "spec-0266-51602-0107.fits"
    full_sdss_file(path, catalogue=catalogue)
    s = read_sdss(path)
    assert len(s) == 1 and s.ids.tolist() == ["0266-51602-0107"]
    assert s.labels["Z"][0] == np.float32(0.25) and s.labels["ZWARNING"][0] == 4
    assert s.labels["CLASS"][0] == "QSO" and s.labels["SUBCLASS"][0] == "BROADLINE"
    np.testing.assert_allclose(np.diff(np.log10(s.wave)), 1e-4, rtol=1e-9)


def test_sdss_without_catalogue_is_named_by_file(tmp_path):
    path = tmp_path / "spec-x.fits"
    loglam = np.round(np.log10(3700) + 1e-4 * np.arange(50), 4)
    sdss_file(path, loglam, np.ones(50), np.ones(50), catalogue=None)
    s = read_sdss(path)
    assert s.ids.tolist() == ["spec-x"] and s.labels == {}


def test_sdss_exposures_are_separate_spectra_on_the_coadd_grid(tmp_path):
    path = tmp_path / "spec-0266-51602-0107.fits"
    full_sdss_file(path, bad=slice(100, 110))
    coadd = read_sdss(path)
    s = read_spectra(path, exposures=True)
    names = [f"{c}-{e:08d}-00123400-00123401" for e in (123456, 123457) for c in ("B1", "R1")]
    assert s.ids.tolist() == [f"0266-51602-0107:{n}" for n in names]
    assert s.labels["EXPOSURE"].tolist() == names and s.labels["CAMERA"].tolist() == ["b1", "r1", "b1", "r1"]
    np.testing.assert_allclose(s.labels["EXP_MJD"], [51602.25, 51602.25, 51602.25 + 1000 / 86400,
                                                      51602.25 + 1000 / 86400])
    assert s.labels["Z"].tolist() == [np.float32(0.25)] * 4 and s.labels["CLASS"].tolist() == ["QSO"] * 4
    np.testing.assert_array_equal(s.wave, coadd.wave)
    blue, red = s.labels["CAMERA"] == "b1", s.labels["CAMERA"] == "r1"
    assert s.mask[blue][:, s.wave > 6360].all() and s.mask[red][:, s.wave < 5890].all()
    assert not s.mask[blue][:, (s.wave > 3800) & (s.wave < 3850)].any()   # clear of the FULLREJECT pixels
    # the FULLREJECT pixels (native 100-109 of the blue camera) leave a masked hole in the rebinned spectrum
    hole = (s.wave > 3650 * 10 ** (1e-4 * 101.5)) & (s.wave < 3650 * 10 ** (1e-4 * 107.5))
    assert hole.sum() >= 5 and s.mask[blue][:, hole].all() and not s.mask[red][:, s.wave > 6500].any()
    good = ~s.mask
    np.testing.assert_allclose(s.flux[good], smooth(np.broadcast_to(s.wave, s.flux.shape)[good]), atol=2e-3)
    # exposure ivar 4 on pixels about as wide as the coadd's: rebinned ivar stays near 4
    assert 3 < np.median(s.ivar[good]) < 9


def test_read_many_exposures_of_two_files(tmp_path):
    a, b = tmp_path / "a.fits", tmp_path / "b.fits"
    full_sdss_file(a)
    full_sdss_file(b, catalogue="SPECOBJ")
    s = read_many([a, b], exposures=True)
    assert len(s) == 8 and s.ids[0].startswith("0266-51602-0107:B1-") and "EXPOSURE" in s.labels


def test_exposures_need_a_full_spec_file(tmp_path):
    lite = tmp_path / "spec-lite.fits"
    loglam = np.round(np.log10(3700) + 1e-4 * np.arange(50), 4)
    sdss_file(lite, loglam, np.ones(50), np.ones(50))
    with pytest.raises(SpecaeError, match=r"spec-lite.fits: has no per-exposure HDUs \(a spec-lite file\?\); "
                                          "exposures need the full spec- file"):
        read_spectra(lite, exposures=True)
    stack = tmp_path / "stack.fits"
    desi_stack_file(stack, np.linspace(3000, 4000, 20), np.ones((1, 20)), np.ones((1, 20)))
    with pytest.raises(SpecaeError, match="stack.fits: per-exposure spectra come from SDSS/BOSS full spec files; "
                                          "this is a DESI file"):
        read_spectra(stack, exposures=True)


def test_exposure_with_bad_wavelengths_names_file_and_hdu(tmp_path):
    path = tmp_path / "spec-bad.fits"
    loglam = np.round(np.log10(3700) + 1e-4 * np.arange(50), 4)
    name, e_loglam, *rest = exposure("b1", 1, 3650, 3720, smooth)
    sdss_file(path, loglam, np.ones(50), np.ones(50), exposures=[(name, e_loglam[::-1], *rest)])
    with pytest.raises(SpecaeError, match=rf"spec-bad.fits: exposure HDU {name.upper()}: wave must be strictly "
                                          "increasing"):
        read_sdss(path, exposures=True)


@needs_data
def test_real_spec_lite_with_spall_and_exposures_appended(tmp_path):
    """A BOSS-style full file made from a real spec-lite file: SPECOBJ renamed SPALL, exposure HDUs appended."""
    src = DATA / "sdss" / "spec-0266-51602-0107.fits"
    with fits.open(src) as h:
        hdus = [fits.PrimaryHDU(header=h[0].header), h["COADD"].copy(),
                fits.BinTableHDU(h["SPECOBJ"].data, header=h["SPECOBJ"].header, name="SPALL"), h["SPZLINE"].copy()]
    hdus += [fits.BinTableHDU.from_columns(
        [fits.Column(c, f, array=a) for c, f, a in zip(("loglam", "flux", "ivar", "mask"), "EEEJ", e[1:5])], name=e[0])
        for e in (exposure("b1", 51, 3800, 6300, smooth), exposure("r1", 51, 5900, 9200, smooth))]
    path = tmp_path / src.name
    fits.HDUList(hdus).writeto(path)
    lite, full = read_sdss(src), read_sdss(path)
    assert full.labels.keys() == lite.labels.keys() and full.ids.tolist() == lite.ids.tolist()
    assert all(np.array_equal(full.labels[k], lite.labels[k]) for k in lite.labels)
    np.testing.assert_array_equal(full.flux, lite.flux)
    exps = read_sdss(path, exposures=True)
    assert exps.ids.tolist() == [f"0266-51602-0107:{c}-00000051-00123400-00123401" for c in ("B1", "R1")]
    assert exps.labels["CLASS"].tolist() == ["GALAXY"] * 2 and np.isnan(exps.labels["EXP_MJD"]).all()


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
    desi_coadd_file(tmp_path / "coadd-t.fits", {"B": (wb, fb, ib, np.zeros((2, 10), np.int32)), "R": (wr, fr, ir, mr)},
                    [11, 22])
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
