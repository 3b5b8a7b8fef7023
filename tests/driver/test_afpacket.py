"""The driver's packet handling on fake ports: ARP, routing, NAT, local answers."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror
from scapy.layers.l2 import ARP, Ether

from ipvs.driver import neigh, pcap
from ipvs.driver.afpacket import L3, AFPacketDriver, Port
from tests.conftest import Lab, checksums_valid, inet_csum, tcp, udp

from .helpers import (
    CLIENT,
    GW,
    MAC_CLIENT,
    MAC_D_IN,
    MAC_D_OUT,
    MAC_RS1,
    OUTER,
    RS1,
    VIP,
    FakeRing,
    Rig,
    arp,
    frame,
    ip4,
)

HZ = 250


def test_answers_arp_for_the_vip_and_its_own_addresses_only():
    r = Rig()
    for target in (VIP, OUTER):
        r.rx_outer(arp(1, MAC_CLIENT, CLIENT, b"\0" * 6, target, b"\xff" * 6))
        (f,) = r.out_ring.take()
        e = Ether(f)
        assert e.dst == "02:00:00:00:c0:01" and e[ARP].op == 2
        assert e[ARP].psrc == target and e[ARP].hwsrc == "02:00:00:00:00:0a" and e[ARP].pdst == CLIENT
    r.rx_outer(arp(1, MAC_CLIENT, CLIENT, b"\0" * 6, "203.0.113.6", b"\xff" * 6))
    r.rx_outer(arp(1, MAC_CLIENT, CLIENT, b"\0" * 6, GW, b"\xff" * 6))  # inner address: not on the outer side
    assert r.out_ring.take() == []
    r.rx_inner(arp(1, MAC_RS1, RS1, b"\0" * 6, GW, b"\xff" * 6))
    (f,) = r.in_ring.take()
    assert Ether(f)[ARP].psrc == GW


def test_gratuitous_arp_at_start_and_duplicate_address_probes_answered():
    r = Rig()
    (g,) = r.garps
    assert Ether(g)[ARP].psrc == VIP and Ether(g)[ARP].pdst == VIP
    r.rx_outer(arp(1, MAC_CLIENT, "0.0.0.0", b"\0" * 6, VIP, b"\xff" * 6))
    (f,) = r.out_ring.take()
    e = Ether(f)
    assert e[ARP].op == 2 and e[ARP].psrc == VIP and e[ARP].pdst == "0.0.0.0" and e.dst == "02:00:00:00:c0:01"
    assert not r.outer.neigh.entries


def test_new_service_vip_is_answered_after_sync():
    r = Rig()
    su = r.lab.service("203.0.113.9", 443)
    r.lab.dest(su, RS1, 443)
    r.drv.on_idle(r.now)
    (garp,) = r.out_ring.take()
    g = Ether(garp)
    assert g.dst == "ff:ff:ff:ff:ff:ff" and g[ARP].op == 1 and g[ARP].psrc == g[ARP].pdst == "203.0.113.9"
    r.rx_outer(arp(1, MAC_CLIENT, CLIENT, b"\0" * 6, "203.0.113.9", b"\xff" * 6))
    assert len(r.out_ring.take()) == 1


def test_syn_waits_for_arp_then_leaves_dnatted_with_valid_checksums():
    r = Rig()
    r.rx_outer(arp(1, MAC_CLIENT, CLIENT, b"\0" * 6, OUTER, b"\xff" * 6))
    r.out_ring.take()
    r.rx_outer(frame(tcp(CLIENT, 40000, VIP, 80), MAC_D_OUT, MAC_CLIENT))
    (req,) = r.in_ring.take()
    a = Ether(req)
    assert a.dst == "ff:ff:ff:ff:ff:ff" and a[ARP].op == 1 and a[ARP].pdst == RS1 and a[ARP].psrc == GW
    r.rx_inner(arp(2, MAC_RS1, RS1, MAC_D_IN, GW, MAC_D_IN))
    (f,) = r.in_ring.take()
    e = Ether(f)
    assert e.dst == "02:00:00:00:a0:01" and e.src == "02:00:00:00:00:0b"
    assert e[IP].dst == RS1 and e[IP].src == CLIENT and e[TCP].dport == 80 and e[IP].ttl == 63
    assert checksums_valid(f, 14)


def test_reply_goes_back_snatted_to_the_client():
    r = Rig()
    r.learn()
    r.rx_outer(frame(tcp(CLIENT, 40001, VIP, 80), MAC_D_OUT, MAC_CLIENT))
    r.in_ring.take()
    r.rx_inner(frame(tcp(RS1, 80, CLIENT, 40001, flags="SA"), MAC_D_IN, MAC_RS1))
    (f,) = r.out_ring.take()
    e = Ether(f)
    assert e.dst == "02:00:00:00:c0:01" and e[IP].src == VIP and e[TCP].sport == 80
    assert checksums_valid(f, 14)


def test_partial_checksum_frame_keeps_vnet_header_and_pseudo_sum():
    r = Rig()
    r.learn()
    pkt = tcp(CLIENT, 40002, VIP, 80, flags="A", payload=b"x" * 3000)
    tot = len(pkt)
    # What a GSO super-frame looks like: the field holds the uncomplemented
    # pseudo-header sum, the vnet header says NEEDS_CSUM and TCPV4.
    s = sum(struct.unpack("!4H", bytes(pkt[12:20]))) + 6 + (tot - 20)
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    pkt[36:38] = struct.pack("!H", s)
    vnet = struct.pack("=BBHHHH", 1, 1, 66, 1448, 34, 16)
    # Open the connection first so the ACK frame belongs to it.
    r.rx_outer(frame(tcp(CLIENT, 40002, VIP, 80), MAC_D_OUT, MAC_CLIENT))
    r.in_ring.take()
    r.rx_outer(frame(pkt, MAC_D_OUT, MAC_CLIENT, vnet=vnet))
    ((f, v),) = r.in_ring.sent
    assert v == vnet
    ip = f[14:]
    want = sum(struct.unpack("!4H", ip[12:20])) + 6 + (tot - 20)
    while want >> 16:
        want = (want & 0xFFFF) + (want >> 16)
    assert ip[16:20] == bytes([172, 16, 0, 2])
    assert struct.unpack("!H", ip[36:38])[0] == want
    assert len(f) == 14 + tot  # larger than the MTU, sent whole (GSO)


def test_ping_to_vip_is_answered_in_spare_mode_only():
    for mode, answers in (("spare", 1), ("shared", 0)):
        r = Rig(mode=mode)
        r.learn()
        ping = bytes(IP(src=CLIENT, dst=VIP, ttl=64) / ICMP(type=8, id=7, seq=1) / b"abc")
        r.rx_outer(frame(ping, MAC_D_OUT, MAC_CLIENT))
        got = r.out_ring.take()
        assert len(got) == answers
        if answers:
            e = Ether(got[0])
            assert e[IP].src == VIP and e[IP].dst == CLIENT and e[ICMP].type == 0 and e[ICMP].id == 7
            assert checksums_valid(got[0], 14)


def test_closed_port_on_own_address_gets_reset_and_port_unreachable():
    r = Rig()
    r.learn()
    r.rx_outer(frame(tcp(CLIENT, 5555, OUTER, 22, seq=100), MAC_D_OUT, MAC_CLIENT))
    (f,) = r.out_ring.take()
    e = Ether(f)
    assert e[TCP].flags == "RA" and e[TCP].ack == 101 and e[TCP].dport == 5555
    assert checksums_valid(f, 14)
    r.rx_outer(frame(udp(CLIENT, 5555, OUTER, 53), MAC_D_OUT, MAC_CLIENT))
    (f,) = r.out_ring.take()
    e = Ether(f)
    assert e[ICMP].type == 3 and e[ICMP].code == 3 and e[IP].src == OUTER
    assert inet_csum(bytes(f[34:])) == 0


def test_masquerade_round_trip_through_the_driver():
    r = Rig()
    r.learn()
    out = tcp(RS1, 33000, CLIENT, 8080)
    r.rx_inner(frame(out, MAC_D_IN, MAC_RS1))
    (f,) = r.out_ring.take()
    e = Ether(f)
    assert e[IP].src == OUTER and 61000 <= e[TCP].sport <= 65095 and e[IP].ttl == 63
    assert checksums_valid(f, 14)
    back = tcp(CLIENT, 8080, OUTER, e[TCP].sport, flags="SA")
    r.rx_outer(frame(back, MAC_D_OUT, MAC_CLIENT))
    (f,) = r.in_ring.take()
    e = Ether(f)
    assert e[IP].dst == RS1 and e[TCP].dport == 33000 and checksums_valid(f, 14)


def test_without_masquerading_transit_is_dropped_like_ip_forward_0():
    r = Rig(masq=False)
    r.learn()
    r.rx_inner(frame(tcp(RS1, 33000, CLIENT, 8080), MAC_D_IN, MAC_RS1))
    assert r.out_ring.take() == [] and r.drv.drops["not_forwarded"] == 1


def test_ttl_1_gets_time_exceeded_from_the_ingress_address():
    r = Rig()
    r.learn()
    r.rx_inner(frame(tcp(RS1, 33001, CLIENT, 8080, ttl=1), MAC_D_IN, MAC_RS1))
    assert r.out_ring.take() == []
    (f,) = r.in_ring.take()
    e = Ether(f)
    assert e[IP].src == GW and e[IP].dst == RS1 and e[ICMP].type == 11 and e[ICMP].code == 0


def test_frame_for_another_mac_and_bad_ip_checksum_are_dropped():
    r = Rig()
    r.learn()
    r.rx_outer(frame(tcp(CLIENT, 40003, VIP, 80), b"\x02\x00\x00\x00\x99\x99", MAC_CLIENT))
    bad = tcp(CLIENT, 40004, VIP, 80)
    bad[10] ^= 0xFF
    r.rx_outer(frame(bad, MAC_D_OUT, MAC_CLIENT))
    r.rx_outer(frame(b"\x45\x00", MAC_D_OUT, MAC_CLIENT))
    assert r.in_ring.take() == []
    assert r.drv.drops["otherhost"] == 1 and r.drv.drops["ip_csum"] == 1 and r.drv.drops["bad_ip"] == 1


def test_fragmented_request_is_reassembled_then_refragmented():
    r = Rig()
    r.learn()
    dgram = udp(CLIENT, 5000, VIP, 7, payload=bytes(range(256)) * 10)
    frags = [bytes(p) for p in IP(bytes(dgram)).fragment(1000)]
    for fr in frags:
        r.rx_outer(frame(fr, MAC_D_OUT, MAC_CLIENT))
    out = r.in_ring.take()
    assert len(out) == len(frags) == 3
    payload = b"".join(bytes(Ether(f)[IP].payload) for f in out)
    assert Ether(out[0])[IP].dst == RS1
    whole = IP(bytes(Ether(out[0])[IP])[:20] + payload)
    assert bytes(whole)[28:] == bytes(range(256)) * 10
    # No larger than the largest fragment that arrived (frag_max_size).
    assert max(len(f) - 14 for f in out) == max(len(fr) for fr in frags)


def test_unresolvable_next_hop_gives_up_after_three_probes():
    r = Rig()
    r.rx_outer(arp(1, MAC_CLIENT, CLIENT, b"\0" * 6, OUTER, b"\xff" * 6))
    r.out_ring.take()
    r.rx_outer(frame(tcp(CLIENT, 40005, VIP, 80), MAC_D_OUT, MAC_CLIENT))
    assert len(r.in_ring.take()) == 1
    for t in range(1, 5):
        r.drv.on_idle(r.now + t * 250 + 1)
    assert len(r.in_ring.take()) == 2  # two retransmissions: three requests in all
    assert r.inner.neigh.stats.failed == 1 and r.inner.neigh.stats.unresolved == 1
    (err,) = r.out_ring.take()  # and the client hears of it
    e = Ether(err)
    assert e[ICMP].type == 3 and e[ICMP].code == 1 and e[IP].src == VIP and e[IP].dst == CLIENT
    assert r.drv.counters()["host_unreach"] == 1 and r.drv.counters()["br-in_neigh_unresolved"] == 1


def test_neighbour_arp_frame_layout():
    f = neigh.arp_frame(neigh.ARPOP_REQUEST, MAC_D_IN, 0xAC100001, b"\0" * 6, 0xAC100002, neigh.BROADCAST)
    e = Ether(bytes(f[10:]))
    assert e[ARP].op == 1 and e[ARP].psrc == GW and e[ARP].pdst == RS1 and e.type == 0x0806


def test_df_packet_above_the_inner_mtu_gets_frag_needed_from_the_vip():
    r = Rig()
    r.inner.mtu = 1400
    r.drv.inner_mtu = 1400
    r.learn()
    r.rx_outer(frame(tcp(CLIENT, 40006, VIP, 80), MAC_D_OUT, MAC_CLIENT))
    r.in_ring.take()
    big = bytes(IP(src=CLIENT, dst=VIP, flags="DF", ttl=64) / TCP(sport=40006, dport=80, flags="A") / (b"y" * 1460))
    r.rx_outer(frame(big, MAC_D_OUT, MAC_CLIENT))
    assert r.in_ring.take() == []
    (f,) = r.out_ring.take()
    e = Ether(f)
    assert e[IP].src == VIP and e[IP].dst == CLIENT
    assert e[ICMP].type == 3 and e[ICMP].code == 4 and e[ICMP].nexthopmtu == 1400
    # The same size as a GSO frame passes whole: the kernel segments it.
    gso = bytearray(big)
    vnet = struct.pack("=BBHHHH", 0, 1, 54, 1348, 0, 0)
    r.rx_outer(frame(gso, MAC_D_OUT, MAC_CLIENT, vnet=vnet))
    assert len(r.in_ring.take()) == 1


@given(st.binary(max_size=120), st.sampled_from([b"\x08\x00", b"\x08\x06", b"\x86\xdd"]), st.booleans())
def test_garbage_frames_never_raise(payload, etype, to_us):
    r = Rig()
    r.learn()
    dst = MAC_D_OUT if to_us else b"\xff" * 6
    for f in (bytearray(10) + dst + MAC_CLIENT + etype + payload, bytearray(payload[:30])):
        r.rx_outer(bytearray(f))
        r.rx_inner(bytearray(f))


@given(st.integers(20, 60), st.integers(0, 255), st.binary(min_size=0, max_size=60))
def test_ip_headers_with_wrong_lengths_are_dropped_not_raised(ihl_bytes, proto, rest):
    r = Rig()
    r.learn()
    ip = bytearray(IP(src=CLIENT, dst=VIP, proto=proto, ihl=min(15, ihl_bytes // 4)).build()[:20]) + rest
    r.rx_outer(frame(ip, MAC_D_OUT, MAC_CLIENT))


def test_df_reply_above_the_outer_mtu_gets_frag_needed_back_to_the_real_server():
    r = Rig()
    r.outer.mtu = 1400
    r.drv = type(r.drv)(r.lab.d, [r.outer, r.inner], "spare", None)
    r.learn()
    r.rx_outer(frame(tcp(CLIENT, 40007, VIP, 80), MAC_D_OUT, MAC_CLIENT))
    r.in_ring.take()
    big = bytes(IP(src=RS1, dst=CLIENT, flags="DF") / TCP(sport=80, dport=40007, flags="A") / (b"r" * 1460))
    r.rx_inner(frame(big, MAC_D_IN, MAC_RS1))
    assert r.out_ring.take() == []
    (f,) = r.in_ring.take()
    e = Ether(f)
    assert e[IP].src == GW and e[IP].dst == RS1 and e[ICMP].type == 3 and e[ICMP].code == 4
    assert e[ICMP].nexthopmtu == 1400
    # The quoted packet is the real server's own, before any rewrite.
    assert bytes(e[ICMP].payload)[12:16] == bytes([172, 16, 0, 2])


def test_one_interface_for_both_sides():
    from ipvs.driver.afpacket import AFPacketDriver, Port

    from .helpers import HZ, FakeRing, ip4

    r = Rig()
    ring = FakeRing()
    port = Port("eth0", "both", ip4(GW), 0xFFFFFF00, HZ, MAC_D_IN, 1500, ring)
    drv = AFPacketDriver(r.lab.d, [port], "spare", [(ip4("172.16.0.0"), 0xFFFFFF00)])
    ring.take()
    client, mac_c = "172.16.0.100", b"\x02\x00\x00\x00\xc0\x64"
    for ip, mac in ((client, mac_c), (RS1, MAC_RS1)):
        drv.rx_frame(port, arp(1, mac, ip, b"\0" * 6, GW, b"\xff" * 6))
    drv.rx_frame(port, arp(1, mac_c, client, b"\0" * 6, VIP, b"\xff" * 6))
    drv._after_batch()
    assert [Ether(f)[ARP].psrc for f in ring.take()] == [GW, GW, VIP]
    drv.rx_frame(port, frame(tcp(client, 41000, VIP, 80), MAC_D_IN, mac_c))
    drv.rx_frame(port, frame(tcp(RS1, 80, client, 41000, flags="SA"), MAC_D_IN, MAC_RS1))
    drv._after_batch()
    to_rs, to_client = (Ether(f) for f in ring.take())
    assert to_rs.dst == "02:00:00:00:a0:01" and to_rs[IP].dst == RS1
    assert to_client.dst == "02:00:00:00:c0:64" and to_client[IP].src == VIP and to_client[TCP].sport == 80


def test_shared_mode_answers_closed_tcp_ports_on_the_vip_but_leaves_ping_to_the_kernel():
    r = Rig(mode="shared")
    r.learn()
    r.rx_outer(frame(tcp(CLIENT, 5556, VIP, 22, seq=7), MAC_D_OUT, MAC_CLIENT))
    (f,) = r.out_ring.take()
    assert Ether(f)[TCP].flags == "RA" and Ether(f)[IP].src == VIP
    ping = bytes(IP(src=CLIENT, dst=VIP) / ICMP(type=8))
    r.rx_outer(frame(ping, MAC_D_OUT, MAC_CLIENT))
    r.rx_outer(frame(tcp(CLIENT, 5557, OUTER, 22), MAC_D_OUT, MAC_CLIENT))  # the kernel's own address
    assert r.out_ring.take() == []


def test_shared_mode_with_forward_leaves_ping_to_the_vip_to_the_kernel_alone():
    """The kernel holds the VIP and answers the ping itself: forwarding a
    copy as well would send it back out towards the VIP (a second echo
    request, or an unreachable from the next router)."""
    r = Rig(mode="shared")
    r.drv.forward = True
    r.learn()
    ping = bytes(IP(src=CLIENT, dst=VIP) / ICMP(type=8))
    r.rx_outer(frame(ping, MAC_D_OUT, MAC_CLIENT))
    assert (r.out_ring.take(), r.in_ring.take()) == ([], [])
    assert r.drv.counts["forwarded"] == 0
    # Transit traffic is still forwarded.
    r.rx_outer(frame(bytes(IP(src=CLIENT, dst=RS1) / ICMP(type=8)), MAC_D_OUT, MAC_CLIENT))
    assert len(r.in_ring.take()) == 1 and r.drv.counts["forwarded"] == 1


def test_core_errors_about_forwarded_packets_come_from_the_directors_address():
    """The driver tells the core its own address towards a destination, which
    the core uses as the source of ICMP errors about forwarded packets."""
    import ipaddress

    r = Rig()
    own = r.lab.d.own_address
    assert own is not None
    assert own(ipaddress.ip_address(RS1).packed) == ipaddress.ip_address(GW).packed
    assert own(ipaddress.ip_address(CLIENT).packed) == ipaddress.ip_address(OUTER).packed


def test_fwmark_service_vips_come_from_the_mark_rules():
    """A fwmark service's VIPs are the addresses its mark rules cover: the
    driver answers ARP for them and hands their traffic to the core, which
    finds the service by the mark."""
    from ipvs.fwmark import MarkRule
    from tests.driver.helpers import ip4

    r = Rig(services=False)
    su = r.lab.service("0.0.0.0", 0, sched="rr", fwmark=3)
    r.lab.dest(su, RS1, 0)
    r.lab.ipvs.marks.add(MarkRule(3, daddr="203.0.113.16/29"))
    r.drv.on_idle(r.now)
    assert {ip4(f"203.0.113.{i}") for i in range(16, 24)} <= r.drv.vips
    garps = r.out_ring.take()  # a gratuitous ARP for each new VIP
    assert len(garps) == 8
    r.learn()
    r.rx_outer(arp(1, MAC_CLIENT, CLIENT, b"\0" * 6, "203.0.113.20", b"\xff" * 6))
    (f,) = r.out_ring.take()
    assert Ether(f)[ARP].op == 2 and Ether(f)[ARP].psrc == "203.0.113.20"
    r.rx_outer(frame(tcp(CLIENT, 40000, "203.0.113.20", 8080), MAC_D_OUT, MAC_CLIENT))
    (f,) = r.in_ring.take()
    e = Ether(f)
    assert e[IP].dst == RS1 and e[TCP].dport == 8080 and checksums_valid(f, 14)
    # Outside the rule's prefix: no ARP answer.
    r.rx_outer(arp(1, MAC_CLIENT, CLIENT, b"\0" * 6, "203.0.113.24", b"\xff" * 6))
    assert r.out_ring.take() == []
    # A rule removed: its addresses stop being VIPs.
    r.lab.ipvs.marks.flush()
    r.drv.on_idle(r.now)
    assert ip4("203.0.113.20") not in r.drv.vips


def test_shared_mode_hides_fwmark_vips_from_the_kernel_too(monkeypatch):
    """In shared mode the nftables drop set is by address: fwmark VIPs join it."""
    import ipaddress

    from ipvs.driver import nft
    from ipvs.fwmark import MarkRule

    seen = []
    monkeypatch.setattr(nft, "sync_services", lambda svcs: seen.append(set(svcs)))
    r = Rig(mode="shared")
    r.drv._nft_ready = True
    su = r.lab.service("0.0.0.0", 0, sched="rr", fwmark=3)
    r.lab.dest(su, RS1, 0)
    r.lab.ipvs.marks.add(MarkRule(3, daddr="203.0.113.16/30"))
    r.drv.on_idle(r.now)
    addrs = {ipaddress.ip_address(a) for a, _p, _port in seen[-1]}
    assert {ipaddress.ip_address(f"203.0.113.{i}") for i in range(16, 20)} | {ipaddress.ip_address(VIP)} <= addrs


def test_shared_mode_hides_ipv6_fwmark_vips_from_the_kernel_too(monkeypatch):
    import ipaddress

    from ipvs import uapi
    from ipvs.driver import nft
    from ipvs.fwmark import MarkRule
    from tests.driver.helpers import RS1_6, Rig6

    seen = []
    monkeypatch.setattr(nft, "sync_services", lambda svcs: seen.append(set(svcs)))
    r = Rig6(services6=False, mode="shared")
    r.drv._nft_ready = True
    su = r.lab.service("::", 0, sched="rr", fwmark=4)
    r.lab.dest(su, RS1_6, 0)
    r.lab.ipvs.marks.add(MarkRule(4, af=uapi.AF_INET6, daddr="2001:db8:0:5::20/126"))
    r.drv.on_idle(r.now)
    addrs = {ipaddress.ip_address(a) for a, _p, _port in seen[-1]}
    assert addrs == {ipaddress.ip_address(f"2001:db8:0:5::{i:x}") for i in range(0x20, 0x24)}


def test_shared_mode_hides_ipv6_vips_from_the_kernel_too(monkeypatch):
    """The IPv6 services' addresses join the drop sets beside the IPv4 ones."""
    import ipaddress

    from ipvs.driver import nft
    from tests.driver.helpers import VIP6, Rig6

    seen = []
    monkeypatch.setattr(nft, "sync_services", lambda svcs: seen.append(set(svcs)))
    r = Rig6(mode="shared")
    r.drv._nft_ready = True
    su = r.lab.service(VIP, 80, sched="rr")
    r.lab.dest(su, RS1, 80)
    r.drv.on_idle(r.now)
    assert {ipaddress.ip_address(a) for a, _p, _port in seen[-1]} == {ipaddress.ip_address(VIP),
                                                                       ipaddress.ip_address(VIP6)}


