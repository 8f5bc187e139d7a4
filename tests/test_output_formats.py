"""Survey FITS files straight into the model commands, outputs as FITS/ECSV tables astropy opens, the flux unit
and frame carried from the input to every output and plot, and the results' names (old ones still read)."""

import astropy.units as u
import h5py
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from specae import __version__
from specae.cli import main
from specae.data.hdf5 import FORMAT_VERSION, read_h5, write_h5
from specae.data.readers import FLUX_UNIT
from specae.data.resample import loglam_grid
from specae.data.synthetic import add_noise, stellar_spectra
from tests.conftest import one_error_line, run, shared_dir
from tests.test_readers import sdss_file

WAVE = loglam_grid(4000, 6000, 1e-3)   # 177 pixels
SDSS_UNIT = 1e-17 * u.erg / u.s / u.cm ** 2 / u.AA

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    """A tiny model trained on 30 synthetic stars, a ridge label map, and 4 more stars as SDSS spec files."""
    d = tmp_path_factory.mktemp("formats")
    stars = add_noise(stellar_spectra(34, seed=1, wave=WAVE), seed=2)
    write_h5(stars[:30], d / "train.h5")
    for i in range(4):
        sdss_file(d / f"spec-{i}.fits", np.log10(WAVE), stars.flux[30 + i], stars.ivar[30 + i],
                  plate=(266 + i, 51602, 107))
    assert main(["train", str(d / "train.h5"), "-o", str(d / "model"), "--epochs", "2", "--latent-dim", "3",
                 "--batch-size", "16", "--quiet"]) == 0
    assert main(["regress", str(d / "model"), str(d / "train.h5"), "--labels", "TEFF", "--kind", "ridge",
                 "-o", str(d / "reg"), "--quiet"]) == 0
    return d


def fits_inputs(d):
    return sorted(map(str, d.glob("spec-*.fits")))


def h5_dict(path) -> dict:
    out = {}
    with h5py.File(path) as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        out["attrs"] = dict(f.attrs)
    return out


# -- FITS in ------------------------------------------------------------------------------------------------------
def test_fits_inputs_give_what_converting_them_first_gives(d, tmp_path, capsys):
    assert run(capsys, "convert", *fits_inputs(d), "--grid-from", d / "train.h5", "-o", tmp_path / "conv.h5")[0] == 0
    for cmd, extra in (("denoise", ()), ("encode", ()), ("heldout", ("--passes", "2")), ("score", ()),
                       ("predict", (d / "reg",))):
        pre = (d / "model", *extra) if cmd == "predict" else (d / "model",)
        post = () if cmd == "predict" else extra
        code, out, err = run(capsys, cmd, *pre, *fits_inputs(d), *post, "-o", tmp_path / f"{cmd}-fits.h5", "--quiet")
        assert code == 0 and " 4 spectra" in out and str(tmp_path / f"{cmd}-fits.h5") in out, err
        assert run(capsys, cmd, *pre, tmp_path / "conv.h5", *post, "-o", tmp_path / f"{cmd}-h5.h5", "--quiet")[0] == 0
        direct, converted = h5_dict(tmp_path / f"{cmd}-fits.h5"), h5_dict(tmp_path / f"{cmd}-h5.h5")
        assert sorted(direct) == sorted(converted), cmd
        for k in direct:
            if k != "attrs":
                np.testing.assert_array_equal(direct[k], converted[k], err_msg=f"{cmd} {k}")
        assert direct["attrs"]["flux_unit"] == FLUX_UNIT and direct["attrs"]["frame"] == "observed"
        assert direct["attrs"]["specae_format"] == FORMAT_VERSION == 2
    ids = h5_dict(tmp_path / "denoise-fits.h5")["ids"].astype(str)
    assert list(ids) == [f"0{266 + i}-51602-0107" for i in range(4)]


