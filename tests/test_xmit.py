"""ipvs/xmit.py: the NAT transmitters on single packets: TTL, MTU, the
DNAT/SNAT rewrite with its checksums (checked with scapy), full recompute
after payload changes, offloaded checksums and ICMP error NAT."""

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror

from ipvs import uapi, xmit
from ipvs.conn import ConnTable
from ipvs.ip_vs import ConnParam
from ipvs.netns import NetnsIPVS
from ipvs.packet import Drop, parse
from ipvs.proto import proto_get
from ipvs.proto.icmp import parse_quoted
from tests.conftest import A, icmp_error, inet_csum, scapy_valid, tcp, udp

CLI, VIP, RS = "198.51.100.2", "203.0.113.5", "172.16.0.2"


def conn(proto=6, vport=80, dport=8080):
    tab = ConnTable(250)
    return tab.new(ConnParam(2, proto, A(CLI), 3456, A(VIP), vport), A(RS), dport, 0, None)


def test_decrement_ttl():
    ipvs = NetnsIPVS()
    buf = tcp(CLI, 1, VIP, 80, ttl=64)
    assert xmit.decrement_ttl(ipvs, buf, parse(buf, 0), A(VIP))
    assert buf[8] == 63 and scapy_valid(buf)
    low = tcp(CLI, 1, VIP, 80, ttl=1)
    assert not xmit.decrement_ttl(ipvs, low, parse(low, 0), A(VIP))
    [err] = ipvs.outbox
    p = IP(bytes(err))
    assert (p.src, p.dst, p[ICMP].type, p[ICMP].code) == (VIP, CLI, 11, 0)
    assert ipvs.drops[Drop.TTL_EXCEEDED] == 1


def test_mtu_ok():
    ipvs = NetnsIPVS()
    big = tcp(CLI, 1, VIP, 80, payload=b"x" * 100)
    assert xmit.mtu_ok(ipvs, big, parse(big, 0), None, A(VIP))
    assert xmit.mtu_ok(ipvs, big, parse(big, 0), 1500, A(VIP))
    assert xmit.mtu_ok(ipvs, big, parse(big, 0), 100, A(VIP))  # no DF: the kernel fragments
    df = bytearray(bytes(IP(src=CLI, dst=VIP, flags="DF") / TCP() / (b"x" * 100)))
    assert xmit.mtu_ok(ipvs, df, parse(df, 0), len(df), A(VIP))
    assert not xmit.mtu_ok(ipvs, df, parse(df, 0), len(df) - 1, A(VIP))
    p = IP(bytes(ipvs.outbox[0]))
    assert (p.src, p[ICMP].type, p[ICMP].code, p[ICMP].nexthopmtu) == (VIP, 3, 4, len(df) - 1)


def _dnat(buf, cp, partial=False, app_ret=1, mtu=None):
    ipvs = NetnsIPVS()
    h = parse(buf, 0)
    return xmit.nat_xmit(ipvs, cp, proto_get(h.protocol), buf, h, partial, mtu, app_ret), ipvs


def test_nat_xmit_tcp():
    cp = conn()
    buf = tcp(CLI, 3456, VIP, 80, flags="PA", payload=b"GET /")
    v, _ = _dnat(buf, cp)
    assert v == xmit.NF_STOLEN
    p = IP(bytes(buf))
    assert (p.src, p[TCP].sport, p.dst, p[TCP].dport, p.ttl) == (CLI, 3456, RS, 8080, 63)
    assert scapy_valid(buf)


def test_nat_xmit_full_recompute_when_the_payload_changed():
    cp = conn()
    buf = tcp(CLI, 3456, VIP, 80, flags="PA", payload=b"PORT 1,2,3,4,5,6\r\n")
    buf[-3] = ord("7")  # an application helper rewrote the payload
    v, _ = _dnat(buf, cp, app_ret=2)
    assert v == xmit.NF_STOLEN and scapy_valid(buf)


def test_nat_xmit_udp_without_checksum_gets_one():
    cp = conn(17, 53, 5353)
    buf = udp(CLI, 3456, VIP, 53, chksum=0)
    _dnat(buf, cp)
    assert buf[26:28] != b"\0\0" and scapy_valid(buf)


def test_nat_xmit_partial_checksum():
    cp = conn()
    buf = tcp(CLI, 3456, VIP, 80)
    words = bytes(buf[12:20]) + b"\x00\x06" + (len(buf) - 20).to_bytes(2, "big")
    buf[36:38] = (~inet_csum(words) & 0xFFFF).to_bytes(2, "big")
    _dnat(buf, cp, partial=True)
    words = bytes(buf[12:20]) + b"\x00\x06" + (len(buf) - 20).to_bytes(2, "big")
    assert int.from_bytes(buf[36:38], "big") == ~inet_csum(words) & 0xFFFF


def test_nat_xmit_ttl_and_mtu():
    cp = conn()
    v, ipvs = _dnat(tcp(CLI, 3456, VIP, 80, ttl=1), cp)
    assert v == xmit.NF_DROP and IP(bytes(ipvs.outbox[0]))[ICMP].type == 11
    df = bytearray(bytes(IP(src=CLI, dst=VIP, flags="DF") / TCP(sport=3456, dport=80) / (b"x" * 100)))
    v, ipvs = _dnat(df, cp, mtu=100)
    assert v == xmit.NF_DROP and IP(bytes(ipvs.outbox[0]))[ICMP].code == 4


def test_snat_response():
    for proto in (6, 17):
        cp = conn(proto, 53 if proto == 17 else 80, 8080)
        vport = cp.vport
        buf = tcp(RS, 8080, CLI, 3456, flags="SA") if proto == 6 else udp(RS, 8080, CLI, 3456)
        h = parse(buf, 0)
        ipvs = NetnsIPVS()
        assert xmit.snat_response(ipvs, cp, proto_get(proto), buf, h, False, 1, b"") == xmit.NF_STOLEN
        p = IP(bytes(buf))
        layer = TCP if proto == 6 else UDP
        assert (p.src, p[layer].sport, p.dst, p[layer].dport) == (VIP, vport, CLI, 3456)
        assert scapy_valid(buf)