# ---------------------------------------------------------------- host unreachable

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "kernel", "goldens", "sched_sh")
ABSENT = "172.16.0.5"


def _ip(data: bytes, off: int = 14) -> tuple[str, str]:
    return socket.inet_ntoa(data[off + 12 : off + 16]), socket.inet_ntoa(data[off + 16 : off + 20])


def _golden_timeline():
    """The first client the 6.1 kernel scheduled to the absent 172.16.0.5:
    its SYNs, the kernel's ARP requests for 172.16.0.5 and the host
    unreachables the client received, from the sched_sh pcaps."""
    client_side = pcap.read_file(os.path.join(GOLDEN, "client-side.pcap"))
    errors = [r for r in client_side if len(r.data) > 35 and r.data[23] == 1 and r.data[34:36] == b"\x03\x01"]
    client = _ip(errors[0].data)[1]
    errors = [r for r in errors if _ip(r.data)[1] == client and r.ts < errors[0].ts + 1]
    sport = struct.unpack_from("!H", errors[0].data, 14 + 28 + 20)[0]
    syns = [r for r in client_side if r.ts <= errors[0].ts and r.data[23] == 6 and _ip(r.data)[0] == client
            and struct.unpack_from("!H", r.data, 34)[0] == sport]
    server_side = pcap.read_file(os.path.join(GOLDEN, "server-side.pcap"))
    arps = [r.ts for r in server_side if syns[0].ts <= r.ts <= errors[0].ts and r.data[12:14] == b"\x08\x06"
            and r.data[38:42] == socket.inet_aton(ABSENT)]
    return client, syns, arps, errors


