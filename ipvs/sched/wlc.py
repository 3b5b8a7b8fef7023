"""Weighted least-connection scheduling (the ipvsadm default).

Mirrors ``net/netfilter/ipvs/ip_vs_wlc.c`` (kernel 6.1).  The first
destination in list order that is not overloaded and has weight > 0 starts
as the best; every later one that is not overloaded replaces it when
``overhead(best) * weight(d) > overhead(d) * weight(best)``, the kernel's
division-free comparison of overhead/weight.  Later destinations are only
checked for OVERLOAD, but one of weight 0 can never win since the left
side is then 0.  The comparison is strict, so ties keep the earlier (more
recently added) destination.

:func:`wlc_pick` is shared with lblc and lblcr, whose kernel files carry
their own copy of this loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ipvs.sched import IPHdr, Scheduler, register_scheduler, scheduler_err
from ipvs.uapi import IP_VS_DEST_F_OVERLOAD

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.ip_vs import Dest, Service


def wlc_pick(svc: Service) -> Dest | None:
    """The weighted least-connection choice over ``svc``, or None."""
    dests = svc.destinations
    n = len(dests)
    i = 0
    while i < n:
        least = dests[i]
        i += 1
        if not least.flags & IP_VS_DEST_F_OVERLOAD and least.weight > 0:
            break
    else:
        return None
    loh = (least.activeconns << 8) + least.inactconns
    lw = least.weight
    while i < n:
        d = dests[i]
        i += 1
        if d.flags & IP_VS_DEST_F_OVERLOAD:
            continue
        doh = (d.activeconns << 8) + d.inactconns
        if loh * d.weight > doh * lw:
            least, loh, lw = d, doh, d.weight
    return least


@register_scheduler
class WeightedLeastConnection(Scheduler):
    """``ip_vs_wlc_scheduler``."""

    name = "wlc"

    def schedule(self, iph: IPHdr, now: int) -> Dest | None:
        """``ip_vs_wlc_schedule``: the destination with the least overhead per weight, ``(activeconns * 256 +
        inactconns) / weight``, compared as cross products (no division); the first in the list wins a tie, and
        weight 0 or overloaded servers are skipped.
        """
        d = wlc_pick(self.svc)
        if d is None:
            scheduler_err(self.svc, "no destination available")
        return d
