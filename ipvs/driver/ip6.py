"""The driver's IPv6 path: neighbour discovery, routes, local answers.

What ``net/ipv6/`` (``ip6_input.c``, ``ip6_output.c``, ``ndisc.c``,
``icmp.c``, ``route.c``) does around ``ip_vs_core.c`` for IPv6, beside
the IPv4 path of :mod:`ipvs.driver.afpacket`, which owns the ports, the
rings and the outbox and hands every frame of EtherType 0x86DD here.

A port takes part when it has an IPv6 address (``--outer-addr6``,
``--inner-addr6``, ``--addr6``):

* neighbour discovery (:mod:`ipvs.driver.neigh`): solicitations for the
  port's address (and, on the outer side, the IPv6 VIPs) are answered
  and their senders learnt; next hops are resolved through their
  solicited-node group and probed when stale; an unsolicited
  advertisement goes out for each new VIP (IPv6's gratuitous ARP);
* packets go to :meth:`ipvs.core.Director.process` as IPv4 ones do;
  ``NF_STOLEN`` ones are routed (connected prefixes, then ``--route6``)
  and sent, a packet larger than the link answered with Packet Too Big
  (``ip6_forward``: routers never fragment IPv6); for what comes from the
  real servers' side that check comes first, before the core, as
  ``ip6_forward`` makes it before the FORWARD hook;
* ``NF_ACCEPT`` ones to the director's own addresses or a VIP get a
  host's answers in spare mode: echo replies, TCP resets, port
  unreachables (``icmpv6_send`` never answers an ICMPv6 error).  In
  shared mode the kernel holds those addresses and answers them, except
  TCP, UDP and SCTP to a VIP, which the ip6 nftables table
  (:mod:`ipvs.driver.nft`) hides from it: the driver answers those
  (resets, port unreachables), as the IPv4 path does.

Fragments are reassembled first and the result fragmented again no
larger than the largest fragment that came (:mod:`ipvs.driver.frag6`), as
``nf_defrag_ipv6`` and ``ip6_fragment`` do around IPVS.  The largest
fragment goes to the core with the packet
(:attr:`ipvs.core.Director.frag_max`, the kernel's ``frag_max_size``):
it is what meets the MTU (less a tunnel's overhead) in
``ensure_mtu_is_adequate``, so a datagram whose fragments are too big for
a tunnel gets Packet Too Big, as from the kernel.

With ``--forward`` transit traffic is routed (``ip6_forward``: one hop
less), which a DR or TUN real server's direct replies need when the
director is its gateway.

The ICMPv6 errors the director makes (its own and the core's, but Packet
Too Big) are rate limited per destination as ``icmpv6_xrlim_allow`` does
(:class:`ipvs.driver.icmplimit.Icmp6RateLimit`: ``icmpv6_time`` 1000 ms
shifted by the route's prefix length, burst 6, ``icmpv6_ratemask``
"0-1,3-127"), after the host-wide bucket the IPv4 errors use too
(``icmpv6_global_allow``); the refused ones are counted in
``drop_icmp6_ratelimit``.

Differences from the kernel, and why: no router advertisements; a next
hop that never answers gets its waiting packets answered with address
unreachable (``ndisc_error_report``, through the core's LOCAL_OUT step).
"""

from __future__ import annotations

import ipaddress
import struct
from typing import TYPE_CHECKING

from ipvs.driver.frag6 import Reassembler6, fragment6
from ipvs.driver.icmplimit import Icmp6RateLimit
from ipvs.driver.neigh import ALL_NODES, na_frame, ns_frame, parse_ndisc
from ipvs.ip_vs import NF_ACCEPT, NF_DROP, NF_STOLEN
from ipvs.packet import (
    ICMPV6_DEST_UNREACH,
    ICMPV6_ECHO_REPLY,
    ICMPV6_ECHO_REQUEST,
    ICMPV6_EXC_HOPLIMIT,
    ICMPV6_PKT_TOOBIG,
    ICMPV6_PORT_UNREACH,
    ICMPV6_TIME_EXCEED,
    NDISC_NEIGHBOUR_ADVERTISEMENT,
    NDISC_NEIGHBOUR_SOLICITATION,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    IPHeader,
    icmp6_checksum,
    l4_csum_full,
    parse,
    put_u16,
)
from ipvs.proto.icmpv6 import IPV6_DEFAULT_HOPLIMIT, build_error6, is_ineligible
from ipvs.uapi import AF_INET6, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.driver.afpacket import AFPacketDriver, Port

