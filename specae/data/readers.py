"""Readers for survey spectrum files: SDSS/BOSS spec and spec-lite, DESI coadds and stacks, APOGEE.

Each reader returns a :class:`Spectra` (wave in Angstrom, flux/ivar of shape (N, npix)). Formats are
recognised from a file's HDUs, never its name. Anything wrong with a file (missing, not FITS, not a
spectrum, a column missing, damaged or truncated) raises :class:`SpecaeError` with one line naming
the file; masked bad pixels give one warning naming it. Files are opened read-only.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyError
from astropy.utils.exceptions import AstropyUserWarning, AstropyWarning

from specae.data.resample import SPECTRA_BYTES, loglam_grid, require_memory
from specae.data.spectra import Spectra
from specae.errors import SpecaeError, about, first_line, one_masking_warning

FLUX_UNIT = "1e-17 erg/s/cm2/A"

# APOGEE_PIXMASK bits 0-7 (BADPIX, CRPIX, SATPIX, UNFIXABLE, BADDARK, BADFLAT, BADERR, NOSKY) mark bad
# pixels; bits 8+ (Littrow ghost, persistence, sky/telluric lines, PSF) are warnings and are kept.
APOGEE_BAD_BITS = 0xFF
# APOGEE writes placeholder errors (~1e12 x the median error in apStar) at bad pixels; inflated but
# genuine errors reach ~1e6 x the median. Above this factor a pixel weighs < 1e-10 of a typical one,
# so treating it as "no data" loses nothing and keeps placeholders out whatever their exact value.
APOGEE_HUGE_ERR = 1e5
# ASPCAP parameter order of PARAM/FPARAM (aspcap_params: TEFF LOGG LOG10VDOP METALS C N
# "O Mg Si S Ca Ti" LGVSINI O), named as the allStar tags; vmicro and vsini are log10(km/s).
APOGEE_PARAMS = ("TEFF", "LOGG", "LOGVMICRO", "M_H", "C_M", "N_M", "ALPHA_M", "LGVSINI", "O_M")
# SDSS catalogue HDU: a specObj row in SDSS-I/II spec files, an spAll row in BOSS/eBOSS ones
SDSS_CATALOGUES = ("SPECOBJ", "SPALL")
SDSS_LABELS = ("Z", "Z_ERR", "ZWARNING")
SDSS_STRING_LABELS = ("CLASS", "SUBCLASS")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
STANDARD_HDUS = (fits.PrimaryHDU, fits.ImageHDU, fits.BinTableHDU, fits.TableHDU, fits.CompImageHDU)


# -- opening and recognising files -------------------------------------------------------------------
@contextmanager
def _open_fits(path, kind: str | None = None):
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
                found = _sniff(hdul)
                hint = f"; it looks like {found.upper()}" if kind and found and found not in kind.lower() else ""
                raise SpecaeError(f"not a complete {kind or found or 'spectrum'} file ({e}){hint}") from None
            except (OSError, ValueError, TypeError, VerifyError) as e:
                # astropy parses data and header cards lazily: a corrupt file fails here, when they are read
                # (e.g. a card or column of the wrong type)
                raise SpecaeError(f"damaged or truncated FITS file ({first_line(e)})") from None


def _columns(table) -> set[str]:
    """Lower-case column names of a table HDU or FITS_rec (unnamed columns left out)."""
    return {c.lower() for c in table.columns.names if c}


def _is_image(hdul, i: int) -> bool:
    return i < len(hdul) and isinstance(hdul[i], (fits.PrimaryHDU, fits.ImageHDU)) and bool(hdul[i].shape)


def _sniff(hdul) -> str | None:
    """'sdss' | 'desi' | 'apogee' from the HDU layout, or None."""
    names = {h.name for h in hdul}
    if "COADD" in names and isinstance(hdul["COADD"], fits.BinTableHDU):
        if "loglam" in _columns(hdul["COADD"]):
            return "sdss"
    if any(n.endswith("_WAVELENGTH") for n in names) or {"FLUX", "IVAR", "WAVE"} <= names:
        return "desi"
    if _apogee_kind(hdul):
        return "apogee"
    return None


def _apogee_kind(hdul) -> str | None:
    """'aspcapStar' | 'apStar' | 'apVisit' from the HDU layout, or None."""
    if not (_is_image(hdul, 1) and _is_image(hdul, 2) and hdul[1].shape == hdul[2].shape):
        return None
    h1 = hdul[1].header
    if _is_image(hdul, 4) and hdul[4].shape == hdul[1].shape \
            and "WAVELENGTH" in str(hdul[4].header.get("BUNIT", "")).upper():
        return "apVisit"  # per-pixel wavelengths in HDU4
    loglinear = str(h1.get("CTYPE1", "")).upper() == "LOG-LINEAR" or h1.get("DC-FLAG") == 1
    if loglinear and "CRVAL1" in h1 and "CDELT1" in h1:
        if len(hdul) > 4 and isinstance(hdul[4], fits.BinTableHDU) and "FPARAM" in hdul[4].columns.names:
            return "aspcapStar"
        return "apStar"
    return None


def detect_format(path) -> str:
    """Survey format of a spectrum file: 'sdss', 'desi' or 'apogee' (from its HDUs, not its name)."""
    with _open_fits(path) as hdul:
        return _require_format(hdul, path)


def _require_format(hdul, path) -> str:
    fmt = _sniff(hdul)
    if fmt is None:
        layout = ", ".join(h.name or f"HDU{i}" for i, h in enumerate(hdul))
        raise SpecaeError(f"{path}: FITS file is not a recognised SDSS, DESI or APOGEE spectrum (HDUs: {layout})")
    return fmt


def read_spectra(path, exposures: bool = False) -> Spectra:
    """Read any supported spectrum file, dispatching on :func:`detect_format`.

    exposures: SDSS/BOSS full spec files only: one spectrum per exposure instead of the coadd (see
    :func:`read_sdss`).
    """
    with _open_fits(path) as hdul:
        fmt = _require_format(hdul, path)
        if fmt == "sdss":
            return _sdss(hdul, Path(path), exposures)
        if exposures:
            raise SpecaeError(f"per-exposure spectra come from SDSS/BOSS full spec files; this is a {fmt.upper()} file")
        return {"desi": _desi, "apogee": _apogee}[fmt](hdul, Path(path))


# -- SDSS ------------------------------------------------------------------------------------------------
def read_sdss(path, exposures: bool = False) -> Spectra:
    """SDSS/BOSS spec or spec-lite file (also ``gelato-*.fits``), flux in 1e-17 erg/s/cm2/A.

    The coadd (HDU COADD): one spectrum, pixels with ``and_mask != 0`` (bad in every exposure) masked.
    Labels from the catalogue HDU, SPECOBJ (SDSS-I/II) or SPALL (BOSS): Z, Z_ERR, ZWARNING, CLASS,
    SUBCLASS (those present; strings stripped). ids: PLATE-MJD-FIBERID, else the file stem.

    exposures=True (full spec files): one spectrum per exposure HDU (HDU 4+, one per camera and
    exposure, EXTNAME like ``b1-00123456-00123455-00123450``), rebinned onto the coadd's grid with
    `Spectra.resample`, so pixels outside the camera's range are masked; pixels with ``mask != 0``
    masked. Labels: the coadd's, plus EXPOSURE (the EXTNAME), CAMERA (b1, r1, b2, r2) and EXP_MJD
    (exposure start, MJD in TAI, from TAI-BEG; NaN if absent). ids: PLATE-MJD-FIBERID:EXTNAME.
    """
    with _open_fits(path, "SDSS spec") as hdul:
        return _sdss(hdul, Path(path), exposures)


def _sdss(hdul, path: Path, exposures: bool = False) -> Spectra:
    labels, ident = _sdss_catalogue(hdul, path)
    coadd = Spectra(*_sdss_table(hdul["COADD"].data), labels, [ident],
                    meta={"flux_unit": FLUX_UNIT, "source": "sdss"})
    return _sdss_exposures(hdul, coadd) if exposures else coadd


def _sdss_table(t) -> tuple:
    """(wave (npix,) Angstrom, flux, ivar, mask (1, npix)) from an SDSS table of loglam/flux/ivar/mask."""
    loglam = np.asarray(t["loglam"], dtype=np.float64)
    # loglam is float32 (~0.005 A error); the coadd grid is exact multiples of 1e-4 dex, so restore it
    snapped = np.round(loglam, 4)
    if np.allclose(snapped, loglam, rtol=0, atol=1e-6):
        loglam = snapped
    bits = t["and_mask"] if "and_mask" in _columns(t) else t["mask"]
    with np.errstate(over="ignore"):       # absurd loglam -> inf, which Spectra refuses with a clear message
        wave = 10 ** loglam
    return wave, np.asarray(t["flux"])[None], np.asarray(t["ivar"])[None], (np.asarray(bits) != 0)[None]


def _sdss_catalogue(hdul, path: Path) -> tuple[dict, str]:
    """(labels, each (1,), and the PLATE-MJD-FIBERID id) from the catalogue HDU; ({}, file stem) without one."""
    name = next((n for n in SDSS_CATALOGUES if n in hdul), None)
    row = hdul[name].data[:1] if name else None
    if row is None or len(row) == 0:
        return {}, path.stem
    cols = _columns(row)
    labels = {k: np.asarray(row[k]) for k in SDSS_LABELS if k.lower() in cols}
    labels |= {k: np.char.strip(np.asarray(row[k]).astype(str)) for k in SDSS_STRING_LABELS if k.lower() in cols}
    if not {"plate", "mjd", "fiberid"} <= cols:
        return labels, path.stem
    return labels, f"{int(row['PLATE'][0]):04d}-{int(row['MJD'][0]):05d}-{int(row['FIBERID'][0]):04d}"


def _sdss_exposures(hdul, coadd: Spectra) -> Spectra:
    """The exposure HDUs of a full spec file as spectra on `coadd`'s grid (see `read_sdss`)."""
    hdus = [h for h in hdul if isinstance(h, fits.BinTableHDU) and h.name != "COADD"
            and {"loglam", "flux", "ivar"} <= _columns(h)]
    if not hdus:
        raise SpecaeError("has no per-exposure HDUs (a spec-lite file?); exposures need the full spec- file")
    items = []
    for h in hdus:
        name = str(h.header.get("EXTNAME", h.name)).strip()
        labels = {**coadd.labels, "EXPOSURE": np.array([name]), "CAMERA": np.array([name.split("-")[0].lower()]),
                  "EXP_MJD": np.array([float(h.header.get("TAI-BEG", np.nan)) / 86400])}
        try:
            items.append(Spectra(*_sdss_table(h.data), labels, [f"{coadd.ids[0]}:{name}"], meta=coadd.meta)
                         .resample(coadd.wave))
        except SpecaeError as e:
            raise SpecaeError(f"exposure HDU {name}: {e}") from None
    return Spectra.concatenate(items)


