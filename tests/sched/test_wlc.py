"""ipvs/sched/wlc.py against the kernel's ip_vs_wlc.c."""

from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from ipvs.sched import dest_conn_overhead
from ipvs.uapi import IP_VS_DEST_F_OVERLOAD
from tests.sched.util import Lab, golden_lab

# kernel-goldens/nat_classic/order.txt: rs1 w1 then rs2 w2, twelve
# sequential HTTP requests plus one curl request, each connection in
# TIME_WAIT (inactive) when the next one comes.
GOLDEN_NAT_CLASSIC = "rs2 rs1 rs2 rs2 rs1 rs2 rs2 rs1 rs2 rs2 rs1 rs2 rs2".split()


def test_golden_nat_classic():
    lab = Lab("wlc")
    lab.add(1, weight=1, port=80)
    lab.add(2, weight=2, port=8000)
    assert lab.run(13) == GOLDEN_NAT_CLASSIC
    # and the final counters the golden lists: rs1 4 inactive, rs2 9
    assert (lab.dest(1).inactconns, lab.dest(2, port=8000).inactconns) == (4, 9)


def test_active_connections_decide():
    lab = golden_lab("wlc", [1, 3])  # list rs2(3) rs1(1)
    # Held open, so each pick adds 256 to the overhead; rs1 wins only when
    # oh(rs2) * 1 > oh(rs1) * 3 strictly.
    assert lab.run(8, inactive=False) == "rs2 rs1 rs2 rs2 rs2 rs1 rs2 rs2".split()


def test_first_eligible_needs_positive_weight_later_only_overload():
    lab = golden_lab("wlc", [2, 0, 1])  # list rs3(1) rs2(0) rs1(2)
    lab.dest(3).activeconns = 5
    # rs2 has weight 0 and zero overhead, but 5*256*0 > 0*1 is false.
    assert lab.run(1) == ["rs1"]
    lab.edit(3, weight=0)
    lab.edit(1, weight=0)
    assert lab.run(1) == [None]


def test_overloaded_skipped():
    lab = golden_lab("wlc", [1, 1])
    lab.dest(2).flags |= IP_VS_DEST_F_OVERLOAD
    lab.dest(1).activeconns = 1000
    assert lab.run(2) == ["rs1", "rs1"]


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 4), st.integers(0, 3), st.integers(0, 600), st.booleans()), min_size=1, max_size=6
    )
)
def test_picks_a_minimum_of_overhead_per_weight(spec):
    lab = Lab("wlc")
    for i, (w, a, n, over) in enumerate(spec, 1):
        d = lab.add(i, weight=w)
        d.activeconns, d.inactconns = a, n
        d.flags |= IP_VS_DEST_F_OVERLOAD if over else 0
    ok = [d for d in lab.svc.destinations if d.weight > 0 and not d.flags & IP_VS_DEST_F_OVERLOAD]
    got = lab.pick()
    if not ok:
        assert got is None
        return
    assert got.weight > 0 and not got.flags & IP_VS_DEST_F_OVERLOAD
    best = min(Fraction(dest_conn_overhead(d), d.weight) for d in ok)
    assert Fraction(dest_conn_overhead(got), got.weight) == best
    # ties go to the first in list order
    assert got is next(d for d in ok if Fraction(dest_conn_overhead(d), d.weight) == best)
