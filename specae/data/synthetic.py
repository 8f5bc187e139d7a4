"""Synthetic spectra with known truth: stars, galaxies, and two different survey-like noise models.

Everything is analytic and vectorised over spectra (the only Python loops run over spectral lines),
so a few thousand spectra take about a second. Line profiles are pseudo-Voigt functions averaged
over each pixel (exact integrals of their Gaussian and Lorentzian parts), so lines stay flux-conserving
on any grid, even when narrower than a pixel. All wavelengths are vacuum Angstrom.

    clean = stellar_spectra(500, seed=1)          # noise-free truth, ivar = 1
    noisy = add_noise(clean, seed=2)              # what a survey would deliver
    other = add_survey_noise(clean, seed=2)       # a second, different survey: tests need no retuning
    noisy, clean = default_dataset("galaxy", n=500, seed=3)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.special import erf

from specae.data.hdf5 import write_h5
from specae.data.resample import loglam_grid, pixel_edges
from specae.data.spectra import Spectra
from specae.errors import SpecaeError

C_KMS = 299792.458
_HC_K = 1.438777e8            # h c / k_B [Angstrom K], for Planck curves
_FWHM_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))

STELLAR_LABELS = ("TEFF", "LOGG", "FE_H")
GALAXY_LABELS = ("Z", "AGE", "VDISP", "EBV", "HA_EW", "OIII_HB", "NII_HA", "D4000")   # D4000 is measured
GALAXY_FLUX_UNIT = "1e-17 erg/(s cm2 Angstrom)"
BUNDLED_SIZES = {"stellar": 400, "galaxy": 300}   # spectra per kind in write_default_data


def stellar_wave() -> np.ndarray:
    """Default stellar grid: log-linear 3800-9000 A, 2e-4 dex (138 km/s) per pixel, 1873 pixels."""
    return loglam_grid(3800.0, 9000.0, 2e-4)


def galaxy_wave() -> np.ndarray:
    """Default observed galaxy grid: log-linear 3800-9200 A, 2e-4 dex per pixel (SDSS/2), 1921 pixels."""
    return loglam_grid(3800.0, 9200.0, 2e-4)


# ---------------------------------------------------------------------------------------------
# line profiles


def _window(edges: np.ndarray, center: np.ndarray, reach: np.ndarray):
    """Pixels overlapping center +- reach on a grid with boundaries `edges` (npix+1,).

    center, reach: (N,) in Angstrom. Returns idx (N, W) clipped into the grid and valid (N, W)."""
    npix = edges.size - 1
    lo = np.clip(np.searchsorted(edges, center - reach, side="right") - 1, 0, npix)
    hi = np.clip(np.searchsorted(edges, center + reach, side="left"), 0, npix)
    width = int((hi - lo).max(initial=0))
    idx = lo[:, None] + np.arange(width)
    return np.minimum(idx, npix - 1), idx < hi[:, None]


def _line(edges, center, fwhm_g, fwhm_l=None, area=False):
    """Pixel-averaged pseudo-Voigt profile of one line in N spectra, evaluated near its centre.

    edges (npix+1,) pixel boundaries [A]; center, fwhm_g, fwhm_l (N,) [A] (fwhm_l None = pure Gaussian).
    The profile peaks at 1 (area=False, for absorption depths) or integrates to 1 per Angstrom (area=True,
    for emission fluxes). Returns (idx, prof), both (N, W); prof is 0 outside the window.
    Pseudo-Voigt widths and mixing follow Thompson, Cox & Hastings (1987).
    """
    fg = np.asarray(fwhm_g, float)
    fl = np.zeros_like(fg) if fwhm_l is None else np.asarray(fwhm_l, float)
    f = (fg**5 + 2.69269 * fg**4 * fl + 2.42843 * fg**3 * fl**2 + 4.47163 * fg**2 * fl**3
         + 0.07842 * fg * fl**4 + fl**5) ** 0.2
    r = fl / f
    eta = 1.36603 * r - 0.47719 * r**2 + 0.11116 * r**3
    # Lorentzian wings fall slowly: stop at 30 FWHM, where they are < 3e-4 of the peak
    idx, valid = _window(edges, center, 3 * f + 30 * fl)
    sig = (f / _FWHM_SIGMA)[:, None]
    hw = (f / 2)[:, None]
    eta = eta[:, None]
    a = edges[idx] - center[:, None]
    b = edges[idx + 1] - center[:, None]
    gauss = 0.5 * (erf(b / (np.sqrt(2) * sig)) - erf(a / (np.sqrt(2) * sig)))
    lorentz = (np.arctan(b / hw) - np.arctan(a / hw)) / np.pi
    prof = ((1 - eta) * gauss + eta * lorentz) / (b - a)
    if not area:
        prof /= (1 - eta) / (sig * np.sqrt(2 * np.pi)) + eta / (np.pi * hw)
    return idx, np.where(valid, prof, 0.0)


def _absorb(log_t, edges, center, depth, fwhm_g, fwhm_l=None):
    """Multiply transmission exp(log_t) (N, npix) by 1 - depth * profile for one line."""
    idx, prof = _line(edges, center, fwhm_g, fwhm_l)
    rows = np.broadcast_to(np.arange(len(center))[:, None], idx.shape)
    np.add.at(log_t, (rows, idx), np.log1p(-depth[:, None] * prof))


def _planck(wave, teff):
    """Planck F_lambda(wave (..., P)) for teff (N, 1), normalised to 1 at 5500 A."""
    x = _HC_K / teff
    return (5500.0 / wave) ** 5 * np.expm1(x / 5500.0) / np.expm1(x / wave)


def _logistic(x):
    return 0.5 * (1 + np.tanh(0.5 * x))


# ---------------------------------------------------------------------------------------------
# labels


def _draw(rng, n, ranges: dict, log=()):
    """Independent uniform (log-uniform for names in `log`) labels in `ranges` {name: (lo, hi)}."""
    out = {}
    for name, (lo, hi) in ranges.items():
        u = rng.uniform(size=n)
        out[name] = lo * (hi / lo) ** u if name in log else lo + u * (hi - lo)
    return out


def _override(drawn: dict, fixed: dict | None, n: int, rules: dict) -> dict:
    """Replace drawn labels by user-fixed ones (scalars or (n,) arrays).

    rules: {name: (text, test)} domain checks, e.g. {"TEFF": ("> 0", lambda v: v > 0)}."""
    for name, value in (fixed or {}).items():
        if name not in drawn:
            raise SpecaeError(f"cannot fix label {name!r}; choose from {sorted(drawn)}")
        value = np.array(value, dtype=float)
        if value.ndim == 0:
            value = np.full(n, value)
        if value.shape != (n,):
            raise SpecaeError(f"label {name!r} has shape {value.shape}, expected () or ({n},)")
        text, test = rules.get(name, ("finite", np.isfinite))
        if not np.all(np.isfinite(value) & test(value)):
            raise SpecaeError(f"label {name!r} must be {text}")
        drawn[name] = value
    return drawn


def _check_n(n):
    if int(n) != n or n < 0:
        raise SpecaeError(f"number of spectra must be a non-negative integer, got {n!r}")
    return int(n)


def _grid(wave, default):
    wave = default() if wave is None else np.asarray(wave, dtype=float)
    if wave.ndim != 1 or wave.size < 2 or not np.all(np.diff(wave) > 0) or wave[0] <= 0:
        raise SpecaeError("wave must be a strictly increasing 1-D array of positive wavelengths (>= 2 pixels)")
    return wave


# ---------------------------------------------------------------------------------------------
# stars

# (vacuum wavelength [A], group, optical-depth scale, maximum observed depth, Lorentz FWHM scale [km/s])
# Depths are as seen at the instrument's resolution; strong lines saturate and grow damping wings.
_STAR_LINES = [
    (6564.61, "H", 6.0, 0.7, 150), (4862.69, "H", 4.5, 0.7, 130), (4341.69, "H", 3.5, 0.65, 110),
    (4102.90, "H", 3.0, 0.6, 100), (3971.19, "H", 2.5, 0.55, 90), (3890.15, "H", 2.0, 0.5, 80),
    (3934.77, "CaII", 30.0, 0.9, 150), (3969.59, "CaII", 20.0, 0.85, 130),
    (8500.35, "CaT", 2.0, 0.45, 60), (8544.44, "CaT", 5.0, 0.55, 80), (8664.52, "CaT", 4.0, 0.5, 70),
    (5168.76, "metal", 1.5, 0.45, 40), (5174.12, "metal", 2.5, 0.5, 50), (5185.04, "metal", 3.0, 0.55, 60),
    (5891.58, "metal", 3.0, 0.55, 50), (5897.55, "metal", 2.0, 0.5, 40),
    (4227.92, "metal", 2.0, 0.55, 60), (4046.95, "metal", 1.2, 0.4, 0), (4384.78, "metal", 1.5, 0.4, 0),
    (4405.99, "metal", 1.0, 0.35, 0), (5271.01, "metal", 0.8, 0.35, 0), (5329.52, "metal", 0.6, 0.3, 0),
    (5372.98, "metal", 0.6, 0.3, 0), (5407.27, "metal", 0.5, 0.3, 0), (4958.98, "metal", 0.5, 0.3, 0),
    (6496.77, "metal", 0.3, 0.25, 0), (8809.18, "metal", 0.6, 0.3, 0),
    (7667.01, "metal", 0.4, 0.4, 0), (7701.08, "metal", 0.3, 0.35, 0),
]
_G_BAND = (4301.21, 900.0)           # CH band head [A] and its intrinsic FWHM [km/s]
_TIO_HEADS = (4955.98, 5449.51, 6160.30, 7055.85)   # TiO band heads [A]; bands degrade to the red
_STAR_SIGMA_INST = 100.0             # instrumental line-spread sigma [km/s] (R ~ 1300)


def _weak_lines(count, seed, lo=3800.0, hi=9000.0):
    """A fixed list of weak metal lines: wavelengths (denser in the blue, as in real stars) and strengths."""
    rng = np.random.default_rng(seed)
    wave = lo * (hi / lo) ** (rng.uniform(size=count) ** 1.4)
    return np.sort(wave), 10 ** rng.uniform(-1.3, -0.2, count)


_STAR_WEAK = _weak_lines(120, seed=5772)


def _star_tau_factor(group, teff, logg, feh):
    """How a line group's optical depth scales with the atmosphere (N,)."""
    if group == "H":            # Balmer lines peak in A stars (~9000 K), vanish in cool stars
        return np.exp(-0.5 * ((teff - 9000.0) / 2000.0) ** 2)
    if group == "CaII":         # ionised calcium: dominant stage over the whole range
        return 10**feh * (6500.0 / teff) ** 2
    if group == "CaT":          # the Ca triplet is stronger in giants (low logg)
        return 10**feh * (6500.0 / teff) ** 2 * 10 ** (-0.15 * (logg - 3.0))
    return 10**feh * (5200.0 / teff) ** 4   # neutral metals: stronger in cool stars


