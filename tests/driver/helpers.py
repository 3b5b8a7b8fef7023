"""Frames, a fake ring and a driver on fake ports, for the driver's unit tests."""

from __future__ import annotations

import struct

from ipvs.driver.afpacket import AFPacketDriver, Port
from tests.conftest import A, Lab

HZ = 250
MAC_D_OUT = bytes.fromhex("02000000000a")
MAC_D_IN = bytes.fromhex("02000000000b")
MAC_CLIENT = bytes.fromhex("02000000c001")
MAC_RS1 = bytes.fromhex("02000000a001")
MAC_RS2 = bytes.fromhex("02000000a002")
VIP = "203.0.113.5"
CLIENT = "198.51.100.2"
OUTER = "198.51.100.1"
GW = "172.16.0.1"
RS1, RS2 = "172.16.0.2", "172.16.0.3"


def ip4(text: str) -> int:
    return int.from_bytes(A(text), "big")


def frame(ip: bytes | bytearray, dst: bytes, src: bytes, vnet: bytes = b"\0" * 10, etype: int = 0x0800) -> bytearray:
    """vnet header + Ethernet + ``ip`` (what the ring hands the driver)."""
    return bytearray(vnet + dst + src + struct.pack("!H", etype) + bytes(ip))


def arp(op: int, sha: bytes, spa: str, tha: bytes, tpa: str, dst: bytes) -> bytearray:
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, sha, A(spa), tha, A(tpa))
    return frame(body, dst, sha, etype=0x0806)


class FakeRing:
    """Collects what the driver transmits: (bytes of the frame without vnet, vnet)."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes]] = []
        self.flushes = 0

    def queue(self, buf: bytearray, n: int) -> bool:
        self.sent.append((bytes(buf[10:n]), bytes(buf[:10])))
        return True

    def flush(self) -> None:
        self.flushes += 1

    def take(self) -> list[bytes]:
        out = [f for f, _ in self.sent]
        self.sent.clear()
        return out


class Rig:
    """A director with the lab's seed rules on a driver with two fake ports."""

    def __init__(self, mode: str = "spare", masq: bool = True, services: bool = True) -> None:
        self.lab = Lab()
        if services:
            su = self.lab.service(VIP, 80, sched="rr")
            self.lab.dest(su, RS1, 80)
            su = self.lab.service(VIP, 7, proto=17, sched="rr")
            self.lab.dest(su, RS1, 7)
        self.out_ring, self.in_ring = FakeRing(), FakeRing()
        self.outer = Port("d_out", "outer", ip4(OUTER), 0xFFFFFF00, HZ, MAC_D_OUT, 1500, self.out_ring)
        self.inner = Port("br-in", "inner", ip4(GW), 0xFFFFFF00, HZ, MAC_D_IN, 1500, self.in_ring)
        nets = [(ip4("172.16.0.0"), 0xFFFFFF00)] if masq else None
        self.drv = AFPacketDriver(self.lab.d, [self.outer, self.inner], mode, nets)
        self.garps = self.out_ring.take()  # gratuitous ARP for the VIPs at start
        self.now = 1000
        self.drv.now = self.now

    def learn(self) -> None:
        """Resolve the client and both real servers (as ARP requests to us would)."""
        self.rx_outer(arp(1, MAC_CLIENT, CLIENT, b"\0" * 6, OUTER, b"\xff" * 6))
        self.rx_inner(arp(1, MAC_RS1, RS1, b"\0" * 6, GW, b"\xff" * 6))
        self.rx_inner(arp(1, MAC_RS2, RS2, b"\0" * 6, GW, b"\xff" * 6))
        self.out_ring.take()
        self.in_ring.take()

    def rx_outer(self, f: bytearray) -> None:
        self.drv.rx_frame(self.outer, f)
        self.drv._after_batch()

    def rx_inner(self, f: bytearray) -> None:
        self.drv.rx_frame(self.inner, f)
        self.drv._after_batch()


# ------------------------------------------------------------ IPv6

VIP6 = "2001:db8:0:5::5"
CLIENT6 = "2001:db8:0:1::2"
OUTER6 = "2001:db8:0:1::1"
GW6 = "2001:db8:0:2::1"
RS1_6, RS2_6 = "2001:db8:0:2::2", "2001:db8:0:2::3"


class Rig6(Rig):
    """The rig with IPv6 addresses on both ports and an IPv6 web service."""

    def __init__(self, services6: bool = True, mode: str = "spare") -> None:
        self.lab = Lab()
        self.services6 = services6
        if services6:
            su = self.lab.service(VIP6, 80, sched="rr")
            self.lab.dest(su, RS1_6, 80)
        self.out_ring, self.in_ring = FakeRing(), FakeRing()
        self.outer = Port("d_out", "outer", ip4(OUTER), 0xFFFFFF00, HZ, MAC_D_OUT, 1500, self.out_ring)
        self.inner = Port("br-in", "inner", ip4(GW), 0xFFFFFF00, HZ, MAC_D_IN, 1500, self.in_ring)
        self.outer.set_addr6(f"{OUTER6}/64")
        self.inner.set_addr6(f"{GW6}/64")
        self.drv = AFPacketDriver(self.lab.d, [self.outer, self.inner], mode, None)
        self.garps = self.out_ring.take()  # unsolicited NA for the IPv6 VIP at start
        self.now = 1000
        self.drv.now = self.now
