"""Zero-copy views over a frame: headers, in-place rewrite, checksums.

Mirrors what the kernel gets from ``struct sk_buff`` plus
``ip_vs_fill_iph_skb`` (``include/net/ip_vs.h``) and the checksum helpers
of ``include/net/checksum.h`` that ``ip_vs_proto_tcp.c`` and
``ip_vs_proto_udp.c`` use.

A packet is a ``bytearray`` and an offset to its IP header; nothing here
allocates an object per packet on the fast path.  :func:`parse` checks a
packet once and returns a plain tuple (:class:`IPHeader`) of offsets and
fields, or a :class:`Drop` reason code; for IPv6 it walks the extension
headers as ``ipv6_find_hdr`` does (:func:`ipv6_find_hdr`), so ``l4`` and
``protocol`` are the transport's, which the checksum helpers use for the
pseudo-header.  Rewrites happen in place with
``struct.pack_into`` and RFC 1624 incremental checksum updates, which give
bit-for-bit the kernel's results (including 0x0000 vs 0xFFFF).

Full recomputes (UDP zero checksum, payload changes, ICMP errors) use the
ones'-complement identity ``sum of 16-bit words == int(data) mod 0xFFFF``,
which turns a checksum into one big-integer operation in C.
"""

from __future__ import annotations

import enum
import struct

import attrs

from ipvs.uapi import IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100

# IPv4 fragment bits (RFC 791).
IP_MF = 0x2000
IP_DF = 0x4000
IP_OFFSET = 0x1FFF

# TCP flags (RFC 793, RFC 3168).
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10

# ICMP types (RFC 792).
ICMP_ECHOREPLY = 0
ICMP_DEST_UNREACH = 3
ICMP_SOURCE_QUENCH = 4
ICMP_ECHO = 8
ICMP_TIME_EXCEEDED = 11
ICMP_PORT_UNREACH = 3  # code of ICMP_DEST_UNREACH
ICMP_FRAG_NEEDED = 4  # code of ICMP_DEST_UNREACH
ICMP_EXC_TTL = 0  # code of ICMP_TIME_EXCEEDED

# IPv6 next-header values of the extension headers (RFC 8200 4,
# ``NEXTHDR_*`` in include/net/ipv6.h).
NEXTHDR_HOP = 0
NEXTHDR_ROUTING = 43
NEXTHDR_FRAGMENT = 44
NEXTHDR_ESP = 50
NEXTHDR_AUTH = 51
NEXTHDR_NONE = 59
NEXTHDR_DEST = 60
#: ``ipv6_ext_hdr()``: the headers ``ipv6_find_hdr`` walks through.  ESP is
#: not one of them (what follows it is encrypted): the walk ends there and
#: ESP is the packet's protocol, as is "no next header" (59).
IPV6_EXT_HDRS = frozenset((NEXTHDR_HOP, NEXTHDR_ROUTING, NEXTHDR_FRAGMENT, NEXTHDR_AUTH, NEXTHDR_DEST))
#: Fragment header: offset (8-byte units, already shifted) and M flag.
IP6_OFFSET = 0xFFF8
IP6_MF = 0x0001
IPV6_HLEN = 40
IPV6_MIN_MTU = 1280

# ICMPv6 types and codes (RFC 4443, RFC 4861).
ICMPV6_DEST_UNREACH = 1
ICMPV6_PKT_TOOBIG = 2
ICMPV6_TIME_EXCEED = 3
ICMPV6_PARAMPROB = 4
#: Types with this bit are informational (echo, neighbour discovery), the
#: others errors (``ICMPV6_INFOMSG_MASK``).
ICMPV6_INFOMSG_MASK = 0x80
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129
NDISC_NEIGHBOUR_SOLICITATION = 135
NDISC_NEIGHBOUR_ADVERTISEMENT = 136
ICMPV6_PORT_UNREACH = 4  # code of ICMPV6_DEST_UNREACH
ICMPV6_EXC_HOPLIMIT = 0  # code of ICMPV6_TIME_EXCEED

