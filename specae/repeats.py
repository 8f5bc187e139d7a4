"""Validation on repeat observations: each observation of an object, denoised, against the raw other ones.

Spectra that share a group label's value (e.g. APOGEE visits of one star) see the same object through
independent noise. For observation i of an object (raw flux x_i, sigma s_i = ivar_i^-1/2, denoised d_i with
sigma sd_i) and another observation j, brought to i's frame by the relative Doppler factor
(1 + z_j) / (1 + z_i) (z = v/c from a velocity label in km/s, or a redshift label; no shift without either):

    match        p(lam) = sum_m c_m P_m(t),  Legendre P_m, m <= degree, t in [-1, 1] along log lam;
                 c = argmin sum_k w_k (x_j,k - p_k d_i,k)^2,  w = 1 / (s_j^2 + p^2 sd_i^2)
                 (weighted least squares of the ratio x_j / d_i: continuum and flux calibration do not count)
    noise left   1.4826 MAD( (x_j - p d_i) / s_j )                           1 when d_i is the truth
    raw pair     1.4826 MAD( (x_j - p' x_i) / sqrt(p'^2 s_i^2 + s_j^2) )      1 when i, j differ by noise alone
    u            (x_j - p d_i) / sqrt(p^2 sd_i^2 + s_j^2)
    spread       1.4826 MAD(u)  and the fractions |u| < 1, |u| < 2       1, 68.3 %, 95.4 % when sd_i is right

Every ordered pair (i, j) of an object is compared on the pixels valid in both raw observations where every
denoiser gives a finite sigma, the same pixels for all the statistics. The raw pair is the reference: what
differs between two observations beyond their noise (variability, telluric and sky residuals, a wrong
velocity) lifts it above 1, and no denoiser can get below that floor.
"""

from __future__ import annotations

from dataclasses import dataclass

import h5py
import numpy as np
from numpy.polynomial import legendre

from specae.plumbing import atomic_path
from specae.data.spectra import Spectra
from specae.errors import SpecaeError

C_KMS = 299792.458
MAD_TO_SIGMA = 1.4826
CLIP = 5.0               # residuals beyond this many sigma (cosmic rays, sky lines) leave the second match fit
MIN_PIXELS_PER_TERM = 10  # fewer compared pixels per match coefficient: the pair is not scored (NaN)
STATS = ("noise_left", "noise_left_baseline", "noise_left_raw", "spread", "within1", "within2")