def stellar_spectra(n: int, seed=0, wave: np.ndarray | None = None, labels: dict | None = None) -> Spectra:
    """Noise-free model spectra of FGK stars, ivar = 1, on `wave` (default `stellar_wave()`).

    Continuum: a Planck curve of TEFF, = 1 at 5500 A. Lines: Balmer (strongest for hot stars, with
    Stark wings growing with logg), Ca II H&K and triplet, Mg b, Na D, Ca I, Fe I, K I and 120 weak metal
    lines at fixed wavelengths, whose depths scale with [Fe/H] and grow towards cool TEFF; strong lines
    saturate and grow pressure-broadened wings with LOGG. CH G band for cool stars, TiO bands below 4500 K.
    Instrumental resolution sigma = 100 km/s; no radial velocities (observed = rest frame).

    Labels, drawn independently and uniformly: TEFF [K] 4000-7500, LOGG [dex cgs] 1-5, FE_H [dex] -2-0.5.
    `labels` fixes any of them ({name: scalar or (n,) array}); the others are still drawn as without it.
    seed: anything np.random.default_rng accepts.
    """
    n = _check_n(n)
    wave = _grid(wave, stellar_wave)
    rng = np.random.default_rng(seed)
    lab = _draw(rng, n, {"TEFF": (4000.0, 7500.0), "LOGG": (1.0, 5.0), "FE_H": (-2.0, 0.5)})
    lab = _override(lab, labels, n, {"TEFF": ("> 0 K", lambda v: v > 0)})
    teff, logg, feh = lab["TEFF"], lab["LOGG"], lab["FE_H"]

    edges = pixel_edges(wave)
    log_t = np.zeros((n, wave.size))
    inst = _FWHM_SIGMA * _STAR_SIGMA_INST / C_KMS           # instrumental FWHM / lambda
    pressure = 10 ** (0.3 * (logg - 4.44))                   # damping-wing scale, 1 for the Sun
    ones = np.ones(n)
    for lam, group, tau0, dmax, lor in _STAR_LINES:
        tau = tau0 * _star_tau_factor(group, teff, logg, feh)
        # damping part of the curve of growth: wing width ~ sqrt(tau); Stark wings also grow with Teff
        wing = lor * pressure * np.sqrt(tau) * ((teff / 5800.0) ** 2 if group == "H" else 1.0)
        _absorb(log_t, edges, lam * ones, dmax * -np.expm1(-tau), lam * inst * ones, lam * wing / C_KMS)
    for lam, tau0 in zip(*_STAR_WEAK):           # unresolved at R ~ 1300: observed depth <= 0.4
        tau = tau0 * _star_tau_factor("metal", teff, logg, feh)
        _absorb(log_t, edges, lam * ones, 0.4 * -np.expm1(-tau), lam * inst * ones)
    lam, intrinsic = _G_BAND                      # CH molecules: only in cool atmospheres
    depth = 0.35 * -np.expm1(-10**feh * (5000.0 / teff) ** 6)
    _absorb(log_t, edges, lam * ones, depth, lam * np.hypot(inst, intrinsic / C_KMS) * ones)

    # line blanketing: the unresolved forest of weak metal lines that depresses the blue
    blanket = 0.35 * -np.expm1(-0.5 * 10**feh * (5200.0 / teff) ** 4)
    log_t += np.log1p(-blanket[:, None] * (3800.0 / wave) ** 4)

    tio = 0.4 * np.clip((4500.0 - teff) / 500.0, 0, 1) ** 2 * 10 ** (0.3 * feh)
    for head in _TIO_HEADS:
        dx = wave - head
        log_t += np.log1p(-tio[:, None] * np.where(dx > 0, np.exp(-np.maximum(dx, 0) / 100.0), 0.0))

    flux = _planck(wave, teff[:, None]) * np.exp(log_t)
    return Spectra(wave, flux, np.ones_like(flux), labels=lab, ids=_serial("star", n),
                   meta={"flux_unit": "relative (continuum = 1 at 5500 A)", "source": "specae synthetic stars",
                         "frame": "observed"})


