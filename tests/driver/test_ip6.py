"""ipvs/driver/ip6.py on fake ports: neighbour discovery for the director's
addresses and the IPv6 VIPs, local answers, routing and neighbour
resolution of what it sends (direct-routed and tunnelled packets to the
real server, in its family), and the IPv6 BPF filter switch."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6PacketTooBig,
    ICMPv6TimeExceeded,
    IPerror6,
    IPv6,
    IPv6ExtHdrFragment,
    TCPerror,
    UDPerror,
    fragment6,
)
from scapy.layers.l2 import Ether

from ipvs import ctl, uapi
from ipvs.driver import bpf
from ipvs.driver.frag6 import Reassembler6
from ipvs.packet import l4_csum_full, parse
from tests.driver.helpers import (
    CLIENT6,
    GW6,
    HZ,
    MAC_CLIENT,
    MAC_D_IN,
    MAC_D_OUT,
    MAC_RS1,
    OUTER6,
    RS1,
    RS1_6,
    VIP6,
    Rig6,
    arp,
)

MCLIENT = "02:00:00:00:c0:01"
MRS1 = "02:00:00:00:a0:01"


def f6(pkt, src=MCLIENT, dst="02:00:00:00:00:0a") -> bytearray:
    return bytearray(10) + bytearray(bytes(Ether(src=src, dst=dst) / pkt))


def ns(src, target, src_mac=MCLIENT, eth_dst="33:33:ff:00:00:05") -> bytearray:
    group = "ff02::1:ff" + ipaddress.IPv6Address(target).exploded[-7:]
    return f6(IPv6(src=src, dst=group, hlim=255) / ICMPv6ND_NS(tgt=target) / ICMPv6NDOptSrcLLAddr(lladdr=src_mac),
              src=src_mac, dst=eth_dst)


def csum_ok(p, layer) -> bool:
    """scapy recomputes the layer's checksum and finds the same value."""
    name = "chksum" if layer in (TCP, UDP) else "cksum"
    got = getattr(p[layer], name)
    setattr(p[layer], name, None)
    return getattr(Ether(bytes(p))[layer], name) == got


def test_unsolicited_advertisement_for_the_vip_at_start():
    r = Rig6()
    (na,) = [Ether(f) for f in r.garps if Ether(f).haslayer(ICMPv6ND_NA)]
    assert (na.dst, na[IPv6].dst, na[ICMPv6ND_NA].tgt, na[ICMPv6ND_NA].S, na[ICMPv6ND_NA].O) == (
        "33:33:00:00:00:01", "ff02::1", VIP6, 0, 1)
    assert na[ICMPv6NDOptDstLLAddr].lladdr == "02:00:00:00:00:0a"


def test_answers_solicitations_for_the_vip_and_its_own_addresses_and_learns_the_sender():
    r = Rig6()
    for target in (VIP6, OUTER6):
        r.rx_outer(ns(CLIENT6, target))
        (f,) = r.out_ring.take()
        e = Ether(f)
        assert csum_ok(e, ICMPv6ND_NA)
        assert (e.dst, e[IPv6].src, e[IPv6].dst, e[IPv6].hlim) == (MCLIENT, target, CLIENT6, 255)
        assert (e[ICMPv6ND_NA].tgt, e[ICMPv6ND_NA].S) == (target, 1)
    assert r.outer.neigh6.mac[int(ipaddress.IPv6Address(CLIENT6))] == MAC_CLIENT
    # Not ours: the inner address on the outer side, another address.
    r.rx_outer(ns(CLIENT6, GW6))
    r.rx_outer(ns(CLIENT6, "2001:db8:0:5::6"))
    assert r.out_ring.take() == []
    r.rx_inner(ns(RS1_6, GW6, src_mac=MRS1))
    (f,) = r.in_ring.take()
    assert Ether(f)[ICMPv6ND_NA].tgt == GW6
    # Duplicate address detection (source ::): answered to all nodes.
    r.rx_outer(ns("::", VIP6))
    (f,) = r.out_ring.take()
    assert (Ether(f)[IPv6].dst, Ether(f)[ICMPv6ND_NA].S) == ("ff02::1", 0)
    assert r.drv.drops["bad_ndisc"] == 0


def test_forged_or_forwarded_solicitations_are_dropped():
    r = Rig6()
    bad = ns(CLIENT6, VIP6)
    bad[24 + 7] = 64  # hop limit: not from this link
    r.rx_outer(bad)
    assert r.out_ring.take() == [] and r.drv.drops["bad_ndisc"] == 1


