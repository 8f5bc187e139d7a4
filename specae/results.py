"""Writing model results, block by block, to HDF5 or to a table astropy opens (FITS or ECSV).

`map_spectra` applies a function to every block of one input (`specae.inputs.SpectrumInput`: an HDF5 file
streamed by row blocks, or the FITS files of a command held in memory) and writes what it returns (arrays
with one row per spectrum) beside the input's ids and labels; the output appears only when complete
(temporary name, then rename). `map_files` does that for every input of a command, skipping outputs that
are already complete, so a killed batch job restarts where it stopped.

The output's name says its format: `.fits` (or `.fit`, `.fts`) and `.ecsv` are an astropy Table with one
row per spectrum (`Table.read` opens it; vector columns for per-pixel and latent arrays, `TUNIT` on every
column), anything else is specae HDF5, streamed and the format for large sets (a table is built in memory).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable

import h5py
import numpy as np

from specae.data.hdf5 import FORMAT_VERSION, default_chunk_rows, write_ids_labels
from specae.plumbing import atomic_path
from specae.data.spectra import Spectra
from specae.errors import SpecaeError

TABLE_FORMATS = {".fits": "fits", ".fit": "fits", ".fts": "fits", ".ecsv": "ascii.ecsv"}
# results in the input's flux unit, by power (per-pixel arrays of `specae denoise`); other numbers are dimensionless
FLUX_POWERS = {"flux": 1, "flux_sigma": 1, "flux_sigma_core": 1, "ivar": -2, "input_ivar": -2, "flux_cov_factor": 1,
               "flux_cov_diag": 2, "flux_cov_band": 1}
# table columns of grouped results: GROUP/NAME -> NAME_SUFFIX (given labels, labels/NAME, keep their names)
TABLE_SUFFIXES = {"predicted": "PRED", "predicted_sigma": "PRED_ERR"}
# table header keywords (FITS: at most 8 characters) of the output attributes
TABLE_KEYWORDS = {"source": "SOURCE", "model": "MODEL", "calibration_version": "CALIBVER",
                  "specae_version": "SPECAEV", "flux_unit": "FLUXUNIT", "frame": "FRAME",
                  "latent_density": "LATDENS"}


def table_format(path) -> str | None:
    """astropy's format name for a table output ('fits', 'ascii.ecsv'), or None for HDF5."""
    return TABLE_FORMATS.get(Path(path).suffix.lower())


class _H5Writer:
    """Results streamed into a specae HDF5 file: each dataset created at the first block, filled by rows."""

    def __init__(self, f: h5py.File, n: int, npix: int):
        self.f, self.n, self.rows, self.start = f, n, default_chunk_rows(npix), 0

    def add(self, out: dict, count: int) -> None:
        n = self.n
        for k, v in out.items():
            v = np.asarray(v)
            if k not in self.f:
                self.f.create_dataset(k, shape=(n,) + v.shape[1:], dtype=v.dtype,
                                      chunks=(min(max(n, 1), self.rows),) + v.shape[1:] if v.ndim > 1 and n else None)
            self.f[k][self.start:self.start + count] = v
        self.start += count


def _table(columns: dict, ids: np.ndarray, labels: dict, wave, attrs: dict):
    """An astropy Table of one row per spectrum: id, the given labels (their units unknown, so none), `wavelength`
    when a column is per pixel, then the results, each with its unit (TUNIT); `attrs` in its header."""
    import astropy.units as u
    from astropy.table import Table

    from specae.data.specutils import astropy_unit

    unit = astropy_unit(str(attrs.get("flux_unit", "")))
    t = Table()
    t["id"] = np.asarray(ids).astype(str)
    for k, v in labels.items():   # as given: their units are not known here
        t[k] = v
    npix = None if wave is None else len(wave)
    if npix is not None and any(v.ndim == 2 and v.shape[1] == npix for v in columns.values()):
        t["wavelength"] = np.broadcast_to(np.asarray(wave, np.float64), (len(t), npix))
        t["wavelength"].unit = u.AA
    for k, v in columns.items():
        group, _, name = k.rpartition("/")
        col = f"{name}_{TABLE_SUFFIXES[group]}" if group else k
        if col in t.colnames:
            raise SpecaeError(f"a label is named {col}, as a result column; rename the label")
        t[col] = v
        t[col].unit = unit ** FLUX_POWERS[k] if k in FLUX_POWERS else u.dimensionless_unscaled
    for k, v in attrs.items():
        t.meta[TABLE_KEYWORDS.get(k, k.upper())] = v
    return t


