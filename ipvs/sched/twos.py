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
* the kernel walks the list twice: once for the total weight, then again,
  subtracting each weight from both draws, until both have reached 0 or
  below.  Here the first walk also notes the running sum reached at each
  destination (an ineligible one repeats the sum before it), and each
  draw's pick is the first destination whose sum reaches the draw, found
  by binary search (:func:`bisect.bisect_left`; a draw of 0 counts as 1,
  so it lands on the first eligible destination, as the kernel's ``<= 0``
  test has it).  The choices are the kernel's (``test_twos`` holds them to
  its loop); the second walk, two thirds of the list on average, is gone.
  PyPy (``bench/sched.py``, 3 interleaved runs): 2.56-2.69 us a decision
  at 1000 destinations against 3.56-3.67 us with one running sum held
  against both draws in a second walk (5.6-5.9 us with the kernel's own
  loop); the two calls to ``bisect_left`` cost some 50 ns more where the
  list is short (0.18 against 0.13 us at one destination, 0.25 against
  0.19 at ten).  What is left is the first walk, about 2 ns a
  destination: what PyPy takes for a loop over objects that reads two of
  their fields.  The sums live in a list the scheduler keeps between
  decisions (rebuilt when the number of destinations changes), so a
  decision allocates nothing.
"""

from __future__ import annotations

import random
from bisect import bisect_left
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
        #: The running sums of the last decision, one per destination.
        self._reached: list[int] = []

    def schedule(self, iph: IPHdr, now: int) -> Dest | None:
        """``ip_vs_twos_schedule``: draw two destinations with probability proportional to weight and take the one with
        the lower overhead per weight (the first draw on a tie).
        """
        # The kernel's first walk sums the weights of the eligible
        # destinations; this one also notes the sum reached at each.
        dests = self.svc.destinations
        reached = self._reached
        if len(reached) != len(dests):
            reached = self._reached = [0] * len(dests)
        total = 0
        for i, d in enumerate(dests):
            if not d.flags & IP_VS_DEST_F_OVERLOAD and d.weight > 0:
                total += d.weight
            reached[i] = total
        if not total:
            scheduler_err(self.svc, "no destination available")
            return None
        total += 1  # draws are inclusive of the total
        rweight1 = self.rng.getrandbits(32) % total
        rweight2 = self.rng.getrandbits(32) % total
        # A draw picks the first destination at which the running sum
        # reaches it: where the kernel's second walk stops.
        choice1 = dests[bisect_left(reached, rweight1 or 1)]
        choice2 = dests[bisect_left(reached, rweight2 or 1)]
        # The lower overhead / weight wins; a tie keeps the first draw's.
        if choice2.weight * dest_conn_overhead(choice1) > choice1.weight * dest_conn_overhead(choice2):
            return choice2
        return choice1
