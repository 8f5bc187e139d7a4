"""The specae HDF5 format: the contract every command reads and writes.

    wave      (npix,)    float64  Angstrom
    flux      (N, npix)  float32
    ivar      (N, npix)  float32
    mask      (N, npix)  bool     optional, True = bad
    labels/   one (N,) dataset per label, optional
    ids       (N,)       str      optional
    scale     (N,)       float64  optional normalisation already divided out of flux
    attrs: specae_format = 1, flux_unit, source, frame

Row-chunked, so `iter_h5` reads a large file batch by batch without loading it whole.
Extra (N, npix) or (N, K) arrays (e.g. `flux_sigma`, `z_mean`) may be written beside these.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from specae.data.spectra import Spectra
from specae.errors import SpecaeError

FORMAT_VERSION = 1
_META_KEYS = ("flux_unit", "source", "frame")


@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temporary name beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    if not path.parent.is_dir():
        raise SpecaeError(f"{path}: output directory {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_h5(spectra: Spectra, path, extra: dict[str, np.ndarray] | None = None) -> None:
    """Write `spectra` (and optional extra per-spectrum arrays) to `path` atomically."""
    n, npix = spectra.flux.shape
    rows = max(1, min(n, (1 << 20) // max(npix * 4, 1)))   # about 1 MB chunks of whole rows
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["specae_format"] = FORMAT_VERSION
        for key in _META_KEYS:
            f.attrs[key] = str(spectra.meta.get(key, ""))
        f.create_dataset("wave", data=spectra.wave.astype(np.float64))
        for name, arr, dtype in (("flux", spectra.flux, np.float32), ("ivar", spectra.ivar, np.float32),
                                 ("mask", spectra.mask, bool)):
            f.create_dataset(name, data=arr.astype(dtype), chunks=(rows, npix) if n else None,
                             compression="gzip" if n else None, compression_opts=4 if n else None, shuffle=bool(n))
        f.create_dataset("scale", data=spectra.scale)
        write_ids_labels(f, spectra.ids, spectra.labels)
        for k, v in (extra or {}).items():
            v = np.asarray(v)
            f.create_dataset(k, data=v, chunks=(min(rows, len(v)),) + v.shape[1:] if v.ndim > 1 and len(v) else None)


def write_ids_labels(f: h5py.File, ids: np.ndarray, labels: dict[str, np.ndarray]) -> None:
    """Write `ids` and the `labels/` group (strings as variable-length UTF-8) into an open file."""
    f.create_dataset("ids", data=np.asarray(ids).astype(object), dtype=h5py.string_dtype())
    g = f.create_group("labels")
    for k, v in labels.items():
        string = v.dtype.kind in "US"
        g.create_dataset(k, data=v.astype(object) if string else v, dtype=h5py.string_dtype() if string else None)


class H5Spectra:
    """A specae HDF5 file opened for lazy, row-wise reading.

    >>> with H5Spectra("big.h5") as h5:
    ...     for batch in h5.batches(1024):   # Spectra of at most 1024 rows each
    ...         ...
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.exists():
            raise SpecaeError(f"{self.path}: no such file")
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as e:
            raise SpecaeError(f"{self.path}: not a readable HDF5 file ({_first_line(e)})") from None
        try:
            self._check()
        except Exception:
            self._f.close()
            raise

    def _check(self):
        f = self._f
        if "specae_format" not in f.attrs:
            raise SpecaeError(f"{self.path}: not a specae HDF5 file (no 'specae_format' attribute)")
        for name in ("wave", "flux", "ivar"):
            if name not in f:
                raise SpecaeError(f"{self.path}: missing dataset '{name}'")
        n, npix = self.shape
        if f["wave"].shape != (npix,) or f["ivar"].shape != (n, npix) or ("mask" in f and f["mask"].shape != (n, npix)):
            raise SpecaeError(f"{self.path}: datasets wave/flux/ivar/mask have inconsistent shapes")
        try:
            self.wave = f["wave"][()]
        except OSError as e:
            raise SpecaeError(f"{self.path}: damaged or truncated file ({_first_line(e)})") from None

    @property
    def shape(self) -> tuple[int, int]:
        shape = self._f["flux"].shape
        if len(shape) != 2:
            raise SpecaeError(f"{self.path}: flux must be 2-D (N, npix), found shape {shape}")
        return shape

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def label_names(self) -> list[str]:
        return sorted(self._f["labels"]) if "labels" in self._f else []

    def read(self, rows=slice(None)) -> Spectra:
        """Rows `rows` (a slice) as a Spectra."""
        f = self._f
        try:
            get = lambda name: f[name][rows] if name in f else None  # noqa: E731
            labels = {k: _decode(f["labels"][k][rows]) for k in self.label_names}
            ids = get("ids")
            return Spectra(self.wave, get("flux"), get("ivar"), get("mask"), labels,
                           None if ids is None else _decode(ids), get("scale"),
                           {k: str(f.attrs.get(k, "")) for k in _META_KEYS})
        except OSError as e:
            raise SpecaeError(f"{self.path}: damaged or truncated file ({_first_line(e)})") from None

    def read_extra(self, name: str, rows=slice(None)) -> np.ndarray:
        """An extra dataset (e.g. 'flux_sigma', 'z_mean') by name."""
        if name not in self._f:
            raise SpecaeError(f"{self.path}: no dataset '{name}'")
        return self._f[name][rows]

    def batches(self, batch_size: int) -> Iterator[Spectra]:
        for start in range(0, len(self), batch_size):
            yield self.read(slice(start, start + batch_size))

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_h5(path, rows=slice(None)) -> Spectra:
    """Read a specae HDF5 file (or rows of it) into memory."""
    with H5Spectra(path) as h5:
        return h5.read(rows)


def iter_h5(path, batch_size: int = 1024) -> Iterator[Spectra]:
    """Yield the file's spectra in batches of `batch_size` rows, reading lazily."""
    with H5Spectra(path) as h5:
        yield from h5.batches(batch_size)


def _decode(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind in "OS":
        return np.array([a.decode() if isinstance(a, bytes) else str(a) for a in arr])
    return arr


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__
