"""Outputs never overwrite or modify inputs (specae.plumbing): every command that writes files refuses, before any
work, an output that is an input, a link to one, a batch directory that would receive an input under its own
name, or an empty path; and the path handling around it (literal paths before globs, colliding names)."""

import hashlib
import os
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

from specae.cli import INPUTS, OUTPUTS, build_parser, main
from specae.data.hdf5 import write_h5
from specae.data.resample import loglam_grid
from specae.data.spectra import Spectra
from specae.errors import SpecaeError
from specae.plumbing import expand_paths
from tests.conftest import shared_dir

SAME, EMPTY, COLLIDE = "would replace the input", "output path is empty", "would collide"
NOT_DIR = "is not a directory"   # a file given for a directory output: refused while parsing

# (argv, what the one error line says); paths are relative to the folder of inputs, which is also the
# working directory. The refusal comes before any input is read, so stand-ins serve for models and GANs.
CASES = [
    ("convert b.fits -o b.fits", SAME),
    ("convert b.fits --grid-from a.h5 -o a.h5", SAME),
    ("convert b.fits -o ''", EMPTY),
    ("train a.h5 -o ''", EMPTY),
    ("train a.h5 --val dir/a.h5 -o dir/a.h5", NOT_DIR),
    ("denoise M a.h5 -o a.h5", SAME),
    ("denoise M a.h5 -o hard.h5", SAME),                 # a hard link to the input
    ("denoise M dir/a.h5 -o dir/", SAME),                # the output takes the input's name in its directory
    ("denoise M dir/*.h5 -o dir", SAME),                 # the same, for a glob (once 'already complete', skipped)
    ("denoise M a.h5 -o M", SAME),
    ("denoise M a.h5 -o ''", EMPTY),
    ("denoise M dir/a.h5 a.h5 -o out", COLLIDE),
    ("heldout M dir/a.h5 -o dir", SAME),
    ("encode M dir/a.h5 -o dir", SAME),
    ("calibrate M a.h5 -o M", SAME),
    ("directions M a.h5 -o a.h5", SAME),
    ("regress M a.h5 -o M", SAME),
    ("regress M a.h5 --calibration dir/b.h5 -o dir/b.h5", NOT_DIR),
    ("predict M REG a.h5 -o REG", SAME),
    ("predict M REG dir/a.h5 -o dir/", SAME),
    ("score M a.h5 --reference dir/b.h5 -o dir/b.h5", SAME),
    ("score M dir/*.h5 -o dir", SAME),
    ("plot latent M a.h5 --color Z -o a.h5", SAME),
    ("plot latent M a.h5 --color Z --directions dirs.json -o dirs.json", SAME),
    ("plot traversal M dirs.json --label Z -o dirs.json", SAME),
    ("plot traversal M dirs.json --label Z --data a.h5 -o a.h5", SAME),
    ("plot denoised M a.h5 --truth dir/a.h5 -o dir/a.h5", SAME),
    ("plot calibration pred.h5 a.h5 -o pred.h5", SAME),
    ("plot training M -o M", SAME),
    ("repeats M a.h5 --group ID -o a.h5", SAME),
    ("demo -o ''", EMPTY),
    ("gan train cutouts -o cutouts", SAME),          # a folder of FITS cutouts
    ("gan sample GAN -o GAN", SAME),
    ("gan sample GAN -o s.npy --png GAN", SAME),
    ("gan sample GAN -o s.npy --png ''", EMPTY),
    ("gan evaluate GAN img.npy -o img.npy", SAME),
    ("gan score GAN img.npy -o img.npy", SAME),
    ("gan latent GAN -o GAN", SAME),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A folder of inputs: spectra (48 x ~300 px), a hard link, stand-ins for a FITS file, models, a GAN."""
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    wave = loglam_grid(4000, 8000, 1e-3)
    for name in ("a.h5", "dir/a.h5", "dir/b.h5", "pred.h5"):
        (d / name).parent.mkdir(exist_ok=True)
        write_h5(Spectra(wave, rng.normal(1, 0.1, (48, wave.size)), np.ones((48, wave.size)),
                         labels={"Z": rng.uniform(0, 0.3, 48)}), d / name)
    os.link(d / "a.h5", d / "hard.h5")
    for name in ("M", "REG", "GAN", "cutouts"):
        (d / name).mkdir()
        (d / name / "config.json").write_text("{}")
    (d / "b.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 2850)
    (d / "dirs.json").write_text("{}")
    np.save(d / "img.npy", np.zeros((4, 8, 8), np.float32))
    return d


def snapshot(root: Path) -> dict:
    """Every file and folder under `root`: files by content hash, folders as None."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("line, message", CASES, ids=[c[0] for c in CASES])
def test_an_output_that_would_touch_an_input_is_refused_before_any_work(inputs, monkeypatch, capsys, line, message):
    monkeypatch.chdir(inputs)            # so `-o ''` would write here, and an empty folder would show
    before = snapshot(inputs)
    try:
        code = main(shlex.split(line))  # globs stay quoted: specae expands them
    except SystemExit as e:             # argparse's refusals (a file where a directory goes)
        code = e.code
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("specae: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert message in err
    assert snapshot(inputs) == before    # inputs byte-identical, nothing new (no output, no folder, no temporary)


def test_every_command_that_writes_is_covered_and_its_inputs_declared():
    """A new command with an output joins CASES; every positional argument is a declared input."""
    commands, positionals = set(), set()

    def walk(parser, prefix):
        for action in parser._actions:
            if action.choices and isinstance(action.choices, dict) and action.dest in ("command", "gan_command", "kind"):
                for name, sub in action.choices.items():
                    walk(sub, prefix + [name])
            elif action.option_strings == []:
                positionals.add(action.dest)
            if set(action.option_strings) & {"-o", "--output"}:
                commands.add(" ".join(prefix))

    walk(build_parser(), [])
    covered = {" ".join(line.split()[:2 if line.split()[0] in ("gan", "plot") else 1]) for line, _ in CASES}
    assert commands == covered
    assert positionals <= set(INPUTS) and {"output"} <= set(OUTPUTS)


def test_the_library_batch_writer_refuses_too(inputs):
    from specae.results import map_files

    with pytest.raises(SpecaeError, match=SAME):
        map_files([inputs / "dir" / "a.h5"], inputs / "dir", lambda part: {})


def test_an_existing_path_with_glob_characters_is_taken_literally(tmp_path):
    literal, other = tmp_path / "s[1].h5", tmp_path / "s1.h5"
    literal.write_bytes(b"x")
    other.write_bytes(b"y")
    assert expand_paths(literal) == [literal]                          # not the glob, which matches s1.h5
    assert expand_paths(tmp_path / "s[12].h5") == [other]              # no such file: a glob after all
    with pytest.raises(SpecaeError, match="no file matches"):
        expand_paths(tmp_path / "t[1].h5")


def test_convert_expands_quoted_globs_and_reads_literal_bracket_names(tmp_path, capsys):
    src = sorted(shared_dir("sdss").glob("spec-*.fits"))[:2]
    for i, f in enumerate(src):
        shutil.copy(f, tmp_path / f"spec[{i}].fits")
    assert main(["convert", str(tmp_path / "spec*.fits"), "-o", str(tmp_path / "all.h5")]) == 0
    assert main(["convert", str(tmp_path / "spec[1].fits"), "-o", str(tmp_path / "one.h5")]) == 0
    out = capsys.readouterr().out
    assert "wrote 2 spectra" in out and "wrote 1 spectra" in out


def test_colliding_output_names_leave_no_directory(inputs, tmp_path, capsys):
    out = tmp_path / "new" / "out"
    code = main(["denoise", str(inputs / "M"), str(inputs / "a.h5"), str(inputs / "dir" / "a.h5"), "-o", str(out)])
    assert code == 2 and COLLIDE in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_a_text_file_named_npy_is_called_not_a_npy_file(tmp_path):
    from specae.images.data import read_images

    (tmp_path / "t.npy").write_text("1 2 3\n")
    with pytest.raises(SpecaeError, match=r"t\.npy: .*not a \.npy file") as e:
        read_images(tmp_path / "t.npy")
    assert "pickle" not in str(e.value)
