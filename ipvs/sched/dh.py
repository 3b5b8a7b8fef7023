"""Destination hashing scheduling.

Mirrors ``net/netfilter/ipvs/ip_vs_dh.c`` (kernel 6.1).  A 256-bucket
table maps ``hash_32(ntohl(addr_fold(daddr)), 8)`` to a destination.  The
buckets are dealt round-robin over the destination list, ignoring weights
(bucket ``i`` gets the ``i mod n``-th destination in list order), and the
table is rebuilt on add and delete only (the kernel has no ``upd_dest``
for dh; weights do not shape the table).

A bucket whose destination is not AVAILABLE, has weight <= 0 or is
overloaded gives no destination; there is no fallback.

The digest (section 5.9) read the old multiplicative hash
``(addr * 2654435761) & 255``; 6.1 uses ``hash_32`` (see
:func:`ipvs.sched.hash_32`), as the recorded ``sched_dh`` kernel golden
confirms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ipvs.ip_vs import addr_fold
from ipvs.sched import IPHdr, Scheduler, hash_32, register_scheduler, scheduler_err
from ipvs.uapi import IP_VS_DEST_F_AVAILABLE, IP_VS_DEST_F_OVERLOAD

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.ip_vs import Dest, Service

#: CONFIG_IP_VS_DH_TAB_BITS default.
DH_TAB_BITS = 8
DH_TAB_SIZE = 1 << DH_TAB_BITS


def dh_hashkey(addr: bytes) -> int:
    """``ip_vs_dh_hashkey``: the bucket of a destination address."""
    return hash_32(addr_fold(addr), DH_TAB_BITS)


@register_scheduler
class DestinationHashing(Scheduler):
    """``ip_vs_dh_scheduler``."""

    name = "dh"

    def __init__(self, svc: Service) -> None:
        super().__init__(svc)
        self.buckets: list[Dest | None] = [None] * DH_TAB_SIZE
        self._reassign()

    def _reassign(self) -> None:
        """``ip_vs_dh_reassign``: deal the buckets over the list in turn."""
        dests = self.svc.destinations
        n = len(dests)
        self.buckets = [dests[i % n] for i in range(DH_TAB_SIZE)] if n else [None] * DH_TAB_SIZE

    def add_dest(self, dest: Dest) -> None:
        """``ip_vs_dh_dest_changed``: deal the 256 buckets over the new list again."""
        self._reassign()

    def del_dest(self, dest: Dest) -> None:
        """``ip_vs_dh_dest_changed``: deal the 256 buckets over the new list again."""
        self._reassign()

    def done_service(self) -> None:
        """``ip_vs_dh_done_svc``: empty the bucket table."""
        self.buckets = [None] * DH_TAB_SIZE

    def schedule(self, iph: IPHdr, now: int) -> Dest | None:
        """``ip_vs_dh_schedule``: the destination of the bucket the packet's destination address hashes to, if it is
        available, of weight > 0 and not overloaded; None otherwise (no fallback).
        """
        d = self.buckets[dh_hashkey(iph.daddr)]  # ip_vs_dh_get
        if d is None or not d.flags & IP_VS_DEST_F_AVAILABLE or d.weight <= 0 or d.flags & IP_VS_DEST_F_OVERLOAD:
            scheduler_err(self.svc, "no destination available")
            return None
        return d
