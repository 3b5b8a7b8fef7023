"""Power-of-two-choices scheduling.

Mirrors ``net/netfilter/ipvs/ip_vs_twos.c``, which first appeared after
6.1: it is **not covered by the 6.1 differential tests**, and its choices
are random anyway.

Two destinations are drawn with probability proportional to weight (among
those not overloaded with weight > 0) and the one with the lower
``overhead / weight`` wins; ties keep the first draw.  Each draw is
``prandom_u32() % (total + 1)``, so a draw can be 0 and then lands on the
first eligible destination, exactly as in the kernel.

Differences from the kernel:

* the random numbers come from a :class:`random.Random` owned by the
  scheduler instance (``self.rng``), which tests and replays can seed; the
  kernel uses the per-CPU prandom state;
* the kernel's second walk subtracts each weight from both draws and
  stops once both have reached 0 or below; here the walk keeps one running
  sum of the weights it has passed and holds it against the lower draw,
  then the higher one.  A destination is a draw's pick when the sum
  reaches the draw, in both forms, so the choices are the same
  (``test_twos`` holds it to the kernel's loop), and each destination is
  visited once.  The loop has one sum and one test where the kernel's has
  two of each, and PyPy runs it twice as fast: 3.5-3.7 us a decision at
  1000 destinations against 5.6-5.9 us with the kernel's loop
  (``bench/sched.py``).  Of those 3.5 us, the first walk (the total) takes
  2.0 and this one 1.5: about 2 ns a destination visited, which is what
  PyPy takes for any loop over objects that reads two of their fields.
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
        rweight1 = self.rng.getrandbits(32) % total
        rweight2 = self.rng.getrandbits(32) % total
        # Pick two weighted servers: the first destination at which the
        # running sum of weights reaches the lower draw, then the one at
        # which it reaches the higher (the same one when it reaches both).
        low, high = min(rweight1, rweight2), max(rweight1, rweight2)
        first = second = None
        target = low
        reached = 0
        for dest in dests:
            if dest.flags & IP_VS_DEST_F_OVERLOAD:
                continue
            weight = dest.weight
            if weight <= 0:
                continue
            reached += weight
            if reached < target:
                continue
            if first is None:
                first, target = dest, high
            if reached >= high:
                second = dest
                break
        if first is None or second is None:  # cannot happen: both draws are at most the total
            return None
        choice1, choice2 = (first, second) if rweight1 <= rweight2 else (second, first)
        # The lower overhead / weight wins; a tie keeps the first draw's.
        if choice2.weight * dest_conn_overhead(choice1) > choice1.weight * dest_conn_overhead(choice2):
            return choice2
        return choice1