@dataclass
class RepeatCheck:
    """Per ordered pair (i denoised, j raw) of observations of one object, P pairs; M objects; N input rows.

    Per-object and overall values (`per_object`, `overall`): the robust statistics are the median over the
    pairs, the fractions pool the pairs' pixels.
    """
    objects: np.ndarray              # (M,) str: the group label's value of each object with 2+ observations
    n_obs: np.ndarray                # (M,) its observations
    ids: np.ndarray                  # (N,) ids of the input spectra
    pair_object: np.ndarray          # (P,) index into `objects`
    pair_denoised: np.ndarray        # (P,) input row of observation i, the denoised one
    pair_other: np.ndarray           # (P,) input row of observation j, the raw other one
    n_pixels: np.ndarray             # (P,) pixels compared
    noise_left: np.ndarray           # (P,) 1.4826 MAD((x_j - p d_i) / s_j)
    noise_left_baseline: np.ndarray  # (P,) the same for the baseline's d_i (NaN without a baseline)
    noise_left_raw: np.ndarray       # (P,) 1.4826 MAD((x_j - p' x_i) / sqrt(p'^2 s_i^2 + s_j^2))
    spread: np.ndarray               # (P,) 1.4826 MAD(u)
    within1: np.ndarray              # (P,) fraction of the pixels with |u| < 1
    within2: np.ndarray              # (P,) fraction with |u| < 2

    def _combine(self, pairs: np.ndarray) -> dict[str, float]:
        """The statistics of the scored pairs among `pairs` (bool, (P,)) combined."""
        scored = pairs & np.isfinite(self.spread)
        out = {}
        for k in STATS:
            v = getattr(self, k)[scored]
            if k.startswith("within"):
                n = self.n_pixels[scored]
                out[k] = float((v * n).sum() / n.sum()) if n.sum() else np.nan
            else:
                out[k] = float(np.median(v)) if v.size else np.nan
        return out

    @property
    def per_object(self) -> dict[str, np.ndarray]:
        """{statistic: (M,) array}, each object's pairs combined."""
        rows = [self._combine(self.pair_object == m) for m in range(len(self.objects))]
        return {k: np.array([r[k] for r in rows]) for k in STATS}

    @property
    def overall(self) -> dict[str, float]:
        """{statistic: value} over all pairs."""
        return self._combine(np.ones(len(self.pair_object), bool))

    def write(self, path, attrs: dict | None = None) -> None:
        """HDF5 file (written atomically): groups `pairs/` and `objects/` of arrays, the overall values and
        `attrs` (e.g. the settings) as root attributes."""
        per_object = self.per_object
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            for k, v in {**self.overall, **(attrs or {})}.items():
                f.attrs[k] = "" if v is None else v
            o = f.create_group("objects")
            o.create_dataset("name", data=self.objects.astype(object), dtype=h5py.string_dtype())
            o["n_obs"] = self.n_obs
            for k, v in per_object.items():
                o[k] = v
            p = f.create_group("pairs")
            for k in ("pair_object", "pair_denoised", "pair_other", "n_pixels", *STATS):
                p[k.removeprefix("pair_")] = getattr(self, k)
            for end in ("denoised", "other"):
                p.create_dataset(f"{end}_id", data=self.ids[getattr(self, f"pair_{end}")].astype(object),
                                 dtype=h5py.string_dtype())


def repeats(model, spectra: Spectra, group: str, velocity: str | None = None, redshift: str | None = None,
            baseline=None, degree: int = 3, **options) -> RepeatCheck:
    """Denoise every observation and compare it with the raw other observations of its object (module doc).

    model: a trained specae model (denoised with `specae.denoise.denoise(model, spectra, **options)` on its
    grid, onto which the spectra are resampled) or any denoiser with `denoise(spectra) -> (flux, sigma)` on
    the spectra's grid (specae.baselines). group: the label naming the object (rows whose value is "" or NaN
    belong to none). velocity (km/s) or redshift: the label that puts the observations on the rest frame.
    baseline: None, a denoiser with `denoise`, or a function fitting one on the spectra (all rows, on the
    compared grid), e.g. `lambda s: WeightedPCA().fit(s)`. degree: of the multiplicative match.
    """
    if velocity and redshift:
        raise SpecaeError("give a velocity or a redshift label, not both")
    key = _group_key(spectra, group)
    names, index, counts = np.unique(key, return_inverse=True, return_counts=True)
    repeated = (counts >= 2) & (names != "")
    if not repeated.any():
        raise SpecaeError(f"no object has 2 or more observations by label {group!r} ({len(spectra)} spectra, "
                          f"{int((names != '').sum())} distinct values)")
    z = _frame_redshifts(spectra, velocity, redshift)

    if hasattr(model, "denoise"):
        predict = model.denoise
    else:
        from specae.data.tensors import on_grid
        from specae.denoise import denoise

        spectra = on_grid(spectra, model.wave)

        def predict(s):
            d = denoise(model, s, **options)
            return d.flux, d.sigma
    if baseline is not None and not hasattr(baseline, "denoise"):
        baseline = baseline(spectra)
    denoised = tuple(np.asarray(a, np.float64) for a in predict(spectra))
    base = tuple(np.asarray(a, np.float64) for a in baseline.denoise(spectra)) if baseline is not None else None
    raw = (spectra.flux.astype(np.float64), _sigma(spectra.ivar))
    usable = (spectra.ivar > 0) & np.isfinite(denoised[1]) & (np.isfinite(base[1]) if base is not None else True)

    t = np.log(spectra.wave)
    basis = legendre.legvander(2 * (t - t[0]) / (t[-1] - t[0]) - 1, degree)   # (npix, degree + 1)
    objects = np.flatnonzero(repeated)
    rows = []
    for m, obj in enumerate(objects):
        members = np.flatnonzero(index == obj)
        for i in members:
            others = members[members != i]
            seen = spectra.select(others)
            if z is not None:   # the others in i's frame
                seen = seen.to_rest_frame((1 + z[others]) / (1 + z[i]) - 1, wave=spectra.wave)
            for j, x_j, ivar_j in zip(others, seen.flux.astype(np.float64), seen.ivar):
                ok = usable[i] & (ivar_j > 0)
                cut = [None if a is None else (a[0][i][ok], a[1][i][ok]) for a in (denoised, base, raw)]
                stats = _pair(basis[ok], (x_j[ok], _sigma(ivar_j[ok])), *cut)
                rows.append((m, i, j, int(ok.sum()), *stats))
    return RepeatCheck(names[objects], counts[objects], spectra.ids, *(np.array(c) for c in zip(*rows)))