def test_the_commands_that_read_whole_sets_take_fits_files_as_converted_too(d, tmp_path, capsys):
    assert run(capsys, "convert", *fits_inputs(d), "--grid-from", d / "train.h5", "-o", tmp_path / "conv.h5")[0] == 0
    for data, model in ((fits_inputs(d), tmp_path / "m-fits"), ([tmp_path / "conv.h5"], tmp_path / "m-h5")):
        code, out, err = run(capsys, "calibrate", d / "model", *data, "-o", model)
        assert code == 0 and "of 4 spectra" in out, err
    fitted = [(tmp_path / m / "calibration.json").read_text() for m in ("m-fits", "m-h5")]
    assert fitted[0] == fitted[1]
    code, out, err = run(capsys, "plot", "latent", d / "model", *fits_inputs(d), "--color", "Z",
                         "-o", tmp_path / "z.png")
    assert code == 0 and "latent space of 4 spectra coloured by Z" in out, err


def test_a_fits_file_that_is_not_a_spectrum_is_one_line_naming_it(d, tmp_path, capsys):
    bad = tmp_path / "image.fits"
    fits.PrimaryHDU(np.zeros((4, 4))).writeto(bad)
    for cmd in ("denoise", "encode"):
        code, _, err = run(capsys, cmd, d / "model", fits_inputs(d)[0], bad, "-o", tmp_path / "out.h5")
        assert code == 2 and one_error_line(err) and str(bad) in err and "not a recognised" in err
    assert not list(tmp_path.glob("out*")) and not list(tmp_path.glob(".out*"))


def test_fits_and_hdf5_mixed_or_fits_into_a_directory_are_refused_before_any_work(d, tmp_path, capsys):
    code, _, err = run(capsys, "denoise", d / "model", d / "train.h5", fits_inputs(d)[0], "-o", tmp_path / "out")
    assert code == 2 and one_error_line(err) and "one set with one output" in err
    code, _, err = run(capsys, "denoise", d / "model", *fits_inputs(d), "-o", f"{tmp_path / 'out'}/")
    assert code == 2 and one_error_line(err) and "name a file" in err
    assert list(tmp_path.iterdir()) == []


# -- outputs astropy opens ----------------------------------------------------------------------------------------
def test_denoise_fits_output_has_units_provenance_and_the_hdf5_values(d, tmp_path, capsys):
    assert run(capsys, "denoise", d / "model", *fits_inputs(d), "-o", tmp_path / "den.h5", "--quiet")[0] == 0
    code, out, _ = run(capsys, "denoise", d / "model", *fits_inputs(d), "-o", tmp_path / "den.fits", "--quiet")
    assert code == 0 and "denoised 4 spectra" in out
    ref = h5_dict(tmp_path / "den.h5")
    with fits.open(tmp_path / "den.fits") as hdul:
        head = hdul[1].header
        assert head["MODEL"] == str(d / "model") and head["SPECAEV"] == __version__
        assert head["CALIBVER"] == ref["attrs"]["calibration_version"] >= 1
        assert head["FLUXUNIT"] == FLUX_UNIT and head["FRAME"] == "observed"
        units = {head[f"TTYPE{i}"]: head.get(f"TUNIT{i}") for i in range(1, head["TFIELDS"] + 1)}
    given = {"id", *read_h5(tmp_path / "den.h5").labels}   # ids and given labels: units unknown, so none
    assert {c for c in units if units[c] is None} == given
    tails = {"flux_sigma_core", "flux_tail_spread"} if "flux_tail_spread" in ref else set()   # a heavy-tailed model's
    assert set(units) - given == {"wavelength", "flux", "flux_sigma", "ivar", "mask", "input_mask", "input_ivar",
                                  "scale"} | tails
    t = Table.read(tmp_path / "den.fits")
    assert len(t) == 4 and list(t["id"]) == list(ref["ids"].astype(str))
    assert t["wavelength"].unit == u.AA and t["wavelength"].shape == (4, WAVE.size)
    np.testing.assert_allclose(t["wavelength"][2], ref["wave"], rtol=1e-12)
    for col, power in (("flux", 1), ("flux_sigma", 1), ("ivar", -2), ("input_ivar", -2)):
        assert u.Unit(t[col].unit).is_equivalent(SDSS_UNIT ** power) and \
            np.isclose(u.Unit(t[col].unit).to(SDSS_UNIT ** power), 1)
        np.testing.assert_array_equal(np.asarray(t[col]), ref[col])
    for col in ("mask", "input_mask", "scale"):
        np.testing.assert_array_equal(np.asarray(t[col]), ref[col])
    np.testing.assert_array_equal(np.asarray(t["Z"]), ref["labels/Z"])
    # the input's ivar on the model's grid, next to the denoised flux: what the converted file holds
    assert run(capsys, "convert", *fits_inputs(d), "--grid-from", d / "train.h5", "-o", tmp_path / "conv.h5")[0] == 0
    converted = read_h5(tmp_path / "conv.h5")
    np.testing.assert_array_equal(ref["input_ivar"], converted.ivar)
    np.testing.assert_array_equal(ref["input_mask"], converted.mask)
    stars = add_noise(stellar_spectra(34, seed=1, wave=WAVE), seed=2)[30:]   # what the FITS files hold
    np.testing.assert_array_equal(ref["input_ivar"] > 0, stars.ivar > 0)
    np.testing.assert_allclose(ref["input_ivar"], stars.ivar, rtol=1e-3)   # rebinned from float32 loglam