def test_echo_to_the_vip_and_closed_ports_answered_like_a_host():
    r = Rig6()
    r.rx_outer(ns(CLIENT6, VIP6))
    r.out_ring.take()
    r.rx_outer(f6(IPv6(src=CLIENT6, dst=VIP6) / ICMPv6EchoRequest(id=7, seq=1, data=b"ping")))
    (f,) = r.out_ring.take()
    e = Ether(f)
    assert (e.dst, e.src, e[IPv6].src, e[IPv6].dst) == (MCLIENT, "02:00:00:00:00:0a", VIP6, CLIENT6)
    assert e[ICMPv6EchoReply].data == b"ping" and csum_ok(e, ICMPv6EchoReply)
    r.rx_outer(f6(IPv6(src=CLIENT6, dst=OUTER6) / TCP(sport=4000, dport=22, flags="S", seq=10)))
    (f,) = r.out_ring.take()
    t = Ether(f)[TCP]
    assert (t.sport, t.dport, t.flags, t.ack) == (22, 4000, "RA", 11) and csum_ok(Ether(f), TCP)
    r.rx_outer(f6(IPv6(src=CLIENT6, dst=VIP6) / UDP(sport=4000, dport=9) / b"x"))
    (f,) = r.out_ring.take()
    e = Ether(f)
    assert (e[IPv6].src, e[ICMPv6DestUnreach].code) == (VIP6, 4) and csum_ok(e, ICMPv6DestUnreach)


def test_shared_mode_answers_closed_ports_on_the_vip_and_leaves_the_rest_to_the_kernel():
    """Shared mode: the ip6 nftables table hides TCP/UDP to the VIP from the
    kernel, so the driver answers closed ports there; echo to the VIP and
    everything to the kernel's own addresses is the kernel's (no answer,
    no drop counted), even with --forward."""
    r = Rig6(mode="shared")
    r.drv.forward = True
    r.rx_outer(ns(CLIENT6, VIP6))
    r.out_ring.take()
    r.rx_outer(f6(IPv6(src=CLIENT6, dst=VIP6) / TCP(sport=4000, dport=22, flags="S", seq=10)))
    (f,) = r.out_ring.take()
    e = Ether(f)
    assert (e[IPv6].src, e[TCP].flags, e[TCP].ack) == (VIP6, "RA", 11) and csum_ok(e, TCP)
    r.rx_outer(f6(IPv6(src=CLIENT6, dst=VIP6) / UDP(sport=4000, dport=9) / b"x"))
    (f,) = r.out_ring.take()
    assert Ether(f)[ICMPv6DestUnreach].code == 4
    r.rx_outer(f6(IPv6(src=CLIENT6, dst=VIP6) / ICMPv6EchoRequest(id=7, seq=1, data=b"ping")))
    r.rx_outer(f6(IPv6(src=CLIENT6, dst=OUTER6) / TCP(sport=4001, dport=22, flags="S")))
    r.rx_outer(f6(IPv6(src=CLIENT6, dst=OUTER6) / ICMPv6EchoRequest(id=7, seq=2)))
    assert r.out_ring.take() == [] and r.in_ring.take() == []
    assert not r.drv.drops["not_forwarded6"] and not r.drv.counts["forwarded6"]


def test_icmpv6_errors_the_director_makes_are_rate_limited_like_the_kernels():
    """icmpv6_xrlim_allow: the client is on the outer /64, so an error costs
    1000 ms >> 2; of 10 datagrams to a closed port 6 are answered and 4
    counted; one timeout later one more token has come back.  Echo replies
    (informational) are never limited."""
    r = Rig6()
    r.rx_outer(ns(CLIENT6, VIP6))
    r.out_ring.take()
    for i in range(10):
        r.rx_outer(f6(IPv6(src=CLIENT6, dst=VIP6) / UDP(sport=4000 + i, dport=9) / b"x"))
    got = [Ether(f) for f in r.out_ring.take()]
    assert [e[ICMPv6DestUnreach].code for e in got] == [4] * 6
    assert r.drv.counters()["drop_icmp6_ratelimit"] == 4
    for i in range(10):
        r.rx_outer(f6(IPv6(src=CLIENT6, dst=VIP6) / ICMPv6EchoRequest(id=7, seq=i)))
    assert len([f for f in r.out_ring.take() if Ether(f).haslayer(ICMPv6EchoReply)]) == 10
    r.drv.now += (HZ >> 2) - 1
    r.rx_outer(f6(IPv6(src=CLIENT6, dst=VIP6) / UDP(sport=5000, dport=9) / b"x"))
    assert r.out_ring.take() == []
    r.drv.now += 1
    for i in range(2):
        r.rx_outer(f6(IPv6(src=CLIENT6, dst=VIP6) / UDP(sport=5001 + i, dport=9) / b"x"))
    assert len(r.out_ring.take()) == 1 and r.drv.counters()["drop_icmp6_ratelimit"] == 6


