"""The packet path: requests in, replies out, related ICMP errors.

Mirrors ``net/netfilter/ipvs/ip_vs_core.c`` (kernel 6.1): ``ip_vs_in``,
``ip_vs_out``, ``ip_vs_in_icmp``, ``ip_vs_out_icmp``, ``ip_vs_schedule``,
``ip_vs_sched_persist``, ``ip_vs_leave``, the stats helpers, and the
connections real servers start (``__ip_vs_rs_conn_out``, and
``ip_vs_new_conn_out``, which persistence engines call as
:meth:`Director.new_conn_out`).

:class:`Director` is the sans-I/O entry point, in the style of h11 and
aioquic: :meth:`Director.process` takes one packet (a ``bytearray`` and the
offset of its IP header) and the current time in jiffies, rewrites the
packet in place and returns a verdict; :meth:`Director.run_timers` and
:meth:`Director.next_timer` drive expiry.  The driver owns sockets,
routing and time.

Where the kernel uses two netfilter hooks, this module uses one call: a
reply from a real server is recognised by the out-table lookup (the
kernel's FORWARD-hook ``ip_vs_out``), which is tried first, exactly as the
LOCAL_IN hook order (``ip_vs_out`` at priority 98, ``ip_vs_in`` at 99)
does for packets to a local address.  Because the kernel forwards replies
with ``ip_forward``, their TTL is decremented here too.

Verdicts: ``NF_ACCEPT`` (not ours: let the host have it), ``NF_DROP``, or
``NF_STOLEN`` (rewritten: route it by its destination and send it; but
after a DR or TUN transmit :attr:`Director.xmit_to` names the real server
to send it to, see :mod:`ipvs.xmit`).
Generated ICMP errors are queued in ``ipvs.outbox``.  IPv6 takes the
same path (:meth:`Director._process6`, ``ip_vs_in_icmp_v6`` and
``ip_vs_out_icmp_v6`` in :meth:`Director._icmp6`); the keys and tables
already carry the address family.
"""

from __future__ import annotations

from collections.abc import Callable

from ipvs import app
from ipvs import conn as _conn
from ipvs.ctl import defense_work_handler, dest_trash_expire, find_real_service, has_real_service, service_get
from ipvs.ip_vs import (
    FTPDATA,
    FTPPORT,
    IP_VS_DIR_INPUT,
    IP_VS_DIR_OUTPUT,
    NF_ACCEPT,
    NF_DROP,
    NF_STOLEN,
    PROTO_NAMES,
    ConnParam,
    Dest,
    IPVSProtocol,
    ProtoData,
    addr_prefix,
    format_addr,
    fwmark_addr,
)
from ipvs.netns import NetnsIPVS
from ipvs.packet import (
    ICMP_DEST_UNREACH,
    ICMP_PORT_UNREACH,
    ICMPV6_DEST_UNREACH,
    ICMPV6_PORT_UNREACH,
    Drop,
    IPHeader,
    icmp6_checksum,
    icmp_checksum,
    parse,
    ports,
)
from ipvs.pe import PersistenceEngine, service_pe
from ipvs.proto.icmp import RELATED_TYPES, build_error, parse_quoted
from ipvs.proto.icmpv6 import build_error6, is_error, nat_icmp_v6, parse_quoted6
from ipvs.sched import IPHdr
from ipvs.uapi import (
    AF_INET,
    AF_INET6,
    IP_VS_CONN_F_DROUTE,
    IP_VS_CONN_F_FWD_MASK,
    IP_VS_CONN_F_HASHED,
    IP_VS_CONN_F_MASQ,
    IP_VS_CONN_F_NO_CPORT,
    IP_VS_CONN_F_ONE_PACKET,
    IP_VS_CONN_F_TEMPLATE,
    IP_VS_CONN_F_TUNNEL,
    IP_VS_DEST_F_AVAILABLE,
    IP_VS_SVC_F_ONEPACKET,
    IP_VS_SVC_F_PERSISTENT,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_IP,
)
from ipvs.xmit import (
    dr_xmit,
    dr_xmit_v6,
    icmp_xmit,
    icmp_xmit_v6,
    nat_icmp,
    nat_xmit,
    nat_xmit_v6,
    snat_response,
    snat_response_v6,
    tunnel_xmit,
    tunnel_xmit_v6,
)

__all__ = ["Director", "NF_ACCEPT", "NF_DROP", "NF_STOLEN"]

_PFX = [bytes((i,)) for i in range(256)]


