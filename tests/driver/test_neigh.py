"""The neighbour cache: resolution, retransmissions, failure and what it hands back."""

from __future__ import annotations

import ipaddress

from ipvs.driver import neigh
from ipvs.driver.neigh import MAX_PROBES, QUEUE_FRAMES, NeighTable

HZ = 250
IP = 0xAC100005


def _fail(t: NeighTable, start: int) -> tuple[list, list]:
    """Tick once a second from ``start`` until the entry fails; (requests, frames)."""
    requests = []
    for s in range(1, MAX_PROBES + 1):
        req, failed = t.tick(start + s * HZ)
        requests += req
        if failed:
            return requests, failed
    return requests, []


def test_failed_entry_hands_back_its_frames_oldest_first():
    t = NeighTable(HZ)
    frames = [(bytearray([i]), 1) for i in range(3)]
    assert t.enqueue(IP, frames[0][0], 1, 0) is True  # the first frame sends the request
    assert t.enqueue(IP, frames[1][0], 1, 10) is False
    assert t.enqueue(IP, frames[2][0], 1, 20) is False
    requests, failed = _fail(t, 0)
    assert requests == [(IP, None)] * (MAX_PROBES - 1)  # broadcast retransmissions
    assert failed == frames
    assert IP not in t.entries and IP not in t.mac
    assert (t.stats.failed, t.stats.unresolved, t.stats.queue_drops) == (1, 3, 0)
    assert t.stats.probes_sent == MAX_PROBES


def test_frame_after_a_failure_starts_a_new_resolution():
    t = NeighTable(HZ)
    t.enqueue(IP, bytearray(b"a"), 1, 0)
    _fail(t, 0)
    assert t.enqueue(IP, bytearray(b"b"), 1, 5 * HZ) is True
    requests, failed = _fail(t, 5 * HZ)
    assert len(requests) == MAX_PROBES - 1 and failed == [(bytearray(b"b"), 1)]
    assert t.stats.failed == 2 and t.stats.unresolved == 2


def test_full_queue_drops_the_oldest_and_an_answer_releases_the_rest():
    t = NeighTable(HZ)
    for i in range(QUEUE_FRAMES + 2):
        t.enqueue(IP, bytearray([i]), 1, 0)
    assert t.stats.queue_drops == 2
    waiting = t.confirm(IP, b"\x02" * 6, 1, create=False)
    assert [b[0] for b, _ in waiting] == list(range(2, QUEUE_FRAMES + 2))
    assert t.tick(10 * HZ) == ([], [])
    assert t.stats.unresolved == 0 and t.stats.failed == 0


# ------------------------------------------------------------ ndisc