def test_packet_too_big_is_never_rate_limited():
    """Path MTU discovery is left out of icmpv6_ratemask: every oversized
    packet for a direct-routed real server gets its Packet Too Big."""
    r = fwd_rig(uapi.IP_VS_CONN_F_DROUTE)
    r.rx_outer(ns(CLIENT6, VIP6))
    r.out_ring.take()
    for i in range(10):
        r.rx_outer(f6(IPv6(src=CLIENT6, dst=VIP6) / TCP(sport=40000 + i, dport=80, flags="S") / (b"x" * 1460)))
    got = [Ether(f) for f in r.out_ring.take()]
    assert len(got) == 10 and all(e.haslayer(ICMPv6PacketTooBig) and e[ICMPv6PacketTooBig].mtu == 1500 for e in got)
    assert r.drv.counters().get("drop_icmp6_ratelimit", 0) == 0


def test_an_unresolved_next_hop_is_solicited_and_the_packet_sent_once_advertised():
    r = Rig6()
    # The director's own echo request is the simplest packet to route out.
    pkt = bytearray(24) + bytearray(bytes(IPv6(src=GW6, dst=RS1_6) / ICMPv6EchoRequest()))
    r.drv.v6.route_out(pkt, 24)
    (sol,) = r.in_ring.take()
    e = Ether(sol)
    assert (e.dst, e[IPv6].dst, e[ICMPv6ND_NS].tgt) == ("33:33:ff:00:00:02", "ff02::1:ff00:2", RS1_6)
    adv = f6(IPv6(src=RS1_6, dst=GW6, hlim=255) / ICMPv6ND_NA(tgt=RS1_6, S=1, O=1, R=0)
             / ICMPv6NDOptDstLLAddr(lladdr=MRS1), src=MRS1, dst="02:00:00:00:00:0b")
    r.rx_inner(adv)
    (out,) = r.in_ring.take()
    assert (Ether(out).dst, Ether(out).src, Ether(out)[IPv6].dst) == (MRS1, "02:00:00:00:00:0b", RS1_6)
    assert MAC_D_IN == bytes.fromhex("02000000000b") and MAC_D_OUT and MAC_RS1


def test_a_neighbour_that_never_answers_gets_address_unreachable_back_to_the_sender():
    r = Rig6()
    r.rx_outer(ns(CLIENT6, VIP6))
    r.out_ring.take()
    pkt = bytearray(24) + bytearray(bytes(IPv6(src=CLIENT6, dst=RS1_6, hlim=63) / UDP(sport=1, dport=2)))
    r.drv.v6.route_out(pkt, 24)
    r.in_ring.take()
    for s in range(1, 5):
        r.drv.on_idle(r.now + s * 250)
    errs = [Ether(f) for f in r.out_ring.take() if Ether(f).haslayer(ICMPv6DestUnreach)]
    assert len(errs) == 1
    e = errs[0]
    assert (e[IPv6].src, e[IPv6].dst, e[ICMPv6DestUnreach].code) == (OUTER6, CLIENT6, 3)
    assert r.drv.counters()["br-in_neigh6_failed"] == 1


def test_address_unreachables_are_rate_limited_too():
    """Ten packets waited for the neighbour that never answered: six
    errors to their sender, four counted (icmpv6_xrlim_allow in
    icmp6_send, before the LOCAL_OUT step)."""
    r = Rig6()
    r.rx_outer(ns(CLIENT6, VIP6))
    r.out_ring.take()
    for i in range(10):
        pkt = bytearray(24) + bytearray(bytes(IPv6(src=CLIENT6, dst=RS1_6, hlim=63) / UDP(sport=1000 + i, dport=2)))
        r.drv.v6.route_out(pkt, 24)
    r.in_ring.take()
    for s in range(1, 5):
        r.drv.on_idle(r.now + s * 250)
    errs = [Ether(f) for f in r.out_ring.take() if Ether(f).haslayer(ICMPv6DestUnreach)]
    assert [e[UDPerror].sport for e in errs] == list(range(1000, 1006))
    assert r.drv.counters()["drop_icmp6_ratelimit"] == 4


def test_the_filter_passes_ipv6_frames_only_when_asked():
    on = bpf.build([1], ipv6=True)
    off = bpf.build([1])
    assert len(on) == len(off) + 8
    r = Rig6()
    assert r.drv.filter_for(r.outer) == bpf.build(
        r.drv.vips | {r.outer.addr}, [], set(), None, ipv6=True)