_H = struct.Struct("!H")
_HH = struct.Struct("!HH")
_I = struct.Struct("!I")

#: ``put_addr4(buf, offset, addr)`` / ``put_port(buf, offset, port)``:
#: write a 4-byte address or a 2-byte port (``bytes``, network order) into
#: a frame.  Slice assignment (``buf[a:b] = value``) would first copy a
#: ``bytes`` value into a temporary ``bytearray`` (CPython's
#: ``bytearray_ass_subscript``), which costs more than the rest of a NAT
#: rewrite; ``pack_into`` writes straight from it.
put_addr4 = struct.Struct("4s").pack_into
#: ``put_addr6(buf, offset, addr)``: a 16-byte IPv6 address.
put_addr6 = struct.Struct("16s").pack_into
put_port = struct.Struct("2s").pack_into
#: ``put_u16(buf, offset, value)``: a 16-bit field (a checksum) in network order.
put_u16 = _H.pack_into
#: ``port_bytes(port)``: a port (or any 16-bit field) as 2 bytes in network
#: order.  ``int.to_bytes`` goes through PyPy's big-integer code (about
#: 100 ns against 3 for the struct).
port_bytes = _H.pack


class Drop(enum.IntEnum):
    """Why a packet was dropped or not handled; each has a counter."""

    TRUNCATED = 1  #: shorter than its headers claim
    BAD_VERSION = 2  #: neither IPv4 nor IPv6
    BAD_IHL = 3  #: IPv4 header length < 20
    BAD_TOTLEN = 4  #: IP total length beyond the frame or below the header
    BAD_L4 = 5  #: L4 header truncated or its offset field invalid
    FRAGMENT = 6  #: a fragment the core does not reassemble (the driver does)
    BAD_CSUM = 7  #: checksum verification failed where the kernel verifies
    TTL_EXCEEDED = 8  #: TTL would reach zero on forwarding
    NO_DEST = 9  #: scheduling found no real server
    DEST_UNAVAILABLE = 10  #: the connection's real server was deleted
    DEFENSE = 11  #: drop_packet / drop_entry defence
    CONN_REUSE = 12  #: SYN dropped while an old connection is flushed
    TABLE_FULL = 13  #: connection table at its configured bound
    # 14 was UNSUPPORTED (IPv6 packets of DR and TUN connections, before
    # ip_vs_dr_xmit_v6 and ip_vs_tunnel_xmit_v6 were written): not reused.
    NO_PE_DATA = 15  #: the service's persistence engine found no key (SIP: no usable Call-ID)
    BAD_EXTHDR = 16  #: IPv6 extension headers truncated, or a non-first fragment not followed by the protocol


@attrs.define(slots=True)
class IPHeader:
    """Fields of one parsed packet, all ints (offsets into the buffer).

    ``l3`` is the IP header offset, ``l4`` the transport header offset and
    ``end`` one past the last byte of the IP packet (total length).  ``saddr``
    and ``daddr`` are offsets of the addresses, whose length is ``alen``.

    A plain slotted class, as the kernel's ``struct ip_vs_iphdr`` is a
    struct: :func:`parse` fills it once and nothing writes it afterwards.
    It was a NamedTuple, whose every field read on PyPy 3.9 runs
    ``operator.itemgetter``'s app-level ``__call__``: about 16 more inlined
    calls per pair of established packets, 10% of their trace (bench/core.py
    on PyPy, 5 interleaved runs: new connections 713k → 770k/s, established
    6.29 → 6.39 M pkt/s, medians).
    """

    af: int
    l3: int
    l4: int
    end: int
    protocol: int
    saddr: int
    daddr: int
    alen: int
    fragoffs: int  # 0 for unfragmented and first fragments
    more_frags: bool
    #: IPv6: the largest fragment of a packet the driver reassembled
    #: (``IP6CB(skb)->frag_max_size``), 0 for one that came whole; what
    #: ``ensure_mtu_is_adequate`` compares with the MTU in its place.
    frag_max: int = 0


