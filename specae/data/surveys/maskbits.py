"""Which pixel flag bits of each survey mask a pixel, by default as each survey documents them for science
use, and `parse_mask_bits` for the `--mask-bits SURVEY=BITS` option.

A pixel whose flags hold any chosen bit is masked (ivar 0); pixels the pipeline already gave ivar 0 stay masked
whatever the bits.
"""

from __future__ import annotations

import numpy as np

from specae.errors import SpecaeError

ALL_BITS = 0xFFFFFFFF   # every bit of a 32-bit flag word: any flag masks

# SDSS/BOSS SPPIXMASK (and_mask of a coadd, mask of an exposure), https://www.sdss3.org/dr10/algorithms/
# bitmask_sppixmask.php: bits 0-15 describe a whole fibre or half-spectrum (MANYBADCOLUMNS: > 10 % of the
# CCD columns bad, set on every pixel of a half), bits 16-31 a pixel. "The conditions that are considered
# very bad are already used to set ... the inverse variance to zero. The most useful mask bit to look at is
# BRIGHTSKY." So: the pixel bits documented as INVVAR=0 (FULLREJECT, NOSKY; NODATA is deprecated in favour of
# ivar) and BRIGHTSKY. Every and_mask bit, as before, masks 1761 of 3838 pixels of spec-0266-51602-0013.
SDSS_BITS = {"NOPLUG": 0, "BADTRACE": 1, "BADFLAT": 2, "BADARC": 3, "MANYBADCOLUMNS": 4, "MANYREJECTED": 5,
             "LARGESHIFT": 6, "BADSKYFIBER": 7, "NEARWHOPPER": 8, "WHOPPER": 9, "SMEARIMAGE": 10, "SMEARHIGHSN": 11,
             "SMEARMEDSN": 12, "NEARBADPIXEL": 16, "LOWFLAT": 17, "FULLREJECT": 18, "PARTIALREJECT": 19,
             "SCATTEREDLIGHT": 20, "CROSSTALK": 21, "NOSKY": 22, "BRIGHTSKY": 23, "NODATA": 24, "COMBINEREJ": 25,
             "BADFLUXFACTOR": 26, "BADSKYCHI": 27, "REDMONSTER": 28}
# DESI spectral pixel mask (desispec.maskbits.specmask: SOMEBADPIX, ALLBADPIX, COSMIC, LOWFLAT, BADFIBERFLAT,
# BRIGHTSKY, BADSKY, ...): the coadd data model documents MASK 0 as good, and the coadder gives masked pixels
# ivar 0, so any bit masks.
DESI_BITS = {"SOMEBADPIX": 0, "ALLBADPIX": 1, "COSMIC": 2, "LOWFLAT": 3, "BADFIBERFLAT": 4, "BRIGHTSKY": 5,
             "BADSKY": 6}
# APOGEE_PIXMASK (https://www.sdss4.org/dr17/irspec/apogee-bitmasks): bits 0-7 mark bad pixels; bits 8+
# (Littrow ghost, persistence, significant sky/telluric lines, PSF) are warnings, kept.
APOGEE_BITS = {"BADPIX": 0, "CRPIX": 1, "SATPIX": 2, "UNFIXABLE": 3, "BADDARK": 4, "BADFLAT": 5, "BADERR": 6,
               "NOSKY": 7, "LITTROW_GHOST": 8, "PERSIST_HIGH": 9, "PERSIST_MED": 10, "PERSIST_LOW": 11,
               "SIG_SKYLINE": 12, "SIG_TELLURIC": 13, "NOT_ENOUGH_PSF": 14}
# LAMOST low-resolution andmask (https://www.lamost.org/public/dr/algorithms/ff): "the and mask array (all of
# its exposures are bad pixel)"; the bits are not documented one by one, so any bit masks.
NAMES = {"sdss": SDSS_BITS, "desi": DESI_BITS, "apogee": APOGEE_BITS, "lamost": {}}
DEFAULT_MASK_BITS = {"sdss": (1 << 18) | (1 << 22) | (1 << 23), "desi": ALL_BITS, "apogee": 0xFF, "lamost": ALL_BITS}


def parse_mask_bits(items) -> dict[str, int]:
    """Survey -> bit mask from `SURVEY=BITS` texts (a string or several), the defaults for surveys not named.

    BITS: comma-separated bit numbers (0-31) or names of the survey's bits (e.g. `sdss=FULLREJECT,BRIGHTSKY`),
    `all` (any flag masks) or `none` (flags ignored; pixels with ivar 0 stay masked). Surveys: sdss (also
    BOSS), desi, apogee, lamost.
    """
    out = dict(DEFAULT_MASK_BITS)
    for item in [items] if isinstance(items, str) else list(items or ()):
        survey, eq, bits = str(item).partition("=")
        survey = survey.strip().lower()
        if not eq or survey not in NAMES:
            raise SpecaeError(f"mask bits {item!r}: expected SURVEY=BITS with SURVEY one of {', '.join(NAMES)}")
        out[survey] = _bits(survey, bits.strip(), item)
    return out


def _bits(survey: str, text: str, item) -> int:
    if text.lower() in ("all", "none"):
        return ALL_BITS if text.lower() == "all" else 0
    value = 0
    for word in text.split(","):
        word = word.strip()
        bit = NAMES[survey].get(word.upper(), int(word) if word.isdigit() else None)
        if bit is None or not 0 <= bit < 32:
            known = f"bit numbers 0-31, {', '.join(NAMES[survey])}," if NAMES[survey] else "bit numbers 0-31,"
            raise SpecaeError(f"mask bits {item!r}: {word!r} is not a bit of {survey} (give {known} all or none)")
        value |= 1 << bit
    return value


def flagged(flags, chosen: int) -> np.ndarray:
    """Bool array: the flag words `flags` (any integer dtype) hold any of the `chosen` bits."""
    return (np.asarray(flags).astype(np.int64) & chosen) != 0


def resolve_mask_bits(mask_bits=None) -> dict[str, int]:
    """Survey -> bits from None (the defaults), `SURVEY=BITS` text(s) (`parse_mask_bits`) or a dict of some
    surveys' bits (the others at their defaults)."""
    if mask_bits is None or isinstance(mask_bits, (str, list, tuple)):
        return parse_mask_bits(mask_bits)
    unknown = set(mask_bits) - set(NAMES)
    if unknown:
        raise SpecaeError(f"mask bits for unknown surveys {sorted(unknown)}; surveys: {', '.join(NAMES)}")
    return {**DEFAULT_MASK_BITS, **{k: int(v) for k, v in mask_bits.items()}}
