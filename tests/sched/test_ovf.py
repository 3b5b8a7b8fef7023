"""ipvs/sched/ovf.py against the kernel's ip_vs_ovf.c."""

from ipvs.uapi import IP_VS_DEST_F_OVERLOAD
from tests.sched.util import golden_lab


def test_overflow_by_active_connections():
    lab = golden_lab("ovf", [2, 1])  # list rs2(1) rs1(2)
    # rs1 until its active count exceeds 2, then rs2 until it exceeds 1.
    assert lab.run(6, inactive=False) == ["rs1", "rs1", "rs1", "rs2", "rs2", None]


def test_inactive_connections_do_not_overflow():
    lab = golden_lab("ovf", [2, 1])
    assert lab.run(6, inactive=True) == ["rs1"] * 6


def test_equal_weights_first_in_list_and_skips():
    lab = golden_lab("ovf", [4, 4, 0])  # list rs3(0) rs2(4) rs1(4)
    assert lab.run(1) == ["rs2"]
    lab.dest(2).flags |= IP_VS_DEST_F_OVERLOAD
    assert lab.run(1) == ["rs1"]
