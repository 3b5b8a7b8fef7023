"""The control plane: the commands on virtual services and real servers.

Mirrors ``net/netfilter/ipvs/ip_vs_ctl.c`` (kernel 6.1): the service tables
and their lookups, ``ip_vs_add_service`` / ``edit`` / ``del``,
``ip_vs_add_dest`` / ``edit`` / ``del`` with the destination trash, flush,
zero and timeouts.  The objects the commands work on (:class:`~ipvs.ip_vs.Service`,
:class:`~ipvs.ip_vs.Dest`, the ``/proc/sys/net/ipv4/vs/*`` settings
:class:`~ipvs.ip_vs.Sysctls`) are the header's, :mod:`ipvs.ip_vs`.

Every command takes the instance (:class:`ipvs.netns.NetnsIPVS`, the
kernel's ``struct netns_ipvs``) and raises :class:`~ipvs.ip_vs.IPVSError`
carrying the errno the kernel returns, so the tools can print ipvsadm's
messages.

Differences from the kernel, and why:

* The service hash tables are Python dicts keyed by packed bytes; the
  kernel's bucket order (which ``/proc/net/ip_vs`` and ``--nosort`` show)
  is reproduced by :func:`ipvs.ip_vs.svc_hashkey` with the per-netns pointer taken as
  zero, since the real value is an address and not reproducible anyway.
* The destination trash is a dict; its 60 s cleanup runs from the
  instance's timer processing (``now`` in jiffies), not a kernel timer.
* :func:`update_defense_level` keeps the kernel's levels and transitions,
  but its "memory left" is not the machine's free pages: it is what is
  left of PyIPVS's budget (``ipvs.availmem``, which the daemon's
  :class:`ipvs.daemon.MemoryBudget` computes from ipvsd's private resident
  memory and its rings).  The kernel's freed slab pages return to the page
  allocator; a Python process keeps what it frees in malloc's heap, so
  under pressure the daemon first reclaims (PyPy's major collection, then
  ``malloc_trim``) and only then counts: without that, the entries a
  flood left behind would count as used long after they were freed, and
  ``drop_packet`` would stay at 1 in 1.  A table at PyIPVS's cap (which
  the kernel does not have) runs ``drop_entry``'s pass at once
  (:meth:`ipvs.conn.ConnTable.make_room`).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

import attrs

from ipvs import uapi
from ipvs.ip_vs import (
    FTPDATA,
    FTPPORT,
    INT_MAX,
    IP_VS_SVC_TAB_MASK,
    Dest,
    IPVSError,
    Service,
    svc_key,
)
from ipvs.pe import pe_get, pe_lookup
from ipvs.sched import scheduler_get
from ipvs.uapi import (
    AF_INET,
    AF_INET6,
    IP_VS_CONN_F_DEST_MASK,
    IP_VS_CONN_F_FWD_MASK,
    IP_VS_CONN_F_INACTIVE,
    IP_VS_CONN_F_MASQ,
    IP_VS_CONN_F_NOOUTPUT,
    IP_VS_DEST_F_AVAILABLE,
    IP_VS_DEST_F_OVERLOAD,
    IP_VS_SVC_F_HASHED,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
)

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.netns import NetnsIPVS

#: Trash period: a deleted destination lingers this long once idle.
IP_VS_DEST_TRASH_PERIOD_S = 120

SUPPORTED_PROTOCOLS = (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP)



@attrs.define(slots=True, kw_only=True)
class ServiceUser:
    """What user space sends to add or edit a service (``ip_vs_service_user_kern``).

    ``timeout`` is in seconds; ``netmask`` as the kernel stores it.
    """

    af: int = AF_INET
    protocol: int = IPPROTO_TCP
    addr: bytes = b"\0\0\0\0"
    port: int = 0
    fwmark: int = 0
    sched_name: str = "wlc"
    flags: int = 0
    timeout: int = 0
    netmask: int = 0xFFFFFFFF
    pe_name: str = ""


@attrs.define(slots=True, kw_only=True)
class DestUser:
    """What user space sends to add or edit a destination (``ip_vs_dest_user_kern``)."""

    addr: bytes
    port: int
    af: int = AF_INET
    conn_flags: int = uapi.IP_VS_CONN_F_DROUTE
    weight: int = 1
    u_threshold: int = 0
    l_threshold: int = 0
    tun_type: int = 0
    tun_port: int = 0
    tun_flags: int = 0


# --------------------------------------------------------------------------
# Lookups


def service_find(ipvs: NetnsIPVS, af: int, protocol: int, addr: bytes, port: int) -> Service | None:
    """Exact (proto, addr, port) lookup (``__ip_vs_service_find``)."""
    return ipvs.svc_table.get(svc_key(protocol, addr, port))


def fwm_service_find(ipvs: NetnsIPVS, af: int, fwmark: int) -> Service | None:
    """``__ip_vs_svc_fwm_find``: the firewall-mark service of ``fwmark`` in address family ``af``, or None."""
    return ipvs.fwm_table.get((af, fwmark))


def service_get(
    ipvs: NetnsIPVS, af: int, fwmark: int, protocol: int, addr: bytes, port: int
) -> Service | None:
    """The packet-path lookup with the kernel's fallbacks (``ip_vs_service_find``).

    fwmark first, then exact, then the FTP data-port rule, then port zero.
    """
    if fwmark:
        svc = ipvs.fwm_table.get((af, fwmark))
        if svc is not None:
            return svc
    table = ipvs.svc_table
    svc = table.get(svc_key(protocol, addr, port))
    if svc is not None:
        return svc
    if ipvs.ftpsvc_counter and protocol == IPPROTO_TCP and (port == FTPDATA or port >= 1024):
        # An FTP data connection to a persistent FTP service's VIP.
        svc = table.get(svc_key(protocol, addr, FTPPORT))
        if svc is not None:
            return svc
    if ipvs.nullsvc_counter:
        return table.get(svc_key(protocol, addr, 0))
    return None


def _user_service_find(ipvs: NetnsIPVS, u: ServiceUser) -> Service | None:
    if u.fwmark:
        return fwm_service_find(ipvs, u.af, u.fwmark)
    return service_find(ipvs, u.af, u.protocol, u.addr, u.port)


def find_dest(svc: Service, af: int, addr: bytes, port: int) -> Dest | None:
    """``ip_vs_lookup_dest``: a destination of ``svc`` by (af, addr, port)."""
    for d in svc.destinations:
        if d.port == port and d.addr == addr and d.af == af:
            return d
    return None


def find_real_service(ipvs: NetnsIPVS, af: int, protocol: int, addr: bytes, port: int) -> Dest | None:
    """``ip_vs_find_real_service``: the MASQ dest ``addr:port`` of some service.

    When several services share that real server, the one hashed last
    is the answer (the head of the kernel's hash chain), whatever its
    service is like; a fwmark service's dest matches any protocol.
    """
    for d in ipvs.rs_table.get((af, addr, port), ()):
        if (d.protocol == protocol or d.vfwmark) and d.conn_flags & IP_VS_CONN_F_FWD_MASK == IP_VS_CONN_F_MASQ:
            return d
    return None


def has_real_service(ipvs: NetnsIPVS, af: int, protocol: int, addr: bytes, port: int) -> bool:
    """Is ``addr:port`` a MASQ real server of some service (``ip_vs_has_real_service``:
    the same walk of the chain as :func:`find_real_service`)?"""
    return find_real_service(ipvs, af, protocol, addr, port) is not None


# --------------------------------------------------------------------------
# Services


def _check_service_user(u: ServiceUser) -> None:
    if u.protocol not in SUPPORTED_PROTOCOLS:
        raise IPVSError(errno.EFAULT, "invalid protocol")
    if u.af not in (AF_INET, AF_INET6):
        raise IPVSError(errno.EAFNOSUPPORT)
    if len(u.addr) != (4 if u.af == AF_INET else 16):
        raise IPVSError(errno.EINVAL, "address does not match the family")
    if not 0 <= u.port <= 0xFFFF or not 0 <= u.fwmark <= 0xFFFFFFFF:
        raise IPVSError(errno.EINVAL, "port or fwmark out of range")
    if u.af == AF_INET6 and not 1 <= u.netmask <= 128:
        raise IPVSError(errno.EINVAL, "bad IPv6 prefix length")
    if len(u.sched_name) >= uapi.IP_VS_SCHEDNAME_MAXLEN:
        raise IPVSError(errno.EINVAL, "scheduler name too long")
    if u.timeout < 0 or u.timeout > uapi.IP_VS_MAX_PERSISTENT_TIMEOUT * 1000:
        raise IPVSError(errno.EINVAL, "bad persistence timeout")


def _pe_conn_out(name: str) -> bool:
    """Does the engine ``name`` have ``conn_out`` (counted in ``conn_out_counter``)?"""
    if not name:
        return False
    pe = pe_lookup(name)
    return pe is not None and pe.conn_out is not None


def _check_pe(name: str) -> None:
    # ip_vs_pe_getbyname, loading ipvs.pe.<name> on demand: ENOENT when
    # no such persistence engine exists.
    if name and pe_get(name) is None:
            raise IPVSError(errno.ENOENT, f"persistence engine {name!r} not found")


def _hash_service(ipvs: NetnsIPVS, svc: Service) -> None:
    if svc.fwmark:
        ipvs.fwm_table[(svc.af, svc.fwmark)] = svc
    else:
        ipvs.svc_table[svc.key()] = svc
    svc.flags |= IP_VS_SVC_F_HASHED
    ipvs.svc_seq += 1
    ipvs.svc_order[svc] = ipvs.svc_seq


def _unhash_service(ipvs: NetnsIPVS, svc: Service) -> None:
    if svc.fwmark:
        ipvs.fwm_table.pop((svc.af, svc.fwmark), None)
    else:
        ipvs.svc_table.pop(svc.key(), None)
    ipvs.svc_order.pop(svc, None)
    svc.flags &= ~IP_VS_SVC_F_HASHED


#: Settings a scheduler module registers as sysctls: name -> scheduler.
#: In Debian's modular kernel they exist once the module is loaded.
MODULE_SYSCTLS = {"lblc_expiration": "lblc", "lblcr_expiration": "lblcr"}


def _scheduler_get(ipvs: NetnsIPVS, name: str):
    """``ip_vs_scheduler_get``: the scheduler class (ENOENT if none), its
    module now loaded in the instance (``request_module``)."""
    sched_cls = scheduler_get(name)
    if sched_cls is None:
        raise IPVSError(errno.ENOENT, f"scheduler {name!r} not found")
    ipvs.sched_modules.add(sched_cls.name)
    return sched_cls


def add_service(ipvs: NetnsIPVS, u: ServiceUser) -> Service:
    """``IPVS_CMD_NEW_SERVICE``: EEXIST if present, ENOENT for an unknown scheduler."""
    _check_service_user(u)
    if _user_service_find(ipvs, u) is not None:
        raise IPVSError(errno.EEXIST, "service already exists")
    sched_cls = _scheduler_get(ipvs, u.sched_name)
    _check_pe(u.pe_name)
    svc = Service(
        af=u.af,
        protocol=u.protocol,
        addr=u.addr,
        port=u.port,
        fwmark=u.fwmark,
        flags=u.flags & ~IP_VS_SVC_F_HASHED,
        timeout=u.timeout * ipvs.hz,
        netmask=u.netmask,
        pe_name=u.pe_name,  # the engine (svc->pe), checked by _check_pe
    )
    svc.scheduler = sched_cls(svc)
    svc.scheduler.netns = ipvs  # lblc/lblcr read their expiration sysctl through it
    if svc.port == FTPPORT and not svc.fwmark:
        ipvs.ftpsvc_counter += 1
    elif svc.port == 0 and not svc.fwmark:
        ipvs.nullsvc_counter += 1
    if _pe_conn_out(svc.pe_name):
        ipvs.conn_out_counter += 1
    ipvs.est.start(svc.stats)
    _hash_service(ipvs, svc)
    ipvs.enable = True
    return svc


def edit_service(ipvs: NetnsIPVS, u: ServiceUser) -> Service:
    """``IPVS_CMD_SET_SERVICE``: ESRCH if absent; swaps the scheduler if named differently."""
    _check_service_user(u)
    svc = _user_service_find(ipvs, u)
    if svc is None:
        raise IPVSError(errno.ESRCH, "no such service")
    sched_cls = _scheduler_get(ipvs, u.sched_name)
    _check_pe(u.pe_name)
    # The kernel keeps the HASHED bit and takes everything else from user space.
    svc.flags = (u.flags & ~IP_VS_SVC_F_HASHED) | (svc.flags & IP_VS_SVC_F_HASHED)
    svc.timeout = u.timeout * ipvs.hz
    svc.netmask = u.netmask
    ipvs.conn_out_counter += _pe_conn_out(u.pe_name) - _pe_conn_out(svc.pe_name)
    svc.pe_name = u.pe_name  # an edit without --pe drops the engine, as the kernel's does
    if svc.scheduler is None or svc.scheduler.name != sched_cls.name:
        if svc.scheduler is not None:
            svc.scheduler.done_service()
        svc.scheduler = sched_cls(svc)
        svc.scheduler.netns = ipvs
        # A new scheduler learns the existing destinations oldest first, so
        # its internal view ends up in list order.
        for d in reversed(svc.destinations):
            svc.scheduler.add_dest(d)
    return svc


def _unlink_service(ipvs: NetnsIPVS, svc: Service) -> None:
    """``__ip_vs_del_service``: unhash, move every dest to the trash."""
    _unhash_service(ipvs, svc)
    ipvs.est.stop(svc.stats)
    if svc.port == FTPPORT and not svc.fwmark:
        ipvs.ftpsvc_counter -= 1
    elif svc.port == 0 and not svc.fwmark:
        ipvs.nullsvc_counter -= 1
    if _pe_conn_out(svc.pe_name):
        ipvs.conn_out_counter -= 1
    for d in list(svc.destinations):
        _unlink_dest(ipvs, svc, d, svcupd=False)
        _trash_dest(ipvs, d)
    if svc.scheduler is not None:
        svc.scheduler.done_service()
    ipvs.conn_tab.unbind_service(svc)


def del_service(ipvs: NetnsIPVS, u: ServiceUser) -> None:
    """``IPVS_CMD_DEL_SERVICE``: ESRCH if absent."""
    svc = _user_service_find(ipvs, u)
    if svc is None:
        raise IPVSError(errno.ESRCH, "no such service")
    _unlink_service(ipvs, svc)


def flush(ipvs: NetnsIPVS) -> None:
    """``IPVS_CMD_FLUSH`` (ipvsadm -C): delete every service."""
    for svc in list(ipvs.svc_order):
        _unlink_service(ipvs, svc)


# --------------------------------------------------------------------------
# Destinations


_IN6ADDR_ANY = bytes(16)


def _check_dest_user(svc: Service, u: DestUser) -> None:
    if u.weight < 0:
        raise IPVSError(errno.ERANGE, "weight below zero")
    if u.weight > INT_MAX:  # the kernel's weight is an int: 2^31 and above read negative
        raise IPVSError(errno.ERANGE, "weight too large")
    if u.l_threshold > u.u_threshold:
        raise IPVSError(errno.ERANGE, "l_threshold above u_threshold")
    if u.u_threshold < 0 or u.l_threshold < 0:
        raise IPVSError(errno.ERANGE, "negative threshold")
    if u.tun_type == uapi.IP_VS_CONN_F_TUNNEL_TYPE_GUE and not u.tun_port:
        raise IPVSError(errno.EINVAL, "tunnel port is zero")
    if len(u.addr) != (4 if u.af == AF_INET else 16):
        raise IPVSError(errno.EINVAL, "address does not match the family")
    if not 0 <= u.port <= 0xFFFF:
        raise IPVSError(errno.EINVAL, "port out of range")
    if u.af != svc.af and (u.conn_flags & IP_VS_CONN_F_FWD_MASK) != uapi.IP_VS_CONN_F_TUNNEL:
        # Mixed families only make sense for tunnels.
        raise IPVSError(errno.EINVAL, "mixed address family needs tunnelling")
    # Multicast is 224.0.0.0/4 or ff00::/8 (tested on the first byte: an
    # ipaddress object per destination is a large part of a bulk restore).
    if len(u.addr) == 4:
        not_unicast = (u.addr[0] & 0xF0) == 0xE0 or u.addr in (b"\xff\xff\xff\xff", b"\0\0\0\0")
    else:
        # ipv6_addr_type: multicast and :: are not unicast; a link-local
        # (fe80::/10) real server is refused too (the kernel allows one
        # that is a local address, which the control plane cannot know).
        not_unicast = u.addr[0] == 0xFF or u.addr == _IN6ADDR_ANY or (u.addr[0] == 0xFE and u.addr[1] & 0xC0 == 0x80)
    if not_unicast:
        # ip_vs_new_dest/__ip_vs_update checks: the real server must be unicast.
        raise IPVSError(errno.EINVAL, "real server address is not unicast")


def _update_dest(ipvs: NetnsIPVS, svc: Service, dest: Dest, u: DestUser, add: bool) -> None:
    """``__ip_vs_update_dest``: apply user settings, link when adding."""
    conn_flags = (u.conn_flags & IP_VS_CONN_F_DEST_MASK) | IP_VS_CONN_F_INACTIVE
    if (conn_flags & IP_VS_CONN_F_FWD_MASK) != IP_VS_CONN_F_MASQ:
        conn_flags |= IP_VS_CONN_F_NOOUTPUT
        _rs_unhash(ipvs, dest)
    else:
        # MASQ real servers go into the rs_table used by ip_vs_out and nat_icmp_send.
        _rs_hash(ipvs, dest)
    dest.conn_flags = conn_flags
    dest.tun_type, dest.tun_port, dest.tun_flags = u.tun_type, u.tun_port, u.tun_flags
    # The kernel keeps the latest non-zero weight, but an add (even one
    # reviving a dest from the trash) always sets it, zero included.
    if add or u.weight != 0:
        dest.last_weight = u.weight
    dest.weight = u.weight
    # New thresholds re-check the overload flag against the connections held
    # (Debian's 6.1.192 carries upstream's newer rule; the recorded proof is
    # tests/kernel/scenarios/thresholds_edit.sh): -x 0 lifts it, reaching -x
    # sets it, and below it the flag is lifted as ip_vs_unbind_dest lifts it.
    changed = (u.u_threshold, u.l_threshold) != (dest.u_threshold, dest.l_threshold)
    dest.u_threshold = u.u_threshold
    dest.l_threshold = u.l_threshold
    conns = dest.activeconns + dest.inactconns
    if changed and not u.u_threshold:
        dest.flags &= ~IP_VS_DEST_F_OVERLOAD
    elif changed and conns >= u.u_threshold:
        dest.flags |= IP_VS_DEST_F_OVERLOAD
    elif changed and (conns < u.l_threshold if u.l_threshold else conns * 4 < u.u_threshold * 3):
        dest.flags &= ~IP_VS_DEST_F_OVERLOAD
    dest.svc = svc
    if add:
        # The dest's counts reach its service's and the total's counters
        # through Stats.push (see ipvs.est).
        dest.stats.parents = (svc.stats, ipvs.tot_stats)
        ipvs.est.start(dest.stats)
        svc.destinations.insert(0, dest)  # the head: newest first
        if svc.scheduler is not None:
            svc.scheduler.add_dest(dest)
    elif svc.scheduler is not None:
        svc.scheduler.upd_dest(dest)


def _rs_hash(ipvs: NetnsIPVS, dest: Dest) -> None:
    if not dest.in_rs_table:
        # hlist_add_head_rcu: the newest dest heads its chain.
        ipvs.rs_table.setdefault((dest.af, dest.addr, dest.port), []).insert(0, dest)
        dest.in_rs_table = True


def _rs_unhash(ipvs: NetnsIPVS, dest: Dest) -> None:
    if dest.in_rs_table:
        key = (dest.af, dest.addr, dest.port)
        chain = ipvs.rs_table[key]
        chain.remove(dest)
        if not chain:
            del ipvs.rs_table[key]
        dest.in_rs_table = False


def _find_service_for_dest(ipvs: NetnsIPVS, u: ServiceUser) -> Service:
    svc = _user_service_find(ipvs, u)
    if svc is None:
        raise IPVSError(errno.ESRCH, "service not defined")
    return svc


def _trash_key(svc: Service, af: int, addr: bytes, port: int) -> tuple:
    ident = (svc.fwmark,) if svc.fwmark else (svc.protocol, svc.addr, svc.port)
    return (af, addr, port, *ident)


def add_dest(ipvs: NetnsIPVS, su: ServiceUser, u: DestUser) -> Dest:
    """``IPVS_CMD_NEW_DEST``: ESRCH no service, EEXIST duplicate, ERANGE bad weight/thresholds."""
    svc = _find_service_for_dest(ipvs, su)
    _check_dest_user(svc, u)
    if find_dest(svc, u.af, u.addr, u.port) is not None:
        raise IPVSError(errno.EEXIST, "destination already exists")
    dest = ipvs.dest_trash.pop(_trash_key(svc, u.af, u.addr, u.port), None)
    if dest is not None:
        # Revived from the trash: counters and stats are kept.
        dest.flags |= IP_VS_DEST_F_AVAILABLE
    else:
        dest = Dest(af=u.af, addr=u.addr, port=u.port)
        dest.protocol = svc.protocol
        dest.vaddr = svc.addr
        dest.vport = svc.port
        dest.vfwmark = svc.fwmark
    _update_dest(ipvs, svc, dest, u, add=True)
    return dest


def edit_dest(ipvs: NetnsIPVS, su: ServiceUser, u: DestUser) -> Dest:
    """``IPVS_CMD_SET_DEST``: ESRCH no service, ENOENT no such destination."""
    svc = _find_service_for_dest(ipvs, su)
    _check_dest_user(svc, u)
    dest = find_dest(svc, u.af, u.addr, u.port)
    if dest is None:
        raise IPVSError(errno.ENOENT, "no such destination")
    _update_dest(ipvs, svc, dest, u, add=False)
    return dest


def _unlink_dest(ipvs: NetnsIPVS, svc: Service, dest: Dest, svcupd: bool) -> None:
    """``__ip_vs_unlink_dest``: out of the list, not available any more."""
    dest.flags &= ~IP_VS_DEST_F_AVAILABLE
    svc.destinations.remove(dest)
    _rs_unhash(ipvs, dest)
    if svcupd and svc.scheduler is not None:
        svc.scheduler.del_dest(dest)


def _trash_dest(ipvs: NetnsIPVS, dest: Dest) -> None:
    """``__ip_vs_del_dest``: stop the estimator and keep the dest for reuse."""
    ipvs.est.stop(dest.stats)
    svc = dest.svc
    dest.idle_start = 0
    if svc is not None:
        if not ipvs.dest_trash:
            # The first dest in an empty trash arms the timer.
            ipvs.dest_trash_timer = ipvs.now + ((IP_VS_DEST_TRASH_PERIOD_S * ipvs.hz) >> 1)
        ipvs.dest_trash[_trash_key(svc, dest.af, dest.addr, dest.port)] = dest


def del_dest(ipvs: NetnsIPVS, su: ServiceUser, af: int, addr: bytes, port: int) -> None:
    """``IPVS_CMD_DEL_DEST``: ESRCH no service, ENOENT no such destination."""
    svc = _find_service_for_dest(ipvs, su)
    dest = find_dest(svc, af, addr, port)
    if dest is None:
        raise IPVSError(errno.ENOENT, "no such destination")
    _unlink_dest(ipvs, svc, dest, svcupd=True)
    _trash_dest(ipvs, dest)
    if ipvs.sysctl.expire_nodest_conn:
        # 5.9+: connections of a deleted dest are flushed soon after.
        ipvs.conn_tab.expire_dest_conns(dest, ipvs.now)


def dest_trash_expire(ipvs: NetnsIPVS, now: int) -> None:
    """``ip_vs_dest_trash_expire``: the trash timer (every 60 s while the
    trash is not empty).

    A dest still referenced by connections is left alone; an unreferenced
    one is first stamped idle, and freed at a later run one trash period
    (120 s) after the stamp, so a lone dest deleted at ``t`` can be revived
    until about ``t + 180 s``, as in the kernel.
    """
    period = IP_VS_DEST_TRASH_PERIOD_S * ipvs.hz
    for key, dest in list(ipvs.dest_trash.items()):
        if dest.refcnt:
            continue
        if dest.idle_start:
            if now < dest.idle_start + period:
                continue
        else:
            dest.idle_start = max(1, now)
            continue
        del ipvs.dest_trash[key]
    ipvs.dest_trash_timer = now + (period >> 1) if ipvs.dest_trash else None


# --------------------------------------------------------------------------
# Zero, timeouts, info


def zero(ipvs: NetnsIPVS, u: ServiceUser | None = None) -> None:
    """``IPVS_CMD_ZERO``: one service and its dests, or everything (ESRCH)."""
    if u is None:
        for svc in ipvs.svc_order:
            _zero_service(svc)
        ipvs.tot_stats.zero_stats()
        return
    svc = _user_service_find(ipvs, u)
    if svc is None:
        raise IPVSError(errno.ESRCH, "no such service")
    _zero_service(svc)


def _zero_service(svc: Service) -> None:
    for d in svc.destinations:
        d.stats.zero_stats()
    svc.stats.zero_stats()


def get_timeouts(ipvs: NetnsIPVS) -> tuple[int, int, int]:
    """(tcp, tcpfin, udp) in seconds, as ``ipvsadm --timeout`` shows them."""
    # Every instance has TCP's and UDP's protocol data (make_proto_data).
    return ipvs.proto_data[IPPROTO_TCP].timeouts_seconds_for_admin() + (
        ipvs.proto_data[IPPROTO_UDP].timeout_seconds("UDP"),
    )


def set_timeouts(ipvs: NetnsIPVS, tcp: int, tcpfin: int, udp: int) -> None:
    """``ipvsadm --set``: ESTABLISHED, FIN_WAIT and UDP; 0 leaves a value alone."""
    for v in (tcp, tcpfin, udp):
        if not 0 <= v <= INT_MAX // ipvs.hz:
            raise IPVSError(errno.EINVAL, "timeout out of range")
    tcpd = ipvs.proto_data[IPPROTO_TCP]
    if tcp:
        tcpd.set_timeout("ESTABLISHED", tcp)
    if tcpfin:
        tcpd.set_timeout("FIN_WAIT", tcpfin)
    if udp:
        ipvs.proto_data[IPPROTO_UDP].set_timeout("UDP", udp)


def services_sorted_by_bucket(ipvs: NetnsIPVS) -> list[Service]:
    """Services in the kernel's table walk order (``/proc/net/ip_vs``, --nosort).

    The normal table first, then the fwmark table; inside a bucket the most
    recently hashed service comes first.
    """
    order = ipvs.svc_order
    # The kernel XORs ((size_t)ipvs >> 8) into both hash keys: a per-netns
    # byte (ipvs.svc_hash_salt) that rotates the bucket order.
    salt = ipvs.svc_hash_salt & IP_VS_SVC_TAB_MASK
    normal = [s for s in order if not s.fwmark]
    fwm = [s for s in order if s.fwmark]
    normal.sort(key=lambda s: (s.hash_bucket() ^ salt, -order[s]))
    fwm.sort(key=lambda s: (s.hash_bucket() ^ salt, -order[s]))
    return normal + fwm


# --------------------------------------------------------------------------
# Defense levels (update_defense_level, defense_work_handler)

#: DEFENSE_TIMER_PERIOD: the defense levels are recomputed every second.
DEFENSE_TIMER_PERIOD_S = 1


def update_defense_level(ipvs: NetnsIPVS) -> bool:
    """``update_defense_level``: compare the memory left with ``amemthresh``
    and set the three defenses from their sysctls, as kernel 6.1 does.

    The kernel counts the machine's free and buffer pages (``si_meminfo``);
    PyIPVS counts what is left of its own budget, ``ipvs.availmem`` pages,
    which the daemon computes (a configured limit, else the cgroup's, else
    the machine's available memory, less what the process holds).  Levels
    1 and 2 of each sysctl are the automatic modes: 1 switches itself to 2
    while memory is short and 2 back to 1 when it is not, exactly as the
    kernel rewrites its own sysctls; 3 is always on, 0 always off.

    * ``drop_entry`` sets ``ipvs.dropentry`` (then the table is thinned by
      :meth:`ipvs.conn.ConnTable.random_dropentry` every second);
    * ``drop_packet`` sets ``ip_vs_todrop``'s rate: under pressure one new
      connection in ``amemthresh / (amemthresh - availmem)`` is dropped,
      with level 3 one in ``am_droprate``;
    * ``secure_tcp`` at 2 (or 3) switches TCP to the ``tcp_states_dos``
      table.

    Returns whether the TCP state table changed.
    """
    sc = ipvs.sysctl
    availmem = None if ipvs.availmem is None else max(ipvs.availmem, 0)  # over budget: none left
    amemthresh = max(sc.amemthresh, 0)
    nomem = availmem is not None and availmem < amemthresh

    level = sc.drop_entry
    if level == 0:
        ipvs.dropentry = False
    elif level == 1:
        ipvs.dropentry = nomem
        if nomem:
            sc.drop_entry = 2
    elif level == 2:
        ipvs.dropentry = nomem
        if not nomem:
            sc.drop_entry = 1
    else:
        ipvs.dropentry = True

    level = sc.drop_packet
    if level == 0 or level in (1, 2) and not nomem:
        ipvs.drop_rate = 0
        if level == 2:
            sc.drop_packet = 1
    elif level in (1, 2):
        assert availmem is not None
        ipvs.drop_rate = ipvs.drop_counter = amemthresh // (amemthresh - availmem)
        if level == 1:
            sc.drop_packet = 2
    else:
        ipvs.drop_rate = sc.am_droprate

    old = ipvs.old_secure_tcp
    level = sc.secure_tcp
    to_change = -1
    if level == 0:
        if old >= 2:
            to_change = 0
    elif level == 1:
        if nomem:
            if old < 2:
                to_change = 1
            sc.secure_tcp = 2
        elif old >= 2:
            to_change = 0
    elif level == 2:
        if nomem:
            if old < 2:
                to_change = 1
        else:
            if old >= 2:
                to_change = 0
            sc.secure_tcp = 1
    elif old < 2:
        to_change = 1
    ipvs.old_secure_tcp = sc.secure_tcp
    if to_change >= 0:
        # ip_vs_protocol_timeout_change: every protocol's timeout_change (TCP's switches tables).
        for pd in ipvs.proto_data.values():
            pd.pp.timeout_change(pd, sc.secure_tcp > 1)
        return True
    return False


def defense_work_handler(ipvs: NetnsIPVS, now: int) -> None:
    """``defense_work_handler``: every second, the levels, then the random
    drop of entries when ``drop_entry`` says so."""
    if now < ipvs.defense_at:
        return
    ipvs.defense_at = now + DEFENSE_TIMER_PERIOD_S * ipvs.hz
    update_defense_level(ipvs)
    if ipvs.dropentry:
        ipvs.conn_tab.random_dropentry(now)

