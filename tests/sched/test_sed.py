"""ipvs/sched/sed.py against the kernel's ip_vs_sed.c."""

from ipvs.uapi import IP_VS_DEST_F_OVERLOAD
from tests.sched.util import golden_lab


def test_active_connections_decide():
    lab = golden_lab("sed", [3, 1])  # list rs2(1) rs1(3)
    # rs2 wins only when (a1 + 1) * 1 > ... i.e. (a2+1)*3 <= (a1+1)*1 fails
    assert lab.run(7, inactive=False) == "rs1 rs1 rs2 rs1 rs1 rs1 rs2".split()


def test_inactive_connections_do_not_count():
    lab = golden_lab("sed", [3, 1])
    assert lab.run(5, inactive=True) == ["rs1"] * 5
    # wlc on the same service would have spread them
    wlc = golden_lab("wlc", [3, 1])
    assert "rs2" in wlc.run(5, inactive=True)


def test_tie_keeps_the_newer_dest():
    lab = golden_lab("sed", [2, 2])
    assert lab.run(1) == ["rs2"]


def test_weight_zero_and_overload():
    lab = golden_lab("sed", [1, 0, 1])  # list rs3(1) rs2(0) rs1(1)
    lab.dest(3).flags |= IP_VS_DEST_F_OVERLOAD
    assert lab.run(3, inactive=False) == ["rs1"] * 3
    lab.dest(1).flags |= IP_VS_DEST_F_OVERLOAD
    assert lab.run(1) == [None]
