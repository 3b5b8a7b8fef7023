"""ipvs/sched/lc.py against the kernel's ip_vs_lc.c."""

from hypothesis import given, settings
from hypothesis import strategies as st

from ipvs.sched import dest_conn_overhead
from ipvs.uapi import IP_VS_DEST_F_OVERLOAD
from tests.sched.util import Lab, golden_lab


def test_least_overhead_weight_ignored():
    lab = golden_lab("lc", [1, 5])  # list rs2 rs1
    # Equal overhead: the newer dest (list head) wins.
    assert lab.run(1) == ["rs2"]
    # rs2 now 1 inactive: rs1 (0) is least, weights do not matter.
    assert lab.run(3) == ["rs1", "rs2", "rs1"]


def test_active_weighs_256_inactive():
    lab = golden_lab("lc", [1, 1])
    lab.dest(2).activeconns = 1  # overhead 256
    lab.dest(1).inactconns = 255  # overhead 255
    assert lab.run(1) == ["rs1"]  # 256 inactive now: tie, rs2 first in list
    assert lab.run(1) == ["rs2"]


def test_weight_zero_and_overload_skipped():
    lab = golden_lab("lc", [1, 1, 1])
    lab.edit(3, weight=0)
    lab.dest(2).flags |= IP_VS_DEST_F_OVERLOAD
    lab.dest(1).activeconns = 100
    assert lab.run(2) == ["rs1", "rs1"]
    lab.dest(1).flags |= IP_VS_DEST_F_OVERLOAD
    assert lab.run(1) == [None]


def test_held_open_connections():
    lab = golden_lab("lc", [1, 1, 1])
    assert lab.run(6, inactive=False) == ["rs3", "rs2", "rs1"] * 2


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 600), st.booleans()), min_size=1, max_size=6
    )
)
def test_picks_a_minimum(spec):
    lab = Lab("lc")
    for i, (w, a, n, over) in enumerate(spec, 1):
        d = lab.add(i, weight=w)
        d.activeconns, d.inactconns = a, n
        d.flags |= IP_VS_DEST_F_OVERLOAD if over else 0
    ok = [d for d in lab.svc.destinations if d.weight and not d.flags & IP_VS_DEST_F_OVERLOAD]
    got = lab.pick()
    if not ok:
        assert got is None
    else:
        best = min(dest_conn_overhead(d) for d in ok)
        assert got is next(d for d in ok if dest_conn_overhead(d) == best)