def test_unresolved_real_server_gives_the_kernels_host_unreachables_byte_for_byte():
    """sched_sh: a client scheduled to 172.16.0.5, which does not exist,
    sent its SYN three times while the director resolved it; when the
    resolution failed the kernel answered each queued SYN with a host
    unreachable, rewritten by IPVS (LOCAL_OUT) to come from the VIP and
    quote VIP:80.  The driver replays the same timeline (the SYNs, and its
    neighbour timer run when the kernel's fired: at its ARP requests and at
    the failure) and must send the same packets at L3/L4, but for the IP
    ID (the kernel's per-destination counter) and so the header checksum."""
    client, syns, arps, errors = _golden_timeline()
    assert (len(syns), len(arps), len(errors)) == (3, 3, 3)
    r = Rig(services=False)
    su = r.lab.service(VIP, 80, sched="sh")
    r.lab.dest(su, ABSENT, 80)
    r.drv.sync_services()
    mac_c = b"\x02\x00\x00\x00\xc0\x08"
    r.rx_outer(arp(1, mac_c, client, b"\0" * 6, OUTER, b"\xff" * 6))
    r.out_ring.take()
    t0 = syns[0].ts

    def at(ts: float) -> int:
        return r.now + round((ts - t0) * HZ)

    events = [(s.ts, "syn", s) for s in syns] + [(t, "timer", None) for t in arps[1:]]
    events.append((errors[0].ts, "timer", None))
    for ts, kind, rec in sorted(events, key=lambda e: e[0]):
        r.drv.now = at(ts)
        if kind == "syn":
            r.rx_outer(frame(rec.data[14:], MAC_D_OUT, mac_c))
        else:
            r.drv.on_idle(at(ts))
    requests = [Ether(f) for f in r.in_ring.take()]
    assert [a[ARP].pdst for a in requests] == [ABSENT] * 3
    sent = r.out_ring.take()
    assert len(sent) == 3
    for ours, theirs in zip(sent, errors, strict=True):
        want = bytearray(theirs.data[14:])
        got = bytearray(ours[14:])
        assert len(got) == 88 and inet_csum(bytes(got[:20])) == 0
        got[4:6], got[10:12] = want[4:6], want[10:12]  # IP ID, header checksum
        assert got == want
    dest = next(iter(r.lab.ipvs.svc_table.values())).destinations[0]
    assert (dest.stats.outpkts, dest.stats.outbytes) == (3, 3 * 88)  # ip_vs_out_stats
    c = r.drv.counters()
    assert c["host_unreach"] == 3 and c["br-in_neigh_unresolved"] == 3 and c["br-in_neigh_failed"] == 1


