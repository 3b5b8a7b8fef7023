"""Forwarding methods: packets rewritten and handed back for transmission.

Mirrors ``net/netfilter/ipvs/ip_vs_xmit.c`` for VS/NAT (``ip_vs_nat_xmit``
and ``ip_vs_icmp_xmit``, and their IPv6 twins ``ip_vs_nat_xmit_v6`` and
``ip_vs_icmp_xmit_v6``), plus the L4 NAT handlers of
``ip_vs_proto_tcp.c`` / ``ip_vs_proto_udp.c`` (``tcp_dnat_handler``,
``tcp_snat_handler`` and the UDP twins), which share one implementation
here because they differ only in the checksum offset and UDP's
zero-checksum rule: both come from the protocol's operations
(:class:`ipvs.ip_vs.IPVSProtocol` ``csum_offset`` and ``csum_zero_is_none``).

Also the other two forwarding methods, which leave the reply path to
the real servers (their connections are ``NOOUTPUT``, see
:mod:`ipvs.ctl`), for both families:

* :func:`dr_xmit` and :func:`dr_xmit_v6` (``ip_vs_dr_xmit``,
  ``ip_vs_dr_xmit_v6``): direct routing.  The IP packet goes on unchanged
  but for the TTL or hop limit; only its link-layer destination changes:
  the real server's.
* :func:`tunnel_xmit` and :func:`tunnel_xmit_v6` (``ip_vs_tunnel_xmit``,
  ``ip_vs_tunnel_xmit_v6``, with ``ip_vs_prepare_tunneled_skb``,
  ``ipvs_gue_encap``, ``ipvs_gre_encap``): IP-in-IP (IPv4 or IPv6 inside
  an IPv4 or IPv6 outer header: the outer family is the real server's),
  or GUE (RFC draft-ietf-intarea-gue: UDP to ``--tun-port``) or GRE
  (RFC 2784) around it, with the kernel's outer header: TTL or hop limit
  and (IPv4) DF from the inner packet (DF only with the ``pmtu_disc``
  sysctl), the tos or traffic class with the ECN bits encapsulated
  (``INET_ECN_encapsulate``), the ID of ``ip_select_ident``, IPv6's flow
  label 0, and the path MTU less the tunnel's overhead for the
  "fragmentation needed" and Packet Too Big answers.

Nothing here sends anything: a function rewrites the packet in place and
returns a verdict; generated ICMP errors go to ``ipvs.outbox``.  Routing is
the driver's job; the one routing fact the kernel's xmit uses, the path
MTU, comes in as ``mtu`` (None: no MTU check), and the tunnel's source
address (the route's preferred source towards the real server) as
``saddr``.  The core then tells the driver where a DR or TUN packet goes
(:attr:`ipvs.core.Director.xmit_to`): to the real server, not by the
packet's destination.

A tunnelled packet grows in place: the outer headers are inserted at the
IP header's offset (``buf[l3:l3] = outer``), so ``l3`` stays the offset
of the packet to send, whose destination is now the real server.  (The
kernel pushes the headers into the skb's headroom; a ``bytearray`` has
none to spare, and the move costs one ``memmove`` of a frame.)

Where this differs from the kernel, and why: the GUE source port is
``udp_flow_src_port``'s formula over a CRC-32 of the inner flow (the
kernel's flow hash has a random per-boot seed: any port of the local
range is as right); the outer ID counts per (source, destination,
protocol) from a hash of them (``__ip_select_ident`` adds random steps);
the real server as the director's own address (the kernel's local
delivery, ``ip_vs_send_or_cont(..., 1)``) is the driver's to decide.
"""

from __future__ import annotations

import struct
import zlib
from typing import TYPE_CHECKING, cast

from ipvs.ip_vs import NF_DROP, NF_STOLEN, IPVSProtocol
from ipvs.packet import (
    ICMP_DEST_UNREACH,
    ICMP_EXC_TTL,
    ICMP_FRAG_NEEDED,
    ICMP_TIME_EXCEEDED,
    ICMPV6_EXC_HOPLIMIT,
    ICMPV6_PKT_TOOBIG,
    ICMPV6_TIME_EXCEED,
    IP_DF,
    Drop,
    IPHeader,
    csum_words,
    icmp_checksum,
    ip_send_check,
    l4_csum_full,
    parse,
    put_addr4,
    put_addr6,
    put_port,
    put_u16,
)
from ipvs.proto.icmp import Quoted, build_error
from ipvs.proto.icmpv6 import build_error6, is_ineligible, nat_icmp_v6
from ipvs.uapi import (
    AF_INET6,
    IP_VS_CONN_F_TUNNEL_TYPE_GRE,
    IP_VS_CONN_F_TUNNEL_TYPE_GUE,
    IP_VS_TUNNEL_ENCAP_FLAG_CSUM,
    IP_VS_TUNNEL_ENCAP_FLAG_REMCSUM,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
)

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.conn import Connection
    from ipvs.ip_vs import Dest
    from ipvs.netns import NetnsIPVS

