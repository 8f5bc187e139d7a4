"""The documentation's CLI reference (docs/_ext/cli_reference.py) renders every subcommand of
`specae.cli.build_parser()`, nested ones included, each with its usage line and every option, so that a new
command or option cannot be missing from the docs."""

import argparse
import sys
from pathlib import Path

import pytest

pytest.importorskip("sphinx", reason="the docs extra is not installed (pip install '.[docs]')")
from sphinx.cmd.build import build_main  # noqa: E402

from specae.cli import build_parser  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"


def commands(parser, prefix="specae"):
    """{'specae gan train': its parser, ...} for every subcommand, at any depth."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[f"{prefix} {name}"] = sub
                found.update(commands(sub, f"{prefix} {name}"))
    return found


def test_the_cli_reference_renders_every_subcommand_with_its_usage_and_options(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "conf.py").write_text(f"import sys\nsys.path.insert(0, {str(DOCS / '_ext')!r})\n"
                                 "extensions = ['cli_reference']\n")
    (src / "index.rst").write_text("CLI\n===\n\n.. specae-cli::\n")
    monkeypatch.setattr(sys, "path", list(sys.path))   # the build's conf.py adds docs/_ext for this test only
    assert build_main(["-q", "-W", "-n", "-E", "-b", "text", str(src), str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "index.txt").read_text()

    expected = commands(build_parser())
    assert {"specae convert", "specae gan train", "specae plot denoised", "specae repeats"} <= set(expected)
    lines = text.splitlines()
    headings = [line for line, under in zip(lines, lines[1:])   # a title: its underline is as long as it
                if line.startswith("specae ") and len(under) == len(line) and len(set(under)) == 1]
    assert sorted(headings) == sorted(expected)   # each command once, nothing else
    flat = " ".join(text.split())
    for name, parser in expected.items():
        assert " ".join(parser.format_usage().split()) in flat, name
        for action in parser._actions:
            for flag in [] if isinstance(action, argparse._HelpAction) else action.option_strings:
                assert flag in flat, (name, flag)
