"""ipvs/sched/lblc.py against the kernel's ip_vs_lblc.c."""

import ipaddress

from ipvs.netns import HZ
from ipvs.sched.lblc import MAX_SIZE, bucket_of
from ipvs.uapi import IP_VS_DEST_F_OVERLOAD
from tests.sched.util import golden_lab

A = ipaddress.ip_address("203.0.113.80").packed
B = ipaddress.ip_address("203.0.113.81").packed


def test_destination_address_sticks():
    lab = golden_lab("lblc", [1, 1])  # list rs2 rs1
    assert lab.run(5, dst=A) == ["rs2"] * 5  # inactive load does not move it
    assert lab.run(1, dst=B) == ["rs1"]  # a new address: wlc
    assert lab.run(1, dst=A) == ["rs2"]


def test_lblc_overload_rule():
    lab = golden_lab("lblc", [1, 1])
    assert lab.run(1, dst=A) == ["rs2"]
    rs2, rs1 = lab.dest(2), lab.dest(1)
    rs2.activeconns = 2  # above its weight ...
    rs1.activeconns = 1  # ... but nobody is under half load: keep it
    assert lab.run(1, dst=A, inactive=False) == ["rs2"]
    rs2.activeconns, rs1.activeconns = 2, 0  # rs1 under half: move to wlc
    assert lab.run(1, dst=A) == ["rs1"]
    rs2.activeconns = 0
    assert lab.run(1, dst=A) == ["rs1"]  # the entry was replaced


def test_unavailable_weight_zero_overload_flag():
    lab = golden_lab("lblc", [1, 1, 1])  # rs3 rs2 rs1
    assert lab.run(1, dst=A) == ["rs3"]
    lab.edit(3, weight=0)
    assert lab.run(1, dst=A) == ["rs2"]
    lab.delete(2)  # in the trash, not AVAILABLE
    assert lab.run(1, dst=A) == ["rs1"]
    # The OVERLOAD flag does not invalidate an entry (only wlc skips it).
    lab.dest(1).flags |= IP_VS_DEST_F_OVERLOAD
    assert lab.run(1, dst=A) == ["rs1"]
    assert lab.run(1, dst=B) == [None]


def test_full_expiration_check_every_30_minutes():
    lab = golden_lab("lblc", [1, 1])
    s = lab.sched
    lab.run(1, dst=A, now=0)  # arms the 60 s timer at 60 s
    assert s.next_check == 60 * HZ
    day = 24 * 3600 * HZ
    s.expire(day - 1)  # full checks at every 30 min: 23h30 keeps it
    assert A in s.entries
    s.expire(day)  # the 1440th run is a full check, and 24 h have passed
    assert A not in s.entries
    assert s.counter == 1


def test_expiration_sysctl():
    lab = golden_lab("lblc", [1, 1])
    lab.ipvs.sysctl.set("lblc_expiration", 120)
    s = lab.sched
    lab.run(1, dst=A, now=0)
    lab.run(1, dst=B, now=29 * 60 * HZ)
    s.expire(30 * 60 * HZ - 1)
    assert set(s.entries) == {A, B}
    s.expire(30 * 60 * HZ)  # first full check: A idle 30 min, B 1 min
    assert set(s.entries) == {B}


def test_partial_collection_when_over_full():
    lab = golden_lab("lblc", [1, 1])
    s = lab.sched
    extra = 300
    addrs = [ipaddress.IPv4Address(0x0A000000 + i).packed for i in range(MAX_SIZE + extra)]
    old, fresh = addrs[::2], addrs[1::2]
    for a in old:
        lab.pick(dst=a, now=0)
    for a in fresh:
        lab.pick(dst=a, now=5 * 60 * HZ)
    assert len(s.entries) == MAX_SIZE + extra
    s.expire(7 * 60 * HZ)  # runs at 1..7 min; only the 7 min one finds idle entries
    removed = [a for a in addrs if a not in s.entries]
    assert set(removed) <= set(old)
    goal = extra * 4 // 3
    assert goal <= len(removed) < goal + 64
    # whole buckets, taken in order from the rover (which started at 0)
    buckets = sorted({bucket_of(a) for a in removed})
    assert buckets == list(range(1, len(buckets) + 1))
    assert s.rover == buckets[-1]
