"""Weighted fail-over scheduling.

Mirrors ``net/netfilter/ipvs/ip_vs_fo.c`` (kernel 6.1): always the
destination with the highest weight among those not overloaded; weight 0
never qualifies.  The comparison is strict, so among equal weights the
first in list order (the most recently added) wins.  Connection counts
play no part, so editing weights moves all new traffic at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ipvs.sched import IPHdr, Scheduler, register_scheduler, scheduler_err
from ipvs.uapi import IP_VS_DEST_F_OVERLOAD

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.ip_vs import Dest


@register_scheduler
class WeightedFailOver(Scheduler):
    """``ip_vs_fo_scheduler``."""

    name = "fo"

    def schedule(self, iph: IPHdr, now: int) -> Dest | None:
        """``ip_vs_fo_schedule``: the destination of highest weight that is not overloaded (weight 0 never qualifies);
        the first in the list wins a tie.
        """
        best = None
        hw = 0
        for d in self.svc.destinations:
            if not d.flags & IP_VS_DEST_F_OVERLOAD and d.weight > hw:
                best, hw = d, d.weight
        if best is None:
            scheduler_err(self.svc, "no destination available")
        return best
