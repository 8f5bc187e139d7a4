import os
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    # the files whose fixtures train for minutes first, longest first (pytest.mark.slow(minutes=...)): the two
    # workers run them beside the rest of the suite rather than at its end
    items.sort(key=lambda item: -(m.kwargs["minutes"] if (m := item.get_closest_marker("slow")) else 0))


def pytest_configure(config):
    # the suite runs in one worker per core (pytest-xdist, pyproject's addopts): one torch thread each, so the
    # workers do not fight over the cores
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def run(capsys, *argv):
    """(exit code, stdout, stderr) of `specae *argv` run in this process."""
    from specae.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err):
    """The CLI's contract for a refused input: one 'specae: error:' line, no traceback."""
    return err.startswith("specae: error: ") and err.count("\n") == 1 and "Traceback" not in err


def shared_dir(name: str) -> Path:
    """../shared/data/NAME beside the checkout, or skip the test with the reason."""
    d = SHARED / name
    if not d.is_dir():
        pytest.skip(f"reference data folder {d} is absent (it sits beside the checkout in CI)")
    return d


def fit_calibrated(*args, **kw):
    """specae.train.fit, then the error model calibrated on the run's validation spectra and the model saved with
    it, as `specae train` does."""
    from specae.calibration import fit_calibration
    from specae.model_dir import save_model
    from specae.train import fit

    model, history = fit(*args, **kw)
    fit_calibration(model, history.pop("validation"))
    if kw.get("out_dir"):
        save_model(model, kw["out_dir"], history)
    return model, history


@pytest.fixture
def small_spectra():
    from specae.data.resample import loglam_grid
    from specae.data.spectra import Spectra

    rng = np.random.default_rng(0)
    wave = loglam_grid(4000, 5000, 1e-3)
    n = 9
    ivar = rng.uniform(1, 10, (n, wave.size))
    ivar[0, :5] = 0
    return Spectra(wave, rng.normal(1, 0.1, (n, wave.size)), ivar,
                   labels={"Z": np.linspace(0.01, 0.3, n), "CLASS": np.array(["GALAXY", "QSO", "STAR"] * 3)},
                   ids=[f"obj{i}" for i in range(n)], meta={"source": "test", "flux_unit": "arb"})


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train faster on one thread, and leave the other core to the rest of the machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_mismatched_h5(path) -> None:
    """A specae-looking HDF5 file whose ivar has more pixels than its flux."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["specae_format"] = 1
        f["wave"] = np.linspace(4000, 5000, 10)
        f["flux"] = np.zeros((3, 10), np.float32)
        f["ivar"] = np.zeros((3, 11), np.float32)