from scapy.layers.inet6 import (  # noqa: E402
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import Ether  # noqa: E402

from ipvs import packet as P  # noqa: E402

MAC = bytes.fromhex("020000000001")
PEER = bytes.fromhex("020000000002")
GW6, RS6 = "2001:db8:2::1", "2001:db8:2::2"


def A6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def _scapy_ok(frame: bytes, layer) -> object:
    p = Ether(frame[10:])
    got = p[layer].cksum
    p[layer].cksum = None
    assert Ether(bytes(p))[layer].cksum == got
    return p


def test_ns_frame_resolves_through_the_solicited_node_group():
    f = neigh.ns_frame(MAC, A6(GW6), A6(RS6))
    assert len(f) == neigh.ND_FRAME_LEN and f[:10] == bytes(10)
    p = _scapy_ok(bytes(f), ICMPv6ND_NS)
    assert (p.dst, p.src, p.type) == ("33:33:ff:00:00:02", "02:00:00:00:00:01", 0x86DD)
    assert (p[IPv6].src, p[IPv6].dst, p[IPv6].hlim) == (GW6, "ff02::1:ff00:2", 255)
    assert p[ICMPv6ND_NS].tgt == RS6 and p[ICMPv6NDOptSrcLLAddr].lladdr == "02:00:00:00:00:01"
    probe = Ether(bytes(neigh.ns_frame(MAC, A6(GW6), A6(RS6), PEER))[10:])
    assert (probe.dst, probe[IPv6].dst) == ("02:00:00:00:00:02", RS6)


def test_na_frame_solicited_and_unsolicited():
    p = _scapy_ok(bytes(neigh.na_frame(MAC, A6(GW6), A6(RS6), PEER)), ICMPv6ND_NA)
    na = p[ICMPv6ND_NA]
    assert (p.dst, p[IPv6].src, p[IPv6].dst, p[IPv6].hlim) == ("02:00:00:00:00:02", GW6, RS6, 255)
    assert (na.tgt, na.R, na.S, na.O) == (GW6, 0, 1, 1)
    assert p[ICMPv6NDOptDstLLAddr].lladdr == "02:00:00:00:00:01"
    p = _scapy_ok(bytes(neigh.na_frame(MAC, A6(GW6), neigh.ALL_NODES, None, solicited=False)), ICMPv6ND_NA)
    assert (p.dst, p[IPv6].dst, p[ICMPv6ND_NA].S) == ("33:33:00:00:00:01", "ff02::1", 0)


def _frame(pkt) -> bytearray:
    return bytearray(10) + bytearray(bytes(Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / pkt))


def test_parse_ndisc_reads_scapy_messages_and_refuses_bad_ones():
    ns = _frame(IPv6(src=RS6, dst="ff02::1:ff00:1", hlim=255) / ICMPv6ND_NS(tgt=GW6)
                / ICMPv6NDOptSrcLLAddr(lladdr="02:00:00:00:00:02"))
    assert neigh.parse_ndisc(ns, P.parse(ns, 24)) == (135, 0, A6(GW6), PEER)
    na = _frame(IPv6(src=RS6, dst=GW6, hlim=255) / ICMPv6ND_NA(tgt=RS6, S=1, O=1, R=0)
                / ICMPv6NDOptDstLLAddr(lladdr="02:00:00:00:00:02"))
    t, flags, tgt, ll = neigh.parse_ndisc(na, P.parse(na, 24))
    assert (t, flags & neigh.NA_SOLICITED, tgt, ll) == (136, neigh.NA_SOLICITED, A6(RS6), PEER)
    no_opt = _frame(IPv6(src=RS6, dst=GW6, hlim=255) / ICMPv6ND_NS(tgt=GW6))
    assert neigh.parse_ndisc(no_opt, P.parse(no_opt, 24))[3] is None
    hop = _frame(IPv6(src=RS6, dst=GW6, hlim=64) / ICMPv6ND_NS(tgt=GW6))
    assert neigh.parse_ndisc(hop, P.parse(hop, 24)) is None  # forwarded: not from the link
    bad = bytearray(ns)
    bad[-1] ^= 1
    assert neigh.parse_ndisc(bad, P.parse(bad, 24)) is None
    zero = _frame(IPv6(src=RS6, dst=GW6, hlim=255) / ICMPv6ND_NS(tgt=GW6) / (b"\x01\x00" + bytes(6)))
    assert neigh.parse_ndisc(zero, P.parse(zero, 24)) is None  # an option of length 0


def test_the_table_keys_ipv6_neighbours_by_128_bit_ints():
    t = neigh.NeighTable(250)
    ip = int.from_bytes(A6(RS6), "big")
    assert t.enqueue(ip, bytearray(b"x"), 1, 0)
    assert t.confirm(ip, PEER, 1, create=False) == [(bytearray(b"x"), 1)]
    assert t.mac[ip] == PEER


def test_a_lent_frame_waits_as_a_copy():
    # A ring's lent buffer is reused for its next large frame: the queue keeps its own copy.
    from ipvs.driver.ring import LentFrame

    t = NeighTable(HZ)
    lent = LentFrame(b"frame")
    t.enqueue(IP, lent, 5, 0)
    lent[:] = b"other"
    _, failed = _fail(t, 0)
    assert failed == [(bytearray(b"frame"), 5)] and type(failed[0][0]) is bytearray
