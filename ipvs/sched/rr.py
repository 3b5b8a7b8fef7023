"""Round-robin scheduling.

Mirrors ``net/netfilter/ipvs/ip_vs_rr.c`` (kernel 6.1).

The kernel keeps a pointer into the destination list (initially the list
head itself) and, for each new connection, walks forward from the entry
after it, wrapping once, to the first destination that is neither
overloaded nor of weight 0.  The cursor then points at the chosen one.

Difference from the kernel: ``svc.destinations`` is a Python list, so the
cursor is the chosen :class:`~ipvs.ctl.Dest` plus a cached index into the
list; the cache is kept in step by the ``add_dest``/``del_dest`` hooks (a
new dest is always inserted at index 0) and re-validated on use, so a
decision costs O(1) when the next destination is eligible, as in the
kernel.  ``None`` as the cursor stands for the list head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ipvs.sched import IPHdr, Scheduler, register_scheduler, scheduler_err
from ipvs.uapi import IP_VS_DEST_F_OVERLOAD

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.ip_vs import Dest, Service


@register_scheduler
class RoundRobin(Scheduler):
    """``ip_vs_rr_scheduler``."""

    name = "rr"

    def __init__(self, svc: Service) -> None:
        super().__init__(svc)
        #: The last chosen dest, or None for the list head.
        self.cursor: Dest | None = None
        self._idx = -1

    def _cursor_index(self) -> int:
        """Index of the cursor in the list (-1 for the head)."""
        cur = self.cursor
        if cur is None:
            return -1
        dests = self.svc.destinations
        i = self._idx
        if 0 <= i < len(dests) and dests[i] is cur:
            return i
        # The list changed behind our back (should not happen): look it up.
        try:
            i = dests.index(cur)
        except ValueError:
            self.cursor, i = None, -1
        self._idx = i
        return i

    def add_dest(self, dest: Dest) -> None:
        """A destination was inserted at the head of the list: the cursor keeps pointing at the same one."""
        # Inserted at the head: an existing cursor moves one place down.
        if self.cursor is not None and self.cursor is not dest:
            self._idx += 1

    def del_dest(self, dest: Dest) -> None:
        """``ip_vs_rr_del_dest``: if the cursor was on ``dest``, step it back so the destination after it is tried
        next.
        """
        if self.cursor is dest:
            # The kernel steps back to the previous entry (or the head), so
            # the entry after the deleted one is the next to be tried.
            i = self._idx - 1
            if 0 <= i < len(self.svc.destinations):
                self.cursor, self._idx = self.svc.destinations[i], i
            else:
                self.cursor, self._idx = None, -1
        elif self.cursor is not None:
            dests = self.svc.destinations
            i = self._idx
            if not (0 <= i < len(dests) and dests[i] is self.cursor):
                self._idx = i - 1  # the deleted one was before the cursor
            self._cursor_index()

    def schedule(self, iph: IPHdr, now: int) -> Dest | None:
        """``ip_vs_rr_schedule``: the next destination after the cursor, going round the list at most once, skipping
        those overloaded or of weight 0.
        """
        dests = self.svc.destinations
        n = len(dests)
        last = self._idx
        cur = self.cursor
        if cur is None:
            last = -1
        elif not (0 <= last < n and dests[last] is cur):
            last = self._cursor_index()
        # The kernel's two passes (list_for_each_entry_continue from the
        # cursor to the end, then from the head up to the cursor itself; one
        # pass when the cursor is the head) visit each destination once,
        # starting after the cursor: one walk round the list.
        for k in range(n):
            i = (last + 1 + k) % n
            d = dests[i]
            if not d.flags & IP_VS_DEST_F_OVERLOAD and d.weight > 0:
                self.cursor, self._idx = d, i
                return d
        scheduler_err(self.svc, "no destination available")
        return None
