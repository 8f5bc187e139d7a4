"""Errors that mean "the user's input is wrong", as opposed to a bug in specae.

The CLI turns a :class:`SpecaeError` into one line on stderr and exit code 2.
"""


class SpecaeError(Exception):
    """Bad input: a missing or malformed file, mismatched shapes, an unknown option value."""
