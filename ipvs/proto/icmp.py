"""ICMP errors: reading the quoted packet and building errors to send.

The kernel has no IPVS protocol for ICMP (``ip_vs_proto.c`` registers TCP,
UDP, SCTP, AH and ESP only).  ICMP matters to IPVS in two ways, both here:

* an ICMP error (destination unreachable, source quench, time exceeded)
  that quotes a packet of a connection is "related" and gets rewritten
  (``ip_vs_in_icmp`` / ``ip_vs_out_icmp`` in ``ip_vs_core.c``);
* IPVS itself sends errors (``icmp_send`` from ``ip_vs_leave``, from
  ``decrement_ttl`` and the MTU check in ``ip_vs_xmit.c``).

:func:`build_error` follows ``__icmp_send`` in ``net/ipv4/icmp.c``: quote
the offending IP packet up to a 576-byte error, TOS with the
internetwork-control precedence, TTL 64, no DF.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from ipvs.packet import (
    ICMP_DEST_UNREACH,
    ICMP_SOURCE_QUENCH,
    ICMP_TIME_EXCEEDED,
    icmp_checksum,
    ip_send_check,
)
from ipvs.uapi import IPPROTO_ICMP

#: ICMP types that may relate to a connection (``ip_vs_in_icmp``).
RELATED_TYPES = frozenset((ICMP_DEST_UNREACH, ICMP_SOURCE_QUENCH, ICMP_TIME_EXCEEDED))

#: Largest ICMP error the kernel sends (RFC 1812 4.3.2.3 "576").
ICMP_ERROR_MAX = 576
IP_DEFAULT_TTL = 64
IPTOS_PREC_INTERNETCONTROL = 0xC0
IPTOS_TOS_MASK = 0x1E

_HDR = struct.Struct("!BBHHHBBH4s4s")


class Quoted(NamedTuple):
    """The IP header quoted inside an ICMP error, as offsets into the buffer.

    Only the first 8 bytes of the quoted transport header are guaranteed.
    """

    l3: int
    l4: int
    protocol: int
    saddr: int
    daddr: int
    fragoffs: int


def parse_quoted(buf: bytearray, icmp_off: int, end: int) -> Quoted | None:
    """Find the IPv4 header quoted by the ICMP message at ``icmp_off``.

    Returns None when it is truncated below IP header + 8 bytes.
    """
    q = icmp_off + 8
    if end - q < 20 or buf[q] >> 4 != 4:
        return None
    ihl = (buf[q] & 0x0F) << 2
    if ihl < 20 or end - q < ihl + 4:
        return None
    frag = ((buf[q + 6] << 8) | buf[q + 7]) & 0x1FFF
    return Quoted(q, q + ihl, buf[q + 9], q + 12, q + 16, frag << 3)


def build_error(
    orig: bytearray | bytes, l3: int, end: int, icmp_type: int, code: int, src: bytes, info: int = 0,
    ident: int = 0,
) -> bytearray:
    """An ICMPv4 error about the packet ``orig[l3:end]``, sent from ``src``.

    ``info`` fills the 4 "unused" bytes (the next-hop MTU for frag-needed).
    """
    room = ICMP_ERROR_MAX - 20 - 8
    quote = bytes(orig[l3 : min(end, l3 + room)])
    tot = 20 + 8 + len(quote)
    tos = (orig[l3 + 1] & IPTOS_TOS_MASK) | IPTOS_PREC_INTERNETCONTROL
    out = bytearray(tot)
    _HDR.pack_into(out, 0, 0x45, tos, tot, ident & 0xFFFF, 0, IP_DEFAULT_TTL, IPPROTO_ICMP, 0, src,
                   bytes(orig[l3 + 12 : l3 + 16]))
    ip_send_check(out, 0)
    out[20] = icmp_type
    out[21] = code
    struct.pack_into("!I", out, 24, info)
    out[28:] = quote
    struct.pack_into("!H", out, 22, icmp_checksum(out, 20, tot))
    return out
