"""ipvs/xmit.py: the NAT transmitters on single packets: TTL, MTU, the
DNAT/SNAT rewrite with its checksums (checked with scapy), full recompute
after payload changes, offloaded checksums and ICMP error NAT."""

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror

from ipvs import xmit
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
