"""Command-line interface: `specae COMMAND ...`, mirroring the Python API.

One module per group of commands, each with a `register(subparsers)`; this module only assembles them
and turns user errors (SpecaeError) into one line on stderr and exit code 2. Outputs are written
atomically by the functions the commands call.
"""

from __future__ import annotations

import argparse
import signal
import sys
import warnings

from specae.errors import SpecaeError


def _checked(text: str, cast, ok, rule: str):
    """`text` cast to a number that satisfies `ok`, else an argparse error saying what was wrong."""
    try:
        value = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if cast is int else 'a number'}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{value} must be {rule}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _checked(text, int, lambda v: v >= 1, "at least 1")


def non_negative(text: str) -> float:
    """argparse type: a number >= 0."""
    return _checked(text, float, lambda v: v >= 0, "at least 0")


def decay(text: str) -> float:
    """argparse type: a moving-average decay in [0, 1) (0: no average)."""
    return _checked(text, float, lambda v: 0 <= v < 1, "in [0, 1)")


def build_parser() -> argparse.ArgumentParser:
    from specae.cli import data, gan, latent, model, repeats

    p = argparse.ArgumentParser(prog="specae", description=__doc__.splitlines()[0])
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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _one_line_warning
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
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