def _absent_rig():
    r = Rig(services=False)
    su = r.lab.service(VIP, 80, sched="rr")
    r.lab.dest(su, ABSENT, 80)
    r.drv.sync_services()  # its gratuitous ARP goes out with learn's answers
    r.learn()
    return r


def _fail_after(r: Rig, start: int) -> None:
    for t in range(1, 5):
        r.drv.on_idle(start + t * HZ + 1)


def test_frame_for_a_failed_next_hop_resolves_again_then_gets_its_error():
    r = _absent_rig()
    r.rx_outer(frame(tcp(CLIENT, 40001, VIP, 80), MAC_D_OUT, MAC_CLIENT))
    _fail_after(r, r.now)
    assert len(r.out_ring.take()) == 1
    r.in_ring.take()
    later = r.now + 10 * HZ
    r.drv.now = later
    r.rx_outer(frame(tcp(CLIENT, 40002, VIP, 80), MAC_D_OUT, MAC_CLIENT))
    assert [Ether(f)[ARP].pdst for f in r.in_ring.take()] == [ABSENT]  # a new resolution at once
    assert r.out_ring.take() == []
    _fail_after(r, later)
    assert len(r.in_ring.take()) == 2
    (err,) = r.out_ring.take()
    e = Ether(err)
    assert e[ICMP].code == 1 and e[IP].src == VIP and e[TCPerror].sport == 40002 and e[TCPerror].dport == 80
    assert e[IPerror].dst == VIP and checksums_valid(err, 14)