def test_an_unresolved_real_server_answers_the_client_from_the_vip():
    """ndisc_error_report -> icmpv6_send -> ip_vs_local_reply6: the client's
    SYN went to RS1 (DNAT), RS1 never answers; the client hears address
    unreachable from the VIP about its own SYN to VIP:80."""
    r = Rig6()
    r.rx_outer(ns(CLIENT6, VIP6))
    r.out_ring.take()
    r.rx_outer(f6(IPv6(src=CLIENT6, dst=VIP6) / TCP(sport=40000, dport=80, flags="S")))
    (sol,) = r.in_ring.take()
    assert Ether(sol)[ICMPv6ND_NS].tgt == RS1_6
    for s in range(1, 5):
        r.drv.on_idle(r.now + s * 250)
    errs = [Ether(f) for f in r.out_ring.take() if Ether(f).haslayer(ICMPv6DestUnreach)]
    assert len(errs) == 1
    e = errs[0]
    assert (e[IPv6].src, e[IPv6].dst, e[ICMPv6DestUnreach].code) == (VIP6, CLIENT6, 3)
    assert (e[IPerror6].dst, e[TCPerror].dport) == (VIP6, 80) and csum_ok(e, ICMPv6DestUnreach)
    assert r.drv.counts["addr_unreach6"] == 1


def test_fragmented_udp_is_reassembled_natted_and_fragmented_again():
    """nf_defrag_ipv6 before IPVS and ip6_fragment after it: three
    fragments in, the datagram DNATed whole, three fragments out no larger
    than the largest that came."""
    r = Rig6()
    su = r.lab.service(VIP6, 7, proto=17, sched="rr")
    r.lab.dest(su, RS1_6, 7)
    r.rx_inner(ns(RS1_6, GW6, src_mac=MRS1))  # the real server is known
    r.in_ring.take()
    payload = bytes(range(256)) * 12
    dgram = IPv6(src=CLIENT6, dst=VIP6) / IPv6ExtHdrFragment(id=77) / UDP(sport=4000, dport=7) / payload
    frags = fragment6(dgram, 1280)
    for f in frags:
        r.rx_outer(f6(f))
    out = [Ether(f) for f in r.in_ring.take()]
    assert len(out) == len(frags) and all(len(bytes(e[IPv6])) <= 1280 for e in out)
    assert all(e[IPv6].dst == RS1_6 and e.dst == MRS1 for e in out)
    got = None
    re6 = Reassembler6(250)
    for e in out:
        got = re6.add(bytearray(10) + bytearray(bytes(e)), 24, 0) or got
    p = IPv6(bytes(got[0][24:]))
    assert (p[UDP].dport, bytes(p[UDP].payload)) == (7, payload) and csum_ok(Ether(bytes(got[0][10:])), UDP)
    assert r.drv.counters()["frag6_reassembled"] == 1


def test_a_large_ping_to_the_vip_is_answered_in_fragments():
    """A host fragments what it sends itself (ip6_fragment on the output
    path): the echo reply to a 3,000-byte ping leaves in fragments that
    fit the link, and is not refused with a "packet too big" to itself."""
    r = Rig6()
    r.rx_outer(ns(CLIENT6, VIP6))
    r.out_ring.take()
    data = bytes(range(256)) * 12
    req = IPv6(src=CLIENT6, dst=VIP6) / IPv6ExtHdrFragment(id=9) / ICMPv6EchoRequest(id=7, seq=1, data=data)
    for f in fragment6(req, 1280):
        r.rx_outer(f6(f))
    out = r.out_ring.take()
    assert len(out) == 3 and all(len(f) - 14 <= 1500 for f in out)
    got = None
    re6 = Reassembler6(250)
    for f in out:
        got = re6.add(bytearray(10) + bytearray(f), 24, 0) or got
    e = Ether(bytes(got[0][10:]))
    assert (e[IPv6].src, e[IPv6].dst, e[ICMPv6EchoReply].data) == (VIP6, CLIENT6, data)
    assert csum_ok(e, ICMPv6EchoReply)
    assert r.drv.drops["pkt_too_big6"] == 0


@given(st.binary(min_size=0, max_size=120), st.integers(0, 7), st.booleans())
def test_any_ipv6_frame_is_handled_or_counted_never_raised(tail, nh_pick, inner):
    """Garbage after an IPv6 header (any next header, extension headers,
    neighbour discovery, ICMPv6, fragments) never raises out of the path."""
    r = Rig6()
    nh = (0, 6, 17, 43, 44, 58, 60, 59)[nh_pick]
    hdr = bytearray(bytes(IPv6(src=CLIENT6, dst=VIP6, nh=nh, plen=len(tail), hlim=255)))
    frame = bytearray(10) + bytearray(bytes(Ether(src=MCLIENT, dst="02:00:00:00:00:0a"))[:12]) + b"\x86\xdd"
    frame += hdr + tail
    (r.rx_inner if inner else r.rx_outer)(frame)
    r.drv.on_idle(r.now + 250)


