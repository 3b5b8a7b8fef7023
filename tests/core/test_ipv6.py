"""ipvs/core.py over IPv6 through Director.process: VS/NAT both ways with
extension headers, UDP, ip_vs_leave, hop limit, Packet Too Big, related
ICMPv6 errors both ways (ip_vs_in_icmp_v6 / ip_vs_out_icmp_v6), what is
not IPVS's, persistence with an IPv6 prefix, and the listings.

Rewrites are checked field by field with scapy; transport checksums by an
independent word loop over the IPv6 pseudo-header (through the extension
headers), never by ipvs.packet's own code.
"""

from __future__ import annotations

import struct

from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    ICMPv6ND_NS,
    ICMPv6PacketTooBig,
    ICMPv6TimeExceeded,
    IPerror6,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    TCPerror,
    UDPerror,
)

from ipvs import procfs
from ipvs.core import NF_ACCEPT, NF_DROP, NF_STOLEN
from ipvs.packet import Drop
from ipvs.proto.icmpv6 import build_error6
from ipvs.uapi import IP_VS_SVC_F_PERSISTENT
from tests.conftest import A, Lab, inet_csum

VIP, CLI, CLI2 = "2001:db8:0:5::5", "2001:db8:0:1::2", "2001:db8:0:1::99"
RS1, RS2 = "2001:db8:0:2::2", "2001:db8:0:2::3"


def web(**sysctls):
    lab = Lab(**sysctls)
    lab.su = lab.service(VIP, 80, sched="rr")
    lab.rs1 = lab.dest(lab.su, RS1, 80)
    lab.rs2 = lab.dest(lab.su, RS2, 8080)
    return lab


def pkt(src, dst, *layers, hlim=64) -> bytearray:
    p = IPv6(src=src, dst=dst, hlim=hlim)
    for layer in layers:
        p = p / layer
    return bytearray(bytes(p))


def l4_ok(buf: bytes) -> bool:
    """The transport checksum against the word loop over the packet's own
    pseudo-header, the transport header found by walking scapy's layers."""
    p = IPv6(bytes(buf))
    layer = p[TCP] if TCP in p else p[UDP]
    seg = bytes(layer)
    proto = 6 if TCP in p else 17
    return inet_csum(bytes(buf[8:40]) + struct.pack("!IxxxB", len(seg), proto) + seg) == 0


def icmp6_ok(buf: bytes) -> bool:
    p = IPv6(bytes(buf))
    layer = p.getlayer(3) if p.nh != 58 else p.payload
    for cls in (ICMPv6DestUnreach, ICMPv6PacketTooBig, ICMPv6TimeExceeded):
        if cls in p:
            layer = p[cls]
    seg = bytes(layer)
    return inet_csum(bytes(buf[8:40]) + struct.pack("!IxxxB", len(seg), 58) + seg) == 0


def test_tcp_over_ipv6_with_extension_headers_both_ways():
    lab = web()
    syn = pkt(CLI, VIP, IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(), TCP(sport=40000, dport=80, flags="S"))
    assert lab.send(syn) == NF_STOLEN
    p = IPv6(bytes(syn))
    # rr takes the newest destination first: RS2, port 80 mapped to 8080.
    assert (p.src, p.dst, p.hlim, p[TCP].dport, p[TCP].sport) == (CLI, RS2, 63, 8080, 40000)
    assert l4_ok(syn)
    [cp] = lab.conns()
    assert (cp.af, lab.tcp_states[cp.state]) == (10, "SYN_RECV")
    synack = pkt(RS2, CLI, IPv6ExtHdrHopByHop(), TCP(sport=8080, dport=40000, flags="SA"))
    assert lab.send(synack) == NF_STOLEN
    p = IPv6(bytes(synack))
    assert (p.src, p.dst, p.hlim, p[TCP].sport) == (VIP, CLI, 63, 80) and l4_ok(synack)
    ack = pkt(CLI, VIP, TCP(sport=40000, dport=80, flags="A"))
    assert lab.send(ack) == NF_STOLEN
    assert lab.tcp_states[cp.state] == "ESTABLISHED" and lab.rs2.activeconns == 1
    # The next client goes to RS1:80.
    syn2 = pkt(CLI, VIP, TCP(sport=40001, dport=80, flags="S"))
    assert lab.send(syn2) == NF_STOLEN
    p = IPv6(bytes(syn2))
    assert (p.dst, p[TCP].dport) == (RS1, 80) and l4_ok(syn2)
    st = lab.rs2.stats
    assert (st.inpkts, st.outpkts, st.inbytes) == (2, 1, len(syn) + len(ack))