def test_nat_icmp_both_ways():
    cp = conn(17, 53, 5353)
    # From the real server about CLI:3456 -> RS:5353: out to the client.
    err = icmp_error(RS, CLI, bytes(udp(CLI, 3456, RS, 5353)))
    h = parse(err, 0)
    xmit.nat_icmp(err, h, parse_quoted(err, h.l4, h.end), cp, inout=True)
    p = IP(bytes(err))
    assert (p.src, p[IPerror].dst, p[UDPerror].dport) == (VIP, VIP, 53)
    assert inet_csum(bytes(err[20:])) == 0 and inet_csum(bytes(err[:20])) == 0
    assert inet_csum(bytes(err[28:48])) == 0
    # From the client side about VIP:53 -> CLI:3456: in to the real server.
    err = icmp_error("192.0.2.1", VIP, bytes(udp(VIP, 53, CLI, 3456)))
    h = parse(err, 0)
    ipvs = NetnsIPVS()
    assert xmit.icmp_xmit(ipvs, cp, err, h, parse_quoted(err, h.l4, h.end)) == xmit.NF_STOLEN
    p = IP(bytes(err))
    assert (p.dst, p[IPerror].src, p[UDPerror].sport, p.ttl) == (RS, RS, 5353, 63)
    assert inet_csum(bytes(err[20:])) == 0 and inet_csum(bytes(err[:20])) == 0


# ------------------------------------------------------------------ IPv6

import struct  # noqa: E402

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from scapy.layers.inet6 import (  # noqa: E402
    ICMPv6DestUnreach,
    ICMPv6PacketTooBig,
    ICMPv6TimeExceeded,
    IPerror6,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    TCPerror,
)

from ipvs.proto.icmpv6 import parse_quoted6  # noqa: E402

CLI6, VIP6, RS6 = "2001:db8:0:1::2", "2001:db8:0:5::5", "2001:db8:0:2::2"


def conn6(proto=6, vport=80, dport=8080):
    tab = ConnTable(250)
    return tab.new(ConnParam(10, proto, A(CLI6), 3456, A(VIP6), vport), A(RS6), dport, 0, None)


def l4_ok6(pkt: bytes) -> bool:
    """The transport checksum of an IPv6 packet, recomputed by the word
    loop over its own pseudo-header (through the extension headers)."""
    h = parse(bytearray(pkt), 0)
    coff = h.l4 + (16 if h.protocol == 6 else 6)
    seg = bytearray(pkt[h.l4 : h.end])
    got = struct.unpack_from("!H", seg, coff - h.l4)[0]
    seg[coff - h.l4 : coff - h.l4 + 2] = b"\0\0"
    want = inet_csum(pkt[8:40] + struct.pack("!IxxxB", len(seg), h.protocol) + bytes(seg))
    return got == want or (h.protocol == 17 and want == 0 and got == 0xFFFF)


@given(
    st.sampled_from([6, 17]), st.binary(max_size=40), st.sampled_from([(), ("hbh",), ("hbh", "dst")]),
    st.booleans(),
)
def test_nat_xmit_v6_field_by_field(proto, payload, exts, reply):
    """DNAT (and the reply's SNAT) over IPv6 with extension headers: the
    address, port, hop limit change and nothing else; the checksum equals
    a full recompute."""
    layers = {"hbh": IPv6ExtHdrHopByHop(), "dst": IPv6ExtHdrDestOpt()}
    cp = conn6(proto)
    if reply:
        pkt = IPv6(src=RS6, dst=CLI6, hlim=64)
        sport, dport = 8080, 3456
    else:
        pkt = IPv6(src=CLI6, dst=VIP6, hlim=64)
        sport, dport = 3456, 80
    for e in exts:
        pkt = pkt / layers[e]
    pkt = pkt / (TCP(sport=sport, dport=dport, flags="A") if proto == 6 else UDP(sport=sport, dport=dport)) / payload
    buf = bytearray(bytes(pkt))
    before = bytes(buf)
    ipvs = NetnsIPVS()
    h = parse(buf, 0)
    if reply:
        v = xmit.snat_response_v6(ipvs, cp, proto_get(proto), buf, h, False, 1, A("2001:db8:0:2::1"))
    else:
        v = xmit.nat_xmit_v6(ipvs, cp, proto_get(proto), buf, h, False, None, 1)
    assert v == xmit.NF_STOLEN
    p = IPv6(bytes(buf))
    if reply:
        assert (p.src, p.dst, p[proto == 6 and TCP or UDP].sport) == (VIP6, CLI6, 80)
    else:
        assert (p.src, p.dst, p[proto == 6 and TCP or UDP].dport) == (CLI6, RS6, 8080)
    assert p.hlim == 63 and l4_ok6(bytes(buf))
    coff = h.l4 + (16 if proto == 6 else 6)
    changed = {i for i in range(len(buf)) if buf[i] != before[i]}
    addr = range(8, 24) if reply else range(24, 40)
    port = range(h.l4, h.l4 + 2) if reply else range(h.l4 + 2, h.l4 + 4)
    assert changed <= {7, *addr, *port, coff, coff + 1}


def test_nat_xmit_v6_udp_without_checksum_gets_one():
    cp = conn6(17, 53, 5353)
    buf = bytearray(bytes(IPv6(src=CLI6, dst=VIP6) / UDP(sport=3456, dport=53, chksum=0) / b"q"))
    h = parse(buf, 0)
    assert xmit.nat_xmit_v6(NetnsIPVS(), cp, proto_get(17), buf, h, False, None, 1) == xmit.NF_STOLEN
    assert struct.unpack_from("!H", buf, 46)[0] != 0 and l4_ok6(bytes(buf))


