"""wrr's sorted-eligible-list walk against a plain transcription of the
kernel loop (every destination tested against cw), under random weight
edits, overload flips, additions and deletions."""

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from ipvs.uapi import IP_VS_DEST_F_OVERLOAD
from tests.sched.util import Lab


class KernelWrr:
    """ip_vs_wrr.c as written: a cursor into a list with a head sentinel
    (index -1), walked one destination at a time."""

    def __init__(self, svc):
        self.svc = svc
        self.cl = None
        self.cw = 0
        self.changed()

    def changed(self):
        ws = [d.weight for d in self.svc.destinations]
        pos = [w for w in ws if w > 0]
        self.di = math.gcd(*pos) if pos else 1
        self.mw = max(ws, default=0) - (self.di - 1)
        self.cl = None
        if self.cw > self.mw or not self.cw:
            self.cw = self.mw
        elif self.di > 1:
            self.cw = (self.cw // self.di) * self.di + 1

    def schedule(self):
        dests = self.svc.destinations
        pos = -1 if self.cl is None else dests.index(self.cl)
        if self.mw == 0:
            return None
        last, stop = pos, None
        last_pass = restarted = False
        while True:
            pos += 1
            while pos < len(dests):
                d = dests[pos]
                if not d.flags & IP_VS_DEST_F_OVERLOAD and d.weight >= self.cw:
                    self.cl = d
                    return d
                if pos == stop:
                    self.cl = d
                    return None
                pos += 1
            pos = -1  # back at the head
            self.cw -= self.di
            if self.cw <= 0:
                self.cw = self.mw
                if last_pass or last == -1:
                    self.cl = None
                    return None
                restarted = True
            last_pass = self.cw <= self.di
            if last_pass and restarted and last != -1:
                stop = last


op = st.one_of(
    st.tuples(st.just("pick"), st.integers(1, 6)),
    st.tuples(st.just("edit"), st.integers(1, 6), st.integers(0, 12)),
    st.tuples(st.just("flip"), st.integers(1, 6)),
    st.tuples(st.just("add"), st.integers(1, 6), st.integers(0, 12)),
    st.tuples(st.just("del"), st.integers(1, 6)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12), st.booleans()), min_size=1, max_size=6), st.lists(op, max_size=40))
def test_same_choices_as_the_plain_kernel_loop(initial, ops):
    lab = Lab("wrr")
    ref = KernelWrr(lab.svc)
    present = set()
    for i, (w, over) in enumerate(initial, 1):
        lab.add(i, weight=w)
        present.add(i)
        ref.changed()
        if over:
            lab.dest(i).flags |= IP_VS_DEST_F_OVERLOAD
    for o in ops + [("pick", 6)]:
        if o[0] == "pick":
            for _ in range(o[1]):
                assert lab.pick() is ref.schedule()
                assert lab.sched.cw == ref.cw
        elif o[0] == "add" and o[1] not in present:
            lab.add(o[1], weight=o[2])
            present.add(o[1])
            ref.changed()
        elif o[0] == "edit" and o[1] in present:
            lab.edit(o[1], weight=o[2])
            ref.changed()
        elif o[0] == "del" and o[1] in present:
            lab.delete(o[1])
            present.discard(o[1])
            ref.changed()
        elif o[0] == "flip" and o[1] in present:
            lab.dest(o[1]).flags ^= IP_VS_DEST_F_OVERLOAD
