"""Persistence engines: the registry, the engine interface, and the
connections real servers start.

Mirrors ``net/netfilter/ipvs/ip_vs_pe.c`` (kernel 6.1) and, from
``include/net/ip_vs.h``, ``struct ip_vs_pe`` and the part of ``struct
ip_vs_conn_param`` an engine sees.  It also holds the engine side of
``ip_vs_core.c``: :func:`rs_conn_out` (the ``conn_out_counter`` branch of
``ip_vs_out`` with ``__ip_vs_rs_conn_out``) and :func:`new_conn_out`
(``ip_vs_new_conn_out``, which the kernel exports for engines).

A persistence engine changes what a persistence template is keyed by.
Without one, :meth:`ipvs.core.Director._sched_persist` looks a template
up by (protocol, masked client address, virtual address, virtual port).
With one, the engine first reads the packet (:meth:`PersistenceEngine.fill_param`)
and stores a key of its own in :attr:`ConnParam.pe_data` (the SIP engine:
the Call-ID); the template lookup then asks the engine which template
matches (:meth:`PersistenceEngine.ct_match`), and the template created
for a new client keeps the engine and its ``pe_data``, which
``/proc/net/ip_vs_conn`` and ``ipvsadm -Lnc --persistent-conn`` show
(:meth:`PersistenceEngine.show_pe_data`).

Real-server initiated connections (kernel 4.7+): when a packet from a real
server matches no connection, :meth:`ipvs.core.Director.process` calls
:func:`rs_conn_out`, but only while ``NetnsIPVS.conn_out_counter`` (the
services whose engine has ``conn_out``, kept by :mod:`ipvs.ctl`) is not
zero: without such a service the cost is one attribute test on the
no-connection branch.  The packet must be UDP and come from the address
and port of a NAT real server (:func:`ipvs.ctl.find_real_service`: the
dest hashed last when several services share it); that dest's service
must have an engine with ``conn_out``.  The engine (SIP:
``ip_vs_sip_conn_out``, UDP only) calls :func:`new_conn_out`, which makes
the connection (client = the packet's destination, virtual address and
port = the service's, real server = the packet's source), under a
template for a persistent service, and the packet is then source-NATed
as a response of it.

The kernel autoloads ``ip_vs_pe_<name>`` when a service asks for an
unknown engine; :func:`pe_get` imports ``ipvs.pe.<name>`` the same way.
The only engine the kernel ships is ``sip`` (:mod:`ipvs.pe.sip`).

Differences from the kernel, and why:

* ``hashkey_raw`` returns bytes, not a 32-bit bucket number: the
  connection table files engine templates in a dict under
  (engine name, protocol and client address, ``hashkey_raw``), so an
  engine's :meth:`~PersistenceEngine.ct_match` may only accept templates
  with the same protocol, client address and ``hashkey_raw``.  The kernel
  hashes the SIP Call-ID alone, so a Call-ID shared by many clients makes
  one long hash chain; here each client has its own entry (SIP's
  ``ct_match`` compares the client address anyway, so the answers are
  the same).
* Module reference counts do not exist: services name their engine
  (``Service.pe_name``, checked by the control plane with :func:`pe_get`)
  and the packet path finds it with :func:`service_pe`.  An engine is
  never unregistered while PyIPVS runs; templates keep the engine object.
* ``conn_out`` takes the director as its first argument: the kernel's
  reaches the instance through ``svc->ipvs``, a service here has no link
  back to it.
* ``__ip_vs_rs_conn_out`` skips packets of the LOCAL_IN hook (to the
  director itself).  The core sees all packets in one call and cannot
  tell local ones, so :func:`rs_conn_out` skips packets to a virtual
  address instead (they go on to ``ip_vs_in``, as in the kernel), and
  packets whose TTL runs out (``ip_forward`` drops those before the
  FORWARD hook).
* These two functions live here rather than in :mod:`ipvs.core` so the
  core keeps only the hook on its no-connection branch.
* ``fill_param`` gets the packet buffer and the offsets of its IP header
  and end instead of an skb.
"""

from __future__ import annotations

import errno
import importlib
import re
from typing import TYPE_CHECKING, ClassVar

import attrs

from ipvs.ctl import find_real_service
from ipvs.uapi import (
    AF_INET,
    IP_VS_CONN_F_ONE_PACKET,
    IP_VS_CONN_F_TEMPLATE,
    IP_VS_SVC_F_ONEPACKET,
    IP_VS_SVC_F_PERSISTENT,
    IPPROTO_UDP,
)

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.conn import Connection
    from ipvs.core import Director
    from ipvs.ctl import Dest, Service
    from ipvs.netns import NetnsIPVS

__all__ = [
    "IP_VS_PEDATA_MAXLEN",
    "ConnParam",
    "PersistenceEngine",
    "available_pes",
    "new_conn_out",
    "pe_get",
    "pe_lookup",
    "register_pe",
    "rs_conn_out",
    "service_pe",
    "unregister_pe",
]

