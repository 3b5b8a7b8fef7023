"""Scheduler registry and the scheduler interface.

Mirrors ``net/netfilter/ipvs/ip_vs_sched.c`` and ``struct ip_vs_scheduler``
from ``include/net/ip_vs.h``.

Difference from the kernel: the kernel keeps one scheduler object per
algorithm and hangs per-service state off ``svc->sched_data``.  Here a
scheduler class is instantiated once per service (``init_service`` is the
constructor) and the instance *is* the sched_data.  The hooks keep the
kernel's names and meaning: ``add_dest``, ``del_dest``, ``upd_dest`` are
called after the destination list changed, ``schedule`` picks a
destination for a new connection or returns ``None``.

Every scheduler walks ``svc.destinations`` from the head, and the control
plane inserts new destinations at the head, so the most recently added
destination is tried first, exactly as in the kernel.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, ClassVar

from ipvs.ip_vs import HZ, IPHdr, format_addr
from ipvs.uapi import IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.ip_vs import Dest, Service
    from ipvs.netns import NetnsIPVS

log = logging.getLogger("ipvs.sched")

#: Scheduler names ipvsadm 1.31 knows, in its help-text order, plus twos.
SCHEDULER_NAMES = (
    "rr",
    "wrr",
    "lc",
    "wlc",
    "lblc",
    "lblcr",
    "dh",
    "sh",
    "sed",
    "nq",
    "fo",
    "ovf",
    "mh",
    "twos",
)


class Scheduler:
    """Base class: one instance per virtual service.

    ``netns`` is the owning :class:`~ipvs.netns.NetnsIPVS` when the control
    plane sets it after construction; schedulers that read settings
    (lblc, lblcr: ``lblc_expiration``) use the kernel defaults without it.
    """

    name: ClassVar[str] = ""
    netns: NetnsIPVS | None = None

    def __init__(self, svc: Service) -> None:
        self.svc = svc

    def done_service(self) -> None:
        """Release per-service state (``done_service``)."""

    def add_dest(self, dest: Dest) -> None:
        """``dest`` was just inserted at the head of ``svc.destinations``."""

    def del_dest(self, dest: Dest) -> None:
        """``dest`` was just unlinked from ``svc.destinations``."""

    def upd_dest(self, dest: Dest) -> None:
        """``dest``'s weight or thresholds were edited."""

    def schedule(self, iph: IPHdr, now: int) -> Dest | None:  # pragma: no cover - abstract
        """Pick the real server for a new connection (the ops' ``schedule``): the packet's header fields and the tick
        count in, a destination out, or None when none is available (the scheduler then logs the kernel's "no
        destination available").
        """
        raise NotImplementedError


_REGISTRY: dict[str, type[Scheduler]] = {}


def register_scheduler(cls: type[Scheduler]) -> type[Scheduler]:
    """Class decorator: ``register_ip_vs_scheduler``."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"bad or duplicate scheduler name {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def scheduler_get(name: str) -> type[Scheduler] | None:
    """Find a scheduler by name, loading ``ipvs.sched.<name>`` on demand.

    This is the kernel's ``request_module("ip_vs_%s")`` autoload.  Unknown
    names give ``None`` (the control plane turns that into ENOENT).
    """
    cls = _REGISTRY.get(name)
    if cls is None and name.isidentifier() and name.islower():
        try:
            importlib.import_module(f"ipvs.sched.{name}")
        except ImportError:
            return None
        cls = _REGISTRY.get(name)
    return cls


def available_schedulers() -> list[str]:
    """Names that load (for help texts and /proc-like listings)."""
    return [n for n in SCHEDULER_NAMES if scheduler_get(n) is not None]


#: ``GOLDEN_RATIO_32`` of ``include/linux/hash.h`` (the multiplier since 4.7).
GOLDEN_RATIO_32 = 0x61C88647


def hash_32(val: int, bits: int) -> int:
    """The kernel's ``hash_32(val, bits)``: the top ``bits`` of the 32-bit
    product of the u32 ``val`` and :data:`GOLDEN_RATIO_32`.

    sh, dh, lblc and lblcr hash with it in 6.1 (older kernels multiplied
    by 2654435761 and kept the low bits).
    """
    return (((val & 0xFFFFFFFF) * GOLDEN_RATIO_32) & 0xFFFFFFFF) >> (32 - bits)


def dest_conn_overhead(dest: Dest) -> int:
    """``ip_vs_dest_conn_overhead``: active connections weigh 256 inactive."""
    return (dest.activeconns << 8) + dest.inactconns


class RateLimit:
    """``struct ratelimit_state`` and ``___ratelimit`` (``lib/ratelimit.c``):
    at most ``burst`` messages in each ``interval_s`` seconds; when a new
    interval starts, the count of messages held back is logged once.

    Time is the instance's jiffies (``NetnsIPVS.now``) handed in: the
    sans-I/O core reads no clock.
    """

    def __init__(self, name: str, interval_s: int, burst: int) -> None:
        self.name = name
        self.interval_s = interval_s
        self.burst = burst
        self.begin: int | None = None
        self.printed = 0
        self.missed = 0

    def __call__(self, now: int, hz: int) -> bool:
        """May a message go out at jiffy ``now``?"""
        if self.begin is None:
            self.begin = now
        if now > self.begin + self.interval_s * hz:
            if self.missed:
                log.warning("%s: %d callbacks suppressed", self.name, self.missed)
            self.begin = now
            self.printed = 0
            self.missed = 0
        if self.printed < self.burst:
            self.printed += 1
            return True
        self.missed += 1
        return False


#: ``net_ratelimit()``: 10 messages per 5 s (``net_ratelimit_state`` in
#: ``net/core/utils.c``), one state for every instance, as in the kernel.
net_ratelimit = RateLimit("net_ratelimit", 5, 10)


def scheduler_err(svc: Service, msg: str) -> None:
    """``ip_vs_scheduler_err``: the "no destination available" log line,
    behind ``net_ratelimit()`` (``IP_VS_ERR_RL``).

    The clock is the service's instance (``svc.scheduler.netns.now``);
    a scheduler used without an instance counts time as zero, so only the
    first ten lines go out.
    """
    sched = svc.scheduler
    netns = sched.netns if sched is not None else None
    now, hz = (netns.now, netns.hz) if netns is not None else (0, HZ)
    if not net_ratelimit(now, hz):
        return
    # Only a scheduler calls this, so the service has one; "?" if not.
    name = sched.name if sched is not None else "?"
    if svc.fwmark:
        log.info("%s: FWM %d 0x%08X - %s", name, svc.fwmark, svc.fwmark, msg)
    else:
        proto = {IPPROTO_TCP: "TCP", IPPROTO_UDP: "UDP", IPPROTO_SCTP: "SCTP"}.get(svc.protocol, "?")
        log.info("%s: %s %s:%d - %s", name, proto, format_addr(svc.af, svc.addr), svc.port, msg)