# -- DESI ------------------------------------------------------------------------------------------------
def read_desi(path, redrock=None) -> Spectra:
    """DESI coadd (B/R/Z arms merged onto one grid) or a desigal stack file (FLUX/IVAR/WAVE).

    Coadd arms share one linear 0.8 A grid; the merged grid is their union, and where arms overlap the
    flux is the ivar-weighted mean and ivar the sum. ``{arm}_MASK != 0`` is masked. ids are TARGETIDs.
    Labels Z, ZERR, ZWARN, SPECTYPE come from `redrock` (default: the sibling file named with
    'coadd' -> 'redrock', if it exists), matched by TARGETID; targets it lacks get NaN/-1/"".
    Stacks are rest-frame and normalised; their STACKINFO columns become labels.
    """
    with _open_fits(path, "DESI") as hdul:
        return _desi(hdul, Path(path), redrock)


def _desi(hdul, path: Path, redrock=None) -> Spectra:
    if "WAVE" in hdul:
        return _desi_stack(hdul, path)
    arms = sorted((h.name[:-len("_WAVELENGTH")] for h in hdul if h.name.endswith("_WAVELENGTH")),
                  key=lambda a: hdul[f"{a}_WAVELENGTH"].data[0])
    if not arms:
        raise SpecaeError(f"{path}: not a DESI file (no X_WAVELENGTH or WAVE HDU); it is {_sniff(hdul) or 'unknown'}")
    waves = [np.asarray(hdul[f"{a}_WAVELENGTH"].data, dtype=np.float64) for a in arms]
    # pixel index of every arm pixel on the shared linear grid (overlap wavelengths differ by ~1e-10 A)
    step, w0 = float(np.median(np.diff(waves[0]))), min(w[0] for w in waves)
    idx = [np.rint((w - w0) / step).astype(np.int64) for w in waves]
    if any(np.abs(w - (w0 + i * step)).max() > 1e-3 * step for w, i in zip(waves, idx)):
        raise SpecaeError(f"{path}: the DESI arms {arms} are not on one common linear wavelength grid")
    wave = w0 + step * np.arange(max(i[-1] for i in idx) + 1)
    nspec = hdul[f"{arms[0]}_FLUX"].shape[0]
    wsum, wflux = np.zeros((nspec, wave.size)), np.zeros((nspec, wave.size))
    for arm, w, i in zip(arms, waves, idx):
        wave[i] = w  # keep the file's own wavelengths
        flux, ivar, bits = (np.asarray(hdul[f"{arm}_{k}"].data) for k in ("FLUX", "IVAR", "MASK"))
        if not flux.shape == ivar.shape == bits.shape == (nspec, w.size):
            raise SpecaeError(f"{arm}_FLUX, {arm}_IVAR, {arm}_MASK have shapes {flux.shape}, {ivar.shape}, "
                              f"{bits.shape}; expected {nspec} spectra x {w.size} pixels")
        flux, ivar = flux.astype(np.float64), ivar.astype(np.float64)
        good = (bits == 0) & np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0)
        ivar = np.where(good, ivar, 0.0)
        wsum[:, i] += ivar
        wflux[:, i] += ivar * np.where(good, flux, 0.0)
    flux = wflux / np.where(wsum > 0, wsum, 1.0)

    targetid = np.asarray(hdul["FIBERMAP"].data["TARGETID"])
    if targetid.shape != (nspec,):
        raise SpecaeError(f"{path}: FIBERMAP has {targetid.size} rows for {nspec} spectra")
    return Spectra(wave, flux, wsum, wsum == 0, _redrock_labels(path, redrock, targetid), targetid.astype(str),
                   meta={"flux_unit": FLUX_UNIT, "source": "desi"})