#: ``ICMPV6_ADDR_UNREACH``: the code of a destination unreachable for a
#: neighbour that never answered.
ICMPV6_ADDR_UNREACH = 3
ETH_IPV6 = b"\x86\xdd"
_ETH_HDR = struct.Struct("6s6s2s")


def parse_net6(text: str) -> tuple[bytes, int]:
    """'2001:db8::1/64' -> (packed address, prefix length)."""
    iface = ipaddress.IPv6Interface(text)
    return iface.ip.packed, iface.network.prefixlen


def _link_local(buf: bytearray, at: int) -> bool:
    """Is the address at ``buf[at:]`` link-local (fe80::/10)?"""
    return buf[at] == 0xFE and buf[at + 1] & 0xC0 == 0x80


def _mask(plen: int) -> int:
    return ((1 << plen) - 1) << (128 - plen)


class IPv6Path:
    """The IPv6 half of one :class:`~ipvs.driver.afpacket.AFPacketDriver`."""

    def __init__(self, drv: AFPacketDriver, routes: list[tuple[bytes, int, bytes]] | None = None) -> None:
        self.drv = drv
        self.d = drv.d
        self.ipvs = drv.ipvs
        self.ports = [p for p in drv.ports if p.addr6]
        for p in self.ports:
            p.nd_for = {p.addr6}
        self.outer = next((p for p in self.ports if p.role in ("outer", "both")), None)
        #: (network, mask, prefix length, port, gateway or 0), longest prefix first.
        self.routes: list[tuple[int, int, int, Port, int]] = []
        for p in self.ports:
            m = _mask(p.plen6)
            self.routes.append((int.from_bytes(p.addr6, "big") & m, m, p.plen6, p, 0))
        for net, plen, gw in routes or ():
            gwi = int.from_bytes(gw, "big")
            gp = next((r[3] for r in self.routes if gwi & r[1] == r[0]), None)
            if gp is None:
                raise ValueError(f"gateway {ipaddress.IPv6Address(gw)} is on no interface's network")
            m = _mask(plen)
            self.routes.append((int.from_bytes(net, "big") & m, m, plen, gp, gwi))
        self.routes.sort(key=lambda r: -r[2])
        self.frags = Reassembler6(drv.hz)
        self.icmp_limit = Icmp6RateLimit(drv.hz, global_credit=drv.icmp_global)
        #: Identification of the fragments this path makes (ipv6_select_ident).
        self.frag_id = 0
        self.vips: set[bytes] = set()
        self.own = {p.addr6 for p in self.ports}
        #: The same as next hops are held (ints): one of them is a real
        #: server on the director itself.
        self.own_nh = frozenset(int.from_bytes(a, "big") for a in self.own)
        #: Packets no longer than this fit every link (the MTU checks are skipped).
        self.min_mtu = min((p.mtu for p in self.ports), default=0)
        self.local: set[bytes] = set(self.own)

    # ---------------------------------------------------------- services

    def sync_services(self, fw_vips: set[bytes]) -> None:
        """The IPv6 VIPs, with ``fw_vips``, those of the fwmark services
        (as the mark rules name them, ``fwmark_vips``): answered in
        neighbour discovery on the outer side, announced by an unsolicited
        advertisement when new."""
        vips = {s.addr for s in self.ipvs.svc_table.values() if s.af == AF_INET6 and not s.fwmark} | fw_vips
        o = self.outer
        if o is not None:
            if o.ring is not None:
                for vip in sorted(vips - self.vips):
                    f = na_frame(o.mac, vip, ALL_NODES, None, solicited=False)
                    o.queue(f, len(f))
                    self.drv.counts["unsolicited_na"] += 1
            o.nd_for = {o.addr6} | vips
        self.vips = vips
        if self.drv.mode == "spare":
            self.local = self.own | vips

    # ---------------------------------------------------------- receive

    def rx(self, p: Port, buf: bytearray) -> None:
        """One frame of EtherType 0x86DD (vnet header first) from ``p``."""
        drv = self.drv
        L3 = 24
        if not p.addr6:
            drv.drops["ipv6_off"] += 1
            return
        if buf[10:16] != p.mac and not buf[10] & 1:
            drv.drops["otherhost"] += 1
            return
        h = parse(buf, L3)
        if type(h) is not IPHeader:
            drv.drops["bad_ip6"] += 1
            return
        if h.protocol == IPPROTO_ICMPV6 and h.l4 + 1 <= h.end and buf[h.l4] in (
                NDISC_NEIGHBOUR_SOLICITATION, NDISC_NEIGHBOUR_ADVERTISEMENT):
            self._ndisc_in(p, buf, h)
            return
        if buf[10] & 1:
            drv.drops["ip6_multicast"] += 1  # (MLD, router solicitations, ...: not the director's business)
            return
        maxfrag = 0
        if h.fragoffs or h.more_frags:
            got = self.frags.add(buf, L3, drv.now)
            if got is None:
                return
            buf, maxfrag = got
            h = parse(buf, L3)
            if type(h) is not IPHeader:
                drv.drops["bad_ip6"] += 1
                return
        if p.role != "outer" and 40 + (buf[L3 + 4] << 8 | buf[L3 + 5]) > self.min_mtu and self._too_big(buf, maxfrag):
            return
        d = self.d
        # GSO super-frames are not checked (skb_is_gso); a reassembled
        # datagram is too big only if its largest fragment is
        # (__mtu_check_toobig_v6), against the MTU the core works out for
        # the connection's method (less a tunnel's overhead).
        d.mtu = None if buf[1] else drv.inner_mtu
        d.frag_max = maxfrag
        verdict = d.process(buf, L3, drv.now, bool(buf[0] & 1))
        if verdict == NF_STOLEN:
            drv.counts["ipvs6"] += 1
            if d.xmit_to is not None:
                drv.fwd_out(buf, maxfrag)  # DR or TUN: to the real server
            else:
                self.route_out(buf, L3, maxfrag)
        elif verdict == NF_ACCEPT:
            daddr = bytes(buf[L3 + 24 : L3 + 40])
            if daddr in self.local:
                if drv.mode == "spare":
                    self._local_in(buf, parse(buf, L3))
                # (shared: the kernel has the address and answers it)
            elif daddr in self.vips:
                # Shared mode: the nftables rules hide TCP, UDP and SCTP to
                # a VIP from the kernel, so answer closed ports in its
                # place; it keeps ICMPv6 (echo, errors).
                h = parse(buf, L3)
                if type(h) is IPHeader and h.protocol != IPPROTO_ICMPV6:
                    self._local_in(buf, h)
            elif drv.forward and daddr not in self.own:
                self._forward(buf, maxfrag)
            else:
                drv.drops["not_forwarded6"] += 1
        else:
            drv.drops["ipvs_drop"] += 1

    def _too_big(self, buf: bytearray, maxfrag: int) -> bool:
        """``ip6_forward``'s MTU check (``ip6_pkt_too_big``) for what comes
        from the real servers' side and is not for the director itself.

        The kernel checks before the FORWARD hook, where IPVS sees the real
        servers' replies (NAT's to rewrite, DR/TUN's direct ones to count),
        so a reply too big for the clients' link is answered with Packet
        Too Big quoting it as the real server sent it, back to its source,
        and IPVS never sees it.  (Towards the real servers the core checks,
        with ``Director.mtu``; the IPv4 path's ``_too_big`` is the same
        step.)  A GSO super-frame's segments fit; a reassembled datagram is
        too big only if one of its fragments was.  True: the packet was
        answered and dropped."""
        L3 = 24
        daddr = bytes(buf[L3 + 24 : L3 + 40])
        if buf[1] or daddr in self.local or daddr in self.vips:
            return False  # GSO, or delivered to the director (LOCAL_IN): not forwarded
        r = self.route(daddr)
        if r is None:
            return False
        mtu = r[0].mtu
        n = 40 + ((buf[L3 + 4] << 8) | buf[L3 + 5])
        if n <= mtu or (maxfrag and maxfrag <= mtu):
            return False
        h = parse(buf, L3)
        if type(h) is IPHeader and not is_ineligible(buf, h):
            src = self.own_address(bytes(buf[L3 + 8 : L3 + 24])) or r[0].addr6
            self.ipvs.outbox.append(build_error6(buf, L3, L3 + n, ICMPV6_PKT_TOOBIG, 0, src, info=mtu))
        self.drv.drops["pkt_too_big6"] += 1
        return True

    def _ndisc_in(self, p: Port, buf: bytearray, h: IPHeader) -> None:
        drv = self.drv
        nd = parse_ndisc(buf, h)
        if nd is None:
            drv.drops["bad_ndisc"] += 1
            return
        icmp_type, _flags, target, lladdr = nd
        src = bytes(buf[h.saddr : h.saddr + 16])
        ours = target in p.nd_for
        if lladdr is not None and lladdr != p.mac and any(src):
            # A solicitation aimed at us creates the sender's entry (as
            # ndisc_recv_ns does); an advertisement only updates one.
            ip = int.from_bytes(src if icmp_type == NDISC_NEIGHBOUR_SOLICITATION else target, "big")
            for qbuf, n in p.neigh6.confirm(ip, lladdr, drv.now,
                                            create=ours and icmp_type == NDISC_NEIGHBOUR_SOLICITATION):
                self._send(p, qbuf, n, lladdr, 0)
            if p.neigh6.changed:
                p.neigh6.changed = False
        if icmp_type == NDISC_NEIGHBOUR_SOLICITATION and ours:
            drv.counts["na_sent"] += 1
            if any(src):
                f = na_frame(p.mac, target, src, bytes(buf[16:22]))
            else:
                # Duplicate address detection: answer all nodes, not solicited
                # (RFC 4861 7.2.4).
                f = na_frame(p.mac, target, ALL_NODES, None, solicited=False)
            p.queue(f, len(f))

    def _forward(self, buf: bytearray, maxfrag: int) -> None:
        """``ip6_forward`` for transit traffic (``--forward``), such as a
        DR or TUN real server's direct replies from the VIP (which the core
        has counted): nothing to or from a link-local address; at hop limit
        1 or less a hop limit exceeded back to the sender (not about an
        ICMPv6 error), else one hop less and routed."""
        drv = self.drv
        L3 = 24
        h = parse(buf, L3)
        if type(h) is not IPHeader or _link_local(buf, L3 + 8) or _link_local(buf, L3 + 24):
            drv.drops["not_forwarded6"] += 1
            return
        if buf[L3 + 7] <= 1:
            if not is_ineligible(buf, h):
                src = self.own_address(bytes(buf[L3 + 8 : L3 + 24]))
                if src is not None:
                    self.ipvs.outbox.append(build_error6(buf, L3, h.end, ICMPV6_TIME_EXCEED, ICMPV6_EXC_HOPLIMIT,
                                                         src))
            drv.drops["hoplimit6"] += 1
            return
        buf[L3 + 7] -= 1
        drv.counts["forwarded6"] += 1
        self.route_out(buf, L3, maxfrag)

    # ---------------------------------------------------------- local

    def _local_in(self, buf: bytearray, h) -> None:
        """Spare mode: the director's own IPv6 addresses and VIPs answer
        like a host's (``icmpv6_echo_reply``, ``tcp_v6_send_reset``,
        ``icmpv6_send`` port unreachable)."""
        if type(h) is not IPHeader:
            return
        drv = self.drv
        dst = bytes(buf[h.daddr : h.daddr + 16])
        proto = h.protocol
        if proto == IPPROTO_ICMPV6:
            if h.end - h.l4 >= 8 and buf[h.l4] == ICMPV6_ECHO_REQUEST and not h.fragoffs:
                out = bytearray(buf[h.l3 : h.end])
                out[8:24], out[24:40] = buf[h.daddr : h.daddr + 16], buf[h.saddr : h.saddr + 16]
                out[7] = IPV6_DEFAULT_HOPLIMIT
                oh = parse(out, 0)
                if type(oh) is not IPHeader:
                    return
                out[oh.l4] = ICMPV6_ECHO_REPLY
                put_u16(out, oh.l4 + 2, 0)
                put_u16(out, oh.l4 + 2, icmp6_checksum(out, oh))
                drv.counts["echo6_reply"] += 1
                self.ipvs.outbox.append(out)
            return
        if proto == IPPROTO_TCP:
            self._tcp_reset(buf, h, dst)
        elif proto == IPPROTO_UDP and not is_ineligible(buf, h):
            self.ipvs.outbox.append(build_error6(buf, h.l3, h.end, ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH, dst))
        else:
            drv.drops["local6_unhandled"] += 1

    def _tcp_reset(self, buf: bytearray, h: IPHeader, dst: bytes) -> None:
        l4 = h.l4
        if h.end - l4 < 20 or h.fragoffs:
            return
        flags = buf[l4 + 13]
        if flags & TCP_RST:
            return
        sport, dport, seq, ack = struct.unpack_from("!HHII", buf, l4)
        doff = (buf[l4 + 12] >> 4) << 2
        out = bytearray(60)
        struct.pack_into("!IHBB16s16s", out, 0, 6 << 28, 20, IPPROTO_TCP, IPV6_DEFAULT_HOPLIMIT, dst,
                         bytes(buf[h.saddr : h.saddr + 16]))
        if flags & TCP_ACK:
            struct.pack_into("!HHIIBBH", out, 40, dport, sport, ack, 0, 5 << 4, TCP_RST, 0)
        else:
            seglen = h.end - l4 - doff + bool(flags & TCP_SYN) + bool(flags & TCP_FIN)
            struct.pack_into("!HHIIBBH", out, 40, dport, sport, 0, (seq + seglen) & 0xFFFFFFFF, 5 << 4,
                             TCP_RST | TCP_ACK, 0)
        oh = parse(out, 0)
        assert type(oh) is IPHeader  # (built right here: always parses)
        l4_csum_full(out, oh)
        self.drv.counts["tcp6_reset"] += 1
        self.ipvs.outbox.append(out)

    # ---------------------------------------------------------- transmit

    def route(self, daddr: bytes) -> tuple[Port, int] | None:
        """(port, next hop as an int) for ``daddr``: longest prefix match."""
        a = int.from_bytes(daddr, "big")
        for net, mask, _plen, port, gw in self.routes:
            if a & mask == net:
                return port, gw or a
        return None

    def route_plen(self, daddr: bytes) -> int | None:
        """The prefix length of the route to ``daddr`` (None: no route)."""
        a = int.from_bytes(daddr, "big")
        return next((plen for net, mask, plen, _port, _gw in self.routes if a & mask == net), None)

    def icmp_allowed(self, daddr: bytes, icmp_type: int) -> bool:
        """``icmpv6_xrlim_allow`` (in ``net/ipv6/icmp.c``) for an ICMPv6 message the director makes
        to ``daddr``; a refused one is counted (``drop_icmp6_ratelimit``).
        Without a route the kernel refuses it too; here route_out drops and
        counts it (``no_route6``)."""
        plen = self.route_plen(daddr)
        if plen is None or self.icmp_limit.allow(daddr, icmp_type, plen, self.drv.now):
            return True
        self.drv.drops["icmp6_ratelimit"] += 1
        return False

    def send_own(self, pkt: bytearray) -> None:
        """Route and send an IPv6 packet the director made (the outbox): an
        ICMPv6 message passes the rate limit first, as ``icmp6_send`` and
        ``icmpv6_echo_reply`` check it.  The director is its source, so one
        too big for the link (an echo reply to a large ping) leaves in
        fragments, as a host's own packets do (``ip6_fragment``)."""
        if pkt[6] == IPPROTO_ICMPV6 and len(pkt) >= 41 and not self.icmp_allowed(bytes(pkt[24:40]), pkt[40]):
            return
        self.drv.counts["icmp6_out"] += 1
        self.route_out(bytearray(24) + pkt, 24, ignore_df=True)

    def own_address(self, dst: bytes) -> bytes | None:
        """The director's address on the route towards ``dst``."""
        r = self.route(dst)
        return r[0].addr6 if r else None

    def route_out(self, buf: bytearray, l3: int, maxfrag: int = 0, via: bytes | None = None,
                  ignore_df: bool = False) -> None:
        """Route the IPv6 packet at ``buf[l3:]`` and send it; a datagram
        that came in fragments (``maxfrag``, its largest) leaves in
        fragments no larger (``ip6_fragment``).  ``via``: route it as if
        its destination were this address (direct routing: the packet
        keeps the VIP and goes to the real server's MAC).  ``ignore_df``:
        a packet the director itself sends is fragmented when too big for
        the link instead of answered: a tunnel's outer packet (only a GSO
        segment can be: the core checked the others), as ``ip6_fragment``
        does for the IPVS transmitters' ``skb->ignore_df``, and the
        director's own replies (:meth:`send_own`)."""
        drv = self.drv
        daddr = bytes(buf[l3 + 24 : l3 + 40]) if via is None else via
        r = self.route(daddr)
        if r is None:
            drv.drops["no_route6"] += 1
            return
        port, nh = r
        n = l3 + 40 + ((buf[l3 + 4] << 8) | buf[l3 + 5])
        if (maxfrag or ignore_df) and not buf[1] and n - l3 > min(maxfrag or port.mtu, port.mtu):
            self.frag_id = (self.frag_id + 1) & 0xFFFFFFFF
            mac = port.neigh6.mac.get(nh)
            for f in fragment6(buf, l3, min(maxfrag or port.mtu, port.mtu), self.frag_id):
                self._send(port, f, len(f), mac, nh)
            drv.counts["fragmented6"] += 1
            return
        if n - l3 > port.mtu and not buf[1]:
            # ip6_forward's MTU check: a router never fragments IPv6.
            h = parse(buf, l3)
            if type(h) is IPHeader and not is_ineligible(buf, h):
                src = self.own_address(bytes(buf[l3 + 8 : l3 + 24])) or port.addr6
                self.ipvs.outbox.append(build_error6(buf, l3, n, ICMPV6_PKT_TOOBIG, 0, src, info=port.mtu))
            drv.drops["pkt_too_big6"] += 1
            return
        self._send(port, buf, n, port.neigh6.mac.get(nh), nh)

    def _send(self, port: Port, buf: bytearray, n: int, mac: bytes | None, nh: int) -> None:
        if mac is None:
            if nh in self.own_nh:
                self.drv.to_self(nh, 6)  # (a real server on the director itself)
                return
            if port.neigh6.enqueue(nh, buf, n, self.drv.now):
                self._solicit(port, nh, None)
            return
        _ETH_HDR.pack_into(buf, 10, mac, port.mac, ETH_IPV6)
        if not port.queue(buf, n):
            self.drv.drops["tx"] += 1

    def _solicit(self, port: Port, ip: int, mac: bytes | None) -> None:
        f = ns_frame(port.mac, port.addr6, ip.to_bytes(16, "big"), mac)
        port.queue(f, len(f))

    def tick(self, now: int) -> None:
        """Neighbour retransmissions and probes; address unreachable for
        what waited on a neighbour that never answered; fragment queues
        that ran out of time."""
        self.frags.expire(now)
        for p in self.ports:
            requests, unresolved = p.neigh6.tick(now)
            for ip, mac in requests:
                self._solicit(p, ip, mac)
            for buf, _n in unresolved:
                self._addr_unreach(p, buf)
            p.neigh6.changed = False

    def _addr_unreach(self, p: Port, buf: bytearray) -> None:
        """``ndisc_error_report`` -> ``icmpv6_send``: address unreachable
        back to the sender of a packet whose next hop never answered, from
        the director's address on the route back, through the core's
        LOCAL_OUT step (``ip_vs_local_reply6``), which makes an error about
        IPVS traffic come from the VIP and quote VIP:vport."""
        drv = self.drv
        h = parse(buf, 24)
        if type(h) is not IPHeader or is_ineligible(buf, h) or buf[h.saddr] == 0xFF:
            drv.counts["addr_unreach6_not_sent"] += 1
            return
        saddr = bytes(buf[h.saddr : h.saddr + 16])
        if not self.icmp_allowed(saddr, ICMPV6_DEST_UNREACH):
            return
        src = self.own_address(saddr) or p.addr6
        err = bytearray(24) + build_error6(buf, 24, h.end, ICMPV6_DEST_UNREACH, ICMPV6_ADDR_UNREACH, src)
        verdict = self.d.local_out(err, 24, drv.now)
        if verdict == NF_DROP:
            drv.drops["addr_unreach6_ipvs"] += 1
            return
        if verdict != NF_STOLEN and bytes(err[48:64]) in self.local:
            drv.counts["addr_unreach6_local"] += 1  # for the director itself: nothing waits for it
            return
        drv.counts["addr_unreach6"] += 1
        if verdict == NF_STOLEN and self.d.xmit_to is not None:
            drv.fwd_out(err, 0)  # an error about a DR/TUN connection, passed on to its real server
        else:
            self.route_out(err, 24)

    def next_event(self, now: int) -> int | None:
        """Jiffies of the earliest neighbour event of the IPv6 tables."""
        times = [t for t in (p.neigh6.next_event(now) for p in self.ports) if t is not None]
        return min(times) if times else None