#: Protocols whose quoted ports ``ip_vs_nat_icmp`` rewrites (the kernel's
#: own test there: TCP, UDP and SCTP).
_PORTS_QUOTED = frozenset((IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP))


def decrement_ttl(ipvs: NetnsIPVS, buf: bytearray, h: IPHeader, src: bytes) -> bool:
    """``decrement_ttl``: False (and an ICMP time exceeded from ``src``
    queued) at TTL <= 1.

    Like ``ip_decrease_ttl`` the header checksum is adjusted at once, so a
    later ICMP error quotes a consistent header.
    """
    l3 = h.l3
    if buf[l3 + 8] <= 1:
        ipvs.outbox.append(build_error(buf, l3, h.end, ICMP_TIME_EXCEEDED, ICMP_EXC_TTL, src))
        ipvs.drops[Drop.TTL_EXCEEDED] += 1
        return False
    buf[l3 + 8] -= 1
    check = ((buf[l3 + 10] << 8) | buf[l3 + 11]) + 0x0100
    check += check >> 16
    buf[l3 + 10] = (check >> 8) & 0xFF
    buf[l3 + 11] = check & 0xFF
    return True


def mtu_ok(ipvs: NetnsIPVS, buf: bytearray, h: IPHeader, mtu: int | None, src: bytes) -> bool:
    """``ensure_mtu_is_adequate`` for IPv4: DF packets above the MTU get
    frag-needed (sent from ``src``) and are dropped."""
    l3 = h.l3
    if mtu is None or h.end - l3 <= mtu or not (buf[l3 + 6] << 8) & IP_DF:
        return True
    ipvs.outbox.append(build_error(buf, l3, h.end, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, src, info=mtu))
    return False


# ------------------------------------------------------------------ NAT
#
# ``cp.nat_delta`` is (address delta << 16) | port delta of the DNAT
# rewrite, in ones'-complement (:func:`ipvs.packet.nat_delta`); the SNAT
# rewrite undoes it, and the ones'-complement negation of both halves at
# once is ``delta ^ 0xFFFFFFFF``.  Ones'-complement addition is addition
# modulo 0xFFFF with 0xFFFF for zero, so for a positive sum
# ``(s - 1) % 0xFFFF + 1`` is the folded sum (csum_fold's end-around
# carries in one step).  The results equal a full recompute bit for bit.


def _ip_nat(buf: bytearray, l3: int, at: int, addr: bytes, da: int) -> None:
    """The IPv4 header of a NAT-forwarded packet: ``ip_decrease_ttl``, the
    address at offset ``at`` becomes ``addr`` and the header checksum
    follows (the caller checked the TTL is above 1).

    The kernel recomputes the header checksum (``ip_send_check``); the
    address delta ``da`` and 0xFEFF for the TTL word going down by 0x0100
    give the same result in a few integer operations.
    """
    buf[l3 + 8] -= 1
    put_addr4(buf, at, addr)
    s = (((buf[l3 + 10] << 8) | buf[l3 + 11]) ^ 0xFFFF) + da + 0xFEFF
    put_u16(buf, l3 + 10, ((s - 1) % 0xFFFF + 1) ^ 0xFFFF)


def _l4_csum_update(buf: bytearray, h: IPHeader, pp: IPVSProtocol, delta: int, partial: bool, mangled: bool) -> None:
    """The transport checksum after a NAT rewrite: ``tcp_fast_csum_update``
    or ``tcp_partial_csum_update`` (and the UDP twins), or a full
    recompute when the application helper ``mangled`` the payload.

    The addresses must already be rewritten: a full recompute reads them.
    """
    coff = h.l4 + pp.csum_offset
    c = (buf[coff] << 8) | buf[coff + 1]
    zero_is_none = pp.csum_zero_is_none
    if mangled or (c == 0 and zero_is_none and not partial):
        # A mangled payload, or a UDP datagram without checksum: the kernel
        # computes the checksum in full (and sends a UDP 0 as 0xFFFF).
        l4_csum_full(buf, h, partial)
        return
    if partial:
        # Offloaded: the field holds the uncomplemented pseudo-header sum,
        # which covers the addresses but not the ports.
        s = c + (delta >> 16)
        s = (s - 1) % 0xFFFF + 1 if s else 0
    else:
        s = (c ^ 0xFFFF) + (delta >> 16) + (delta & 0xFFFF)
        s = ((s - 1) % 0xFFFF + 1 if s else 0) ^ 0xFFFF
        if not s and zero_is_none:
            # udp_fast_csum_update: 0 would mean "no checksum", so a folded
            # 0 goes out as CSUM_MANGLED_0.
            s = 0xFFFF
    put_u16(buf, coff, s)


