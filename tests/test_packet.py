"""ipvs/packet.py: parsing with reason codes, checksum helpers, RFC 1624
incremental updates and the offload (partial checksum) rule."""

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from ipvs import packet as P
from tests.conftest import A, inet_csum, tcp, udp

# ------------------------------------------------------------------ parse


def test_parse_ipv4_fields_at_an_offset():
    frame = bytearray(bytes(Ether() / IP(src="198.51.100.2", dst="203.0.113.5", flags="MF", frag=3,
                                         options=b"\x01\x01\x01\x00") / TCP(sport=1, dport=2)))
    h = P.parse(frame, 14)
    assert isinstance(h, P.IPHeader)
    assert (h.af, h.l3, h.l4, h.protocol, h.alen) == (2, 14, 14 + 24, 6, 4)
    assert h.end == len(frame)
    assert bytes(frame[h.saddr : h.saddr + 4]) == A("198.51.100.2")
    assert bytes(frame[h.daddr : h.daddr + 4]) == A("203.0.113.5")
    assert h.fragoffs == 24 and h.more_frags


def test_parse_ignores_ethernet_padding():
    pkt = tcp("198.51.100.2", 1234, "203.0.113.5", 80)
    n = len(pkt)
    padded = pkt + bytearray(10)
    h = P.parse(padded, 0)
    assert h.end == n


def test_parse_ipv6():
    pkt = bytearray(bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=1, dport=2) / b"xy"))
    h = P.parse(pkt, 0)
    assert (h.af, h.l4, h.protocol, h.alen, h.end) == (10, 40, 17, 16, len(pkt))
    assert bytes(pkt[h.daddr : h.daddr + 16]) == A("2001:db8::2")


def test_parse_reason_codes():
    good = tcp("198.51.100.2", 1234, "203.0.113.5", 80)
    assert P.parse(bytearray(), 0) == P.Drop.TRUNCATED
    assert P.parse(good[:19], 0) == P.Drop.TRUNCATED
    assert P.parse(bytearray(14) + good[:10], 14) == P.Drop.TRUNCATED
    v5 = bytearray(good)
    v5[0] = 0x55
    assert P.parse(v5, 0) == P.Drop.BAD_VERSION
    ihl = bytearray(good)
    ihl[0] = 0x44
    assert P.parse(ihl, 0) == P.Drop.BAD_IHL
    long = bytearray(good)
    struct.pack_into("!H", long, 2, len(good) + 1)
    assert P.parse(long, 0) == P.Drop.BAD_TOTLEN
    short = bytearray(good)
    struct.pack_into("!H", short, 2, 19)
    assert P.parse(short, 0) == P.Drop.BAD_TOTLEN
    # options claimed (ihl 15 = 60 bytes) beyond the total length
    opt = bytearray(good)
    opt[0] = 0x4F
    struct.pack_into("!H", opt, 2, 40)
    assert P.parse(opt, 0) == P.Drop.BAD_TOTLEN
    v6 = bytearray(bytes(IPv6() / UDP()))
    assert P.parse(v6[:39], 0) == P.Drop.TRUNCATED
    struct.pack_into("!H", v6, 4, 9)
    assert P.parse(v6, 0) == P.Drop.BAD_TOTLEN


@given(st.binary(max_size=80), st.integers(0, 90))
def test_parse_never_raises(data, l3):
    r = P.parse(bytearray(data), l3)
    assert isinstance(r, (P.IPHeader, P.Drop))
    if isinstance(r, P.IPHeader):
        assert l3 <= r.l4 <= r.end <= len(data)


def test_ports():
    pkt = udp("198.51.100.2", 5353, "203.0.113.5", 53)
    assert P.ports(pkt, 20) == (5353, 53)


# -------------------------------------------------------------- checksums


