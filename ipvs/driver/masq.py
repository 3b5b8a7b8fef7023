"""Masquerading of the real servers' own outbound connections.

The seed's director ran ``ipchains -A forward -j MASQ -s 172.16.0.0/24``
so that the real servers, whose default route is the director, could
open connections of their own (DNS, updates, mail) to the outside.  This
is that source NAT: Linux 2.2's ``net/ipv4/ip_masq.c`` in spirit (its port
range 61000-65095 and its default timeouts), with today's connection
tracking rules for checksums.

* Outbound (from a masqueraded subnet, not IPVS traffic): the source
  address becomes the director's outer address and the source port (ICMP
  echo: the identifier) a port from the range; TCP, UDP and ICMP echo.
* Inbound (to the outer address and a masquerading port): the entry's
  real server address and port come back.  ICMP errors about a
  masqueraded flow are rewritten inside too, so a real server learns that
  its UDP peer is unreachable.
* An entry lives ``tcp`` seconds (900) once TCP is answered, 120 while a
  SYN waits and after FIN or RST, ``udp`` 300, ICMP 125; expired entries
  free their port.  The table is bounded (:data:`MAX_ENTRIES`).

Kept apart from ``ipvs/`` proper because the kernel keeps it apart too:
masquerading is netfilter NAT, not IPVS.
"""

from __future__ import annotations

import struct

import attrs

from ipvs.packet import (
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    csum_replace,
    icmp_checksum,
    ip_send_check,
    l4_csum_nat,
    put_addr4,
)
from ipvs.uapi import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP

PORT_MASQ_BEGIN = 61000
PORT_MASQ_END = 65095
MAX_ENTRIES = 65536

ICMP_ECHOREPLY, ICMP_ECHO = 0, 8
ICMP_ERRORS = (3, 4, 11, 12)

_I = struct.Struct("!I")
_H = struct.Struct("!H")


@attrs.define(slots=True)
class MasqTimeouts:
    """Seconds, as ``ipchains -M -S tcp tcpfin udp`` sets them."""

    tcp: int = 900
    tcpfin: int = 120
    udp: int = 300
    icmp: int = 125
    syn: int = 120


@attrs.define(slots=True, eq=False)
class MasqEntry:
    """One masqueraded flow: the real server's address and port, the remote peer, the port it was given on the outer
    address, and when it expires.
    """
    proto: int
    saddr: int
    sport: int
    raddr: int
    rport: int
    mport: int
    expires: int = 0
    replied: bool = False
    closing: bool = False


@attrs.define(slots=True)
class MasqStats:
    """Masquerading counters: entries made and expired, packets each way, and the refusals (no free port, table full).
    """
    created: int = 0
    expired: int = 0
    out_packets: int = 0
    in_packets: int = 0
    no_port: int = 0
    table_full: int = 0


def _csum_add(check: int, old: int, new: int) -> int:
    """RFC 1624 update of a complemented checksum for one 16-bit word."""
    return csum_replace(check, _H.pack(old), _H.pack(new))