def test_udp_over_ipv6_without_checksum_gets_one_and_replies_come_from_the_vip():
    lab = Lab()
    su = lab.service(VIP, 53, proto=17, sched="rr")
    lab.dest(su, RS1, 5353)
    q = pkt(CLI, VIP, UDP(sport=4000, dport=53, chksum=0) / b"query")
    assert lab.send(q) == NF_STOLEN
    p = IPv6(bytes(q))
    assert (p.dst, p[UDP].dport) == (RS1, 5353) and p[UDP].chksum != 0 and l4_ok(q)
    r = pkt(RS1, CLI, UDP(sport=5353, dport=4000) / b"answer")
    assert lab.send(r) == NF_STOLEN
    p = IPv6(bytes(r))
    assert (p.src, p[UDP].sport) == (VIP, 53) and l4_ok(r)


def test_no_real_server_left_answers_icmpv6_port_unreachable_from_the_vip():
    lab = web()
    for d in (lab.rs1, lab.rs2):
        d.weight = 0
    syn = pkt(CLI, VIP, TCP(sport=40000, dport=80, flags="S"))
    assert lab.send(syn) == NF_DROP
    (err,) = lab.ipvs.outbox
    e = IPv6(bytes(err))
    assert (e.src, e.dst, e[ICMPv6DestUnreach].code) == (VIP, CLI, 4) and icmp6_ok(err)
    assert bytes(e[IPerror6])[:40] == bytes(syn[:40])
    assert lab.ipvs.drops[Drop.NO_DEST] == 1


def test_hop_limit_and_packet_too_big_towards_the_real_server():
    lab = web()
    low = pkt(CLI, VIP, TCP(sport=40000, dport=80, flags="S"), hlim=1)
    assert lab.send(low) == NF_DROP
    (err,) = lab.ipvs.outbox
    e = IPv6(bytes(err))
    assert (e.src, e.dst, e[ICMPv6TimeExceeded].code) == (VIP, CLI, 0) and icmp6_ok(err)
    lab.ipvs.outbox.clear()
    lab.d.mtu = 1280
    big = pkt(CLI, VIP, TCP(sport=40001, dport=80, flags="S") / (b"x" * 1300))
    assert lab.send(big) == NF_DROP
    (err,) = lab.ipvs.outbox
    e = IPv6(bytes(err))
    assert (e.src, e[ICMPv6PacketTooBig].mtu) == (VIP, 1280) and icmp6_ok(err) and len(err) <= 1280


def test_reply_whose_hop_limit_runs_out_gets_time_exceeded_from_the_director():
    lab = web()
    lab.d.own_address = lambda dst: A("2001:db8:0:2::1") if dst[:8] == A(RS2)[:8] else None
    lab.send(pkt(CLI, VIP, TCP(sport=40000, dport=80, flags="S")))
    r = pkt(RS2, CLI, TCP(sport=8080, dport=40000, flags="SA"), hlim=1)
    assert lab.send(r) == NF_DROP
    (err,) = lab.ipvs.outbox
    e = IPv6(bytes(err))
    assert (e.src, e.dst, e[IPerror6].src) == ("2001:db8:0:2::1", RS2, RS2)


def test_icmpv6_error_from_the_real_server_goes_out_rewritten():
    """ip_vs_out_icmp_v6: RS2 says the client's packet (after DNAT) was too
    big; the client sees it from the VIP, quoting client -> VIP:80.  The
    hop-by-hop header puts the ICMPv6 header at 48, not 40 (the kernel's
    July 2026 fix of handle_response_icmp's offset)."""
    lab = web()
    syn = pkt(CLI, VIP, TCP(sport=40000, dport=80, flags="S"))
    lab.send(syn)
    err = pkt(RS2, CLI, IPv6ExtHdrHopByHop(), ICMPv6PacketTooBig(mtu=1300), bytes(syn))
    assert lab.send(err) == NF_STOLEN
    e = IPv6(bytes(err))
    assert (e.src, e.dst, e.hlim, e[ICMPv6PacketTooBig].mtu) == (VIP, CLI, 63, 1300)
    q = e[IPerror6]
    assert (q.src, q.dst, q[TCPerror].sport, q[TCPerror].dport) == (CLI, VIP, 40000, 80)
    assert icmp6_ok(err)
    assert lab.rs2.stats.outpkts == 1
    # A wrong checksum is dropped and counted.
    bad = pkt(RS2, CLI, ICMPv6DestUnreach(code=1, cksum=0x1234), bytes(syn))
    assert lab.send(bad) == NF_DROP and lab.ipvs.drops[Drop.BAD_CSUM] == 1