def dnat_handler(buf: bytearray, h: IPHeader, pp: IPVSProtocol, cp: Connection, partial: bool, mangled: bool) -> None:
    """``tcp_dnat_handler`` / ``udp_dnat_handler``: the destination port
    becomes the real server's and the checksum follows (its pseudo-header
    part included, as the kernel's update takes the addresses from ``cp``)."""
    put_u16(buf, h.l4 + 2, cp.dport)
    _l4_csum_update(buf, h, pp, cp.nat_delta, partial, mangled)


def snat_handler(buf: bytearray, h: IPHeader, pp: IPVSProtocol, cp: Connection, partial: bool, mangled: bool) -> None:
    """``tcp_snat_handler`` / ``udp_snat_handler``: the source port becomes
    the virtual port, the checksum follows."""
    put_port(buf, h.l4, cp.in_key[-2:])  # in_key: proto | caddr | vaddr | cport | vport
    _l4_csum_update(buf, h, pp, cp.nat_delta ^ 0xFFFFFFFF, partial, mangled)


def nat_xmit(
    ipvs: NetnsIPVS, cp: Connection, pp: IPVSProtocol, buf: bytearray, h: IPHeader,
    partial: bool, mtu: int | None, app_ret: int,
) -> int:
    """``ip_vs_nat_xmit``: DNAT a client packet towards the real server.

    ``app_ret`` is the application helper's verdict (1 unchanged, 2 payload
    changed) already applied to ``buf``; ``h`` describes the packet as it
    is now.
    """
    l3 = h.l3
    if buf[l3 + 8] <= 1 or (mtu is not None and h.end - l3 > mtu):
        # The rare cases, the kernel's order: decrement_ttl, then the MTU check.
        if not decrement_ttl(ipvs, buf, h, cp.vaddr):
            return NF_DROP
        buf[l3 + 8] += 1  # undone: _ip_nat decrements below
        if not mtu_ok(ipvs, buf, h, mtu, cp.vaddr):
            return NF_DROP
    # The kernel's order is the other way round (dnat_handler, then the
    # header); here the header first, so a full L4 recompute reads the
    # new destination address.
    _ip_nat(buf, l3, h.daddr, cp.daddr, cp.nat_delta >> 16)
    dnat_handler(buf, h, pp, cp, partial, app_ret == 2)
    return NF_STOLEN


def snat_response(
    ipvs: NetnsIPVS, cp: Connection, pp: IPVSProtocol, buf: bytearray, h: IPHeader,
    partial: bool, app_ret: int, own_addr: bytes,
) -> int:
    """``handle_response``'s mangling: the reply leaves from VIP:vport.

    The TTL is decremented because the kernel forwards replies
    (``ip_forward`` runs before the FORWARD hook that calls ``ip_vs_out``);
    a reply whose TTL runs out gets its time exceeded from the director's
    own address ``own_addr`` (a forwarded packet's route is not local, so
    ``icmp_send`` does not use the VIP).
    """
    l3 = h.l3
    if buf[l3 + 8] <= 1:
        decrement_ttl(ipvs, buf, h, own_addr)
        return NF_DROP
    _ip_nat(buf, l3, h.saddr, cp.in_key[5:9], 0xFFFF - (cp.nat_delta >> 16))
    snat_handler(buf, h, pp, cp, partial, app_ret == 2)
    return NF_STOLEN


def nat_icmp(buf: bytearray, h: IPHeader, q: Quoted, cp: Connection, inout: bool) -> None:
    """``ip_vs_nat_icmp``: rewrite an ICMP error and the packet it quotes.

    ``inout`` True: an error from the real server travelling out to the
    client (outer source and quoted destination become the VIP).  False:
    an error from the client side travelling in to the real server.  The
    quoted L4 checksum is left alone, as in the kernel.
    """
    if inout:
        put_addr4(buf, h.saddr, cp.vaddr)
        put_addr4(buf, q.daddr, cp.vaddr)
    else:
        put_addr4(buf, h.daddr, cp.daddr)
        put_addr4(buf, q.saddr, cp.daddr)
    ip_send_check(buf, q.l3)
    if q.protocol in _PORTS_QUOTED and q.l4 + 4 <= h.end:
        if inout:
            port, off = cp.vport, 2
        else:
            port, off = cp.dport, 0
        buf[q.l4 + off] = port >> 8
        buf[q.l4 + off + 1] = port & 0xFF
    icmp = h.l4
    buf[icmp + 2] = buf[icmp + 3] = 0
    c = icmp_checksum(buf, icmp, h.end)
    buf[icmp + 2] = c >> 8
    buf[icmp + 3] = c & 0xFF
    ip_send_check(buf, h.l3)


