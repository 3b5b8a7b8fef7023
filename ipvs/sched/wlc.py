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

from ipvs.sched import IPHdr, Scheduler, dest_conn_overhead, register_scheduler, scheduler_err
from ipvs.uapi import IP_VS_DEST_F_OVERLOAD

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.ip_vs import Dest, Service


def wlc_pick(svc: Service) -> Dest | None:
    """The weighted least-connection choice over ``svc``, or None."""
    dests = iter(svc.destinations)
    # The first destination that may take a connection starts as the best...
    for least in dests:
        if not least.flags & IP_VS_DEST_F_OVERLOAD and least.weight > 0:
            break
    else:
        return None
    loh = dest_conn_overhead(least)
    # ...and the walk goes on from there (list_for_each_entry_continue).
    for d in dests:
        if d.flags & IP_VS_DEST_F_OVERLOAD:
            continue
        doh = dest_conn_overhead(d)
        if loh * d.weight > doh * least.weight:
            least, loh = d, doh
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
