"""One module per survey's spectrum files (sdss, desi, apogee, lamost), the shared FITS opening (`fitsfile`),
the mask bits each survey's flags are read with (`maskbits`) and recognition by content (`detect`).

`specae.data.readers` is the public entry point: it dispatches on the detected format and reads many files.
"""