def test_host_unreachables_to_one_client_are_rate_limited_like_the_kernels():
    """icmp_ratelimit 1 s with a burst of 6 per destination: of 10 SYNs
    waiting for the absent server, 6 are answered; a second later one more
    token has come back."""
    r = _absent_rig()
    for i in range(10):
        r.rx_outer(frame(tcp(CLIENT, 40100 + i, VIP, 80), MAC_D_OUT, MAC_CLIENT))
    _fail_after(r, r.now)
    got = [Ether(f) for f in r.out_ring.take()]
    assert [e[TCPerror].sport for e in got] == list(range(40100, 40106))
    assert r.drv.counters()["drop_icmp_ratelimit"] == 4
    limit = r.drv.icmp_limit
    now = r.drv.now  # a second after the failure: one token back, and only one
    assert limit.allow(ip4(CLIENT), 3, 1, now) and not limit.allow(ip4(CLIENT), 3, 1, now)
    assert not limit.allow(ip4(CLIENT), 3, 3, now + HZ - 1)  # any type in the ratemask
    assert limit.allow(ip4(CLIENT), 3, 4, now)  # frag-needed is never limited
    assert limit.allow(ip4(CLIENT), 0, 0, now)  # nor is what the ratemask leaves out (echo reply)
    assert limit.allow(ip4("198.51.100.77"), 3, 3, now)  # another destination has its own bucket