class Masq:
    """The masquerading table for one outer address."""

    def __init__(self, nets: list[tuple[int, int]], maddr: int, hz: int,
                 timeouts: MasqTimeouts | None = None,
                 ports: tuple[int, int] = (PORT_MASQ_BEGIN, PORT_MASQ_END)) -> None:
        self.nets = nets
        self.maddr = maddr
        self.maddr_b = _I.pack(maddr)
        self.hz = hz
        self.timeouts = timeouts or MasqTimeouts()
        self.lo, self.hi = ports
        self.out_map: dict[tuple, MasqEntry] = {}
        self.in_map: dict[tuple, MasqEntry] = {}
        self.cursor = self.lo
        self.stats = MasqStats()
        self.next_sweep = 0

    def matches(self, saddr: int) -> bool:
        """Whether ``saddr`` (a host-order IPv4 address) is in one of the ``--masquerade`` subnets."""
        for net, mask in self.nets:
            if saddr & mask == net:
                return True
        return False

    # ------------------------------------------------------------------

    def _timeout(self, e: MasqEntry) -> int:
        t = self.timeouts
        if e.proto == IPPROTO_TCP:
            s = t.tcpfin if e.closing else (t.tcp if e.replied else t.syn)
        elif e.proto == IPPROTO_UDP:
            s = t.udp
        else:
            s = t.icmp
        return s * self.hz

    def _alloc(self, proto: int, raddr: int, rport: int) -> int | None:
        span = self.hi - self.lo + 1
        p = self.cursor
        for _ in range(span):
            if (proto, p, raddr, rport) not in self.in_map:
                self.cursor = p + 1 if p < self.hi else self.lo
                return p
            p = p + 1 if p < self.hi else self.lo
        return None

    @staticmethod
    def _ports(buf: bytearray, proto: int, l4: int, end: int) -> tuple[int, int] | None:
        """(source, destination) identifiers of a TCP/UDP/ICMP-echo header."""
        if proto in (IPPROTO_TCP, IPPROTO_UDP):
            if end - l4 < (20 if proto == IPPROTO_TCP else 8):
                return None
            return (buf[l4] << 8 | buf[l4 + 1], buf[l4 + 2] << 8 | buf[l4 + 3])
        if proto == IPPROTO_ICMP and end - l4 >= 8 and buf[l4] in (ICMP_ECHO, ICMP_ECHOREPLY):
            ident = buf[l4 + 4] << 8 | buf[l4 + 5]
            return (ident, 0) if buf[l4] == ICMP_ECHO else (0, ident)
        return None

    def _track(self, e: MasqEntry, buf: bytearray, l4: int, now: int, inbound: bool) -> None:
        if e.proto == IPPROTO_TCP:
            flags = buf[l4 + 13]
            if flags & (TCP_FIN | TCP_RST):
                e.closing = True
            elif inbound and not e.closing:
                e.replied = True
            elif flags & TCP_SYN and not flags & 0x10:
                e.closing = False
        e.expires = now + self._timeout(e)

    def out(self, buf: bytearray, l3: int, partial: bool, now: int) -> bool:
        """Masquerade an outbound packet in place; False if it cannot be (drop)."""
        ihl = (buf[l3] & 0x0F) << 2
        l4 = l3 + ihl
        end = l3 + (buf[l3 + 2] << 8 | buf[l3 + 3])
        proto = buf[l3 + 9]
        if buf[l3 + 6] & 0x3F or buf[l3 + 7]:
            return False  # fragments were reassembled before; MF/offset here is malformed
        pp = self._ports(buf, proto, l4, end)
        if pp is None:
            return False
        sport, dport = pp
        saddr = _I.unpack_from(buf, l3 + 12)[0]
        raddr = _I.unpack_from(buf, l3 + 16)[0]
        key = (proto, saddr, sport, raddr, dport)
        e = self.out_map.get(key)
        if e is None:
            if len(self.out_map) >= MAX_ENTRIES:
                self.stats.table_full += 1
                return False
            mport = self._alloc(proto, raddr, dport)
            if mport is None:
                self.stats.no_port += 1
                return False
            e = MasqEntry(proto, saddr, sport, raddr, dport, mport)
            self.out_map[key] = e
            self.in_map[(proto, mport, raddr, dport)] = e
            self.stats.created += 1
        self._track(e, buf, l4, now, False)
        self.stats.out_packets += 1
        old_addr = bytes(buf[l3 + 12 : l3 + 16])
        put_addr4(buf, l3 + 12, self.maddr_b)
        ip_send_check(buf, l3)
        self._rewrite_l4(buf, proto, l4, 0, old_addr, self.maddr_b, sport, e.mport, partial)
        return True

    def _rewrite_l4(self, buf, proto, l4, port_off, old_addr, new_addr, old_port, new_port, partial) -> None:
        if proto == IPPROTO_ICMP:
            # The identifier sits at +4 whatever the direction; no pseudo-header.
            _H.pack_into(buf, l4 + 4, new_port)
            check = _H.unpack_from(buf, l4 + 2)[0]
            _H.pack_into(buf, l4 + 2, _csum_add(check, old_port, new_port))
            return
        _H.pack_into(buf, l4 + port_off, new_port)
        coff = l4 + (16 if proto == IPPROTO_TCP else 6)
        if proto == IPPROTO_UDP and buf[coff] == 0 and buf[coff + 1] == 0 and not partial:
            return  # no UDP checksum: stays none
        l4_csum_nat(buf, coff, old_addr, new_addr, old_port, new_port, partial)

    def in_(self, buf: bytearray, l3: int, partial: bool, now: int) -> bool:
        """Undo masquerading of an inbound packet in place; False: not ours."""
        ihl = (buf[l3] & 0x0F) << 2
        l4 = l3 + ihl
        end = l3 + (buf[l3 + 2] << 8 | buf[l3 + 3])
        proto = buf[l3 + 9]
        if buf[l3 + 6] & 0x3F or buf[l3 + 7]:
            return False
        if proto == IPPROTO_ICMP and end - l4 >= 8 and buf[l4] in ICMP_ERRORS:
            return self._icmp_error_in(buf, l3, l4, end, now)
        pp = self._ports(buf, proto, l4, end)
        if pp is None:
            return False
        rport, mport = pp
        raddr = _I.unpack_from(buf, l3 + 12)[0]
        e = self.in_map.get((proto, mport, raddr, rport))
        if e is None:
            return False
        self._track(e, buf, l4, now, True)
        self.stats.in_packets += 1
        new_addr = _I.pack(e.saddr)
        put_addr4(buf, l3 + 16, new_addr)
        ip_send_check(buf, l3)
        self._rewrite_l4(buf, proto, l4, 2, self.maddr_b, new_addr, mport, e.sport, partial)
        return True

    def _icmp_error_in(self, buf: bytearray, l3: int, l4: int, end: int, now: int) -> bool:
        q = l4 + 8
        if end - q < 28 or buf[q] >> 4 != 4:
            return False
        qihl = (buf[q] & 0x0F) << 2
        ql4 = q + qihl
        qproto = buf[q + 9]
        if end - ql4 < 8:
            return False
        if qproto in (IPPROTO_TCP, IPPROTO_UDP):
            mport, rport = buf[ql4] << 8 | buf[ql4 + 1], buf[ql4 + 2] << 8 | buf[ql4 + 3]
        elif qproto == IPPROTO_ICMP and buf[ql4] == ICMP_ECHO:
            mport, rport = buf[ql4 + 4] << 8 | buf[ql4 + 5], 0
        else:
            return False
        raddr = _I.unpack_from(buf, q + 16)[0]
        e = self.in_map.get((qproto, mport, raddr, rport))
        if e is None or _I.unpack_from(buf, q + 12)[0] != self.maddr:
            return False
        self.stats.in_packets += 1
        new_addr = _I.pack(e.saddr)
        # The quoted packet is the one the real server sent, as it left us.
        put_addr4(buf, q + 12, new_addr)
        ip_send_check(buf, q)
        if qproto == IPPROTO_ICMP:
            _H.pack_into(buf, ql4 + 4, e.sport)
        else:
            _H.pack_into(buf, ql4, e.sport)
            # Quoted L4 checksums are often truncated away; the kernel leaves
            # them unless the whole datagram is there.  So do we.
        put_addr4(buf, l3 + 16, new_addr)
        ip_send_check(buf, l3)
        _H.pack_into(buf, l4 + 2, icmp_checksum(buf, l4, end))
        return True

    def expire(self, now: int) -> int:
        """Drop expired entries (at most once a second); returns how many."""
        if now < self.next_sweep:
            return 0
        self.next_sweep = now + self.hz
        dead = [k for k, e in self.out_map.items() if e.expires <= now]
        for k in dead:
            e = self.out_map.pop(k)
            self.in_map.pop((e.proto, e.mport, e.raddr, e.rport), None)
        self.stats.expired += len(dead)
        return len(dead)