#: ``IP_VS_PEDATA_MAXLEN``: the longest ``pe_data`` an engine may keep.
IP_VS_PEDATA_MAXLEN = 255

#: Engine names that may name a module under ``ipvs.pe`` (the kernel's
#: ``request_module("ip_vs_pe_%s")``); anything else is never imported.
_MODULE_NAME = re.compile(r"[a-z][a-z0-9_]{0,14}")


@attrs.define(slots=True)
class ConnParam:
    """What a template lookup is made of (``struct ip_vs_conn_param``).

    Addresses are packed bytes (4 or 16 long; for a fwmark template
    ``protocol`` is ``IPPROTO_IP`` and ``vaddr`` holds the mark), ports are
    ints.  ``pe`` is the service's engine and ``pe_data`` what its
    ``fill_param`` found (None: nothing, the plain template lookup applies).
    """

    af: int
    protocol: int
    caddr: bytes
    cport: int
    vaddr: bytes
    vport: int
    pe: PersistenceEngine | None = None
    pe_data: bytes | None = None


class PersistenceEngine:
    """Base class of an engine (``struct ip_vs_pe``); one instance per engine.

    Subclasses set :attr:`name` and override the hooks they have.  A hook
    left as in this class behaves as the kernel's NULL pointer does:
    ``fill_param`` keeps the plain persistence, ``ct_match = None`` makes
    template lookups plain, ``conn_out = None`` means real-server initiated
    packets are not handled.
    """

    #: The engine's name, as ``ipvsadm --pe`` gives it (at most 15 characters).
    name: ClassVar[str] = ""

    def fill_param(self, p: ConnParam, buf: bytearray, l3: int, end: int) -> int:
        """Read the packet at ``buf[l3:end]`` and set ``p.pe_data``.

        Returns 0, or a negative errno: the kernel then drops the packet
        (``ip_vs_sched_persist`` answers ``ignored = -1``).  Leaving
        ``pe_data`` None on success falls back to the plain template.
        """
        return 0

    #: ``ct_match(p, ct) -> bool``: does template ``ct`` serve the lookup ``p``?
    ct_match = None

    def hashkey_raw(self, p: ConnParam, inverse: bool = False) -> bytes:
        """The bytes ``p`` is filed under (with the protocol and client address).

        Any two params ``ct_match`` treats as the same must give equal bytes.
        """
        return p.pe_data or b""

    def show_pe_data(self, cp: Connection) -> str:
        """The text ``/proc/net/ip_vs_conn`` shows after the engine name."""
        return ""

    #: ``conn_out(director, svc, dest, buf, l3, end, dport, cport) -> Connection | None``:
    #: make a connection for a packet real server ``dest`` of ``svc`` starts
    #: (kernel 4.7+); ``dport`` is the packet's source port (the dest's),
    #: ``cport`` its destination port (the client's).  Engines that have it
    #: call :func:`new_conn_out`.  Having it at all makes every service using
    #: the engine count in ``conn_out_counter``.
    conn_out = None

    def __repr__(self) -> str:
        return f"<PersistenceEngine {self.name}>"


_REGISTRY: dict[str, PersistenceEngine] = {}


def register_pe(pe: PersistenceEngine) -> PersistenceEngine:
    """``register_ip_vs_pe``: add an engine; a second one of that name is EINVAL."""
    from ipvs.ctl import IPVSError

    if not pe.name or pe.name in _REGISTRY:
        raise IPVSError(errno.EINVAL, f"[{pe.name}] pe already existed in the system")
    _REGISTRY[pe.name] = pe
    return pe


def unregister_pe(pe: PersistenceEngine) -> None:
    """``unregister_ip_vs_pe``: remove an engine (templates that use it keep it)."""
    if _REGISTRY.get(pe.name) is pe:
        del _REGISTRY[pe.name]


def pe_lookup(name: str) -> PersistenceEngine | None:
    """``__ip_vs_pe_getbyname``: a registered engine, without loading anything."""
    return _REGISTRY.get(name)


def pe_get(name: str) -> PersistenceEngine | None:
    """``ip_vs_pe_getbyname``: find an engine, importing ``ipvs.pe.<name>`` on demand.

    None when there is no such engine (the control plane answers ENOENT).
    """
    pe = _REGISTRY.get(name)
    if pe is None and _MODULE_NAME.fullmatch(name):
        try:
            importlib.import_module(f"ipvs.pe.{name}")
        except ImportError:
            return None
        pe = _REGISTRY.get(name)
    return pe


def available_pes() -> list[str]:
    """Names of the engines that load (the kernel ships ``sip`` only)."""
    return [n for n in ("sip",) if pe_get(n) is not None]


def service_pe(svc: Service) -> PersistenceEngine | None:
    """The engine of ``svc`` (the kernel's ``svc->pe``), or None."""
    name = svc.pe_name
    return _REGISTRY.get(name) if name else None


# --------------------------------------------------------------------------
# Real-server initiated connections (ip_vs_core.c's conn_out path)


