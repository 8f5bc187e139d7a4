"""Checkpoint directories, the one place they are written and read: tensors and plain JSON, one-line errors.

Every file is written atomically (specae.plumbing.atomic_path); every weights file is read with
torch.load(weights_only=True), so a checkpoint can never run code; any failure while a checkpoint is read
becomes one SpecaeError that names the directory.
"""

from __future__ import annotations

import contextlib
import json
import pickle
from pathlib import Path

import torch

from specae.errors import SpecaeError
from specae.plumbing import atomic_path

# what a damaged, truncated, foreign or malicious file raises while it is parsed and loaded
READ_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError, OSError, EOFError,
               SpecaeError, pickle.UnpicklingError)


def write_checkpoint(directory, files: dict) -> None:
    """Write each NAME: content of `files` into `directory` (created), each atomically and in the order given, so
    the file whose presence says the rest is complete goes last: a str as text, a dict or list with a ".json"
    name as JSON, anything else (tensors, containers of them) with torch.save. Tensors must be on the CPU."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise SpecaeError(f"{d}: exists and is not a directory")
    d.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        with atomic_path(d / name) as tmp:
            if isinstance(content, str):
                tmp.write_text(content)
            elif name.endswith(".json"):
                tmp.write_text(json.dumps(content, indent=1))
            else:
                torch.save(content, tmp)


def cpu_tensors(module: torch.nn.Module) -> dict:
    """The module's state dict (weights and buffers), detached and on the CPU: what weights.pt holds."""
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def require_files(directory: Path, names: tuple[str, ...], what: str) -> None:
    """SpecaeError "`directory`: not a specae `what` (missing NAME)" unless every file in `names` exists."""
    for name in names:
        if not (directory / name).is_file():
            raise SpecaeError(f"{directory}: not a specae {what} (missing {name})")


def load_tensors(path: Path, map_location="cpu"):
    """torch.load with weights_only=True: tensors, numbers, strings and containers of them, never code."""
    return torch.load(path, map_location=map_location, weights_only=True)


@contextlib.contextmanager
def reading(location, what: str):
    """Turn any READ_ERRORS raised in the block into "`location`: damaged or incompatible `what` (reason)"."""
    try:
        yield
    except READ_ERRORS as e:
        raise SpecaeError(f"{location}: damaged or incompatible {what} ({str(e).splitlines()[0]})") from None