def _group_key(spectra: Spectra, group: str) -> np.ndarray:
    """(N,) str value of label `group`; "" where it is missing (NaN or empty)."""
    if group not in spectra.labels:
        raise SpecaeError(f"no label {group!r} to group the observations by "
                          f"(labels: {', '.join(sorted(spectra.labels)) or 'none'})")
    value = np.asarray(spectra.labels[group])
    missing = np.isnan(value) if value.dtype.kind == "f" else np.zeros(len(value), bool)
    return np.where(missing, "", np.char.strip(value.astype(str)))


def _frame_redshifts(spectra: Spectra, velocity: str | None, redshift: str | None) -> np.ndarray | None:
    """(N,) redshifts that put each spectrum on its rest frame, or None for no shift."""
    if redshift:
        return spectra.redshifts(redshift)
    if not velocity:
        return None
    return spectra.numeric_label(velocity, "velocity", lambda v: np.abs(v) < C_KMS,
                                 "faster-than-light velocities") / C_KMS


def _pair(basis, other, denoised, base, raw) -> tuple[float, ...]:
    """(noise left, baseline's noise left, raw pair, spread, within 1, within 2) of one ordered pair from the
    compared pixels' (flux, sigma) of the other observation, the denoised one, the baseline's (or None) and the
    raw one."""
    if len(basis) < MIN_PIXELS_PER_TERM * basis.shape[1]:
        return (np.nan,) * len(STATS)
    x_j, s_j = other

    def residual(x, s):
        """x_j - p x and its sigma sqrt(p^2 s^2 + s_j^2), p the matched polynomial."""
        p, keep = np.ones_like(x), np.ones(x.size, bool)
        for _ in range(2):   # the second pass weighs with the first p and leaves out outliers
            sw = np.where(keep, 1 / np.sqrt(s_j ** 2 + (p * s) ** 2), 0.0)
            p = basis @ np.linalg.lstsq(basis * (x * sw)[:, None], x_j * sw, rcond=None)[0]
            r, total = x_j - p * x, np.sqrt(s_j ** 2 + (p * s) ** 2)
            keep = np.abs(r) < CLIP * _robust_rms(r / total)
        return r, total

    r, total = residual(*denoised)
    u = r / total
    return (_robust_rms(r / s_j), _robust_rms(residual(*base)[0] / s_j) if base is not None else np.nan,
            _robust_rms(np.divide(*residual(*raw))), _robust_rms(u), float(np.mean(np.abs(u) < 1)),
            float(np.mean(np.abs(u) < 2)))


def _sigma(ivar: np.ndarray) -> np.ndarray:
    """1/sqrt(ivar) in float64; inf where ivar is 0."""
    ivar = np.asarray(ivar, np.float64)
    return np.where(ivar > 0, 1 / np.sqrt(np.where(ivar > 0, ivar, 1.0)), np.inf)


def _robust_rms(x: np.ndarray) -> float:
    """1.4826 x the median absolute deviation from the median: the RMS of normal values, robust to outliers."""
    return float(MAD_TO_SIGMA * np.median(np.abs(x - np.median(x))))