def test_no_host_unreachable_about_an_icmp_error_or_a_later_fragment():
    """Routed traffic (--forward) to the absent address: the ICMP error gets
    none back, the datagram refragmented on the way out gets one for its
    first fragment only, and the ping gets one (queries are not errors)."""
    r = _absent_rig()
    r.drv.forward = True
    err = bytes(IP(src=CLIENT, dst=ABSENT) / ICMP(type=3, code=3) / bytes(IP(src=ABSENT, dst=CLIENT) / UDP()))
    big = bytes(IP(src=CLIENT, dst=ABSENT, flags=0) / UDP(sport=5000, dport=9) / (b"x" * 2000))
    ping = bytes(IP(src=CLIENT, dst=ABSENT) / ICMP(type=8))
    for pkt in (err, big, ping):
        r.rx_outer(frame(pkt, MAC_D_OUT, MAC_CLIENT))
    _fail_after(r, r.now)
    got = [Ether(f) for f in r.out_ring.take()]
    assert [e[IPerror].proto for e in got] == [17, 1]
    for e in got:
        assert e[ICMP].type == 3 and e[ICMP].code == 1 and e[IP].src == OUTER and e[IP].dst == CLIENT
    assert got[0][IPerror].frag == 0 and got[0][IPerror].flags == "MF"
    c = r.drv.counters()
    assert c["host_unreach_not_sent"] == 2 and c["host_unreach"] == 2 and c["br-in_neigh_unresolved"] == 4


def test_one_gate_refuses_errors_as_icmp_send_does():
    """Every error the driver makes (its own port unreachables, time
    exceeded, host unreachables) passes _may_answer: not about a later
    fragment, an ICMP error or an unknown type, not to a zero or multicast
    source.  Queries and ordinary datagrams are answered."""
    r = Rig()
    r.learn()

    def asks(pkt) -> bool:
        b = bytearray(L3) + bytes(pkt)
        return r.drv._may_answer(b, L3 + len(pkt))

    later = IP(bytes(udp(CLIENT, 5556, OUTER, 53)))
    later.frag, later.chksum = 8, None
    assert asks(udp(CLIENT, 5556, OUTER, 53)) and asks(IP(src=CLIENT, dst=OUTER) / ICMP(type=8))
    assert not asks(later)
    assert not asks(udp("0.0.0.0", 5556, OUTER, 53)) and not asks(udp("224.0.0.9", 5556, OUTER, 53))
    assert not asks(IP(src=CLIENT, dst=OUTER) / ICMP(type=3, code=1) / bytes(IP(src=OUTER, dst=CLIENT) / UDP()))
    assert not asks(IP(src=CLIENT, dst=OUTER) / ICMP(type=40))
    # The port unreachable of a closed port still goes out through it.
    r.rx_outer(frame(udp(CLIENT, 5555, OUTER, 53), MAC_D_OUT, MAC_CLIENT))
    (f,) = r.out_ring.take()
    assert Ether(f)[ICMP].type == 3 and Ether(f)[ICMP].code == 3


