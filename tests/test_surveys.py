"""LAMOST spectra, BOSS spec files with unnamed HDUs, survey mask bits and catalogue labels (issue #26).

Tests on the real files in ../shared/data skip with a reason when the folder is absent.
"""

import warnings
from functools import cache

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from specae.cli import main
from specae.data.catalogue import Catalogue
from specae.data.hdf5 import read_h5
from specae.data.readers import detect_format, read_lamost, read_many, read_sdss, read_spectra
from specae.data.surveys.maskbits import ALL_BITS, DEFAULT_MASK_BITS, parse_mask_bits
from specae.errors import CountWarning, SpecaeError
from tests.test_readers import DATA, _files, needs_data, sdss_file

LAMOST = _files("lamost", "*.fits.gz")
BOSS = _files("boss", "*.fits.gz")
CATALOGUE = DATA / "lamost" / "lamost_dr1_catalogue.csv"


@cache
def _lamost():
    return read_many(LAMOST, catalogue=CATALOGUE, labels="teff,logg,feh")


def lamost_file(path, dr7=True, npix=60, andmask=None, wave_shift=0.0, header=None):
    """Write a LAMOST-like file: primary image (5, npix), rows named by EXTEN0 as DR1 or DR7+ name them."""
    c0, c1 = 3.5682, 1e-4
    wave = 10 ** (c0 + c1 * np.arange(npix))
    flux, ivar = 100 + np.arange(npix, dtype=np.float32), np.full(npix, 4.0)
    third = wave * (1 + wave_shift) if dr7 else flux - 100
    mask = np.zeros(npix) if andmask is None else andmask
    hdu = fits.PrimaryHDU(np.array([flux, ivar, third, mask, mask], dtype=np.float32))
    hdu.header.update({"EXTEN0": "Flux, Inverse, Wavelength, Andmask, Ormask" if dr7 else
                       "Flux Inverse Subcontinuum Andmask Ormask", "COEFF0": c0, "COEFF1": c1, "CLASS": "STAR",
                       "SUBCLASS": "K5", "Z": -6.8e-5, "Z_ERR": 2e-5})
    hdu.header.update({"OBSID": 740103218, "SNRG": 20.37} if dr7 else {"SN_G": 71.41})
    hdu.header.update(header or {})
    hdu.writeto(path, overwrite=True)
    return wave


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# -- LAMOST ----------------------------------------------------------------------------------------------------
@needs_data
def test_lamost_all_files_read_with_header_labels_and_grid():
    s = _lamost()
    assert len(s) == 276 and s.meta["source"] == "lamost" and s.meta["flux_unit"] == "relative"
    dr7 = np.isfinite(s.labels["OBSID"])
    assert dr7.sum() == 100 and (~dr7).sum() == 176
    for i, path in enumerate(LAMOST):
        head = fits.getheader(path)
        assert s.labels["CLASS"][i] == head["CLASS"].strip() and s.labels["SUBCLASS"][i] == head["SUBCLASS"].strip()
        assert s.labels["Z"][i] == head["Z"] and s.labels["SNRG"][i] == head.get("SNRG", head.get("SN_G"))
        assert s.ids[i] == (str(head["OBSID"]) if "OBSID" in head else path.name[:-len(".fits.gz")])
    assert sorted(set(s.labels["CLASS"])) == ["GALAXY", "STAR", "Unknown"]


@needs_data
@pytest.mark.parametrize("path", [LAMOST[0], LAMOST[-1]], ids=["DR1", "DR7"])
def test_lamost_rows_by_exten0_and_grid_from_coeffs(path):
    assert detect_format(path) == "lamost"
    s = read_lamost(path)
    with fits.open(path) as h:
        head, data = h[0].header, h[0].data.astype(np.float64)
    rows = [w.strip().lower() for w in head["EXTEN0"].replace(",", " ").split()]
    flux, ivar, andmask = (data[rows.index(k)] for k in ("flux", "inverse", "andmask"))
    np.testing.assert_allclose(s.wave, 10 ** (head["COEFF0"] + head["COEFF1"] * np.arange(data.shape[1])), rtol=1e-12)
    if "wavelength" in rows:
        np.testing.assert_allclose(s.wave, data[rows.index("wavelength")], rtol=1e-6)
    assert 3690 < s.wave[0] < 3710 and 9080 < s.wave[-1] < 9110
    assert np.array_equal(s.mask[0], (ivar == 0) | (andmask != 0))
    good = ~s.mask[0]
    np.testing.assert_array_equal(s.flux[0][good], flux[good].astype(np.float32))
    np.testing.assert_array_equal(s.ivar[0][good], ivar[good].astype(np.float32))