def icmp_xmit(ipvs: NetnsIPVS, cp: Connection, buf: bytearray, h: IPHeader, q: Quoted) -> int:
    """``ip_vs_icmp_xmit`` for MASQ: an error from the client side goes in."""
    if buf[h.l3 + 8] <= 1:
        # decrement_ttl's icmp_send never answers an ICMP error with
        # another one (RFC 1122 3.2.2): the error is only dropped.
        ipvs.drops[Drop.TTL_EXCEEDED] += 1
        return NF_DROP
    if not decrement_ttl(ipvs, buf, h, cp.vaddr):
        return NF_DROP
    nat_icmp(buf, h, q, cp, inout=False)
    return NF_STOLEN


# --------------------------------------------------------------------------
# IPv6 (``ip_vs_nat_xmit_v6``, ``ip_vs_icmp_xmit_v6``, the IPv6 branches of
# ``decrement_ttl``, ``ensure_mtu_is_adequate`` and ``handle_response``).
# No header checksum, a hop limit at byte 7, 16-byte addresses, and the
# transport header wherever the extension headers end (the descriptor's
# l4); the transport handlers are the ones above.


def decrement_hoplimit(ipvs: NetnsIPVS, buf: bytearray, h: IPHeader, src: bytes) -> bool:
    """``decrement_ttl`` for IPv6: False (and a hop limit exceeded from
    ``src`` queued, unless the packet is itself an ICMPv6 error) at a hop
    limit <= 1; else one hop less."""
    hl = h.l3 + 7
    if buf[hl] <= 1:
        if not is_ineligible(buf, h):
            ipvs.outbox.append(build_error6(buf, h.l3, h.end, ICMPV6_TIME_EXCEED, ICMPV6_EXC_HOPLIMIT, src))
        ipvs.drops[Drop.TTL_EXCEEDED] += 1
        return False
    buf[hl] -= 1
    return True


def mtu_ok_v6(ipvs: NetnsIPVS, buf: bytearray, h: IPHeader, mtu: int | None, src: bytes, icmp: bool = False) -> bool:
    """``ensure_mtu_is_adequate`` for IPv6: a packet above the MTU is
    dropped (IPv6 routers never fragment), with a Packet Too Big from
    ``src`` for the first fragment of anything but an ICMPv6 error that
    IPVS forwards (``ip_vs_iph_icmp``).  A packet the driver reassembled
    is too big when its largest fragment is (``__mtu_check_toobig_v6``
    with ``frag_max_size``): against the path MTU less the tunnel's
    overhead for a tunnel, as for the other methods."""
    if mtu is None or (h.frag_max or h.end - h.l3) <= mtu:
        return True
    if not h.fragoffs and not icmp and not is_ineligible(buf, h):
        ipvs.outbox.append(build_error6(buf, h.l3, h.end, ICMPV6_PKT_TOOBIG, 0, src, info=mtu))
    return False


def nat_xmit_v6(
    ipvs: NetnsIPVS, cp: Connection, pp: IPVSProtocol, buf: bytearray, h: IPHeader, partial: bool,
    mtu: int | None, app_ret: int,
) -> int:
    """``ip_vs_nat_xmit_v6``: DNAT a client packet towards the real server
    (the arguments of :func:`nat_xmit`).

    The route's order: hop limit first (``decrement_ttl``), then the MTU
    (``ensure_mtu_is_adequate``); both answer from the VIP, the packet's
    own destination, which ``icmp6_send`` picks when it is local.  Then
    the address (no header checksum in IPv6) and the transport handler
    shared with IPv4, whose checksum update covers the 16-byte address
    through ``cp.nat_delta``.  A non-first fragment has no transport
    header to rewrite: only its address changes.
    """
    if not decrement_hoplimit(ipvs, buf, h, cp.vaddr):
        return NF_DROP
    if not mtu_ok_v6(ipvs, buf, h, mtu, cp.vaddr):
        return NF_DROP
    put_addr6(buf, h.daddr, cp.daddr)
    if not h.fragoffs:
        dnat_handler(buf, h, pp, cp, partial, app_ret == 2)
    return NF_STOLEN


def snat_response_v6(
    ipvs: NetnsIPVS, cp: Connection, pp: IPVSProtocol, buf: bytearray, h: IPHeader, partial: bool,
    app_ret: int, own_addr: bytes,
) -> int:
    """``handle_response`` for IPv6: the reply leaves from VIP:vport (the
    arguments of :func:`snat_response`).

    ``ip6_forward`` runs before the FORWARD hook, so the hop limit goes
    down here and a reply that runs out of hops gets its time exceeded
    from the director's own address ``own_addr``.
    """
    if not decrement_hoplimit(ipvs, buf, h, own_addr):
        return NF_DROP
    put_addr6(buf, h.saddr, cp.in_key[17:33])
    snat_handler(buf, h, pp, cp, partial, app_ret == 2)
    return NF_STOLEN