@pytest.mark.parametrize("suffix", [".fits", ".ecsv"])
def test_per_spectrum_tables_hold_the_hdf5_values(d, tmp_path, capsys, suffix):
    train = read_h5(d / "train.h5")[:6]
    write_h5(train, tmp_path / "six.h5")
    for cmd, extra in (("encode", ()), ("heldout", ("--passes", "2")), ("score", ()), ("predict", (d / "reg",))):
        pre = (d / "model", *extra) if cmd == "predict" else (d / "model",)
        post = () if cmd == "predict" else extra
        for out in (tmp_path / f"{cmd}.h5", tmp_path / f"{cmd}{suffix}"):
            assert run(capsys, cmd, *pre, tmp_path / "six.h5", *post, "-o", out, "--quiet")[0] == 0
        ref, t = h5_dict(tmp_path / f"{cmd}.h5"), Table.read(tmp_path / f"{cmd}{suffix}")
        assert len(t) == 6 and list(t["id"]) == list(train.ids)
        np.testing.assert_array_equal(np.asarray(t["TEFF"]), train.labels["TEFF"])   # the given labels
        assert t.meta["SPECAEV"] == __version__ and t.meta["MODEL"] == str(d / "model")
        names = {k: k for k in ref if k not in ("attrs", "ids", "wave") and not k.startswith("labels/")}
        if cmd == "predict":
            names = {"predicted/TEFF": "TEFF_PRED", "predicted_sigma/TEFF": "TEFF_PRED_ERR"}
            assert sorted(k for k in ref if "/" in k and not k.startswith("labels/")) == sorted(names)
        assert names, cmd
        if suffix == ".fits":   # TUNIT on every result column ('' for pure numbers: astropy reads it as None)
            with fits.open(tmp_path / f"{cmd}{suffix}") as hdul:
                head = hdul[1].header
                no_unit = {head[f"TTYPE{i}"] for i in range(1, head["TFIELDS"] + 1) if f"TUNIT{i}" not in head}
            assert no_unit == {"id", *train.labels}
        for k, col in names.items():
            assert (t[col].unit or u.dimensionless_unscaled) == u.dimensionless_unscaled, (cmd, col)
            np.testing.assert_allclose(np.asarray(t[col]), ref[k], rtol=1e-6, err_msg=f"{cmd} {col}")
        if cmd == "encode":
            assert t["latent_mean"].shape == (6, 3) and t["latent_cov"].shape == (6, 3, 3)
        if cmd == "heldout":
            assert t["heldout_pull"].shape == (6, WAVE.size) and t["wavelength"].unit == u.AA


