"""Forwarding methods: packets rewritten and handed back for transmission.

Mirrors ``net/netfilter/ipvs/ip_vs_xmit.c`` for VS/NAT (``ip_vs_nat_xmit``
and ``ip_vs_icmp_xmit``), plus the L4 NAT handlers of
``ip_vs_proto_tcp.c`` / ``ip_vs_proto_udp.c`` (``tcp_dnat_handler``,
``tcp_snat_handler`` and the UDP twins), which share one implementation
here because they differ only in the checksum offset and UDP's
zero-checksum rule.

Nothing here sends anything: a function rewrites the packet in place and
returns a verdict; generated ICMP errors go to ``ipvs.outbox``.  Routing is
the driver's job; the one routing fact the kernel's xmit uses, the path
MTU, comes in as ``mtu`` (None: no MTU check).

DR and TUN come with their own issue; their connections would get
``NOOUTPUT`` already from the control plane.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ipvs.packet import (
    ICMP_DEST_UNREACH,
    ICMP_EXC_TTL,
    ICMP_FRAG_NEEDED,
    ICMP_TIME_EXCEEDED,
    IP_DF,
    IPPROTO_TCP,
    IPPROTO_UDP,
    Drop,
    IPHeader,
    icmp_checksum,
    ip_send_check,
    l4_csum_full,
    l4_csum_nat,
)
from ipvs.proto.icmp import Quoted, build_error

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.conn import Connection
    from ipvs.netns import NetnsIPVS

NF_DROP = 0
NF_ACCEPT = 1
NF_STOLEN = 2  # rewritten in place: route by the IP destination and send


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
    if mtu is None or h.end - h.l3 <= mtu or not (buf[h.l3 + 6] << 8) & IP_DF:
        return True
    ipvs.outbox.append(build_error(buf, h.l3, h.end, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, src, info=mtu))
    return False


def l4_nat(
    buf: bytearray, h: IPHeader, port_off: int, old_addr: bytes, new_addr: bytes,
    old_port: int, new_port: int, partial: bool, payload_changed: bool,
) -> None:
    """The TCP/UDP half of a NAT rewrite: port and checksum.

    ``port_off`` is 0 for the source port (SNAT) and 2 for the destination
    port (DNAT).  Address bytes in the IP header must already be rewritten
    when ``payload_changed`` asks for a full recompute.
    """
    l4 = h.l4
    buf[l4 + port_off] = new_port >> 8
    buf[l4 + port_off + 1] = new_port & 0xFF
    coff = l4 + (16 if h.protocol == IPPROTO_TCP else 6)
    if payload_changed:
        l4_csum_full(buf, h, partial)
    elif h.protocol == IPPROTO_UDP and buf[coff] == 0 and buf[coff + 1] == 0 and not partial:
        # No checksum in the datagram: the kernel's incremental branch is
        # skipped and a full checksum is computed.
        l4_csum_full(buf, h)
    else:
        l4_csum_nat(buf, coff, old_addr, new_addr, old_port, new_port, partial)


def nat_xmit(
    ipvs: NetnsIPVS, cp: Connection, buf: bytearray, h: IPHeader, partial: bool, mtu: int | None,
    app_ret: int,
) -> int:
    """``ip_vs_nat_xmit``: DNAT a client packet towards the real server.

    ``app_ret`` is the application helper's verdict (1 unchanged, 2 payload
    changed) already applied to ``buf``; ``h`` must describe the packet as
    it is now.
    """
    if not decrement_ttl(ipvs, buf, h, cp.vaddr):
        return NF_DROP
    if not mtu_ok(ipvs, buf, h, mtu, cp.vaddr):
        return NF_DROP
    daddr = cp.daddr
    if h.protocol in (IPPROTO_TCP, IPPROTO_UDP):
        buf[h.daddr : h.daddr + 4] = daddr
        l4_nat(buf, h, 2, cp.vaddr, daddr, cp.vport, cp.dport, partial, app_ret == 2)
    else:
        buf[h.daddr : h.daddr + 4] = daddr
    ip_send_check(buf, h.l3)
    return NF_STOLEN


def snat_response(ipvs: NetnsIPVS, cp: Connection, buf: bytearray, h: IPHeader, partial: bool, app_ret: int) -> int:
    """``handle_response``'s mangling: the reply leaves from VIP:vport.

    The TTL is decremented because the kernel forwards replies
    (``ip_forward`` runs before the FORWARD hook that calls ``ip_vs_out``).
    """
    if not decrement_ttl(ipvs, buf, h, cp.vaddr):
        return NF_DROP
    buf[h.saddr : h.saddr + 4] = cp.vaddr
    l4_nat(buf, h, 0, cp.daddr, cp.vaddr, cp.dport, cp.vport, partial, app_ret == 2)
    ip_send_check(buf, h.l3)
    return NF_STOLEN


def nat_icmp(buf: bytearray, h: IPHeader, q: Quoted, cp: Connection, inout: bool) -> None:
    """``ip_vs_nat_icmp``: rewrite an ICMP error and the packet it quotes.

    ``inout`` True: an error from the real server travelling out to the
    client (outer source and quoted destination become the VIP).  False:
    an error from the client side travelling in to the real server.  The
    quoted L4 checksum is left alone, as in the kernel.
    """
    if inout:
        buf[h.saddr : h.saddr + 4] = cp.vaddr
        buf[q.daddr : q.daddr + 4] = cp.vaddr
    else:
        buf[h.daddr : h.daddr + 4] = cp.daddr
        buf[q.saddr : q.saddr + 4] = cp.daddr
    ip_send_check(buf, q.l3)
    if q.protocol in (IPPROTO_TCP, IPPROTO_UDP) and q.l4 + 4 <= h.end:
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
    if not decrement_ttl(ipvs, buf, h, cp.vaddr):
        return NF_DROP
    nat_icmp(buf, h, q, cp, inout=False)
    return NF_STOLEN