def icmp_xmit_v6(ipvs: NetnsIPVS, cp: Connection, buf: bytearray, h: IPHeader, q: Quoted, mtu: int | None) -> int:
    """``ip_vs_icmp_xmit_v6`` for MASQ: an ICMPv6 error from the client
    side goes in to the real server.  Errors are never answered with
    errors: a spent hop limit or a too large packet only drops it."""
    if not decrement_hoplimit(ipvs, buf, h, cp.vaddr):
        return NF_DROP
    if not mtu_ok_v6(ipvs, buf, h, mtu, cp.vaddr, icmp=True):
        return NF_DROP
    nat_icmp_v6(buf, h, q, cp, inout=False)
    return NF_STOLEN


# --------------------------------------------------------------------------
# Direct routing and tunnelling, both families
#
# The kernel has a transmitter per route family (``ip_vs_dr_xmit`` and
# ``ip_vs_tunnel_xmit`` route over IPv4, their ``_v6`` twins over IPv6),
# and each handles its packet by the packet's own family (``skb_af``):
# ``__ip_vs_get_out_rt`` and ``__ip_vs_get_out_rt_v6`` call the same
# ``decrement_ttl`` and ``ensure_mtu_is_adequate``, and the tunnels the
# same ``ip_vs_prepare_tunneled_skb`` and encapsulations.  So here: the
# shared steps are :func:`_out_rt` and :func:`tunnel_encap`, and the
# outer header's family is the real server's (a mixed-family connection
# tunnels an IPv4 packet to an IPv6 real server or the reverse).

#: IP protocol numbers of the outer header (``include/uapi/linux/in.h``).
IPPROTO_IPIP = 4
IPPROTO_IPV6 = 41
IPPROTO_GRE = 47
#: ``include/net/gue.h``: the private-flags word, and remote checksum
#: offload's option in it (start and offset of the inner checksum).
GUE_FLAG_PRIV = 0x0001
GUE_LEN_PRIV = 4
GUE_PFLAG_REMCSUM = 0x80000000
GUE_PLEN_REMCSUM = 4
#: ``include/net/gre.h``: the C bit, and the protocol types of the payloads.
GRE_CSUM = 0x8000
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
#: ``net.ipv4.ip_local_port_range``'s default: where ``udp_flow_src_port``
#: picks the GUE source port.
LOCAL_PORT_MIN, LOCAL_PORT_MAX = 32768, 60999
#: The smallest tunnel MTU ``__ip_vs_get_out_rt`` accepts (RFC 791's 68),
#: and ``__ip_vs_get_out_rt_v6``'s (``IPV6_MIN_MTU``, RFC 8200).
TUNNEL_MIN_MTU = 68
IPV6_MIN_MTU = 1280
#: Outer (source, destination, protocol) triples whose ID counter is kept;
#: beyond, the table starts afresh (the kernel's ``ip_idents`` is a fixed
#: array of hashed counters too).
IDENTS_MAX = 4096

_OUTER = struct.Struct("!BBHHHBBH4s4s")
_OUTER6 = struct.Struct("!IHBB16s16s")
_UDP = struct.Struct("!HHHH")
_GUE = struct.Struct("!BBH")
_GUE_REMCSUM = struct.Struct("!IHH")
_GRE = struct.Struct("!HH")


def _ttl_ok(ipvs: NetnsIPVS, buf: bytearray, h: IPHeader, src: bytes, icmp: bool) -> bool:
    """``decrement_ttl`` as ``__ip_vs_get_out_rt`` calls it for any method,
    for the packet's family.

    ``icmp``: the packet is an ICMP error being passed on (``ip_vs_in_icmp``);
    ``icmp_send`` never answers one with another, so it is only dropped
    (:func:`decrement_hoplimit` knows an ICMPv6 error by itself).
    """
    if h.af == AF_INET6:
        return decrement_hoplimit(ipvs, buf, h, src)
    if icmp and buf[h.l3 + 8] <= 1:
        ipvs.drops[Drop.TTL_EXCEEDED] += 1
        return False
    return decrement_ttl(ipvs, buf, h, src)


def _out_rt(
    ipvs: NetnsIPVS, cp: Connection, buf: bytearray, h: IPHeader, mtu: int | None, icmp: bool,
    tunnel_min: int = 0,
) -> bool:
    """``__ip_vs_get_out_rt`` / ``__ip_vs_get_out_rt_v6``: what they check
    of a packet they route to a real server: ``decrement_ttl``, then (a tunnel)
    the path MTU less the tunnel's overhead, ``mtu`` here, at least
    ``tunnel_min``, then ``ensure_mtu_is_adequate`` for the packet's family.

    IPv6 is never fragmented on the way: above ``mtu`` it is dropped, with
    a Packet Too Big from the VIP unless it is an ICMPv6 error passed on
    or a later fragment.  IPv4 gets "fragmentation needed" only with DF
    and not as an ICMP error passed on; a tunnelled one only with the
    ``pmtu_disc`` sysctl (else the outer packet has no DF and may be
    fragmented).  False: dropped (and any error queued).
    """
    if not _ttl_ok(ipvs, buf, h, cp.vaddr, icmp):
        return False
    if mtu is None:
        return True
    if tunnel_min and mtu < tunnel_min:
        return False
    if h.af == AF_INET6:
        return mtu_ok_v6(ipvs, buf, h, mtu, cp.vaddr, icmp)
    if icmp or (tunnel_min and not ipvs.sysctl.pmtu_disc):
        return True
    return mtu_ok(ipvs, buf, h, mtu, cp.vaddr)