@given(st.binary(max_size=300))
def test_csum_words_matches_the_word_loop(data):
    # inet_csum = ~(folded sum); csum_words = folded sum with 0xFFFF for -0.
    s = P.csum_words(data)
    assert 0 <= s <= 0xFFFF
    if any(data):
        assert s == ~inet_csum(data) & 0xFFFF or (s == 0xFFFF and inet_csum(data) == 0)
    else:
        assert s == 0


def test_csum_words_negative_zero_is_ffff():
    assert P.csum_words(b"\xff\xff") == 0xFFFF
    assert P.csum_words(b"\x80\x00\x7f\xff") == 0xFFFF


def test_fold():
    assert P.fold(0x1FFFE) == 0xFFFF
    assert P.fold(0x12345678) == (0x1234 + 0x5678)
    assert P.fold(0xFFFF_FFFF_FFFF) == 0xFFFF


def test_ip_checksum_matches_scapy():
    pkt = tcp("198.51.100.2", 1234, "203.0.113.5", 80)
    want = struct.unpack_from("!H", pkt, 10)[0]
    assert P.ip_checksum(pkt, 0, 20) == want
    pkt[10:12] = b"\x12\x34"
    P.ip_send_check(pkt, 0)
    assert struct.unpack_from("!H", pkt, 10)[0] == want


def test_ip_checksum_with_options():
    pkt = bytearray(bytes(IP(src="1.2.3.4", dst="5.6.7.8", options=b"\x94\x04\x00\x00") / UDP()))
    assert P.ip_checksum(pkt, 0, 24) == IP(bytes(pkt)).chksum


@given(
    st.sampled_from([6, 17]), st.binary(max_size=200), st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF),
    st.integers(1, 65535), st.integers(1, 65535),
)
def test_l4_checksum_equals_scapy(proto, payload, s, d, sp, dp):
    src, dst = str(ipaddress.IPv4Address(s)), str(ipaddress.IPv4Address(d))
    if proto == 6:
        pkt = bytearray(bytes(IP(src=src, dst=dst) / TCP(sport=sp, dport=dp) / payload))
        want = IP(bytes(pkt))[TCP].chksum
    else:
        pkt = bytearray(bytes(IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / payload))
        want = IP(bytes(pkt))[UDP].chksum
    h = P.parse(pkt, 0)
    got = P.l4_checksum(pkt, h)
    if proto == 17 and got == 0:
        got = 0xFFFF  # RFC 768: a computed 0 is sent as all ones (scapy does so)
    assert got == want
    assert P.l4_csum_ok(pkt, h)
    coff = 20 + (16 if proto == 6 else 6)
    pkt[coff] ^= 0x01
    assert not P.l4_csum_ok(pkt, h)


def test_l4_csum_ok_accepts_udp_without_checksum():
    pkt = udp("198.51.100.2", 1, "203.0.113.5", 2, chksum=0)
    assert P.l4_csum_ok(pkt, P.parse(pkt, 0))


def test_l4_csum_full_writes_ffff_for_a_zero_udp_result():
    # Choose the payload so the datagram's ones'-complement sum is -0:
    # then the checksum computes to 0 and must go out as 0xFFFF.
    pkt = udp("198.51.100.2", 1000, "203.0.113.5", 53, payload=b"\0\0", chksum=0)
    h = P.parse(pkt, 0)
    pkt[26:28] = b"\0\0"
    pseudo = pkt[12:20] + b"\x00\x11" + (len(pkt) - 20).to_bytes(2, "big")
    partial = ~inet_csum(bytes(pseudo) + bytes(pkt[20:])) & 0xFFFF
    fill = (0xFFFF - partial) & 0xFFFF
    pkt[28:30] = fill.to_bytes(2, "big")
    assert P.l4_checksum(pkt, h) in (0, 0xFFFF)
    P.l4_csum_full(pkt, h)
    assert pkt[26:28] == b"\xff\xff"


