"""Input and output paths of the commands: globs expanded, and outputs that would touch an input refused.

Plumbing (standard library only). Every command decides its outputs here before it does any work, so an
output never replaces or modifies an input: not the same file or directory (a symbolic or hard link to it
included), not a batch directory that would receive an input under the input's own name, and not an empty
path (which would silently mean the current directory).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from specae.errors import SpecaeError


def expand(item) -> list[str]:
    """An existing path as it is (even with glob characters in its name, like `spec[1].h5`), else the
    sorted matches of the glob pattern (none: empty)."""
    item = str(item)
    return [item] if os.path.lexists(item) or not glob.has_magic(item) else sorted(glob.glob(item))


def expand_paths(pattern) -> list[Path]:
    """A path, a glob pattern or a list of either -> existing files in order; SpecaeError if one matches none."""
    items = [pattern] if isinstance(pattern, (str, os.PathLike)) else list(pattern)
    paths = []
    for item in items:
        hits = expand(item)
        if not hits:
            raise SpecaeError(f"{item}: no file matches")
        paths += hits
    for p in paths:
        if not Path(p).is_file():
            raise SpecaeError(f"{p}: no such file")
    return [Path(p) for p in paths]


def refuse_inputs(outputs, inputs) -> None:
    """SpecaeError if an output (None: not given) is empty or is the same file or directory as one of
    `inputs` (paths or glob patterns; those naming nothing are left to the reader to report)."""
    # by (device, inode), as os.path.samefile compares, so links are caught and a batch costs one stat a file
    existing = {}
    for p in (p for item in inputs if item is not None for p in expand(item)):
        existing.setdefault(_identity(p), p)
    existing.pop(None, None)
    for out in outputs:
        if out is not None and not str(out).strip():
            raise SpecaeError("the output path is empty; name the file or directory to write")
        same = existing.get(_identity(out)) if out is not None else None
        if same is not None:
            raise SpecaeError(f"{out}: this output would replace the input {same}; write it elsewhere (inputs "
                              "are never overwritten)")


def _identity(path) -> tuple[int, int] | None:
    """(device, inode) of an existing path, links followed; None for a path that names nothing."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):   # ValueError: a NUL byte in the name
        return None
    return st.st_dev, st.st_ino


def output_paths(inputs: list[Path], output, create: bool = True) -> list[Path]:
    """Where each input's result goes: `output` itself for one input (unless it names a directory), else
    OUTPUT/<input name> for each. Refuses two inputs of the same name and outputs that are inputs before
    anything is created; `create` makes the output directory of a batch."""
    refuse_inputs([output], inputs)
    output = Path(output)
    batch = len(inputs) != 1 or str(output).endswith(("/", "\\")) or output.is_dir()
    if batch and output.exists() and not output.is_dir():
        raise SpecaeError(f"{output}: several inputs need an output directory, and this is a file")
    names = [p.name for p in inputs] if batch else [output.name]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SpecaeError(f"several inputs are named {dup[0]}; their outputs would collide in {output}")
    outs = [output / n for n in names] if batch else [output]
    refuse_inputs(outs, inputs)
    if batch and create:
        output.mkdir(parents=True, exist_ok=True)
    return outs
