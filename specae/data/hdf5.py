"""The specae HDF5 format: the contract every command reads and writes.

    wave      (npix,)    float64  Angstrom
    flux      (N, npix)  float32
    ivar      (N, npix)  float32
    mask      (N, npix)  bool     optional, True = bad
    labels/   one (N,) dataset per label, optional
    ids       (N,)       str      optional
    scale     (N,)       float64  optional normalisation already divided out of flux
    attrs: specae_format = 2, flux_unit, source, frame

Extra (N, npix) or (N, K) arrays (e.g. `flux_sigma`, `latent_mean`) may be written beside these.

Layout for streaming: the per-spectrum arrays are chunked by whole rows, at most 1 MiB a chunk (so a
chunk fits h5py's default 1 MiB chunk cache and batches that straddle chunks decode each chunk once),
and `H5Spectra.chunk_rows` tells readers the block to align to. flux and ivar are stored uncompressed, the mask
with gzip level 1. Measured on 20000 x 3921 noisy float32 spectra (flux + ivar, 627 MB raw; 1 MiB
chunks of 66 rows), reading chunk-aligned row blocks in random order from the page cache, one core:

    gzip-4 + shuffle   419 MB   243 MB/s        lzf + shuffle   450 MB   356 MB/s
    lzf                627 MB   583 MB/s        none            630 MB   1819 MB/s

Noisy float32 compresses by a third at best (and only with shuffle), while decoding costs the
DataLoader workers 5-7 times more CPU than reading raw chunks (lzf would also need h5py or a plugin
to read). The mask (2% set) shrinks 79 MB -> 1.2 MB with gzip-1 and decodes at 700 MB/s of bool.

Other files are read too: without the `specae_format` attribute (the user's own h5py output) a file
is read as plain wave/flux/ivar with a warning, and common names are recognised: see `WAVE_NAMES`,
`SIGMA_NAMES`. A 1-D flux is one spectrum. A file of a newer format version is refused.

Missing, truncated or non-HDF5 files raise SpecaeError. Bytes corrupted inside an otherwise complete
file can make the HDF5 library itself loop forever (seen in fuzzing: string heaps, group metadata);
no reader above the library can prevent that.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from specae.data.resample import checked_grid
from specae.data.spectra import Spectra
from specae.errors import SpecaeError, about, first_line
from specae.plumbing import atomic_path

FORMAT_VERSION = 2   # 2: results renamed (latent_mean, heldout_pull, predicted/); the spectra as in 1
_META_KEYS = ("flux_unit", "source", "frame")
CHUNK_BYTES = 1 << 20                      # upper bound of one row chunk of flux (float32)
WAVE_NAMES = ("wave", "wavelength", "lambda", "lam", "loglam")   # Angstrom; loglam in log10(Angstrom)
SIGMA_NAMES = ("error", "err", "sigma", "flux_err")              # 1-sigma flux errors, instead of ivar
# h5py raises these for damaged files, depending on where the damage lies
_H5_ERRORS = (OSError, KeyError, ValueError, RuntimeError)


def default_chunk_rows(npix: int) -> int:
    """Rows per chunk for spectra of `npix` float32 pixels: whole rows, at most CHUNK_BYTES."""
    return max(1, CHUNK_BYTES // (4 * max(npix, 1)))


def write_h5(spectra: Spectra, path, extra: dict[str, np.ndarray] | None = None) -> None:
    """Write `spectra` (and optional extra per-spectrum arrays) to `path` atomically."""
    rows = default_chunk_rows(spectra.npix)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["specae_format"] = FORMAT_VERSION
        for key in _META_KEYS:
            f.attrs[key] = str(spectra.meta.get(key, ""))
        f.create_dataset("wave", data=spectra.wave.astype(np.float64))
        _row_chunked(f, "flux", spectra.flux.astype(np.float32), rows)
        _row_chunked(f, "ivar", spectra.ivar.astype(np.float32), rows)
        _row_chunked(f, "mask", spectra.mask.astype(bool), rows, compression="gzip", compression_opts=1)
        f.create_dataset("scale", data=spectra.scale)
        write_ids_labels(f, spectra.ids, spectra.labels)
        for k, v in (extra or {}).items():
            _row_chunked(f, k, np.asarray(v), rows)


def _row_chunked(f: h5py.File, name: str, data: np.ndarray, rows: int, **filters) -> None:
    """Dataset `name` chunked by `rows` whole rows when it is a non-empty (N, ...) array, else contiguous."""
    if data.ndim > 1 and len(data) and data.size:
        f.create_dataset(name, data=data, chunks=(min(rows, len(data)),) + data.shape[1:], **filters)
    else:
        f.create_dataset(name, data=data)


def write_ids_labels(f: h5py.File, ids: np.ndarray, labels: dict[str, np.ndarray]) -> None:
    """Write `ids` and the `labels/` group (strings as variable-length UTF-8) into an open file."""
    f.create_dataset("ids", data=np.asarray(ids).astype(object), dtype=h5py.string_dtype())
    g = f.create_group("labels")
    for k, v in labels.items():
        if "/" in k:
            raise SpecaeError(f"label name {k!r} contains '/', which HDF5 reads as a group path")
        string = v.dtype.kind in "US"
        g.create_dataset(k, data=v.astype(object) if string else v, dtype=h5py.string_dtype() if string else None)


class H5Spectra:
    """An HDF5 spectrum file opened for lazy, row-wise reading.

    >>> with H5Spectra("big.h5") as h5:
    ...     for batch in h5.batches(1024):   # Spectra of at most 1024 rows each
    ...         ...

    Reads the specae format and plain files holding a wavelength (`WAVE_NAMES`), `flux` and an
    uncertainty (`ivar`, or a 1-sigma error under one of `SIGMA_NAMES`), names matched ignoring case.
    Attributes: `wave` (npix,) Angstrom, `label_names` (sorted), `shape`, `chunk_rows`.
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise SpecaeError(f"{self.path}: {'is a directory, not a file' if self.path.is_dir() else 'no such file'}")
        try:
            self._f = h5py.File(self.path, "r")
        except _H5_ERRORS as e:
            raise SpecaeError(f"{self.path}: not a readable HDF5 file ({first_line(e)})") from None
        try:
            with about(self.path):
                self._check()
        except BaseException:
            self._f.close()
            raise

    def _check(self):
        """Find the datasets by name, check their shapes, read the grid and the label names."""
        try:
            version = self._format_version()
            names = {str(k).lower(): k for k in self._f if isinstance(self._f.get(k), h5py.Dataset)}
            self._wave = next((names[n] for n in WAVE_NAMES if n in names), None)
            self._flux = names.get("flux")
            self._ivar = names.get("ivar")
            self._sigma = None if self._ivar else next((names[n] for n in SIGMA_NAMES if n in names), None)
            self._mask = names.get("mask")
            missing = [what for what, found in (
                (f"a wavelength dataset ({', '.join(WAVE_NAMES)}; loglam in log10 Angstrom)", self._wave),
                ("a 'flux' dataset", self._flux),
                (f"an uncertainty dataset (ivar, or 1-sigma {', '.join(SIGMA_NAMES)})", self._ivar or self._sigma))
                if found is None]
            if missing:
                raise SpecaeError(f"not a spectrum file: it lacks {' and '.join(missing)}; it holds "
                                  f"{', '.join(sorted(map(str, self._f))) or 'nothing'}")
            flux = self._f[self._flux]
            if flux.ndim not in (1, 2):
                raise SpecaeError(f"flux must be 2-D (N, npix) or 1-D (npix,), found shape {flux.shape}")
            self._one = flux.ndim == 1                      # a single spectrum, read as (1, npix)
            n, npix = self.shape
            for name in (self._ivar or self._sigma, self._mask):
                if name is not None and self._f[name].shape != flux.shape:
                    raise SpecaeError(f"datasets flux {flux.shape} and {name} {self._f[name].shape} have "
                                      "inconsistent shapes")
            wave = np.asarray(self._f[self._wave][()], dtype=np.float64)
            labels = self._f.get("labels")
            self.label_names = sorted(k for k in labels if isinstance(labels[k], h5py.Dataset)) \
                if isinstance(labels, h5py.Group) else []
        except _H5_ERRORS as e:
            raise _damaged(e) from None
        if wave.shape != (npix,):
            raise SpecaeError(f"datasets flux {flux.shape} and {self._wave} {wave.shape} have inconsistent shapes "
                              f"(one wavelength grid of {npix} pixels is needed)")
        with np.errstate(over="ignore"):                   # absurd loglam -> inf, refused just below
            self.wave = checked_grid(10 ** wave if self._wave.lower() == "loglam" else wave)
        if self.wave[-1] < 100:                            # log10 wavelengths or microns in a 'wave' dataset
            warnings.warn(f"{self.path}: wavelengths {self.wave[0]:.4g}-{self.wave[-1]:.4g} do not look like Angstrom, "
                          "which specae expects (log10 Angstrom belongs in a dataset named 'loglam')", stacklevel=4)
        if version is None:
            warnings.warn(f"{self.path}: no specae_format attribute; reading it as a plain wave/flux/ivar file",
                          stacklevel=4)

    def _format_version(self) -> int | None:
        """The file's specae_format attribute (None if absent); newer versions than ours are refused."""
        if "specae_format" not in self._f.attrs:
            return None
        value = self._f.attrs["specae_format"]
        try:
            version = int(np.asarray(value).ravel()[0])
        except (TypeError, ValueError, IndexError):
            raise SpecaeError(f"its specae_format attribute {value!r} is not a version number") from None
        if version > FORMAT_VERSION:
            raise SpecaeError(f"written in specae HDF5 format {version}, but this specae reads format "
                              f"{FORMAT_VERSION} at most: upgrade specae (pip install -U specae)")
        return version

    @property
    def shape(self) -> tuple[int, int]:
        shape = self._f[self._flux].shape
        return (1,) + shape if self._one else shape

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def chunk_rows(self) -> int:
        """Rows per chunk of flux: read blocks aligned to multiples of it. Unchunked files: ~1 MiB of rows."""
        chunks = self._f[self._flux].chunks
        return chunks[0] if chunks and not self._one else default_chunk_rows(self.shape[1])


    def read(self, rows=slice(None)) -> Spectra:
        """Rows `rows` (a slice) as a Spectra. 1-sigma errors become ivar = 1/sigma^2 (sigma <= 0: masked)."""
        f = self._f
        with about(self.path):
            try:
                flux = self._rows(self._flux, rows, 2)
                ivar = (self._rows(self._ivar, rows, 2) if self._ivar
                        else _sigma_to_ivar(self._rows(self._sigma, rows, 2)))
                mask = self._rows(self._mask, rows, 2)
                labels = {k: self.read_label(k, rows) for k in self.label_names}
                ids, scale = self._rows("ids", rows, 1), self._rows("scale", rows, 1)
                meta = {k: str(f.attrs.get(k, "")) for k in _META_KEYS}
            except _H5_ERRORS as e:
                raise _damaged(e) from None
            return Spectra(self.wave, flux, ivar, mask, labels, None if ids is None else _decode(ids), scale, meta)

    def read_label(self, name: str, rows=slice(None)) -> np.ndarray:
        """Label `name` of rows `rows` alone (e.g. every redshift of a large file), strings decoded."""
        if name not in self.label_names:
            raise SpecaeError(f"{self.path}: no label {name!r} (labels: {', '.join(self.label_names) or 'none'})")
        try:
            return _decode(self._rows(f"labels/{name}", rows, 1))
        except _H5_ERRORS as e:
            raise SpecaeError(f"{self.path}: {_damaged(e)}") from None

    def _rows(self, name: str | None, rows, ndim: int) -> np.ndarray | None:
        """Rows `rows` of dataset `name` (None if absent); a single spectrum's data gets its row axis added."""
        ds = None if name is None else self._f.get(name)
        if not isinstance(ds, h5py.Dataset):
            return None
        if self._one:
            return (np.atleast_2d if ndim == 2 else np.atleast_1d)(ds[()])[rows]
        return ds[rows]

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
    """Read a specae (or plain wave/flux/ivar) HDF5 file, or rows of it, into memory."""
    with H5Spectra(path) as h5:
        return h5.read(rows)


def iter_h5(path, batch_size: int = 1024) -> Iterator[Spectra]:
    """Yield the file's spectra in batches of `batch_size` rows, reading lazily."""
    with H5Spectra(path) as h5:
        yield from h5.batches(batch_size)


def _sigma_to_ivar(sigma: np.ndarray) -> np.ndarray:
    """ivar = 1/sigma^2 (float64); 0 (masked) where sigma is <= 0 or not finite."""
    sigma = np.asarray(sigma, dtype=np.float64)
    ok = np.isfinite(sigma) & (sigma > 0)
    # below 1e-150 1/sigma^2 would overflow float64; Spectra clips such ivar to float32's range anyway
    return np.where(ok, 1.0 / np.maximum(np.where(ok, sigma, 1.0), 1e-150) ** 2, 0.0)


def _damaged(e: BaseException) -> SpecaeError:
    return SpecaeError(f"damaged or truncated file ({first_line(e)})")


def _decode(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind in "OS":
        return np.array([a.decode(errors="replace") if isinstance(a, bytes) else str(a) for a in arr], dtype=str)
    return arr

