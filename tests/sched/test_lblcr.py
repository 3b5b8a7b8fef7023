"""ipvs/sched/lblcr.py against the kernel's ip_vs_lblcr.c."""

import ipaddress

from ipvs.netns import HZ
from tests.sched.util import Lab, golden_lab, name_of

A = ipaddress.ip_address("203.0.113.80").packed


def test_set_grows_under_overload_and_shrinks_after_expiry():
    lab = golden_lab("lblcr", [1, 1, 1])  # rs3 rs2 rs1
    s = lab.sched
    assert lab.run(1, dst=A, now=0) == ["rs3"]
    en = s.entries[A]
    lab.dest(3).activeconns = 2
    lab.dest(2).activeconns = 1
    # rs3 overloaded (2 > 1, rs1 is idle): wlc picks rs1 and joins the set
    assert lab.run(1, dst=A, now=10) == ["rs1"]
    assert [name_of(d) for d in en.dests] == ["rs1", "rs3"]
    assert en.lastmod == 10
    # the set's least loaded member is used while it is fine
    lab.dest(1).activeconns = 1
    assert lab.run(1, dst=A, now=20) == ["rs1"]
    # 24 h without a set change: the most loaded member (rs3) is dropped
    day = 24 * 3600 * HZ
    assert lab.run(1, dst=A, now=10 + day) == ["rs1"]
    assert len(en.dests) == 2  # time_after is strict
    assert lab.run(1, dst=A, now=11 + day) == ["rs1"]
    assert [name_of(d) for d in en.dests] == ["rs1"]
    assert en.lastmod == 11 + day
    assert s.entries[A] is en


def test_set_min_skips_unavailable_members():
    lab = golden_lab("lblcr", [1, 1])
    assert lab.run(1, dst=A) == ["rs2"]
    lab.delete(2)
    assert lab.run(1, dst=A) == ["rs1"]
    assert [name_of(d) for d in lab.sched.entries[A].dests] == ["rs1", "rs2"]


def test_no_destination():
    lab = Lab("lblcr")
    assert lab.run(1, dst=A) == [None]
    assert lab.sched.entries == {}
