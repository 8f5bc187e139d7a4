"""APOGEE aspcapStar, apStar and apVisit files."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits

from specae.data.spectra import Spectra
from specae.data.surveys.fitsfile import header_labels, is_image, open_fits, warn_mostly_masked
from specae.data.surveys.maskbits import DEFAULT_MASK_BITS, flagged
from specae.data.surveys.sdss import FLUX_UNIT
from specae.errors import SpecaeError

# APOGEE_PIXMASK bits that mark bad pixels (maskbits.APOGEE_BITS: 0-7); the default of --mask-bits apogee
APOGEE_BAD_BITS = DEFAULT_MASK_BITS["apogee"]
# APOGEE writes placeholder errors (~1e12 x the median error in apStar) at bad pixels; inflated but
# genuine errors reach ~1e6 x the median. Above this factor a pixel weighs < 1e-10 of a typical one,
# so treating it as "no data" loses nothing and keeps placeholders out whatever their exact value.
APOGEE_HUGE_ERR = 1e5
# ASPCAP parameter order of PARAM/FPARAM (aspcap_params: TEFF LOGG LOG10VDOP METALS C N
# "O Mg Si S Ca Ti" LGVSINI O), named as the allStar tags; vmicro and vsini are log10(km/s).
APOGEE_PARAMS = ("TEFF", "LOGG", "LOGVMICRO", "M_H", "C_M", "N_M", "ALPHA_M", "LGVSINI", "O_M")


def kind(hdul) -> str | None:
    """'aspcapStar' | 'apStar' | 'apVisit' from the HDU layout, or None."""
    if not (is_image(hdul, 1) and is_image(hdul, 2) and hdul[1].shape == hdul[2].shape):
        return None
    h1 = hdul[1].header
    if is_image(hdul, 4) and hdul[4].shape == hdul[1].shape \
            and "WAVELENGTH" in str(hdul[4].header.get("BUNIT", "")).upper():
        return "apVisit"  # per-pixel wavelengths in HDU4
    loglinear = str(h1.get("CTYPE1", "")).upper() == "LOG-LINEAR" or h1.get("DC-FLAG") == 1
    if loglinear and "CRVAL1" in h1 and "CDELT1" in h1:
        if len(hdul) > 4 and isinstance(hdul[4], fits.BinTableHDU) and "FPARAM" in hdul[4].columns.names:
            return "aspcapStar"
        return "apStar"
    return None

def read_apogee(path, mask_bits: int | None = None) -> Spectra:
    """APOGEE aspcapStar, apStar or apVisit file: one spectrum (vacuum wavelengths, 15100-17000 A).

    aspcapStar: continuum-normalised, rest frame; labels FPARAM (see APOGEE_PARAMS, -9999 -> NaN), SNR,
    VHELIO. apStar: only the first row, the combined spectrum (later rows are a second weighting and
    the individual visits; for one visit the second row is empty), rest frame, 1e-17 erg/s/cm2/A.
    apVisit: the three chips' own pixels in increasing wavelength, chip gaps filled with masked pixels
    at the local spacing (so rebinning cannot smear chip-edge pixels over the gaps); observed frame.
    apStar/apVisit labels: SNR, VHELIO and the RV-fit RV_TEFF, RV_LOGG, RV_FEH. apVisit also: OBJID (the
    APOGEE object id, to group visits of one star) and VRAD, the velocity relative to the observatory
    (VHELIO minus the barycentric correction), the shift to the rest frame of the observed-frame visit.
    Masked: error <= 0 or > APOGEE_HUGE_ERR x the median error, flux 0 or non-finite, and (apStar,
    apVisit) pixels whose PIXMASK holds any of `mask_bits` (default APOGEE_BAD_BITS). ivar = 1/error^2.
    """
    with open_fits(path, "APOGEE") as hdul:
        return read(hdul, Path(path), mask_bits)


def read(hdul, path: Path, mask_bits: int | None = None) -> Spectra:
    bits = APOGEE_BAD_BITS if mask_bits is None else mask_bits
    layout = kind(hdul)
    if layout is None:
        raise SpecaeError(f"{path}: not an APOGEE aspcapStar, apStar or apVisit file")
    if layout == "apVisit":
        return _apvisit(hdul, path, bits)
    h1 = hdul[1].header
    npix = hdul[1].shape[-1]
    crval, cdelt, crpix = (float(h1.get(k, 1)) for k in ("CRVAL1", "CDELT1", "CRPIX1"))  # str card: ValueError
    loglam = crval + cdelt * (np.arange(npix) + 1 - crpix)
    flux = np.atleast_2d(np.asarray(hdul[1].data, dtype=np.float64))[:1]
    err = np.atleast_2d(np.asarray(hdul[2].data, dtype=np.float64))[:1]
    if layout == "aspcapStar":
        t = hdul[4].data[:1]
        fparam = np.asarray(t["FPARAM"], dtype=np.float64).reshape(1, -1)
        fparam[fparam <= -9999] = np.nan  # ASPCAP's "not determined"
        labels = {name: fparam[:, k] for k, name in enumerate(APOGEE_PARAMS[:fparam.shape[1]])}
        labels |= {k: np.asarray(t[k], dtype=np.float64) for k in ("SNR", "VHELIO")}
        ids = np.char.strip(np.asarray(t["APOGEE_ID"]).astype(str))
        flux, ivar, mask = _ivar(flux, err, np.zeros(flux.shape, bool))
        meta = {"flux_unit": "continuum-normalised", "source": "apogee", "frame": "rest"}
    else:
        head = hdul[0].header
        labels = header_labels(head, {k: k for k in ("SNR", "VHELIO", "RV_TEFF", "RV_LOGG", "RV_FEH")})
        ids = np.array([str(head.get("OBJID", path.stem)).strip()])
        flux, ivar, mask = _flagged_ivar(flux, err, np.atleast_2d(hdul[3].data)[:1], bits, ids, path)
        meta = {"flux_unit": FLUX_UNIT, "source": "apogee", "frame": "rest"}
    return Spectra(10 ** loglam, flux, ivar, mask, labels, ids, meta=meta)


def _apvisit(hdul, path: Path, bits: int) -> Spectra:
    wave = np.asarray(hdul[4].data, dtype=np.float64)
    flux = np.asarray(hdul[1].data, dtype=np.float64)
    err = np.asarray(hdul[2].data, dtype=np.float64)
    flags = np.asarray(hdul[3].data, dtype=np.int64)
    # chips are stored red to blue, each in decreasing wavelength: flip both to increasing order
    order = np.argsort(wave[:, 0])
    wave, flux, err, flags = (a[order, ::-1] for a in (wave, flux, err, flags))
    if not np.all(np.diff(wave, axis=1) > 0) or not np.all(wave[1:, 0] > wave[:-1, -1]):
        raise SpecaeError(f"{path}: apVisit chips are not monotonic, non-overlapping wavelength ranges")
    waves, parts = [wave[0]], [(flux[0], err[0], flags[0])]
    for k in range(1, len(wave)):
        lo, hi = wave[k - 1, -1], wave[k, 0]
        dw = 0.5 * (wave[k - 1, -1] - wave[k - 1, -2] + wave[k, 1] - wave[k, 0])
        gap = np.linspace(lo, hi, max(int(round((hi - lo) / dw)), 1) + 1)[1:-1]
        waves += [gap, wave[k]]
        parts += [(np.zeros(gap.size), np.zeros(gap.size), np.zeros(gap.size, np.int64)), (flux[k], err[k], flags[k])]
    flux, err, flags = (np.concatenate(p)[None] for p in zip(*parts))
    head = hdul[0].header
    labels = header_labels(head, {"SNR": "SNR", "VHELIO": "VHELIO", "VRAD": "VRAD", "RV_TEFF": "RVTEFF",
                                   "RV_LOGG": "RVLOGG", "RV_FEH": "RVFEH"})
    objid = str(head.get("OBJID", path.stem)).strip()
    labels["OBJID"] = np.array([objid])
    visit = f"{str(head.get('PLATE', '')).strip()}-{head.get('MJD5', '')}-{head.get('FIBERID', '')}"
    ids = np.array([f"{objid}:{visit}"])
    flux, ivar, mask = _flagged_ivar(flux, err, flags, bits, ids, path)
    return Spectra(np.concatenate(waves), flux, ivar, mask, labels, ids,
                   meta={"flux_unit": FLUX_UNIT, "source": "apogee", "frame": "observed"})


def _flagged_ivar(flux: np.ndarray, err: np.ndarray, flags: np.ndarray, bits: int, ids, path):
    """`_ivar` with the pixels whose PIXMASK `flags` hold any of `bits` masked, warning if they are most."""
    bad = flagged(flags, bits)
    warn_mostly_masked(bad, ~_ivar(flux, err, np.zeros(flux.shape, bool))[2], ids, path)
    return _ivar(flux, err, bad)


def _ivar(flux: np.ndarray, err: np.ndarray, bad: np.ndarray):
    """(flux, ivar, mask), each (N, npix), from APOGEE flux and 1-sigma error arrays."""
    ok = ~bad & np.isfinite(flux) & (flux != 0) & np.isfinite(err) & (err > 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rows without a valid pixel
        typical = np.nanmedian(np.where(ok, err, np.nan), axis=1, keepdims=True)
    ok &= err < APOGEE_HUGE_ERR * np.where(np.isfinite(typical), typical, 0.0)
    e = np.where(ok, err, 1.0)
    return np.where(ok, flux, 0.0), np.where(ok, 1.0 / e**2, 0.0), ~ok