def dr_xmit(
    ipvs: NetnsIPVS, cp: Connection, pp: IPVSProtocol, buf: bytearray, h: IPHeader,
    mtu: int | None, icmp: bool = False,
) -> int:
    """``ip_vs_dr_xmit``: the packet goes to the real server as it is.

    The kernel still forwards it: ``__ip_vs_get_out_rt`` decrements the
    TTL (time exceeded from the VIP at TTL <= 1) and checks the path MTU
    (a DF packet above it gets "fragmentation needed", except an ICMP error
    passed on, ``ip_vs_iph_icmp``).  The addresses and ports stay: the real
    server holds the VIP itself.  NF_STOLEN: send it to ``cp.daddr``'s
    link-layer address (the core says so to the driver).
    """
    return NF_STOLEN if _out_rt(ipvs, cp, buf, h, mtu, icmp) else NF_DROP


def dr_xmit_v6(
    ipvs: NetnsIPVS, cp: Connection, pp: IPVSProtocol, buf: bytearray, h: IPHeader,
    mtu: int | None, icmp: bool = False,
) -> int:
    """``ip_vs_dr_xmit_v6``: :func:`dr_xmit` over IPv6 (direct routing
    never mixes families): the hop limit goes down (hop limit exceeded
    from the VIP at 1), and a packet above the path MTU is dropped with a
    Packet Too Big, DF or not, since IPv6 is not fragmented on the way."""
    return NF_STOLEN if _out_rt(ipvs, cp, buf, h, mtu, icmp) else NF_DROP


def _remcsum(dest: Dest, h: IPHeader, partial: bool) -> bool:
    """GUE remote checksum offload applies: ``--tun-remcsum`` and an
    offloaded (partial) inner TCP or UDP checksum."""
    return partial and dest.tun_type == IP_VS_CONN_F_TUNNEL_TYPE_GUE and bool(
        dest.tun_flags & IP_VS_TUNNEL_ENCAP_FLAG_REMCSUM) and h.protocol in (IPPROTO_TCP, IPPROTO_UDP)


def tunnel_overhead(tun_type: int, tun_flags: int, partial: bool, outer6: bool = False) -> int:
    """The bytes a tunnel puts in front of the inner packet: what
    ``__ip_vs_get_out_rt`` takes off the route's MTU and
    ``ip_vs_tunnel_xmit`` reserves as headroom.

    IPIP: the outer IPv4 header (20), or IPv6 header (40) with ``outer6``
    (a real server with an IPv6 address).  GUE: and UDP (8) and the GUE
    header (4), plus the private flags and the remote checksum option
    (4 + 4) when ``--tun-remcsum`` meets an offloaded (partial) inner
    checksum.  GRE: and the GRE header (4), plus checksum and reserved
    word (4) with ``--tun-csum`` (``gre_calc_hlen``).
    """
    ip = 40 if outer6 else 20
    if tun_type == IP_VS_CONN_F_TUNNEL_TYPE_GUE:
        if tun_flags & IP_VS_TUNNEL_ENCAP_FLAG_REMCSUM and partial:
            return ip + 8 + 4 + GUE_LEN_PRIV + GUE_PLEN_REMCSUM
        return ip + 8 + 4
    if tun_type == IP_VS_CONN_F_TUNNEL_TYPE_GRE:
        return ip + (8 if tun_flags & IP_VS_TUNNEL_ENCAP_FLAG_CSUM else 4)
    return ip


def ecn_encapsulate(tos: int) -> int:
    """``INET_ECN_encapsulate(tos, tos)``: the outer tos keeps the DSCP and
    the ECN codepoint, except that CE becomes ECT(0) (RFC 6040's normal mode)."""
    return (tos & 0xFC) | (2 if tos & 3 == 3 else tos & 3)


def flow_src_port(buf: bytearray | bytes, h: IPHeader) -> int:
    """``udp_flow_src_port``: a source port in the local port range from a
    hash of the inner flow (addresses, protocol and, for TCP/UDP/SCTP,
    ports), so one flow keeps one port and flows spread over the range."""
    key = bytes(buf[h.saddr : h.saddr + 2 * h.alen]) + bytes((h.protocol,))
    if h.protocol in _PORTS_QUOTED and h.l4 + 4 <= h.end:
        key += bytes(buf[h.l4 : h.l4 + 4])
    x = zlib.crc32(key)
    x ^= (x << 16) & 0xFFFFFFFF
    return ((x * (LOCAL_PORT_MAX - LOCAL_PORT_MIN)) >> 32) + LOCAL_PORT_MIN


