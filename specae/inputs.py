"""The spectrum files a model command reads: specae HDF5 files and survey FITS files, to one rule.

Each HDF5 file is one input, streamed block by block (one output per file in a batch). All FITS files
given to one command form one more input, as `specae convert` would stack them: read together
(`specae.data.readers.read_many`) straight onto the model's wavelength grid, held in memory, with one
output. A command given FITS and HDF5 files at once that writes per input refuses the mix (which output
would the FITS set get?); the commands that only read (directions, regress, plots) take both.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from specae.data.spectra import Spectra
from specae.errors import SpecaeError
from specae.plumbing import expand_paths, output_paths, refuse_inputs

FITS_SIGNATURE = b"SIMPLE  ="
GZIP_SIGNATURE = b"\x1f\x8b"


def is_fits(path) -> bool:
    """Whether `path` holds FITS (plain or gzip-compressed), from its first bytes, never its name."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(FITS_SIGNATURE))
        if head.startswith(GZIP_SIGNATURE):
            with gzip.open(path, "rb") as fh:
                head = fh.read(len(FITS_SIGNATURE))
    except (OSError, EOFError, zlib.error):   # unreadable, or a cut or damaged gzip stream: left to the readers
        return False
    return head == FITS_SIGNATURE


def describe(paths: list[Path]) -> str:
    """A short name for several files in a message: the first two and how many more."""
    names = ", ".join(map(str, paths[:2]))
    return names + (f" and {len(paths) - 2} more" if len(paths) > 2 else "")


@dataclass
class SpectrumInput:
    """One input of a command: an HDF5 file (`path`, streamed) or the stacked FITS files (`spectra`)."""
    name: str                      # for messages: the file, or the FITS files
    path: Path | None = None       # the HDF5 file
    spectra: Spectra | None = None  # the FITS files on the model's grid

    def __len__(self) -> int:
        from specae.data.hdf5 import H5Spectra

        if self.spectra is not None:
            return len(self.spectra)
        with H5Spectra(self.path) as h5:
            return len(h5)

    def blocks(self, rows: int | None = None) -> Iterator[Spectra]:
        """The spectra in blocks of `rows` (default: whole row chunks of an HDF5 file, at least 1024)."""
        from specae.data.hdf5 import H5Spectra

        if self.spectra is not None:
            step = rows or max(len(self.spectra), 1)
            for start in range(0, len(self.spectra), step):
                yield self.spectra[start:start + step]
            return
        with H5Spectra(self.path) as h5:
            yield from h5.batches(rows or max(h5.chunk_rows, 1024))


def split_formats(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """(HDF5 files, FITS files) among `paths`; a file that is neither is left with the HDF5 ones, whose
    reader names it."""
    fits = [p for p in paths if is_fits(p)]
    return [p for p in paths if p not in fits], fits


def read_fits_set(paths: list[Path], wave: np.ndarray) -> Spectra:
    """The FITS files `paths` read and stacked onto `wave` (Angstrom), as `specae convert --grid-from` would
    write them: one rebinning; pixels a file does not cover come out masked."""
    from specae.data.readers import read_many

    return read_many(paths, wave=wave)


def spectrum_inputs(patterns, wave: np.ndarray) -> list[SpectrumInput]:
    """The inputs named by `patterns` (paths or globs): one per HDF5 file, then one for all FITS files, read
    onto the model's grid `wave`."""
    h5, fits = split_formats(expand_paths(patterns))
    inputs = [SpectrumInput(str(p), path=p) for p in h5]
    if fits:
        inputs.append(SpectrumInput(describe(fits), spectra=read_fits_set(fits, wave)))
    return inputs


def read_all(patterns, wave: np.ndarray) -> Spectra:
    """Every spectrum of `patterns` in memory, the FITS files on `wave` (HDF5 files as they are written)."""
    from specae.data.hdf5 import read_h5

    h5, fits = split_formats(expand_paths(patterns))
    parts = [read_h5(p) for p in h5] + ([read_fits_set(fits, wave)] if fits else [])
    return parts[0] if len(parts) == 1 else Spectra.concatenate(parts)


def input_outputs(patterns, output, create: bool = True) -> list[Path]:
    """Where each input of `spectrum_inputs(patterns)` writes (same order): OUTPUT/<name> per HDF5 file in a
    batch (`specae.plumbing.output_paths`), or `output` itself, a file, for the FITS files. Refused before any
    work: FITS and HDF5 files mixed, and FITS files with a directory output."""
    paths = expand_paths(patterns)
    h5, fits = split_formats(paths)
    if not fits:
        return output_paths(h5, output, create)
    if h5:
        raise SpecaeError(f"{h5[0]} is HDF5 and {fits[0]} is FITS: the FITS files of one command form one set with "
                          "one output; run the HDF5 files separately (or convert the FITS files first)")
    if str(output).endswith(("/", "\\")) or Path(output).is_dir():
        raise SpecaeError(f"{output}: the FITS inputs form one set written to one file; name a file (.h5, .fits "
                          "or .ecsv), not a directory")
    refuse_inputs([output], paths)
    return [Path(output)]
