"""Never-queue scheduling.

Mirrors ``net/netfilter/ipvs/ip_vs_nq.c`` (kernel 6.1).  Over the
destinations that are not overloaded and have non-zero weight, in list
order: the first one with no active connection is taken at once;
otherwise it is sed, the minimum of ``(active + 1) / weight`` by the strict
cross-multiplied comparison (ties keep the earlier destination).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ipvs.sched import IPHdr, Scheduler, register_scheduler, scheduler_err
from ipvs.uapi import IP_VS_DEST_F_OVERLOAD

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.ip_vs import Dest


def nq_dest_overhead(dest: Dest) -> int:
    """``ip_vs_nq_dest_overhead``: as sed's, only active connections count."""
    return dest.activeconns + 1


@register_scheduler
class NeverQueue(Scheduler):
    """``ip_vs_nq_scheduler``."""

    name = "nq"

    def schedule(self, iph: IPHdr, now: int) -> Dest | None:
        """``ip_vs_nq_schedule``: the first destination with no active connection if there is one; otherwise the least
        ``(activeconns + 1) / weight``, as sed.
        """
        least = None
        loh = 0
        for d in self.svc.destinations:
            if d.flags & IP_VS_DEST_F_OVERLOAD or not d.weight:
                continue
            doh = nq_dest_overhead(d)
            if d.activeconns == 0:
                return d  # an idle server: no queueing at all
            if least is None or loh * d.weight > doh * least.weight:
                least, loh = d, doh
        if least is None:
            scheduler_err(self.svc, "no destination available")
        return least
