"""Least-connection scheduling.

Mirrors ``net/netfilter/ipvs/ip_vs_lc.c`` (kernel 6.1): the destination
with the smallest :func:`~ipvs.sched.dest_conn_overhead` (active x 256 +
inactive) among those not overloaded and of non-zero weight.  The weight
is otherwise ignored.  Ties go to the first in list order, i.e. the most
recently added destination.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ipvs.sched import IPHdr, Scheduler, dest_conn_overhead, register_scheduler, scheduler_err
from ipvs.uapi import IP_VS_DEST_F_OVERLOAD

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.ip_vs import Dest


@register_scheduler
class LeastConnection(Scheduler):
    """``ip_vs_lc_scheduler``."""

    name = "lc"

    def schedule(self, iph: IPHdr, now: int) -> Dest | None:
        """``ip_vs_lc_schedule``: the available destination (weight > 0, not overloaded) with the least overhead
        ``activeconns * 256 + inactconns``; the first in the list wins a tie.
        """
        least = None
        loh = 0
        for d in self.svc.destinations:
            if d.flags & IP_VS_DEST_F_OVERLOAD or d.weight == 0:
                continue
            doh = dest_conn_overhead(d)
            if least is None or doh < loh:
                least, loh = d, doh
        if least is None:
            scheduler_err(self.svc, "no destination available")
        return least