def parse(buf: bytearray | bytes, l3: int) -> IPHeader | Drop:
    """Validate the IP header at ``l3`` and locate the transport header.

    Returns a :class:`Drop` reason instead of raising on bad input.
    """
    n = len(buf)
    if n < l3 + 1:
        return Drop.TRUNCATED
    ver = buf[l3] >> 4
    if ver == 4:
        if n < l3 + 20:
            return Drop.TRUNCATED
        ihl = (buf[l3] & 0x0F) << 2
        if ihl < 20:
            return Drop.BAD_IHL
        tot = (buf[l3 + 2] << 8) | buf[l3 + 3]
        if tot < ihl or l3 + tot > n:
            return Drop.BAD_TOTLEN
        frag = (buf[l3 + 6] << 8) | buf[l3 + 7]
        return IPHeader(
            2, l3, l3 + ihl, l3 + tot, buf[l3 + 9], l3 + 12, l3 + 16, 4,
            (frag & IP_OFFSET) << 3, bool(frag & IP_MF),
        )
    if ver == 6:
        if n < l3 + IPV6_HLEN:
            return Drop.TRUNCATED
        plen = (buf[l3 + 4] << 8) | buf[l3 + 5]
        end = l3 + IPV6_HLEN + plen
        if end > n:
            return Drop.BAD_TOTLEN
        found = ipv6_find_hdr(buf, l3, end)
        if found is None:
            return Drop.BAD_EXTHDR
        protocol, l4, fragoffs, more = found
        return IPHeader(10, l3, l4, end, protocol, l3 + 8, l3 + 24, 16, fragoffs, more)
    return Drop.BAD_VERSION


def ipv6_find_hdr(buf: bytearray | bytes, l3: int, end: int) -> tuple[int, int, int, bool] | None:
    """``ipv6_find_hdr(skb, &offset, -1, &fragoffs, &flags)`` as IPVS calls
    it (``ip_vs_fill_iph_skb``): walk the extension headers after the IPv6
    header at ``l3``; return (protocol, its offset, fragment offset, more
    fragments), or None when a header runs past ``end`` (the kernel's
    -EBADMSG) or a non-first fragment is followed by another extension
    header (-ENOENT).

    Hop-by-hop, routing and destination options are skipped by their
    length field, ``(len + 1) * 8``; AH by its own, ``(len + 2) * 4``
    (IPVS passes no ``IP6_FH_F_AUTH``: the protocol is what AH protects);
    ESP and "no next header" end the walk as the protocol.  A routing
    header is skipped whatever its segments left (no ``IP6_FH_F_SKIP_RH``),
    and the pseudo-header of a checksum keeps the header's destination
    address, as the kernel's IPVS does.  A first fragment (offset 0) is
    walked through like any header; a later fragment ends the walk with
    the fragment's next header as the protocol and its offset.

    Differences: the kernel leaves the offset of a non-first fragment at
    the IPv6 header; here it is the fragment's data, which nothing reads
    as a transport header.  An atomic fragment (offset 0, no M flag,
    RFC 6946) reads as unfragmented; the kernel only flags it.
    """
    nexthdr = buf[l3 + 6]
    start = l3 + IPV6_HLEN
    fragoffs = 0
    more = False
    while nexthdr in IPV6_EXT_HDRS:
        # The kernel reads 2 bytes of a header (next header, length), 4 of
        # a fragment or routing header; a length running past the packet
        # shows at the next header, or in the transport offset at the end.
        if start + (4 if nexthdr in (NEXTHDR_FRAGMENT, NEXTHDR_ROUTING) else 2) > end:
            return None
        nxt = buf[start]
        if nexthdr == NEXTHDR_FRAGMENT:
            frag = (buf[start + 2] << 8) | buf[start + 3]
            more = bool(frag & IP6_MF)
            if frag & IP6_OFFSET:
                if nxt in IPV6_EXT_HDRS:
                    return None
                return nxt, start + 8, frag & IP6_OFFSET, more
            hdrlen = 8
        elif nexthdr == NEXTHDR_AUTH:
            hdrlen = (buf[start + 1] + 2) << 2
        else:
            hdrlen = (buf[start + 1] + 1) << 3
        nexthdr = nxt
        start += hdrlen
    if start > end:
        return None
    return nexthdr, start, fragoffs, more