def test_icmp_checksum_matches_scapy():
    from scapy.layers.inet import ICMP

    pkt = bytearray(bytes(IP(src="1.2.3.4", dst="5.6.7.8") / ICMP(type=8, id=7, seq=9) / b"abc"))
    assert P.icmp_checksum(pkt, 20, len(pkt)) == IP(bytes(pkt))[ICMP].chksum


# ----------------------------------------------------- RFC 1624 incremental


@given(st.binary(min_size=2, max_size=64).filter(lambda b: len(b) % 2 == 0), st.data())
def test_csum_replace_equals_full_recompute(data, draw):
    data = bytearray(data)
    check = inet_csum(data)
    i = draw.draw(st.integers(0, len(data) // 2 - 1)) * 2
    n = draw.draw(st.sampled_from([2, 4])) if i + 4 <= len(data) else 2
    new = draw.draw(st.binary(min_size=n, max_size=n))
    old = bytes(data[i : i + n])
    data[i : i + n] = new
    got = P.csum_replace(check, old, new)
    want = inet_csum(data)
    # Incremental and full agree up to the two representations of zero.
    assert got == want or {got, want} == {0, 0xFFFF}


def _nat_case(proto, payload, new_addr, new_port):
    if proto == 6:
        pkt = tcp("198.51.100.2", 40000, "203.0.113.5", 80, flags="PA", payload=payload)
    else:
        pkt = udp("198.51.100.2", 40000, "203.0.113.5", 53, payload=payload)
    h = P.parse(pkt, 0)
    coff = 20 + (16 if proto == 6 else 6)
    old_addr = bytes(pkt[16:20])
    old_port = int.from_bytes(pkt[22:24], "big")
    pkt[16:20] = new_addr
    pkt[22:24] = new_port.to_bytes(2, "big")
    return pkt, h, coff, old_addr, old_port


@given(st.sampled_from([6, 17]), st.binary(max_size=64), st.binary(min_size=4, max_size=4), st.integers(1, 65535))
def test_l4_csum_nat_gives_a_valid_checksum(proto, payload, new_addr, new_port):
    pkt, h, coff, old_addr, old_port = _nat_case(proto, payload, new_addr, new_port)
    P.l4_csum_nat(pkt, coff, old_addr, new_addr, old_port, new_port, False)
    pseudo = bytes(pkt[12:20]) + bytes((0, proto)) + (len(pkt) - 20).to_bytes(2, "big")
    assert inet_csum(pseudo + bytes(pkt[20:])) == 0
    full = P.l4_checksum(pkt, h)
    got = int.from_bytes(pkt[coff : coff + 2], "big")
    assert got == full or {got, full} == {0, 0xFFFF}


@given(st.binary(max_size=64), st.binary(min_size=4, max_size=4), st.integers(1, 65535))
def test_partial_checksum_update_rule(payload, new_addr, new_port):
    """afpacket-offloads.md finding 3: with NEEDS_CSUM the field holds the
    uncomplemented pseudo-header sum; NAT adds only the address delta and
    ignores the port, i.e. field' = fold(field + ~old + new)."""
    pkt, h, coff, old_addr, old_port = _nat_case(6, payload, new_addr, new_port)
    tcplen = len(pkt) - 20

    def pseudo_sum(dst):
        words = bytes(pkt[12:16]) + dst + bytes((0, 6)) + tcplen.to_bytes(2, "big")
        return ~inet_csum(words) & 0xFFFF

    before = pseudo_sum(old_addr)
    pkt[coff : coff + 2] = before.to_bytes(2, "big")
    P.l4_csum_nat(pkt, coff, old_addr, new_addr, old_port, new_port, True)
    got = int.from_bytes(pkt[coff : coff + 2], "big")
    want = pseudo_sum(new_addr)
    assert got == want or {got, want} == {0, 0xFFFF}
    # Completing the checksum the way the NIC does (sum from csum_start,
    # field included, complemented) gives a checksum that verifies.
    total = ~inet_csum(bytes(pkt[20:])) & 0xFFFF
    pkt[coff : coff + 2] = inet_csum(total.to_bytes(2, "big")).to_bytes(2, "big")
    pseudo = bytes(pkt[12:20]) + bytes((0, 6)) + tcplen.to_bytes(2, "big")
    assert inet_csum(pseudo + bytes(pkt[20:])) == 0


def test_l4_csum_full_partial_writes_the_pseudo_header_sum():
    pkt = tcp("198.51.100.2", 1, "172.16.0.2", 80, payload=b"data")
    h = P.parse(pkt, 0)
    P.l4_csum_full(pkt, h, partial=True)
    words = bytes(pkt[12:20]) + b"\x00\x06" + (len(pkt) - 20).to_bytes(2, "big")
    assert int.from_bytes(pkt[36:38], "big") == ~inet_csum(words) & 0xFFFF


@given(st.binary(min_size=30, max_size=80), st.binary(min_size=4, max_size=4), st.binary(min_size=2, max_size=2),
       st.integers(0, 20))
def test_put_addr4_and_put_port_write_in_place_and_nothing_else(frame, addr, port, off):
    buf = bytearray(frame)
    want = bytearray(frame)
    want[off : off + 4] = addr
    want[off + 6 : off + 8] = port
    P.put_addr4(buf, off, addr)
    P.put_port(buf, off + 6, port)
    assert buf == want and len(buf) == len(frame)


# --------------------------------------------------------------- IPv6

from scapy.layers.inet6 import (  # noqa: E402
    ICMPv6DestUnreach,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import AH, ESP  # noqa: E402

C6, V6, R6 = "2001:db8:1::2", "2001:db8:5::5", "2001:db8:2::2"


def v6(*layers) -> bytearray:
    pkt = IPv6(src=C6, dst=V6, hlim=64)
    for layer in layers:
        pkt = pkt / layer
    return bytearray(bytes(pkt))


def pseudo6_csum(pkt: bytes, l4: int, proto: int, coff: int) -> int:
    """The checksum an IPv6 host computes (header's own addresses,
    transport length and protocol), by the word loop."""
    seg = bytearray(pkt[l4:])
    seg[coff : coff + 2] = b"\0\0"
    ph = pkt[8:24] + pkt[24:40] + struct.pack("!IxxxB", len(seg), proto)
    return inet_csum(ph + bytes(seg))


def test_parse_ipv6_walks_hop_by_hop_destination_options_and_routing():
    pkt = v6(IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(options=[]), IPv6ExtHdrRouting(addresses=[]),
             TCP(sport=1234, dport=80))
    h = P.parse(pkt, 0)
    assert (h.protocol, h.l4, h.end, h.fragoffs, h.more_frags) == (6, 40 + 8 + 8 + 8, len(pkt), 0, False)
    assert P.ports(pkt, h.l4) == (1234, 80)


def test_parse_ipv6_option_lengths_are_in_8_byte_units_ah_in_4():
    # A hop-by-hop header of 24 bytes of PadN (length field 2).
    hbh = bytes([17, 2, 1, 20]) + bytes(20)
    pkt = bytearray(bytes(IPv6(src=C6, dst=V6, nh=0, plen=24 + 8)) + hbh + bytes(UDP(sport=5, dport=53)))
    h = P.parse(pkt, 0)
    assert (h.protocol, h.l4) == (17, 64)
    # AH: payload length in 4-byte units minus 2 (RFC 4302 2.2).
    ah = AH(nh=6, payloadlen=4, spi=1, seq=1, icv=b"\0" * 12)
    pkt = v6(ah, TCP(sport=1, dport=2))
    h = P.parse(pkt, 0)
    assert (h.protocol, h.l4) == (6, 40 + 24)


def test_parse_ipv6_esp_and_no_next_header_end_the_walk():
    pkt = v6(IPv6ExtHdrHopByHop(), ESP(spi=7, seq=1, data=b"x" * 16))
    h = P.parse(pkt, 0)
    assert (h.protocol, h.l4) == (P.NEXTHDR_ESP, 48)
    pkt = bytearray(bytes(IPv6(src=C6, dst=V6, nh=59)))
    h = P.parse(pkt, 0)
    assert (h.protocol, h.l4, h.end) == (P.NEXTHDR_NONE, 40, 40)


def test_parse_ipv6_fragments():
    first = v6(IPv6ExtHdrFragment(nh=17, offset=0, m=1, id=9), UDP(sport=1, dport=2) / (b"a" * 16))
    h = P.parse(first, 0)
    assert (h.protocol, h.l4, h.fragoffs, h.more_frags) == (17, 48, 0, True)
    later = v6(IPv6ExtHdrFragment(nh=17, offset=3, m=0, id=9), b"b" * 16)
    h = P.parse(later, 0)
    assert (h.protocol, h.l4, h.fragoffs, h.more_frags) == (17, 48, 24, False)
    atomic = v6(IPv6ExtHdrFragment(nh=6, offset=0, m=0, id=9), TCP(sport=1, dport=2))
    h = P.parse(atomic, 0)
    assert (h.protocol, h.l4, h.fragoffs, h.more_frags) == (6, 48, 0, False)
    # A later fragment followed by another extension header: -ENOENT.
    odd = v6(IPv6ExtHdrFragment(nh=60, offset=3, m=0, id=9), IPv6ExtHdrDestOpt(nh=17), b"c" * 8)
    assert P.parse(odd, 0) == P.Drop.BAD_EXTHDR


def test_parse_ipv6_truncated_extension_headers():
    pkt = v6(IPv6ExtHdrHopByHop(), TCP(sport=1, dport=2))
    # The hop-by-hop header claims 64 bytes: its end runs past the packet.
    pkt[41] = 7
    assert P.parse(pkt, 0) == P.Drop.BAD_EXTHDR
    # Nothing after the fixed header but a next-header value of hop-by-hop.
    bare = bytearray(bytes(IPv6(src=C6, dst=V6, nh=0, plen=0)))
    assert P.parse(bare, 0) == P.Drop.BAD_EXTHDR
    one = bytearray(bytes(IPv6(src=C6, dst=V6, nh=44, plen=2))) + b"\x11\0"
    assert P.parse(one, 0) == P.Drop.BAD_EXTHDR


@given(st.binary(min_size=40, max_size=120), st.integers(0, 3))
def test_parse_ipv6_never_raises(data, l3):
    frame = bytearray(l3) + bytearray(data)
    frame[l3] = 0x60 | (frame[l3] & 0x0F)
    h = P.parse(frame, l3)
    assert isinstance(h, (P.IPHeader, P.Drop))
    if isinstance(h, P.IPHeader):
        assert l3 + 40 <= h.l4 <= h.end <= len(frame)


def test_csum_check_with_extension_headers_kernel_fix_2026():
    """The kernel's *_csum_check took the transport header at offset 40 and
    the IPv6 header's next header as the pseudo-header protocol; with a
    hop-by-hop header both are wrong ("ipvs: skip ipv6 extension headers
    for csum checks").  The descriptor's l4 and protocol are right."""
    pkt = v6(IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(), TCP(sport=1234, dport=80, flags="PA") / b"data")
    assert pkt[6] == 0  # the IPv6 header says hop-by-hop, not TCP
    h = P.parse(pkt, 0)
    assert h.l4 == 56
    want = pseudo6_csum(bytes(pkt), 56, 6, 16)
    assert struct.unpack_from("!H", pkt, 56 + 16)[0] == want  # scapy agrees with the word loop
    assert P.l4_csum_ok(pkt, h)
    assert P.l4_checksum(pkt, h) == want
    # What the unfixed kernel computed: offset 40, protocol 0 — not a match.
    assert pseudo6_csum(bytes(pkt), 40, 0, 16) != want
    bad = bytearray(pkt)
    bad[-1] ^= 1
    assert not P.l4_csum_ok(bad, P.parse(bad, 0))
    u = v6(IPv6ExtHdrHopByHop(), UDP(sport=5, dport=53) / b"q")
    hu = P.parse(u, 0)
    assert hu.l4 == 48 and P.l4_csum_ok(u, hu)


@given(
    st.sampled_from(["tcp", "udp"]),
    st.binary(max_size=64),
    st.sampled_from([(), ("hbh",), ("hbh", "dst"), ("rt",), ("dst", "frag0")]),
    st.binary(min_size=16, max_size=16),
    st.integers(0, 0xFFFF),
)
def test_l4_csum_nat_ipv6_field_by_field_against_a_full_recompute(proto, payload, exts, new_addr, new_port):
    """DNAT over IPv6: the 16-byte address and port change, the RFC 1624
    update of the transport checksum equals a recompute from scratch."""
    layers = {
        "hbh": IPv6ExtHdrHopByHop(), "dst": IPv6ExtHdrDestOpt(), "rt": IPv6ExtHdrRouting(addresses=[]),
        "frag0": IPv6ExtHdrFragment(offset=0, m=0, id=1),
    }
    l4 = TCP(sport=40000, dport=80, flags="A") if proto == "tcp" else UDP(sport=40000, dport=53)
    pkt = v6(*[layers[e] for e in exts], l4 / payload)
    h = P.parse(pkt, 0)
    coff = h.l4 + (16 if proto == "tcp" else 6)
    old_addr = bytes(pkt[24:40])
    old_port = 80 if proto == "tcp" else 53
    # nat_delta's precomputed change, applied as xmit applies it, first.
    delta = P.nat_delta(old_addr, new_addr, old_port, new_port)
    c = struct.unpack_from("!H", pkt, coff)[0]
    by_delta = ~P.fold((~c & 0xFFFF) + (delta >> 16) + (delta & 0xFFFF)) & 0xFFFF
    P.l4_csum_nat(pkt, coff, old_addr, new_addr, old_port, new_port, False)
    assert struct.unpack_from("!H", pkt, coff)[0] == by_delta
    pkt[24:40] = new_addr
    struct.pack_into("!H", pkt, h.l4 + 2, new_port)
    got = struct.unpack_from("!H", pkt, coff)[0]
    want = pseudo6_csum(bytes(pkt), h.l4, h.protocol, coff - h.l4)
    # Equal as ones'-complement numbers (0x0000 and 0xFFFF are both zero).
    assert got == want or {got, want} == {0, 0xFFFF}
    assert P.l4_csum_ok(pkt, P.parse(pkt, 0)) or (proto == "udp" and got == 0)


def test_l4_csum_full_ipv6_partial_and_complete():
    pkt = v6(IPv6ExtHdrHopByHop(), UDP(sport=1, dport=2) / b"abc")
    h = P.parse(pkt, 0)
    P.l4_csum_full(pkt, h)
    assert struct.unpack_from("!H", pkt, h.l4 + 6)[0] == pseudo6_csum(bytes(pkt), h.l4, 17, 6)
    P.l4_csum_full(pkt, h, partial=True)
    ph = P.csum_words(bytes(pkt[8:40]) + struct.pack("!IxxxB", h.end - h.l4, 17))
    assert struct.unpack_from("!H", pkt, h.l4 + 6)[0] == ph


def test_icmp6_checksum_matches_scapy():
    quoted = bytes(IPv6(src=V6, dst=C6) / TCP(sport=80, dport=1234))
    pkt = bytearray(bytes(IPv6(src=R6, dst=C6) / IPv6ExtHdrHopByHop() / ICMPv6DestUnreach(code=4) / quoted))
    h = P.parse(pkt, 0)
    assert (h.protocol, h.l4) == (58, 48)
    assert P.icmp6_checksum(pkt, h) == struct.unpack_from("!H", pkt, h.l4 + 2)[0]