def test_nat_xmit_v6_partial_checksum_updates_the_pseudo_header_sum():
    cp = conn6()
    buf = bytearray(bytes(IPv6(src=CLI6, dst=VIP6) / TCP(sport=3456, dport=80) / b"data"))
    h = parse(buf, 0)
    xmit.l4_csum_full(buf, h, partial=True)
    assert xmit.nat_xmit_v6(NetnsIPVS(), cp, proto_get(6), buf, h, True, None, 1) == xmit.NF_STOLEN
    want = bytearray(buf)
    xmit.l4_csum_full(want, parse(want, 0), partial=True)
    assert buf == want


def test_nat_xmit_v6_hop_limit_and_packet_too_big():
    cp = conn6()
    ipvs = NetnsIPVS()
    low = bytearray(bytes(IPv6(src=CLI6, dst=VIP6, hlim=1) / TCP(sport=3456, dport=80)))
    assert xmit.nat_xmit_v6(ipvs, cp, proto_get(6), low, parse(low, 0), False, None, 1) == xmit.NF_DROP
    (err,) = ipvs.outbox
    e = IPv6(bytes(err))
    assert (e.src, e.dst, e[ICMPv6TimeExceeded].code) == (VIP6, CLI6, 0)
    assert ipvs.drops[Drop.TTL_EXCEEDED] == 1
    ipvs.outbox.clear()
    big = bytearray(bytes(IPv6(src=CLI6, dst=VIP6) / TCP(sport=3456, dport=80) / (b"x" * 1400)))
    assert xmit.nat_xmit_v6(ipvs, cp, proto_get(6), big, parse(big, 0), False, 1280, 1) == xmit.NF_DROP
    (err,) = ipvs.outbox
    e = IPv6(bytes(err))
    assert (e.src, e[ICMPv6PacketTooBig].mtu, e[IPerror6].hlim) == (VIP6, 1280, 63)
    ipvs.outbox.clear()
    # A later fragment too big: dropped, no Packet Too Big (first fragment only).
    frag = bytearray(bytes(IPv6(src=CLI6, dst=VIP6) / IPv6ExtHdrFragment(nh=6, offset=100) / (b"y" * 1400)))
    assert xmit.nat_xmit_v6(ipvs, cp, proto_get(6), frag, parse(frag, 0), False, 1280, 1) == xmit.NF_DROP
    assert ipvs.outbox == []
    small = bytearray(bytes(IPv6(src=CLI6, dst=VIP6) / IPv6ExtHdrFragment(nh=6, offset=100) / (b"y" * 16)))
    tail = bytes(small[48:])
    assert xmit.nat_xmit_v6(ipvs, cp, proto_get(6), small, parse(small, 0), False, 1280, 1) == xmit.NF_STOLEN
    assert IPv6(bytes(small)).dst == RS6 and bytes(small[48:]) == tail


def test_icmp_xmit_v6_rewrites_an_error_for_the_real_server():
    cp = conn6()
    quoted = bytes(IPv6(src=VIP6, dst=CLI6) / TCP(sport=80, dport=3456))
    buf = bytearray(bytes(IPv6(src="2001:db8:0:1::fe", dst=VIP6) / ICMPv6DestUnreach(code=1) / quoted))
    h = parse(buf, 0)
    q = parse_quoted6(buf, h.l4, h.end)
    ipvs = NetnsIPVS()
    assert xmit.icmp_xmit_v6(ipvs, cp, buf, h, q, None) == xmit.NF_STOLEN
    p = IPv6(bytes(buf))
    assert (p.dst, p.hlim, p[IPerror6].src, p[TCPerror].sport) == (RS6, 63, RS6, 8080)
    spent = bytearray(bytes(IPv6(src="2001:db8:0:1::fe", dst=VIP6, hlim=1) / ICMPv6DestUnreach() / quoted))
    h = parse(spent, 0)
    assert xmit.icmp_xmit_v6(ipvs, cp, spent, h, parse_quoted6(spent, h.l4, h.end), None) == xmit.NF_DROP
    assert ipvs.outbox == []  # no error about an error


# ---------------------------------------------------------------- DR and TUN

DIR = "172.16.0.1"


def fwd_conn(fwd, proto=6, tun_type=0, tun_port=0, tun_flags=0):
    """A connection CLI:3456 -> VIP:80 => RS:80 whose dest forwards by ``fwd``."""
    from ipvs.ip_vs import Dest

    dest = Dest(2, A(RS), 80, conn_flags=fwd, tun_type=tun_type, tun_port=tun_port, tun_flags=tun_flags)
    tab = ConnTable(250)
    return tab.new(ConnParam(2, proto, A(CLI), 3456, A(VIP), 80), A(RS), 80, fwd | uapi.IP_VS_CONN_F_NOOUTPUT, dest)


def _tun(buf, cp, mtu=None, partial=False, ipvs=None, icmp=False):
    ipvs = ipvs or NetnsIPVS()
    h = parse(buf, 0)
    v = xmit.tunnel_xmit(ipvs, cp, proto_get(h.protocol), buf, h, mtu, partial, A(DIR), icmp)
    return v, ipvs


def test_dr_xmit_keeps_the_packet_but_the_ttl():
    cp = fwd_conn(uapi.IP_VS_CONN_F_DROUTE)
    buf = tcp(CLI, 3456, VIP, 80, flags="PA", payload=b"GET /")
    before = bytes(buf)
    ipvs = NetnsIPVS()
    assert xmit.dr_xmit(ipvs, cp, proto_get(6), buf, parse(buf, 0), 1500) == xmit.NF_STOLEN
    p = IP(bytes(buf))
    assert (p.src, p.dst, p[TCP].sport, p[TCP].dport, p.ttl) == (CLI, VIP, 3456, 80, 63)
    assert buf[12:] == before[12:] and buf[:8] == before[:8]  # only TTL and header checksum moved
    assert scapy_valid(buf)