class Director:
    """One director: an IPVS instance and its packet path.

    ``mtu`` is the path MTU towards the real servers (None: the driver
    does not know it, no frag-needed).  ``trace``, when set, receives one
    line per decision (used by ``tools/ipvs-replay --trace``).
    """

    def __init__(self, ipvs: NetnsIPVS | None = None) -> None:
        self.ipvs = ipvs if ipvs is not None else NetnsIPVS()
        self.mtu: int | None = None
        #: The largest fragment of the IPv6 packet being processed, when the
        #: driver reassembled it (0: it came whole): the packet's
        #: ``IP6CB(skb)->frag_max_size``, set by the driver as :attr:`mtu` is.
        self.frag_max = 0
        #: ``own_address(dst) -> bytes | None``: the director's address towards
        #: ``dst`` (set by the driver; used as the source of ICMP errors about
        #: forwarded packets).
        self.own_address: Callable[[bytes], bytes | None] | None = None
        self.trace: Callable[[str], None] | None = None
        #: Set with NF_STOLEN by a DR or TUN transmit (None otherwise, and
        #: taken back to None by the driver): the connection whose real
        #: server (``cp.daddr``) gets the packet, whatever its destination
        #: says (DR keeps the VIP), at that address's link-layer address.
        #: A tunnelled one (``IP_VS_CONN_F_TUNNEL``) has its outer headers
        #: in front (the packet still starts at ``l3``) and no checksum
        #: left for the NIC to complete.
        self.xmit_to: _conn.Connection | None = None
        self.ipvs.conn_tab.on_expire = self._conn_expired

    # ------------------------------------------------------------------ API

    def process(self, buf: bytearray, l3: int, now: int, csum_partial: bool = False) -> int:
        """``ip_vs_out`` then ``ip_vs_in`` (the hooks in one call): handle one
        IP packet at ``buf[l3:]``; return NF_ACCEPT/NF_DROP/NF_STOLEN.

        :func:`ipvs.packet.parse` fills the packet's descriptor once (the
        kernel's ``ip_vs_fill_iph_skb``).  A reply of a connection is
        ``ip_vs_out``'s (:meth:`_handle_response`); anything else goes on to
        ``ip_vs_in`` (:meth:`_in`).
        """
        ipvs = self.ipvs
        ipvs.now = now
        h = parse(buf, l3)
        if type(h) is not IPHeader:
            ipvs.drops[h] += 1
            return NF_DROP
        if not ipvs.enable:
            return NF_ACCEPT
        if h.af == AF_INET6:
            return self._process6(buf, h, now, csum_partial)
        if h.fragoffs or h.more_frags:
            # A fragment: the kernel sees reassembled packets (nf_defrag,
            # ip_vs_gather_frags); the driver reassembles before the core.
            ipvs.drops[Drop.FRAGMENT] += 1
            return NF_ACCEPT
        proto = h.protocol
        pd = ipvs.proto_data.get(proto)
        if pd is None:
            if proto == IPPROTO_ICMP:
                return self._icmp(buf, h, now)
            return NF_ACCEPT  # not an IPVS protocol
        pp = pd.pp
        l4 = h.l4
        if not pp.header_ok(buf, l4, h.end):
            ipvs.drops[Drop.BAD_L4] += 1
            return NF_DROP
        # The header slice saddr|daddr|sport|dport (one slice when no IP
        # options sit between the addresses and ports) is the key of both
        # lookups: a reply's out key, a request's in key.
        if l4 == l3 + 20:
            key = _PFX[proto] + buf[l3 + 12 : l3 + 24]
        else:
            key = _PFX[proto] + buf[l3 + 12 : l3 + 20] + buf[l4 : l4 + 4]
        # ip_vs_out first: is this a reply of a connection?
        cp = ipvs.conn_tab.out_find(key)
        if cp is not None:
            if cp.flags & IP_VS_CONN_F_FWD_MASK != IP_VS_CONN_F_MASQ:
                return self._direct_response(cp, pd, buf, h, now)
            return self._handle_response(cp, pd, buf, h, now, csum_partial)
        if ipvs.conn_out_counter and pp.conn_out:
            # A real server may be starting a connection (a --pe with conn_out).
            verdict = self._rs_conn_out(pd, buf, h, now, csum_partial)
            if verdict is not None:
                return verdict
        if ipvs.sysctl.nat_icmp_send and self._nat_icmp_send(pp, buf, h):
            return NF_DROP
        return self._in(pd, buf, h, key, now, csum_partial)

    def _process6(self, buf: bytearray, h: IPHeader, now: int, partial: bool) -> int:
        """:meth:`process` for IPv6 (``ip_vs_reply6``, ``ip_vs_remote_request6``).

        The steps of the IPv4 path with the IPv6 key (the addresses are
        one slice, the ports wherever the extension headers end) and the
        kernel's IPv6 order: ICMPv6 goes to :meth:`_icmp6` before the
        fragment test, since ``ip_vs_in_icmp_v6`` drops fragmented errors
        where IPv4's errors are reassembled first.  Connections real
        servers start (``conn_out``) and DR and TUN connections' direct
        replies are handled as IPv4's are.
        """
        ipvs = self.ipvs
        proto = h.protocol
        if self.frag_max:
            h.frag_max = self.frag_max
        if proto == IPPROTO_ICMPV6:
            return self._icmp6(buf, h, now)
        if h.fragoffs or h.more_frags:
            ipvs.drops[Drop.FRAGMENT] += 1
            return NF_ACCEPT
        pd = ipvs.proto_data.get(proto)
        if pd is None:
            return NF_ACCEPT
        pp = pd.pp
        l4 = h.l4
        if not pp.header_ok(buf, l4, h.end):
            ipvs.drops[Drop.BAD_L4] += 1
            return NF_DROP
        key = _PFX[proto] + buf[h.saddr : h.saddr + 32] + buf[l4 : l4 + 4]
        cp = ipvs.conn_tab.out_find(key)
        if cp is not None:
            if cp.flags & IP_VS_CONN_F_FWD_MASK != IP_VS_CONN_F_MASQ:
                return self._direct_response(cp, pd, buf, h, now)
            return self._handle_response(cp, pd, buf, h, now, partial)
        if ipvs.conn_out_counter and pp.conn_out:
            verdict = self._rs_conn_out(pd, buf, h, now, partial)
            if verdict is not None:
                return verdict
        if ipvs.sysctl.nat_icmp_send and self._nat_icmp_send(pp, buf, h):
            return NF_DROP
        return self._in(pd, buf, h, key, now, partial)

    def local_out(self, buf: bytearray, l3: int, now: int) -> int:
        """The LOCAL_OUT hooks (``ip_vs_local_reply4``, ``ip_vs_local_request4``
        and their IPv6 twins) for an ICMP error the director itself
        generated, e.g. the host (address) unreachable the driver sends
        when a next hop does not resolve.

        The related-ICMP rewrite of :meth:`process`, without the TTL step
        that stands for ``ip_forward`` there: a locally generated packet
        is not forwarded.  Anything else is NF_ACCEPT (send it as it is).
        """
        h = parse(buf, l3)
        if type(h) is not IPHeader or not self.ipvs.enable:
            return NF_ACCEPT
        if h.protocol == IPPROTO_ICMP and h.af == AF_INET:
            self.ipvs.now = now
            return self._icmp(buf, h, now, forwarded=False)
        if h.protocol == IPPROTO_ICMPV6 and h.af == AF_INET6:
            self.ipvs.now = now
            return self._icmp6(buf, h, now, forwarded=False)
        return NF_ACCEPT

    def _own_addr(self, dst: bytes | bytearray) -> bytes:
        """The director's own address on the route towards ``dst``: what
        ``icmp_send`` picks for errors about forwarded packets.  The driver
        knows its interfaces and sets :attr:`own_address`; offline the
        answer is 0.0.0.0 ("this host", RFC 1122 3.2.1.3)."""
        f = self.own_address
        a = f(bytes(dst)) if f is not None else None
        return a if a else bytes(len(dst))

    def run_timers(self, now: int) -> None:
        """Expire what is due by ``now``: connections, estimator, dest trash."""
        ipvs = self.ipvs
        ipvs.now = now
        tab = ipvs.conn_tab
        tab.expire(now)
        ipvs.est.enabled = bool(ipvs.sysctl.run_estimation)
        ipvs.est.run(now)
        if ipvs.dest_trash_timer is not None and now >= ipvs.dest_trash_timer:
            dest_trash_expire(ipvs, now)
        defense_work_handler(ipvs, now)

    def next_timer(self) -> int | None:
        """The jiffy at which :meth:`run_timers` next has work."""
        t = self.ipvs.conn_tab.next_timer()
        est = self.ipvs.est.next_run
        cands = [x for x in (t, est, self.ipvs.dest_trash_timer) if x is not None]
        return min(cands) if cands else None

    # ------------------------------------------------------------ ip_vs_in

    def _in(self, pd: ProtoData, buf: bytearray, h: IPHeader, key: bytes, now: int, partial: bool) -> int:
        """``ip_vs_in``: a packet towards a virtual service."""
        ipvs = self.ipvs
        tab = ipvs.conn_tab
        cp = tab.in_get_key(key)
        pp = pd.pp
        if cp is not None and ipvs.sysctl.conn_reuse_mode and pp.is_new_conn(buf, h.l4):
            cp = self._conn_reuse(cp, pp, now)
        if cp is not None and cp.dest is not None and not cp.dest.flags & IP_VS_DEST_F_AVAILABLE:
            # The real server was deleted (5.9+: checked before scheduling).
            if not ipvs.sysctl.expire_nodest_conn:
                # Drop without restarting the timer.
                ipvs.drops[Drop.DEST_UNAVAILABLE] += 1
                return NF_DROP
            # Expire the entry and go on as if there were none (no old
            # conntrack to keep in PyIPVS): the packet may be scheduled anew.
            tab.expire_now(cp, now)
            cp = None
        if cp is None:
            # ip_vs_try_to_schedule: the protocol's conn_schedule.
            verdict, cp = pp.conn_schedule(self, pd, buf, h, key, now)
            if cp is None:
                return verdict
        self._in_stats(cp, h.end - h.l3)
        tr = self.trace
        old = cp.state
        pp.state_transition(cp, IP_VS_DIR_INPUT, buf, h.l4, pd)
        if cp.flags & IP_VS_CONN_F_FWD_MASK == IP_VS_CONN_F_MASQ:
            if cp.flags & IP_VS_CONN_F_NO_CPORT:
                tab.fill_cport(cp, ports(buf, h.l4)[0])
            app_ret = 1
            ext = cp.ext  # (rare fields: reading cp.app directly costs a property call)
            if ext is not None and ext.app is not None:
                app_ret, h = self._app(cp, buf, h, now, True, partial)
            if app_ret:
                # (cp->packet_xmit: the kernel binds ip_vs_nat_xmit_v6 to an IPv6 connection.)
                xmit = nat_xmit if h.af == AF_INET else nat_xmit_v6
                verdict = xmit(ipvs, cp, pp, buf, h, partial, self.mtu, app_ret)
            else:
                verdict = NF_DROP
        else:
            verdict = self._fwd_xmit(cp, pp, buf, h, partial)
        if tr is not None:
            tr(f"in  {self._conn_text(cp)} {self._state_text(cp, old)} -> {_VERDICT[verdict]}")
        # in_pkts, for todrop_entry (and the sync daemon PyIPVS lacks): a
        # one-packet connection's packet counts on its template instead.
        if cp.flags & IP_VS_CONN_F_ONE_PACKET:
            ctl_cp = cp.control
            if ctl_cp is not None:
                ctl_cp.in_pkts += 1
        else:
            cp.in_pkts += 1
        tab.conn_put(cp, now)
        return verdict

    def service_find(self, protocol: int, key: bytes):
        """``ip_vs_service_find`` for a packet's ``key`` (proto | saddr |
        daddr | sport | dport): (the service or None, the packet's mark).

        A fwmark service first (the mark comes from the instance's mark
        rules, PyIPVS's stand-in for ``skb->mark``); then the exact (proto,
        vaddr, vport) service, the common case, whose key is a slice of the
        packet key; :func:`ipvs.ctl.service_get` does the rest.
        """
        ipvs = self.ipvs
        mark = 0
        svc = None
        n = (len(key) - 5) >> 1  # the address length (4 or 16) is the family
        af = AF_INET if n == 4 else AF_INET6
        daddr = key[1 + n : 1 + 2 * n]
        dport = (key[-2] << 8) | key[-1]
        if ipvs.fwm_table and ipvs.marks.rules:
            mark = ipvs.marks.classify(af, protocol, key[1 : 1 + n], daddr, dport)
            if mark:
                svc = ipvs.fwm_table.get((af, mark))
        if svc is None:
            svc = ipvs.svc_table.get(key[:1] + daddr + key[-2:])
        if svc is None:
            svc = service_get(ipvs, af, 0, protocol, daddr, dport)
        return svc, mark

    def todrop(self) -> bool:
        """``ip_vs_todrop``: one new connection in ``ipvs.drop_rate`` is
        dropped (the rate ``update_defense_level`` set from drop_packet)."""
        ipvs = self.ipvs
        if not ipvs.drop_rate:
            return False
        ipvs.drop_counter -= 1
        if ipvs.drop_counter > 0:
            return False
        ipvs.drop_counter = ipvs.drop_rate
        return True

    def _conn_reuse(self, cp: _conn.Connection, pp: IPVSProtocol, now: int) -> _conn.Connection | None:
        """The conn_reuse_mode block of ``ip_vs_in`` for a new SYN."""
        ipvs = self.ipvs
        resched = False
        if ipvs.sysctl.expire_nodest_conn and cp.dest is not None and not cp.dest.weight:
            resched = True
        elif cp.control is None and pp.is_new_conn_expected(cp, ipvs.sysctl.conn_reuse_mode):
            # (is_new_conn_expected: never for a controlled conn, FTP data
            # or under a persistence template.)
            # Without conntrack the "old_ct" case never arises.
            resched = True
        if not resched:
            return cp
        if not cp.n_control:
            ipvs.conn_tab.expire_now(cp, now)
        if self.trace is not None:
            self.trace(f"reuse {self._conn_text(cp)}: rescheduling")
        return None

    # ----------------------------------------------------------- scheduling

    def schedule(
        self, svc, iph: IPHdr, now: int, key: bytes | None = None,
        buf: bytearray | None = None, h: IPHeader | None = None, mark: int = 0,
    ) -> tuple[_conn.Connection | None, int]:
        """``ip_vs_schedule``: (conn, ignored) with the kernel's ignored codes.

        ``buf`` and its descriptor ``h`` are the packet, for a persistence
        engine to read (``iph`` is what the scheduler sees of it);
        ignored -2 is the kernel's -1 for an engine that refused it."""
        if iph.sport == FTPDATA:
            return None, 1  # never schedule active FTP data from a real server
        if svc.flags & IP_VS_SVC_F_PERSISTENT:
            return self._sched_persist(svc, iph, now, buf, h, mark)
        if not svc.fwmark and iph.dport != svc.port:
            return None, 0  # port zero only supported in persistent services
        dest = svc.scheduler.schedule(iph, now) if svc.scheduler is not None else None
        if dest is None:
            self._no_dest(svc)
            return None, 0
        if self.trace is not None:
            self.trace(f"sched {svc!r} chose {dest!r}")
        flags = self._one_packet(svc, iph.protocol)
        p = ConnParam(iph.af, iph.protocol, iph.saddr, iph.sport, iph.daddr, iph.dport, None, None, self.ipvs)
        cp = self.ipvs.conn_tab.new(p, dest.addr, dest.port or iph.dport, flags, dest, mark, key)
        if cp is None:
            return None, -1
        self._conn_stats(dest)
        return cp, 0

    def _sched_persist(
        self, svc, iph: IPHdr, now: int, buf: bytearray | None = None, h: IPHeader | None = None, mark: int = 0,
    ) -> tuple[_conn.Connection | None, int]:
        """``ip_vs_sched_persist``: find or make the client's template first."""
        tab = self.ipvs.conn_tab
        snet = addr_prefix(iph.saddr, svc.netmask)
        protocol, vaddr, vport = iph.protocol, iph.daddr, 0
        if iph.dport == svc.port:
            if svc.port != FTPPORT:
                vport = iph.dport
        elif svc.fwmark:
            protocol, vaddr = IPPROTO_IP, fwmark_addr(iph.af, svc.fwmark)
        found = self._find_template(svc, iph.af, protocol, snet, vaddr, vport, buf, h)
        if found is None:
            return None, -2  # the engine refused the packet: dropped
        ct, pe, pe_data = found
        if ct is None or not self._check_template(ct):
            dest = svc.scheduler.schedule(iph, now) if svc.scheduler is not None else None
            if dest is None:
                self._no_dest(svc)
                return None, 0
            if self.trace is not None:
                self.trace(f"sched {svc!r} chose {dest!r} (new persistence template)")
            dport = dest.port if iph.dport == svc.port and svc.port != FTPPORT else 0
            p = ConnParam(iph.af, protocol, snet, 0, vaddr, vport, pe, pe_data, self.ipvs)
            ct = tab.new(p, dest.addr, dport, IP_VS_CONN_F_TEMPLATE, dest, mark)
            if ct is None:
                return None, -1
            ct.timeout = svc.timeout
        else:
            dest = ct.dest
            # _check_template has just accepted it, so it has its dest.  (Only
            # the first packet of a connection comes here.)
            assert dest is not None
            if self.trace is not None:
                self.trace(f"persist {svc!r}: template says {dest!r}")
        dport = iph.dport
        if dport == svc.port and dest.port:
            dport = dest.port
        flags = self._one_packet(svc, iph.protocol)
        p = ConnParam(iph.af, iph.protocol, iph.saddr, iph.sport, iph.daddr, iph.dport, None, None, self.ipvs)
        cp = tab.new(p, dest.addr, dport, flags, dest, mark)
        if cp is None:
            tab.put(ct, now)
            return None, -1
        tab.control_add(cp, ct)
        tab.put(ct, now)
        self._conn_stats(dest)
        return cp, 0

    def _find_template(
        self, svc, af: int, protocol: int, snet: bytes, vaddr: bytes, vport: int,
        buf: bytearray | None, h: IPHeader | None,
    ) -> tuple[_conn.Connection | None, PersistenceEngine | None, bytes | None] | None:
        """``ip_vs_conn_fill_param_persist`` and the template lookup of
        ``ip_vs_sched_persist`` / ``ip_vs_new_conn_out``: (the template or
        None, the service's engine, the key it read), or None when the
        engine (``--pe``) cannot read its key from the packet."""
        pe = service_pe(svc) if svc.pe_name else None
        pe_data = None
        if pe is not None:
            p = ConnParam(af, protocol, snet, 0, vaddr, vport, pe)
            if buf is None or h is None or pe.fill_param(p, buf, h) < 0:
                return None
            pe_data = p.pe_data
            if pe_data is not None and pe.ct_match is not None:
                return self.ipvs.conn_tab.pe_ct_in_get(p), pe, pe_data
        # No engine, no key or no matcher: the plain template lookup.
        return self.ipvs.conn_tab.ct_in_get(protocol, snet, vaddr, 0, vport), pe, pe_data

    def _check_template(self, ct: _conn.Connection, cdest=None) -> bool:
        """``ip_vs_check_template``: invalidate a template whose dest is gone
        (or, given ``cdest``, is not ``cdest``)."""
        dest = ct.dest
        if (
            dest is None
            or not dest.flags & IP_VS_DEST_F_AVAILABLE
            or (self.ipvs.sysctl.expire_quiescent_template and not dest.weight)
            or (cdest is not None and dest is not cdest)
        ):
            if ct.vport != 0xFFFF:
                tab = self.ipvs.conn_tab
                if ct.flags & IP_VS_CONN_F_HASHED:
                    tab.unhash(ct)
                    ct.dport = 0xFFFF
                    ct.vport = 0xFFFF
                    ct.cport = 0
                    tab.hash(ct)
            return False
        return True

    def _one_packet(self, svc, protocol: int) -> int:
        """The flags of a new connection of ``svc``: ONE_PACKET for a
        ``-o`` service whose protocol schedules one-packet connections."""
        if svc.flags & IP_VS_SVC_F_ONEPACKET:
            pd = self.ipvs.proto_data.get(protocol)
            if pd is not None and pd.pp.one_packet:
                return IP_VS_CONN_F_ONE_PACKET
        return 0

    @staticmethod
    def _conn_stats(dest: Dest) -> None:
        """``ip_vs_conn_stats``: one more connection for ``dest`` (and so,
        through Stats.push, for its service and the total).  The kernel's
        takes the connection and reads ``cp->dest``; callers here pass the
        dest they have just bound the new connection to, which is never None."""
        dest.stats.conns += 1

    def _no_dest(self, svc) -> None:
        # The scheduler has logged "no destination available" (its
        # ip_vs_scheduler_err); ip_vs_schedule only has a debug line.
        if self.trace is not None:
            self.trace(f"sched {svc!r}: no destination available")

    def leave(self, svc, buf: bytearray, h: IPHeader, iph: IPHdr) -> int:
        """``ip_vs_leave``: no real server; tell the client (port unreachable)."""
        ipvs = self.ipvs
        if svc.port == FTPPORT and iph.dport != FTPPORT:
            return NF_ACCEPT
        if h.af == AF_INET6:
            err = build_error6(buf, h.l3, h.end, ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH, iph.daddr)
        else:
            err = build_error(buf, h.l3, h.end, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, iph.daddr)
        ipvs.outbox.append(err)
        ipvs.drops[Drop.NO_DEST] += 1
        return NF_DROP

    # ----------------------------------------------------------- ip_vs_out

    def _handle_response(
        self, cp: _conn.Connection, pd: ProtoData, buf: bytearray, h: IPHeader, now: int, partial: bool,
    ) -> int:
        """``handle_response``: SNAT a real server's reply back to VIP:vport."""
        ipvs = self.ipvs
        app_ret = 1
        ext = cp.ext
        if ext is not None and ext.app is not None:
            app_ret, h = self._app(cp, buf, h, now, False, partial)
            if not app_ret:
                return NF_DROP
        l3 = h.l3
        if h.af == AF_INET:
            verdict = snat_response(ipvs, cp, pd.pp, buf, h, partial, app_ret,
                                    self._own_addr(buf[l3 + 12 : l3 + 16]) if buf[l3 + 8] <= 1 else b"")
        else:
            verdict = snat_response_v6(ipvs, cp, pd.pp, buf, h, partial, app_ret,
                                       self._own_addr(buf[l3 + 8 : l3 + 24]) if buf[l3 + 7] <= 1 else b"")
        if verdict == NF_DROP:
            return verdict
        self._out_stats(cp, h.end - l3)
        old = cp.state
        pd.pp.state_transition(cp, IP_VS_DIR_OUTPUT, buf, h.l4, pd)
        if self.trace is not None:
            self.trace(f"out {self._conn_text(cp)} {self._state_text(cp, old)} -> {_VERDICT[verdict]}")
        ipvs.conn_tab.conn_put(cp, now)
        return verdict

    def _direct_response(self, cp: _conn.Connection, pd: ProtoData, buf: bytearray, h: IPHeader, now: int) -> int:
        """``handle_response`` for a DR or TUN connection (5.10+, "inspect
        reply packets from DR/TUN real servers"): the real server's direct
        reply (from VIP:vport) passes the director, its gateway say.  It is
        counted and walks the protocol's states like a NAT reply (the first
        one clears ``NOOUTPUT``), but is not rewritten: NF_ACCEPT, the host
        forwards it.  A reply whose TTL (IPv6: hop limit) runs out never
        reaches the hook (``ip_forward``/``ip6_forward`` drop it first)."""
        if buf[h.l3 + (8 if h.af == AF_INET else 7)] <= 1:
            return NF_ACCEPT
        self._out_stats(cp, h.end - h.l3)
        old = cp.state
        pd.pp.state_transition(cp, IP_VS_DIR_OUTPUT, buf, h.l4, pd)
        if self.trace is not None:
            self.trace(f"out {self._conn_text(cp)} {self._state_text(cp, old)} -> ACCEPT (direct reply)")
        self.ipvs.conn_tab.conn_put(cp, now)
        return NF_ACCEPT

    def _nat_icmp_send(self, pp: IPVSProtocol, buf: bytearray, h: IPHeader) -> bool:
        """No connection, but from a MASQ real server: answer port unreachable."""
        sport, _ = ports(buf, h.l4)
        saddr = bytes(buf[h.saddr : h.saddr + h.alen])
        if not has_real_service(self.ipvs, h.af, pp.protocol, saddr, sport):
            return False
        if pp.is_reset(buf, h.l4):
            return False
        if h.af == AF_INET6:
            err = build_error6(buf, h.l3, h.end, ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH, self._own_addr(saddr))
        else:
            err = build_error(buf, h.l3, h.end, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, self._own_addr(saddr))
        self.ipvs.outbox.append(err)
        return True

    # ------------------------------------------- real-server initiated (4.7+)

    def _rs_conn_out(
        self, pd: ProtoData, buf: bytearray, h: IPHeader, now: int, partial: bool
    ) -> int | None:
        """``__ip_vs_rs_conn_out``, with the ``conn_out_counter`` branch of ``ip_vs_out`` around it.

        A packet of a protocol that allows it (UDP: ``pp.conn_out``) matched
        no connection and some service's engine has ``conn_out``.  If it
        comes from a NAT real server of a service whose engine has
        ``conn_out``, the engine may make a connection for it; the packet is
        then a response of that connection (``handle_response``).  Returns
        that verdict, or None: not handled, go on as without engines.

        ``__ip_vs_rs_conn_out`` skips packets of the LOCAL_IN hook (to the
        director itself).  This core sees all packets in one call, so it
        skips packets to a virtual address instead (they go on to
        ``ip_vs_in``, as in the kernel), and packets whose TTL or hop limit
        runs out (``ip_forward`` and ``ip6_forward`` drop those before the
        FORWARD hook).  Either family: the kernel's ``ip_vs_out_hook``
        takes this branch for IPv4 and IPv6 alike.
        """
        l3, l4 = h.l3, h.l4
        af = h.af
        if buf[l3 + 8 if af == AF_INET else l3 + 7] <= 1:
            return None
        ipvs = self.ipvs
        sport = (buf[l4] << 8) | buf[l4 + 1]
        alen = 4 if af == AF_INET else 16
        dest = find_real_service(ipvs, af, pd.pp.protocol, bytes(buf[h.saddr : h.saddr + alen]), sport)
        if dest is None:
            return None
        svc = dest.svc
        if svc is None:
            return None
        pe = service_pe(svc)
        if pe is None or pe.conn_out is None:
            return None
        daddr = bytes(buf[h.daddr : h.daddr + alen])
        if any(s.addr == daddr for s in ipvs.svc_table.values()):
            return None  # (LOCAL_IN: to a virtual address)
        cp = pe.conn_out(self, svc, dest, buf, h, sport, (buf[l4 + 2] << 8) | buf[l4 + 3])
        if cp is None:
            return None
        if self.trace is not None:
            self.trace(f"conn_out {svc!r}: {dest!r} starts {self._conn_text(cp)}")
        # (With the TTL checked above, handle_response cannot drop it.)  Its
        # ip_vs_conn_put expires a one-packet connection at once.
        return self._handle_response(cp, pd, buf, h, now, partial)

    def new_conn_out(
        self, svc, dest, buf: bytearray, h: IPHeader, dport: int, cport: int
    ) -> _conn.Connection | None:
        """``ip_vs_new_conn_out``: a connection for a packet ``dest`` starts
        (what an engine's ``conn_out`` calls).

        The client is the packet's destination ``caddr:cport``, the virtual
        side the service's ``vaddr:vport``, the real side the packet's source
        ``daddr:dport``.  A persistent service first finds or makes the
        client's template, keyed as a client's own packet would key it (the
        masked client address, the service's address and port, and what the
        engine's ``fill_param`` reads from this packet), and pointing at
        ``dest``: a template naming another server is invalidated and
        replaced.  None when the service is a fwmark one or has port zero, when
        ``fill_param`` refuses the packet, or when the table is full.  The
        packet, the service and ``dest`` are of one family (a MASQ real
        server is always of its service's).
        """
        if svc.fwmark or not svc.port or not dport or h.af != svc.af:
            return None
        ipvs = self.ipvs
        tab = ipvs.conn_tab
        now = ipvs.now
        protocol = h.protocol
        af = svc.af
        alen = 4 if af == AF_INET else 16
        daddr = bytes(buf[h.saddr : h.saddr + alen])
        caddr = bytes(buf[h.daddr : h.daddr + alen])
        vaddr, vport = svc.addr, svc.port
        ct = None
        if svc.flags & IP_VS_SVC_F_PERSISTENT:
            snet = addr_prefix(caddr, svc.netmask)
            found = self._find_template(svc, af, protocol, snet, vaddr, vport, buf, h)
            if found is None:
                return None
            ct, pe, pe_data = found
            if ct is None or not self._check_template(ct, dest):
                p = ConnParam(af, protocol, snet, 0, vaddr, vport, pe, pe_data, ipvs)
                ct = tab.new(p, daddr, dport, IP_VS_CONN_F_TEMPLATE, dest)
                if ct is None:
                    return None
                ct.timeout = svc.timeout
        flags = self._one_packet(svc, protocol)
        p = ConnParam(af, protocol, caddr, cport, vaddr, vport, None, None, ipvs)
        cp = tab.new(p, daddr, dport, flags, dest)
        if cp is None:
            if ct is not None:
                tab.put(ct, now)
            return None
        if ct is not None:
            tab.control_add(cp, ct)
            tab.put(ct, now)
        self._conn_stats(dest)
        return cp

    # ----------------------------------------------------------------- ICMP

    def _icmp(self, buf: bytearray, h: IPHeader, now: int, forwarded: bool = True) -> int:
        """``ip_vs_out_icmp`` then ``ip_vs_in_icmp`` for an ICMP packet
        (``forwarded`` False: generated here, see :meth:`local_out`)."""
        ipvs = self.ipvs
        if h.fragoffs or h.more_frags:
            ipvs.drops[Drop.FRAGMENT] += 1
            return NF_ACCEPT
        if h.end - h.l4 < 8:
            # ip_vs_in_icmp/ip_vs_out_icmp: no ICMP header to read is NF_DROP.
            ipvs.drops[Drop.BAD_L4] += 1
            return NF_DROP
        if buf[h.l4] not in RELATED_TYPES:
            return NF_ACCEPT
        q = parse_quoted(buf, h.l4, h.end)
        if q is None or q.protocol not in ipvs.proto_data or q.fragoffs:
            return NF_ACCEPT
        # The quoted packet travelled the other way: build the key reversed.
        qkey = _PFX[q.protocol] + buf[q.daddr : q.daddr + 4] + buf[q.saddr : q.saddr + 4]
        qkey += buf[q.l4 + 2 : q.l4 + 4] + buf[q.l4 : q.l4 + 2]
        tab = ipvs.conn_tab
        cp = tab.out_find(qkey)
        if cp is not None:
            # An error from the real server about a packet it received.
            if cp.flags & IP_VS_CONN_F_FWD_MASK != IP_VS_CONN_F_MASQ:
                # handle_response_icmp of a DR/TUN connection (5.10+): only
                # counted; the host forwards it as it is (one whose TTL runs
                # out never reaches the hook: ip_forward drops it first).
                if not forwarded or buf[h.l3 + 8] > 1:
                    self._out_stats(cp, h.end - h.l3)
                return NF_ACCEPT
            if icmp_checksum(buf, h.l4, h.end) != ((buf[h.l4 + 2] << 8) | buf[h.l4 + 3]):
                ipvs.drops[Drop.BAD_CSUM] += 1
                return NF_DROP
            if forwarded:
                if buf[h.l3 + 8] <= 1:
                    ipvs.drops[Drop.TTL_EXCEEDED] += 1
                    return NF_DROP
                buf[h.l3 + 8] -= 1  # forwarded by the kernel before ip_vs_out
            nat_icmp(buf, h, q, cp, inout=True)
            self._out_stats(cp, h.end - h.l3)
            if self.trace is not None:
                self.trace(f"icmp-out {self._conn_text(cp)} type {buf[h.l4]} rewritten")
            # handle_response_icmp ends with __ip_vs_conn_put: the timer is
            # not restarted by an error.
            return NF_STOLEN
        cp = tab.in_find(qkey)
        if cp is None:
            return NF_ACCEPT
        if icmp_checksum(buf, h.l4, h.end) != ((buf[h.l4 + 2] << 8) | buf[h.l4 + 3]):
            ipvs.drops[Drop.BAD_CSUM] += 1
            return NF_DROP
        self._in_stats(cp, h.end - h.l3)
        if cp.flags & IP_VS_CONN_F_FWD_MASK != IP_VS_CONN_F_MASQ:
            # ip_vs_icmp_xmit: DR and TUN pass the error on unchanged
            # (cp->packet_xmit), with the quoted header's descriptor.
            verdict = self._fwd_xmit(cp, ipvs.proto_data[q.protocol].pp, buf, h, False, icmp=True)
        else:
            verdict = icmp_xmit(ipvs, cp, buf, h, q)
        if self.trace is not None:
            self.trace(f"icmp-in {self._conn_text(cp)} type {buf[h.l4]} -> {_VERDICT[verdict]}")
        # ip_vs_in_icmp also ends with __ip_vs_conn_put (no timer restart).
        return verdict

    def _icmp6(self, buf: bytearray, h: IPHeader, now: int, forwarded: bool = True) -> int:
        """``ip_vs_out_icmp_v6`` then ``ip_vs_in_icmp_v6`` (``forwarded``
        False: generated here, see :meth:`local_out`).

        Every ICMPv6 error type may be related; informational messages
        (echo, neighbour discovery) are not.  A fragmented error is
        dropped (errors are not fragmented: the kernel's ``IP6_FH_F_FRAG``
        test), and so is a later fragment, whose "ICMPv6 header" the
        kernel reads at the IPv6 header (version 6: an error type).  The
        quoted packet's extension headers are walked; a quoted later
        fragment is not related.

        Out (from a real server): the ICMPv6 checksum is verified first,
        with its pseudo-header (``handle_response_icmp`` sums the message
        alone, from the ICMPv6 header's real offset since July 2026's
        "ipvs: fix more places with wrong ipv6 transport offsets"; it only
        matters where the device did not validate the checksum).  In
        (towards a real server): no checksum check, as in
        ``ip_vs_in_icmp_v6``.  Neither restarts the connection's timer.
        """
        ipvs = self.ipvs
        if h.fragoffs:
            ipvs.drops[Drop.FRAGMENT] += 1
            return NF_DROP
        if h.end - h.l4 < 8:
            ipvs.drops[Drop.BAD_L4] += 1
            return NF_DROP
        if not is_error(buf[h.l4]):
            return NF_ACCEPT
        if h.more_frags:
            ipvs.drops[Drop.FRAGMENT] += 1
            return NF_DROP
        q = parse_quoted6(buf, h.l4, h.end)
        if q is None or q.protocol not in ipvs.proto_data or q.fragoffs or q.l4 + 4 > h.end:
            return NF_ACCEPT
        # The quoted packet travelled the other way: the key reversed.
        qkey = _PFX[q.protocol] + buf[q.daddr : q.daddr + 16] + buf[q.saddr : q.saddr + 16]
        qkey += buf[q.l4 + 2 : q.l4 + 4] + buf[q.l4 : q.l4 + 2]
        tab = ipvs.conn_tab
        cp = tab.out_find(qkey)
        if cp is not None:
            if cp.flags & IP_VS_CONN_F_FWD_MASK != IP_VS_CONN_F_MASQ:
                # handle_response_icmp of a DR/TUN connection: counted only,
                # as for IPv4 (see _icmp).
                if not forwarded or buf[h.l3 + 7] > 1:
                    self._out_stats(cp, h.end - h.l3)
                return NF_ACCEPT
            if icmp6_checksum(buf, h) != ((buf[h.l4 + 2] << 8) | buf[h.l4 + 3]):
                ipvs.drops[Drop.BAD_CSUM] += 1
                return NF_DROP
            if forwarded:
                if buf[h.l3 + 7] <= 1:
                    # ip6_forward before the FORWARD hook: no error about an error.
                    ipvs.drops[Drop.TTL_EXCEEDED] += 1
                    return NF_DROP
                buf[h.l3 + 7] -= 1
            nat_icmp_v6(buf, h, q, cp, inout=True)
            self._out_stats(cp, h.end - h.l3)
            if self.trace is not None:
                self.trace(f"icmp6-out {self._conn_text(cp)} type {buf[h.l4]} rewritten")
            return NF_STOLEN
        cp = tab.in_find(qkey)
        if cp is None:
            return NF_ACCEPT
        self._in_stats(cp, h.end - h.l3)
        if cp.flags & IP_VS_CONN_F_FWD_MASK != IP_VS_CONN_F_MASQ:
            # ip_vs_icmp_xmit_v6: DR and TUN pass the error on unchanged
            # (cp->packet_xmit with the quoted header's descriptor).
            verdict = self._fwd_xmit(cp, ipvs.proto_data[q.protocol].pp, buf, h, False, icmp=True)
        else:
            verdict = icmp_xmit_v6(ipvs, cp, buf, h, q, self.mtu)
        if self.trace is not None:
            self.trace(f"icmp6-in {self._conn_text(cp)} type {buf[h.l4]} -> {_VERDICT[verdict]}")
        return verdict

    # ------------------------------------------------------- DR and TUN

    def _fwd_xmit(
        self, cp: _conn.Connection, pp: IPVSProtocol, buf: bytearray, h: IPHeader, partial: bool,
        icmp: bool = False,
    ) -> int:
        """``cp->packet_xmit`` for the methods other than NAT (the choice of
        ``ip_vs_bind_xmit``): :func:`ipvs.xmit.dr_xmit` or
        :func:`ipvs.xmit.tunnel_xmit`.  Sent (NF_STOLEN), the packet goes
        to the real server whatever its destination says, and
        :attr:`xmit_to` tells the driver so.  A local node (the real
        server is the director) is NF_ACCEPT: the host delivers it.

        The transmitter is the one ``ip_vs_bind_xmit`` (``_v6``) binds:
        direct routing by the connection's family, a tunnel by the real
        server's (``cp->daf``: an IPv4 service may tunnel to IPv6 real
        servers and the reverse), its outer source the director's address
        towards the real server.
        """
        fwd = cp.flags & IP_VS_CONN_F_FWD_MASK
        if fwd == IP_VS_CONN_F_DROUTE:
            xmit = dr_xmit if h.af == AF_INET else dr_xmit_v6
            verdict = xmit(self.ipvs, cp, pp, buf, h, self.mtu, icmp)
        elif fwd == IP_VS_CONN_F_TUNNEL:
            daddr = cp.daddr
            txmit = tunnel_xmit if len(daddr) == 4 else tunnel_xmit_v6
            verdict = txmit(self.ipvs, cp, pp, buf, h, self.mtu, partial, self._own_addr(daddr), icmp)
        else:
            return NF_ACCEPT
        if verdict == NF_STOLEN:
            self.xmit_to = cp
        return verdict

    # ---------------------------------------------------------------- stats

    @staticmethod
    def _in_stats(cp: _conn.Connection, skb_len: int) -> None:
        """``ip_vs_in_stats``: one packet of ``skb_len`` bytes in, counted
        while the dest is available.  The dest's counts reach its service
        and the total through Stats.push (see :mod:`ipvs.est`)."""
        dest = cp.dest
        if dest is not None and dest.flags & IP_VS_DEST_F_AVAILABLE:
            st = dest.stats
            st.inpkts += 1
            st.inbytes += skb_len

    @staticmethod
    def _out_stats(cp: _conn.Connection, skb_len: int) -> None:
        """``ip_vs_out_stats``: one reply of ``skb_len`` bytes out."""
        dest = cp.dest
        if dest is not None and dest.flags & IP_VS_DEST_F_AVAILABLE:
            st = dest.stats
            st.outpkts += 1
            st.outbytes += skb_len


    # ----------------------------------------------------------------- apps

    def _app(
        self, cp, buf: bytearray, h: IPHeader, now: int, inbound: bool, partial: bool
    ) -> tuple[int, IPHeader]:
        """Run the bound application helper (``ip_vs_app_pkt_in/out``).

        Returns (verdict, descriptor of the packet as it is afterwards: the
        helper may have resized it).  Verdict 0 drops, 1 is unchanged, 2
        means the payload changed and the L4 checksum must be recomputed.
        Like ``tcp_csum_check``, a partial (offloaded, not yet computed)
        checksum is not verified: there is nothing to verify yet.
        """
        if not self.ipvs.proto_data[h.protocol].pp.csum_check(buf, h, partial):
            self.ipvs.drops[Drop.BAD_CSUM] += 1
            return 0, h
        ret = (app.pkt_in if inbound else app.pkt_out)(self.ipvs, cp, buf, h, now)
        if ret != app.NF_MANGLED:
            return ret, h
        # Resized: read the descriptor again, as the kernel re-reads the
        # headers after enlarge_skb.
        nh = parse(buf, h.l3)
        if type(nh) is not IPHeader:
            self.ipvs.drops[nh] += 1
            return 0, h
        nh.frag_max = h.frag_max  # (the skb's control block outlives the resize)
        return ret, nh

    # ------------------------------------------------------------- expiry

    def _conn_expired(self, cp: _conn.Connection) -> None:
        """The connection table's ``on_expire``: ``ip_vs_conn_expire`` is
        freeing ``cp``; unbind its application helper (``ip_vs_unbind_app``)."""
        if cp.app is not None:
            app.unbind_conn(self.ipvs, cp)
        if self.trace is not None:
            self.trace(f"expire {self._conn_text(cp)}")

    # ---------------------------------------------------------------- trace

    def _conn_text(self, cp: _conn.Connection) -> str:
        proto = PROTO_NAMES.get(cp.protocol, "IP")
        return (
            f"{proto} {format_addr(cp.af, cp.caddr)}:{cp.cport} -> {format_addr(cp.af, cp.vaddr)}:{cp.vport}"
            f" => {format_addr(cp.daf, cp.daddr)}:{cp.dport}"
        )

    def _state_text(self, cp: _conn.Connection, old: int) -> str:
        pd = self.ipvs.proto_data[cp.protocol]
        names = pd.state_names
        return f"{names[old]}->{names[cp.state]}"


_VERDICT = {NF_DROP: "DROP", NF_ACCEPT: "ACCEPT", NF_STOLEN: "XMIT"}
