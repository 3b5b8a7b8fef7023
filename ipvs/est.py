"""Counters and the 2-second rate estimator.

Mirrors ``net/netfilter/ipvs/ip_vs_est.c`` and ``struct ip_vs_stats`` /
``struct ip_vs_kstats`` from ``include/net/ip_vs.h``.

Every service, every destination and the instance as a whole own a
:class:`Stats`.  The packet path only adds to the five raw counters; the
estimator runs every two seconds of ``now`` (jiffies) and keeps scaled
exponentially weighted averages exactly as the kernel does (``<< 9`` for
counts, ``<< 4`` for bytes, weight 1/4), so ``ipvsadm --rate`` reads the
same numbers.

Differences from the kernel: counters are not per CPU (the core is one
thread); ``/proc/net/ip_vs_stats_percpu`` shows all traffic on CPU 0.  The
6.2+ kthread estimator spreads work over 50 ticks but computes the same
figures; here one call per period does it.
"""

from __future__ import annotations

import attrs

#: The estimator period in seconds (``IPVS_EST_TICK`` is 2 s).
EST_PERIOD_S = 2

COUNTERS = ("conns", "inpkts", "outpkts", "inbytes", "outbytes")


@attrs.define(slots=True, eq=False)
class Stats:
    """Raw counters, the zero point and the rate estimate of one object."""

    conns: int = 0
    inpkts: int = 0
    outpkts: int = 0
    inbytes: int = 0
    outbytes: int = 0
    # Snapshot taken by ``ipvsadm -Z``: shown values are current - zero.
    zero: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)
    # Estimator state (struct ip_vs_estimator): last raw counts and the
    # scaled averages.
    last: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)
    cps: int = 0
    inpps: int = 0
    outpps: int = 0
    inbps: int = 0
    outbps: int = 0

    def raw(self) -> tuple[int, int, int, int, int]:
        """The counters since creation, ignoring ``-Z`` (per-CPU view)."""
        return (self.conns, self.inpkts, self.outpkts, self.inbytes, self.outbytes)

    def counters(self) -> tuple[int, int, int, int, int]:
        """The counters since the last zeroing, as ``--stats`` shows them."""
        z = self.zero
        return (
            self.conns - z[0],
            self.inpkts - z[1],
            self.outpkts - z[2],
            self.inbytes - z[3],
            self.outbytes - z[4],
        )

    def rates(self) -> tuple[int, int, int, int, int]:
        """Rounded rates per second (``ip_vs_read_estimator``)."""
        return (
            (self.cps + 0x1FF) >> 10,
            (self.inpps + 0x1FF) >> 10,
            (self.outpps + 0x1FF) >> 10,
            (self.inbps + 0xF) >> 5,
            (self.outbps + 0xF) >> 5,
        )

    def estimate(self) -> None:
        """One estimator period: fold the last two seconds into the EWMA."""
        cur = self.raw()
        last = self.last
        # rate = delta << 9 scales by 2^10 and divides by the 2 s period;
        # est += (rate - est) >> 2 is the kernel's 1/4 weight (arithmetic
        # shift, so negative steps round towards minus infinity like C).
        self.cps += (((cur[0] - last[0]) << 9) - self.cps) >> 2
        self.inpps += (((cur[1] - last[1]) << 9) - self.inpps) >> 2
        self.outpps += (((cur[2] - last[2]) << 9) - self.outpps) >> 2
        self.inbps += (((cur[3] - last[3]) << 4) - self.inbps) >> 2
        self.outbps += (((cur[4] - last[4]) << 4) - self.outbps) >> 2
        self.last = cur

    def settled(self) -> bool:
        """True when another idle period would change nothing."""
        if self.last != self.raw():
            return False
        return all(((0 - e) >> 2) + e == e for e in (self.cps, self.inpps, self.outpps, self.inbps, self.outbps))

    def zero_stats(self) -> None:
        """``ip_vs_zero_stats``: new zero point, estimator restarted."""
        self.zero = self.raw()
        self.last = self.raw()
        self.cps = self.inpps = self.outpps = self.inbps = self.outbps = 0


@attrs.define(slots=True, eq=False)
class Estimator:
    """Drives :meth:`Stats.estimate` for every registered object.

    ``run(now)`` is called by the instance's timer processing; it catches up
    period by period when ticks jump (as a replay of a pcap may do).
    """

    hz: int
    # Insertion-ordered set of the registered stats (a dict: O(1) stop).
    stats: dict[Stats, None] = attrs.field(factory=dict)
    next_run: int | None = None
    enabled: bool = True  # the run_estimation sysctl

    def start(self, stats: Stats) -> None:
        self.stats[stats] = None

    def stop(self, stats: Stats) -> None:
        self.stats.pop(stats, None)

    def run(self, now: int) -> None:
        period = EST_PERIOD_S * self.hz
        if self.next_run is None:
            self.next_run = now + period
            return
        rounds = 0
        while now >= self.next_run:
            if self.enabled:
                for s in self.stats:
                    s.estimate()
            self.next_run += period
            rounds += 1
            if rounds >= 64 and now >= self.next_run:
                # A long jump of the clock (a replay's idle gap): after 64
                # idle periods every average is within 0.75^64 of zero and
                # the integer EWMA has settled, so skip ahead in one step.
                skipped = (now - self.next_run) // period + 1
                if all(s.settled() for s in self.stats):
                    self.next_run += skipped * period
