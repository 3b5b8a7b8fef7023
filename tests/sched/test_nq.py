"""ipvs/sched/nq.py against the kernel's ip_vs_nq.c."""

from ipvs.uapi import IP_VS_DEST_F_OVERLOAD
from tests.sched.util import golden_lab


def test_idle_server_first_then_sed():
    lab = golden_lab("nq", [1, 5])  # list rs2(5) rs1(1)
    # rs2 idle -> rs2; rs1 idle -> rs1; then sed: rs1 only once
    # (a2 + 1) * 1 > (1 + 1) * 5, i.e. after rs2 reaches 10 active.
    assert lab.run(12, inactive=False) == ["rs2", "rs1"] + ["rs2"] * 9 + ["rs1"]


def test_idle_beats_weight():
    lab = golden_lab("nq", [1, 100])
    lab.dest(2).activeconns = 1
    assert lab.run(1) == ["rs1"]


def test_weight_zero_idle_is_skipped():
    lab = golden_lab("nq", [1, 0])
    lab.dest(1).activeconns = 50
    assert lab.run(1) == ["rs1"]


def test_overloaded_idle_is_skipped():
    lab = golden_lab("nq", [1, 1])
    lab.dest(2).flags |= IP_VS_DEST_F_OVERLOAD
    lab.dest(1).activeconns = 50
    assert lab.run(1) == ["rs1"]
    lab.dest(1).flags |= IP_VS_DEST_F_OVERLOAD
    assert lab.run(1) == [None]