# ------------------------------------------------ direct routing, tunnels

def fwd_rig(fwd, vip=VIP6, rs=RS1_6, tun_type=0, learn=True):
    """Rig6 whose one service on ``vip`` forwards to ``rs`` by ``fwd``, the
    real server resolved (its solicitation for the director's address)."""
    r = Rig6(services6=False)
    su = r.lab.service(vip, 80, sched="rr")
    af = 10 if ":" in rs else 2
    ctl.add_dest(r.lab.ipvs, su, ctl.DestUser(af=af, addr=ipaddress.ip_address(rs).packed, port=80, conn_flags=fwd,
                                              tun_type=tun_type, tun_port=6080))
    r.drv.sync_services(force=True)
    if af == 10 and learn:
        r.rx_inner(ns(RS1_6, GW6, src_mac=MRS1, eth_dst="02:00:00:00:00:0b"))
    r.out_ring.take()
    r.in_ring.take()
    return r


def dr_gateway_rig():
    """A DR fwd_rig with ``--forward`` (the director is the real server's
    gateway), the client resolved and one connection to the real server
    open (client port 40000)."""
    r = fwd_rig(uapi.IP_VS_CONN_F_DROUTE)
    r.drv.forward = True
    r.rx_outer(ns(CLIENT6, OUTER6, eth_dst="33:33:ff:00:00:01"))
    r.out_ring.take()
    r.rx_outer(f6(IPv6(src=CLIENT6, dst=VIP6) / TCP(sport=40000, dport=80, flags="S")))
    r.in_ring.take()
    return r


def test_dr6_frame_goes_to_the_real_servers_mac_keeping_the_vip():
    r = fwd_rig(uapi.IP_VS_CONN_F_DROUTE, learn=False)
    r.rx_outer(f6(IPv6(src=CLIENT6, dst=VIP6) / TCP(sport=40000, dport=80, flags="S")))
    (sol,) = r.in_ring.take()
    assert Ether(sol)[ICMPv6ND_NS].tgt == RS1_6  # the real server is resolved, not the VIP
    r.rx_inner(f6(IPv6(src=RS1_6, dst=GW6, hlim=255) / ICMPv6ND_NA(tgt=RS1_6, S=1, O=1, R=0)
                  / ICMPv6NDOptDstLLAddr(lladdr=MRS1), src=MRS1, dst="02:00:00:00:00:0b"))
    (out,) = r.in_ring.take()
    e = Ether(out)
    assert (e.dst, e.type, e[IPv6].src, e[IPv6].dst, e[IPv6].hlim, e[TCP].dport) == (MRS1, 0x86DD, CLIENT6, VIP6, 63, 80)
    assert csum_ok(e, TCP) and r.drv.counts["direct_routed6"] == 1
    r.rx_outer(f6(IPv6(src=CLIENT6, dst=VIP6) / TCP(sport=40000, dport=80, flags="A")))
    (out,) = r.in_ring.take()
    assert Ether(out).dst == MRS1 and r.lab.d.xmit_to is None


def test_dr6_too_big_for_the_real_servers_link_is_answered_from_the_vip():
    r = fwd_rig(uapi.IP_VS_CONN_F_DROUTE)
    r.rx_outer(ns(CLIENT6, VIP6))
    r.out_ring.take()
    r.rx_outer(f6(IPv6(src=CLIENT6, dst=VIP6) / TCP(sport=40000, dport=80, flags="S") / (b"x" * 1460)))
    assert r.in_ring.take() == []
    (err,) = r.out_ring.take()
    e = Ether(err)
    assert (e[IPv6].src, e[IPv6].dst) == (VIP6, CLIENT6) and e.haslayer(IPerror6)