def _to_virtual_address(ipvs: NetnsIPVS, daddr: bytes) -> bool:
    """Is ``daddr`` a virtual address (the kernel's LOCAL_IN case)?"""
    return any(s.addr == daddr for s in ipvs.svc_table.values())


def rs_conn_out(
    director: Director, buf: bytearray, l3: int, l4: int, end: int, proto: int, now: int, partial: bool
) -> int | None:
    """The ``conn_out_counter`` branch of ``ip_vs_out`` with ``__ip_vs_rs_conn_out``.

    A packet matched no connection and some service's engine has
    ``conn_out``.  If it is UDP from a NAT real server of a service whose
    engine has ``conn_out``, the engine may make a connection for it; the
    packet is then a response of that connection (``handle_response``).
    Returns that verdict, or None: not handled, go on as without engines.
    """
    if proto != IPPROTO_UDP:
        return None  # TCP/SCTP servers open connections from ephemeral ports
    if buf[l3 + 8] <= 1:
        # ip_forward answers time exceeded before the FORWARD hook: the
        # kernel never sees it here, so no connection is made for it.
        return None
    ipvs = director.ipvs
    sport = (buf[l4] << 8) | buf[l4 + 1]
    dest = find_real_service(ipvs, AF_INET, proto, bytes(buf[l3 + 12 : l3 + 16]), sport)
    if dest is None:
        return None
    svc = dest.svc
    pe = service_pe(svc) if svc is not None else None
    if pe is None or pe.conn_out is None:
        return None
    # __ip_vs_rs_conn_out ignores packets for the director itself (hook
    # LOCAL_IN); PyIPVS's core sees those too and knows its virtual
    # addresses, so a packet to one of them goes on to ip_vs_in.
    if _to_virtual_address(ipvs, bytes(buf[l3 + 16 : l3 + 20])):
        return None
    cp = pe.conn_out(director, svc, dest, buf, l3, end, sport, (buf[l4 + 2] << 8) | buf[l4 + 3])
    if cp is None:
        return None
    if director.trace is not None:
        director.trace(f"conn_out {svc!r}: {dest!r} starts {director._conn_text(cp)}")
    verdict = director._handle_response(cp, buf, l3, l4, end, proto, now, partial)
    # (With the TTL checked above, handle_response cannot drop it.)  Its
    # ip_vs_conn_put expires a one-packet connection at once.
    if cp.flags & IP_VS_CONN_F_ONE_PACKET:
        cp.wheel_at = -1  # del_timer: the filing handle_response made is skipped as stale
        director._conn_expire(cp, now)
    return verdict


def new_conn_out(
    director: Director, svc: Service, dest: Dest, buf: bytearray, l3: int, end: int, dport: int, cport: int
) -> Connection | None:
    """``ip_vs_new_conn_out``: a connection for a packet ``dest`` starts.

    The client is the packet's destination ``caddr:cport``, the virtual
    side the service's ``vaddr:vport``, the real side the packet's source
    ``daddr:dport``.  A persistent service first finds or makes the
    client's template, keyed as a client's own packet would key it (the
    masked client address, the service's address and port, and what the
    engine's ``fill_param`` reads from this packet), and pointing at
    ``dest``: a template naming another server is invalidated and
    replaced.  None when the service is a fwmark one or has port zero, when
    ``fill_param`` refuses the packet, or when the table is full.
    """
    if svc.fwmark or not svc.port or not dport or buf[l3] >> 4 != 4:
        return None  # (IPv4 only: the core has no IPv6 path yet)
    ipvs = director.ipvs
    tab = ipvs.conn_tab
    now = ipvs.now
    protocol = buf[l3 + 9]
    daddr = bytes(buf[l3 + 12 : l3 + 16])
    caddr = bytes(buf[l3 + 16 : l3 + 20])
    vaddr, vport = svc.addr, svc.port
    ct = None
    if svc.flags & IP_VS_SVC_F_PERSISTENT:
        snet = (int.from_bytes(caddr, "big") & svc.netmask).to_bytes(4, "big")
        found = director._find_template(svc, AF_INET, protocol, snet, vaddr, vport, buf, l3, end)
        if found is None:
            return None
        ct, pe, pe_data = found
        if ct is None or not director._check_template(ct, dest):
            ct = director._conn_new(
                AF_INET, protocol, snet, 0, vaddr, vport, daddr, dport, IP_VS_CONN_F_TEMPLATE, dest,
                pe=pe, pe_data=pe_data,
            )
            if ct is None:
                return None
            ct.timeout = svc.timeout
    flags = IP_VS_CONN_F_ONE_PACKET if svc.flags & IP_VS_SVC_F_ONEPACKET and protocol == IPPROTO_UDP else 0
    cp = director._conn_new(AF_INET, protocol, caddr, cport, vaddr, vport, daddr, dport, flags, dest)
    if cp is None:
        if ct is not None:
            tab.put(ct, now)
        return None
    if ct is not None:
        tab.control_add(cp, ct)
        tab.put(ct, now)
    director._conn_stats(cp)
    return cp