def _serial(prefix, n):
    return np.array([f"{prefix}-{i:06d}" for i in range(n)], dtype=str)


# ---------------------------------------------------------------------------------------------
# galaxies

# Two stellar populations, light-weighted by AGE: (vacuum wavelength [A], rest EW [A], intrinsic FWHM [A])
_OLD_LINES = [
    (3934.77, 8.0, 10.0), (3969.59, 7.0, 10.0), (4102.90, 1.5, 12.0), (4301.21, 5.0, 15.0),
    (4341.69, 1.5, 12.0), (4384.78, 1.5, 4.0), (4862.69, 1.8, 10.0), (4958.98, 0.8, 3.0),
    (5168.76, 1.2, 2.0), (5174.12, 1.5, 2.0), (5185.04, 1.8, 2.0), (5271.01, 2.2, 3.0),
    (5329.52, 1.8, 3.0), (5407.27, 0.8, 3.0), (5891.58, 2.0, 2.0), (5897.55, 1.6, 2.0),
    (6564.61, 1.5, 10.0), (8500.35, 1.2, 5.0), (8544.44, 3.0, 5.0), (8664.52, 2.5, 5.0),
]
_YOUNG_LINES = [
    (3836.47, 5.0, 25.0), (3890.15, 7.0, 30.0), (3971.19, 8.0, 35.0), (4102.90, 9.0, 40.0),
    (4341.69, 8.0, 40.0), (4862.69, 7.0, 40.0), (6564.61, 5.0, 40.0), (3934.77, 1.0, 5.0),
]
_GAL_WEAK = _weak_lines(40, seed=4000, lo=3000.0, hi=9000.0)
_YOUNG_AGE, _OLD_AGE = 0.1, 12.0      # [Gyr] ages of the two populations
# Emission lines: vacuum wavelength [A] and name, as used in _emission_fluxes
_EMISSION = {"OII_3727": 3727.09, "OII_3730": 3729.88, "HD": 4102.90, "HG": 4341.69, "HB": 4862.69,
             "OIII_4960": 4960.30, "OIII_5008": 5008.24, "NII_6550": 6549.86, "HA": 6564.61,
             "NII_6585": 6585.27, "SII_6718": 6718.29, "SII_6733": 6732.68}