def test_a_nat_reply_too_big_for_the_clients_link_is_answered_before_the_core():
    """ip6_forward checks the MTU before the FORWARD hook where IPVS
    rewrites the reply: the Packet Too Big goes back to the real server
    (from the director's address towards it) quoting the reply as it was
    sent, and the core never counts it."""
    r = Rig6()
    r.rx_outer(ns(CLIENT6, OUTER6, eth_dst="33:33:ff:00:00:01"))
    r.rx_inner(ns(RS1_6, GW6, src_mac=MRS1, eth_dst="02:00:00:00:00:0b"))
    r.out_ring.take()
    r.in_ring.take()
    r.rx_outer(f6(IPv6(src=CLIENT6, dst=VIP6) / TCP(sport=40000, dport=80, flags="S")))
    assert len(r.in_ring.take()) == 1
    [cp] = r.lab.conns()
    big = IPv6(src=RS1_6, dst=CLIENT6) / TCP(sport=80, dport=40000, flags="A") / (b"x" * 1441)
    r.rx_inner(f6(big, src=MRS1, dst="02:00:00:00:00:0b"))
    assert r.out_ring.take() == []
    (err,) = r.in_ring.take()
    e = Ether(err)
    assert (e.dst, e[IPv6].src, e[IPv6].dst) == (MRS1, GW6, RS1_6)
    assert e[ICMPv6PacketTooBig].mtu == 1500 and csum_ok(e, ICMPv6PacketTooBig)
    assert (e[IPerror6].src, e[IPerror6].dst) == (RS1_6, CLIENT6)  # as the real server sent it
    assert cp.dest.stats.outpkts == 0 and r.drv.drops["pkt_too_big6"] == 1
    # One byte less fits: rewritten and sent to the client.
    r.rx_inner(f6(IPv6(src=RS1_6, dst=CLIENT6) / TCP(sport=80, dport=40000, flags="A") / (b"x" * 1440),
                  src=MRS1, dst="02:00:00:00:00:0b"))
    (out,) = r.out_ring.take()
    assert Ether(out)[IPv6].src == VIP6 and cp.dest.stats.outpkts == 1


def test_a_direct_reply_too_big_for_the_clients_link_is_not_counted():
    """--forward: a DR real server's direct reply too big for the clients'
    link is answered (to the VIP it came from: a kernel director delivers
    that to itself) before the core, which does not count it."""
    r = dr_gateway_rig()
    [cp] = r.lab.conns()
    big = IPv6(src=VIP6, dst=CLIENT6) / TCP(sport=80, dport=40000, flags="SA") / (b"x" * 1441)
    r.rx_inner(f6(big, src=MRS1, dst="02:00:00:00:00:0b"))
    assert r.out_ring.take() == []
    assert cp.dest.stats.outpkts == 0 and r.drv.drops["pkt_too_big6"] == 1 and not r.drv.counts["forwarded6"]


def test_tunnelled_ipv6_frames_leave_in_the_real_servers_family():
    """IPv6-in-IPv6 (and GRE), IPv4-in-IPv6 for an IPv4 service with an
    IPv6 real server, IPv6-in-IPv4 for the reverse: the EtherType is the
    outer header's, the checksums finished (no offload request left)."""
    T = uapi.IP_VS_CONN_F_TUNNEL
    for vip, rs, tun_type, etype, nh in ((VIP6, RS1_6, 0, 0x86DD, 41), (VIP6, RS1_6, 2, 0x86DD, 47),
                                         ("203.0.113.5", RS1_6, 0, 0x86DD, 4)):
        r = fwd_rig(T, vip=vip, rs=rs, tun_type=tun_type)
        if ":" in vip:
            pkt = IPv6(src=CLIENT6, dst=vip) / TCP(sport=40000, dport=80, flags="S")
            r.rx_outer(f6(pkt))
        else:
            pkt = IP(src="198.51.100.2", dst=vip) / TCP(sport=40000, dport=80, flags="S")
            r.rx_outer(bytearray(10) + bytearray(bytes(Ether(src=MCLIENT, dst="02:00:00:00:00:0a") / pkt)))
        ((out, vnet),) = r.in_ring.sent
        e = Ether(out)
        assert (e.dst, e.type, e[IPv6].src, e[IPv6].dst, e[IPv6].nh) == (MRS1, etype, GW6, RS1_6, nh)
        assert vnet[0] == 0 and r.drv.counts["tunnelled"] == 1
    r = fwd_rig(T, rs="172.16.0.2")
    r.rx_inner(arp(1, MAC_RS1, RS1, b"\0" * 6, "172.16.0.1", b"\xff" * 6))
    r.in_ring.take()
    r.rx_outer(f6(IPv6(src=CLIENT6, dst=VIP6) / TCP(sport=40000, dport=80, flags="S")))
    (out,) = r.in_ring.take()
    e = Ether(out)
    assert (e.type, e[IP].src, e[IP].dst, e[IP].proto, e[IP][IPv6].dst) == (0x0800, "172.16.0.1", RS1, 41, VIP6)


