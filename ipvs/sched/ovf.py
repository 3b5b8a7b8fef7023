"""Overflow-connection scheduling.

Mirrors ``net/netfilter/ipvs/ip_vs_ovf.c`` (kernel 6.1): the destination
with the highest weight, skipping those that are overloaded, of weight 0,
or whose active connections already exceed their weight (so traffic
overflows to the next heaviest).  Strict comparison: the first in list
order wins among equal weights.  Only active connections count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ipvs.sched import IPHdr, Scheduler, register_scheduler, scheduler_err
from ipvs.uapi import IP_VS_DEST_F_OVERLOAD

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.ip_vs import Dest


@register_scheduler
class Overflow(Scheduler):
    """``ip_vs_ovf_scheduler``."""

    name = "ovf"

    def schedule(self, iph: IPHdr, now: int) -> Dest | None:
        """``ip_vs_ovf_schedule``: the destination of highest weight whose active connections do not exceed its weight,
        skipping overloaded ones and weight 0.
        """
        best = None
        hw = 0
        for d in self.svc.destinations:
            w = d.weight
            if d.flags & IP_VS_DEST_F_OVERLOAD or d.activeconns > w or w == 0:
                continue
            if best is None or w > hw:
                best, hw = d, w
        if best is None:
            scheduler_err(self.svc, "no destination available")
        return best
