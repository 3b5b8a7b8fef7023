"""New TCP connections under backlog: a fair queue per client address.

No kernel counterpart: the kernel's receive softirq keeps up with a SYN
flood, and IPVS answers the flood's memory cost with ``drop_entry``,
``drop_packet`` and ``secure_tcp`` (:func:`ipvs.ctl.update_defense_level`).
A Python director cannot keep up with the SYN rate of one flooding
process, so its AF_PACKET RX ring overflows and the kernel drops frames
of every flow alike: measured in the lab (``bench/synflood.py``, 250k
SYNs/s), 70% of the client side's frames were lost in the ring, the
established connections' ones as much as the flood's.

So when the RX ring is backlogged (:meth:`SynGuard.engage`, called by
the driver when a quarter of the ring is waiting), a TCP segment from
the clients' side with SYN and none of ACK, FIN, RST (a connection
attempt) is not handed to the core at once: it waits in a small queue of
its source address.  Everything else, the packets of the flows that
exist, goes through first.  The driver then serves the queues round
robin, one SYN per source per round and a bounded number per loop turn,
so a client that opens connections at a normal rate gets its turn
whatever one source floods (a source has the same share as any other).
A source's queue holds :attr:`PER_SOURCE` SYNs; further ones are
dropped while it is full, by the ring itself when it can tell from the
slot (:meth:`SynGuard.full`, so a flood's excess costs no copy).  At most
:attr:`MAX_SOURCES` sources wait; a SYN from a further one is dropped.
Every drop is counted.  The guard stays engaged for :attr:`HOLD_S`
seconds after the last backlog, so it does not flap at every batch.

What the core then sees is kernel semantics: it schedules, or refuses
with its own defenses, each SYN it is given.  Against a flood from
random spoofed sources the fairness buys nothing (every source is new);
the guard then drops connection attempts at random, as the overflowing
ring did, but the existing connections keep flowing.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Callable

import attrs

from ipvs.driver.ring import kept

log = logging.getLogger("ipvs.driver")


@attrs.define(slots=True)
class SynGuardStats:
    """What the guard counted."""

    engaged: int = 0  #: backlogs seen (each starts or extends a guarded period)
    deferred: int = 0  #: SYNs queued
    served: int = 0  #: queued SYNs handed to the core
    dropped_full: int = 0  #: SYNs dropped as their source's queue was full
    dropped_sources: int = 0  #: SYNs dropped as :attr:`SynGuard.MAX_SOURCES` sources were waiting
    errors: int = 0  #: queued SYNs whose handler raised


class SynGuard:
    """Per-source queues of connection attempts, served round robin (see the module's docstring)."""

    #: SYNs one source may have waiting.
    PER_SOURCE = 4
    #: Sources that may have SYNs waiting at once.
    MAX_SOURCES = 4096
    #: Seconds the guard stays engaged after the last backlog.
    HOLD_S = 0.25

    def __init__(self, hz: int) -> None:
        self.hold = max(1, int(self.HOLD_S * hz))
        #: The guard is engaged until this jiffy (0: never engaged).
        self.until = 0
        #: source address -> its waiting (handler, frame) pairs.
        self.queues: dict[int, deque] = {}
        #: Sources with SYNs waiting, in the order they are served.
        self.turns: deque = deque()
        self.stats = SynGuardStats()

    def engage(self, now: int) -> None:
        """The RX ring is backlogged: queue connection attempts until ``now`` + :attr:`hold`."""
        if now >= self.until:
            self.stats.engaged += 1
        self.until = now + self.hold

    def engaged(self, now: int) -> bool:
        """Whether connection attempts are to be queued now (also while some still wait, to keep their order)."""
        return now < self.until or bool(self.turns)

    def defer(self, saddr: int, handler: Callable[[bytearray], None], buf: bytearray) -> None:
        """Queue the SYN ``buf`` from ``saddr``; ``handler(buf)`` handles it when its turn comes."""
        q = self.queues.get(saddr)
        if q is None:
            if len(self.queues) >= self.MAX_SOURCES:
                self.stats.dropped_sources += 1
                return
            q = self.queues[saddr] = deque()
            self.turns.append(saddr)
        elif len(q) >= self.PER_SOURCE:
            self.stats.dropped_full += 1
            return
        q.append((handler, kept(buf)))  # (a ring's lent buffer is reused: a copy of it)
        self.stats.deferred += 1

    def full(self, saddr: int) -> bool:
        """Whether a SYN from ``saddr`` would be dropped now (its queue is full); counted as such."""
        q = self.queues.get(saddr)
        if q is None or len(q) < self.PER_SOURCE:
            return False
        self.stats.dropped_full += 1
        return True

    def serve(self, n: int) -> int:
        """Hand up to ``n`` waiting SYNs to their handlers, one per source per round; returns how many."""
        turns, queues, stats = self.turns, self.queues, self.stats
        done = 0
        while done < n and turns:
            saddr = turns.popleft()
            q = queues[saddr]
            handler, buf = q.popleft()
            if q:
                turns.append(saddr)
            else:
                del queues[saddr]
            done += 1
            try:
                handler(buf)
            except Exception:
                # As the ring's own loop does: a bug costs one frame.
                stats.errors += 1
                if stats.errors == 1:
                    log.exception("handling a queued SYN failed (counted in syn_guard_errors)")
        stats.served += done
        return done

    def waiting(self) -> int:
        """SYNs waiting now."""
        return sum(len(q) for q in self.queues.values())