@pytest.mark.parametrize("dr7", [False, True], ids=["DR1", "DR7"])
def test_lamost_synthetic_labels_mask_bits_and_content_recognition(tmp_path, dr7):
    path = tmp_path / "spectrum.dat"              # recognised by content, whatever the name
    andmask = np.zeros(60)
    andmask[[3, 4]] = [1, 2]
    wave = lamost_file(path, dr7=dr7, andmask=andmask)
    assert detect_format(path) == "lamost"
    s = read_spectra(path)
    np.testing.assert_allclose(s.wave, wave, rtol=1e-12)
    assert s.labels["SNRG"][0] == pytest.approx(20.37 if dr7 else 71.41) and s.labels["SUBCLASS"][0] == "K5"
    assert s.ids[0] == ("740103218" if dr7 else "spectrum.dat") and ("OBSID" in s.labels) == dr7
    assert s.mask[0].tolist() == [i in (3, 4) for i in range(60)]
    only_bit_1 = read_spectra(path, mask_bits="lamost=1")
    assert np.flatnonzero(only_bit_1.mask[0]).tolist() == [4]
    assert not read_spectra(path, mask_bits={"lamost": 0}).mask.any()


def test_lamost_bad_files_name_the_file(tmp_path):
    off = tmp_path / "off.fits"
    lamost_file(off, wave_shift=1e-3)
    with pytest.raises(SpecaeError, match=r"off.fits: the Wavelength row differs from the grid .* by up to 0.001"):
        read_spectra(off)
    rows = tmp_path / "rows.fits"
    lamost_file(rows, header={"EXTEN0": "Flux Inverse Andmask Ormask"})
    with pytest.raises(SpecaeError, match="rows.fits: the LAMOST image has 5 rows but EXTEN0 names 4"):
        read_lamost(rows)
    sdss_file(tmp_path / "sdss.fits", np.log10(4000) + 1e-4 * np.arange(20), np.ones(20), np.ones(20))
    with pytest.raises(SpecaeError, match="sdss.fits: not a LAMOST spectrum"):
        read_lamost(tmp_path / "sdss.fits")


# -- BOSS files with unnamed HDUs --------------------------------------------------------------------------------
@needs_data
def test_convert_boss_files_without_hdu_names(tmp_path, capsys):
    """All 80 BOSS files (HDUs without names) through `specae convert`: redshifts, classes and ids of HDU 2 (checked
    on every fourth file: opening a wide spAll table costs ~0.1 s)."""
    out = tmp_path / "boss.h5"
    code, stdout, err = run(capsys, "convert", *BOSS, "-o", out)
    assert code == 0 and stdout.startswith(f"wrote 80 spectra x 4640 pixels to {out}") and err == ""
    s = read_h5(out)
    for i, path in list(enumerate(BOSS))[::4]:
        with fits.open(path) as h:
            assert h[1].name == "" and h[2].name == ""
            cat = h[2].data
            assert s.labels["Z"][i] == cat.field("Z")[0] and s.labels["CLASS"][i] == cat.field("CLASS")[0].strip()
            assert s.ids[i] == f"{cat.field('PLATE')[0]:04d}-{cat.field('MJD')[0]:05d}-{cat.field('FIBERID')[0]:04d}"
    assert s.labels["Z"].max() > 3 and (s.labels["CLASS"] == "QSO").sum() > 70 and s.has_data.all()
    assert detect_format(BOSS[0]) == "sdss"


def test_unnamed_sdss_file_reads_as_the_named_one(tmp_path):
    named, unnamed = tmp_path / "named.fits", tmp_path / "unnamed.fits"
    loglam = np.round(np.log10(3800) + 1e-4 * np.arange(50), 4)
    and_mask = np.zeros(50, np.int32)
    and_mask[7] = 1 << 23                                  # BRIGHTSKY
    sdss_file(named, loglam, np.arange(50.0), np.ones(50), and_mask=and_mask)
    with fits.open(named) as h:
        hdus = [fits.PrimaryHDU(header=h[0].header)] + [fits.BinTableHDU(x.data) for x in h[1:]]
    fits.HDUList(hdus).writeto(unnamed)
    a, b = read_sdss(named), read_spectra(unnamed)
    assert detect_format(unnamed) == "sdss" and b.ids.tolist() == a.ids.tolist() == ["0266-51602-0107"]
    assert b.labels.keys() == a.labels.keys() and b.labels["Z"][0] == np.float32(0.25)
    np.testing.assert_array_equal(b.flux, a.flux)
    assert np.flatnonzero(b.mask[0]).tolist() == [7]


