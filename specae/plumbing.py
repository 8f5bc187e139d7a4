"""Plumbing: where outputs go, how they are written, and seeds. Standard library and numpy only.

Every command decides its outputs here before it does any work, so an output never replaces or modifies an
input: not the same file or directory (a symbolic or hard link to it included), not a batch directory that
would receive an input under the input's own name, and not an empty path (which would silently mean the
current directory). Every file is written under a temporary name and renamed when complete (`atomic_path`),
so an interrupted command leaves no partial output.
"""

from __future__ import annotations

import errno
import glob
import os
import tempfile
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Iterator

import numpy as np

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


# -- writing ---------------------------------------------------------------------------------------------
@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temporary name beside `path`; rename it onto `path` only if the block succeeds.

    The temporary name carries the writer's process id (`.NAME.PID.<random>.tmp`, from mkstemp), so
    temporaries left by a killed writer are recognised and removed by the next write of the same output. A
    full disk, a read-only or unwritable directory becomes a one-line SpecaeError naming `path`.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise SpecaeError(f"{path}: output directory {path.parent} does not exist")
    _remove_stale_temporaries(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise SpecaeError(f"{path}: cannot write here ({_os_reason(e)})") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except OSError as e:
        if e.errno is None:
            raise
        raise SpecaeError(f"{path}: cannot write here ({_os_reason(e)})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _os_reason(e: OSError) -> str:
    """A short reason for an OSError, with advice for the usual ones."""
    advice = {errno.ENOSPC: "no space left on the device; free some or write elsewhere",
              errno.EDQUOT: "disk quota exceeded; free some or write elsewhere",
              errno.EROFS: "read-only file system; write elsewhere",
              errno.EACCES: "permission denied; write to a directory you can write to",
              errno.EPERM: "operation not permitted; write to a directory you can write to"}
    return advice.get(e.errno, e.strerror or type(e).__name__)


def _remove_stale_temporaries(path: Path) -> None:
    """Delete `.NAME.PID.*.tmp` files beside `path` whose writer process no longer exists."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        parts = tmp.name[len(path.name) + 2:].split(".")
        if not parts or not parts[0].isdigit():
            continue
        try:
            os.kill(int(parts[0]), 0)          # signal 0: does the writer still run?
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass                               # another user's live process


# -- seeds and settings ----------------------------------------------------------------------------------
def mix_seed(*ints: int) -> int:
    """A 63-bit seed from several integers (seed, epoch, rank, ...), stable across runs and platforms."""
    return int(np.random.SeedSequence([abs(int(i)) for i in ints]).generate_state(1, np.uint64)[0] >> 1)


def config_from_dict(cls, values: dict):
    """The config dataclass `cls` from a plain dict (JSON, saved settings, command-line options): keys that are
    not its fields are ignored, so a config written by another specae version (with a setting since removed)
    still loads; lists become tuples where the field is a tuple, as JSON has none."""
    cfg = cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})
    for f in fields(cls):
        value = getattr(cfg, f.name)
        if isinstance(value, list) and (f.type is tuple or str(f.type).startswith("tuple")):
            setattr(cfg, f.name, tuple(value))
    return cfg
