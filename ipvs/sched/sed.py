"""Shortest expected delay scheduling.

Mirrors ``net/netfilter/ipvs/ip_vs_sed.c`` (kernel 6.1).  Like wlc, but
the overhead is ``activeconns + 1`` (inactive connections do not count):
the destination minimising ``(active + 1) / weight`` wins.  The first
candidate must be not overloaded with weight > 0; later ones are only
checked for OVERLOAD (a weight-0 one cannot win the strict comparison).
Ties keep the earlier, more recently added destination.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ipvs.sched import IPHdr, Scheduler, register_scheduler, scheduler_err
from ipvs.uapi import IP_VS_DEST_F_OVERLOAD

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.ip_vs import Dest


def sed_dest_overhead(dest: Dest) -> int:
    """``ip_vs_sed_dest_overhead``: only active connections count, plus the new one."""
    return dest.activeconns + 1


@register_scheduler
class ShortestExpectedDelay(Scheduler):
    """``ip_vs_sed_scheduler``."""

    name = "sed"

    def schedule(self, iph: IPHdr, now: int) -> Dest | None:
        """``ip_vs_sed_schedule``: the least expected delay ``(activeconns + 1) / weight`` (inactive connections do not
        count), compared as cross products; the first in the list wins a tie.
        """
        dests = iter(self.svc.destinations)
        for least in dests:
            if not least.flags & IP_VS_DEST_F_OVERLOAD and least.weight > 0:
                break
        else:
            scheduler_err(self.svc, "no destination available")
            return None
        loh = sed_dest_overhead(least)
        for d in dests:  # list_for_each_entry_continue
            if d.flags & IP_VS_DEST_F_OVERLOAD:
                continue
            doh = sed_dest_overhead(d)
            if loh * d.weight > doh * least.weight:
                least, loh = d, doh
        return least
