"""ipvs/proto/icmpv6.py: the quoted IPv6 packet (through its extension
headers), errors built the way ``icmp6_send`` does, and the NAT rewrite
of ``ip_vs_nat_icmp_v6`` (every field checked with scapy)."""

from __future__ import annotations

import struct

from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    ICMPv6TimeExceeded,
    IPerror6,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    TCPerror,
)

from ipvs import packet as P
from ipvs.proto.icmpv6 import ICMPV6_QUOTE_MAX, build_error6, is_error, is_ineligible, nat_icmp_v6, parse_quoted6
from tests.conftest import A

C6, V6, R6, D6 = "2001:db8:1::2", "2001:db8:5::5", "2001:db8:2::2", "2001:db8:2::1"


def test_error_types_are_the_ones_below_128():
    assert [t for t in range(256) if is_error(t)] == list(range(128))


def test_parse_quoted6_walks_the_quoted_extension_headers():
    inner = bytes(IPv6(src=V6, dst=C6) / IPv6ExtHdrDestOpt() / TCP(sport=80, dport=40000))
    pkt = bytearray(bytes(IPv6(src=R6, dst=V6) / ICMPv6DestUnreach(code=4) / inner))
    q = parse_quoted6(pkt, 40, len(pkt))
    assert (q.l3, q.l4, q.protocol, q.fragoffs) == (48, 48 + 40 + 8, 6, 0)
    assert bytes(pkt[q.saddr : q.saddr + 16]) == A(V6)
    assert bytes(pkt[q.daddr : q.daddr + 16]) == A(C6)
    assert struct.unpack_from("!HH", pkt, q.l4) == (80, 40000)


def test_parse_quoted6_refuses_short_v4_or_broken_quotes_and_reports_fragments():
    inner = bytes(IPv6(src=V6, dst=C6) / TCP(sport=80, dport=1))
    short = bytearray(bytes(IPv6(src=R6, dst=V6) / ICMPv6DestUnreach() / inner[:39]))
    assert parse_quoted6(short, 40, len(short)) is None
    v4 = bytearray(bytes(IPv6(src=R6, dst=V6) / ICMPv6DestUnreach() / (b"\x45" + inner[1:])))
    assert parse_quoted6(v4, 40, len(v4)) is None
    cut = bytes(IPv6(src=V6, dst=C6) / IPv6ExtHdrHopByHop(len=5) / TCP())[:44]
    broken = bytearray(bytes(IPv6(src=R6, dst=V6) / ICMPv6DestUnreach() / cut))
    assert parse_quoted6(broken, 40, len(broken)) is None
    frag = bytes(IPv6(src=V6, dst=C6) / IPv6ExtHdrFragment(nh=6, offset=2) / (b"x" * 8))
    pkt = bytearray(bytes(IPv6(src=R6, dst=V6) / ICMPv6DestUnreach() / frag))
    assert parse_quoted6(pkt, 40, len(pkt)).fragoffs == 16


def test_build_error6_is_icmp6_send():
    orig = bytearray(bytes(IPv6(src=C6, dst=V6, hlim=1, tc=0x28) / TCP(sport=40000, dport=80) / (b"z" * 3000)))
    err = build_error6(orig, 0, len(orig), P.ICMPV6_PKT_TOOBIG, 0, A(V6), info=1400)
    assert len(err) == 1280  # quote cut so the error fits the minimum MTU
    p = IPv6(bytes(err))
    assert (p.src, p.dst, p.nh, p.hlim, p.tc, p.fl, p.plen) == (V6, C6, 58, 64, 0, 0, 1240)
    icmp = p[ICMPv6PacketTooBig]
    assert (icmp.type, icmp.code, icmp.mtu) == (2, 0, 1400)
    assert bytes(err[48:]) == bytes(orig[:ICMPV6_QUOTE_MAX])
    want = icmp.cksum
    icmp.cksum = None
    assert IPv6(bytes(p))[ICMPv6PacketTooBig].cksum == want
    small = bytearray(bytes(IPv6(src=C6, dst=V6) / UDP(sport=1, dport=53) / b"q"))
    err = build_error6(small, 0, len(small), P.ICMPV6_DEST_UNREACH, P.ICMPV6_PORT_UNREACH, A(V6))
    p = IPv6(bytes(err))
    assert (p[ICMPv6DestUnreach].code, bytes(err[48:])) == (4, bytes(small))


