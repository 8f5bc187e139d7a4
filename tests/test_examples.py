"""Every script in examples/ runs at its --tiny size (as a user would: a subprocess in a fresh directory) and
writes what it promises; those that read ../shared/data skip when the data are absent."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
pytestmark = pytest.mark.examples    # not in the default run (pyproject addopts): .ci/run runs them apart


def run_example(name: str, cwd: Path, timeout: int = 600) -> str:
    r = subprocess.run([sys.executable, str(ROOT / "examples" / name), "--tiny", "-o", "out"], cwd=cwd,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    return r.stdout


def percentages(text: str, what: str) -> list[float]:
    """The numbers printed as 'N % inside +-1 sigma', each checked to be a percentage."""
    found = [float(v) for v in re.findall(r"([-\d.]+) % " + re.escape(what), text)]
    assert found and all(0 <= v <= 100 for v in found), text
    return found


def needs(*folders):
    missing = [f for f in folders if not any((DATA / f).glob("*.fits*"))]
    return pytest.mark.skipif(bool(missing), reason=f"no {', '.join(missing)} data in {DATA}")


def is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 10_000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs("sdss")
def test_sdss_denoise_writes_a_plot_and_a_held_out_coverage(tmp_path):
    pytest.importorskip("specutils", reason="the example plots from Denoised.to_specutils (pip install specutils)")
    out = run_example("sdss_denoise.py", tmp_path)
    assert len(percentages(out, "inside +-1 sigma")) == 1
    assert is_png(tmp_path / "out" / "denoised.png")
    assert (tmp_path / "out" / "model" / "calibration.json").is_file()


@needs("lamost")
def test_labels_predicts_three_labels_with_sigmas(tmp_path):
    out = run_example("labels.py", tmp_path)
    assert [line.split(":")[0] for line in out.splitlines()] == ["teff", "logg", "feh"]
    assert len(percentages(out, "inside +-1 sigma")) == 3
    n = [int(v) for v in re.findall(r": (\d+) test stars", out)]
    assert n and min(n) >= 5, out


@needs("sdss", "lamost")
def test_other_survey_checks_and_recalibrates_through_the_cli(tmp_path):
    out = run_example("other_survey.py", tmp_path)
    m = re.search(r"SDSS error model ([\d.]+) %, recalibrated on (\d+) LAMOST spectra ([\d.]+) %", out)
    assert m and 0 <= float(m[1]) <= 100 and 0 <= float(m[3]) <= 100 and int(m[2]) == 8, out
    for name in ("lamost_before.h5", "lamost_after.h5", "model_lamost/calibration.json"):
        assert (tmp_path / "out" / name).is_file(), name


def test_dcgan_trains_samples_and_reports_its_metrics(tmp_path):
    out = run_example("dcgan.py", tmp_path)
    assert is_png(tmp_path / "out" / "samples.png")
    assert (tmp_path / "out" / "GAN" / "generator" / "weights.pt").is_file()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    for key in ("kid", "precision", "recall", "morphology_max"):
        assert set(report[key]) >= {"gan", "real"}, key
    assert 0 <= report["precision"]["gan"] <= 1 and 0 <= report["recall"]["gan"] <= 1
    assert f"KID {report['kid']['gan']:.4f}" in out
