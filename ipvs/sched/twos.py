"""Power-of-two-choices scheduling.

Mirrors ``net/netfilter/ipvs/ip_vs_twos.c``, which first appeared after
6.1: it is **not covered by the 6.1 differential tests**, and its choices
are random anyway.

Two destinations are drawn with probability proportional to weight (among
those not overloaded with weight > 0) and the one with the lower
``overhead / weight`` wins; ties keep the first draw.  Each draw is
``prandom_u32() % (total + 1)``, so a draw can be 0 and then lands on the
first eligible destination, exactly as in the kernel.

Difference from the kernel: the random numbers come from a
:class:`random.Random` owned by the scheduler instance (``self.rng``),
which tests and replays can seed; the kernel uses the per-CPU prandom
state.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from ipvs.sched import IPHdr, Scheduler, dest_conn_overhead, register_scheduler, scheduler_err
from ipvs.uapi import IP_VS_DEST_F_OVERLOAD

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.ip_vs import Dest, Service


@register_scheduler
class PowerOfTwoChoices(Scheduler):
    """``ip_vs_twos_scheduler``."""

    name = "twos"

    def __init__(self, svc: Service, seed: int | None = None) -> None:
        super().__init__(svc)
        #: The source of the two draws; reseed it for reproducible runs.
        self.rng = random.Random(seed)

    def schedule(self, iph: IPHdr, now: int) -> Dest | None:
        """``ip_vs_twos_schedule``: draw two destinations with probability proportional to weight and take the one with
        the lower overhead per weight (the first draw on a tie).
        """
        dests = self.svc.destinations
        total = 0
        for d in dests:
            if not d.flags & IP_VS_DEST_F_OVERLOAD and d.weight > 0:
                total += d.weight
        if not total:
            scheduler_err(self.svc, "no destination available")
            return None
        total += 1  # draws are inclusive of the total
        r1 = self.rng.getrandbits(32) % total
        r2 = self.rng.getrandbits(32) % total
        choice1 = choice2 = None
        w1 = w2 = oh1 = oh2 = 0
        for d in dests:
            w = d.weight
            if d.flags & IP_VS_DEST_F_OVERLOAD or w <= 0:
                continue
            r1 -= w
            r2 -= w
            if r1 <= 0 and choice1 is None:
                choice1, w1, oh1 = d, w, dest_conn_overhead(d)
            if r2 <= 0 and choice2 is None:
                choice2, w2, oh2 = d, w, dest_conn_overhead(d)
            if choice1 is not None and choice2 is not None:
                break
        if choice2 is not None and w2 * oh1 > w1 * oh2:
            return choice2
        return choice1