def test_dr_xmit_ttl_and_mtu_answers_come_from_the_vip():
    cp = fwd_conn(uapi.IP_VS_CONN_F_DROUTE)
    low = tcp(CLI, 3456, VIP, 80, ttl=1)
    ipvs = NetnsIPVS()
    assert xmit.dr_xmit(ipvs, cp, proto_get(6), low, parse(low, 0), None) == xmit.NF_DROP
    err = IP(bytes(ipvs.outbox.pop()))
    assert (err.src, err.dst, err[ICMP].type) == (VIP, CLI, 11)
    df = bytearray(bytes(IP(src=CLI, dst=VIP, flags="DF") / TCP(sport=3456, dport=80) / (b"x" * 100)))
    assert xmit.dr_xmit(ipvs, cp, proto_get(6), df, parse(df, 0), 100) == xmit.NF_DROP
    err = IP(bytes(ipvs.outbox.pop()))
    assert (err.src, err[ICMP].type, err[ICMP].code, err[ICMP].nexthopmtu) == (VIP, 3, 4, 100)
    # The quoted packet is the one the kernel had: its TTL already decremented.
    assert err[IPerror].ttl == 63
    # An ICMP error passed on is never answered "fragmentation needed".
    e = icmp_error(CLI, VIP, bytes(tcp(VIP, 80, CLI, 3456))[:28])
    e = bytearray(bytes(IP(bytes(e), flags="DF")))
    assert xmit.dr_xmit(ipvs, cp, proto_get(6), e, parse(e, 0), 30, icmp=True) == xmit.NF_STOLEN
    assert not ipvs.outbox


def test_ipip_outer_header_field_by_field():
    cp = fwd_conn(uapi.IP_VS_CONN_F_TUNNEL)
    inner = bytearray(bytes(IP(src=CLI, dst=VIP, ttl=40, tos=0xB9, flags="DF", id=77)
                            / TCP(sport=3456, dport=80, flags="PA") / b"GET /"))
    n = len(inner)
    buf = bytearray(inner)
    v, _ = _tun(buf, cp, mtu=1500)
    assert v == xmit.NF_STOLEN and len(buf) == n + 20
    o = IP(bytes(buf))
    assert (o.version, o.ihl, o.proto, o.src, o.dst, o.len) == (4, 5, 4, DIR, RS, n + 20)
    assert o.ttl == 39  # the inner TTL, after its decrement
    assert o.flags == "DF" and o.id == 0  # DF copied (pmtu_disc=1); DF means ID 0
    assert o.tos == 0xB9  # DSCP and ECT(1) kept
    assert inet_csum(bytes(buf[:20])) == 0
    i = IP(bytes(buf[20:]))
    assert (i.src, i.dst, i.ttl, i.id, i[TCP].payload.load) == (CLI, VIP, 39, 77, b"GET /")
    assert scapy_valid(buf[20:])


def test_ipip_ecn_ce_becomes_ect0_and_no_df_gets_an_id():
    cp = fwd_conn(uapi.IP_VS_CONN_F_TUNNEL)
    ipvs = NetnsIPVS()
    ids = []
    for _ in range(2):
        buf = bytearray(bytes(IP(src=CLI, dst=VIP, tos=0x03) / UDP(sport=3456, dport=80) / b"x"))
        _tun(buf, cp, ipvs=ipvs)
        o = IP(bytes(buf))
        assert o.tos == 0x02 and o.flags == 0
        ids.append(o.id)
    assert ids[1] == (ids[0] + 1) & 0xFFFF  # one counter per (src, dst, protocol)


def test_pmtu_disc_off_clears_df_and_never_answers():
    cp = fwd_conn(uapi.IP_VS_CONN_F_TUNNEL)
    ipvs = NetnsIPVS()
    ipvs.sysctl.pmtu_disc = 0
    buf = bytearray(bytes(IP(src=CLI, dst=VIP, flags="DF") / TCP(sport=3456, dport=80) / (b"x" * 1460)))
    v, _ = _tun(buf, cp, mtu=1500, ipvs=ipvs)
    assert v == xmit.NF_STOLEN and not ipvs.outbox
    assert IP(bytes(buf)).flags == 0 and IP(bytes(buf[20:])).flags == "DF"


def test_tunnel_mtu_less_overhead_frag_needed():
    for tun_type, flags, overhead in ((0, 0, 20), (1, 0, 32), (2, 0, 24), (2, 1, 28)):
        cp = fwd_conn(uapi.IP_VS_CONN_F_TUNNEL, tun_type=tun_type, tun_port=6080, tun_flags=flags)
        fits = bytearray(bytes(IP(src=CLI, dst=VIP, flags="DF") / TCP(sport=3456, dport=80)
                               / (b"x" * (1500 - overhead - 40))))
        v, ipvs = _tun(fits, cp, mtu=1500)
        assert v == xmit.NF_STOLEN and len(fits) == 1500
        big = bytearray(bytes(IP(src=CLI, dst=VIP, flags="DF") / TCP(sport=3456, dport=80)
                              / (b"x" * (1501 - overhead - 40))))
        v, ipvs = _tun(big, cp, mtu=1500)
        assert v == xmit.NF_DROP
        err = IP(bytes(ipvs.outbox[0]))
        assert (err.src, err[ICMP].type, err[ICMP].code, err[ICMP].nexthopmtu) == (VIP, 3, 4, 1500 - overhead)
    # Below 68 left for the inner packet: dropped, no answer.
    cp = fwd_conn(uapi.IP_VS_CONN_F_TUNNEL)
    v, ipvs = _tun(tcp(CLI, 3456, VIP, 80), cp, mtu=87)
    assert v == xmit.NF_DROP and not ipvs.outbox


def test_tunnel_ttl_exceeded():
    cp = fwd_conn(uapi.IP_VS_CONN_F_TUNNEL)
    v, ipvs = _tun(tcp(CLI, 3456, VIP, 80, ttl=1), cp)
    assert v == xmit.NF_DROP and IP(bytes(ipvs.outbox[0]))[ICMP].type == 11