def ip_ident(ipvs: NetnsIPVS, saddr: bytes, daddr: bytes, protocol: int) -> int:
    """``__ip_select_ident``: the next ID for an outer header without DF,
    counted per (source, destination, protocol)."""
    key = saddr + daddr + bytes((protocol,))
    idents = ipvs.ip_idents
    v = idents.get(key)
    if v is None:
        if len(idents) >= IDENTS_MAX:
            idents.clear()
        v = zlib.crc32(key) & 0xFFFF
    idents[key] = (v + 1) & 0xFFFF
    return v


def tunnel_xmit(
    ipvs: NetnsIPVS, cp: Connection, pp: IPVSProtocol, buf: bytearray, h: IPHeader,
    mtu: int | None, partial: bool, saddr: bytes, icmp: bool = False,
) -> int:
    """``ip_vs_tunnel_xmit``: wrap the packet in IPv4 for ``cp.daddr``, an
    IPv4 real server (the packet itself may be IPv4 or, for an IPv6
    service with IPv4 real servers, IPv6).

    The kernel's order: the inner TTL (hop limit) is decremented; the MTU
    towards the real server less :func:`tunnel_overhead` must be at least
    68; then :func:`_out_rt`'s MTU rules for the inner packet's family
    against that MTU (IPv4: "fragmentation needed" only with
    ``pmtu_disc`` and DF; IPv6: Packet Too Big).  Then
    ``ip_vs_prepare_tunneled_skb`` and the encapsulation (see
    :func:`tunnel_encap`).

    ``partial``: the inner L4 checksum is offloaded (holds only the
    pseudo-header sum).  The real server's tunnel sees bytes, so the inner
    checksum is completed here, as the sending NIC or ``skb_checksum_help``
    would; except with GUE ``--tun-remcsum``, where the GUE option tells
    the real server where to complete it (remote checksum offload) and it
    stays partial.  Either way the frame leaves with no checksum left to
    offload.  ``saddr`` is the outer source.
    """
    return _tunnel_xmit(ipvs, cp, pp, buf, h, mtu, partial, saddr, icmp, False)


def tunnel_xmit_v6(
    ipvs: NetnsIPVS, cp: Connection, pp: IPVSProtocol, buf: bytearray, h: IPHeader,
    mtu: int | None, partial: bool, saddr: bytes, icmp: bool = False,
) -> int:
    """``ip_vs_tunnel_xmit_v6``: :func:`tunnel_xmit` with an outer IPv6
    header, for an IPv6 real server (IPv6-in-IPv6, or IPv4-in-IPv6 for an
    IPv4 service with IPv6 real servers): 40 bytes of outer header in the
    overhead, and 1280 (``IPV6_MIN_MTU``) the smallest MTU left for the
    inner packet.  ``saddr`` is the director's IPv6 address towards the
    real server."""
    return _tunnel_xmit(ipvs, cp, pp, buf, h, mtu, partial, saddr, icmp, True)


def _tunnel_xmit(
    ipvs: NetnsIPVS, cp: Connection, pp: IPVSProtocol, buf: bytearray, h: IPHeader,
    mtu: int | None, partial: bool, saddr: bytes, icmp: bool, outer6: bool,
) -> int:
    dest = cp.dest
    if dest is None:
        return NF_DROP  # __ip_vs_get_out_rt: a tunnel needs its dest
    overhead = tunnel_overhead(dest.tun_type, dest.tun_flags, _remcsum(dest, h, partial), outer6)
    if not _out_rt(ipvs, cp, buf, h, None if mtu is None else mtu - overhead, icmp,
                   IPV6_MIN_MTU if outer6 else TUNNEL_MIN_MTU):
        return NF_DROP
    # The outer length field: IPv4's total length, IPv6's payload length.
    if h.end - h.l3 + overhead - (40 if outer6 else 0) > 0xFFFF:
        ipvs.drops[Drop.BAD_TOTLEN] += 1
        return NF_DROP
    tunnel_encap(ipvs, cp, pp, buf, h, partial, saddr)
    return NF_STOLEN


