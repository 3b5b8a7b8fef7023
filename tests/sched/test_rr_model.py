"""rr's cached cursor index against a plain transcription of ip_vs_rr.c
(the cursor looked up in the list every time), under additions,
deletions, weight edits and overload flips."""

from hypothesis import given, settings
from hypothesis import strategies as st

from ipvs.uapi import IP_VS_DEST_F_OVERLOAD
from tests.sched.util import Lab


class KernelRr:
    def __init__(self, svc):
        self.svc = svc
        self.cursor = None  # None: the list head

    def before_delete(self, dest):
        if self.cursor is dest:
            i = self.svc.destinations.index(dest)
            self.cursor = self.svc.destinations[i - 1] if i > 0 else None

    def schedule(self):
        dests = self.svc.destinations
        start = -1 if self.cursor is None else dests.index(self.cursor)
        for k in range(1, len(dests) + 1):
            d = dests[(start + k) % len(dests)]
            if not d.flags & IP_VS_DEST_F_OVERLOAD and d.weight > 0:
                self.cursor = d
                return d
        return None


op = st.one_of(
    st.tuples(st.just("pick"), st.integers(1, 5)),
    st.tuples(st.just("edit"), st.integers(1, 7), st.integers(0, 2)),
    st.tuples(st.just("flip"), st.integers(1, 7)),
    st.tuples(st.just("add"), st.integers(1, 7)),
    st.tuples(st.just("del"), st.integers(1, 7)),
)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 5), st.lists(op, max_size=40))
def test_same_choices_as_the_plain_kernel_loop(n0, ops):
    lab = Lab("rr")
    ref = KernelRr(lab.svc)
    present = set()
    for i in range(1, n0 + 1):
        lab.add(i)
        present.add(i)
    for o in ops + [("pick", 5)]:
        if o[0] == "pick":
            for _ in range(o[1]):
                assert lab.pick() is ref.schedule()
        elif o[0] == "add" and o[1] not in present:
            lab.add(o[1])
            present.add(o[1])
        elif o[0] == "edit" and o[1] in present:
            lab.edit(o[1], weight=o[2])
        elif o[0] == "del" and o[1] in present:
            ref.before_delete(lab.dest(o[1]))
            lab.delete(o[1])
            present.discard(o[1])
        elif o[0] == "flip" and o[1] in present:
            lab.dest(o[1]).flags ^= IP_VS_DEST_F_OVERLOAD
