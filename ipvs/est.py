"""Counters and the 2-second rate estimator.

Mirrors ``net/netfilter/ipvs/ip_vs_est.c`` (kernel 6.1) and
``struct ip_vs_stats`` / ``struct ip_vs_kstats`` from
``include/net/ip_vs.h``.

Every service, every destination and the instance as a whole own a
:class:`Stats`.  As in the kernel, the counters have two layers:

* the live counters (``conns`` ... ``outbytes``), the kernel's per-CPU
  ``cpustats`` summed; the packet path adds to them;
* ``kstats``, the snapshot the estimator takes of the live counters every
  two seconds (``ip_vs_read_cpu_stats`` in ``estimation_timer``).

Listings and ``/proc/net/ip_vs_stats`` show ``kstats - kstats0`` (the
zero point ``ipvsadm -Z`` sets), so in 6.1 a counter appears up to two
seconds after the packet, and not at all while ``run_estimation`` is 0.
The rates are the kernel's scaled exponentially weighted averages (``<< 9``
for counts, ``<< 4`` for bytes, weight 1/4), so ``ipvsadm --rate`` reads
the same numbers.

Where this differs from the kernel, and why:

* The kernel's packet path adds each packet to three per-CPU counter sets:
  the destination's, its service's and the instance total.  Here the
  packet path adds to the destination's only, and a destination hands
  what it counted since last time to its :attr:`~Stats.parents` (its
  service and the total; :meth:`~Stats.push`) when the estimator runs and
  when it leaves its service.  Every snapshot the estimator takes
  is the same as the kernel's; the per-packet cost is a third.
* Counters are not per CPU (the core is one thread);
  ``/proc/net/ip_vs_stats_percpu`` shows all traffic on CPU 0.
* The 6.2+ kthread estimator spreads work over 50 ticks but computes the
  same figures; here one call per period does it, at the jiffies 6.1's
  timer runs (2*HZ rounded up by the timer wheel: every 504 jiffies at
  HZ=250, :attr:`Estimator.period`).
"""

from __future__ import annotations

import attrs

#: The estimator period in seconds, as the kernel asks for it: ``2*HZ``
#: (the timer wheel makes it a little longer; see :attr:`Estimator.period`).
EST_PERIOD_S = 2

#: The timer wheel's geometry (``kernel/time/timer.c``): 64 buckets a
#: level, each level 8 times coarser than the one below, 9 levels.
LVL_CLK_SHIFT = 3
LVL_BITS = 6
LVL_DEPTH = 9


def _lvl_start(n: int) -> int:
    """``LVL_START(n)``: the smallest timeout the wheel files in level ``n``."""
    return ((1 << LVL_BITS) - 1) << ((n - 1) * LVL_CLK_SHIFT)


def wheel_expiry(expires: int, clk: int) -> int:
    """The jiffy a timer armed for ``expires`` fires at when the wheel's
    clock is ``clk``: the level follows the timeout (``calc_wheel_index``)
    and the expiry is rounded up to that level's granularity, strictly
    after it (``calc_index``): a timer never fires early."""
    delta = expires - clk
    lvl = next((n - 1 for n in range(1, LVL_DEPTH) if delta < _lvl_start(n)), LVL_DEPTH - 1)
    shift = lvl * LVL_CLK_SHIFT
    return ((expires + (1 << shift)) >> shift) << shift

_ZERO5 = (0, 0, 0, 0, 0)