def test_icmpv6_error_about_a_reply_goes_in_to_the_real_server():
    """ip_vs_in_icmp_v6: a router on the client side cannot deliver the
    VIP's reply; the real server gets the error about its own packet."""
    lab = web()
    lab.send(pkt(CLI, VIP, TCP(sport=40000, dport=80, flags="S")))
    reply = pkt(VIP, CLI, TCP(sport=80, dport=40000, flags="SA"))
    err = pkt("2001:db8:0:1::fe", VIP, ICMPv6DestUnreach(code=3), bytes(reply))
    assert lab.send(err) == NF_STOLEN
    e = IPv6(bytes(err))
    q = e[IPerror6]
    assert (e.dst, e.hlim, q.src, q.dst, q[TCPerror].sport) == (RS2, 63, RS2, CLI, 8080)
    assert icmp6_ok(err)
    # A quoted UDP datagram of no connection: not related, untouched.
    other = pkt("2001:db8:0:1::fe", VIP, ICMPv6DestUnreach(), bytes(pkt(VIP, CLI, UDP(sport=9, dport=9))))
    before = bytes(other)
    assert lab.send(other) == NF_ACCEPT and bytes(other) == before
    assert UDPerror in IPv6(before)


def test_what_is_not_ipvs_traffic_passes_untouched():
    lab = web()
    for buf in (
        pkt(CLI, VIP, ICMPv6EchoRequest()),
        pkt(CLI, "ff02::1:ff00:5", ICMPv6ND_NS(tgt=VIP), hlim=255),
        pkt(CLI, VIP, TCP(sport=40000, dport=81, flags="S")),  # no service on :81
        pkt(CLI, "2001:db8:0:5::6", TCP(sport=40000, dport=80, flags="S")),
    ):
        before = bytes(buf)
        assert lab.send(buf) == NF_ACCEPT and bytes(buf) == before
    assert lab.conns() == []
    frag_err = pkt(RS1, CLI, IPv6ExtHdrFragment(nh=58, offset=0, m=1), ICMPv6DestUnreach(), b"x" * 48)
    assert lab.send(frag_err) == NF_DROP  # errors are not fragmented


def test_persistence_groups_an_ipv6_prefix():
    lab = Lab()
    su = lab.service(VIP, 443, sched="rr", flags=IP_VS_SVC_F_PERSISTENT, timeout=300, netmask=64)
    lab.dest(su, RS1, 443)
    lab.dest(su, RS2, 443)
    for i, c in enumerate((CLI, CLI2, CLI)):
        syn = pkt(c, VIP, TCP(sport=40000 + i, dport=443, flags="S"))
        assert lab.send(syn) == NF_STOLEN
        assert IPv6(bytes(syn)).dst == RS2  # the newest dest first in rr, then the template
    other = pkt("2001:db8:0:7::1", VIP, TCP(sport=40000, dport=443, flags="S"))
    lab.send(other)
    assert IPv6(bytes(other)).dst == RS1
    tmpls = [cp for cp in lab.ipvs.conn_tab.templates.values()]
    assert {cp.caddr for cp in tmpls} == {A("2001:db8:0:1::"), A("2001:db8:0:7::")}


def test_ipv6_connections_in_the_proc_views():
    lab = web()
    lab.send(pkt(CLI, VIP, TCP(sport=40000, dport=80, flags="S")))
    text = procfs.render(lab.ipvs, "ip_vs_conn", lab.now)
    assert ("TCP 2001:0db8:0000:0001:0000:0000:0000:0002 9C40 2001:0db8:0000:0005:0000:0000:0000:0005 0050 "
            "2001:0db8:0000:0002:0000:0000:0000:0003 1F90 SYN_RECV         60\n") in text


def test_local_out_rewrites_the_directors_own_icmpv6_error_about_ipvs_traffic():
    """ip_vs_local_reply6: the driver's address unreachable about a DNATed
    packet (client -> RS2:8080) leaves from the VIP quoting client -> VIP:80,
    without the forwarding hop."""
    lab = web()
    syn = pkt(CLI, VIP, TCP(sport=40000, dport=80, flags="S"))
    lab.send(syn)
    err = build_error6(syn, 0, len(syn), 1, 3, A("2001:db8:0:1::1"))
    assert lab.d.local_out(err, 0, lab.now) == NF_STOLEN
    e = IPv6(bytes(err))
    q = e[IPerror6]
    assert (e.src, e.dst, e.hlim, e[ICMPv6DestUnreach].code) == (VIP, CLI, 64, 3)
    assert (q.src, q.dst, q[TCPerror].dport) == (CLI, VIP, 80) and icmp6_ok(err)
    other = build_error6(pkt(CLI, "2001:db8:0:9::9", UDP(sport=1, dport=2)), 0, 48, 1, 3, A("2001:db8:0:1::1"))
    before = bytes(other)
    assert lab.d.local_out(other, 0, lab.now) == NF_ACCEPT and bytes(other) == before
