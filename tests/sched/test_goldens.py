"""Known-answer tests from real kernel 6.1 runs, as the schedulers see them.

Every recorded scheduler scenario (tests/kernel/goldens/sched_*) is
replayed by the harness's one replayer, :mod:`ipvs_harness.diff.offline`:
the golden's own scenario.sh under the recording stub, the kernel's
captured frames through :class:`ipvs.core.Director`.  PyIPVS must choose
the same real server for every request (``order.txt``) and show the same
(weight, active, inactive) for every real server in every ``ipvsadm -Ln``
the scenario took (its ``!snapshot`` steps, the dumps before and after).

tests/kernel/test_differential.py compares every file of the same replay
and excuses documented recording artefacts; here nothing is excused: a
scheduler's choice and the counters it reads are never an artefact.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ipvs_harness.diff.compare import read_listing_dests, read_order
from ipvs_harness.diff.offline import run_offline

GOLDENS = Path(__file__).parents[1] / "kernel" / "goldens"
SCENARIOS = sorted(p.name for p in GOLDENS.glob("sched_*") if (p / "order.txt").exists())


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash to run the scenario")
@pytest.mark.parametrize("name", SCENARIOS or [pytest.param("none", marks=pytest.mark.skip("no goldens yet"))])
def test_scenario_matches_kernel(name, tmp_path):
    gdir = GOLDENS / name
    run = run_offline(str(gdir / "scenario.sh"), str(gdir), str(tmp_path), name)
    want = read_order((gdir / "order.txt").read_text())
    got = read_order((tmp_path / "order.txt").read_text())
    assert want, "the golden has no requests"
    assert [r.key for r in got] == [r.key for r in want], run.notes
    mismatches = [(w, g.server) for w, g in zip(want, got) if w.server != g.server]
    assert not mismatches, f"{len(mismatches)} of {len(want)} differ, first: {mismatches[:5]}"
    listings = sorted(p.name for p in gdir.glob("*ipvsadm-Ln.txt"))
    assert listings
    for listing in listings:
        kernel = read_listing_dests((gdir / listing).read_text())
        assert read_listing_dests((tmp_path / listing).read_text()) == kernel, listing