@attrs.define(slots=True, eq=False)
class Stats:
    """Live counters, their snapshot, the zero point and the rate estimate
    of one object (``struct ip_vs_stats``)."""

    # The live counters: the kernel's per-CPU counters, summed.
    conns: int = 0
    inpkts: int = 0
    outpkts: int = 0
    inbytes: int = 0
    outbytes: int = 0
    #: ``kstats``: the live counters as the estimator last read them.
    kstats: tuple[int, int, int, int, int] = _ZERO5
    #: ``kstats0``: the snapshot ``ipvsadm -Z`` took; shown = kstats - zero.
    zero: tuple[int, int, int, int, int] = _ZERO5
    # Estimator state (struct ip_vs_estimator): last counts and the
    # scaled averages.
    last: tuple[int, int, int, int, int] = _ZERO5
    cps: int = 0
    inpps: int = 0
    outpps: int = 0
    inbps: int = 0
    outbps: int = 0
    #: A destination's service and instance totals: the Stats its traffic
    #: also counts in (see the module docstring), and how much of its live
    #: counters they have been given.
    parents: tuple[Stats, ...] = ()
    pushed: tuple[int, int, int, int, int] = _ZERO5

    def raw(self) -> tuple[int, int, int, int, int]:
        """The live counters since creation, ignoring ``-Z`` (per-CPU view)."""
        return (self.conns, self.inpkts, self.outpkts, self.inbytes, self.outbytes)

    def counters(self) -> tuple[int, int, int, int, int]:
        """The snapshot since the last zeroing, as ``--stats`` shows it."""
        k = self.kstats
        z = self.zero
        return (k[0] - z[0], k[1] - z[1], k[2] - z[2], k[3] - z[3], k[4] - z[4])

    def rates(self) -> tuple[int, int, int, int, int]:
        """Rounded rates per second (``ip_vs_read_estimator``)."""
        return (
            (self.cps + 0x1FF) >> 10,
            (self.inpps + 0x1FF) >> 10,
            (self.outpps + 0x1FF) >> 10,
            (self.inbps + 0xF) >> 5,
            (self.outbps + 0xF) >> 5,
        )

    def push(self) -> None:
        """Add what was counted here since the last push to the parents."""
        cur = self.raw()
        old = self.pushed
        if cur == old:
            return
        d0, d1, d2, d3, d4 = (cur[0] - old[0], cur[1] - old[1], cur[2] - old[2], cur[3] - old[3],
                              cur[4] - old[4])
        for p in self.parents:
            p.conns += d0
            p.inpkts += d1
            p.outpkts += d2
            p.inbytes += d3
            p.outbytes += d4
        self.pushed = cur

    def estimate(self) -> None:
        """One estimator period: snapshot the counters, fold the last two
        seconds into the EWMA."""
        cur = self.kstats = self.raw()
        if self._settled_at(cur):
            # The update below would leave every figure as it is (most
            # objects of a large configuration, each period).
            return
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
        return self._settled_at(self.raw())

    def _settled_at(self, cur: tuple[int, int, int, int, int]) -> bool:
        # Nothing counted since the last period and every average at zero.
        # (An average never goes below zero: est + ((0 - est) >> 2) >= 0
        # for est >= 0, so zero is the only value an idle period keeps.)
        return cur == self.last and not (self.cps or self.inpps or self.outpps or self.inbps or self.outbps)

    def zero_stats(self) -> None:
        """``ip_vs_zero_stats``: the snapshot becomes the zero point, the
        estimator restarts from it."""
        self.zero = self.last = self.kstats
        self.cps = self.inpps = self.outpps = self.inbps = self.outbps = 0


@attrs.define(slots=True, eq=False)
class Estimator:
    """Drives :meth:`Stats.estimate` for every registered object.

    ``run(now)`` is called by the instance's timer processing; it catches up
    period by period when ticks jump (as a replay of a pcap may do).

    The runs come when 6.1's ``estimation_timer`` runs: armed for
    ``jiffies + 2*HZ`` at the first call (the module load), re-armed the same
    way by each run, and filed by the timer wheel, which rounds the expiry
    up to its bucket (8 jiffies for a 500-jiffy timeout).  So the first run
    comes 501-508 jiffies after the arming and the runs are :attr:`period`
    = 504 jiffies (2.016 s) apart at HZ=250; the rates still divide by 2 s,
    as the kernel's do.  (Runs on time at their bucket boundary, as the
    kernel's are unless its timer softirq is late.)
    """

    hz: int
    # Insertion-ordered set of the registered stats (a dict: O(1) stop).
    stats: dict[Stats, None] = attrs.field(factory=dict)
    next_run: int | None = None
    enabled: bool = True  # the run_estimation sysctl
    #: Jiffies from one run to the next: ``2*HZ`` re-armed by a run at a
    #: bucket boundary, the wheel's clock one ahead while it runs.
    period: int = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.period = wheel_expiry(EST_PERIOD_S * self.hz, 1)

    def start(self, stats: Stats) -> None:
        """``ip_vs_start_estimator``: estimate the rates of ``stats`` from the next run on."""
        self.stats[stats] = None

    def stop(self, stats: Stats) -> None:
        """No more estimates for ``stats``; a destination's counts so far
        stay in its service's and the total's counters."""
        stats.push()
        self.stats.pop(stats, None)

    def push(self) -> None:
        """Bring every service's and the total's live counters up to date."""
        for s in self.stats:
            if s.parents:
                s.push()

    def run(self, now: int) -> None:
        """``estimation_timer``: take the snapshot and update the rates for every 2-second period due by ``now``
        (catching up at most a bounded number of periods).
        """
        period = self.period
        if self.next_run is None:
            self.next_run = wheel_expiry(now + EST_PERIOD_S * self.hz, now)
            return
        rounds = 0
        while now >= self.next_run:
            if self.enabled:
                self.push()
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
