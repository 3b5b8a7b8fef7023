"""bench/soak.py's bounded version: mixed traffic for 15 s, then the table,
ipvsd's descriptors and its memory come back to where they started."""

from __future__ import annotations

import importlib.util
import os

import pytest

from .conftest import ROOT, lab_up

_spec = importlib.util.spec_from_file_location("bench_soak", os.path.join(ROOT, "bench", "soak.py"))
soak = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(soak)


@pytest.fixture(scope="module")
def spare_lab():
    with lab_up("spare"):
        yield


def test_quick_soak_comes_back_to_its_start(spare_lab):
    r = soak.soak(minutes=0.25, interval=2.0, rate=20.0, quick=True, rss_slack=16.0)
    assert r["ops"] >= 200 and r["entries_max"] >= 20  # the load did fill the table
    failed = [name for name, ok in r["checks"].items() if not ok]
    assert not failed, (failed, r["start"], r["end"], r["stats"])
    assert r["pass"]
