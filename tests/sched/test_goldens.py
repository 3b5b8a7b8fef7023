"""Known-answer tests from real kernel 6.1 runs: every recorded scheduler
scenario under tests/kernel/goldens/sched_* (sched_run format) is replayed
through PyIPVS (tests/sched/golden_replay.py) and must choose the same real
server for every request, and show the same per-dest counters at every
snapshot.  Scenarios without a recording are skipped."""

import shutil
from pathlib import Path

import pytest

from tests.sched.golden_replay import golden_order, golden_snapshot, replay

GOLDENS = Path(__file__).parents[1] / "kernel" / "goldens"
#: Recorded with the older http_seq format (tested in test_wrr/test_rr/test_sh),
#: or about the core's persistence rather than the schedulers.
NOT_HERE = {"sched_order", "sched_persist"}
SCENARIOS = sorted(p.name for p in GOLDENS.glob("sched_*") if p.name not in NOT_HERE and (p / "requests.txt").exists())


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash to expand the scenario")
@pytest.mark.parametrize("name", SCENARIOS or [pytest.param("none", marks=pytest.mark.skip("no goldens yet"))])
def test_scenario_matches_kernel(name):
    gdir = GOLDENS / name
    r = replay(gdir)
    want = golden_order(gdir)
    got = r.results
    assert [(lab, n, src) for lab, n, src, _ in got] == [(lab, n, src) for lab, n, src, _ in want]
    mismatches = [(w, g[3]) for w, g in zip(want, got) if w[3] != g[3]]
    assert not mismatches, f"{len(mismatches)} of {len(want)} differ, first: {mismatches[:5]}"
    for snap, rows in r.snapshots.items():
        path = gdir / f"{snap}-ipvsadm-Ln.txt"
        if path.exists():
            assert rows == golden_snapshot(path), snap