def tunnel_encap(
    ipvs: NetnsIPVS, cp: Connection, pp: IPVSProtocol, buf: bytearray, h: IPHeader, partial: bool, saddr: bytes,
) -> None:
    """The wrapping half of ``ip_vs_tunnel_xmit`` and
    ``ip_vs_tunnel_xmit_v6`` (from ``ip_vs_prepare_tunneled_skb`` on),
    without their checks: the outer headers of ``cp``'s real server go in
    front of the packet at ``h.l3``, of the real server's family.

    ``ip_vs_prepare_tunneled_skb`` reads the inner header: the next
    protocol (4 for IPv4, 41 for IPv6), the tos or traffic class with the
    ECN bits encapsulated (:func:`ecn_encapsulate`), the TTL or hop limit,
    and DF (IPv4 only, and only with ``pmtu_disc``).  Then the
    encapsulation: ``--tun-type ipip`` (the next protocol itself), ``gue``
    (UDP from :func:`flow_src_port` to ``--tun-port``, the GUE header's
    protocol the next protocol; UDP checksum 0 unless ``--tun-csum`` or
    ``--tun-remcsum``) or ``gre`` (protocol type 0x0800 or 0x86DD; the
    checksum field with ``--tun-csum``).  The outer IPv4 header: that tos,
    DF and TTL, the ID of ``ip_select_ident`` (0 with DF); the outer IPv6
    header: that traffic class, flow label 0, that hop limit.

    The driver also calls it for each segment of a GSO super-frame it had
    to cut itself (see :mod:`ipvs.driver.afpacket`).
    """
    # Both callers have checked that the connection has its dest (a cast,
    # not a check: this runs for every tunnelled packet).
    dest = cast("Dest", cp.dest)
    daddr = cp.daddr
    outer6 = len(daddr) == 16
    l3, end = h.l3, h.end
    tun_type, tun_flags = dest.tun_type, dest.tun_flags
    remcsum = _remcsum(dest, h, partial)
    overhead = tunnel_overhead(tun_type, tun_flags, remcsum, outer6)
    inner_len = end - l3
    if partial and not remcsum and h.protocol in (IPPROTO_TCP, IPPROTO_UDP):
        l4_csum_full(buf, h)
    # ip_vs_prepare_tunneled_skb.
    if h.af == AF_INET6:
        next_protocol = IPPROTO_IPV6
        tos = ecn_encapsulate(((buf[l3] & 0x0F) << 4) | (buf[l3 + 1] >> 4))
        ttl = buf[l3 + 7]
        df = 0
    else:
        next_protocol = IPPROTO_IPIP
        tos = ecn_encapsulate(buf[l3 + 1])
        ttl = buf[l3 + 8]
        df = (buf[l3 + 6] << 8) & IP_DF if ipvs.sysctl.pmtu_disc else 0
    ip = 40 if outer6 else 20
    outer = bytearray(overhead)
    if tun_type == IP_VS_CONN_F_TUNNEL_TYPE_GUE:
        protocol = IPPROTO_UDP
        optlen = GUE_LEN_PRIV + GUE_PLEN_REMCSUM if remcsum else 0
        _UDP.pack_into(outer, ip, flow_src_port(buf, h), dest.tun_port, overhead - ip + inner_len, 0)
        _GUE.pack_into(outer, ip + 8, optlen >> 2, next_protocol, GUE_FLAG_PRIV if remcsum else 0)
        if remcsum:
            # Offsets from the start of the GUE payload (the inner packet).
            start = h.l4 - l3
            _GUE_REMCSUM.pack_into(outer, ip + 12, GUE_PFLAG_REMCSUM, start, start + pp.csum_offset)
    elif tun_type == IP_VS_CONN_F_TUNNEL_TYPE_GRE:
        protocol = IPPROTO_GRE
        _GRE.pack_into(outer, ip, GRE_CSUM if tun_flags & IP_VS_TUNNEL_ENCAP_FLAG_CSUM else 0,
                       ETH_P_IPV6 if next_protocol == IPPROTO_IPV6 else ETH_P_IP)
    else:
        protocol = next_protocol
    if outer6:
        _OUTER6.pack_into(outer, 0, (6 << 28) | (tos << 20), overhead - 40 + inner_len, protocol, ttl, saddr, daddr)
    else:
        # ip_select_ident before the "ignore_df" hack: DF means ID 0.
        ident = 0 if df else ip_ident(ipvs, saddr, daddr, protocol)
        _OUTER.pack_into(outer, 0, 0x45, tos, overhead + inner_len, ident, df, ttl, protocol, 0, saddr, daddr)
        ip_send_check(outer, 0)
    buf[l3:l3] = outer
    if protocol == IPPROTO_UDP and tun_flags & (IP_VS_TUNNEL_ENCAP_FLAG_CSUM | IP_VS_TUNNEL_ENCAP_FLAG_REMCSUM):
        # udp_set_csum / udp6_set_csum: the full checksum (0 goes out as 0xFFFF).
        # (The outer header just built always parses: no Drop to handle.)
        l4_csum_full(buf, cast(IPHeader, parse(buf, l3)))
    elif protocol == IPPROTO_GRE and tun_flags & IP_VS_TUNNEL_ENCAP_FLAG_CSUM:
        # gre_build_header: the checksum of the GRE header and its payload.
        put_u16(buf, l3 + ip + 4, ~csum_words(buf[l3 + ip : l3 + overhead + inner_len]) & 0xFFFF)