def ports(buf: bytearray | bytes, l4: int) -> tuple[int, int]:
    """(source port, destination port) of a TCP/UDP header."""
    return _HH.unpack_from(buf, l4)


# --------------------------------------------------------------------------
# Checksums


def csum_words(data: bytes | bytearray | memoryview) -> int:
    """Ones'-complement sum of ``data`` as 16-bit words, folded to 0..0xFFFF.

    Returns 0xFFFF (not 0) for a non-zero input whose sum is ``-0``, which is
    what an end-around-carry adder produces.
    """
    if len(data) & 1:
        data = bytes(data) + b"\0"
    v = int.from_bytes(data, "big")
    if v == 0:
        return 0
    r = v % 0xFFFF
    return r if r else 0xFFFF


def fold(s: int) -> int:
    """Fold an arbitrary ones'-complement accumulator to 16 bits."""
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ip_checksum(buf: bytearray, l3: int, ihl: int) -> int:
    """The IPv4 header checksum of ``buf[l3:l3+ihl]`` with the field taken as 0."""
    s = csum_words(buf[l3 : l3 + 10]) + csum_words(buf[l3 + 12 : l3 + ihl])
    return ~fold(s) & 0xFFFF


def ip_send_check(buf: bytearray, l3: int) -> None:
    """Recompute the IPv4 header checksum in place (``ip_send_check``)."""
    ihl = (buf[l3] & 0x0F) << 2
    put_u16(buf, l3 + 10, ip_checksum(buf, l3, ihl))


def pseudo_sum(saddr: bytes, daddr: bytes, protocol: int, length: int) -> int:
    """Unfolded sum of the TCP/UDP pseudo-header (RFC 793 / RFC 8200 8.1)."""
    return csum_words(saddr) + csum_words(daddr) + protocol + length


def l4_checksum(buf: bytearray, h: IPHeader) -> int:
    """Full TCP/UDP checksum of the packet with the checksum field as 0."""
    l4, end = h.l4, h.end
    coff = l4 + (16 if h.protocol == IPPROTO_TCP else 6)
    s = pseudo_sum(
        bytes(buf[h.saddr : h.saddr + h.alen]), bytes(buf[h.daddr : h.daddr + h.alen]),
        h.protocol, end - l4,
    )
    s += csum_words(buf[l4:coff]) + csum_words(buf[coff + 2 : end])
    return ~fold(s) & 0xFFFF


def l4_csum_ok(buf: bytearray, h: IPHeader) -> bool:
    """Verify a TCP/UDP checksum (a zero UDP checksum means "none", RFC 768).

    The pseudo-header has the transport protocol and the transport length
    from the descriptor, not the IPv6 header's next header and payload
    length: with extension headers these differ (the kernel fixed its
    ``*_csum_check`` for this in 2026, "ipvs: skip ipv6 extension headers
    for csum checks").  Like ``udp_csum_check`` a zero UDP checksum passes
    in both families, although RFC 8200 8.1 forbids it over IPv6: the
    kernel's IPv6 stack drops those before IPVS sees them.
    """
    coff = h.l4 + (16 if h.protocol == IPPROTO_TCP else 6)
    got = _H.unpack_from(buf, coff)[0]
    if h.protocol == IPPROTO_UDP and got == 0:
        return True
    want = l4_checksum(buf, h)
    if h.protocol == IPPROTO_UDP and want == 0:
        want = 0xFFFF
    return got == want


def icmp_checksum(buf: bytearray, l4: int, end: int) -> int:
    """ICMP (v4) checksum over ``buf[l4:end]`` with the field taken as 0."""
    s = csum_words(buf[l4 : l4 + 2]) + csum_words(buf[l4 + 4 : end])
    return ~fold(s) & 0xFFFF


