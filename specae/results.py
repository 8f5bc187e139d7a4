"""Writing model results (latents) in the specae HDF5 layout."""

from __future__ import annotations

import h5py
import numpy as np

from specae.data.hdf5 import FORMAT_VERSION, atomic_path, write_ids_labels


def write_latents(path, z_mean: np.ndarray, z_std: np.ndarray, ids: np.ndarray, labels: dict) -> None:
    """Write z_mean, z_std (N, K), ids (N,) and labels/ to `path` atomically."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["specae_format"] = FORMAT_VERSION
        f.create_dataset("z_mean", data=z_mean.astype(np.float32))
        f.create_dataset("z_std", data=z_std.astype(np.float32))
        write_ids_labels(f, ids, labels)
