"""ipvs_harness/decap.py: the lab's user-space tunnel endpoint takes back
exactly what ipvs.xmit.tunnel_xmit builds (IPIP, GUE with remote checksum
offload, GRE with its checksum) and refuses what it must not deliver."""

from collections import Counter

from scapy.layers.inet import IP, TCP

from ipvs import uapi, xmit
from ipvs.conn import ConnTable
from ipvs.ip_vs import ConnParam, Dest
from ipvs.netns import NetnsIPVS
from ipvs.packet import parse
from ipvs.proto import proto_get
from ipvs_harness import decap
from tests.conftest import A, checksums_valid, inet_csum, tcp

CLI, VIP, RS, DIR = "198.51.100.2", "203.0.113.5", "172.16.0.2", "172.16.0.1"


def tunnelled(tun_type, tun_flags=0, partial=False):
    dest = Dest(2, A(RS), 80, conn_flags=uapi.IP_VS_CONN_F_TUNNEL, tun_type=tun_type, tun_port=6080,
                tun_flags=tun_flags)
    cp = ConnTable(250).new(ConnParam(2, 6, A(CLI), 3456, A(VIP), 80), A(RS), 80, uapi.IP_VS_CONN_F_TUNNEL, dest)
    inner = tcp(CLI, 3456, VIP, 80, flags="PA", payload=b"GET / HTTP/1.0\r\n\r\n")
    if partial:
        words = bytes(inner[12:20]) + b"\x00\x06" + (len(inner) - 20).to_bytes(2, "big")
        inner[36:38] = (~inet_csum(words) & 0xFFFF).to_bytes(2, "big")
    buf = bytearray(inner)
    h = parse(buf, 0)
    assert xmit.tunnel_xmit(NetnsIPVS(), cp, proto_get(6), buf, h, 1500, partial, A(DIR)) == xmit.NF_STOLEN
    return bytes(buf)


def test_ipip_and_gre_round_trip():
    c = Counter()
    pkt = tunnelled(uapi.IP_VS_CONN_F_TUNNEL_TYPE_IPIP)
    assert IP(decap.strip_ip(pkt)).dst == VIP
    for flags in (0, uapi.IP_VS_TUNNEL_ENCAP_FLAG_CSUM):
        pkt = tunnelled(uapi.IP_VS_CONN_F_TUNNEL_TYPE_GRE, flags)
        inner = decap.gre_payload(decap.strip_ip(pkt), c)
        assert inner is not None and IP(inner)[TCP].dport == 80 and checksums_valid(inner)
    assert not c


def test_gre_with_a_bad_checksum_is_refused():
    c = Counter()
    pkt = bytearray(tunnelled(uapi.IP_VS_CONN_F_TUNNEL_TYPE_GRE, uapi.IP_VS_TUNNEL_ENCAP_FLAG_CSUM))
    pkt[-1] ^= 1
    assert decap.gre_payload(decap.strip_ip(bytes(pkt)), c) is None and c["bad_gre_csum"] == 1


def test_gue_remote_checksum_offload_is_completed():
    c = Counter()
    pkt = tunnelled(uapi.IP_VS_CONN_F_TUNNEL_TYPE_GUE, uapi.IP_VS_TUNNEL_ENCAP_FLAG_REMCSUM, partial=True)
    inner = decap.gue_payload(decap.strip_ip(pkt)[8:], c)
    assert c["remcsum"] == 1 and checksums_valid(inner)


def test_gue_refuses_other_versions_and_control_messages():
    c = Counter()
    gue = decap.strip_ip(tunnelled(uapi.IP_VS_CONN_F_TUNNEL_TYPE_GUE))[8:]
    assert decap.gue_payload(gue, c) is not None
    for bad in (bytes([0x40]) + gue[1:], bytes([0x20]) + gue[1:], gue[:1] + b"\x29" + gue[2:], gue[:3]):
        assert decap.gue_payload(bad, c) is None
    assert c["bad_gue"] == 4


def tunnelled6(tun_type, tun_flags=0, outer6=True):
    """An IPv6 client's packet as ip_vs_tunnel_xmit_v6 (or, ``outer6``
    False, ip_vs_tunnel_xmit) wraps it."""
    from scapy.layers.inet6 import IPv6

    rs, saddr = ("2001:db8:0:2::2", "2001:db8:0:2::1") if outer6 else (RS, DIR)
    dest = Dest(10 if outer6 else 2, A(rs), 80, conn_flags=uapi.IP_VS_CONN_F_TUNNEL, tun_type=tun_type,
                tun_port=6080, tun_flags=tun_flags)
    cp = ConnTable(250).new(ConnParam(10, 6, A("2001:db8:0:1::2"), 3456, A("2001:db8:0:5::5"), 80), A(rs), 80,
                            uapi.IP_VS_CONN_F_TUNNEL, dest)
    inner = bytearray(bytes(IPv6(src="2001:db8:0:1::2", dst="2001:db8:0:5::5") / TCP(sport=3456, dport=80)))
    buf = bytearray(inner)
    f = xmit.tunnel_xmit_v6 if outer6 else xmit.tunnel_xmit
    assert f(NetnsIPVS(), cp, proto_get(6), buf, parse(buf, 0), 1500, False, A(saddr)) == xmit.NF_STOLEN
    return bytes(buf), bytes(inner[:7]) + b"\x3f" + bytes(inner[8:])


def test_ipv6_inner_packets_over_either_outer_family():
    """What an IPv6 raw socket hands over is the payload after the outer
    IPv6 header; an IPv4 one the whole packet.  GRE's protocol type and
    GUE's proto_ctype say IPv6; the inner packet must be of that family."""
    c = Counter()
    for outer6 in (True, False):
        pkt, want = tunnelled6(uapi.IP_VS_CONN_F_TUNNEL_TYPE_IPIP, outer6=outer6)
        payload = pkt[40:] if outer6 else decap.strip_ip(pkt)
        assert payload == want and decap.inner_ok(payload)
        for flags in (0, uapi.IP_VS_TUNNEL_ENCAP_FLAG_CSUM):
            pkt, want = tunnelled6(uapi.IP_VS_CONN_F_TUNNEL_TYPE_GRE, flags, outer6=outer6)
            assert decap.gre_payload(pkt[40:] if outer6 else decap.strip_ip(pkt), c) == want
        pkt, want = tunnelled6(uapi.IP_VS_CONN_F_TUNNEL_TYPE_GUE, outer6=outer6)
        gue = pkt[48:] if outer6 else decap.strip_ip(pkt)[8:]
        assert decap.gue_payload(gue, c) == want
    assert not c
    # The protocol says IPv4 but the packet is IPv6 (and the reverse): refused.
    pkt, _ = tunnelled6(uapi.IP_VS_CONN_F_TUNNEL_TYPE_GRE)
    assert decap.gre_payload(pkt[40:42] + b"\x08\x00" + pkt[44:], c) is None
    gue = tunnelled(uapi.IP_VS_CONN_F_TUNNEL_TYPE_GUE)[28:]
    assert decap.gue_payload(gue[:1] + b"\x29" + gue[2:], c) is None
    assert c == Counter(bad_gre=1, bad_gue=1)
    assert not decap.inner_ok(b"\x60" + bytes(30)) and not decap.inner_ok(b"")
