"""ARP and neighbour discovery frames, and the neighbour cache of one interface.

Mirrors, in a much smaller form, ``net/ipv4/arp.c``, ``net/ipv6/ndisc.c``
and ``net/core/neighbour.c``: the driver answers ARP requests for the
addresses it owns (the VIPs on the outer side, the real servers' gateway
on the inner side), learns the sender of every request aimed at it,
resolves next hops with broadcast requests and refreshes resolved entries
with unicast probes before they go stale.

Differences from the kernel, and why:

* States are fewer: an entry is incomplete (being resolved, with a small
  queue of frames waiting for it) or resolved.  A resolved entry older
  than the reachable time (30 s) is probed by unicast up to three times,
  once a second, and keeps being used meanwhile (the kernel's STALE,
  DELAY and PROBE states in one); without an answer it is removed and
  the next frame resolves it again.
* The queue holds at most :data:`QUEUE_FRAMES` frames (the kernel bounds
  it in bytes, 212992 by default); the oldest is dropped first.
* An unresolvable next hop (no answer to three broadcast requests, one
  a second) fails: its queued frames are handed back to the caller, which
  answers each with an ICMP host unreachable, as ``neigh_invalidate`` ->
  ``arp_error_report`` -> ``ipv4_link_failure`` does, and the entry is
  forgotten.  The kernel keeps it in FAILED, but a frame for a FAILED
  entry starts a new resolution there too, which is what a new entry
  does here: the same requests, then the same errors.

IPv6 uses the same table (addresses as 128-bit ints, one table per
family) with neighbour solicitations to the solicited-node multicast
address for resolution and unicast ones for probes, and advertisements
(solicited, override) as answers (RFC 4861 7.2): :func:`ns_frame`,
:func:`na_frame`, :func:`parse_ndisc`.  What ndisc.c does besides is left
out: no router or redirect messages, no duplicate address detection of
the director's own addresses, no NA learning of entries not asked for.

Times are jiffies (``now``), as everywhere above the driver's clock.
"""

from __future__ import annotations

import struct

import attrs

from ipvs.driver.ring import kept
from ipvs.packet import (
    ETH_P_ARP,
    ETH_P_IP,
    ETH_P_IPV6,
    NDISC_NEIGHBOUR_ADVERTISEMENT,
    NDISC_NEIGHBOUR_SOLICITATION,
    IPHeader,
    icmp6_checksum,
    parse,
    put_u16,
)
from ipvs.uapi import IPPROTO_ICMPV6

ARPOP_REQUEST = 1
ARPOP_REPLY = 2
BROADCAST = b"\xff" * 6
ZERO_MAC = b"\0" * 6
VNET_ZERO = b"\0" * 10
#: vnet header + Ethernet + ARP for Ethernet/IPv4.
ARP_FRAME_LEN = 10 + 14 + 28

_ARP = struct.Struct("!HHBBH6sI6sI")
_ETH = struct.Struct("!6s6sH")

REACHABLE_S = 30
RETRANS_S = 1
MAX_PROBES = 3
QUEUE_FRAMES = 16


def arp_frame(op: int, src_mac: bytes, spa: int, tha: bytes, tpa: int, eth_dst: bytes) -> bytearray:
    """An ARP frame for Ethernet/IPv4, vnet header first (all zero)."""
    buf = bytearray(ARP_FRAME_LEN)
    _ETH.pack_into(buf, 10, eth_dst, src_mac, ETH_P_ARP)
    _ARP.pack_into(buf, 24, 1, ETH_P_IP, 6, 4, op, src_mac, spa, tha, tpa)
    return buf


def parse_arp(buf: bytearray, l3: int):
    """(op, sha, spa, tha, tpa) of an Ethernet/IPv4 ARP packet, or None."""
    if len(buf) < l3 + 28:
        return None
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(buf, l3)
    if htype != 1 or ptype != ETH_P_IP or hlen != 6 or plen != 4:
        return None
    return op, sha, spa, tha, tpa


# ---------------------------------------------------------------- ndisc

#: Neighbour discovery options (RFC 4861 4.6.1): source / target link-layer address.
ND_OPT_SOURCE_LL_ADDR = 1
ND_OPT_TARGET_LL_ADDR = 2
#: Advertisement flags (RFC 4861 4.4): router, solicited, override.
NA_ROUTER, NA_SOLICITED, NA_OVERRIDE = 0x80000000, 0x40000000, 0x20000000
#: Every neighbour discovery packet has hop limit 255 (RFC 4861 7.1.1).
ND_HOPLIMIT = 255
#: vnet header + Ethernet + IPv6 + NS/NA (24) + one link-layer option (8).
ND_FRAME_LEN = 10 + 14 + 40 + 32
ALL_NODES = bytes.fromhex("ff020000000000000000000000000001")
_IP6 = struct.Struct("!IHBB16s16s")
_ND = struct.Struct("!BBHI16sBB6s")