# -- units and frame ----------------------------------------------------------------------------------------------
def test_real_apogee_rest_frame_and_sdss_units_reach_the_outputs(tmp_path):
    from specae.inputs import SpectrumInput, read_fits_set
    from specae.results import map_spectra

    cases = [(sorted(shared_dir("apogee").glob("aspcapStar-*.fits"))[:3], "rest", "continuum-normalised",
              u.dimensionless_unscaled),
             (sorted(shared_dir("sdss").glob("spec-*.fits"))[:3], "observed", FLUX_UNIT, SDSS_UNIT)]
    for paths, frame, unit, astropy_unit in cases:
        assert len(paths) == 3, paths
        spectra = read_fits_set(paths, None)
        src = SpectrumInput("set", spectra=spectra)
        for out in (tmp_path / "o.h5", tmp_path / "o.fits"):
            map_spectra(src, out, lambda part: {"flux": part.flux}, wave=spectra.wave)
        with h5py.File(tmp_path / "o.h5") as f:
            assert (f.attrs["frame"], f.attrs["flux_unit"]) == (frame, unit)
        t = Table.read(tmp_path / "o.fits")
        assert (t.meta["FRAME"], t.meta["FLUXUNIT"]) == (frame, unit)
        unit_read = u.Unit(t["flux"].unit or "")   # TUNIT '' (normalised flux) reads as None
        assert unit_read.is_equivalent(astropy_unit) and np.isclose(unit_read.to(astropy_unit), 1)
        np.testing.assert_array_equal(np.asarray(t["flux"]), spectra.flux.astype(t["flux"].dtype))


def test_plot_axes_say_the_flux_unit_and_the_frame(d, tmp_path, capsys):
    from specae.plots import plot_denoised

    wave, flux = WAVE, 1 + 0.1 * np.sin(WAVE / 50)[None]
    fig = plot_denoised(tmp_path / "rest.png", wave, flux, flux, flux / 10, flux_unit=FLUX_UNIT, frame="rest")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "rest wavelength [$\\AA$]"
    assert "10^{-17}" in ax.get_ylabel() and "erg" in ax.get_ylabel() and "AA" not in ax.get_ylabel()
    assert (tmp_path / "rest.png").stat().st_size > 1000
    fig = plot_denoised(None, wave, flux, flux, flux / 10, flux_unit="continuum-normalised", frame="")
    assert fig.axes[0].get_ylabel() == "flux (continuum-normalised)"
    assert fig.axes[0].get_xlabel() == "wavelength [$\\AA$]"
    # from the command line: an SDSS file's unit and frame
    code, out, err = run(capsys, "plot", "denoised", d / "model", fits_inputs(d)[1], "--rows", "0",
                         "-o", tmp_path / "cli.png")
    assert code == 0 and (tmp_path / "cli.png").is_file(), err


# -- names ----------------------------------------------------------------------------------------------------------
def test_old_prediction_names_are_read_with_a_warning(d, tmp_path, capsys):
    truth = read_h5(d / "train.h5")[:5]
    write_h5(truth, tmp_path / "truth.h5")
    with h5py.File(tmp_path / "old.h5", "w") as f:   # specae predict's layout in format 1
        f.attrs["specae_format"] = 1
        f["ids"] = truth.ids.astype(object)
        f["labels/TEFF"] = truth.labels["TEFF"] + 50.0
        f["labels_sigma/TEFF"] = np.full(5, 100.0)
    code, out, err = run(capsys, "plot", "calibration", tmp_path / "old.h5", tmp_path / "truth.h5",
                         "-o", tmp_path / "cal.png")
    assert code == 0 and "calibration of TEFF" in out and (tmp_path / "cal.png").is_file()
    assert "older specae" in err and "predicted/ and predicted_sigma/" in err and err.count("\n") == 1
