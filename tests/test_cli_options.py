"""Every numeric option of every command is checked where it is parsed, directory outputs that name a file are
refused up front, and `specae train --resume` / `--val` refuse data and settings that are not the run's: each
as one 'specae: error:' line, exit code 2, no traceback and nothing written."""

import argparse
import json

import numpy as np
import pytest

from specae import cli
from specae.cli import build_parser, main
from specae.data.hdf5 import read_h5, write_h5
from specae.data.resample import loglam_grid
from specae.data.sources import H5Blocks
from specae.data.spectra import Spectra
from specae.data.synthetic import add_noise, galaxy_spectra, stellar_spectra
from specae.images.synthetic import galaxies
from specae.train import describe
from tests.conftest import one_error_line, run
from tests.test_cli_model import WAVE

pytestmark = pytest.mark.usefixtures("one_thread")

# values each checked type refuses: out of range, not finite, not a number of its kind
BAD = {cli.positive_int: ["0", "-1", "1.5", "x"], cli.non_negative_int: ["-1", "1.5"], cli.at_least_two: ["1", "0"],
       cli.seed: ["-1", str(2 ** 63), "x"], cli.positive: ["0", "-1", "nan", "inf", "x"],
       cli.non_negative: ["-0.5", "nan", "inf"], cli.decay: ["1", "-0.1", "nan"],
       cli.fraction: ["0", "1", "-0.2", "nan"]}


def commands(parser=None, path=()):
    """(command words, its parser) for every command, sub-commands included."""
    for action in (parser or build_parser())._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if not any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                    yield (*path, name), sub
                yield from commands(sub, (*path, name))


def argv(words, parser, out) -> list[str]:
    """A command line that parses: every positional and required option given (the output as `out`)."""
    args = list(words)
    for a in parser._actions:
        if not a.option_strings and a.dest != "help":
            args.append("X")
        elif a.required:
            args += [a.option_strings[0], str(out) if a.dest == "output" else "X"]
    return args


def numeric_options():
    for words, parser in commands():
        for a in parser._actions:
            if a.type is not None and a.type is not cli.directory:
                yield words, parser, a


CASES = [pytest.param(words, a.option_strings[0], value, id=f"{' '.join(words)} {a.option_strings[0]} {value}")
         for words, _, a in numeric_options() for value in BAD.get(a.type, ["48", "x"])]


def test_every_numeric_option_has_a_checked_type():
    """No bare int/float: a number is checked (finite, in range) where it is parsed, by one helper family."""
    loose = [f"{' '.join(w)} {a.option_strings[0]}" for w, _, a in numeric_options()
             if a.type not in BAD and not (a.type is int and a.choices)]
    assert not loose


