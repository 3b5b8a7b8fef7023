"""Persistence engines: the registry and the engine interface.

Mirrors ``net/netfilter/ipvs/ip_vs_pe.c`` (kernel 6.1) and ``struct
ip_vs_pe`` from ``include/net/ip_vs.h``.  What an engine is given to read
and fill, ``struct ip_vs_conn_param``, is :class:`ipvs.ip_vs.ConnParam`.

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

Real-server initiated connections (kernel 4.7+) are the core's
(``ip_vs_out``'s ``conn_out_counter`` branch, ``__ip_vs_rs_conn_out`` and
``ip_vs_new_conn_out`` in :mod:`ipvs.core`); an engine takes part through
its ``conn_out`` hook, which the SIP engine implements by calling
:meth:`ipvs.core.Director.new_conn_out`.

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
* ``fill_param`` gets the packet buffer and its descriptor
  (:class:`ipvs.packet.IPHeader`, the kernel's ``struct ip_vs_iphdr``)
  instead of an skb it would parse again.
"""

from __future__ import annotations

import errno
import importlib
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from ipvs.ip_vs import IPVSError

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.conn import Connection
    from ipvs.core import Director
    from ipvs.ip_vs import ConnParam, Dest, Service
    from ipvs.packet import IPHeader

__all__ = [
    "IP_VS_PEDATA_MAXLEN",
    "PersistenceEngine",
    "available_pes",
    "pe_get",
    "pe_lookup",
    "register_pe",
    "service_pe",
    "unregister_pe",
]

#: ``IP_VS_PEDATA_MAXLEN``: the longest ``pe_data`` an engine may keep.
IP_VS_PEDATA_MAXLEN = 255

#: Engine names that may name a module under ``ipvs.pe`` (the kernel's
#: ``request_module("ip_vs_pe_%s")``); anything else is never imported.
_MODULE_NAME = re.compile(r"[a-z][a-z0-9_]{0,14}")


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

    def fill_param(self, p: ConnParam, buf: bytearray, h: IPHeader) -> int:
        """Read the packet in ``buf`` that ``h`` describes and set ``p.pe_data``.

        Returns 0, or a negative errno: the kernel then drops the packet
        (``ip_vs_sched_persist`` answers ``ignored = -1``).  Leaving
        ``pe_data`` None on success falls back to the plain template.
        """
        return 0

    #: ``ct_match(p, ct) -> bool``: does template ``ct`` serve the lookup ``p``?
    #: (An attribute, not a method, so that None can stand for the NULL hook;
    #: a subclass defines it as a method.)
    ct_match: Callable[[ConnParam, Connection], bool] | None = None

    def hashkey_raw(self, p: ConnParam, inverse: bool = False) -> bytes:
        """The bytes ``p`` is filed under (with the protocol and client address).

        Any two params ``ct_match`` treats as the same must give equal bytes.
        """
        return p.pe_data or b""

    def show_pe_data(self, cp: Connection) -> str:
        """The text ``/proc/net/ip_vs_conn`` shows after the engine name."""
        return ""

    #: ``conn_out(director, svc, dest, buf, h, dport, cport) -> Connection | None``:
    #: make a connection for a packet real server ``dest`` of ``svc`` starts
    #: (kernel 4.7+); ``dport`` is the packet's source port (the dest's),
    #: ``cport`` its destination port (the client's).  Engines that have it
    #: call :meth:`ipvs.core.Director.new_conn_out`.  Having it at all makes every service using
    #: the engine count in ``conn_out_counter``.
    conn_out: Callable[[Director, Service, Dest, bytearray, IPHeader, int, int], Connection | None] | None = None

    def __repr__(self) -> str:
        return f"<PersistenceEngine {self.name}>"


_REGISTRY: dict[str, PersistenceEngine] = {}


def register_pe(pe: PersistenceEngine) -> PersistenceEngine:
    """``register_ip_vs_pe``: add an engine; a second one of that name is EINVAL."""
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
