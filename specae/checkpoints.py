"""Reading checkpoint directories safely: required files, tensors only, one-line errors.

Every weights file is read with torch.load(weights_only=True), so a checkpoint can never run code; any
failure while a checkpoint is read becomes one SpecaeError that names the directory.
"""

from __future__ import annotations

import contextlib
import pickle
from pathlib import Path

import torch

from specae.errors import SpecaeError

# what a damaged, truncated, foreign or malicious file raises while it is parsed and loaded
READ_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError, OSError, EOFError,
               SpecaeError, pickle.UnpicklingError)


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
