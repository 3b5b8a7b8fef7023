"""Locality-based least-connection scheduling.

Mirrors ``net/netfilter/ipvs/ip_vs_lblc.c`` (kernel 6.1), meant for cache
clusters: requests for one *destination* address stick to one real server.

Per service a table maps the packet's destination address to a server and
the last time it was used.  A hit is used when its server is AVAILABLE
(not in the trash), has weight > 0 and is not "overloaded" in lblc's
sense: more active connections than its weight while some server of the
service has ``2 * active < weight``.  Otherwise (and on a miss) the wlc
choice (:func:`ipvs.sched.wlc.wlc_pick`) is taken and stored.

Garbage collection, the kernel's 60 s ``periodic_timer``: every 30th run
removes every entry unused for ``lblc_expiration`` (the sysctl, 24 h by
default); the other runs only act when the table holds more than 16384
entries (1024 buckets x 16), removing entries idle for 6 minutes, bucket
by bucket from a rover, until ``min((entries - 16384) * 4/3, 8192)`` are
gone.  Buckets are ``hash_32(ntohl(addr_fold), 10)``.

Differences from the kernel, and why:

* No timer: :meth:`LBLC.expire` runs every collection that fell due by
  ``now``, each with its own due time, so decisions are the same as with
  a timer.  ``schedule`` calls it first; the core may also call it on its
  ticks to bound memory.  The timer is armed at the first ``now`` the
  instance sees (the kernel arms it when the service is created), so the
  phase of the 60 s runs can differ.
* Entries live in one dict keyed by address; the bucket index is only
  needed to reproduce the rover order of a partial collection.
* ``lblc_expiration`` comes from ``self.netns.sysctl`` when the control
  plane set :attr:`~ipvs.sched.Scheduler.netns`, else the 24 h default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import attrs

from ipvs.ip_vs import HZ, addr_fold
from ipvs.sched import IPHdr, Scheduler, hash_32, register_scheduler, scheduler_err
from ipvs.sched.wlc import wlc_pick
from ipvs.uapi import IP_VS_DEST_F_AVAILABLE

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.ip_vs import Dest, Service

#: CONFIG_IP_VS_LBLC_TAB_BITS default (lblcr uses the same value).
TAB_BITS = 10
TAB_SIZE = 1 << TAB_BITS
TAB_MASK = TAB_SIZE - 1
#: Above this many entries the 60 s runs start collecting.
MAX_SIZE = TAB_SIZE * 16
#: Period of the collection runs and idle time of a collectable entry, s.
CHECK_EXPIRE_INTERVAL_S = 60
ENTRY_TIMEOUT_S = 6 * 60
#: Every this many runs, a full check against the expiration setting.
COUNT_FOR_FULL_EXPIRATION = 30
DEFAULT_EXPIRATION_S = 24 * 60 * 60


def is_overloaded(dest: Dest, svc: Service) -> bool:
    """lblc/lblcr ``is_overloaded``: busier than its weight while some
    server of the service is less than half busy."""
    if dest.activeconns > dest.weight:
        for d in svc.destinations:
            if d.activeconns * 2 < d.weight:
                return True
    return False


def bucket_of(addr: bytes) -> int:
    """``ip_vs_lblc_hashkey``."""
    return hash_32(addr_fold(addr), TAB_BITS)


@attrs.define(slots=True, eq=False)
class LBLCEntry:
    """``struct ip_vs_lblc_entry``: daddr -> dest, with its last use."""

    addr: bytes
    dest: Dest
    lastuse: int


class _Entry(Protocol):
    """What the collection reads of an entry: its last use (jiffies)."""

    lastuse: int


_E = TypeVar("_E", bound=_Entry)


class LocalityTable(Scheduler, Generic[_E]):
    """The entry table and its lazily-run collection timer.

    Shared by lblc and lblcr: subclasses name the expiration setting and
    may keep a different entry type.
    """

    expiration_setting = "lblc_expiration"

    def __init__(self, svc: Service) -> None:
        super().__init__(svc)
        self.entries: dict[bytes, _E] = {}
        self.rover = 0
        self.counter = 1
        self.next_check: int | None = None  # jiffies of the next 60 s run

    def expiration(self, hz: int) -> int:
        """The expiration setting in jiffies."""
        netns = getattr(self, "netns", None)
        if netns is not None:
            return getattr(netns.sysctl, self.expiration_setting) * netns.hz
        return DEFAULT_EXPIRATION_S * hz

    def _hz(self) -> int:
        netns = getattr(self, "netns", None)
        return netns.hz if netns is not None else HZ

    def done_service(self) -> None:
        """``ip_vs_lblc_done_svc``: drop the table when the service goes."""
        self.flush()

    def expire_due(self, now: int) -> None:
        """Run the collection if its 60 s timer is due (lazily, from schedule)."""
        if self.next_check is None or now >= self.next_check:
            self.expire(now)

    def expire(self, now: int) -> None:
        """Run every 60 s collection due by ``now`` (``check_expire``)."""
        hz = self._hz()
        interval = CHECK_EXPIRE_INTERVAL_S * hz
        t = self.next_check
        if t is None:
            self.next_check = now + interval
            return
        while t <= now:
            if self.counter % COUNT_FOR_FULL_EXPIRATION == 0:
                self._full_check(t, self.expiration(hz))
                self.counter = 1
            elif len(self.entries) <= MAX_SIZE:
                # Quiet runs only count; jump to the next full check or now.
                runs = min(
                    (now - t) // interval + 1,
                    COUNT_FOR_FULL_EXPIRATION - self.counter % COUNT_FOR_FULL_EXPIRATION,
                )
                self.counter += runs
                t += runs * interval
                continue
            else:
                self._partial_check(t, ENTRY_TIMEOUT_S * hz)
            t += interval
        self.next_check = t

    def _full_check(self, now: int, expiration: int) -> None:
        """``ip_vs_lblc_full_check``: drop entries unused for ``expiration``.

        The kernel walks all buckets from rover+1 and ends with the rover
        back where it started.
        """
        dead = [a for a, en in self.entries.items() if not now < en.lastuse + expiration]
        for a in dead:
            self._drop(a)

    def _partial_check(self, now: int, timeout: int) -> None:
        """The over-full case: collect idle entries bucket by bucket."""
        goal = (len(self.entries) - MAX_SIZE) * 4 // 3
        goal = min(goal, MAX_SIZE // 2)
        by_bucket: dict[int, list[bytes]] = {}
        for a, en in self.entries.items():
            if not now < en.lastuse + timeout:
                by_bucket.setdefault(bucket_of(a), []).append(a)
        j = self.rover
        for _ in range(TAB_SIZE):
            j = (j + 1) & TAB_MASK
            for a in by_bucket.get(j, ()):
                self._drop(a)
                goal -= 1
            if goal <= 0:
                break
        self.rover = j

    def _drop(self, addr: bytes) -> None:
        del self.entries[addr]

    def flush(self) -> None:
        """``ip_vs_lblc_flush``: forget every address-to-server entry."""
        self.entries.clear()


@register_scheduler
class LBLC(LocalityTable[LBLCEntry]):
    """``ip_vs_lblc_scheduler``."""

    name = "lblc"

    def schedule(self, iph: IPHdr, now: int) -> Dest | None:
        """``ip_vs_lblc_schedule``: the server remembered for the packet's destination address while it is usable and
        not overloaded in lblc's sense; otherwise the wlc choice, remembered from now on.
        """
        self.expire_due(now)
        svc = self.svc
        daddr = iph.daddr
        en = self.entries.get(daddr)
        if en is not None:
            en.lastuse = now
            cached = en.dest
            if cached.flags & IP_VS_DEST_F_AVAILABLE and cached.weight > 0 and not is_overloaded(cached, svc):
                return cached
        d = wlc_pick(svc)
        if d is None:
            scheduler_err(svc, "no destination available")
            return None
        if en is None or en.dest is not d:
            # ip_vs_lblc_new: a fresh entry (the old one, if any, replaced).
            self.entries[daddr] = LBLCEntry(daddr, d, now)
        return d