def _gue_fields(buf):
    o = IP(bytes(buf))
    u = o[UDP]
    gue = bytes(buf[28:32])
    return o, u, gue


def test_gue_without_checksum():
    cp = fwd_conn(uapi.IP_VS_CONN_F_TUNNEL, tun_type=1, tun_port=6080)
    inner = tcp(CLI, 3456, VIP, 80, flags="PA", payload=b"GET /")
    buf = bytearray(inner)
    assert _tun(buf, cp)[0] == xmit.NF_STOLEN
    o, u, gue = _gue_fields(buf)
    assert o.proto == 17 and o.len == len(inner) + 32
    assert u.dport == 6080 and xmit.LOCAL_PORT_MIN <= u.sport <= xmit.LOCAL_PORT_MAX
    assert u.len == len(inner) + 12 and u.chksum == 0
    assert gue == b"\x00\x04\x00\x00"  # version 0, C 0, hlen 0, proto IPIP, no flags
    assert bytes(buf[32:]) == bytes(inner[:8]) + b"\x3f" + bytes(inner[9:10]) + bytes(buf[42:44]) + bytes(inner[12:])
    # The same flow keeps its source port; another flow spreads.
    again = tcp(CLI, 3456, VIP, 80)
    _tun(again, cp)
    other = tcp(CLI, 3457, VIP, 80)
    _tun(other, cp)
    assert IP(bytes(again))[UDP].sport == u.sport != IP(bytes(other))[UDP].sport


def test_gue_with_checksum():
    cp = fwd_conn(uapi.IP_VS_CONN_F_TUNNEL, tun_type=1, tun_port=6080, tun_flags=uapi.IP_VS_TUNNEL_ENCAP_FLAG_CSUM)
    buf = tcp(CLI, 3456, VIP, 80, flags="PA", payload=b"GET /")
    _tun(buf, cp)
    o, u, gue = _gue_fields(buf)
    assert u.chksum != 0
    pseudo = bytes(buf[12:20]) + b"\x00\x11" + u.len.to_bytes(2, "big")
    assert inet_csum(pseudo + bytes(buf[20:])) == 0  # the checksum verifies
    assert gue == b"\x00\x04\x00\x00"


def _partial(buf):
    """Make ``buf``'s TCP checksum an offloaded one (the pseudo-header sum)."""
    words = bytes(buf[12:20]) + b"\x00\x06" + (len(buf) - 20).to_bytes(2, "big")
    buf[36:38] = (~inet_csum(words) & 0xFFFF).to_bytes(2, "big")
    return buf


def test_partial_inner_checksum_is_completed_for_the_real_server():
    for tun_type, flags in ((0, 0), (1, 0), (1, 1), (2, 0), (2, 1)):
        cp = fwd_conn(uapi.IP_VS_CONN_F_TUNNEL, tun_type=tun_type, tun_port=6080, tun_flags=flags)
        buf = _partial(tcp(CLI, 3456, VIP, 80, flags="PA", payload=b"GET /"))
        _tun(buf, cp, partial=True)
        overhead = len(buf) - 45
        assert scapy_valid(buf[overhead:]), (tun_type, flags)


def test_gue_remote_checksum_offload():
    cp = fwd_conn(uapi.IP_VS_CONN_F_TUNNEL, tun_type=1, tun_port=6080, tun_flags=uapi.IP_VS_TUNNEL_ENCAP_FLAG_REMCSUM)
    inner = _partial(tcp(CLI, 3456, VIP, 80, flags="PA", payload=b"GET /"))
    buf = bytearray(inner)
    _tun(buf, cp, partial=True)
    o, u, gue = _gue_fields(buf)
    assert o.len == len(inner) + 40 and u.len == len(inner) + 20
    # hlen 2 (8 bytes of options), proto IPIP, flags: private flags present.
    assert gue == b"\x02\x04\x00\x01"
    # The private flags word (REMCSUM) and the inner checksum's start and
    # place, counted from the inner packet.
    assert bytes(buf[32:40]) == b"\x80\x00\x00\x00" + (20).to_bytes(2, "big") + (36).to_bytes(2, "big")
    # The inner checksum stays partial: the real server completes it.
    assert buf[40 + 36 : 40 + 38] == inner[36:38]
    # The outer UDP checksum covers the bytes as sent.
    pseudo = bytes(buf[12:20]) + b"\x00\x11" + u.len.to_bytes(2, "big")
    assert inet_csum(pseudo + bytes(buf[20:])) == 0
    # Not partial: no option (the kernel adds it for an offloaded checksum only).
    plain = tcp(CLI, 3456, VIP, 80)
    _tun(plain, cp)
    assert bytes(plain[28:32]) == b"\x00\x04\x00\x00" and IP(bytes(plain))[UDP].chksum != 0


def test_gre_headers():
    from scapy.layers.l2 import GRE

    cp = fwd_conn(uapi.IP_VS_CONN_F_TUNNEL, tun_type=2)
    inner = tcp(CLI, 3456, VIP, 80)
    buf = bytearray(inner)
    _tun(buf, cp)
    o = IP(bytes(buf))
    assert o.proto == 47 and o.len == len(inner) + 24
    assert bytes(buf[20:24]) == b"\x00\x00\x08\x00"  # no flags, version 0, IPv4
    assert o[GRE].proto == 0x0800
    cp = fwd_conn(uapi.IP_VS_CONN_F_TUNNEL, tun_type=2, tun_flags=uapi.IP_VS_TUNNEL_ENCAP_FLAG_CSUM)
    buf = bytearray(inner)
    _tun(buf, cp)
    assert IP(bytes(buf)).len == len(inner) + 28
    assert bytes(buf[20:24]) == b"\x80\x00\x08\x00" and bytes(buf[26:28]) == b"\0\0"  # C bit, reserved1
    assert inet_csum(bytes(buf[20:])) == 0
    g = IP(bytes(buf))[GRE]
    assert g.chksum_present == 1
    stored = g.chksum
    g.chksum = None
    assert bytes(g)[4:6] == stored.to_bytes(2, "big")  # scapy agrees


