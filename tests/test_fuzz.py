"""Bounded fuzzing of the three surfaces (issue 13): packets, control
frames, rules files.  ``bench/fuzz.py`` holds the generators and runs the
long versions (10^6 packets, 10^5 control frames); here each surface gets
a small, seeded run that must end with no unhandled exception."""

from __future__ import annotations

import importlib.util
import os

import pytest

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "fuzz.py")
_spec = importlib.util.spec_from_file_location("bench_fuzz", _PATH)
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)


@pytest.mark.parametrize("seed", [1, 2])
def test_packets(seed):
    r = fuzz.fuzz_packets(5000, seed)
    assert r["errors"] == 0
    assert r["conns_peak"] > 0 and r["conns_left"] == 0  # frames did make entries, and all expired


def test_control(tmp_path):
    r = fuzz.fuzz_control(1500, 3, str(tmp_path / "s.sock"))
    assert r["errors"] == 0


def test_rules():
    r = fuzz.fuzz_rules(100, 4)
    assert r["errors"] == 0


def test_mutate_changes_inputs():
    import random

    rng = random.Random(0)
    seed = b"-A -t 203.0.113.5:80 -s wlc\n"
    assert sum(fuzz.mutate(rng, seed, [seed]) != seed for _ in range(50)) >= 45