def icmp6_checksum(buf: bytearray, h: IPHeader) -> int:
    """ICMPv6 checksum (RFC 4443 2.3) of the message at ``h.l4`` with the
    field taken as 0: the IPv6 pseudo-header (``csum_ipv6_magic``) over the
    addresses, the ICMPv6 length and next header 58, then the message."""
    l4, end = h.l4, h.end
    s = pseudo_sum(bytes(buf[h.saddr : h.saddr + 16]), bytes(buf[h.daddr : h.daddr + 16]),
                   IPPROTO_ICMPV6, end - l4)
    s += csum_words(buf[l4 : l4 + 2]) + csum_words(buf[l4 + 4 : end])
    return ~fold(s) & 0xFFFF


def csum_replace(check: int, old: bytes | bytearray, new: bytes | bytearray) -> int:
    """RFC 1624 eq. 3: update ``check`` for a field changing from old to new.

    ``HC' = ~(~HC + ~m + m')`` over the changed 16-bit words; ``old`` and
    ``new`` have the same even length.
    """
    s = (~check & 0xFFFF) + (0xFFFF * (len(old) >> 1) - csum_words_raw(old)) + csum_words_raw(new)
    return ~fold(s) & 0xFFFF


def csum_words_raw(data: bytes | bytearray) -> int:
    """Plain (unfolded) sum of the 16-bit words of ``data``."""
    return sum(_H.unpack_from(data, i)[0] for i in range(0, len(data), 2))


def l4_csum_nat(
    buf: bytearray, coff: int, old_addr: bytes, new_addr: bytes, old_port: int, new_port: int, partial: bool
) -> None:
    """Update the TCP/UDP checksum at ``coff`` for an address and port change.

    The complemented checksum gets the RFC 1624 update over both (the
    kernel's ``tcp_fast_csum_update``).  A partial checksum (offload:
    the field holds the *uncomplemented* pseudo-header sum, ports not yet
    included) gets the address change only, uncomplemented
    (``tcp_partial_csum_update``).
    """
    check = (buf[coff] << 8) | buf[coff + 1]
    delta = csum_words_raw(new_addr) + (0xFFFF * (len(old_addr) >> 1) - csum_words_raw(old_addr))
    if partial:
        s = fold(check + delta)
    else:
        s = (~check & 0xFFFF) + delta + (0xFFFF - old_port) + new_port
        s = ~fold(s) & 0xFFFF
    buf[coff] = s >> 8
    buf[coff + 1] = s & 0xFF


def l4_csum_full(buf: bytearray, h: IPHeader, partial: bool = False) -> None:
    """Recompute a TCP/UDP checksum from scratch (``csum_tcpudp_magic``).

    With ``partial`` the field gets the uncomplemented pseudo-header sum
    an offloading NIC expects instead.  A UDP result of 0 is sent as
    0xFFFF (``CSUM_MANGLED_0``).
    """
    coff = h.l4 + (16 if h.protocol == IPPROTO_TCP else 6)
    if partial:
        s = fold(
            pseudo_sum(bytes(buf[h.saddr : h.saddr + h.alen]), bytes(buf[h.daddr : h.daddr + h.alen]),
                       h.protocol, h.end - h.l4)
        )
    else:
        s = l4_checksum(buf, h)
        if s == 0 and h.protocol == IPPROTO_UDP:
            s = 0xFFFF
    put_u16(buf, coff, s)


def nat_delta(old_addr: bytes, new_addr: bytes, old_port: int, new_port: int) -> int:
    """Precomputed checksum change of a NAT rewrite, for per-packet updates.

    Returns ``(addr_delta << 16) | port_delta``: each the folded
    ones'-complement sum ``new + ~old`` of the 16-bit words (RFC 1624).
    Adding ``addr_delta`` and ``port_delta`` to a complemented checksum
    applies the rewrite; adding their negations (``0xFFFF - x``) undoes it.
    """
    da = fold(csum_words_raw(new_addr) + 0xFFFF * (len(old_addr) >> 1) - csum_words_raw(old_addr))
    dp = fold(new_port + 0xFFFF - old_port)
    return (da << 16) | dp