_GAL_SIGMA_INST = 70.0                # instrumental sigma [km/s] (SDSS-like)
_R_V = 4.05                           # Calzetti et al. (2000)


def _dust(wave, ebv):
    """Attenuation factor exp(-tau) for a lambda^-0.7 law (Charlot & Fall 2000), A_V = R_V E(B-V)."""
    return np.exp(-_R_V * ebv / 1.086 * (np.asarray(wave) / 5500.0) ** -0.7)


def _continua(rest):
    """Old (12 Gyr, K-giant light with a strong 4000 A break) and young (0.1 Gyr, B/A stars with a
    Balmer jump) continua at rest wavelengths `rest` [A], each = 1 at 5500 A."""
    old = _planck(rest, 4600.0) * (1 - 0.35 * _logistic((4000.0 - rest) / 25.0))   # D4000 ~ 1.9
    young = _planck(rest, 12000.0) * (1 - 0.25 * _logistic((3646.0 - rest) / 15.0))  # D4000 ~ 1.05
    return old, young


def _young_fraction(age):
    """(N,) fraction of the 5500 A light from the young population, for light-weighted log age AGE [Gyr]."""
    return np.clip(np.log(_OLD_AGE / age) / np.log(_OLD_AGE / _YOUNG_AGE), 0.0, 1.0)


