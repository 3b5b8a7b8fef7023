"""The documentation site builds with warnings as errors, and covers every module."""

import os
import pkgutil
import subprocess
import sys

import pytest

import ipvs

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_every_module_has_an_api_page():
    mods = {"ipvs"} | {m.name for m in pkgutil.walk_packages(ipvs.__path__, "ipvs.")}
    pages = {f[:-4] for f in os.listdir(os.path.join(ROOT, "docs", "api")) if f.endswith(".rst")} - {"index"}
    assert mods - pages == set(), "add docs/api/<module>.rst and list it in docs/api/index.rst"
    with open(os.path.join(ROOT, "docs", "api", "index.rst")) as f:
        index = f.read()
    assert all(f"   {m}\n" in index for m in mods)


@pytest.mark.slow
def test_sphinx_build_has_no_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    r = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d", str(tmp_path / "doctrees"),
         os.path.join(ROOT, "docs"), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    assert (tmp_path / "html" / "tcp-states.html").exists()
