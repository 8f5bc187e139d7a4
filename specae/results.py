"""Writing model results to HDF5, streamed block by block from the input file to the output file.

`map_h5` applies a function to every row block of a specae file and writes what it returns (arrays
with one row per spectrum) beside the input's ids and labels, so no file is ever held whole and the
output appears only when complete (temporary name, then rename). `map_files` does that for many
files, skipping outputs that are already complete, so a killed batch job restarts where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from specae.data.hdf5 import FORMAT_VERSION, H5Spectra, atomic_path, default_chunk_rows, write_ids_labels
from specae.data.spectra import Spectra
from specae.errors import SpecaeError
from specae.paths import output_paths


def map_h5(src_path, out_path, fn: Callable[[Spectra], dict], block_rows: int = 4096, wave: np.ndarray | None = None,
           attrs: dict | None = None) -> int:
    """Write fn(rows of `src_path`) for all rows into `out_path`; returns the number of spectra.

    fn returns {name: array (B, ...)}; `wave` (Angstrom) and `attrs` are written as they are and ids are
    copied from the input. Labels are copied from the input too, unless fn returns entries named
    "labels/NAME": then the output's labels are those (e.g. predicted labels). Datasets of two or more
    dimensions are chunked by rows like spectra (specae.data.hdf5.default_chunk_rows).
    """
    with H5Spectra(src_path) as src, atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        n = len(src)
        f.attrs["specae_format"] = FORMAT_VERSION
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
        if wave is not None:
            f.create_dataset("wave", data=np.asarray(wave, dtype=np.float64))
        ids, labels, made = [], {}, False
        rows = default_chunk_rows(src.shape[1])
        for start in range(0, n, block_rows):
            part = src.read(slice(start, start + block_rows))
            try:
                out = fn(part)
            except SpecaeError as e:   # say which file (the library's message does not know it)
                if str(src_path) in str(e):
                    raise
                raise SpecaeError(f"{src_path}: {e}") from None
            own = {k[len("labels/"):]: v for k, v in out.items() if k.startswith("labels/")}
            if not made:
                for k, v in out.items():
                    v = np.asarray(v)
                    if not k.startswith("labels/"):
                        f.create_dataset(k, shape=(n,) + v.shape[1:], dtype=v.dtype,
                                         chunks=(min(max(n, 1), rows),) + v.shape[1:] if v.ndim > 1 and n else None)
                made = True
            for k, v in out.items():
                if not k.startswith("labels/"):
                    f[k][start:start + len(part)] = v
            ids.append(part.ids)
            for k, v in (own or part.labels).items():
                labels.setdefault(k, []).append(np.asarray(v))
        if not made:   # no rows: write what an empty call returns, so the layout is the same
            for k, v in fn(src.read(slice(0, 0))).items():
                if k.startswith("labels/"):
                    labels[k[len("labels/"):]] = [np.asarray(v)]
                else:
                    f.create_dataset(k, data=np.asarray(v))
        write_ids_labels(f, np.concatenate(ids) if ids else np.zeros(0, str),
                         {k: np.concatenate(v) for k, v in labels.items()})
    return n


def map_files(inputs: list[Path], output, fn: Callable[[Spectra], dict], progress: bool = True, **kw) -> dict:
    """`map_h5` over many files; outputs that already exist are complete (written atomically) and are
    skipped. Returns a summary: files done and skipped, spectra, seconds, spectra per second."""
    from tqdm.auto import tqdm

    outs = output_paths(inputs, output)
    done = skipped = n_spec = 0
    t0 = time.monotonic()
    for src, dst in tqdm(list(zip(inputs, outs)), disable=not progress or len(inputs) < 2, unit="file"):
        if dst.exists() and len(inputs) > 1:
            skipped += 1
            continue
        n_spec += map_h5(src, dst, fn, **kw)
        done += 1
    seconds = time.monotonic() - t0
    return {"files": done, "skipped": skipped, "spectra": n_spec, "seconds": seconds,
            "rate": n_spec / seconds if seconds > 0 else float("nan"), "outputs": outs}