def _emission_ratios(rng, n, young):
    """Draw HA_EW [A] and BPT ratios; a third to nearly all galaxies emit, more often when young."""
    emits = rng.uniform(size=n) < 0.25 + 0.6 * young
    ha_ew = np.where(emits, 10 ** (0.3 + rng.uniform(size=n) * (1.0 + 1.0 * young)), 0.0)
    agn = rng.uniform(size=n) < 0.2
    nii_sf = rng.uniform(-1.2, -0.25, n)
    # star-forming galaxies lie below the Kauffmann et al. (2003) line in the BPT diagram
    oiii_sf = 0.61 / (nii_sf - 0.05) + 1.3 - 0.15 - np.abs(rng.normal(0.0, 0.2, n))
    nii = np.where(agn, rng.uniform(-0.3, 0.3, n), nii_sf)
    oiii = np.where(agn, rng.uniform(-0.2, 1.0, n), oiii_sf)
    return ha_ew, oiii, nii


def _emission_fluxes(lab):
    """Intrinsic (dust-free) line fluxes relative to H-alpha, {name: (N,)}."""
    hb = 1 / 2.86                                            # case-B Balmer decrement
    o3, n2 = 10 ** lab["OIII_HB"], 10 ** lab["NII_HA"]
    return {"HA": 1.0, "HB": hb, "HG": 0.468 * hb, "HD": 0.259 * hb,
            "OIII_5008": o3 * hb, "OIII_4960": o3 * hb / 2.98, "NII_6585": n2, "NII_6550": n2 / 3.05,
            "OII_3727": 2.5 * hb / 2.3, "OII_3730": 2.5 * hb * 1.3 / 2.3,
            "SII_6718": 0.3 * 1.3 / 2.3, "SII_6733": 0.3 / 2.3}


def _galaxy_model(wave, shift, lab, amp):
    """Galaxy flux density (N, P) on `wave` [A] for spectra shifted by `shift` = 1+z (ones: rest frame)."""
    n = len(shift)
    edges = pixel_edges(wave)
    f_young = _young_fraction(lab["AGE"])
    vel = np.hypot(lab["VDISP"], _GAL_SIGMA_INST) * _FWHM_SIGMA / C_KMS      # FWHM / lambda
    rest = wave / shift[:, None]
    old, young = _continua(rest)
    parts = []
    for cont, lines, weak in ((old, _OLD_LINES, True), (young, _YOUNG_LINES, False)):
        log_t = np.zeros((n, wave.size))
        table = lines + ([(w, 0.8 * s, 2.0) for w, s in zip(*_GAL_WEAK)] if weak else [])
        for lam, ew, intrinsic in table:
            fwhm = np.hypot(lam * vel, intrinsic)                 # rest Angstrom
            depth = np.minimum(ew / (1.0645 * fwhm), 0.9)          # keeps EW when VDISP broadens the line
            _absorb(log_t, edges, lam * shift, depth, fwhm * shift)
        parts.append(cont * np.exp(log_t))
    stars = (1 - f_young)[:, None] * parts[0] + f_young[:, None] * parts[1]
    flux = amp[:, None] * _dust(rest, lab["EBV"][:, None]) * stars / shift[:, None]

    # H-alpha flux = EW x the stellar continuum there; both suffer the same dust, so use dust-free values
    c_old, c_young = _continua(np.array([_EMISSION["HA"]]))
    f_ha = lab["HA_EW"] * amp * ((1 - f_young) * c_old[0] + f_young * c_young[0])
    for name, ratio in _emission_fluxes(lab).items():
        lam = _EMISSION[name]
        line_flux = f_ha * ratio * _dust(lam, lab["EBV"])
        idx, prof = _line(edges, lam * shift, lam * vel * shift, area=True)
        rows = np.broadcast_to(np.arange(n)[:, None], idx.shape)
        np.add.at(flux, (rows, idx), line_flux[:, None] * prof)
    return flux


def _d4000(lab, amp):
    """Narrow 4000 A break (Balogh et al. 1999): <F_nu> 4000-4100 A over <F_nu> 3850-3950 A, rest frame."""
    fine = np.arange(3850.0, 4100.5, 1.0)
    f_nu = _galaxy_model(fine, np.ones(len(amp)), lab, amp) * fine**2
    red, blue = fine >= 4000.0, fine <= 3950.0
    return f_nu[:, red].mean(axis=1) / f_nu[:, blue].mean(axis=1)