@pytest.mark.parametrize("words,option,value", CASES)
def test_numeric_option_out_of_range_is_one_line(words, option, value, tmp_path, capsys):
    parser = dict(commands())[words]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(argv(words, parser, out) + [option, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and one_error_line(err) and option in err, err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("words", [w for w, p in commands()
                                   if any(a.type is cli.directory for a in p._actions)], ids=" ".join)
def test_a_directory_output_naming_a_file_is_refused_up_front(words, tmp_path, capsys):
    """train/calibrate/demo/regress/gan train/gan latent -o FILE: refused before any work, the file untouched."""
    existing = tmp_path / "file"
    existing.write_text("keep")
    with pytest.raises(SystemExit) as e:
        main(argv(words, dict(commands())[words], existing) + (["-o", str(existing)] if words == ("demo",) else []))
    err = capsys.readouterr().err
    assert e.value.code == 2 and one_error_line(err) and "not a directory" in err, err
    assert existing.read_text() == "keep" and [p.name for p in tmp_path.iterdir()] == ["file"]


# ------------------------------------------------------------------------------------------------
# limits known only at run time


@pytest.fixture(scope="module")
def gan_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("gan")
    g = galaxies(40, size=32, seed=7)
    np.savez(d / "gal.npz", images=g.pixels)
    assert main(["gan", "train", str(d / "gal.npz"), "-o", str(d / "G"), "--width", "4", "--latent", "8",
                 "--epochs", "1", "--batch-size", "16", "--quiet"]) == 0
    return d / "G"


@pytest.mark.parametrize("command", ["sample", "latent"])
def test_more_gan_samples_than_memory_holds_are_refused(gan_dir, command, tmp_path, capsys):
    out = tmp_path / ("s.npy" if command == "sample" else "L")
    code, _, err = run(capsys, "gan", command, gan_dir, "-n", 10 ** 11, "-o", out)
    assert code == 2 and one_error_line(err) and "memory" in err and "at most" in err, err
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------
# what a model was trained on, and resuming it


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("spectra")
    other = loglam_grid(4500, 7000, 1e-3)[:WAVE.size]   # the same pixel count over other wavelengths
    sets = {"stars": stellar_spectra(30, seed=1, wave=WAVE), "more_stars": stellar_spectra(30, seed=11, wave=WAVE),
            "galaxies": galaxy_spectra(30, seed=3, wave=other)}
    for i, (name, s) in enumerate(sets.items()):
        write_h5(add_noise(s, seed=i), d / f"{name}.h5")
    return {name: d / f"{name}.h5" for name in sets}


@pytest.fixture(scope="module")
def model(files, tmp_path_factory):
    m = tmp_path_factory.mktemp("run") / "model"
    assert main(["train", str(files["stars"]), "-o", str(m), "--epochs", "1", "--latent-dim", "2",
                 "--batch-size", "16", "--lr", "0.002", "--quiet", "--keep-state"]) == 0
    return m


def snapshot(d):
    return {p.name: p.read_bytes() for p in d.iterdir()}


def test_the_model_records_what_it_was_trained_on(model):
    data = json.loads((model / "history.json").read_text())["data"]
    assert data["validation"] is None   # held out from the training files
    t = data["training"]
    assert t["npix"] == WAVE.size and t["wave"] == [WAVE[0], WAVE[-1]] and t["rows"] == 30 and len(t["fingerprint"]) == 16


def test_the_record_is_the_same_streamed_or_in_memory(files):
    """A run trained in memory resumes streamed (and back): `describe` sees the same data either way."""
    both = [files["stars"], files["more_stars"]]
    in_memory = describe(Spectra.concatenate([read_h5(p) for p in both]))
    assert in_memory == describe(H5Blocks(both, block_rows=7)) and in_memory["rows"] == 60
    assert describe(read_h5(both[0]))["fingerprint"] != in_memory["fingerprint"]


@pytest.mark.parametrize("data,extra,named", [
    ("galaxies", [], ["wavelengths 4500-", "wavelengths 4000-"]),   # same pixel count, another range
    ("more_stars", [], ["fingerprint"]),                           # same grid, other spectra
    ("stars", ["--latent-dim", "5"], ["latent_dim 5", "latent_dim 2"]),
    ("stars", ["--model", "ae"], ["kind ae", "kind vae"]),
    ("stars", ["--lr", "0.01"], ["lr 0.01", "lr 0.002"]),
    ("stars", ["--batch-size", "8"], ["batch_size 8", "batch_size 16"]),
    ("stars", ["--seed", "3"], ["seed 3", "seed 0"]),
    ("stars", ["--val", "more_stars"], ["held out its own validation spectra"]),
], ids=["other-grid", "other-data", "latent-dim", "model", "lr", "batch-size", "seed", "val"])
def test_resume_refuses_what_is_not_the_run(files, model, capsys, data, extra, named):
    """One line naming both values (the given and the run's); the run's directory untouched."""
    extra = [str(files[a]) if a in files else a for a in extra]
    before = snapshot(model)
    code, _, err = run(capsys, "train", files[data], "-o", model, "--epochs", "2", "--resume", "--quiet", *extra)
    assert code == 2 and one_error_line(err) and "--resume" in err, err
    for text in named:
        assert text in err, err
    if data == "more_stars":
        recorded = json.loads((model / "history.json").read_text())["data"]["training"]["fingerprint"]
        assert err.count("fingerprint") == 2 and recorded in err
    assert snapshot(model) == before


def test_resume_with_the_runs_own_data_and_settings_goes_on(files, model, tmp_path, capsys):
    m = tmp_path / "m"
    m.mkdir()
    for name, blob in snapshot(model).items():
        (m / name).write_bytes(blob)
    code, out, err = run(capsys, "train", files["stars"], "-o", m, "--epochs", "2", "--resume", "--quiet",
                         "--latent-dim", "2", "--lr", "0.002", "--max-minutes", "5")
    assert code == 0, err
    history = json.loads((m / "history.json").read_text())
    assert history["epoch"] == [0, 1] and history["train_config"]["lr"] == 0.002   # the run's, not the default
    assert history["train_config"]["batch_size"] == 16 and "on 27 spectra" in out


def test_validation_on_another_grid_is_refused(files, tmp_path, capsys):
    code, _, err = run(capsys, "train", files["stars"], "--val", files["galaxies"], "-o", tmp_path / "m",
                       "--epochs", "1", "--quiet")
    assert code == 2 and one_error_line(err) and "wavelengths 4500-" in err and "wavelengths 4000-" in err, err
    assert not any(tmp_path.iterdir())