def test_is_ineligible_never_answers_an_error():
    err = bytearray(bytes(IPv6(src=R6, dst=C6) / ICMPv6TimeExceeded() / bytes(IPv6() / TCP())))
    assert is_ineligible(err, P.parse(err, 0))
    echo = bytearray(bytes(IPv6(src=C6, dst=V6) / ICMPv6EchoRequest()))
    assert not is_ineligible(echo, P.parse(echo, 0))
    tcp6 = bytearray(bytes(IPv6(src=C6, dst=V6) / TCP()))
    assert not is_ineligible(tcp6, P.parse(tcp6, 0))
    later = bytearray(bytes(IPv6(src=C6, dst=V6) / IPv6ExtHdrFragment(nh=58, offset=8) / (b"\x01" * 8)))
    assert not is_ineligible(later, P.parse(later, 0))


class _Conn:
    """The fields ip_vs_nat_icmp_v6 reads of a connection."""

    def __init__(self) -> None:
        self.vaddr, self.vport = A(V6), 80
        self.daddr, self.dport = A("2001:db8:2::3"), 8080


def test_nat_icmp_v6_out_rewrites_source_quote_port_and_checksum():
    # The real server tells the client (through the director) its packet was too big.
    quoted = bytes(IPv6(src=C6, dst="2001:db8:2::3") / IPv6ExtHdrDestOpt() / TCP(sport=40000, dport=8080))
    pkt = bytearray(bytes(IPv6(src="2001:db8:2::3", dst=C6) / IPv6ExtHdrHopByHop()
                          / ICMPv6PacketTooBig(mtu=1300) / quoted))
    h = P.parse(pkt, 0)
    q = parse_quoted6(pkt, h.l4, h.end)
    nat_icmp_v6(pkt, h, q, _Conn(), inout=True)
    p = IPv6(bytes(pkt))
    assert (p.src, p.dst) == (V6, C6)
    inner = p[IPerror6]
    assert (inner.src, inner.dst) == (C6, V6)
    assert (inner[TCPerror].sport, inner[TCPerror].dport) == (40000, 80)
    assert P.icmp6_checksum(pkt, h) == p[ICMPv6PacketTooBig].cksum
    want = p[ICMPv6PacketTooBig].cksum
    p[ICMPv6PacketTooBig].cksum = None
    assert IPv6(bytes(p))[ICMPv6PacketTooBig].cksum == want
    assert p[ICMPv6PacketTooBig].mtu == 1300


def test_nat_icmp_v6_in_rewrites_destination_quote_source_port():
    # A router on the client side reports the VIP's reply unreachable.
    quoted = bytes(IPv6(src=V6, dst=C6) / TCP(sport=80, dport=40000))
    pkt = bytearray(bytes(IPv6(src="2001:db8:1::1", dst=V6) / ICMPv6DestUnreach(code=3) / quoted))
    h = P.parse(pkt, 0)
    q = parse_quoted6(pkt, h.l4, h.end)
    nat_icmp_v6(pkt, h, q, _Conn(), inout=False)
    p = IPv6(bytes(pkt))
    assert (p.src, p.dst) == ("2001:db8:1::1", "2001:db8:2::3")
    inner = p[IPerror6]
    assert (inner.src, inner.dst, inner[TCPerror].sport, inner[TCPerror].dport) == (
        "2001:db8:2::3", C6, 8080, 40000)
    want = p[ICMPv6DestUnreach].cksum
    p[ICMPv6DestUnreach].cksum = None
    assert IPv6(bytes(p))[ICMPv6DestUnreach].cksum == want


def test_nat_icmp_v6_leaves_ports_of_a_quoted_later_fragment():
    quoted = bytes(IPv6(src=V6, dst=C6) / IPv6ExtHdrFragment(nh=6, offset=4) / (b"\x11" * 8))
    pkt = bytearray(bytes(IPv6(src="2001:db8:1::1", dst=V6) / ICMPv6DestUnreach() / quoted))
    before = bytes(pkt[48 + 48 :])
    h = P.parse(pkt, 0)
    q = parse_quoted6(pkt, h.l4, h.end)
    nat_icmp_v6(pkt, h, q, _Conn(), inout=False)
    assert bytes(pkt[48 + 48 :]) == before
    assert bytes(pkt[24:40]) == A("2001:db8:2::3")
