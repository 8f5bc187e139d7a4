"""specae: denoise survey spectra with heteroscedastic (variational) autoencoders."""

from specae.data import Spectra, read_h5, write_h5
from specae.errors import SpecaeError

__version__ = "0.1.0"
__all__ = ["Spectra", "SpecaeError", "read_h5", "write_h5", "__version__"]
