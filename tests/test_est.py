"""ipvs/est.py: counters, zeroing and the 2-second rate estimator, checked
against an independent model of the kernel formula (digest section 8)."""

from hypothesis import given
from hypothesis import strategies as st

from ipvs.est import Estimator, Stats, wheel_expiry
from tests.conftest import Lab

HZ = 250
#: The kernel's estimator period at HZ=250: 2*HZ as the timer wheel files it.
PERIOD = 504


class Model:
    """The kernel's estimator for one counter, written from the digest:
    rate = delta << shift; est += (rate - est) >> 2 (arithmetic shift);
    read-out (est + round) >> scale."""

    def __init__(self, shift: int, scale: int) -> None:
        self.shift, self.scale = shift, scale
        self.est = 0
        self.last = 0

    def period(self, count: int) -> None:
        rate = (count - self.last) * (1 << self.shift)
        self.last = count
        diff = rate - self.est
        self.est += diff // 4  # floor division == arithmetic shift right by 2

    def read(self) -> int:
        return (self.est + (1 << (self.scale - 1)) - 1) // (1 << self.scale)


def test_constant_100_conns_per_second_follows_the_digest_example():
    s = Stats()
    est = Estimator(HZ)
    est.start(s)
    est.run(0)  # arms the first period
    seen = []
    for k in range(1, 16):
        s.conns += 200  # 100 conn/s over 2 s
        est.run(k * PERIOD)
        seen.append(s.cps)
        want = round(100 * (1 - 0.75**k))
        assert abs(s.rates()[0] - want) <= 1, (k, s.rates()[0], want)
    assert seen[:3] == [25600, 44800, 59200]


@given(st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 5000), st.integers(0, 5000),
                          st.integers(0, 10**7), st.integers(0, 10**7)), max_size=30))
def test_estimator_equals_the_model_exactly(steps):
    s = Stats()
    est = Estimator(HZ)
    est.start(s)
    est.run(0)
    models = [Model(9, 10), Model(9, 10), Model(9, 10), Model(4, 5), Model(4, 5)]
    for k, add in enumerate(steps, 1):
        s.conns += add[0]
        s.inpkts += add[1]
        s.outpkts += add[2]
        s.inbytes += add[3]
        s.outbytes += add[4]
        est.run(k * PERIOD)
        for m, v in zip(models, s.raw(), strict=True):
            m.period(v)
        assert (s.cps, s.inpps, s.outpps, s.inbps, s.outbps) == tuple(m.est for m in models)
        assert s.rates() == tuple(m.read() for m in models)


def test_decay_to_zero_uses_arithmetic_shift():
    s = Stats()
    est = Estimator(HZ)
    est.start(s)
    est.run(0)
    s.conns = 1
    est.run(PERIOD)
    assert s.cps == 128  # (512 - 0) >> 2
    values = []
    for k in range(2, 40):
        est.run(k * PERIOD)
        values.append(s.cps)
    assert values[0] == 96 and values[-1] == 0
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_run_catches_up_period_by_period_and_not_before():
    s = Stats()
    est = Estimator(HZ)
    est.start(s)
    est.run(100)
    first = est.next_run
    assert first == 608  # 100 + 2*HZ, up to the wheel's next 8-jiffy boundary
    s.inpkts = 1000
    est.run(first - 1)
    assert s.inpps == 0
    est.run(first + 2 * PERIOD)  # three periods at once: one with traffic, two idle
    m = Model(9, 10)
    for v in (1000, 1000, 1000):
        m.period(v)
    assert s.inpps == m.est
    assert est.next_run == first + 3 * PERIOD


def test_wheel_rounds_up_by_the_level_granularity():
    # Level 0 (delta < 63): one jiffy granularity, still rounded up past it.
    assert wheel_expiry(1000 + 10, 1000) == 1011
    # Level 1 (63 <= delta < 504): 8-jiffy buckets, the boundary after.
    assert wheel_expiry(1000 + 500, 1000) == 1504
    assert wheel_expiry(1003 + 500, 1003) == 1504
    assert wheel_expiry(1004 + 500, 1004) == 1512
    # Level 2 (504 <= delta < 4032): 64-jiffy buckets.
    assert wheel_expiry(600, 0) == 640


def test_the_2s_timer_runs_every_504_jiffies_at_hz_250():
    est = Estimator(HZ)
    assert est.period == 504
    assert Estimator(1000).period == 2048  # 2000 jiffies: level 2, 64-jiffy buckets
    est.run(0)
    runs = []
    for now in range(0, 10 * 504):
        before = est.next_run
        est.run(now)
        if est.next_run != before:
            runs.append(now)
    assert runs == [504 * k for k in range(1, 10)]


def test_disabled_estimator_keeps_estimates():
    s = Stats()
    est = Estimator(HZ)
    est.start(s)
    est.run(0)
    est.enabled = False
    s.conns = 100
    est.run(5 * PERIOD)
    assert s.cps == 0 and est.next_run == 6 * PERIOD