def test_under_backlog_syns_wait_per_source_while_existing_flows_go_through():
    r = Rig()
    r.learn()
    r.rx_outer(frame(tcp(CLIENT, 40010, VIP, 80), MAC_D_OUT, MAC_CLIENT))
    assert len(r.in_ring.take()) == 1  # a connection exists before the backlog
    g = r.drv.guard
    g.engage(r.now)
    flooder = "198.51.100.77"
    for port in range(1000, 1010):
        r.rx_outer(frame(tcp(flooder, port, VIP, 80), MAC_D_OUT, MAC_CLIENT))
    r.rx_outer(frame(tcp(CLIENT, 40011, VIP, 80), MAC_D_OUT, MAC_CLIENT))
    # The open connection's ACK is not held behind the queued SYNs.
    r.rx_outer(frame(tcp(CLIENT, 40010, VIP, 80, flags="A", seq=1001, ack=1), MAC_D_OUT, MAC_CLIENT))
    (ack,) = r.in_ring.take()
    assert Ether(ack)[TCP].sport == 40010 and Ether(ack)[TCP].flags == "A"
    assert g.stats.deferred == g.PER_SOURCE + 1 and g.stats.dropped_full == 10 - g.PER_SOURCE
    assert r.drv.poll_timeout() == 0.0  # SYNs wait: the loop must come back at once
    r.drv.on_idle(r.now)  # serves them round robin: the client's SYN second
    out = [Ether(f) for f in r.in_ring.take()]
    assert [(e[IP].src, e[TCP].sport) for e in out[:2]] == [(flooder, 1000), (CLIENT, 40011)]
    assert len(out) == g.PER_SOURCE + 1 and not g.turns
    c = r.drv.counters()
    assert (c["syn_deferred"], c["syn_served"], c["drop_syn_full"]) == (g.PER_SOURCE + 1, g.PER_SOURCE + 1, 6)


def test_without_backlog_a_syn_is_handled_at_once():
    r = Rig()
    r.learn()
    r.rx_outer(frame(tcp(CLIENT, 40020, VIP, 80), MAC_D_OUT, MAC_CLIENT))
    assert len(r.in_ring.take()) == 1 and r.drv.guard.stats.deferred == 0
    r.drv.guard.engage(r.now)
    r.now += r.drv.guard.hold
    r.drv.now = r.now
    r.rx_outer(frame(tcp(CLIENT, 40021, VIP, 80), MAC_D_OUT, MAC_CLIENT))  # the hold is over
    assert len(r.in_ring.take()) == 1 and r.drv.guard.stats.deferred == 0


def test_early_drop_reads_the_slot_of_a_syn_whose_source_queue_is_full():
    r = Rig()
    early = r.drv._make_early()
    g = r.drv.guard
    syn = bytes(frame(tcp("198.51.100.77", 1000, VIP, 80), MAC_D_OUT, MAC_CLIENT))[10:]  # the slot: no vnet header
    ack = bytes(frame(tcp("198.51.100.77", 1000, VIP, 80, flags="A"), MAC_D_OUT, MAC_CLIENT))[10:]
    mm = bytearray(8) + syn + bytearray(8) + ack
    assert not early(mm, 8, len(syn))  # nothing waits
    for _ in range(g.PER_SOURCE):
        g.defer(ip4("198.51.100.77"), lambda b: None, bytearray())
    assert early(mm, 8, len(syn))
    assert not early(mm, 16 + len(syn), len(ack))  # not a connection attempt
    assert not early(mm, 8, 40)  # too short to tell
    assert g.stats.dropped_full == 1


def test_a_real_server_on_the_director_itself_is_a_counted_drop_said_once(caplog):
    """The kernel hands a local real server's packets to its own stack
    (local node); the driver cannot, and neither resolves its own address
    on the wire: NAT and DR to the director's inner address are dropped,
    counted, and logged once."""
    r = Rig(services=False)
    for port, fwd in ((80, 0), (81, 3)):
        su = r.lab.service(VIP, port, sched="rr")
        r.lab.dest(su, GW, port, fwd=fwd)
    r.drv.sync_services(force=True)
    r.learn()
    for sport in (40000, 40001):
        for port in (80, 81):
            r.rx_outer(frame(tcp(CLIENT, sport, VIP, port), MAC_D_OUT, MAC_CLIENT))
    assert r.in_ring.take() == [] and r.out_ring.take() == []
    assert r.drv.counters()["drop_local_real_server"] == 4
    assert ip4(GW) not in r.inner.neigh.entries
    said = [m for m in caplog.messages if "own address" in m]
    assert said == [f"real server {GW} is this director's own address: PyIPVS does not deliver to a real server "
                    "on the director itself (the kernel's local node); its packets are dropped "
                    "(drop_local_real_server)"]


def test_a_local_node_real_server_is_answered_as_by_a_host_with_nothing_listening():
    """IP_VS_CONN_F_LOCALNODE (raw netlink only): ip_vs_null_xmit's
    NF_ACCEPT hands the packet to the host, which in spare mode is the
    driver: a SYN to the VIP gets a reset, nothing goes to the inner side."""
    r = Rig(services=False)
    su = r.lab.service(VIP, 80, sched="rr")
    r.lab.dest(su, GW, 80, fwd=1)
    r.drv.sync_services(force=True)
    r.learn()
    r.rx_outer(frame(tcp(CLIENT, 40000, VIP, 80), MAC_D_OUT, MAC_CLIENT))
    assert r.in_ring.take() == []
    (f,) = r.out_ring.take()
    t = Ether(f)[TCP]
    assert Ether(f)[IP].src == VIP and (t.sport, t.dport, t.flags) == (80, 40000, "RA")
    assert len(r.lab.conns()) == 1 and "drop_local_real_server" not in r.drv.counters()


