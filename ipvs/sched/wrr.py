"""Weighted round-robin scheduling.

Mirrors ``net/netfilter/ipvs/ip_vs_wrr.c`` (kernel 6.1).

State (``struct ip_vs_wrr_mark``): the cursor ``cl`` (the last chosen
destination, or the list head), the current weight ``cw``, ``di`` the gcd
of the positive weights (1 if none) and ``mw = max weight - (di - 1)``.
A pass walks the list from the cursor and takes the first destination that
is not overloaded and has ``weight >= cw``; at the end of the list ``cw``
drops by ``di`` and the walk restarts at the head; below 1 it wraps to
``mw``.  The last pass (``cw <= di``) goes round once more up to the
starting point before giving up, so a destination whose weight was lowered
below ``di`` is still found.

Every add/del/update (``ip_vs_wrr_dest_changed``) puts the cursor back to
the head, recomputes ``di`` and ``mw`` and keeps ``cw`` unless it is above
``mw`` or 0 (then ``cw = mw``); otherwise, with ``di > 1``, ``cw`` becomes
``(cw // di) * di + 1``.  Because a service starts empty (``mw = cw = 0``)
and destinations arrive one by one, the first cycle after setup depends on
the order they were added in, exactly as on the kernel: weights 1, 2, 3
added in that order give ``rs3 rs2 rs1 rs3 rs3 rs2 rs3 rs2 rs1 ...``.

Difference from the kernel: the cursor is kept as the chosen destination
plus its index in ``svc.destinations`` (-1 for the list head), since a
Python list has no links to continue from.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ipvs.sched import IPHdr, Scheduler, register_scheduler, scheduler_err
from ipvs.uapi import IP_VS_DEST_F_OVERLOAD

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.ip_vs import Dest, Service


@register_scheduler
class WeightedRoundRobin(Scheduler):
    """``ip_vs_wrr_scheduler``."""

    name = "wrr"

    def __init__(self, svc: Service) -> None:
        super().__init__(svc)
        #: Cursor: the last chosen dest (None = the list head) and its index.
        self.cl: Dest | None = None
        self._cl_idx = -1
        self.di = 1
        self.mw = 0
        self.cw = 0
        self._dest_changed()

    # ------------------------------------------------------------ state

    def _dest_changed(self) -> None:
        """``ip_vs_wrr_dest_changed`` (also ``init_svc`` for cw)."""
        weights = [d.weight for d in self.svc.destinations]
        pos = [w for w in weights if w > 0]
        di = math.gcd(*pos) if pos else 1
        di = di or 1
        mw = max(weights, default=0) - (di - 1)
        self.cl, self._cl_idx = None, -1
        self.di, self.mw = di, mw
        if self.cw > mw or not self.cw:
            self.cw = mw
        elif di > 1:
            self.cw = (self.cw // di) * di + 1

    def add_dest(self, dest: Dest) -> None:
        """``ip_vs_wrr_dest_changed``: recompute the maximum weight and the weights' gcd, and restart the cycle."""
        self._dest_changed()

    def del_dest(self, dest: Dest) -> None:
        """``ip_vs_wrr_dest_changed``, as for :meth:`add_dest`."""
        self._dest_changed()

    def upd_dest(self, dest: Dest) -> None:
        """``ip_vs_wrr_dest_changed``, as for :meth:`add_dest` (a weight was edited)."""
        self._dest_changed()

    # --------------------------------------------------------- schedule

    def schedule(self, iph: IPHdr, now: int) -> Dest | None:
        """``ip_vs_wrr_schedule``: interleaved weighted round robin. The list is walked from the last choice; each time
        it wraps, the current weight steps down by the gcd of the weights (back to the maximum below 1), and the
        next destination whose weight is at least the current weight is chosen.
        """
        dests = self.svc.destinations
        last = self._cl_idx
        if last >= len(dests) or (last >= 0 and dests[last] is not self.cl):
            last = -1  # the list changed without a hook: restart at the head
        if self.mw == 0:
            scheduler_err(self.svc, "no destination available")
            return None
        stop = -2  # none yet (-1 is the head)
        last_pass = restarted = False
        # Stop only after all dests were checked for weight >= 1 (last pass).
        start = last + 1
        while True:
            for i in range(start, len(dests)):  # list_for_each_entry_continue
                d = dests[i]
                if not d.flags & IP_VS_DEST_F_OVERLOAD and d.weight >= self.cw:
                    self.cl, self._cl_idx = d, i
                    return d
                if i == stop:
                    self._overloaded(stop)
                    return None
            start = 0
            self.cw -= self.di
            if self.cw <= 0:
                self.cw = self.mw
                # Stop if the last pass started from the first dest, or
                # the first and only traversal (from the head) was for
                # weight >= 1.
                if last_pass or last < 0:
                    self._overloaded(-1)
                    return None
                restarted = True
            last_pass = self.cw <= self.di
            if last_pass and restarted and last >= 0:
                # The first traversal for weight >= 1 covered only the
                # dests after the cursor: now the ones up to it.
                stop = last

    def _overloaded(self, idx: int) -> None:
        if idx >= 0:
            self.cl, self._cl_idx = self.svc.destinations[idx], idx
        else:
            self.cl, self._cl_idx = None, -1
        scheduler_err(self.svc, "no destination available: all destinations are overloaded")
