"""ipvs/sched/wrr.py against the kernel's ip_vs_wrr.c."""

import math
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from ipvs.uapi import IP_VS_DEST_F_OVERLOAD
from tests.sched.util import Lab, golden_lab

# kernel-goldens/sched_order/order.txt, rows "wrr 1".."wrr 12": rs1 w1,
# rs2 w2, rs3 w3 added in that order to an empty service.  The first pass
# runs at cw=1 because cw was 1 when rs2 and rs3 arrived.
GOLDEN_WRR = "rs3 rs2 rs1 rs3 rs3 rs2 rs3 rs2 rs1 rs3 rs3 rs2".split()


def test_golden_sched_order():
    assert golden_lab("wrr", [1, 2, 3]).run(12) == GOLDEN_WRR


def test_state_after_adds():
    lab = Lab("wrr")
    s = lab.sched
    assert (s.di, s.mw, s.cw) == (1, 0, 0)
    lab.add(1, weight=4)
    assert (s.di, s.mw, s.cw) == (4, 1, 1)
    lab.add(2, weight=6)
    # gcd 2, mw = 6 - 1; cw=1 kept then re-aligned: (1 // 2) * 2 + 1
    assert (s.di, s.mw, s.cw) == (2, 5, 1)


def test_digest_example_when_cw_starts_at_max():
    # Weights in list order A=4, B=3, C=2 with cw == mw at the start: the
    # classic A A B A B C A B C cycle.  Added as C, B, A, cw ends up 1
    # (w2 alone: di 2, mw 1), so force it back to mw with an edit.
    lab = golden_lab("wrr", [2, 3, 4])  # list rs3(4) rs2(3) rs1(2)
    s = lab.sched
    assert s.cw == 1
    s.cw = 0
    lab.edit(3, weight=4)  # dest_changed with cw == 0 -> cw = mw
    assert s.cw == 4
    assert lab.run(9) == "rs3 rs3 rs2 rs3 rs2 rs1 rs3 rs2 rs1".split()


def test_weight_zero_and_all_zero():
    lab = golden_lab("wrr", [0, 0])
    assert lab.run(2) == [None, None]
    lab.edit(1, weight=2)
    assert lab.run(3) == ["rs1"] * 3


def test_overloaded_skipped_and_all_overloaded():
    lab = golden_lab("wrr", [1, 2, 3])
    lab.dest(3).flags |= IP_VS_DEST_F_OVERLOAD
    got = lab.run(9)
    assert "rs3" not in got
    assert Counter(got) == {"rs2": 6, "rs1": 3}
    for n in (1, 2):
        lab.dest(n).flags |= IP_VS_DEST_F_OVERLOAD
    assert lab.run(2) == [None, None]
    lab.dest(1).flags &= ~IP_VS_DEST_F_OVERLOAD
    assert lab.run(2) == ["rs1", "rs1"]


def test_weight_lowered_below_gcd_is_still_found():
    # Weights 4 and 8 (di 4).  rs2 is overloaded and rs1 weighs 4; once
    # rs1 is edited down to 2 the gcd becomes 2, and the last pass at cw=1
    # catches it.
    lab = golden_lab("wrr", [4, 8])
    lab.dest(2).flags |= IP_VS_DEST_F_OVERLOAD
    assert lab.run(2) == ["rs1", "rs1"]
    lab.edit(1, weight=2)
    assert lab.run(3) == ["rs1"] * 3


def test_weight_change_mid_stream():
    lab = golden_lab("wrr", [3, 3])  # list rs2 rs1, di 3, mw 1, cw 1
    assert lab.run(4) == ["rs2", "rs1", "rs2", "rs1"]
    s = lab.sched
    lab.edit(1, weight=6)  # di 3, mw 4, cw 1 -> (1//3)*3+1 = 1
    assert (s.di, s.mw, s.cw) == (3, 4, 1)
    # cursor back at the head: cw 1 pass takes rs2, rs1; then cw 4: rs1;
    # then cw 1 again: rs2, rs1 ...
    assert lab.run(6) == ["rs2", "rs1", "rs1", "rs2", "rs1", "rs1"]


def test_delete_resets_cursor():
    lab = golden_lab("wrr", [1, 1, 1])
    assert lab.run(2) == ["rs3", "rs2"]
    lab.delete(1)
    assert lab.run(3) == ["rs3", "rs2", "rs3"]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=1, max_size=7), st.integers(0, 40))
def test_full_cycle_share_is_weight_over_gcd(weights, warmup):
    lab = golden_lab("wrr", weights)
    pos = [w for w in weights if w > 0]
    if not pos:
        assert lab.run(3) == [None] * 3
        return
    g = math.gcd(*pos)
    cycle = sum(pos) // g
    lab.run(warmup)
    got = lab.run(cycle)
    want = {f"rs{i}": w // g for i, w in enumerate(weights, 1) if w > 0}
    assert Counter(got) == want


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.booleans()), min_size=1, max_size=7), st.integers(1, 25))
def test_never_ineligible_never_none_when_eligible(spec, picks):
    lab = Lab("wrr")
    for i, (w, _) in enumerate(spec, 1):
        lab.add(i, weight=w)
    for i, (_, over) in enumerate(spec, 1):
        if over:
            lab.dest(i).flags |= IP_VS_DEST_F_OVERLOAD
    ok = {f"rs{i}" for i, (w, over) in enumerate(spec, 1) if w > 0 and not over}
    got = lab.run(picks)
    if ok:
        assert set(got) <= ok
    else:
        assert got == [None] * picks
