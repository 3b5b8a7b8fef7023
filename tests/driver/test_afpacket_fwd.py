"""The driver with direct routing and tunnelling services (``-g``, ``-i``):
frames leave for the real server's MAC, the DR packet keeping its VIP, the
tunnelled one with its outer header, finished checksums and no offload
request; GSO super-frames are cut before they are tunnelled; ARP resolution of the real
server first; replies from the real servers are plain routed traffic."""

from __future__ import annotations

import struct

from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import ARP, Ether

from ipvs import ctl, uapi
from tests.conftest import A, checksums_valid, tcp

from .helpers import CLIENT, GW, MAC_CLIENT, MAC_D_IN, MAC_D_OUT, MAC_RS1, RS1, VIP, Rig, arp, frame


def rig(fwd, tun_type=0, tun_port=0, tun_flags=0, forward=False):
    r = Rig(services=False)
    su = r.lab.service(VIP, 80, sched="rr")
    ctl.add_dest(r.lab.ipvs, su, ctl.DestUser(addr=A(RS1), port=80, conn_flags=fwd, tun_type=tun_type,
                                              tun_port=tun_port, tun_flags=tun_flags))
    r.drv.forward = forward
    r.drv.sync_services(force=True)
    r.out_ring.take()
    return r


def test_dr_frame_goes_to_the_real_servers_mac_after_arp():
    r = rig(uapi.IP_VS_CONN_F_DROUTE)
    r.rx_outer(arp(1, MAC_CLIENT, CLIENT, b"\0" * 6, "198.51.100.1", b"\xff" * 6))
    r.out_ring.take()
    r.rx_outer(frame(tcp(CLIENT, 40000, VIP, 80), MAC_D_OUT, MAC_CLIENT))
    (req,) = r.in_ring.take()
    assert Ether(req)[ARP].pdst == RS1  # the real server is resolved, not the VIP
    r.rx_inner(arp(2, MAC_RS1, RS1, MAC_D_IN, GW, MAC_D_IN))
    (f,) = r.in_ring.take()
    e = Ether(f)
    assert (e.dst, e.src) == ("02:00:00:00:a0:01", "02:00:00:00:00:0b")
    assert (e[IP].src, e[IP].dst, e[TCP].dport, e[IP].ttl) == (CLIENT, VIP, 80, 63)
    assert checksums_valid(f, 14)
    assert r.drv.counts["direct_routed"] == 1
    # The next one takes the same way (and nothing is cached under the VIP).
    r.rx_outer(frame(tcp(CLIENT, 40000, VIP, 80, flags="A"), MAC_D_OUT, MAC_CLIENT))
    (f,) = r.in_ring.take()
    assert Ether(f).dst == "02:00:00:00:a0:01" and Ether(f)[IP].dst == VIP
    assert r.lab.d.xmit_to is None


def _partial_frame(pkt):
    tot = len(pkt)
    s = sum(struct.unpack("!4H", bytes(pkt[12:20]))) + 6 + (tot - 20)
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    pkt[36:38] = struct.pack("!H", s)
    return struct.pack("=BBHHHH", 1, 0, 0, 0, 34, 16)


def test_dr_keeps_an_offloaded_checksum_offloaded():
    r = rig(uapi.IP_VS_CONN_F_DROUTE)
    r.learn()
    pkt = tcp(CLIENT, 40002, VIP, 80, flags="S")
    vnet = _partial_frame(pkt)
    r.rx_outer(frame(pkt, MAC_D_OUT, MAC_CLIENT, vnet=vnet))
    ((f, v),) = r.in_ring.sent
    assert v == vnet and f[14 + 36 : 14 + 38] == bytes(pkt[36:38])


def test_tunnelled_frame_leaves_finished_for_the_real_server():
    for tun_type, proto in ((0, 4), (1, 17), (2, 47)):
        r = rig(uapi.IP_VS_CONN_F_TUNNEL, tun_type=tun_type, tun_port=6080,
                tun_flags=uapi.IP_VS_TUNNEL_ENCAP_FLAG_CSUM)
        r.learn()
        pkt = tcp(CLIENT, 40002, VIP, 80, flags="S")
        vnet = _partial_frame(pkt)
        r.rx_outer(frame(pkt, MAC_D_OUT, MAC_CLIENT, vnet=vnet))
        ((f, v),) = r.in_ring.sent
        e = Ether(f)
        assert e.dst == "02:00:00:00:a0:01"
        assert (e[IP].src, e[IP].dst, e[IP].proto) == (GW, RS1, proto)
        assert v[0] & 1 == 0  # no checksum left to offload
        inner = IP(bytes(f[len(f) - len(pkt) :]))
        assert inner.dst == VIP and checksums_valid(bytes(inner), 0)
        assert checksums_valid(f, 14)
        assert r.drv.counts["tunnelled"] == 1


