"""ipvs/driver/ip6.py on fake ports: neighbour discovery for the director's
addresses and the IPv6 VIPs, local answers, routing and neighbour
resolution of what it sends, and the IPv6 BPF filter switch."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPerror6,
    IPv6,
    IPv6ExtHdrFragment,
    TCPerror,
    fragment6,
)
from scapy.layers.l2 import Ether

from ipvs.driver import bpf
from ipvs.driver.frag6 import Reassembler6
from tests.driver.helpers import (
    CLIENT6,
    GW6,
    MAC_CLIENT,
    MAC_D_IN,
    MAC_D_OUT,
    MAC_RS1,
    OUTER6,
    RS1_6,
    VIP6,
    Rig6,
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
