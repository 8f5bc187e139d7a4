"""Labels from a catalogue (a CSV or FITS table), joined to spectra by file name or obsid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specae.data.spectra import Spectra
from specae.data.surveys.fitsfile import fits_stem
from specae.errors import SpecaeError, first_line

# join keys, tried in this order for each spectrum: the catalogue's file name column against the spectrum's
# file (FITS suffixes ignored: spec-1.fits matches spec-1.fits.gz), then its obsid against the OBSID label or id
FILE_KEYS = ("filename", "file", "fits_name")
OBSID_KEY = "obsid"


@dataclass
class Catalogue:
    """Catalogue columns to add as labels: `columns` (those asked for, then their `_err` columns), with the
    join keys found in `table` (an astropy Table). `where` names it in messages."""
    table: object
    columns: list[str]
    file_key: str | None
    obsid_key: str | None
    where: str

    @classmethod
    def read(cls, source, labels) -> "Catalogue":
        """From a path (CSV, FITS or any table astropy recognises by the name) or an astropy Table, and the names
        of the columns to take (a list, or one comma-separated string); SpecaeError if the file is missing or
        unreadable, a column is missing or there is no column to join on. Names match case-insensitively."""
        table, where = (source, "the catalogue") if hasattr(source, "colnames") else (_read_table(source), str(source))
        by_lower = {c.lower(): c for c in table.colnames}
        labels = [x.strip() for x in (labels.split(",") if isinstance(labels, str) else map(str, labels)) if x.strip()]
        if not labels:
            raise SpecaeError(f"{where}: name the catalogue columns to take as labels (--labels)")
        missing = [x for x in labels if x.lower() not in by_lower]
        if missing:
            raise SpecaeError(f"{where}: no column {', '.join(map(repr, missing))} (columns: "
                              f"{', '.join(table.colnames)})")
        file_key = next((by_lower[k] for k in FILE_KEYS if k in by_lower), None)
        obsid_key = by_lower.get(OBSID_KEY)
        if file_key is None and obsid_key is None:
            raise SpecaeError(f"{where}: no column to join on: needs one of {', '.join(FILE_KEYS + (OBSID_KEY,))}")
        columns = [by_lower[x.lower()] for x in labels]
        columns += [by_lower[f"{c.lower()}_err"] for c in columns if f"{c.lower()}_err" in by_lower]
        for c in columns:
            if np.ndim(table[c][0]) != 0:
                raise SpecaeError(f"{where}: column {c!r} holds arrays, not one value per row")
        return cls(table, list(dict.fromkeys(columns)), file_key, obsid_key, where)

    def join(self, spectra: Spectra, files) -> Spectra:
        """`spectra` with the columns as labels, and IN_CATALOGUE (bool (N,)): whether the spectrum's row was found.

        files: (N,) the file each spectrum was read from. Rows are matched by file name (a column filename,
        file or fits_name; FITS suffixes and folders ignored), then, for spectra still unmatched, by obsid
        (column obsid against the OBSID label, else the id); the first row of a key wins. Spectra without a row
        get NaN (numbers) or "" (text).
        """
        taken = [c for c in self.columns + ["IN_CATALOGUE"] if c in spectra.labels]
        if taken:
            raise SpecaeError(f"{self.where}: the spectra already have labels {taken}; leave them out of --labels")
        row = np.full(len(spectra), -1)
        if self.file_key is not None:
            row = _match(row, [fits_stem(f) for f in files], [fits_stem(v) for v in _text(self.table[self.file_key])])
        if self.obsid_key is not None:
            own = spectra.labels["OBSID"] if "OBSID" in spectra.labels else spectra.ids
            row = _match(row, [_obsid(v) for v in own], [_obsid(v) for v in _text(self.table[self.obsid_key])])
        found = row >= 0
        out = {c: _values(self.table[c], row, found) for c in self.columns}
        return Spectra(spectra.wave, spectra.flux, spectra.ivar, spectra.mask,
                       {**spectra.labels, **out, "IN_CATALOGUE": found}, spectra.ids, spectra.scale, dict(spectra.meta))


def _read_table(path):
    """The astropy Table in `path`; SpecaeError if it is missing or unreadable."""
    from astropy.table import Table

    path = Path(path)
    if not path.is_file():
        raise SpecaeError(f"{path}: {'is a directory, not a file' if path.is_dir() else 'no such file'} (catalogue)")
    try:
        return Table.read(path)
    except Exception as e:  # astropy's readers fail in many ways on a bad table; no specae code runs here
        raise SpecaeError(f"{path}: not a readable catalogue table, CSV or FITS ({first_line(e)})") from None


def _match(row: np.ndarray, keys: list[str], table_keys: list[str]) -> np.ndarray:
    """`row` with each still unmatched (-1) spectrum's key looked up among `table_keys` (first row wins)."""
    first = {}
    for i, k in enumerate(table_keys):
        first.setdefault(k, i)
    return np.array([r if r >= 0 else first.get(k, -1) for r, k in zip(row, keys)])


def _text(column) -> list[str]:
    """A table column's values as stripped strings ('' where masked)."""
    values = np.ma.filled(np.ma.asarray(column).astype(str), "")
    return [str(v).strip() for v in values]


def _obsid(value) -> str:
    """An obsid as text, whether it was stored as an integer, a float (605006.0) or a string; '' if none."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if np.isfinite(number) and number == int(number) else text


def _values(column, row: np.ndarray, found: np.ndarray) -> np.ndarray:
    """(N,) the column's values at `row` where `found`; NaN or '' elsewhere and where the table masks them."""
    data = np.ma.asarray(column)
    picked = data[np.where(found, row, 0)]
    if data.dtype.kind in "USO":
        return np.where(found, np.ma.filled(picked.astype(str), ""), "")
    values = np.ma.filled(picked.astype(np.float64), np.nan)
    return np.where(found, values, np.nan)