def test_gso_super_frame_is_cut_and_each_segment_tunnelled():
    for tun_type in (0, 1, 2):
        r = rig(uapi.IP_VS_CONN_F_TUNNEL, tun_type=tun_type, tun_port=6080,
                tun_flags=uapi.IP_VS_TUNNEL_ENCAP_FLAG_CSUM)
        r.learn()
        r.rx_outer(frame(tcp(CLIENT, 40003, VIP, 80), MAC_D_OUT, MAC_CLIENT))
        r.in_ring.take()
        payload = bytes(range(256)) * 12  # 3072 bytes: segments of 1400, 1400, 272
        pkt = tcp(CLIENT, 40003, VIP, 80, flags="PA", payload=payload, seq=5000)
        _partial_frame(pkt)
        vnet = struct.pack("=BBHHHH", 1, 1, 66, 1400, 34, 16)
        r.rx_outer(frame(pkt, MAC_D_OUT, MAC_CLIENT, vnet=vnet))
        sent = r.in_ring.sent[:]
        r.in_ring.sent.clear()
        assert len(sent) == 3 and r.drv.counts["tun_gso_segmented"] == 1
        got = b""
        for i, (f, v) in enumerate(sent):
            assert v == bytes(10)  # a plain frame: nothing left to offload
            e = Ether(f)
            assert e.dst == "02:00:00:00:a0:01" and (e[IP].src, e[IP].dst) == (GW, RS1)
            assert checksums_valid(f, 14)
            overhead = {0: 20, 1: 32, 2: 28}[tun_type]
            inner = IP(f[14 + overhead :])
            assert checksums_valid(bytes(inner), 0) and inner.ttl == 63 and inner.dst == VIP
            assert inner[TCP].seq == 5000 + 1400 * i
            assert str(inner[TCP].flags) == ("PA" if i == 2 else "A")
            got += bytes(inner[TCP].payload)
        assert got == payload


def test_direct_replies_are_routed_with_forward():
    r = rig(uapi.IP_VS_CONN_F_DROUTE, forward=True)
    r.learn()
    r.rx_outer(frame(tcp(CLIENT, 40004, VIP, 80), MAC_D_OUT, MAC_CLIENT))
    r.in_ring.take()
    r.rx_inner(frame(tcp(VIP, 80, CLIENT, 40004, flags="SA"), MAC_D_IN, MAC_RS1))
    (f,) = r.out_ring.take()
    e = Ether(f)
    assert (e.dst, e[IP].src, e[IP].dst, e[IP].ttl) == ("02:00:00:00:c0:01", VIP, CLIENT, 63)


def test_gso_segments_too_big_for_the_tunnel_are_fragmented_not_answered():
    """With the client's MSS the segments plus the outer header exceed the
    MTU: the kernel's ignore_df fragments them (DF cleared), as
    ip_finish_output_gso does; no "fragmentation needed" to anyone."""
    r = rig(uapi.IP_VS_CONN_F_TUNNEL)
    r.learn()
    r.rx_outer(frame(tcp(CLIENT, 40005, VIP, 80), MAC_D_OUT, MAC_CLIENT))
    r.in_ring.take()
    pkt = bytearray(bytes(IP(src=CLIENT, dst=VIP, flags="DF") / TCP(sport=40005, dport=80, flags="A")
                          / (b"z" * 2920)))
    _partial_frame(pkt)
    r.rx_outer(frame(pkt, MAC_D_OUT, MAC_CLIENT, vnet=struct.pack("=BBHHHH", 1, 1, 54, 1460, 34, 16)))
    frames = r.in_ring.take()
    assert len(frames) == 4 and not r.out_ring.take()
    for f in frames:
        o = Ether(f)[IP]
        assert o.dst == RS1 and not o.flags & 2 and len(f) - 14 <= 1500 and checksums_valid(f, 14)


def test_host_unreachable_about_a_direct_reply_goes_to_the_real_server():
    """The real server's direct reply (VIP -> client) finds no client MAC:
    the driver's host unreachable (to the VIP) is, like ip_vs_in_icmp at
    LOCAL_OUT would have it, an error of the DR connection and is passed
    on to the real server, which holds the VIP."""
    r = rig(uapi.IP_VS_CONN_F_DROUTE, forward=True)
    r.rx_inner(arp(1, MAC_RS1, RS1, b"\0" * 6, GW, b"\xff" * 6))
    r.in_ring.take()
    r.rx_outer(frame(tcp(CLIENT, 40006, VIP, 80), MAC_D_OUT, MAC_CLIENT))
    assert len(r.in_ring.take()) == 1
    r.rx_inner(frame(tcp(VIP, 80, CLIENT, 40006, flags="SA"), MAC_D_IN, MAC_RS1))
    assert len(r.out_ring.take()) == 1  # the ARP request for the client
    for t in range(1, 5):
        r.drv.on_idle(r.now + t * 250 + 1)
    r.out_ring.take()
    (err,) = r.in_ring.take()
    e = Ether(err)
    assert e.dst == "02:00:00:00:a0:01" and e[IP].dst == VIP and e[ICMP].type == 3 and e[ICMP].code == 1
    assert r.lab.d.xmit_to is None
