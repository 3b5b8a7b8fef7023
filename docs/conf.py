"""Sphinx configuration for the PyIPVS documentation site.

Build: ``.venv/bin/sphinx-build -W -b html docs docs/_build/html``
(warnings are errors; tests/test_docs.py does exactly this).  The diagrams
need Graphviz's ``dot`` (Debian's ``graphviz``, installed by tools/bootstrap).
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
    "sphinx.ext.graphviz",
    "myst_parser",
    "ipvs_tables",
    "ipvs_cli",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "ippfvsadm.8", "man", "tutorial/output", "tutorial/capture.py"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]
html_theme = "furo"
html_title = "PyIPVS"
html_static_path = ["_static"]
html_css_files = ["pyipvs.css"]
# Figures as SVG: sharp at any zoom, and scaled down to the column (pyipvs.css).
graphviz_output_format = "svg"
graphviz_dot_args = ["-Gfontname=sans-serif", "-Nfontname=sans-serif", "-Efontname=sans-serif"]
# ASCII drawings are literal text, not code in some language.
highlight_language = "none"
pygments_style = "default"
nitpicky = False
suppress_warnings = ["myst.xref_missing", "myst.header"]