def galaxy_spectra(n: int, seed=0, wave: np.ndarray | None = None, z_range=(0.02, 0.3),
                   rest_wave: np.ndarray | None = None, labels: dict | None = None) -> Spectra:
    """Noise-free galaxy spectra, ivar = 1, in 1e-17 erg/s/cm^2/A, observed frame on `wave`
    (default `galaxy_wave()`); or, if `rest_wave` is given, in the rest frame on that grid instead.

    Model: a 12-Gyr (red, strong 4000 A break, metal lines) and a 0.1-Gyr (blue, Balmer jump, strong
    Balmer absorption) population mixed by AGE, lines broadened by VDISP and a 70 km/s instrument,
    dust attenuation (lambda^-0.7, R_V = 4.05), and nebular emission: H-alpha..H-delta (case B),
    [OII] 3727,3730, [OIII] 4960,5008, [NII] 6550,6585, [SII] 6718,6733, with the same dust and VDISP.

    Labels: Z (uniform in z_range), AGE [Gyr] light-weighted log-mean age, log-uniform 0.1-12;
    VDISP [km/s] 50-350; EBV [mag] 0-0.3; HA_EW [A] rest-frame H-alpha emission equivalent width
    (0 = no emission lines; 2-200 A otherwise, more often and stronger in young galaxies);
    OIII_HB = log10 [OIII]5008/H-beta, NII_HA = log10 [NII]6585/H-alpha (intrinsic; star-forming below
    the Kauffmann line, 20% AGN-like; drawn, but without effect, when HA_EW = 0);
    D4000: the narrow 4000 A break measured on the noise-free rest-frame model.
    `labels` fixes any drawn label ({name: scalar or (n,) array}); D4000 is then measured accordingly.
    """
    n = _check_n(n)
    lo, hi = z_range
    if not -1 < lo <= hi:
        raise SpecaeError(f"z_range {z_range} must satisfy -1 < low <= high")
    rng = np.random.default_rng(seed)
    lab = _draw(rng, n, {"Z": (lo, hi), "AGE": (_YOUNG_AGE, _OLD_AGE), "VDISP": (50.0, 350.0),
                         "EBV": (0.0, 0.3)}, log=("AGE",))
    lab["HA_EW"], lab["OIII_HB"], lab["NII_HA"] = _emission_ratios(rng, n, _young_fraction(lab["AGE"]))
    amp = 10 ** rng.uniform(np.log10(2.0), np.log10(30.0), n)       # flux density at 5500 A rest
    lab = _override(lab, labels, n, {"Z": ("> -1", lambda v: v > -1), "AGE": ("> 0 Gyr", lambda v: v > 0),
                                     "VDISP": (">= 0 km/s", lambda v: v >= 0), "HA_EW": (">= 0 A", lambda v: v >= 0)})

    if rest_wave is not None:
        if wave is not None:
            raise SpecaeError("give either wave (observed frame) or rest_wave (rest frame), not both")
        grid, shift, frame = _grid(rest_wave, galaxy_wave), np.ones(n), "rest"
    else:
        grid, shift, frame = _grid(wave, galaxy_wave), 1 + lab["Z"], "observed"
    flux = _galaxy_model(grid, shift, lab, amp)
    lab["D4000"] = _d4000(lab, amp)
    return Spectra(grid, flux, np.ones_like(flux), labels=lab, ids=_serial("gal", n),
                   meta={"flux_unit": GALAXY_FLUX_UNIT, "source": "specae synthetic galaxies", "frame": frame})


# ---------------------------------------------------------------------------------------------
# noise


def _sky_lines():
    """Night-sky emission lines [A] and relative strengths: [OI], Na D, and a seeded OH forest
    that thickens and brightens towards the red, like the real one."""
    rng = np.random.default_rng(6300)
    oh = 6200.0 + (10500.0 - 6200.0) * rng.uniform(size=90) ** 0.7
    strength = 10 ** rng.uniform(0.3, 1.5, 90) * (oh / 7000.0) ** 2
    atomic = np.array([5578.89, 5891.58, 5897.55, 6302.04, 6365.54])
    return np.concatenate([atomic, oh]), np.concatenate([[40.0, 6.0, 6.0, 15.0, 5.0], strength])


_SKY = _sky_lines()


def _sky_variance(wave):
    """(npix,) extra noise variance from sky lines, in units of the sky-free variance."""
    edges = pixel_edges(wave)
    out = np.zeros((1, wave.size))
    fwhm = _FWHM_SIGMA * 70.0 / C_KMS                      # sky lines are unresolved: instrumental width
    for lam, s in zip(*_SKY):
        idx, prof = _line(edges, np.array([lam]), np.array([lam * fwhm]))
        np.add.at(out, (np.zeros_like(idx), idx), s * prof)
    return out[0]


