"""Opening survey FITS files read-only, with every way a file can be wrong turned into one-line SpecaeErrors.

Shared by the survey modules: `open_fits` (the checked, read-only HDUList), table-column and image helpers,
header labels and the per-spectrum masked-fraction warning.
"""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyError
from astropy.utils.exceptions import AstropyUserWarning, AstropyWarning

from specae.errors import CountWarning, SpecaeError, about, first_line

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
STANDARD_HDUS = (fits.PrimaryHDU, fits.ImageHDU, fits.BinTableHDU, fits.TableHDU, fits.CompImageHDU)
# a spectrum with more of its pixels than this masked by its flags is named in a warning
MOSTLY_MASKED = 0.4


@contextmanager
def open_fits(path, kind: str | None = None):
    """Open `path` read-only; turn missing, non-FITS or damaged files and missing HDUs/columns into SpecaeError.

    kind: what the caller expects (e.g. "SDSS spec"), for the error message. Errors raised inside name
    the file, and masked-pixel warnings are folded into one naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecaeError(f"{path}: {'is a directory, not a file' if path.is_dir() else 'no such file'}")
    with about(path), warnings.catch_warnings():
        # real survey headers carry non-standard cards (e.g. AKWISE = 'NAN'); they do not matter here
        warnings.simplefilter("ignore", AstropyWarning)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", AstropyUserWarning)
                hdul = fits.open(path, memmap=False)
                # every header and table layout now: astropy reads them lazily, and only warns of a
                # truncated file when it reaches the cut
                hdul.readall()
                for i, h in enumerate(hdul):
                    if not isinstance(h, STANDARD_HDUS):
                        raise ValueError(f"HDU {i} is damaged or of no standard type")
                    if isinstance(h, fits.BinTableHDU):
                        h.columns
        except Exception as e:  # astropy fails on damaged headers in many ways; no specae code runs here
            with open(path, "rb") as fh:
                if fh.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                    raise SpecaeError("an HDF5 file, not FITS (read it with specae.data.read_h5)") from None
            reason = first_line(e).split(".")[0]  # astropy's first sentence; the rest suggests unhelpful options
            raise SpecaeError(f"not a readable FITS file ({reason or type(e).__name__})") from None
        truncated = next((str(w.message) for w in caught if "truncated" in str(w.message)), None)
        if truncated:
            hdul.close()
            raise SpecaeError(f"truncated FITS file ({truncated})")
        with hdul:
            try:
                yield hdul
            except (KeyError, IndexError) as e:
                # a missing HDU or column: the file is damaged or of another kind than the reader expects
                from specae.data.surveys.detect import sniff

                found = sniff(hdul)
                hint = f"; it looks like {found.upper()}" if kind and found and found not in kind.lower() else ""
                raise SpecaeError(f"not a complete {kind or found or 'spectrum'} file ({e}){hint}") from None
            except (OSError, ValueError, TypeError, VerifyError) as e:
                # astropy parses data and header cards lazily: a corrupt file fails here, when they are read
                # (e.g. a card or column of the wrong type)
                raise SpecaeError(f"damaged or truncated FITS file ({first_line(e)})") from None


def columns(table) -> set[str]:
    """Lower-case column names of a table HDU or FITS_rec (unnamed columns left out)."""
    return {c.lower() for c in table.columns.names if c}


def is_table(hdul, i: int) -> bool:
    return i < len(hdul) and isinstance(hdul[i], fits.BinTableHDU)


def is_image(hdul, i: int) -> bool:
    return i < len(hdul) and isinstance(hdul[i], (fits.PrimaryHDU, fits.ImageHDU)) and bool(hdul[i].shape)


def header_labels(head, keys: dict[str, str]) -> dict:
    """Label name -> (1,) float array from header keyword (NaN where the keyword is absent)."""
    return {name: np.array([float(head.get(key, np.nan))]) for name, key in keys.items()}


def warn_mostly_masked(flagged: np.ndarray, usable: np.ndarray, ids, path) -> None:
    """Name the spectra (ids, file) of which the survey's flags mask more than MOSTLY_MASKED of the pixels.

    flagged: (N, npix) pixels masked for their flag bits; usable: (N, npix) pixels with a usable value
    (pixels without data, e.g. a dead fibre's, are no news).
    """
    frac = np.count_nonzero(flagged & usable, axis=1) / max(flagged.shape[1], 1)
    many = np.flatnonzero(frac > MOSTLY_MASKED)
    if many.size:
        warnings.warn(CountWarning(many.size, f"spectra with more than {MOSTLY_MASKED:.0%} of their pixels masked "
                                              "by their flags (--mask-bits chooses the bits)",
                                   [f"{ids[i]} in {path} ({frac[i]:.0%})" for i in many]), stacklevel=3)


def fits_stem(path) -> str:
    """A file's name without its FITS suffix (.fits, .fit, each possibly .gz): spec-1-2.fits.gz -> spec-1-2."""
    return re.sub(r"\.fits?(\.gz)?$", "", Path(str(path)).name, flags=re.IGNORECASE)
