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