def _chunks(rng, n, npix, max_chunks=3, length=(5, 60), min_chunks=0):
    """(n, npix) bool: min_chunks..max_chunks contiguous bad runs per spectrum (bad CCD columns, dropouts)."""
    count = rng.integers(min_chunks, max_chunks + 1, n)
    start = rng.integers(0, npix, (n, max_chunks))
    size = rng.integers(length[0], length[1] + 1, (n, max_chunks))
    pix = np.arange(npix)
    on = (np.arange(max_chunks) < count[:, None])[..., None]
    return (on & (pix >= start[..., None]) & (pix < (start + size)[..., None])).any(axis=1)


def _snr_range(snr):
    lo, hi = (snr, snr) if np.ndim(snr) == 0 else snr
    if not 0 < lo <= hi or not np.isfinite(hi):
        raise SpecaeError(f"snr {snr!r} must be a positive number or a (low, high) range with 0 < low <= high")
    return float(lo), float(hi)


def _noise_start(clean: Spectra, seed, snr):
    """(rng, truth (N, npix) float64, S/N per spectrum log-uniform in `snr`, median |flux| per spectrum (1 for
    an all-zero spectrum: noise of order 1)): what both noise models start from."""
    lo, hi = _snr_range(snr)
    rng = np.random.default_rng(seed)
    truth = clean.flux.astype(np.float64)
    s2n = lo * (hi / lo) ** rng.uniform(size=len(truth))
    ref = np.median(np.abs(truth), axis=1)
    return rng, truth, s2n, np.where(ref > 0, ref, 1.0)


def add_noise(clean: Spectra, seed=0, snr=(5, 80), sky_lines: bool = True, masked_chunks: bool = True,
              dead_pixels: bool = True) -> Spectra:
    """Survey-like noisy copy of `clean` (whose flux is the truth); labels, ids and meta are copied.

    Each spectrum gets S/N = median|flux| / median(sigma) drawn log-uniformly in `snr` (low, high), or
    exactly `snr` if a number; stored as label SNR. Per-pixel variance = source shot noise
    (|flux| x median|flux|) + a sky/read floor (0.5 median|flux|^2), times sky lines at fixed observed
    wavelengths (brightness varying per spectrum) and a throughput loss towards both ends of the grid.
    noisy = clean + sigma * N(0, 1). Then masks (ivar = 0): 0-3 contiguous chunks of 5-60 pixels with
    flux 0, a 1-80 pixel masked end in 30% of spectra (each side), and 0.2% dead pixels holding
    +20 sigma spikes, so garbage under the mask is finite but must be ignored. Pixels already masked
    in `clean` stay masked.
    """
    rng, truth, s2n, ref = _noise_start(clean, seed, snr)
    n, npix = truth.shape
    var = np.abs(truth) * ref[:, None] + 0.5 * ref[:, None] ** 2
    if sky_lines:
        var *= 1 + rng.uniform(0.5, 2.0, n)[:, None] * _sky_variance(clean.wave)
    x = np.linspace(-1, 1, npix)
    var *= (1 + 2 * x**6) ** 2                              # sigma up to 3x at the grid ends
    sigma = np.sqrt(var)
    sigma *= (ref / (s2n * np.median(sigma, axis=1)))[:, None]
    flux = truth + sigma * rng.standard_normal((n, npix))

    mask = clean.mask.copy()
    if masked_chunks:
        chunks = _chunks(rng, n, npix)
        pix = np.arange(npix)
        left = np.where(rng.uniform(size=n) < 0.3, rng.integers(1, 81, n), 0)
        right = np.where(rng.uniform(size=n) < 0.3, rng.integers(1, 81, n), 0)
        chunks |= (pix < left[:, None]) | (pix >= npix - right[:, None])
        flux[chunks] = 0.0
        mask |= chunks
    if dead_pixels:
        dead = rng.uniform(size=(n, npix)) < 0.002
        flux[dead] = truth[dead] + 20 * sigma[dead]
        mask |= dead
    ivar = np.where(mask, 0.0, sigma**-2.0)
    return Spectra(clean.wave, flux, ivar, mask, {**clean.labels, "SNR": s2n}, clean.ids, clean.scale,
                   dict(clean.meta))


