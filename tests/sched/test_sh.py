"""ipvs/sched/sh.py against the kernel's ip_vs_sh.c."""

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from ipvs.sched import IPHdr
from ipvs.sched.sh import SH_TAB_SIZE, sh_hashkey
from ipvs.uapi import (
    AF_INET,
    IP_VS_DEST_F_OVERLOAD,
    IP_VS_SVC_F_SCHED_SH_FALLBACK,
    IP_VS_SVC_F_SCHED_SH_PORT,
    IPPROTO_TCP,
    IPPROTO_UDP,
)
from tests.sched.util import VIP, Lab, golden_lab, name_of

# kernel-goldens/sched_order/order.txt rows "sh 25".."sh-repeat 40": three
# dests of weight 1 (list rs3 rs2 rs1), one connection from each client.
GOLDEN_SH = {
    "198.51.100.2": "rs1",
    "198.51.100.3": "rs1",
    "198.51.100.4": "rs2",
    "198.51.100.5": "rs3",
    "198.51.100.6": "rs2",
    "198.51.100.7": "rs3",
    "198.51.100.8": "rs3",
    "198.51.100.9": "rs1",
    "198.51.100.10": "rs2",
    "198.51.100.11": "rs1",
    "198.51.100.12": "rs3",
    "198.51.100.13": "rs1",
}


def test_golden_sched_order():
    lab = golden_lab("sh", [1, 1, 1])
    got = {src: lab.run(1, src=src, sport=40025 + i)[0] for i, src in enumerate(GOLDEN_SH)}
    assert got == GOLDEN_SH
    # sh-repeat rows: the same clients again, other ports, same server
    assert [lab.run(1, src=s, sport=p)[0] for s, p in [("198.51.100.2", 40037), ("198.51.100.3", 40038)]] == [
        "rs1",
        "rs1",
    ]


def test_hash_32_known_values():
    # hash_32(x, 8) is the top byte of x * 0x61C88647 mod 2^32.
    assert sh_hashkey(b"\0\0\0\1", 0, 0) == 0x61
    assert sh_hashkey(b"\0\0\0\2", 0, 0) == 0xC3
    assert sh_hashkey(b"\0\0\0\1", 0, 5) == 0x66
    assert sh_hashkey(b"\0\0\0\0", 1, 0) == 0x61  # port is added to the address


def test_table_fill_follows_weights():
    lab = golden_lab("sh", [3, 1])  # list rs2(1) rs1(3)
    names = [name_of(d) for d in lab.sched.buckets[:9]]
    assert names == "rs2 rs1 rs1 rs1 rs2 rs1 rs1 rs1 rs2".split()
    lab.edit(1, weight=0)  # upd_dest rebuilds; weight 0 still takes one bucket
    assert [name_of(d) for d in lab.sched.buckets[:4]] == "rs2 rs1 rs2 rs1".split()


def test_weight_zero_without_and_with_fallback():
    lab = golden_lab("sh", [1, 1, 1])
    lab.edit(1, weight=0)
    assert lab.run(1, src="198.51.100.2") == [None]
    lab = Lab("sh", flags=IP_VS_SVC_F_SCHED_SH_FALLBACK)
    for i in (1, 2, 3):
        lab.add(i)
    lab.edit(1, weight=0)
    first = lab.run(1, src="198.51.100.2")[0]
    assert first in ("rs2", "rs3")
    assert lab.run(3, src="198.51.100.2") == [first] * 3
    # clients that hashed elsewhere are unaffected
    assert lab.run(1, src="198.51.100.4") == ["rs2"]
    lab.dest(2).flags |= IP_VS_DEST_F_OVERLOAD
    lab.dest(3).flags |= IP_VS_DEST_F_OVERLOAD
    assert lab.run(1, src="198.51.100.2") == [None]


def test_sh_port_spreads_one_client():
    lab = Lab("sh", flags=IP_VS_SVC_F_SCHED_SH_PORT)
    for i in (1, 2, 3):
        lab.add(i)
    got = {lab.run(1, sport=p)[0] for p in range(40000, 40030)}
    assert got == {"rs1", "rs2", "rs3"}
    # without the flag the port is ignored
    plain = golden_lab("sh", [1, 1, 1])
    assert {plain.run(1, sport=p)[0] for p in range(40000, 40030)} == {"rs1"}


def test_sh_port_only_for_port_protocols():
    lab = Lab("sh", flags=IP_VS_SVC_F_SCHED_SH_PORT)
    for i in (1, 2, 3):
        lab.add(i)
    src = ipaddress.ip_address("198.51.100.2").packed
    icmpish = {lab.sched.schedule(IPHdr(AF_INET, 1, src, VIP, p, 0), 0) for p in range(30)}
    assert len(icmpish) == 1
    udp = {lab.sched.schedule(IPHdr(AF_INET, IPPROTO_UDP, src, VIP, p, 80), 0) for p in range(30)}
    assert len(udp) == 3


def test_inverse_header_hashes_the_destination():
    lab = golden_lab("sh", [1, 1, 1])
    client = ipaddress.ip_address("198.51.100.5").packed
    iph = IPHdr(AF_INET, IPPROTO_TCP, VIP, client, 80, 40000, inverse=True)
    assert name_of(lab.sched.schedule(iph, 0)) == "rs3"  # as the golden for .5


def test_empty_service():
    assert Lab("sh").run(1) == [None]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(0, 5), min_size=1, max_size=6), st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=20)
)
def test_stable_for_a_fixed_set(weights, clients):
    lab = golden_lab("sh", weights)
    srcs = [str(ipaddress.IPv4Address(c)) for c in clients]
    first = [lab.run(1, src=s)[0] for s in srcs]
    assert [lab.run(1, src=s)[0] for s in reversed(srcs)] == first[::-1]
    assert len(lab.sched.buckets) == SH_TAB_SIZE


def test_ipv6_folds_the_four_words():
    from ipvs import ctl
    from ipvs.netns import NetnsIPVS
    from ipvs.uapi import AF_INET6

    ipvs = NetnsIPVS()
    vip = ipaddress.ip_address("2001:db8::5").packed
    su = ctl.ServiceUser(af=AF_INET6, protocol=IPPROTO_TCP, addr=vip, port=80, sched_name="sh", netmask=128)
    svc = ctl.add_service(ipvs, su)
    for k in range(1, 4):
        a = ipaddress.ip_address(f"2001:db8:1::{k}").packed
        ctl.add_dest(ipvs, su, ctl.DestUser(af=AF_INET6, addr=a, port=80, conn_flags=0))
    client = ipaddress.ip_address("2001:db8:ffff::1234:5678").packed
    words = [int.from_bytes(client[i : i + 4], "big") for i in range(0, 16, 4)]
    fold = words[0] ^ words[1] ^ words[2] ^ words[3]
    bucket = ((fold * 0x61C88647) % 2**32) >> 24
    want = svc.destinations[bucket % 3]
    assert svc.scheduler.schedule(IPHdr(AF_INET6, IPPROTO_TCP, client, vip, 40000, 80), 0) is want
