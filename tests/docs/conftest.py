"""Helpers for the documentation tests: the docs' own modules, and one site build per run."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = os.path.join(ROOT, "docs")


def load(relpath: str, name: str):
    """Import a file of docs/ (the Sphinx extensions, the tutorial's capture script) as a module."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(DOCS, relpath))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def built_site(tmp_path_factory):
    """The site built once with warnings as errors; the path of its HTML.

    Sphinx, myst-parser and furo live in .venv only (the docs extra), not in
    .venv-pypy: under PyPy the build is skipped, the suite's CPython run
    covers it.
    """
    if sys.implementation.name == "pypy":
        pytest.skip("the docs build runs under CPython only (sphinx is not installed in .venv-pypy)")
    for mod in ("sphinx", "myst_parser", "furo"):
        pytest.importorskip(mod)
    if shutil.which("dot") is None:
        pytest.skip("the diagrams need Graphviz's dot (tools/bootstrap installs graphviz)")
    out = tmp_path_factory.mktemp("site")
    r = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d", str(out / "doctrees"),
         DOCS, str(out / "html")],
        capture_output=True, text=True, timeout=900,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    return out / "html"
