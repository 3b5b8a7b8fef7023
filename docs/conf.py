"""Sphinx configuration for the PyIPVS documentation site.

Build: ``.venv/bin/sphinx-build -W -b html docs docs/_build/html``
(warnings are errors; tests/test_docs.py does exactly this).
"""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
sys.path.insert(0, os.path.abspath("_ext"))

project = "PyIPVS"
author = "PyIPVS developers"
copyright = "2026, PyIPVS developers"  # noqa: A001

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "myst_parser",
    "ipvs_tables",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "ippfvsadm.8"]
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
myst_heading_anchors = 3
html_theme = "alabaster"
nitpicky = False
suppress_warnings = ["myst.xref_missing", "myst.header"]