def _redrock_labels(coadd: Path, redrock, targetid: np.ndarray) -> dict:
    """Z, ZERR, ZWARN, SPECTYPE for each TARGETID from a redrock file's REDSHIFTS HDU ({} if none)."""
    if redrock is None:
        sibling = coadd.with_name(coadd.name.replace("coadd", "redrock"))
        if "coadd" not in coadd.name or not sibling.is_file():
            return {}
        redrock = sibling
    with _open_fits(redrock, "DESI redrock") as hdul:
        z = hdul["REDSHIFTS"].data
        tid = np.asarray(z["TARGETID"])
        order = np.argsort(tid)
        pick = order[np.clip(np.searchsorted(tid, targetid, sorter=order), 0, tid.size - 1)]
        found = tid[pick] == targetid
        return {"Z": np.where(found, z["Z"][pick], np.nan),
                "ZERR": np.where(found, z["ZERR"][pick], np.nan),
                "ZWARN": np.where(found, z["ZWARN"][pick], -1),  # -1: no redrock row for this target
                "SPECTYPE": np.where(found, np.char.strip(np.asarray(z["SPECTYPE"][pick]).astype(str)), "")}


def _desi_stack(hdul, path: Path) -> Spectra:
    wave = np.asarray(hdul["WAVE"].data, dtype=np.float64)
    flux = np.atleast_2d(np.asarray(hdul["FLUX"].data, dtype=np.float64))
    ivar = np.atleast_2d(np.asarray(hdul["IVAR"].data, dtype=np.float64))
    labels, ids = {}, np.array([f"{path.stem}-{k}" for k in range(len(flux))])
    if "STACKINFO" in hdul and len(hdul["STACKINFO"].data) == len(flux):
        info = hdul["STACKINFO"].data
        labels = {c: np.asarray(info[c]) for c in info.columns.names if np.asarray(info[c]).ndim == 1}
        if "STACKID" in labels:
            ids = np.array([f"{path.stem}-{k}" for k in labels["STACKID"]])
    bad = ~np.isfinite(flux) | ~np.isfinite(ivar)
    return Spectra(wave, np.where(bad, 0.0, flux), np.where(bad, 0.0, ivar), bad, labels, ids,
                   meta={"flux_unit": "normalised", "source": "desi", "frame": "rest"})


