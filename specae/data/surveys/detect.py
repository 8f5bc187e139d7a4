"""Which survey wrote a FITS file, from its HDUs and headers, never its name."""

from __future__ import annotations

from specae.data.surveys import apogee, desi, lamost, sdss

FORMATS = ("sdss", "desi", "apogee", "lamost")


def sniff(hdul) -> str | None:
    """'sdss' | 'desi' | 'apogee' | 'lamost' from the HDU layout, or None."""
    if sdss.coadd_index(hdul) is not None:
        return "sdss"
    if desi.recognise(hdul):
        return "desi"
    if apogee.kind(hdul):
        return "apogee"
    if lamost.recognise(hdul):
        return "lamost"
    return None