def solicited_node(addr: bytes) -> bytes:
    """ff02::1:ffXX:XXXX, the multicast group of ``addr`` (RFC 4291 2.7.1)."""
    return bytes.fromhex("ff0200000000000000000001ff") + bytes(addr[13:16])


def multicast_mac(addr6: bytes) -> bytes:
    """33:33 and the group's low 32 bits (RFC 2464 7)."""
    return b"\x33\x33" + bytes(addr6[12:16])


def _nd_frame(src_mac: bytes, eth_dst: bytes, src: bytes, dst: bytes, icmp_type: int, flags: int,
              target: bytes, opt: int) -> bytearray:
    buf = bytearray(ND_FRAME_LEN)
    _ETH.pack_into(buf, 10, eth_dst, src_mac, ETH_P_IPV6)
    _IP6.pack_into(buf, 24, 6 << 28, 32, IPPROTO_ICMPV6, ND_HOPLIMIT, src, dst)
    _ND.pack_into(buf, 64, icmp_type, 0, 0, flags, target, opt, 1, src_mac)
    h = parse(buf, 24)
    assert type(h) is IPHeader  # (built right here: always parses)
    put_u16(buf, 66, icmp6_checksum(buf, h))
    return buf


def ns_frame(src_mac: bytes, src: bytes, target: bytes, mac: bytes | None = None) -> bytearray:
    """A neighbour solicitation for ``target`` from ``src`` (vnet header
    first): to its solicited-node group to resolve it, or to ``target``
    at ``mac`` to probe it (``ndisc_solicit``)."""
    if mac is None:
        group = solicited_node(target)
        return _nd_frame(src_mac, multicast_mac(group), src, group, NDISC_NEIGHBOUR_SOLICITATION, 0, target,
                         ND_OPT_SOURCE_LL_ADDR)
    return _nd_frame(src_mac, mac, src, target, NDISC_NEIGHBOUR_SOLICITATION, 0, target, ND_OPT_SOURCE_LL_ADDR)


def na_frame(src_mac: bytes, target: bytes, dst: bytes, dst_mac: bytes | None, solicited: bool = True) -> bytearray:
    """A neighbour advertisement of ``target`` at ``src_mac`` (from
    ``target`` itself, ``ndisc_send_na``): solicited and override to the
    solicitor, or unsolicited to all nodes (``dst_mac`` None) when an
    address moves here (the IPv6 gratuitous ARP)."""
    flags = NA_OVERRIDE | (NA_SOLICITED if solicited else 0)
    eth_dst = dst_mac if dst_mac is not None else multicast_mac(dst)
    return _nd_frame(src_mac, eth_dst, target, dst, NDISC_NEIGHBOUR_ADVERTISEMENT, flags, target,
                     ND_OPT_TARGET_LL_ADDR)


def parse_ndisc(buf: bytearray, h: IPHeader):
    """(type, flags, target, link-layer address or None) of a neighbour
    solicitation or advertisement, or None when it is not a valid one
    (RFC 4861 7.1.1: hop limit 255, code 0, 24 bytes at least, a right
    checksum, no extension headers before it, options of non-zero length
    within the message)."""
    l3, l4, end = h.l3, h.l4, h.end
    if h.protocol != IPPROTO_ICMPV6 or l4 != l3 + 40 or end - l4 < 24 or buf[l3 + 7] != ND_HOPLIMIT:
        return None
    icmp_type = buf[l4]
    if icmp_type not in (NDISC_NEIGHBOUR_SOLICITATION, NDISC_NEIGHBOUR_ADVERTISEMENT) or buf[l4 + 1]:
        return None
    if icmp6_checksum(buf, h) != (buf[l4 + 2] << 8) | buf[l4 + 3]:
        return None
    flags = struct.unpack_from("!I", buf, l4 + 4)[0]
    target = bytes(buf[l4 + 8 : l4 + 24])
    want = ND_OPT_SOURCE_LL_ADDR if icmp_type == NDISC_NEIGHBOUR_SOLICITATION else ND_OPT_TARGET_LL_ADDR
    lladdr = None
    pos = l4 + 24
    while pos + 2 <= end:
        olen = buf[pos + 1] << 3
        if not olen or pos + olen > end:
            return None
        if buf[pos] == want and olen >= 8:
            lladdr = bytes(buf[pos + 2 : pos + 8])
        pos += olen
    return icmp_type, flags, target, lladdr