# -- APOGEE ----------------------------------------------------------------------------------------------
def read_apogee(path) -> Spectra:
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
    apVisit) the bad-pixel bits APOGEE_BAD_BITS. ivar = 1/error^2.
    """
    with _open_fits(path, "APOGEE") as hdul:
        return _apogee(hdul, Path(path))


def _apogee(hdul, path: Path) -> Spectra:
    kind = _apogee_kind(hdul)
    if kind is None:
        raise SpecaeError(f"{path}: not an APOGEE aspcapStar, apStar or apVisit file")
    if kind == "apVisit":
        return _apvisit(hdul, path)
    h1 = hdul[1].header
    npix = hdul[1].shape[-1]
    crval, cdelt, crpix = (float(h1.get(k, 1)) for k in ("CRVAL1", "CDELT1", "CRPIX1"))  # str card: ValueError
    loglam = crval + cdelt * (np.arange(npix) + 1 - crpix)
    flux = np.atleast_2d(np.asarray(hdul[1].data, dtype=np.float64))[:1]
    err = np.atleast_2d(np.asarray(hdul[2].data, dtype=np.float64))[:1]
    if kind == "aspcapStar":
        t = hdul[4].data[:1]
        fparam = np.asarray(t["FPARAM"], dtype=np.float64).reshape(1, -1)
        fparam[fparam <= -9999] = np.nan  # ASPCAP's "not determined"
        labels = {name: fparam[:, k] for k, name in enumerate(APOGEE_PARAMS[:fparam.shape[1]])}
        labels |= {k: np.asarray(t[k], dtype=np.float64) for k in ("SNR", "VHELIO")}
        ids = np.char.strip(np.asarray(t["APOGEE_ID"]).astype(str))
        flux, ivar, mask = _apogee_ivar(flux, err, np.zeros(flux.shape, bool))
        meta = {"flux_unit": "continuum-normalised", "source": "apogee", "frame": "rest"}
    else:
        bits = np.atleast_2d(np.asarray(hdul[3].data, dtype=np.int64))[:1]
        flux, ivar, mask = _apogee_ivar(flux, err, (bits & APOGEE_BAD_BITS) != 0)
        head = hdul[0].header
        labels = _header_labels(head, {k: k for k in ("SNR", "VHELIO", "RV_TEFF", "RV_LOGG", "RV_FEH")})
        ids = np.array([str(head.get("OBJID", path.stem)).strip()])
        meta = {"flux_unit": FLUX_UNIT, "source": "apogee", "frame": "rest"}
    return Spectra(10 ** loglam, flux, ivar, mask, labels, ids, meta=meta)


def _apvisit(hdul, path: Path) -> Spectra:
    wave = np.asarray(hdul[4].data, dtype=np.float64)
    flux = np.asarray(hdul[1].data, dtype=np.float64)
    err = np.asarray(hdul[2].data, dtype=np.float64)
    bits = np.asarray(hdul[3].data, dtype=np.int64)
    # chips are stored red to blue, each in decreasing wavelength: flip both to increasing order
    order = np.argsort(wave[:, 0])
    wave, flux, err, bits = (a[order, ::-1] for a in (wave, flux, err, bits))
    if not np.all(np.diff(wave, axis=1) > 0) or not np.all(wave[1:, 0] > wave[:-1, -1]):
        raise SpecaeError(f"{path}: apVisit chips are not monotonic, non-overlapping wavelength ranges")
    waves, parts = [wave[0]], [(flux[0], err[0], bits[0])]
    for k in range(1, len(wave)):
        lo, hi = wave[k - 1, -1], wave[k, 0]
        dw = 0.5 * (wave[k - 1, -1] - wave[k - 1, -2] + wave[k, 1] - wave[k, 0])
        gap = np.linspace(lo, hi, max(int(round((hi - lo) / dw)), 1) + 1)[1:-1]
        waves += [gap, wave[k]]
        parts += [(np.zeros(gap.size), np.zeros(gap.size), np.zeros(gap.size, np.int64)), (flux[k], err[k], bits[k])]
    flux, err, bits = (np.concatenate(p)[None] for p in zip(*parts))
    flux, ivar, mask = _apogee_ivar(flux, err, (bits & APOGEE_BAD_BITS) != 0)

    head = hdul[0].header
    labels = _header_labels(head, {"SNR": "SNR", "VHELIO": "VHELIO", "VRAD": "VRAD", "RV_TEFF": "RVTEFF",
                                   "RV_LOGG": "RVLOGG", "RV_FEH": "RVFEH"})
    objid = str(head.get("OBJID", path.stem)).strip()
    labels["OBJID"] = np.array([objid])
    visit = f"{str(head.get('PLATE', '')).strip()}-{head.get('MJD5', '')}-{head.get('FIBERID', '')}"
    ids = np.array([f"{objid}:{visit}"])
    return Spectra(np.concatenate(waves), flux, ivar, mask, labels, ids,
                   meta={"flux_unit": FLUX_UNIT, "source": "apogee", "frame": "observed"})


def _header_labels(head, keys: dict[str, str]) -> dict:
    """Label name -> (1,) float array from header keyword (NaN where the keyword is absent)."""
    return {name: np.array([float(head.get(key, np.nan))]) for name, key in keys.items()}


def _apogee_ivar(flux: np.ndarray, err: np.ndarray, bad: np.ndarray):
    """(flux, ivar, mask), each (N, npix), from APOGEE flux and 1-sigma error arrays."""
    ok = ~bad & np.isfinite(flux) & (flux != 0) & np.isfinite(err) & (err > 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rows without a valid pixel
        typical = np.nanmedian(np.where(ok, err, np.nan), axis=1, keepdims=True)
    ok &= err < APOGEE_HUGE_ERR * np.where(np.isfinite(typical), typical, 0.0)
    e = np.where(ok, err, 1.0)
    return np.where(ok, flux, 0.0), np.where(ok, 1.0 / e**2, 0.0), ~ok


# -- many files --------------------------------------------------------------------------------------------
def read_many(paths, wave=None, exposures: bool = False) -> Spectra:
    """Read several files onto one grid and stack them (with `exposures`, each file's exposures).

    wave: target grid in Angstrom; default a log-linear grid with the median of the files' median
    log10 steps, covering the union of their ranges. Each file is rebinned with `Spectra.resample`.
    Labels missing from some files are kept, filled with NaN (numeric) or "" (string). All files must
    share flux unit and frame (normalise/shift them first otherwise). Pixels masked for bad values give
    one warning for all files.
    """
    paths = list(paths)
    if not paths:
        raise SpecaeError("read_many: no files given")
    with one_masking_warning(f"{len(paths)} files"):
        items = [read_spectra(p, exposures) for p in paths]
    for key in ("flux_unit", "frame"):
        for p, s in zip(paths, items):
            if s.meta[key] != items[0].meta[key]:
                raise SpecaeError(f"read_many: {p} has {key} {s.meta[key]!r} but {paths[0]} has "
                                  f"{items[0].meta[key]!r}; read them separately")
    if wave is None:
        step = float(np.median([np.median(np.diff(np.log10(s.wave))) for s in items]))
        # half a step of headroom so float rounding in `step` cannot drop the last pixel of the union
        wave = loglam_grid(min(s.wave[0] for s in items), max(s.wave[-1] for s in items) * 10 ** (0.5 * step), step)
    wave = np.asarray(wave, dtype=np.float64)
    # the rebinned files and their concatenation are held at once
    require_memory(sum(map(len, items)), wave.size, f"{sum(map(len, items))} spectra on a grid of {wave.size} pixels",
                   2 * SPECTRA_BYTES)
    items = [s if np.array_equal(s.wave, wave) else s.resample(wave) for s in items]

    kinds = {}
    for s in items:
        for k, v in s.labels.items():
            kinds.setdefault(k, v.dtype.kind in "USO")
    for s in items:
        for k, is_str in kinds.items():
            if k not in s.labels:
                s.labels[k] = np.full(len(s), "" if is_str else np.nan)
    out = Spectra.concatenate(items)
    out.meta["source"] = "+".join(dict.fromkeys(s.meta["source"] for s in items))
    return out
