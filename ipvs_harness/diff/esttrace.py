"""The kernel estimator's timer, as a golden recorded it.

In 6.1 every counter ``ipvsadm --stats`` and ``/proc/net/ip_vs_stats``
show is the snapshot ``estimation_timer`` (``ip_vs_est.c``) takes, so a
listing shows the traffic up to the timer's last run (:mod:`ipvs.est`).
To compare those listings the offline model needs the runs of the guest's
timer, not just "every 2 s".

The timer (one per network namespace; the director is the guest's root
namespace, whose ``netns_ipvs`` exists from ``modprobe ip_vs`` on) is armed
by ``ip_vs_estimator_net_init`` with ``jiffies + 2*HZ`` and re-armed by
every run with ``jiffies + 2*HZ``.  The timer wheel (``kernel/time/timer.c``:
``calc_wheel_index``, ``calc_index``) files a timeout by its size: 500
jiffies (HZ=250) lands in level 1, whose buckets are 8 jiffies wide, and
the expiry is rounded up to the next bucket boundary strictly after it
(never early).  A run on time at bucket boundary ``b`` re-arms for
``b + 500`` and fires at ``b + 504``: the period is 504 jiffies (2.016 s),
not 500, and a run 4 or more jiffies late moves one bucket further.  Over
a scenario of a minute that is half a second: enough to put a run on the
other side of a dump.  The first run comes 501 to 508 jiffies after the
load (the bucket after ``load + 500``).  :func:`ipvs.est.wheel_expiry` is
that rounding, :attr:`ipvs.est.Estimator.period` the period it gives.

What a golden holds (``ipvs_harness/guest/oracle.sh``, ``load_ipvs``):

* ``clock.txt``: ``ipvs_load`` and ``ipvs_loaded`` stamps just before and
  after ``modprobe ip_vs``, which bracket the first arming;
* ``est-trace.txt``: the ftrace of ``timer:timer_start`` and
  ``timer:timer_expire_entry`` filtered on ``estimation_timer`` (the
  ``mono`` trace clock), with ``trace_marker`` lines carrying the guest's
  realtime, which map the trace onto the clock of the stamps and pcaps.
  The namespaces the scenario creates later (client, real servers) arm
  timers of their own; the director's is the one armed before the trace
  started (at load), so its first event is a run, not an arming.

:class:`GuestEstimator` replaces the model's :class:`ipvs.est.Estimator`
offline: it runs at the traced runs, or (without a trace) at the runs the
wheel model predicts from the ``ipvs_loaded`` stamp.  Nothing here changes
:class:`ipvs.est.Estimator`, which models the same wheel but cannot know the
load's jiffy.
"""

from __future__ import annotations

import os
import re

import attrs

from ipvs.driver.replay import jiffies
from ipvs.est import EST_PERIOD_S, LVL_BITS, LVL_CLK_SHIFT, Estimator, wheel_expiry


def first_run_after_load(hz: int) -> int:
    """How long after the load the first run comes: the load's jiffy
    within its bucket is unknown, so the mean over the positions (504 at
    HZ=250: 501 to 508)."""
    p = EST_PERIOD_S * hz
    spread = [wheel_expiry(j + p, j) - j for j in range(1 << (LVL_BITS + LVL_CLK_SHIFT))]
    return round(sum(spread) / len(spread))


_LINE = re.compile(r"\s(\d+\.\d+): (\w+): (.*)$")
_FIELD = re.compile(r"(\w+)=(\S+)")


@attrs.define(slots=True)
class EstTrace:
    """The director's estimator timer in one golden's ``est-trace.txt``."""

    #: The guest's realtime of each run (``timer_expire_entry``), in order.
    runs: list[float] = attrs.field(factory=list)
    #: The kernel's jiffies at each run (its ``now``).
    run_jiffies: list[int] = attrs.field(factory=list)
    #: Each re-arming: (the kernel's jiffies then, the expiry asked for).
    armed: list[tuple[int, int]] = attrs.field(factory=list)
    #: (trace clock, realtime) of each ``trace_marker`` line: the mapping
    #: between the two clocks, interpolated between the first and the last
    #: (they drift apart by a few hundred ppm under TCG).
    marks: list[tuple[float, float]] = attrs.field(factory=list)

    def realtime(self, ts: float) -> float:
        """The guest's realtime at trace clock ``ts``."""
        (m0, r0), (m1, r1) = self.marks[0], self.marks[-1]
        if m1 <= m0:
            return ts + r0 - m0
        return r0 + (ts - m0) * (r1 - r0) / (m1 - m0)

    @classmethod
    def read(cls, golden: str) -> EstTrace | None:
        """The trace of ``golden`` (None: not recorded, or unusable)."""
        path = os.path.join(golden, "est-trace.txt")
        if not os.path.exists(path):
            return None
        tr = cls()
        mono: list[float] = []
        starts: list[tuple[int, int]] = []
        director = None
        seen: set[str] = set()
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                m = _LINE.search(line)
                if m is None or line.startswith("#"):
                    continue
                ts, event, rest = float(m.group(1)), m.group(2), m.group(3)
                if event == "tracing_mark_write":
                    words = rest.split()
                    if words[:2] == ["pyipvs", "realtime"] and len(words) == 3:
                        tr.marks.append((ts, float(words[2])))
                    continue
                fields = dict(_FIELD.findall(rest))
                timer = fields.get("timer")
                if timer is None:
                    continue
                if director is None and timer not in seen and event == "timer_expire_entry":
                    director = timer
                seen.add(timer)
                if timer != director:
                    continue
                if event == "timer_expire_entry":
                    mono.append(ts)
                    tr.run_jiffies.append(int(fields["now"]))
                elif event == "timer_start":
                    expires = int(fields["expires"])
                    timeout = int(rest.split("[timeout=", 1)[1].split("]", 1)[0])
                    starts.append((expires - timeout, expires))
        if not tr.marks or not mono:
            return None
        tr.runs = [tr.realtime(t) for t in mono]
        tr.armed = starts
        return tr


@attrs.define(slots=True, eq=False)
class GuestEstimator(Estimator):
    """:class:`ipvs.est.Estimator` running when the guest's timer ran.

    ``ticks`` are the runs still to come (jiffies of the model's clock),
    oldest first; after the last one it keeps :attr:`period`.
    """

    ticks: list[int] = attrs.field(factory=list)

    def run(self, now: int) -> None:
        while self.next_run is not None and now >= self.next_run:
            if self.enabled:
                self.push()
                for s in self.stats:
                    s.estimate()
            self.next_run = self.ticks.pop(0) if self.ticks else self.next_run + self.period


def guest_estimator(est: Estimator, golden: str, loaded: float | None) -> tuple[GuestEstimator | None, str]:
    """The estimator of the guest's director for ``golden``, taking over
    ``est``'s registered stats, and where its phase comes from ("trace",
    "load stamp"); (None, "") when the golden records neither.

    ``loaded`` is the guest's ``ipvs_loaded`` stamp (None: not stamped).
    """
    hz = est.hz
    tr = EstTrace.read(golden)
    if tr is not None:
        ticks = [jiffies(t, hz) for t in tr.runs]
        source = "trace"
    elif loaded is not None:
        ticks = [jiffies(loaded, hz) + first_run_after_load(hz)]
        source = "load stamp"
    else:
        return None, ""
    g = GuestEstimator(hz, stats=est.stats, enabled=est.enabled, ticks=ticks[1:])
    g.next_run = ticks[0]
    return g, source