def map_spectra(src, out_path, fn: Callable[[Spectra], dict], block_rows: int = 4096, wave: np.ndarray | None = None,
                attrs: dict | None = None) -> int:
    """Write fn(block) for every block of `src` (a `specae.inputs.SpectrumInput`) into `out_path`; returns the
    number of spectra.

    fn returns {name: array (B, ...)}; a name GROUP/NAME writes dataset NAME in group GROUP (e.g.
    predicted/TEFF). `wave` (Angstrom) and `attrs` are written as they are, with the input's `flux_unit` and
    `frame`; ids and labels are copied from the input. HDF5 datasets of two or more dimensions are chunked by
    rows like spectra (specae.data.hdf5.default_chunk_rows); a table output (`table_format`) is built in memory.
    """
    fmt = table_format(out_path)
    n = len(src)
    ids, labels, parts, meta = [], {}, [], None
    with atomic_path(out_path) as tmp:
        f = None if fmt else h5py.File(tmp, "w")
        try:
            writer = None
            for part in _blocks(src, block_rows):
                try:
                    out = fn(part)
                except SpecaeError as e:   # say which file (the library's message does not know it)
                    if src.name in str(e):
                        raise
                    raise SpecaeError(f"{src.name}: {e}") from None
                out = {k: np.asarray(v) for k, v in out.items()}
                meta = meta or part.meta
                if f is None:
                    parts.append(out)
                else:
                    writer = writer or _H5Writer(f, n, part.npix)
                    writer.add(out, len(part))
                ids.append(part.ids)
                for k, v in part.labels.items():
                    labels.setdefault(k, []).append(np.asarray(v))
            if meta is None:   # no rows: write what an empty call returns, so the layout is the same
                empty = next(_blocks(src, block_rows, empty=True))
                meta, out = empty.meta, {k: np.asarray(v) for k, v in fn(empty).items()}
                labels = {k: [np.asarray(v)] for k, v in empty.labels.items()}
                if f is None:
                    parts.append(out)
                else:
                    for k, v in out.items():
                        f.create_dataset(k, data=v)
            attrs = {**(attrs or {}), "flux_unit": str(meta.get("flux_unit", "")), "frame": str(meta.get("frame", ""))}
            ids = np.concatenate(ids) if ids else np.zeros(0, str)
            labels = {k: np.concatenate(v) for k, v in labels.items()}
            if f is None:
                columns = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
                _table(columns, ids, labels, wave, attrs).write(tmp, format=fmt, overwrite=True)
            else:
                f.attrs["specae_format"] = FORMAT_VERSION
                for k, v in attrs.items():
                    f.attrs[k] = v
                if wave is not None:
                    f.create_dataset("wave", data=np.asarray(wave, dtype=np.float64))
                write_ids_labels(f, ids, labels)
        finally:
            if f is not None:
                f.close()
    return n


def _blocks(src, rows: int, empty: bool = False) -> Iterable[Spectra]:
    """The blocks of `src`, or (empty) one block of no rows that carries its grid, labels and meta."""
    if not empty:
        yield from src.blocks(rows)
    elif src.spectra is not None:
        yield src.spectra[0:0]
    else:
        from specae.data.hdf5 import H5Spectra

        with H5Spectra(src.path) as h5:
            yield h5.read(slice(0, 0))


def map_h5(src_path, out_path, fn: Callable[[Spectra], dict], **kw) -> int:
    """`map_spectra` over one HDF5 file."""
    from specae.inputs import SpectrumInput

    return map_spectra(SpectrumInput(str(src_path), path=Path(src_path)), out_path, fn, **kw)


def map_files(inputs, output, fn: Callable[[Spectra], dict], grid: np.ndarray | None = None, progress: bool = True,
              **kw) -> dict:
    """`map_spectra` over the files `inputs` (paths or globs; FITS files read together onto `grid`, the model's,
    see specae.inputs); outputs that already exist in a batch are complete (written atomically) and are skipped.
    Returns a summary: files done and skipped, spectra, seconds, spectra per second, output paths."""
    from tqdm.auto import tqdm

    from specae.inputs import input_outputs, spectrum_inputs

    outs = input_outputs(inputs, output)
    sources = spectrum_inputs(inputs, grid)
    done = skipped = n_spec = 0
    t0 = time.monotonic()
    for src, dst in tqdm(list(zip(sources, outs)), disable=not progress or len(sources) < 2, unit="file"):
        if dst.exists() and len(sources) > 1:
            skipped += 1
            continue
        n_spec += map_spectra(src, dst, fn, **kw)
        done += 1
    seconds = time.monotonic() - t0
    return {"files": done, "skipped": skipped, "spectra": n_spec, "seconds": seconds,
            "rate": n_spec / seconds if seconds > 0 else float("nan"), "outputs": outs}
