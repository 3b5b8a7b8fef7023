"""ipvs/sched/rr.py against the kernel's ip_vs_rr.c."""

from hypothesis import given, settings
from hypothesis import strategies as st

from ipvs.uapi import IP_VS_DEST_F_OVERLOAD
from tests.sched.util import Lab, golden_lab

# kernel-goldens/sched_order/order.txt, rows "rr 13".."rr 24": three dests
# of weight 1 added as rs1, rs2, rs3 (list order rs3, rs2, rs1).
GOLDEN_RR = ["rs3", "rs2", "rs1"] * 4


def test_golden_sched_order():
    assert golden_lab("rr", [1, 1, 1]).run(12) == GOLDEN_RR


def test_skips_weight_zero_and_overloaded():
    lab = golden_lab("rr", [1, 1, 1, 1])  # list rs4 rs3 rs2 rs1
    lab.edit(3, weight=0)
    lab.dest(2).flags |= IP_VS_DEST_F_OVERLOAD
    assert lab.run(4) == ["rs4", "rs1", "rs4", "rs1"]
    lab.dest(2).flags &= ~IP_VS_DEST_F_OVERLOAD
    assert lab.run(3) == ["rs4", "rs2", "rs1"]


def test_none_when_nothing_eligible():
    lab = golden_lab("rr", [0, 0])
    assert lab.run(2) == [None, None]
    assert Lab("rr").run(1) == [None]


def test_cursor_steps_back_when_its_dest_is_deleted():
    lab = golden_lab("rr", [1, 1, 1])  # rs3 rs2 rs1
    assert lab.run(2) == ["rs3", "rs2"]
    lab.delete(2)  # cursor goes back to rs3: rs1 is next
    assert lab.run(3) == ["rs1", "rs3", "rs1"]


def test_cursor_at_first_dest_deleted_goes_to_head():
    lab = golden_lab("rr", [1, 1, 1])
    assert lab.run(1) == ["rs3"]
    lab.delete(3)
    assert lab.run(3) == ["rs2", "rs1", "rs2"]


def test_deleting_another_dest_keeps_the_cursor():
    lab = golden_lab("rr", [1, 1, 1, 1])  # rs4 rs3 rs2 rs1
    assert lab.run(3) == ["rs4", "rs3", "rs2"]
    lab.delete(4)
    assert lab.run(3) == ["rs1", "rs3", "rs2"]


def test_new_dest_goes_to_the_head_of_the_cycle():
    lab = golden_lab("rr", [1, 1, 1])
    assert lab.run(2) == ["rs3", "rs2"]
    lab.add(4)  # rs4 rs3 rs2 rs1, cursor still rs2
    assert lab.run(4) == ["rs1", "rs4", "rs3", "rs2"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=1, max_size=8),
    st.integers(1, 30),
)
def test_only_eligible_and_fair(spec, picks):
    lab = Lab("rr")
    for i, (w, over) in enumerate(spec, 1):
        d = lab.add(i, weight=w)
        if over:
            d.flags |= IP_VS_DEST_F_OVERLOAD
    eligible = [f"rs{i}" for i in range(len(spec), 0, -1) if spec[i - 1][0] > 0 and not spec[i - 1][1]]
    got = lab.run(picks)
    if not eligible:
        assert got == [None] * picks
    else:
        # rr visits the eligible dests in list order, round and round.
        assert got == [eligible[k % len(eligible)] for k in range(picks)]
