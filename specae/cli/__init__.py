"""Command-line interface: `specae COMMAND ...`, mirroring the Python API.

One module per group of commands, each with a `register(subparsers)`; this module only assembles them
and turns user errors (SpecaeError) into one line on stderr and exit code 2. Before a command runs, its
outputs are checked against its inputs (`refuse_overwrites`, specae.plumbing); they are written atomically
by the functions the commands call.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import signal
import sys
import warnings
from dataclasses import fields

from specae.errors import SpecaeError


def _checked(text: str, cast, ok, rule: str):
    """`text` cast to a finite number that satisfies `ok`, else an argparse error saying what was wrong."""
    try:
        value = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if cast is int else 'a number'}") from None
    if not (math.isfinite(value) and ok(value)):   # nan and inf pass no range: refused here, not mid-run
        raise argparse.ArgumentTypeError(f"{text} must be {rule}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _checked(text, int, lambda v: v >= 1, "an integer >= 1")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (a row, a degree, a worker count)."""
    return _checked(text, int, lambda v: v >= 0, "an integer >= 0")


def at_least_two(text: str) -> int:
    """argparse type: an integer >= 2 (cross-validation folds: one to fit, one to score)."""
    return _checked(text, int, lambda v: v >= 2, "an integer >= 2")


def seed(text: str) -> int:
    """argparse type: a random seed, an integer in [0, 2^63) (numpy refuses negative seeds, torch larger ones)."""
    return _checked(text, int, lambda v: 0 <= v < 2 ** 63, "an integer in [0, 2^63)")


def positive(text: str) -> float:
    """argparse type: a finite number > 0 (a learning rate, a time budget, a scale)."""
    return _checked(text, float, lambda v: v > 0, "a finite number > 0")


def non_negative(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _checked(text, float, lambda v: v >= 0, "a finite number >= 0")


def decay(text: str) -> float:
    """argparse type: a moving-average decay in [0, 1) (0: no average)."""
    return _checked(text, float, lambda v: 0 <= v < 1, "in [0, 1)")


def fraction(text: str) -> float:
    """argparse type: a fraction in (0, 1), so that both parts it splits are non-empty."""
    return _checked(text, float, lambda v: 0 < v < 1, "in (0, 1)")


def directory(text: str) -> str:
    """argparse type: a directory to write into, refused up front if a file (or anything else) holds the
    name, rather than after the work it would have stored."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} exists and is not a directory")
    return text


class _ConfigDefault:
    """The default of field `name` of the config dataclass `path` ("module.Class"), read when help is shown
    (argparse expands %(config_default)s): the configs' modules import torch, which every command would otherwise
    wait for."""

    def __init__(self, path: str, name: str):
        self.path, self.name = path, name

    def __str__(self) -> str:
        module, cls = self.path.rsplit(".", 1)
        return str({f.name: f.default for f in fields(getattr(importlib.import_module(module), cls))}[self.name])


def config_option(p, config: str, name: str, *flags: str, help: str = "", **kw) -> None:
    """Add option `flags` (default --NAME, dashed) for field `name` of the config dataclass `config`
    ("module.Class"), whose default is stated there only: the option is None unless given (the dataclass's
    default then applies, or on --resume the run's own), and its help ends with that default. `config_values`
    reads the given ones back."""
    action = p.add_argument(*(flags or (f"--{name.replace('_', '-')}",)), dest=name, default=None,
                            help=f"{help}{' ' if help else ''}(default %(config_default)s)", **kw)
    action.config_default = _ConfigDefault(config, name)
    p.set_defaults(config_fields=(*(p.get_default("config_fields") or ()), name))


def config_values(args, cls, *same_named: str) -> dict:
    """{field: value} of the config dataclass `cls` for the options of `config_option` given on the command line (not
    None), and for the options named `same_named` (say "device", whose option serves commands without a config)."""
    names = {*getattr(args, "config_fields", ()), *same_named}
    return {f.name: getattr(args, f.name) for f in fields(cls) if f.name in names and getattr(args, f.name) is not None}


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line like every other error (exit code 2, as argparse's)."""

    def error(self, message):
        self.exit(2, f"specae: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from specae.cli import data, gan, latent, model, repeats

    p = Parser(prog="specae", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (data, model, gan, latent, repeats):
        group.register(sub)
    return p


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"specae: warning: {message}", file=sys.stderr)


class Terminated(Exception):
    """SIGTERM (a batch system's time limit, `kill`): unwinds like an exception, so temporary outputs
    are removed on the way out."""


def _terminate(signum, frame):
    raise Terminated()


# the arguments that name files or directories a command reads; the test that every command refuses to
# overwrite its inputs also checks that each positional argument is listed here
INPUTS = ("model", "data", "files", "regressor", "gan", "images", "directions", "prediction", "truth", "directory",
          "grid_from", "val", "calibration", "reference", "catalogue")
OUTPUTS = ("output", "png")


def refuse_overwrites(args) -> None:
    """Refuse outputs that would replace or modify an input, before the command does any work. Commands
    that write one output per input file (`batch` set) have each of those checked too."""
    from specae.inputs import input_outputs
    from specae.plumbing import refuse_inputs

    given = [getattr(args, k, None) for k in INPUTS]
    refuse_inputs([getattr(args, k, None) for k in OUTPUTS],
                  [p for v in given for p in (v if isinstance(v, list) else [v])])
    if getattr(args, "batch", False):
        input_outputs(args.data, args.output, create=False)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _one_line_warning
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        refuse_overwrites(args)
        args.func(args)
    except SpecaeError as e:
        print(f"specae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("specae: interrupted; nothing partial was written", file=sys.stderr)
        return 130
    except Terminated:
        print("specae: terminated; nothing partial was written", file=sys.stderr)
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
