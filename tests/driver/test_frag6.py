"""ipvs/driver/frag6.py: IPv6 reassembly (in any order, duplicates,
overlaps, limits, expiry) and fragmentation, checked with scapy."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.inet6 import fragment6 as scapy_fragment6

from ipvs.driver.frag6 import Reassembler6, find_frag_hdr, fragment6
from ipvs.packet import parse

L3 = 24
HZ = 250


def dgram(n: int = 3000, hbh: bool = False, frag: bool = True) -> bytes:
    """A UDP datagram of ``n`` payload bytes, with a fragment header for
    scapy's fragment6 to split (``frag``) or as the sender meant it."""
    p = IPv6(src="2001:db8:0:1::2", dst="2001:db8:0:5::5")
    if hbh:
        p = p / IPv6ExtHdrHopByHop()
    if frag:
        p = p / IPv6ExtHdrFragment(id=0x1234)
    return bytes(p / UDP(sport=4000, dport=7) / (bytes(range(256)) * (n // 256 + 1))[:n])


def frames(pkt: bytes, size: int) -> list[bytearray]:
    return [bytearray(L3) + bytearray(bytes(f)) for f in scapy_fragment6(IPv6(pkt), size)]


@given(st.permutations(range(3)), st.booleans())
def test_reassembles_in_any_order(order, hbh):
    pkt = dgram(3000, hbh)
    fs = frames(pkt, 1280)
    assert len(fs) == 3
    r = Reassembler6(HZ)
    got = None
    for i in order:
        got = r.add(fs[i], L3, 0) or got
    buf, max_size = got
    assert bytes(buf[:L3]) == bytes(L3)
    assert bytes(buf[L3:]) == dgram(3000, hbh, frag=False)
    assert max_size == max(len(f) - L3 for f in fs)
    h = parse(buf, L3)
    assert (h.protocol, h.fragoffs, h.more_frags) == (17, 0, False)
    assert r.stats.reassembled == 1 and not r.queues and r.mem == 0


def test_duplicates_ignored_overlaps_drop_the_queue():
    fs = frames(dgram(), 1280)
    r = Reassembler6(HZ)
    assert r.add(fs[0], L3, 0) is None
    assert r.add(bytearray(fs[0]), L3, 0) is None  # duplicate
    assert r.add(fs[1], L3, 0) is None
    assert r.add(fs[2], L3, 0) is not None
    r = Reassembler6(HZ)
    r.add(fs[0], L3, 0)
    bad = bytearray(fs[1])
    fh, _ = find_frag_hdr(bad, L3, len(bad))
    bad[fh + 3] = (bad[fh + 3] & 7) | 0x08  # offset 8 bytes: overlaps the first
    bad[fh + 2] = 0
    assert r.add(bad, L3, 0) is None
    assert r.stats.overlaps == 1 and not r.queues and r.mem == 0


def test_expiry_memory_bound_and_bad_fragments():
    fs = frames(dgram(), 1280)
    r = Reassembler6(HZ)
    r.add(fs[0], L3, 0)
    assert r.expire(60 * HZ - 1) == 0
    assert r.expire(60 * HZ) == 1 and r.mem == 0
    small = Reassembler6(HZ, high_thresh=100)
    assert small.add(fs[0], L3, 0) is None and small.stats.mem_drops == 1
    odd = bytearray(fs[0])
    odd[L3 + 5] -= 1  # a non-last fragment whose data is not a multiple of 8
    assert Reassembler6(HZ).add(odd[:-1], L3, 0) is None


def test_fragment6_keeps_hop_by_hop_in_every_fragment_and_round_trips():
    pkt = dgram(3000, hbh=True, frag=False)
    buf = bytearray(L3) + bytearray(pkt)
    fs = fragment6(buf, L3, 1280, 0xABCD)
    assert len(fs) == 3 and all(len(f) - L3 <= 1280 for f in fs)
    for f in fs:
        p = IPv6(bytes(f[L3:]))
        assert IPv6ExtHdrHopByHop in p and p[IPv6ExtHdrFragment].id == 0xABCD
        assert p.plen == len(f) - L3 - 40
    r = Reassembler6(HZ)
    got = None
    for f in reversed(fs):
        got = r.add(f, L3, 0) or got
    assert bytes(got[0][L3:]) == pkt
    assert fragment6(buf, L3, 40 + 8 + 8 + 4, 1) == []  # no room for 8 bytes of data
