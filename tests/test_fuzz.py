"""Fuzzing the command line's contract (issue #25) with hypothesis, over numeric options and input files:

- a command either exits 0 with every output value finite or masked (denoised pixels: mask True, ivar 0, sigma
  inf; per-spectrum results: NaN with an infinite sigma or no valid pixel, only for spectra without a valid
  pixel), or exits 2 with one 'specae: error:' line, no traceback and no output;
- its inputs (data files and the model directory) are byte-identical afterwards.
"""

import hashlib
import math
import re
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from specae import cli
from specae.cli import build_parser, main
from specae.data.hdf5 import write_h5
from specae.data.resample import loglam_grid
from specae.data.synthetic import add_noise, stellar_spectra
from specae.denoise import EMPTY
from tests.conftest import one_error_line
from tests.test_cli_options import argv, numeric_options
from tests.test_reliability import finite_or_masked

pytestmark = pytest.mark.usefixtures("one_thread")
WAVE = loglam_grid(4000, 6000, 2e-3)   # 89 pixels
FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# what each checked type promises of the value it lets through
PROMISE = {cli.positive_int: lambda v: isinstance(v, int) and v > 0,
           cli.non_negative_int: lambda v: isinstance(v, int) and v >= 0,
           cli.at_least_two: lambda v: isinstance(v, int) and v >= 2,
           cli.seed: lambda v: isinstance(v, int) and 0 <= v < 2 ** 63,
           cli.positive: lambda v: math.isfinite(v) and v > 0,
           cli.non_negative: lambda v: math.isfinite(v) and v >= 0,
           cli.decay: lambda v: math.isfinite(v) and 0 <= v < 1,
           cli.fraction: lambda v: math.isfinite(v) and 0 < v < 1}
OPTIONS = [(words, p, a) for words, p, a in numeric_options() if a.type in PROMISE]

# text a user might type for a number
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers(-2 ** 70, 2 ** 70).map(str),
                    st.sampled_from(["nan", "-inf", "1e400", "-0", "0x10", "1_000", " 3", "", "1e-400"]),
                    st.text(max_size=5))


def digest(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files)).hexdigest()


@given(choice=st.sampled_from(OPTIONS), text=NUMBERS)
@FUZZ
def test_a_numeric_option_is_what_its_type_promises_or_one_line(choice, text, capsys):
    words, parser, action = choice
    option = action.option_strings[0]
    try:
        args = build_parser().parse_args(argv(words, parser, "OUT") + [f"{option}={text}"])
    except SystemExit as e:
        err = capsys.readouterr().err
        assert e.code == 2 and one_error_line(err) and option in err, err
        return
    value = getattr(args, action.dest)
    assert PROMISE[action.type](value), (words, option, text, value)


@pytest.fixture(scope="module")
def stars(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    path = d / "stars.h5"
    write_h5(add_noise(stellar_spectra(12, seed=5, wave=WAVE), seed=6), path)
    model = d / "model"
    assert main(["train", str(path), "-o", str(model), "--epochs", "2", "--latent-dim", "2", "--batch-size", "8",
                 "--quiet"]) == 0
    return path, model


BAD_VALUES = st.sampled_from([np.nan, np.inf, -np.inf, -1.0, 0.0, 1e-45, 1e-30, 1e30, 3e38, -3e38])
DAMAGE = st.lists(st.tuples(st.sampled_from(["flux", "ivar", "mask", "row"]), st.integers(0, 11),
                            st.integers(0, WAVE.size - 1), BAD_VALUES), max_size=12)


def damaged(source: Path, where: Path, damage) -> Path:
    """A copy of `source` with `damage`: (field, row, pixel, value) set flux/ivar values, flip mask pixels, or
    take a whole row's ivar to `value` (an all-masked spectrum when it is not positive)."""
    where.write_bytes(source.read_bytes())
    with h5py.File(where, "r+") as f:
        flux, ivar, mask = f["flux"][()], f["ivar"][()], f["mask"][()]
        for field, row, pixel, value in damage:
            with np.errstate(over="ignore"):
                if field == "flux":
                    flux[row, pixel] = value
                elif field == "ivar":
                    ivar[row, pixel] = value
                elif field == "mask":
                    mask[row, pixel] = ~mask[row, pixel]
                else:
                    ivar[row] = value
        f["flux"][()], f["ivar"][()], f["mask"][()] = flux, ivar, mask
    return where


def check_outputs(command: str, out: Path, data: Path, err: str) -> None:
    """The contract on what an exit-0 command wrote: finite values, or masked where there is no estimate. A
    spectrum whose valid pixels all leave float32's range in the model's units (ivar 1e-45) has no valid pixel
    either: beyond the input's empty spectra, only as many as the command's one warning line counts may lack one."""
    with h5py.File(data) as f:
        ivar, mask = f["ivar"][()], f["mask"][()]
    empty = ~((ivar > 0) & np.isfinite(ivar) & ~mask).any(1)        # spectra without a valid pixel
    declared = re.search(rf"(\d+) {re.escape(EMPTY)}", err)
    unrepresentable = max(0, (int(declared.group(1)) if declared else 0) - int(empty.sum()))
    if command == "denoise":
        d = finite_or_masked(out)
        assert d["mask"][empty].all()
        return
    with h5py.File(out) as f:
        values = {k: f[k][()] for k in f if isinstance(f[k], h5py.Dataset) and f[k].dtype.kind == "f"}
    for k, v in values.items():   # per-spectrum results: NaN, or an infinite sigma, only where nothing was seen
        assert len(v) == len(empty), k
        no_estimate = ~np.isfinite(v.reshape(len(v), -1)).all(1)
        assert (no_estimate & ~empty).sum() <= unrepresentable, (command, k)


@given(damage=DAMAGE, command=st.sampled_from(["denoise", "encode", "score"]),
       batch=st.one_of(st.none(), st.sampled_from(["1", "5", "0", "-2", "nan", "1e9", "x"])))
@FUZZ
def test_damaged_spectra_give_finite_or_masked_outputs_or_one_line(stars, damage, command, batch, capsys):
    source, model = stars
    before = digest(model)
    with tempfile.TemporaryDirectory() as tmp:
        data = damaged(source, Path(tmp) / "in.h5", damage)
        data_before = digest(data)
        out = Path(tmp) / "out.h5"
        try:
            code = main([command, str(model), str(data), "-o", str(out), "--quiet"]
                        + ([] if batch is None else ["--batch-size", batch]))
        except SystemExit as e:     # refused where it was parsed
            code = e.code
        err = capsys.readouterr().err
        assert "Traceback" not in err
        if code == 0:
            check_outputs(command, out, data, err)
        else:
            assert code == 2 and one_error_line(err) and not out.exists(), err
            assert not [p for p in Path(tmp).iterdir() if p.name != "in.h5"]   # no partial or temporary file
        assert digest(data) == data_before
    assert digest(model) == before


@given(content=st.one_of(st.binary(max_size=600), st.integers(0, 4000)))
@FUZZ
def test_an_unreadable_file_is_one_line_and_leaves_nothing(stars, content, capsys):
    """Random bytes, or a valid file cut short at a random length, named .h5."""
    source, model = stars
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "in.h5"
        data.write_bytes(source.read_bytes()[:content] if isinstance(content, int) else content)
        data_before = digest(data)
        out = Path(tmp) / "out.h5"
        code = main(["denoise", str(model), str(data), "-o", str(out), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and one_error_line(err) and not out.exists(), err
        assert sorted(p.name for p in Path(tmp).iterdir()) == ["in.h5"] and digest(data) == data_before