def test_tunnel_passes_icmp_errors_without_frag_needed():
    cp = fwd_conn(uapi.IP_VS_CONN_F_TUNNEL)
    e = icmp_error(CLI, VIP, bytes(tcp(VIP, 80, CLI, 3456, payload=b"x" * 60)))
    e = bytearray(bytes(IP(bytes(e), flags="DF")))
    v, ipvs = _tun(bytearray(e), cp, mtu=87, icmp=True)
    assert v == xmit.NF_DROP and not ipvs.outbox  # 87 - 20 < 68: no route for it
    v, ipvs = _tun(e, cp, mtu=100, icmp=True)  # 128 bytes > 80, DF: passed on all the same
    assert v == xmit.NF_STOLEN and not ipvs.outbox and IP(bytes(e)).proto == 4


# ------------------------------------------------- DR and TUN over IPv6

DIR6 = "2001:db8:0:2::1"


def fwd_conn6(fwd, proto=6, tun_type=0, tun_port=0, tun_flags=0, client=CLI6, vip=VIP6, rs=RS6):
    """A connection client:3456 -> vip:80 => rs:80 whose dest forwards by
    ``fwd``; ``rs`` of the other family than ``vip`` makes a mixed-family
    tunnel connection (``cp->daf``)."""
    from ipvs.ip_vs import Dest

    af, daf = (10 if ":" in vip else 2), (10 if ":" in rs else 2)
    dest = Dest(daf, A(rs), 80, conn_flags=fwd, tun_type=tun_type, tun_port=tun_port, tun_flags=tun_flags)
    tab = ConnTable(250)
    return tab.new(ConnParam(af, proto, A(client), 3456, A(vip), 80), A(rs), 80, fwd | uapi.IP_VS_CONN_F_NOOUTPUT, dest)


def _tun6(buf, cp, mtu=None, partial=False, ipvs=None, icmp=False):
    """Through the transmitter ``ip_vs_bind_xmit`` picks: by the real server's family."""
    ipvs = ipvs or NetnsIPVS()
    h = parse(buf, 0)
    outer6 = len(cp.daddr) == 16
    f = xmit.tunnel_xmit_v6 if outer6 else xmit.tunnel_xmit
    v = f(ipvs, cp, proto_get(h.protocol), buf, h, mtu, partial, A(DIR6 if outer6 else DIR), icmp)
    return v, ipvs


def tcp6(src=CLI6, dst=VIP6, payload=b"GET /", hlim=64, tc=0, fl=0, exts=()):
    pkt = IPv6(src=src, dst=dst, hlim=hlim, tc=tc, fl=fl)
    for e in exts:
        pkt = pkt / e
    return bytearray(bytes(pkt / TCP(sport=3456, dport=80, flags="PA") / payload))


def test_mixed_family_connection_keeps_the_real_servers_family():
    cp = fwd_conn6(uapi.IP_VS_CONN_F_TUNNEL, vip=VIP, client=CLI, rs=RS6)
    assert (cp.af, cp.daf, cp.daddr, cp.caddr, cp.vaddr) == (2, 10, A(RS6), A(CLI), A(VIP))
    cp = fwd_conn6(uapi.IP_VS_CONN_F_TUNNEL, rs=RS)
    assert (cp.af, cp.daf, cp.daddr, cp.dport, cp.cport) == (10, 2, A(RS), 80, 3456)
    assert fwd_conn6(uapi.IP_VS_CONN_F_DROUTE).daf == 10


def test_dr_xmit_v6_keeps_the_packet_but_the_hop_limit():
    cp = fwd_conn6(uapi.IP_VS_CONN_F_DROUTE)
    buf = tcp6(exts=(IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt()))
    before = bytes(buf)
    h = parse(buf, 0)
    assert xmit.dr_xmit_v6(NetnsIPVS(), cp, proto_get(6), buf, h, 1500) == xmit.NF_STOLEN
    assert [i for i in range(len(buf)) if buf[i] != before[i]] == [7] and buf[7] == 63


def test_dr_xmit_v6_hop_limit_and_packet_too_big_come_from_the_vip():
    cp = fwd_conn6(uapi.IP_VS_CONN_F_DROUTE)
    ipvs = NetnsIPVS()
    low = tcp6(hlim=1)
    assert xmit.dr_xmit_v6(ipvs, cp, proto_get(6), low, parse(low, 0), None) == xmit.NF_DROP
    (err,) = ipvs.outbox
    e = IPv6(bytes(err))
    assert (e.src, e.dst, e[ICMPv6TimeExceeded].code) == (VIP6, CLI6, 0)
    ipvs.outbox.clear()
    # IPv6 is never fragmented on the way: too big is dropped and answered, DF or not.
    big = tcp6(payload=b"x" * 1400)
    assert xmit.dr_xmit_v6(ipvs, cp, proto_get(6), big, parse(big, 0), 1280) == xmit.NF_DROP
    (err,) = ipvs.outbox
    e = IPv6(bytes(err))
    assert (e.src, e.dst, e[ICMPv6PacketTooBig].mtu, e[IPerror6].hlim) == (VIP6, CLI6, 1280, 63)
    ipvs.outbox.clear()
    fits = tcp6(payload=b"x" * (1280 - 60))
    assert xmit.dr_xmit_v6(ipvs, cp, proto_get(6), fits, parse(fits, 0), 1280) == xmit.NF_STOLEN
    # An ICMPv6 error passed on (ip_vs_iph_icmp): dropped when too big, never answered.
    quoted = bytes(IPv6(src=VIP6, dst=CLI6) / TCP(sport=80, dport=3456) / (b"y" * 1300))
    e = bytearray(bytes(IPv6(src="2001:db8:0:1::fe", dst=VIP6) / ICMPv6DestUnreach() / quoted))
    assert xmit.dr_xmit_v6(ipvs, cp, proto_get(6), e, parse(e, 0), 1280, icmp=True) == xmit.NF_DROP
    assert ipvs.outbox == []


