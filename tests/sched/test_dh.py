"""ipvs/sched/dh.py against the kernel's ip_vs_dh.c."""

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from ipvs.sched.dh import DH_TAB_SIZE, dh_hashkey
from ipvs.uapi import IP_VS_DEST_F_OVERLOAD
from tests.sched.util import Lab, golden_lab, name_of


def ip(s):
    return ipaddress.ip_address(s).packed


def test_bucket_is_hash_32_of_the_destination():
    # top byte of addr * 0x61C88647 mod 2^32
    assert dh_hashkey(b"\0\0\0\1") == 0x61
    assert dh_hashkey(b"\0\0\0\3") == 0x25  # 3 * 0x61C88647 = 0x1_2559_92D5


def test_buckets_dealt_round_robin_ignoring_weight():
    lab = golden_lab("dh", [5, 1, 1])  # list rs3 rs2 rs1
    assert [name_of(d) for d in lab.sched.buckets[:6]] == "rs3 rs2 rs1 rs3 rs2 rs1".split()
    dst = ip("203.0.113.77")
    want = ["rs3", "rs2", "rs1"][dh_hashkey(dst) % 3]
    assert lab.run(3, dst=dst) == [want] * 3


def test_weight_zero_or_overload_means_no_destination():
    lab = golden_lab("dh", [1, 1, 1])
    dst = ip("203.0.113.77")
    d = lab.pick(dst=dst)
    n = int(name_of(d)[2:])
    lab.edit(n, weight=0)  # no rebuild for weight edits: the bucket keeps it
    assert lab.run(1, dst=dst) == [None]
    lab.edit(n, weight=1)
    d.flags |= IP_VS_DEST_F_OVERLOAD
    assert lab.run(1, dst=dst) == [None]


def test_rebuilt_on_delete():
    lab = golden_lab("dh", [1, 1, 1])
    lab.delete(2)
    assert [name_of(d) for d in lab.sched.buckets[:4]] == "rs3 rs1 rs3 rs1".split()
    assert Lab("dh").run(1) == [None]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=20))
def test_stable_for_a_fixed_set(n, dsts):
    lab = golden_lab("dh", [1] * n)
    addrs = [ipaddress.IPv4Address(x).packed for x in dsts]
    first = [lab.pick(dst=a) for a in addrs]
    assert [lab.pick(dst=a) for a in addrs] == first
    assert len(lab.sched.buckets) == DH_TAB_SIZE
