"""Every module has an API page (the site build itself: tests/docs/test_site.py)."""

import os
import pkgutil

import ipvs

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_every_module_has_an_api_page():
    mods = {"ipvs"} | {m.name for m in pkgutil.walk_packages(ipvs.__path__, "ipvs.")}
    pages = {f[:-4] for f in os.listdir(os.path.join(ROOT, "docs", "api")) if f.endswith(".rst")} - {"index"}
    assert mods - pages == set(), "add docs/api/<module>.rst and list it in docs/api/index.rst"
    with open(os.path.join(ROOT, "docs", "api", "index.rst")) as f:
        index = f.read()
    assert all(f"   {m}\n" in index for m in mods)
