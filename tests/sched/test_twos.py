"""ipvs/sched/twos.py (kernel 6.2+ ip_vs_twos.c; random, not in the 6.1
differential tests)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from ipvs.sched import dest_conn_overhead
from ipvs.uapi import IP_VS_DEST_F_OVERLOAD
from tests.sched.util import Lab, golden_lab


class Draws:
    """A stand-in for random.Random giving fixed 32-bit draws."""

    def __init__(self, *values):
        self.values = list(values)

    def getrandbits(self, k):
        return self.values.pop(0)


def test_draws_walk_the_weights_and_compare_load():
    lab = golden_lab("twos", [1, 2, 3])  # list rs3(3) rs2(2) rs1(1), total 6
    s = lab.sched
    s.rng = Draws(0, 6)  # r1=0 -> first eligible (rs3), r2=6 -> last (rs1)
    assert lab.run(1) == ["rs3"]  # both idle: choice1 kept
    lab.dest(3).inactconns = 5  # oh1=5 w1=3, oh2=0 w2=1: 1*5 > 3*0
    s.rng = Draws(0, 6)
    assert lab.run(1) == ["rs1"]
    s.rng = Draws(7 + 3, 7 * 100 + 4)  # modulo total+1 = 7: 3 -> rs3, 4 -> rs2
    assert lab.run(1) == ["rs2"]


def test_seeded_runs_repeat():
    a, b = golden_lab("twos", [1, 2, 3]), golden_lab("twos", [1, 2, 3])
    a.sched.rng.seed(42)
    b.sched.rng.seed(42)
    assert a.run(30) == b.run(30)


def test_nothing_eligible():
    lab = golden_lab("twos", [0, 1])
    lab.dest(2).flags |= IP_VS_DEST_F_OVERLOAD
    assert lab.run(1) == [None]
    assert Lab("twos").run(1) == [None]


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 4), st.booleans(), st.integers(0, 3)), min_size=1, max_size=6),
    st.integers(0, 2**32),
)
def test_only_eligible(spec, seed):
    lab = Lab("twos")
    for i, (w, over, act) in enumerate(spec, 1):
        d = lab.add(i, weight=w)
        d.activeconns = act
        d.flags |= IP_VS_DEST_F_OVERLOAD if over else 0
    lab.sched.rng.seed(seed)
    ok = {f"rs{i}" for i, (w, over, _) in enumerate(spec, 1) if w > 0 and not over}
    got = lab.run(10)
    if ok:
        assert set(got) <= ok
    else:
        assert got == [None] * 10


def kernel_twos(dests, rweight1, rweight2):
    """ip_vs_twos_schedule's draw walk as the kernel writes it: one loop
    subtracting every weight from both draws (the model for ours)."""
    choice1 = choice2 = None
    weight1 = weight2 = -1
    overhead1 = overhead2 = 0
    for dest in dests:
        if dest.flags & IP_VS_DEST_F_OVERLOAD or dest.weight <= 0:
            continue
        rweight1 -= dest.weight
        rweight2 -= dest.weight
        if rweight1 <= 0 and weight1 == -1:
            choice1, weight1, overhead1 = dest, dest.weight, dest_conn_overhead(dest)
        if rweight2 <= 0 and weight2 == -1:
            choice2, weight2, overhead2 = dest, dest.weight, dest_conn_overhead(dest)
        if weight1 != -1 and weight2 != -1:
            break
    if choice2 is not None and weight2 * overhead1 > weight1 * overhead2:
        return choice2
    return choice1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.booleans(), st.integers(0, 3), st.integers(0, 9)), min_size=1, max_size=8),
    st.data(),
)
def test_the_running_sums_pick_as_the_kernels_loop(spec, data):
    lab = Lab("twos")
    for i, (w, over, act, inact) in enumerate(spec, 1):
        d = lab.add(i, weight=w)
        d.activeconns, d.inactconns = act, inact
        d.flags |= IP_VS_DEST_F_OVERLOAD if over else 0
    total = sum(w for w, over, _, _ in spec if w > 0 and not over)
    if not total:
        return
    r1 = data.draw(st.integers(0, total))
    r2 = data.draw(st.integers(0, total))
    lab.sched.rng = Draws(r1, r2)
    assert lab.pick() is kernel_twos(lab.sched.svc.destinations, r1, r2)