def test_ip6ip6_outer_header_field_by_field():
    """ip_vs_tunnel_xmit_v6: version 6, the inner traffic class (ECN
    encapsulated), flow label 0 (whatever the inner one), payload length
    the inner packet's, next header 41, hop limit the inner one after its
    decrement, the director's address to the real server's."""
    cp = fwd_conn6(uapi.IP_VS_CONN_F_TUNNEL)
    inner = tcp6(hlim=40, tc=0xB9, fl=0x12345, exts=(IPv6ExtHdrHopByHop(),))
    n = len(inner)
    buf = bytearray(inner)
    v, ipvs = _tun6(buf, cp, mtu=1500)
    assert v == xmit.NF_STOLEN and len(buf) == n + 40 and not ipvs.outbox
    assert struct.unpack_from("!IHBB", buf, 0) == ((6 << 28) | (0xB9 << 20), n, 41, 39)
    assert (bytes(buf[8:24]), bytes(buf[24:40])) == (A(DIR6), A(RS6))
    assert bytes(buf[40:]) == bytes(inner[:7]) + b"\x27" + bytes(inner[8:])  # only the hop limit went down
    o = IPv6(bytes(buf))
    assert (o.tc, o.fl, o.nh, o[IPv6:2].dst, o[IPv6:2].fl) == (0xB9, 0, 41, VIP6, 0x12345)


def test_ip6ip6_ecn_ce_becomes_ect0():
    cp = fwd_conn6(uapi.IP_VS_CONN_F_TUNNEL)
    buf = tcp6(tc=0x03 | 0x28)
    _tun6(buf, cp)
    assert IPv6(bytes(buf)).tc == 0x2A and IPv6(bytes(buf[40:])).tc == 0x2B


def test_tunnel_v6_mtu_less_overhead_packet_too_big():
    """The overhead over IPv6: 40 (IPIP), 52 (GUE), 44 (GRE), 48 (GRE
    with checksum); a packet one byte above the rest gets a Packet Too
    Big with that MTU; less than 1280 left: dropped without an answer."""
    for tun_type, flags, overhead in ((0, 0, 40), (1, 0, 52), (2, 0, 44), (2, 1, 48)):
        cp = fwd_conn6(uapi.IP_VS_CONN_F_TUNNEL, tun_type=tun_type, tun_port=6080, tun_flags=flags)
        fits = tcp6(payload=b"x" * (1500 - overhead - 60))
        v, ipvs = _tun6(fits, cp, mtu=1500)
        assert v == xmit.NF_STOLEN and len(fits) == 1500
        big = tcp6(payload=b"x" * (1501 - overhead - 60))
        v, ipvs = _tun6(big, cp, mtu=1500)
        assert v == xmit.NF_DROP
        e = IPv6(bytes(ipvs.outbox[0]))
        assert (e.src, e[ICMPv6PacketTooBig].mtu) == (VIP6, 1500 - overhead)
    cp = fwd_conn6(uapi.IP_VS_CONN_F_TUNNEL)
    v, ipvs = _tun6(tcp6(), cp, mtu=1280 + 40 - 1)
    assert v == xmit.NF_DROP and not ipvs.outbox
    v, ipvs = _tun6(tcp6(hlim=1), cp)
    assert v == xmit.NF_DROP and IPv6(bytes(ipvs.outbox[0]))[ICMPv6TimeExceeded].code == 0


def test_gue_over_ipv6():
    """GUE in IPv6: UDP to the tunnel port, the GUE header's protocol 41;
    checksum 0 without --tun-csum (RFC 6935's zero checksum for tunnels,
    udp6_set_csum), and one over the IPv6 pseudo-header with it."""
    inner = tcp6()
    for flags in (0, uapi.IP_VS_TUNNEL_ENCAP_FLAG_CSUM):
        cp = fwd_conn6(uapi.IP_VS_CONN_F_TUNNEL, tun_type=1, tun_port=6080, tun_flags=flags)
        buf = bytearray(inner)
        assert _tun6(buf, cp)[0] == xmit.NF_STOLEN
        o = IPv6(bytes(buf))
        assert (o.nh, o.plen) == (17, len(inner) + 12)
        sport, dport, ulen, csum = struct.unpack_from("!HHHH", buf, 40)
        assert dport == 6080 and xmit.LOCAL_PORT_MIN <= sport <= xmit.LOCAL_PORT_MAX and ulen == len(inner) + 12
        assert bytes(buf[48:52]) == b"\x00\x29\x00\x00"  # version 0, hlen 0, proto IPv6, no flags
        assert bytes(buf[52:]) == bytes(inner[:7]) + b"\x3f" + bytes(inner[8:])
        if flags:
            assert csum != 0 and l4_ok6(bytes(buf))
        else:
            assert csum == 0


def test_gue_remote_checksum_offload_over_ipv6():
    cp = fwd_conn6(uapi.IP_VS_CONN_F_TUNNEL, tun_type=1, tun_port=6080, tun_flags=uapi.IP_VS_TUNNEL_ENCAP_FLAG_REMCSUM)
    inner = tcp6()
    xmit.l4_csum_full(inner, parse(inner, 0), partial=True)
    buf = bytearray(inner)
    assert _tun6(buf, cp, partial=True)[0] == xmit.NF_STOLEN
    assert IPv6(bytes(buf)).plen == len(inner) + 20
    assert bytes(buf[48:52]) == b"\x02\x29\x00\x01"
    # The inner TCP checksum starts at 40 and sits at 56 of the inner packet.
    assert bytes(buf[52:60]) == b"\x80\x00\x00\x00" + (40).to_bytes(2, "big") + (56).to_bytes(2, "big")
    assert buf[60 + 56 : 60 + 58] == inner[56:58] and l4_ok6(bytes(buf))