def test_reassembled_ipv6_for_a_tunnel_is_too_big_when_a_fragment_exceeds_the_mtu_less_the_overhead():
    """ensure_mtu_is_adequate with frag_max_size in ip_vs_tunnel_xmit_v6:
    the MTU is the link's less the 40-byte outer header (1460), and a
    datagram the client sent in fragments of 1480 gets Packet Too Big for
    1460 from the VIP, nothing reaching the real server; in fragments of
    1400 it is tunnelled, and the outer packet leaves in fragments no
    larger, which the real server reassembles into the whole datagram."""
    payload = bytes(range(256)) * 12
    dgram = IPv6(src=CLIENT6, dst=VIP6) / IPv6ExtHdrFragment(id=78) / TCP(sport=40000, dport=80, flags="S") / payload
    r = fwd_rig(uapi.IP_VS_CONN_F_TUNNEL)
    r.rx_outer(ns(CLIENT6, VIP6))
    r.out_ring.take()
    for f in fragment6(dgram, 1480):
        r.rx_outer(f6(f))
    assert r.in_ring.take() == []
    (err,) = r.out_ring.take()
    e = Ether(err)
    assert (e[IPv6].src, e[IPv6].dst, e[ICMPv6PacketTooBig].mtu) == (VIP6, CLIENT6, 1460)
    assert e[IPerror6].dst == VIP6 and csum_ok(e, ICMPv6PacketTooBig)
    r = fwd_rig(uapi.IP_VS_CONN_F_TUNNEL)
    for f in fragment6(dgram, 1400):
        r.rx_outer(f6(f))
    out = [Ether(f) for f in r.in_ring.take()]
    assert len(out) >= 3 and all(len(bytes(e[IPv6])) <= 1400 and e[IPv6].dst == RS1_6 for e in out)
    assert r.out_ring.take() == []
    re6, got = Reassembler6(250), None
    for e in out:
        got = re6.add(bytearray(10) + bytearray(bytes(e)), 24, 0) or got
    outer = IPv6(bytes(got[0][24:]))
    assert (outer.src, outer.dst, outer.nh) == (GW6, RS1_6, 41)
    inner = outer[IPv6].payload
    assert (inner.dst, bytes(inner[TCP].payload)) == (VIP6, payload)


def test_an_ipv6_real_server_on_the_director_itself_is_a_counted_drop():
    """As for IPv4: the director's own inner address as a NAT or DR real
    server is not solicited on the wire; its packets are counted."""
    for fwd in (uapi.IP_VS_CONN_F_MASQ, uapi.IP_VS_CONN_F_DROUTE):
        r = fwd_rig(fwd, rs=GW6, learn=False)
        r.rx_outer(f6(IPv6(src=CLIENT6, dst=VIP6) / TCP(sport=40000, dport=80, flags="S")))
        assert r.in_ring.take() == [] and r.drv.counters()["drop_local_real_server"] == 1


def test_ipv6_gso_super_frame_is_cut_tunnelled_and_fragmented_when_too_big():
    """A TCP/IPv6 GSO super-frame for an IPv6 tunnel: its segments are cut
    (no tunnel GSO types in virtio_net_hdr) and each is wrapped; segments
    of the client's full MSS plus the 40-byte outer header exceed the
    link, and the director, their source, fragments them (ignore_df)."""
    r = fwd_rig(uapi.IP_VS_CONN_F_TUNNEL)
    r.rx_outer(f6(IPv6(src=CLIENT6, dst=VIP6) / TCP(sport=40000, dport=80, flags="S")))
    r.in_ring.take()
    payload = bytes(range(256)) * 12  # 3072: segments of 1440, 1440, 192
    pkt = bytearray(bytes(IPv6(src=CLIENT6, dst=VIP6) / TCP(sport=40000, dport=80, flags="PA", seq=9) / payload))
    h = parse(pkt, 0)
    l4_csum_full(pkt, h, partial=True)
    vnet = struct.pack("=BBHHHH", 1, 4, 74, 1440, 54, 16)  # NEEDS_CSUM, GSO_TCPV6
    r.rx_outer(bytearray(vnet) + bytearray(bytes(Ether(src=MCLIENT, dst="02:00:00:00:00:0a", type=0x86DD))) + pkt)
    frames = r.in_ring.sent[:]
    assert r.drv.counts["tun_gso_segmented"] == 1 and r.drv.counts["tunnelled"] == 4  # SYN + 3 segments
    assert all(v == bytes(10) and len(f) - 14 <= 1500 for f, v in frames)
    # Two segments came in two fragments each, the last one whole.
    assert len(frames) == 5
    re = Reassembler6(250)
    got = b""
    for f, _ in frames:
        buf = bytearray(10) + bytearray(f)
        e = Ether(f)
        assert (e[IPv6].src, e[IPv6].dst) == (GW6, RS1_6)
        whole = re.add(buf, 24, 1000) if e[IPv6].nh == 44 else (buf, 0)
        if whole is None:
            continue
        inner = IPv6(bytes(whole[0][24 + 40 :]))
        assert inner.dst == VIP6 and inner.hlim == 63 and csum_ok(Ether() / inner, TCP)
        got += bytes(inner[TCP].payload)
    assert got == payload


