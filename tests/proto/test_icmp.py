"""ipvs/proto/icmp.py: reading the quoted packet of an ICMP error and
building errors the way ``__icmp_send`` does (checked with scapy)."""

from scapy.layers.inet import ICMP, IP, TCP, IPerror

from ipvs.proto.icmp import ICMP_ERROR_MAX, RELATED_TYPES, build_error, parse_quoted
from ipvs.uapi import IPPROTO_TCP
from tests.conftest import A, icmp_error, inet_csum, tcp


def test_related_types_are_unreach_quench_time_exceeded():
    assert RELATED_TYPES == {3, 4, 11}


def test_parse_quoted_finds_the_inner_headers():
    inner = bytes(IP(src="172.16.0.2", dst="198.51.100.2", options=b"\x01\x01\x01\x00") / TCP(sport=80, dport=999))
    pkt = icmp_error("172.16.0.2", "198.51.100.2", inner[:32])
    q = parse_quoted(pkt, 20, len(pkt))
    assert q.l3 == 28 and q.l4 == 28 + 24 and q.protocol == IPPROTO_TCP and q.fragoffs == 0
    assert bytes(pkt[q.saddr : q.saddr + 4]) == A("172.16.0.2")
    assert bytes(pkt[q.daddr : q.daddr + 4]) == A("198.51.100.2")


def test_parse_quoted_rejects_short_or_non_ipv4_quotes():
    inner = bytes(IP(src="1.1.1.1", dst="2.2.2.2") / TCP())
    pkt = icmp_error("1.1.1.1", "2.2.2.2", inner[:23])  # < IP header + 4
    assert parse_quoted(pkt, 20, len(pkt)) is None
    pkt = icmp_error("1.1.1.1", "2.2.2.2", b"\x60" + inner[1:28])
    assert parse_quoted(pkt, 20, len(pkt)) is None
    bad_ihl = bytearray(inner[:28])
    bad_ihl[0] = 0x43
    pkt = icmp_error("1.1.1.1", "2.2.2.2", bytes(bad_ihl))
    assert parse_quoted(pkt, 20, len(pkt)) is None


def test_parse_quoted_reports_fragment_offset():
    inner = bytes(IP(src="1.1.1.1", dst="2.2.2.2", frag=5) / TCP())
    pkt = icmp_error("1.1.1.1", "2.2.2.2", inner[:28])
    assert parse_quoted(pkt, 20, len(pkt)).fragoffs == 40


def test_build_error_layout_and_checksums():
    orig = tcp("198.51.100.2", 3456, "203.0.113.5", 80, payload=b"x" * 1000)
    orig[1] = 0x1C | 0x01  # TOS bits and an ECN bit
    err = build_error(orig, 0, len(orig), 3, 3, A("203.0.113.5"), info=0)
    assert len(err) == ICMP_ERROR_MAX
    p = IP(bytes(err))
    assert (p.src, p.dst, p.ttl, p.proto, p.flags.value) == ("203.0.113.5", "198.51.100.2", 64, 1, 0)
    assert p.tos == 0xC0 | 0x1C  # precedence internetwork control, TOS kept, ECN dropped
    assert (p[ICMP].type, p[ICMP].code) == (3, 3)
    assert inet_csum(bytes(err[:20])) == 0
    assert inet_csum(bytes(err[20:])) == 0
    assert bytes(err[28:]) == bytes(orig[: ICMP_ERROR_MAX - 28])


def test_build_error_small_packet_quoted_whole_with_mtu_info():
    orig = tcp("198.51.100.2", 3456, "203.0.113.5", 80)
    err = build_error(orig, 0, len(orig), 3, 4, A("203.0.113.5"), info=1400)
    assert len(err) == 28 + len(orig)
    p = IP(bytes(err))
    assert p[ICMP].nexthopmtu == 1400
    assert p[IPerror].dst == "203.0.113.5"
    assert inet_csum(bytes(err[20:])) == 0
