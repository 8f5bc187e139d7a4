"""Batches for training: from tensors in memory or streamed from HDF5 files, sharded across ranks.

A source yields dicts of tensors for (epoch, rank, world). The order depends only on the seed and the
epoch, never on the number of ranks or on how often a run was interrupted, so a resumed or rescaled
run sees the data it would have seen. `transform` runs on the device after the transfer (e.g. the
normalisation of streamed spectra), so the GPU, not the loader, does the arithmetic.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from specae.errors import SpecaeError
from specae.plumbing import expand_paths, mix_seed

Tensors = dict[str, torch.Tensor]


class TensorSource:
    """Rows of in-memory tensors (all with the same first dimension) in batches.

    Each epoch draws one global permutation (seeded by seed and epoch); global batch k holds
    `batch_size` rows and rank r takes every world-th of them, so the union over ranks of one step is
    exactly the batch a single process would take. With world > 1 a last global batch smaller than
    the number of ranks is dropped, so every rank takes the same number of steps.
    """

    def __init__(self, tensors: Tensors, batch_size: int, shuffle: bool = True, seed: int = 0,
                 transform: Callable[[Tensors], Tensors] | None = None):
        sizes = {t.shape[0] for t in tensors.values()}
        if len(sizes) != 1:
            raise SpecaeError(f"tensors of a source must share their first dimension, got sizes {sorted(sizes)}")
        self.tensors, self.batch_size, self.shuffle, self.seed = tensors, int(batch_size), shuffle, seed
        self.transform = transform

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def steps(self, world: int = 1) -> int:
        n, b = len(self), self.batch_size
        full, rest = divmod(n, b)
        return full + (1 if rest >= world else 0)

    def to(self, device) -> "TensorSource":
        """The same source with its tensors moved to `device` once (when they fit there)."""
        return TensorSource({k: v.to(device) for k, v in self.tensors.items()}, self.batch_size, self.shuffle,
                            self.seed, self.transform)

    def batches(self, epoch: int = 0, rank: int = 0, world: int = 1) -> Iterator[Tensors]:
        n = len(self)
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        device = next(iter(self.tensors.values())).device
        order = order.to(device)
        for k in range(self.steps(world)):
            rows = order[k * self.batch_size:(k + 1) * self.batch_size][rank::world]
            yield {name: t[rows] for name, t in self.tensors.items()}


# -- HDF5 streaming -------------------------------------------------------------------------------------
class H5Blocks:
    """The row blocks of one or many specae HDF5 files: (file index, start, stop), aligned to the files'
    row chunks so each read decompresses whole chunks once."""

    def __init__(self, paths, block_rows: int | None = None):
        from specae.data.hdf5 import H5Spectra

        self.paths = expand_paths(paths)
        self.blocks: list[tuple[int, int, int]] = []
        self.wave = None
        self.label_names: set[str] | None = None
        for i, p in enumerate(self.paths):
            with H5Spectra(p) as h5:
                n = len(h5)
                if self.wave is None:
                    self.wave = h5.wave
                elif h5.wave.shape != self.wave.shape or not np.allclose(h5.wave, self.wave, rtol=1e-10, atol=0):
                    raise SpecaeError(f"{p}: wavelength grid differs from {self.paths[0]}; convert the files "
                                      f"onto one grid (specae convert --grid-from)")
                names = set(h5.label_names)
                self.label_names = names if self.label_names is None else self.label_names & names
                rows = block_rows or h5.chunk_rows
            self.blocks += [(i, a, min(a + rows, n)) for a in range(0, n, rows)]
        self.n_rows = sum(b - a for _, a, b in self.blocks)

    def split(self, fraction: float, seed: int = 0) -> tuple[list, list]:
        """Blocks for training and for validation (about `fraction` of the rows, whole blocks, at least one)."""
        order = np.random.default_rng(seed).permutation(len(self.blocks))
        n_val = min(max(1, round(fraction * len(self.blocks))), len(self.blocks) - 1) if len(self.blocks) > 1 else 0
        pick = lambda idx: [self.blocks[i] for i in sorted(idx)]  # noqa: E731
        return pick(order[n_val:]), pick(order[:n_val])


class _BlockStream(IterableDataset):
    """Reads this rank's and worker's blocks, shuffles rows across a buffer of blocks, yields batches.

    h5py handles do not survive pickling into DataLoader workers, so each worker opens the files itself
    on first use.
    """

    def __init__(self, paths, blocks, batch_size, columns, redshift, seed, shuffle, buffer_blocks):
        self.paths, self.blocks, self.batch_size = paths, blocks, batch_size
        self.redshift, self.seed, self.shuffle, self.buffer_blocks = redshift, seed, shuffle, buffer_blocks
        self.columns = columns
        self.epoch, self.rank, self.world = 0, 0, 1
        self._files = {}

    def _open(self, i):
        from specae.data.hdf5 import H5Spectra

        if i not in self._files:
            self._files[i] = H5Spectra(self.paths[i])
        return self._files[i]

    def rank_blocks(self, epoch, rank, world) -> list:
        blocks = list(self.blocks)
        if self.shuffle:
            order = np.random.default_rng(mix_seed(self.seed, epoch)).permutation(len(blocks))
            blocks = [blocks[i] for i in order]
        return blocks[rank::world]

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        mine = self.rank_blocks(self.epoch, self.rank, self.world)[wid::nw]
        rng = np.random.default_rng(mix_seed(self.seed, self.epoch, self.rank, wid))
        carry = None
        for start in range(0, len(mine), self.buffer_blocks):
            parts = [self._read(b) for b in mine[start:start + self.buffer_blocks]]
            if carry is not None:
                parts.insert(0, carry)
            buf = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            n = len(buf["flux"])
            order = rng.permutation(n) if self.shuffle else np.arange(n)
            full = n // self.batch_size * self.batch_size
            for a in range(0, full, self.batch_size):
                rows = order[a:a + self.batch_size]
                yield {k: torch.from_numpy(v[rows]) for k, v in buf.items()}
            carry = {k: v[order[full:]] for k, v in buf.items()} if full < n else None
        if carry is not None and len(carry["flux"]):
            yield {k: torch.from_numpy(v) for k, v in carry.items()}

    def _read(self, block) -> dict[str, np.ndarray]:
        i, a, b = block
        with warnings.catch_warnings():
            # bad pixels are masked as they are read; the sample read when the model was built reported them
            warnings.simplefilter("ignore")
            s = self._open(i).read(slice(a, b))
        out = {"flux": s.flux, "ivar": s.ivar}
        if self.redshift:
            out["z"] = s.redshifts(self.redshift).astype(np.float32)
        for name in self.columns:
            out[name] = np.asarray(s.labels[name], dtype=np.float32)
        return out

    def __getstate__(self):
        return {**self.__dict__, "_files": {}}


class H5Source:
    """Batches streamed from specae HDF5 files by DataLoader workers, never a file read whole.

    Blocks (whole row chunks) are shuffled per epoch and dealt to ranks, then to workers; each worker
    shuffles rows across a buffer of `buffer_blocks` blocks. Every rank runs the same number of steps:
    that of the rank with the fewest rows, so no rank waits for another at the end of an epoch.
    Yields raw `flux`, `ivar` (and `z`, label columns) as float32; `transform` normalises on the device.
    """

    def __init__(self, blocks: H5Blocks, rows: list | None, batch_size: int, redshift: str | None = None,
                 columns: tuple = (), seed: int = 0, shuffle: bool = True, num_workers: int = 2,
                 buffer_blocks: int = 4, transform: Callable[[Tensors], Tensors] | None = None,
                 pin_memory: bool = False):
        self.files = blocks
        chosen = blocks.blocks if rows is None else rows
        self.stream = _BlockStream(blocks.paths, chosen, int(batch_size), tuple(columns), redshift, seed, shuffle,
                                   buffer_blocks)
        self.batch_size, self.num_workers, self.transform, self.pin_memory = int(batch_size), num_workers, transform, pin_memory

    def __len__(self) -> int:
        return sum(b - a for _, a, b in self.stream.blocks)

    def _counts(self, epoch: int, world: int) -> list[int]:
        """Batches each rank's workers yield in `epoch`: every worker ends with one partial batch."""
        workers = max(self.num_workers, 1)
        counts = []
        for rank in range(world):
            mine = self.stream.rank_blocks(epoch, rank, world)
            counts.append(sum(math.ceil(sum(b - a for _, a, b in mine[w::workers]) / self.batch_size)
                              for w in range(workers)))
        return counts

    def steps(self, world: int = 1) -> int:
        """Steps in an epoch (epoch 0's; later epochs differ by a step or two with the shuffle)."""
        return min(self._counts(0, world))

    def batches(self, epoch: int = 0, rank: int = 0, world: int = 1) -> Iterator[Tensors]:
        """This rank's batches of `epoch`: all of them in one process; with several ranks, as many as the
        poorest rank has, so every rank takes the same number of steps."""
        self.stream.epoch, self.stream.rank, self.stream.world = epoch, rank, world
        n = min(self._counts(epoch, world))
        loader = DataLoader(self.stream, batch_size=None, num_workers=self.num_workers,
                            pin_memory=self.pin_memory, prefetch_factor=4 if self.num_workers else None)
        for k, batch in enumerate(loader):
            if k >= n:
                break
            yield batch