def test_direct_replies_are_forwarded_with_forward():
    """--forward: a DR real server's reply from the VIP (the director is its
    gateway) is counted by the core and routed on, one hop less; one whose
    hop limit runs out gets a hop limit exceeded from the director."""
    r = dr_gateway_rig()
    reply = IPv6(src=VIP6, dst=CLIENT6, hlim=64) / TCP(sport=80, dport=40000, flags="SA")
    r.rx_inner(f6(reply, src=MRS1, dst="02:00:00:00:00:0b"))
    (out,) = r.out_ring.take()
    e = Ether(out)
    assert (e.dst, e[IPv6].src, e[IPv6].dst, e[IPv6].hlim) == (MCLIENT, VIP6, CLIENT6, 63)
    assert r.drv.counts["forwarded6"] == 1
    [cp] = r.lab.conns()
    assert cp.dest.stats.outpkts == 1 and not cp.flags & uapi.IP_VS_CONN_F_NOOUTPUT
    # Hop limit 1: not counted, not forwarded; the error to the VIP has no
    # route (a kernel director would deliver it to itself).
    reply.hlim = 1
    r.rx_inner(f6(reply, src=MRS1, dst="02:00:00:00:00:0b"))
    assert r.in_ring.take() == r.out_ring.take() == []
    assert r.drv.drops["hoplimit6"] == 1 and cp.dest.stats.outpkts == 1
    own = IPv6(src=RS1_6, dst=CLIENT6, hlim=1) / TCP(sport=5000, dport=40000, flags="S")
    r.rx_inner(f6(own, src=MRS1, dst="02:00:00:00:00:0b"))
    (err,) = r.in_ring.take()
    e = Ether(err)
    assert (e.dst, e[IPv6].src, e[IPv6].dst, e[ICMPv6TimeExceeded].code) == (MRS1, GW6, RS1_6, 0)
    assert csum_ok(e, ICMPv6TimeExceeded)
    r.drv.forward = False
    reply.hlim = 64
    r.rx_inner(f6(reply, src=MRS1, dst="02:00:00:00:00:0b"))
    assert r.out_ring.take() == [] and r.drv.drops["not_forwarded6"] == 1


def test_fwmark_vips_are_solicited_and_balanced_like_any_vip():
    """An IPv6 fwmark service's addresses come from the mark rules, as the
    IPv4 ones do: answered in neighbour discovery, announced when new, and
    a SYN to one of them goes to the service's real server."""
    from ipvs.fwmark import MarkRule

    r = Rig6(services6=False)
    su = r.lab.service("::", 0, sched="rr", fwmark=5)
    r.lab.dest(su, RS1_6, 80)
    r.lab.ipvs.marks.add(MarkRule(5, af=uapi.AF_INET6, protocol=6, daddr="2001:db8:0:5::10/127"))
    r.drv.sync_services(force=True)
    announced = {Ether(f)[ICMPv6ND_NA].tgt for f in r.out_ring.take() if Ether(f).haslayer(ICMPv6ND_NA)}
    assert announced == {"2001:db8:0:5::10", "2001:db8:0:5::11"}
    r.rx_outer(ns(CLIENT6, "2001:db8:0:5::11", eth_dst="33:33:ff:00:00:11"))
    (f,) = r.out_ring.take()
    assert Ether(f)[ICMPv6ND_NA].tgt == "2001:db8:0:5::11"
    r.rx_inner(ns(RS1_6, GW6, src_mac=MRS1))
    r.in_ring.take()
    r.rx_outer(f6(IPv6(src=CLIENT6, dst="2001:db8:0:5::11") / TCP(sport=40000, dport=80, flags="S")))
    (out,) = r.in_ring.take()
    e = Ether(out)
    assert (e.dst, e[IPv6].dst, e[TCP].dport) == (MRS1, RS1_6, 80)
    assert csum_ok(e, TCP)
    # A prefix of more than 256 addresses is not taken as VIPs.
    r.lab.ipvs.marks.add(MarkRule(5, af=uapi.AF_INET6, protocol=6, daddr="2001:db8:0:6::/64"))
    r.drv.sync_services(force=True)
    assert r.drv.v6.vips == {ipaddress.IPv6Address(f"2001:db8:0:5::{x}").packed for x in ("10", "11")}
