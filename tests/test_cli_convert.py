import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

from specae.cli import main
from specae.data.hdf5 import read_h5, write_h5
from tests.conftest import shared_dir, write_mismatched_h5


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_convert_sdss_files(tmp_path, capsys):
    sdss = shared_dir("sdss")
    files = sorted(sdss.glob("spec-*.fits"))[:3]
    out = tmp_path / "sdss.h5"
    code, stdout, _ = run(capsys, "convert", *files, "-o", out)
    assert code == 0 and "wrote 3 spectra" in stdout
    s = read_h5(out)
    for i, f in enumerate(files):
        assert s.labels["Z"][i] == pytest.approx(float(fits.getdata(f, "SPECOBJ")["Z"][0]), rel=1e-6)
    assert np.allclose(np.diff(np.log10(s.wave)), np.diff(np.log10(s.wave))[0], rtol=1e-6)


def test_convert_onto_given_grid_and_grid_from(tmp_path, capsys):
    sdss = shared_dir("sdss")
    f = sdss / "spec-0266-51602-0107.fits"
    a = tmp_path / "a.h5"
    assert run(capsys, "convert", f, "-o", a, "--grid", "loglam:4000:8000:2e-4")[0] == 0
    wa = read_h5(a).wave
    assert wa[0] == pytest.approx(4000) and wa[-1] <= 8000
    b = tmp_path / "b.h5"
    assert run(capsys, "convert", sdss / "spec-0280-51612-0117.fits", "-o", b, "--grid-from", a)[0] == 0
    assert np.array_equal(read_h5(b).wave, wa)


def test_dead_fibre_is_reported_not_fatal(tmp_path, capsys):
    sdss = shared_dir("sdss")
    code, stdout, _ = run(capsys, "convert", sdss / "spec-0269-51581-0003.fits", "-o", tmp_path / "d.h5")
    assert code == 0 and "1 without any valid pixel" in stdout
    assert not read_h5(tmp_path / "d.h5").has_data.any()


@pytest.mark.parametrize("case", ["missing", "not_fits", "empty_fits", "bad_grid"])
def test_convert_bad_input(tmp_path, capsys, case):
    src = tmp_path / "in.fits"
    extra = []
    if case == "not_fits":
        src.write_text("this is not a FITS file\n")
    elif case == "empty_fits":
        fits.PrimaryHDU().writeto(src)
    elif case == "bad_grid":
        fits.PrimaryHDU().writeto(src)
        extra = ["--grid", "loglam:9000:4000:1e-4"]
    out = tmp_path / "out.h5"
    code, stdout, err = run(capsys, "convert", src, "-o", out, *extra)
    assert code == 2
    assert err.startswith("specae: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == (["in.fits"] if case != "missing" else [])


def test_subprocess_error_has_no_traceback(tmp_path, small_spectra):
    good = tmp_path / "good.h5"
    write_h5(small_spectra, good)
    before = good.read_bytes()
    truncated = tmp_path / "cut.h5"
    truncated.write_bytes(before[:300])
    r = subprocess.run([sys.executable, "-m", "specae.cli", "convert", str(tmp_path / "none.fits"), "-o",
                        str(tmp_path / "x.h5"), "--grid-from", str(truncated)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert "cut.h5" in r.stderr
    assert good.read_bytes() == before and not (tmp_path / "x.h5").exists()


def test_mismatched_shapes_file_is_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.h5"
    write_mismatched_h5(bad)
    before = bad.read_bytes()
    for argv in (["train", bad, "-o", tmp_path / "model"], ["convert", tmp_path / "x.fits", "-o", tmp_path / "o.h5",
                                                            "--grid-from", bad]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and "inconsistent shapes" in err and err.count("\n") == 1
    assert bad.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.h5"]


def test_convert_exposures_writes_one_spectrum_per_exposure(tmp_path, capsys):
    from tests.test_readers import full_sdss_file

    path = tmp_path / "spec-0266-51602-0107.fits"
    full_sdss_file(path)
    code, stdout, _ = run(capsys, "convert", path, "-o", tmp_path / "exp.h5", "--exposures")
    assert code == 0 and "wrote 4 spectra" in stdout
    s = read_h5(tmp_path / "exp.h5")
    assert s.labels["CAMERA"].tolist() == ["b1", "r1", "b1", "r1"] and s.ids[0].startswith("0266-51602-0107:B1-")
    code, _, err = run(capsys, "convert", path, "-o", tmp_path / "coadd.h5")
    assert code == 0 and len(read_h5(tmp_path / "coadd.h5")) == 1
