"""ipvs/driver/gso.py: TCP segmentation (IPv4 and IPv6) as tcp_gso_segment does it,
checked field by field with scapy."""

from scapy.layers.inet import IP, TCP

from ipvs.driver.gso import segment_tcp
from tests.conftest import checksums_valid, inet_csum


def super_packet(flags="FPA", n=3000):
    return bytearray(bytes(IP(src="198.51.100.2", dst="203.0.113.5", id=100, flags="DF", ttl=63)
                           / TCP(sport=40000, dport=80, seq=0xFFFFFF00, flags=flags,
                                 options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))])
                           / bytes(i & 0xFF for i in range(n))))


def test_segments_carry_the_payload_in_order_with_their_own_headers():
    pkt = super_packet("FPA" + "C")
    segs = segment_tcp(b"\0" * 24 + pkt, 24, 1000)
    assert len(segs) == 3
    data = b""
    for i, s in enumerate(segs):
        assert s[:24] == bytes(24) and checksums_valid(s, 24)
        p = IP(bytes(s[24:]))
        assert p.len == len(s) - 24 and p.id == 100 + i and p.flags == "DF" and p.ttl == 63
        assert p[TCP].seq == (0xFFFFFF00 + 1000 * i) & 0xFFFFFFFF  # wraps
        assert p[TCP].options == [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]
        want = {0: "AC", 1: "A", 2: "FPA"}[i]
        assert sorted(str(p[TCP].flags)) == sorted(want)
        data += bytes(p[TCP].payload)
    assert data == bytes(pkt[52:])


def test_exact_multiple_and_not_tcp():
    segs = segment_tcp(super_packet("PA", 2000), 0, 1000)
    assert [len(s) - 52 for s in segs] == [1000, 1000]
    assert str(IP(bytes(segs[1]))[TCP].flags) == "PA"
    udp = bytearray(bytes(IP(src="1.2.3.4", dst="5.6.7.8", proto=17) / (b"x" * 100)))
    assert segment_tcp(udp, 0, 10) == []
    assert segment_tcp(super_packet(), 0, 0) == []


def test_ipv6_segments_with_extension_headers():
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt

    pkt = bytearray(bytes(IPv6(src="2001:db8:1::2", dst="2001:db8:f::5", hlim=63, fl=7) / IPv6ExtHdrDestOpt()
                          / TCP(sport=40000, dport=80, seq=5, flags="FPA") / bytes(i & 0xFF for i in range(2500))))
    segs = segment_tcp(b"\0" * 24 + pkt, 24, 1000)
    assert [len(s) - 24 - 40 - 8 - 20 for s in segs] == [1000, 1000, 500]
    data = b""
    for i, s in enumerate(segs):
        p = IPv6(bytes(s[24:]))
        tcp = bytes(s[24 + 48:])
        assert inet_csum(bytes(s[32:64]) + len(tcp).to_bytes(4, "big") + b"\0\0\0\x06" + tcp) == 0
        assert (p.plen, p.hlim, p.fl, p.nh) == (len(s) - 24 - 40, 63, 7, 60)
        assert bytes(s[24:24 + 48]) == bytes(pkt[:4]) + p.plen.to_bytes(2, "big") + bytes(pkt[6:48])
        assert p[TCP].seq == 5 + 1000 * i and str(p[TCP].flags) == ("FPA" if i == 2 else "A")
        data += bytes(p[TCP].payload)
    assert data == bytes(pkt[68:])