# -- mask bits ---------------------------------------------------------------------------------------------------
def test_parse_mask_bits():
    bits = parse_mask_bits(["sdss=FULLREJECT,nosky,23", "apogee=all", "desi=none"])
    assert bits["sdss"] == (1 << 18) | (1 << 22) | (1 << 23) == DEFAULT_MASK_BITS["sdss"]
    assert bits["apogee"] == ALL_BITS and bits["desi"] == 0 and bits["lamost"] == DEFAULT_MASK_BITS["lamost"]
    assert parse_mask_bits(None) == DEFAULT_MASK_BITS and parse_mask_bits("lamost=0,5")["lamost"] == 0b100001
    for text, match in (("sdss", "expected SURVEY=BITS"), ("euclid=1", "expected SURVEY=BITS"),
                        ("sdss=32", "'32' is not a bit of sdss"), ("lamost=BRIGHTSKY", "not a bit of lamost"),
                        ("apogee=-1", "not a bit of apogee")):
        with pytest.raises(SpecaeError, match=match):
            parse_mask_bits(text)


@needs_data
def test_sdss_mask_bits_default_and_all_with_mostly_masked_warning():
    path = DATA / "sdss" / "spec-0266-51602-0013.fits"
    with fits.open(path) as h:
        and_mask, ivar = h["COADD"].data["and_mask"].astype(np.int64), h["COADD"].data["ivar"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = read_sdss(path)
    assert s.npix == 3838 and s.mask.sum() == 52      # FULLREJECT, NOSKY, BRIGHTSKY
    with pytest.warns(CountWarning, match=r"1 spectra with more than 40% of their pixels masked by their flags .* "
                                          r"\(ids 0266-51602-0013 in .*spec-0266-51602-0013.fits \(46%\)\)"):
        every = read_spectra(path, mask_bits="sdss=all")
    assert every.mask.sum() == 1761 and np.array_equal(every.mask[0], (and_mask != 0) | (ivar == 0))


def test_mostly_masked_warnings_of_many_files_come_as_one(tmp_path):
    paths = []
    for k in range(4):
        andmask = np.zeros(60)
        andmask[:30 + k] = 1                         # 50-55 % of the pixels
        lamost_file(tmp_path / f"s{k}.fits", andmask=andmask, header={"OBSID": k})
        paths.append(tmp_path / f"s{k}.fits")
    with pytest.warns(CountWarning) as rec:
        read_many(paths)
    mine = [str(w.message) for w in rec if isinstance(w.message, CountWarning)]
    assert len(mine) == 1 and mine[0].startswith("4 spectra with more than 40%")
    assert f"ids 0 in {paths[0]} (50%), 1 in {paths[1]} (52%), 2 in {paths[2]} (53%), ..." in mine[0]


# -- catalogue labels ---------------------------------------------------------------------------------------------
@needs_data
def test_catalogue_labels_for_the_listed_lamost_stars():
    s = _lamost()
    cat = Table.read(CATALOGUE)
    by_file = {str(f): k for k, f in reversed(list(enumerate(cat["filename"])))}
    listed = np.array([p.name[:-3] in by_file for p in LAMOST])
    assert listed.sum() == 131 and np.array_equal(s.labels["IN_CATALOGUE"], listed)
    for name in ("teff", "teff_err", "logg", "logg_err", "feh", "feh_err"):
        assert np.isnan(s.labels[name][~listed]).all()
        rows = [by_file[p.name[:-3]] for p, ok in zip(LAMOST, listed) if ok]
        np.testing.assert_array_equal(s.labels[name][listed], np.asarray(cat[name][rows], dtype=np.float64))
    assert 3500 < np.nanmin(s.labels["teff"]) < np.nanmax(s.labels["teff"]) < 10000


def test_catalogue_joins_by_obsid_and_keeps_text_and_masked_values(tmp_path):
    paths = []
    for k in range(3):
        lamost_file(tmp_path / f"s{k}.fits.gz", header={"OBSID": 100 + k})
        paths.append(tmp_path / f"s{k}.fits.gz")
    table = Table({"ObsID": [102.0, 100.0, 100.0], "TEFF": np.ma.masked_array([5000.0, 6000.0, 1.0], [True, 0, 0]),
                   "teff_err": [10.0, 20.0, 30.0], "note": ["b", "a", "dup"]})
    s = read_many(paths, catalogue=table, labels=["teff", "NOTE"])
    assert s.labels["IN_CATALOGUE"].tolist() == [True, False, True]
    np.testing.assert_array_equal(s.labels["TEFF"], [6000.0, np.nan, np.nan])     # first row of a key wins
    np.testing.assert_array_equal(s.labels["teff_err"], [20.0, np.nan, 10.0])
    assert s.labels["note"].tolist() == ["a", "", "b"]


def test_bad_catalogue_is_refused_before_reading(tmp_path):
    table = Table({"filename": ["a.fits"], "teff": [5000.0]})
    for source, labels, match in ((tmp_path / "none.csv", "teff", "none.csv: no such file"),
                                  (table, "teff,logg", "the catalogue: no column 'logg'"),
                                  (Table({"teff": [1.0]}), "teff", "no column to join on"),
                                  (table, "", "name the catalogue columns")):
        with pytest.raises(SpecaeError, match=match):
            Catalogue.read(source, labels)
    with pytest.raises(SpecaeError, match="nothing.csv: no such file"):   # before the missing spectrum file
        read_many([tmp_path / "missing.fits"], catalogue=tmp_path / "nothing.csv", labels="teff")


# -- specae convert ----------------------------------------------------------------------------------------------
@needs_data
def test_convert_lamost_with_catalogue(tmp_path, capsys):
    out = tmp_path / "x.h5"
    code, stdout, err = run(capsys, "convert", *LAMOST, "-o", out, "--catalogue", CATALOGUE,
                            "--labels", "teff,logg,feh")
    assert code == 0 and stdout == f"wrote 276 spectra x 3909 pixels to {out} (145 not in the catalogue)\n", err
    s, ref = read_h5(out), _lamost()
    assert s.ids.tolist() == ref.ids.tolist() and s.labels["CLASS"].tolist() == ref.labels["CLASS"].tolist()
    np.testing.assert_array_equal(s.labels["Z"], ref.labels["Z"])
    np.testing.assert_array_equal(s.labels["feh_err"], ref.labels["feh_err"])
    assert s.labels["IN_CATALOGUE"].sum() == 131


@needs_data
def test_convert_mask_bits_option(tmp_path, capsys):
    sdss = DATA / "sdss" / "spec-0266-51602-0013.fits"
    code, _, err = run(capsys, "convert", sdss, "-o", tmp_path / "all.h5", "--mask-bits", "sdss=all",
                       "--mask-bits", "lamost=none")
    assert code == 0 and "0266-51602-0013 in " in err and read_h5(tmp_path / "all.h5").mask.sum() == 1761
    assert run(capsys, "convert", sdss, "-o", tmp_path / "default.h5")[0] == 0
    assert read_h5(tmp_path / "default.h5").mask.sum() == 52


@pytest.mark.parametrize("case", ["no_catalogue_file", "unknown_column", "no_join_key", "labels_alone",
                                  "bad_mask_bits", "unknown_survey", "unreadable_catalogue"])
def test_convert_bad_new_options_one_line_exit_2_no_output(tmp_path, capsys, case):
    spectrum = tmp_path / "spec-1.fits"
    lamost_file(spectrum)
    Table({"filename": ["spec-1.fits"], "teff": [5000.0]}).write(tmp_path / "cat.csv")
    Table({"teff": [5000.0]}).write(tmp_path / "nokey.csv")
    (tmp_path / "cat.txt").write_text("\x00\x01 not a table\n")
    extra = {"no_catalogue_file": ["--catalogue", tmp_path / "none.csv", "--labels", "teff"],
             "unknown_column": ["--catalogue", tmp_path / "cat.csv", "--labels", "teff,logg"],
             "no_join_key": ["--catalogue", tmp_path / "nokey.csv", "--labels", "teff"],
             "labels_alone": ["--labels", "teff"],
             "bad_mask_bits": ["--mask-bits", "lamost=x"],
             "unknown_survey": ["--mask-bits", "gaia=1"],
             "unreadable_catalogue": ["--catalogue", tmp_path / "cat.txt", "--labels", "teff"]}[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, stdout, err = run(capsys, "convert", spectrum, "-o", tmp_path / "out.h5", *extra)
    assert code == 2 and stdout == "" and err.startswith("specae: error: ") and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
