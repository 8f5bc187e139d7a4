"""Errors that mean "the user's input is wrong", as opposed to a bug in specae.

The CLI turns a :class:`SpecaeError` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager


class SpecaeError(Exception):
    """Bad input: a missing or malformed file, mismatched shapes, an unknown option value.

    The message is always one line (line breaks in it are folded into spaces).
    """

    def __init__(self, message: str = ""):
        super().__init__(re.sub(r"\s*[\r\n]+\s*", " ", str(message)).strip())


class MaskedPixelsWarning(UserWarning):
    """Pixels with unusable values were masked: `count` of them, in `where` (a file, or "" if unknown)."""

    def __init__(self, count: int, where: str = ""):
        super().__init__(f"{where + ': ' if where else ''}{count} pixels with NaN/inf (or beyond float32 range) "
                         "flux or NaN/inf/negative ivar were masked")
        self.count, self.where = count, where

    def __reduce__(self):   # pickled (e.g. from DataLoader workers) by its arguments, not its message
        return type(self), (self.count, self.where)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type's name if it has none (for short reasons)."""
    return (str(e).splitlines() or [type(e).__name__])[0]


class CountWarning(UserWarning):
    """`count` things that came out without an estimate, of one kind `what` (e.g. "spectra without a valid pixel
    came out fully masked"), the first `ids` of them named. One per kind reaches the user (`one_count_warning`)."""

    def __init__(self, count: int, what: str, ids=()):
        self.count, self.what, self.ids = count, what, [str(i) for i in ids][:3]
        named = f" (ids {', '.join(self.ids)}{', ...' if count > len(self.ids) else ''})" if self.ids else ""
        super().__init__(f"{count} {what}{named}")

    def __reduce__(self):
        return type(self), (self.count, self.what, self.ids)


@contextmanager
def _caught(cls):
    """Collect the `cls` warnings raised inside into the yielded list (after the block); other warnings pass."""
    mine = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield mine
    for w in caught:
        if isinstance(w.message, cls):
            mine.append(w.message)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


@contextmanager
def one_count_warning():
    """Fold the CountWarnings raised inside (one per block of spectra, say) into one per kind with their total."""
    with _caught(CountWarning) as counted:
        yield
    for what in dict.fromkeys(c.what for c in counted):
        same = [c for c in counted if c.what == what]
        warnings.warn(CountWarning(sum(c.count for c in same), what, [i for c in same for i in c.ids]), stacklevel=3)


@contextmanager
def one_masking_warning(where: str):
    """Fold the MaskedPixelsWarnings raised inside into one with their total count; other warnings pass.

    The warning names the places the folded ones named (the first three), else `where`.
    """
    with _caught(MaskedPixelsWarning) as masked:
        yield
    if masked:
        places = list(dict.fromkeys(m.where for m in masked if m.where))
        named = ", ".join(places[:3]) + (f" and {len(places) - 3} more files" if len(places) > 3 else "")
        warnings.warn(MaskedPixelsWarning(sum(m.count for m in masked), named or where), stacklevel=3)


@contextmanager
def about(path):
    """Name `path` in the SpecaeErrors (as a prefix, unless they name it) and masking warnings raised inside."""
    path = str(path)
    with one_masking_warning(path):
        try:
            yield
        except SpecaeError as e:
            if path in str(e):
                raise
            raise SpecaeError(f"{path}: {e}") from None
