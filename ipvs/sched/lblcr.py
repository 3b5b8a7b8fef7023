"""Locality-based least-connection scheduling with replication.

Mirrors ``net/netfilter/ipvs/ip_vs_lblcr.c`` (kernel 6.1).  Like lblc
(:mod:`ipvs.sched.lblc`, whose table, hash and collection it shares), but
each destination address maps to a *set* of servers, newest first:

* on a hit (``lastuse = now``) the candidate is the set's weighted least
  loaded member (the first member not overloaded, AVAILABLE and of weight
  > 0, then any later AVAILABLE, non-overloaded member with a strictly
  lower overhead/weight);
* if the set has more than one member and was not modified for
  ``lblcr_expiration`` (24 h by default), its weighted most loaded member
  (among weight > 0) is dropped;
* the candidate is used unless missing or lblc-"overloaded"; otherwise the
  wlc choice over the service is added to the set (not twice) and used;
* on a miss the wlc choice starts a new one-member set.

Any insertion or removal sets the set's ``lastmod``.  A miss with no
destination does not log (the kernel only has a debug message there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from ipvs.sched import IPHdr, dest_conn_overhead, register_scheduler, scheduler_err
from ipvs.sched.lblc import LocalityTable, is_overloaded
from ipvs.sched.wlc import wlc_pick
from ipvs.uapi import IP_VS_DEST_F_AVAILABLE, IP_VS_DEST_F_OVERLOAD

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.ip_vs import Dest


@attrs.define(slots=True, eq=False)
class LBLCREntry:
    """``struct ip_vs_lblcr_entry`` with its ``ip_vs_dest_set``."""

    addr: bytes
    dests: list[Dest]  # newest first, as list_add_rcu leaves them
    lastmod: int
    lastuse: int

    def insert(self, dest: Dest, now: int) -> None:
        """``ip_vs_dest_set_insert`` with the duplicate check."""
        if any(d is dest for d in self.dests):
            return
        self.dests.insert(0, dest)
        self.lastmod = now

    def erase(self, dest: Dest, now: int) -> None:
        """``ip_vs_dest_set_erase``: take ``dest`` out of the set (the set counts as modified at ``now``)."""
        for i, d in enumerate(self.dests):
            if d is dest:
                del self.dests[i]
                self.lastmod = now
                return

    def min(self) -> Dest | None:
        """``ip_vs_dest_set_min``: the weighted least-loaded usable member."""
        dests = iter(self.dests)
        for least in dests:
            if least.flags & IP_VS_DEST_F_OVERLOAD:
                continue
            if least.weight > 0 and least.flags & IP_VS_DEST_F_AVAILABLE:
                break
        else:
            return None
        loh = dest_conn_overhead(least)
        for d in dests:  # list_for_each_entry_continue
            if d.flags & IP_VS_DEST_F_OVERLOAD:
                continue
            doh = dest_conn_overhead(d)
            if loh * d.weight > doh * least.weight and d.flags & IP_VS_DEST_F_AVAILABLE:
                least, loh = d, doh
        return least

    def max(self) -> Dest | None:
        """``ip_vs_dest_set_max``: the weighted most-loaded member of weight > 0."""
        dests = iter(self.dests)
        for most in dests:
            if most.weight > 0:
                break
        else:
            return None
        moh = dest_conn_overhead(most)
        for d in dests:  # list_for_each_entry_continue
            doh = dest_conn_overhead(d)
            if moh * d.weight < doh * most.weight and d.weight > 0:
                most, moh = d, doh
        return most


@register_scheduler
class LBLCR(LocalityTable[LBLCREntry]):
    """``ip_vs_lblcr_scheduler``."""

    name = "lblcr"
    expiration_setting = "lblcr_expiration"

    def schedule(self, iph: IPHdr, now: int) -> Dest | None:
        """``ip_vs_lblcr_schedule``: the least loaded member of the server set remembered for the packet's destination
        address; a new wlc choice joins the set when its members are overloaded, and a stale set sheds its most
        loaded member.
        """
        self.expire_due(now)
        svc = self.svc
        daddr = iph.daddr
        en = self.entries.get(daddr)
        if en is None:
            d = wlc_pick(svc)
            if d is not None:
                self.entries[daddr] = LBLCREntry(daddr, [d], now, now)
            return d
        en.lastuse = now
        d = en.min()
        if len(en.dests) > 1 and now > en.lastmod + self.expiration(self._hz()):
            m = en.max()
            if m is not None:
                en.erase(m, now)
        if d is not None and not is_overloaded(d, svc):
            return d
        d = wlc_pick(svc)
        if d is None:
            scheduler_err(svc, "no destination available")
            return None
        en.insert(d, now)
        return d