def test_stopped_stats_are_not_estimated():
    a, b = Stats(), Stats()
    est = Estimator(HZ)
    est.start(a)
    est.start(b)
    est.stop(b)
    est.stop(b)  # twice is harmless
    est.run(0)
    a.conns = b.conns = 10
    est.run(PERIOD)
    assert a.cps > 0 and b.cps == 0


def test_zero_sets_a_new_zero_point_and_clears_rates():
    s = Stats()
    est = Estimator(HZ)
    est.start(s)
    est.run(0)
    s.conns, s.inpkts, s.outpkts, s.inbytes, s.outbytes = 10, 20, 30, 4000, 5000
    est.run(PERIOD)
    assert s.rates() != (0, 0, 0, 0, 0)
    s.zero_stats()
    assert s.counters() == (0, 0, 0, 0, 0)
    assert s.rates() == (0, 0, 0, 0, 0)
    assert s.raw() == (10, 20, 30, 4000, 5000)
    # The next period only sees what came after the zeroing.
    s.conns += 2
    est.run(2 * PERIOD)
    assert s.cps == (2 << 9) >> 2
    assert s.counters()[0] == 2


def test_rates_rounding():
    # (est + 0x1FF) >> 10 and (est + 0xF) >> 5: exactly half rounds down.
    s = Stats()
    s.cps = 0x201
    s.inpps = 0x200
    s.outpps = 1024 * 7
    s.inbps = 0x11
    s.outbps = 0x10
    assert s.rates() == (1, 0, 7, 1, 0)


def test_director_drives_the_estimator_for_services_dests_and_total():
    lab = Lab()
    su = lab.service("203.0.113.5", 80)
    d = lab.dest(su, "172.16.0.2", 80)
    svc = next(iter(lab.ipvs.svc_order))
    lab.tick(0)
    d.stats.conns += 200  # the packet path counts on the dest only
    lab.tick(PERIOD)
    assert d.stats.cps == svc.stats.cps == lab.ipvs.tot_stats.cps == 25600
    assert d.stats.counters()[0] == svc.stats.counters()[0] == lab.ipvs.tot_stats.counters()[0] == 200
    lab.ipvs.sysctl.set("run_estimation", 0)
    d.stats.conns += 200
    lab.tick(2 * PERIOD)
    # 6.1's estimation_timer skips everything: rates and snapshots stay.
    assert d.stats.cps == 25600
    assert d.stats.counters()[0] == svc.stats.counters()[0] == 200


def test_shown_counters_are_the_estimators_snapshot():
    s = Stats()
    est = Estimator(HZ)
    est.start(s)
    est.run(0)
    s.inpkts += 5  # the packet path counts at once
    assert s.counters()[1] == 0  # not visible before the next estimator run
    est.run(PERIOD - 1)
    assert s.counters()[1] == 0
    est.run(PERIOD)
    assert s.counters()[1] == 5
    s.inpkts += 3
    s.zero_stats()  # -Z zeroes to the snapshot: the 3 are still to come
    est.run(2 * PERIOD)
    assert s.counters()[1] == 3


def _dest_in(svc: Stats, tot: Stats, est: Estimator) -> Stats:
    d = Stats(parents=(svc, tot))
    est.start(d)
    return d


def test_parents_get_each_count_once():
    est = Estimator(HZ)
    svc, tot = Stats(), Stats()
    est.start(svc)
    est.start(tot)
    a, b = _dest_in(svc, tot, est), _dest_in(svc, tot, est)
    est.run(0)
    a.inpkts, b.inpkts = 3, 4
    est.push()
    est.push()  # twice is harmless
    assert (svc.inpkts, tot.inpkts) == (7, 7)
    assert svc.counters()[1] == 0  # pushing is not a snapshot
    est.run(PERIOD)
    assert svc.counters()[1] == tot.counters()[1] == 7


def test_a_deleted_dests_counts_stay_with_its_service_and_total():
    est = Estimator(HZ)
    svc, tot = Stats(), Stats()
    est.start(svc)
    est.start(tot)
    a = _dest_in(svc, tot, est)
    est.run(0)
    a.outpkts = 9
    est.stop(a)  # __ip_vs_del_dest: the dest leaves before the next period
    est.run(PERIOD)
    assert svc.counters()[2] == tot.counters()[2] == 9
    assert a.counters()[2] == 0  # its own estimator stopped before a snapshot
    est.start(a)  # back from the trash: nothing is counted twice
    a.outpkts += 1
    est.run(2 * PERIOD)
    assert (svc.counters()[2], tot.counters()[2], a.counters()[2]) == (10, 10, 10)


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1000)), max_size=40))
def test_service_and_total_snapshots_are_the_sums_of_their_dests(steps):
    """Whatever the order of counting and estimator runs, the parents'
    snapshots equal the sums of their dests' live counters at the run."""
    est = Estimator(HZ)
    svc, tot = Stats(), Stats()
    est.start(svc)
    est.start(tot)
    dests = [_dest_in(svc, tot, est) for _ in range(2)]
    est.run(0)
    t = 0
    for which, n in steps:
        if which == 2:
            t += PERIOD
            est.run(t)
            want = sum(d.inbytes for d in dests)
            assert svc.counters()[3] == tot.counters()[3] == want
        else:
            dests[which].inbytes += n
