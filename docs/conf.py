"""Sphinx configuration: markdown pages (MyST), the API reference from the docstrings (autodoc, one page per module
by autosummary) and the CLI reference from the parsers (docs/_ext/cli_reference.py). Build with

    python -m sphinx -W -n --keep-going -b html docs docs/_build/html

Warnings are errors and every reference must resolve (-n); no network is used (no intersphinx), so the names of
external types are listed in nitpick_ignore_regex below.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

import specae  # noqa: E402  (after the path: the extensions import it too)

project = "specae"
author = "the specae developers"
copyright = "the specae developers"
release = version = specae.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "cli_reference",
    "plain_docstrings",
    "benchmark_results",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
templates_path = ["_templates"]
# one page per module of the package (api/generated/, written at build time): a new module is documented at once
autosummary_generate = True
# `python -m specae.cli` runs the CLI on import: autosummary sees a stand-in, and the template leaves it out
autosummary_mock_imports = ["specae.cli.__main__"]
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
html_theme = "alabaster"
html_theme_options = {"description": "Denoise survey spectra with autoencoders, with calibrated uncertainties"}

# The docstrings are plain text with `name` for code (docs/_ext/plain_docstrings.py makes them rst). No napoleon:
# no docstring has its Google/numpy sections, and it reads a property's "(N,) bool: the spectrum has ..." as a type.
default_role = "code"
autodoc_member_order = "bysource"
autodoc_typehints = "signature"

nitpicky = True
# types of the libraries specae builds on; without intersphinx (no network at build time) they cannot resolve
nitpick_ignore_regex = [
    ("py:.*", r"(np|numpy|torch|nn|astropy|h5py|matplotlib|plt|scipy|specutils|argparse|pathlib|os|io)\..*"),
    ("py:.*", r"(Path|PathLike|Tensor|ndarray|Figure|Axes|Table|Quantity|Module|Optimizer|Generator|Dataset)"),
    ("py:.*", r"(ArrayLike|DTypeLike|NDArray|Spectrum1D|Spectrum|Unit|UnitBase)"),
]
# a method without a docstring shows none, rather than its base class's (argparse's would be read as a signature)
autodoc_inherit_docstrings = False


def factory_defaults(app, what, name, obj, options, signature, return_annotation):
    """A dataclass field's default_factory shows as `<factory>`, which Sphinx's signature parser cannot read."""
    if signature:
        return signature.replace("<factory>", "..."), return_annotation


def setup(app):
    app.connect("autodoc-process-signature", factory_defaults)