@attrs.define(slots=True, eq=False)
class Neigh:
    """One neighbour: its MAC once known, and when it was last confirmed."""

    ip: int
    mac: bytes | None = None
    confirmed: int = 0
    probes: int = 0
    next_probe: int = 0
    queue: list = attrs.field(factory=list)


@attrs.define(slots=True)
class NeighStats:
    """Neighbour cache counters: resolutions done and failed, frames that waited or overflowed, ARP probes sent."""
    resolved: int = 0
    failed: int = 0
    #: Frames dropped because the queue of an incomplete entry was full.
    queue_drops: int = 0
    #: Frames still queued when their entry failed (handed back by tick).
    unresolved: int = 0
    probes_sent: int = 0


class NeighTable:
    """Neighbour cache of one interface and family (addresses as
    host-order ints: 32-bit for ARP, 128-bit for neighbour discovery).

    ``mac`` is the fast-path dict of resolved entries; everything else goes
    through the methods, which return what the caller must transmit.
    """

    def __init__(self, hz: int) -> None:
        self.hz = hz
        self.mac: dict[int, bytes] = {}
        self.entries: dict[int, Neigh] = {}
        self.stats = NeighStats()
        #: Set when a known MAC changes or an entry goes away, so the
        #: driver can drop what it cached from this table.
        self.changed = False

    def confirm(self, ip: int, mac: bytes, now: int, create: bool) -> list:
        """Record ``ip`` at ``mac`` (from an ARP packet).

        Only updates an existing entry unless ``create`` (the kernel creates
        one for the sender of a request aimed at itself).  Returns the
        frames that were waiting for this neighbour: (buf, n) pairs whose
        Ethernet destination the caller must now fill in.
        """
        n = self.entries.get(ip)
        if n is None:
            if not create:
                return []
            n = self.entries[ip] = Neigh(ip)
        if n.mac is None:
            self.stats.resolved += 1
        elif n.mac != mac:
            self.changed = True
        n.mac = bytes(mac)
        n.confirmed = now
        n.probes = 0
        self.mac[ip] = n.mac
        waiting, n.queue = n.queue, []
        return waiting

    def enqueue(self, ip: int, buf: bytearray, n: int, now: int) -> bool:
        """Queue a frame for an unresolved ``ip``; True if a request must go out now."""
        e = self.entries.get(ip)
        new = e is None
        if e is None:
            e = self.entries[ip] = Neigh(ip, probes=1, next_probe=now + RETRANS_S * self.hz)
            self.stats.probes_sent += 1
        if len(e.queue) >= QUEUE_FRAMES:
            e.queue.pop(0)
            self.stats.queue_drops += 1
        e.queue.append((kept(buf), n))  # (a ring's lent buffer is reused: a copy of it)
        return new

    def tick(self, now: int) -> tuple[list[tuple[int, bytes | None]], list]:
        """Retransmit, probe and expire.

        Returns the (ip, mac or None) requests to send, a None MAC meaning
        broadcast (resolution) and a MAC a unicast probe, and the (buf, n)
        frames that were waiting for entries that failed now, oldest first
        (the caller answers them with host unreachables).
        """
        out: list[tuple[int, bytes | None]] = []
        failed: list = []
        stale = REACHABLE_S * self.hz
        for ip, e in list(self.entries.items()):
            if e.mac is None:
                if now < e.next_probe:
                    continue
                if e.probes >= MAX_PROBES:
                    self.stats.failed += 1
                    self.stats.unresolved += len(e.queue)
                    failed += e.queue
                    del self.entries[ip]
                    continue
                e.probes += 1
                e.next_probe = now + RETRANS_S * self.hz
                out.append((ip, None))
            elif now - e.confirmed >= stale and now >= e.next_probe:
                if e.probes >= MAX_PROBES:
                    del self.entries[ip]
                    self.mac.pop(ip, None)
                    self.changed = True
                    continue
                e.probes += 1
                e.next_probe = now + RETRANS_S * self.hz
                out.append((ip, e.mac))
        self.stats.probes_sent += len(out)
        return out, failed

    def next_event(self, now: int) -> int | None:
        """Jiffies of the earliest retransmission or probe due, or None."""
        best = None
        stale = REACHABLE_S * self.hz
        for e in self.entries.values():
            t = e.next_probe if e.mac is None else max(e.confirmed + stale, e.next_probe)
            if best is None or t < best:
                best = t
        return best
