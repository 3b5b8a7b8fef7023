"""ipvs/sched/fo.py against the kernel's ip_vs_fo.c."""

from ipvs.uapi import IP_VS_DEST_F_OVERLOAD
from tests.sched.util import golden_lab


def test_highest_weight_and_weight_changes_mid_stream():
    lab = golden_lab("fo", [1, 3, 2])  # list rs3(2) rs2(3) rs1(1)
    assert lab.run(3, inactive=False) == ["rs2"] * 3  # counts do not matter
    lab.edit(1, weight=5)
    assert lab.run(2) == ["rs1"] * 2
    lab.edit(1, weight=0)
    assert lab.run(1) == ["rs2"]
    lab.dest(2).flags |= IP_VS_DEST_F_OVERLOAD
    assert lab.run(1) == ["rs3"]
    lab.dest(2).flags &= ~IP_VS_DEST_F_OVERLOAD
    lab.edit(3, weight=3)  # tie rs3/rs2 at 3: the first in list (rs3) wins
    assert lab.run(1) == ["rs3"]


def test_nothing_eligible():
    lab = golden_lab("fo", [0, 0])
    assert lab.run(1) == [None]
