"""ICMPv6 errors: the quoted packet, errors IPVS sends, the NAT rewrite.

The IPv6 twin of :mod:`ipvs.proto.icmp`.  As there, ICMPv6 is no IPVS
protocol; it matters in two ways:

* an ICMPv6 error quoting a packet of a connection is "related" and gets
  rewritten (``ip_vs_in_icmp_v6`` / ``ip_vs_out_icmp_v6`` and
  ``ip_vs_nat_icmp_v6`` in ``ip_vs_core.c``; the rewrite lives here,
  beside the parsing it needs);
* IPVS sends errors itself (``icmpv6_send`` from ``ip_vs_leave``, from
  ``decrement_ttl`` and from ``ensure_mtu_is_adequate`` in
  ``ip_vs_xmit.c``: port unreachable, hop limit exceeded, Packet Too Big).

Differences from IPv4 that the kernel has too, and keep here:

* every error type is related (``!(type & ICMPV6_INFOMSG_MASK)``: dest
  unreachable, packet too big, time exceeded, parameter problem), not
  only three;
* the quoted packet's extension headers are walked (``ipv6_find_hdr``);
  a quoted non-first fragment is not related;
* a fragmented ICMPv6 packet is dropped, not taken for an error: the
  kernel's ``IP6_FH_F_FRAG`` test ("error messages can't be fragmented");
* no header checksum to fix: the ICMPv6 checksum covers a pseudo-header
  (RFC 4443 2.3), so rewriting an address means recomputing it.

:func:`build_error6` follows ``icmp6_send`` in ``net/ipv6/icmp.c``: quote
the offending packet so the error fits the IPv6 minimum MTU (1280), hop
limit 64, traffic class and flow label 0.
"""

from __future__ import annotations

import struct

from ipvs.packet import (
    ICMPV6_INFOMSG_MASK,
    IPV6_HLEN,
    IPV6_MIN_MTU,
    IPHeader,
    icmp6_checksum,
    ipv6_find_hdr,
    parse,
    put_u16,
)
from ipvs.proto.icmp import Quoted
from ipvs.uapi import IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP

#: The default hop limit of the director's own packets (``ip6_dst_hoplimit``
#: on a route without one: the interface's 64).
IPV6_DEFAULT_HOPLIMIT = 64
#: Room for the quote: an error is at most 1280 bytes (RFC 4443 2.4(c)).
ICMPV6_QUOTE_MAX = IPV6_MIN_MTU - IPV6_HLEN - 8

#: Protocols whose quoted ports ``ip_vs_nat_icmp_v6`` rewrites.
_PORTS_QUOTED = frozenset((IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP))

_HDR6 = struct.Struct("!IHBB16s16s")


def is_error(icmp_type: int) -> bool:
    """Error messages (types 0-127) may relate to a connection."""
    return not icmp_type & ICMPV6_INFOMSG_MASK


def parse_quoted6(buf: bytearray | bytes, icmp_off: int, end: int) -> Quoted | None:
    """The IPv6 packet quoted by the ICMPv6 message at ``icmp_off``
    (``ip_vs_fill_iph_skb_icmp`` for AF_INET6): its header and, through
    its extension headers, its transport header.

    None when the quoted header is cut short or its extension headers do
    not parse (the kernel's "not related", NF_ACCEPT).  The quoted packet
    is usually truncated, so its own payload length is not checked.
    """
    q = icmp_off + 8
    if end - q < IPV6_HLEN or buf[q] >> 4 != 6:
        return None
    found = ipv6_find_hdr(buf, q, end)
    if found is None:
        return None
    protocol, l4, fragoffs, _more = found
    return Quoted(q, l4, protocol, q + 8, q + 24, fragoffs)


def is_ineligible(buf: bytearray | bytes, h: IPHeader) -> bool:
    """``is_ineligible`` (in ``net/ipv6/icmp.c``): never answer an ICMPv6 error with another one
    (RFC 4443 2.4(e)).  A fragment without its ICMPv6 header is eligible."""
    if h.protocol != IPPROTO_ICMPV6:
        return False
    if h.l4 >= h.end:
        return not h.fragoffs
    return not h.fragoffs and is_error(buf[h.l4])


def build_error6(
    orig: bytearray | bytes, l3: int, end: int, icmp_type: int, code: int, src: bytes, info: int = 0,
) -> bytearray:
    """An ICMPv6 error about the IPv6 packet ``orig[l3:end]``, sent from
    ``src`` to the packet's source.  ``info`` is the 32-bit field after
    the checksum (the MTU of a Packet Too Big, the pointer of a parameter
    problem)."""
    quote = bytes(orig[l3 : min(end, l3 + ICMPV6_QUOTE_MAX)])
    plen = 8 + len(quote)
    out = bytearray(IPV6_HLEN + plen)
    _HDR6.pack_into(out, 0, 6 << 28, plen, IPPROTO_ICMPV6, IPV6_DEFAULT_HOPLIMIT, bytes(src),
                    bytes(orig[l3 + 8 : l3 + 24]))
    out[40] = icmp_type
    out[41] = code
    struct.pack_into("!I", out, 44, info & 0xFFFFFFFF)
    out[48:] = quote
    h = parse(out, 0)
    assert type(h) is IPHeader  # (built right here: always parses)
    put_u16(out, 42, icmp6_checksum(out, h))
    return out


def nat_icmp_v6(buf: bytearray, h: IPHeader, q: Quoted, cp, inout: bool) -> None:
    """``ip_vs_nat_icmp_v6``: rewrite an ICMPv6 error and the packet it quotes.

    ``inout`` True: an error from the real server going out to the client
    (outer source and quoted destination become the VIP, the quoted
    destination port the virtual port).  False: an error from the client
    side going in (outer destination and quoted source become the real
    server, the quoted source port its port).  Ports of a quoted non-first
    fragment are not there and stay alone; the quoted transport checksum
    is not touched, as in the kernel.  The ICMPv6 checksum is computed in
    full (the kernel leaves it CHECKSUM_PARTIAL for the device: the same
    bytes on the wire).
    """
    if inout:
        buf[h.saddr : h.saddr + 16] = cp.vaddr
        buf[q.daddr : q.daddr + 16] = cp.vaddr
    else:
        buf[h.daddr : h.daddr + 16] = cp.daddr
        buf[q.saddr : q.saddr + 16] = cp.daddr
    if not q.fragoffs and q.protocol in _PORTS_QUOTED and q.l4 + 4 <= h.end:
        if inout:
            put_u16(buf, q.l4 + 2, cp.vport)
        else:
            put_u16(buf, q.l4, cp.dport)
    put_u16(buf, h.l4 + 2, 0)
    put_u16(buf, h.l4 + 2, icmp6_checksum(buf, h))
