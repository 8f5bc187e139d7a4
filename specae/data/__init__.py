"""Data: the Spectra container, survey readers, the HDF5 format and synthetic spectra."""

from specae.data.spectra import Spectra
from specae.data.hdf5 import H5Spectra, iter_h5, read_h5, write_h5

__all__ = ["Spectra", "H5Spectra", "iter_h5", "read_h5", "write_h5"]