def test_gre_over_ipv6():
    inner = tcp6()
    cp = fwd_conn6(uapi.IP_VS_CONN_F_TUNNEL, tun_type=2)
    buf = bytearray(inner)
    _tun6(buf, cp)
    assert (IPv6(bytes(buf)).nh, IPv6(bytes(buf)).plen) == (47, len(inner) + 4)
    assert bytes(buf[40:44]) == b"\x00\x00\x86\xdd"  # no flags, version 0, IPv6
    cp = fwd_conn6(uapi.IP_VS_CONN_F_TUNNEL, tun_type=2, tun_flags=uapi.IP_VS_TUNNEL_ENCAP_FLAG_CSUM)
    buf = bytearray(inner)
    _tun6(buf, cp)
    assert IPv6(bytes(buf)).plen == len(inner) + 8
    assert bytes(buf[40:44]) == b"\x80\x00\x86\xdd" and bytes(buf[46:48]) == b"\0\0"
    assert inet_csum(bytes(buf[40:])) == 0  # no pseudo-header in GRE's checksum


def test_ipv4_in_ipv6_tunnel():
    """An IPv4 service's packet to an IPv6 real server: next header 4 (GRE:
    0x0800, GUE: proto 4), the outer traffic class and hop limit from the
    IPv4 tos and TTL.  Its MTU rules stay IPv4's: DF with pmtu_disc gets
    "fragmentation needed" with the path MTU less the IPv6 overhead."""
    cp = fwd_conn6(uapi.IP_VS_CONN_F_TUNNEL, vip=VIP, client=CLI, rs=RS6)
    inner = bytearray(bytes(IP(src=CLI, dst=VIP, ttl=40, tos=0xB9, flags="DF", id=7)
                            / TCP(sport=3456, dport=80, flags="PA") / b"GET /"))
    buf = bytearray(inner)
    v, ipvs = _tun6(buf, cp, mtu=1500)
    assert v == xmit.NF_STOLEN
    assert struct.unpack_from("!IHBB", buf, 0) == ((6 << 28) | (0xB9 << 20), len(inner), 4, 39)
    assert (bytes(buf[8:24]), bytes(buf[24:40])) == (A(DIR6), A(RS6))
    i = IP(bytes(buf[40:]))
    assert (i.ttl, i.dst, i.id, i.flags) == (39, VIP, 7, "DF") and inet_csum(bytes(buf[40:60])) == 0
    for tun_type, head in ((1, b"\x00\x04\x00\x00"), (2, b"\x00\x00\x08\x00")):
        cp = fwd_conn6(uapi.IP_VS_CONN_F_TUNNEL, tun_type=tun_type, tun_port=6080, vip=VIP, client=CLI, rs=RS6)
        buf = bytearray(inner)
        _tun6(buf, cp)
        assert bytes(buf[48:52] if tun_type == 1 else buf[40:44]) == head
    big = bytearray(bytes(IP(src=CLI, dst=VIP, flags="DF") / TCP(sport=3456, dport=80) / (b"x" * 1421)))
    v, ipvs = _tun6(big, cp, mtu=1500)  # (cp: GRE, 44 bytes)
    assert v == xmit.NF_DROP
    err = IP(bytes(ipvs.outbox[0]))
    assert (err.src, err[ICMP].type, err[ICMP].code, err[ICMP].nexthopmtu) == (VIP, 3, 4, 1456)
    nodf = bytearray(bytes(IP(src=CLI, dst=VIP) / TCP(sport=3456, dport=80) / (b"x" * 1421)))
    assert _tun6(nodf, cp, mtu=1500)[0] == xmit.NF_STOLEN  # may be fragmented before the tunnel
    # But the IPv6 route's minimum stays 1280.
    assert _tun6(tcp(CLI, 3456, VIP, 80), cp, mtu=1280 + 44 - 1)[0] == xmit.NF_DROP


def test_ipv6_in_ipv4_tunnel():
    """An IPv6 service's packet to an IPv4 real server (ip_vs_tunnel_xmit
    with an IPv6 skb): protocol 41, no DF (ip_vs_prepare_tunneled_skb's
    df = 0 for IPv6), so an ID; tos the traffic class, TTL the hop limit.
    The inner packet's MTU rules are IPv6's: Packet Too Big with the path
    MTU less 20, pmtu_disc or not; the IPv4 route's minimum is 68."""
    cp = fwd_conn6(uapi.IP_VS_CONN_F_TUNNEL, rs=RS)
    inner = tcp6(hlim=40, tc=0xB9)
    buf = bytearray(inner)
    v, ipvs = _tun6(buf, cp, mtu=1500)
    assert v == xmit.NF_STOLEN and len(buf) == len(inner) + 20
    o = IP(bytes(buf))
    assert (o.version, o.ihl, o.proto, o.src, o.dst, o.len) == (4, 5, 41, DIR, RS, len(inner) + 20)
    assert (o.tos, o.ttl, o.flags) == (0xB9, 39, 0) and inet_csum(bytes(buf[:20])) == 0
    first = o.id
    again = tcp6()
    _tun6(again, cp, ipvs=ipvs)
    assert IP(bytes(again)).id == (first + 1) & 0xFFFF
    assert bytes(buf[20:]) == bytes(inner[:7]) + b"\x27" + bytes(inner[8:])
    gre = fwd_conn6(uapi.IP_VS_CONN_F_TUNNEL, tun_type=2, rs=RS)
    buf = tcp6()
    _tun6(buf, gre)
    assert bytes(buf[20:24]) == b"\x00\x00\x86\xdd"
    big = tcp6(payload=b"x" * (1500 - 20 - 60 + 1))
    ipvs = NetnsIPVS()
    ipvs.sysctl.pmtu_disc = 0
    v, ipvs = _tun6(big, cp, mtu=1500, ipvs=ipvs)
    assert v == xmit.NF_DROP and IPv6(bytes(ipvs.outbox[0]))[ICMPv6PacketTooBig].mtu == 1480
    v, ipvs = _tun6(tcp6(), cp, mtu=87)
    assert v == xmit.NF_DROP and not ipvs.outbox