def _clusters(rng, n, npix, fraction, length=(2, 5), factor=(2.0, 6.0)):
    """(n, npix) sigma factors: clusters of `length` pixels at random places, each with its own factor drawn
    uniformly in `factor`, covering about `fraction` (n,) of each spectrum; 1 elsewhere."""
    lo, hi = length
    starts = rng.uniform(size=(n, npix)) < (fraction / ((lo + hi) / 2))[:, None]
    size = rng.integers(lo, hi + 1, (n, npix))
    amp = np.where(starts, rng.uniform(*factor, (n, npix)), 1.0)
    out = np.ones((n, npix))
    for offset in range(hi):        # each start spreads its factor over the next size - 1 pixels
        grown = np.where(size[:, :npix - offset] > offset, amp[:, :npix - offset], 1.0)
        out[:, offset:] = np.maximum(out[:, offset:], grown)
    return out


def add_survey_noise(clean: Spectra, seed=0, snr=(3, 100)) -> Spectra:
    """A second survey's noisy copy of `clean`, unlike `add_noise`'s in every respect, so that a model (and the
    constants of its error model) tuned on one can be tested on the other; labels, ids and meta are copied.

    S/N (label SNR, defined as in add_noise: median|flux| / median(sigma)) log-uniform in `snr`. Per-pixel
    variance: a shot-noise share drawn per spectrum (0-100 %, the rest a flat floor) and a random tilt (sigma
    up to 2x higher at one end or the other), in place of add_noise's fixed mix and symmetric ends. Inflated
    pixels: 2-5 % of each spectrum in clusters of 2-5 pixels at random places (not at fixed sky wavelengths),
    sigma 2-6x larger there, recorded in ivar. Masks (ivar = 0): 0.5 % single dead pixels and 1-2 dead runs
    of 2-25 pixels; every masked pixel (those masked in `clean` too) holds garbage: 0, or a large value of
    either sign (10-1000x the spectrum's median |flux|), so a model that reads masked flux fails visibly.
    """
    rng, truth, s2n, ref = _noise_start(clean, seed, snr)
    n, npix = truth.shape
    shot = rng.uniform(size=n)[:, None]
    var = ref[:, None] * (shot * np.abs(truth) + (1 - shot) * ref[:, None])
    tilt = rng.uniform(-np.log(2), np.log(2), n)[:, None]
    inflated = _clusters(rng, n, npix, rng.uniform(0.02, 0.05, n))
    sigma = np.sqrt(var) * np.exp(tilt * np.linspace(-1, 1, npix)) * inflated
    sigma *= (ref / (s2n * np.median(sigma, axis=1)))[:, None]
    flux = truth + sigma * rng.standard_normal((n, npix))

    mask = clean.mask | _chunks(rng, n, npix, max_chunks=2, length=(2, 25), min_chunks=1)
    mask |= rng.uniform(size=(n, npix)) < 0.005
    huge = ref[:, None] * 10 ** rng.uniform(1, 3, (n, npix)) * rng.choice([-1.0, 1.0], (n, npix))
    flux[mask] = np.where(rng.uniform(size=(n, npix)) < 0.3, 0.0, huge)[mask]
    ivar = np.where(mask, 0.0, sigma**-2.0)
    return Spectra(clean.wave, flux, ivar, mask, {**clean.labels, "SNR": s2n}, clean.ids, clean.scale,
                   dict(clean.meta))


# ---------------------------------------------------------------------------------------------
# ready-made data sets


def default_dataset(kind: str = "stellar", n: int = 1000, seed=0, snr=(5, 80)) -> tuple[Spectra, Spectra]:
    """(noisy, clean) spectra of `kind` 'stellar' or 'galaxy' on the default grids.

    seed: an int (or sequence of ints); the model and the noise use independent streams spawned from it."""
    makers = {"stellar": stellar_spectra, "galaxy": galaxy_spectra}
    if kind not in makers:
        raise SpecaeError(f"unknown synthetic kind {kind!r}; choose 'stellar' or 'galaxy'")
    model_seed, noise_seed = np.random.SeedSequence(seed).spawn(2)
    clean = makers[kind](n, seed=model_seed)
    return add_noise(clean, seed=noise_seed, snr=snr), clean


def write_default_data(directory, seed: int = 0, sizes: dict | None = None) -> list[Path]:
    """Write the bundled set into `directory`: stellar.h5, galaxy.h5 (noisy, with labels) and
    stellar_truth.h5, galaxy_truth.h5 (the same spectra noise-free). `sizes`: {kind: n}, default
    BUNDLED_SIZES. Returns the paths written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (kind, n) in enumerate({**BUNDLED_SIZES, **(sizes or {})}.items()):
        noisy, clean = default_dataset(kind, n=n, seed=[seed, i])
        for spectra, path in ((noisy, directory / f"{kind}.h5"), (clean, directory / f"{kind}_truth.h5")):
            write_h5(spectra, path)
            paths.append(path)
    return paths