class PolledRing(FakeRing):
    """A fake ring the loop polls: :meth:`rx` reports ``pending`` frames,
    :meth:`holds` says whether one has come by ``arrives`` (a monotonic time)."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd
        self.nslots = 512
        self.pending = 0
        self.arrives: float | None = None

    def fileno(self) -> int:
        return self.fd

    def rx(self, handler, batch: int = 256) -> int:
        n, self.pending = self.pending, 0
        return n

    def holds(self, k: int) -> bool:
        return self.arrives is not None and time.monotonic() >= self.arrives


def _polled_driver(busy_poll_us: int, turn_with_frames: bool = True) -> tuple[AFPacketDriver, PolledRing, PolledRing]:
    """A driver on two polled rings, after a turn that received a frame on the outer one (or none)."""
    out_ring, in_ring = PolledRing(100), PolledRing(101)
    ports = [Port("d_out", "outer", ip4(OUTER), 0xFFFFFF00, HZ, MAC_D_OUT, 1500, out_ring),
             Port("br-in", "inner", ip4(GW), 0xFFFFFF00, HZ, MAC_D_IN, 1500, in_ring)]
    drv = AFPacketDriver(Lab().d, ports, "spare", busy_poll_us=busy_poll_us)
    if turn_with_frames:
        out_ring.pending = 1
        drv.on_readable(100, 1000)
    return drv, out_ring, in_ring


def test_busy_polling_after_a_turn_with_frames_catches_the_next_one():
    fresh, _out, _in = _polled_driver(busy_poll_us=2_000_000, turn_with_frames=False)
    assert not fresh.spin()  # no frames yet: the loop may sleep at once
    drv, _out, in_ring = _polled_driver(busy_poll_us=2_000_000)
    in_ring.arrives = time.monotonic() + 0.01  # on the other port, 10 ms later
    assert drv.spin()  # back with the frame, not at the end of the 2 s (that would be a miss)
    c = drv.counters()
    assert c["busy_poll_hits"] == 1 and "busy_poll_misses" not in c


def test_busy_polling_gives_up_after_its_time_and_an_idle_loop_never_spins():
    drv, out_ring, _in = _polled_driver(busy_poll_us=20_000)
    t0 = time.monotonic()
    assert not drv.spin()
    assert time.monotonic() - t0 >= 0.019  # watched the rings for its 20 ms
    assert not drv.spin()  # no frame since: no second spin (a spin counts a miss)
    assert drv.counters()["busy_poll_misses"] == 1
    out_ring.pending = 0
    drv.on_readable(100, 1001)  # an empty turn (the ring was readable, then drained elsewhere)
    assert not drv.spin()
    c = drv.counters()
    assert c["busy_poll_misses"] == 1 and "busy_poll_hits" not in c


def test_busy_polling_off_never_spins():
    drv, _out, in_ring = _polled_driver(busy_poll_us=0)
    in_ring.arrives = time.monotonic()
    assert not drv.spin()  # the frame waits for the loop's next poll instead
    assert "busy_poll_misses" not in drv.counters()


ROOT = Path(__file__).resolve().parents[2]


# Services and mark rules come and go while the driver turns, as when
# ldirectord or keepalived flushes a director it has driven for a while.
_SERVICES_PROBE = """
import ipaddress, sys
sys.path.insert(0, sys.argv[1])
from ipvs import ctl
from ipvs.daemon import tune_jit
from ipvs.driver import nft
from ipvs.fwmark import MarkRule
from tests.driver.helpers import Rig6
tune_jit()  # ipvsd's JIT settings (nothing on CPython)
nft.sync_services = lambda svcs: None  # no nftables here: the shared-mode call is still made
r = Rig6(services6=False, mode="shared")
r.drv._nft_ready = True
want = set()
for i in range(60000):
    r.drv.on_idle(r.now)
    if i % 1000 == 1 and r.drv.vips != want:
        sys.exit(f"turn {i}: VIPs {sorted(r.drv.vips)}, want {sorted(want)}")
    step, k = i % 1000, i // 1000
    if step == 200:
        r.lab.service(f"203.0.113.{k % 200 + 1}", 80, sched="rr")
        want.add(int(ipaddress.ip_address(f"203.0.113.{k % 200 + 1}")))
    elif step == 400 and k % 2:
        net = ipaddress.ip_network(f"203.0.113.{16 + 4 * (k % 8)}/30")
        r.lab.service("0.0.0.0", 0, sched="rr", fwmark=3)
        r.lab.ipvs.marks.add(MarkRule(3, daddr=str(net)))
        want.update(int(a) for a in net)
    elif step == 600 and k % 3:
        r.lab.service(f"2001:db8:0:5::{k % 100 + 1:x}", 80, sched="rr")
    elif step == 999:
        ctl.flush(r.lab.ipvs)
        r.lab.ipvs.marks.flush()
        want.clear()
    r.out_ring.sent.clear()
    r.in_ring.sent.clear()
print("ok")
"""


def test_the_driver_follows_services_that_come_and_go_on_a_hot_loop():
    """Sixty flushes of a director whose idle turns the JIT compiled: the
    VIPs follow the services each time, and the process lives.  On PyPy
    7.3.11 the old change check (one frozenset of the tables, copied by
    ``|``) segfaulted here within 2000 turns, as ipvsd did when ldirectord
    removed its service (:meth:`AFPacketDriver.sync_services`).  A fresh
    interpreter, so the JIT's traces are this test's own."""
    p = subprocess.run([sys.executable, "-c", _SERVICES_PROBE, str(ROOT)], capture_output=True, text=True,
                       timeout=300)
    assert (p.returncode, p.stdout.strip()) == (0, "ok"), p.stderr[-2000:]
