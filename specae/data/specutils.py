"""Conversions between specae's containers and specutils' `Spectrum` (`Spectrum1D` before specutils 2).

specutils is optional (`pip install "specae[specutils]"`): this module imports it when called, so specae works
without it. Used by `Spectra.from_specutils`, `Spectra.to_specutils` and `Denoised.to_specutils`.
"""

from __future__ import annotations

import numpy as np

from specae.data.spectra import Spectra
from specae.data.surveys.sdss import FLUX_UNIT as SURVEY_FLUX_UNIT
from specae.errors import SpecaeError

# the survey readers' SDSS/DESI/APOGEE flux unit in astropy's words (it reads "A" as Ampere)
SURVEY_ASTROPY_UNIT = "1e-17 erg / (s cm2 Angstrom)"


def spectrum_class():
    """specutils' spectrum class: `Spectrum` (specutils >= 2) or `Spectrum1D` (older)."""
    try:
        import specutils
    except ImportError:
        raise SpecaeError('specutils is not installed: pip install "specae[specutils]"') from None
    return getattr(specutils, "Spectrum", None) or specutils.Spectrum1D


def astropy_unit(flux_unit: str):
    """The astropy unit of a specae flux unit text; dimensionless for words like "relative" or
    "continuum-normalised", which the text (kept in the spectrum's meta) still says."""
    import astropy.units as u

    if flux_unit == SURVEY_FLUX_UNIT:
        return u.Unit(SURVEY_ASTROPY_UNIT)
    try:
        return u.Unit(flux_unit) if flux_unit else u.dimensionless_unscaled
    except ValueError:
        return u.dimensionless_unscaled


def make_spectrum(wave, flux, mask, flux_unit: str, uncertainty, values, power: int, meta: dict):
    """A specutils spectrum of flux (N, npix) or (npix,) in `flux_unit` on `wave` (npix,) Angstrom, `mask` True =
    bad; `uncertainty` an astropy NDUncertainty class holding `values` in the flux unit to the `power` (1 for a
    standard deviation, -2 for an inverse variance)."""
    import astropy.units as u

    unit = astropy_unit(flux_unit)
    return spectrum_class()(flux=np.asarray(flux) * unit, spectral_axis=np.asarray(wave) * u.AA,
                            uncertainty=uncertainty(np.array(values), unit=unit ** power),
                            mask=np.array(mask, bool), meta={**meta, "flux_unit": flux_unit})


def to_specutils(spectra: Spectra):
    """`spectra` as one specutils spectrum: flux (N, npix) in meta["flux_unit"], InverseVariance, the mask;
    ids, labels, scale and meta in its meta["specae"], so that `from_specutils` gives `spectra` back exactly."""
    from astropy.nddata import InverseVariance

    keep = {"ids": spectra.ids.copy(), "labels": {k: v.copy() for k, v in spectra.labels.items()},
            "scale": spectra.scale.copy(), "meta": dict(spectra.meta)}
    return make_spectrum(spectra.wave, spectra.flux, spectra.mask, spectra.meta["flux_unit"],
                         InverseVariance, spectra.ivar, -2, {"specae": keep})


def from_specutils(spectrum) -> Spectra:
    """A `Spectra` from a specutils `Spectrum` (flux (npix,) or (N, npix)) or a `SpectrumList` (several,
    rebinned onto one grid when theirs differ, see `specae.data.readers.stack_spectra`).

    Wavelengths in Angstrom (from any spectral unit); the flux unit's text in meta["flux_unit"]; the
    uncertainty, of any astropy kind (standard deviation, variance, inverse variance), as ivar in the flux's
    unit; the mask (True = bad). A spectrum made by `to_specutils` gives its ids, labels, scale and meta back.
    """
    if isinstance(spectrum, (list, tuple)):
        from specae.data.readers import stack_spectra

        if not spectrum:
            raise SpecaeError("an empty SpectrumList holds no spectra")
        return stack_spectra([from_specutils(s) for s in spectrum],
                             names=[f"spectrum {k}" for k in range(len(spectrum))])
    import astropy.units as u
    from astropy.nddata import InverseVariance

    if not hasattr(spectrum, "spectral_axis") or not hasattr(spectrum, "flux"):
        raise SpecaeError(f"not a specutils spectrum: {type(spectrum).__name__}")
    if spectrum.uncertainty is None:
        raise SpecaeError("the spectrum has no uncertainty; specae needs one (StdDevUncertainty, VarianceUncertainty "
                          "or InverseVariance)")
    unit = spectrum.flux.unit
    try:
        wave = spectrum.spectral_axis.to_value(u.AA, equivalencies=u.spectral())
        ivar = spectrum.uncertainty
        if not isinstance(ivar, InverseVariance):
            with np.errstate(divide="ignore"):     # sigma 0 or inf: ivar inf (masked by Spectra) or 0
                ivar = ivar.represent_as(InverseVariance)
        ivar = ivar.array if ivar.unit is None else (ivar.array * ivar.unit).to_value(unit ** -2)
    except (u.UnitsError, TypeError, ValueError) as e:
        raise SpecaeError(f"the spectrum's spectral axis or uncertainty cannot be converted ({e})") from None
    flux = np.asarray(spectrum.flux.value)
    mask = np.zeros(flux.shape, bool) if spectrum.mask is None else np.asarray(spectrum.mask, bool)
    if wave.size > 1 and wave[0] > wave[-1]:      # a frequency or energy axis runs the other way
        wave, flux, ivar, mask = wave[::-1], flux[..., ::-1], ivar[..., ::-1], mask[..., ::-1]
    kept = spectrum.meta.get("specae", {})
    text = spectrum.meta.get("flux_unit")
    if text is None or astropy_unit(text) != unit:
        text = SURVEY_FLUX_UNIT if unit == astropy_unit(SURVEY_FLUX_UNIT) else unit.to_string()
    meta = {**kept.get("meta", {}), "flux_unit": text}
    return Spectra(wave, flux, ivar, mask, kept.get("labels", {}), kept.get("ids"), kept.get("scale"), meta)


def denoised_to_specutils(denoised, flux_unit: str):
    """A `Denoised`'s flux as a specutils spectrum: `flux_unit`, StdDevUncertainty(sigma), mask = unseen (no
    estimate: flux 0, sigma inf)."""
    from astropy.nddata import StdDevUncertainty

    return make_spectrum(denoised.wave, denoised.flux, denoised.unseen, flux_unit, StdDevUncertainty, denoised.sigma,
                         1, {"inpainted": denoised.inpainted.copy()})
