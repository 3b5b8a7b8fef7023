"""ipvs/sched/twos.py (kernel 6.2+ ip_vs_twos.c; random, not in the 6.1
differential tests)."""

from hypothesis import given, settings
from hypothesis import strategies as st

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
