"""Invariants every scheduler keeps, and the registry."""

import errno
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipvs import ctl
from ipvs.netns import NetnsIPVS
from ipvs.sched import SCHEDULER_NAMES, Scheduler, available_schedulers, scheduler_get
from ipvs.uapi import IP_VS_DEST_F_OVERLOAD
from tests.sched.util import Lab

#: Schedulers that find a destination whenever one is eligible (weight > 0,
#: not overloaded).  ovf also needs active <= weight; the hashing ones
#: (sh, dh, mh) fail when the key lands on an unavailable one.
ALWAYS_FIND = ("rr", "wrr", "lc", "wlc", "sed", "nq", "fo", "twos", "lblc", "lblcr")

dest_spec = st.tuples(st.integers(0, 4), st.booleans(), st.integers(0, 5), st.integers(0, 5))


def build(sched, spec):
    lab = Lab(sched)
    for i, (w, _over, act, inact) in enumerate(spec, 1):
        lab.add(i, weight=w)
    for i, (_w, over, act, inact) in enumerate(spec, 1):
        d = lab.dest(i)
        d.activeconns, d.inactconns = act, inact
        if over:
            d.flags |= IP_VS_DEST_F_OVERLOAD
    return lab


def test_every_name_loads():
    assert available_schedulers() == list(SCHEDULER_NAMES)
    for name in SCHEDULER_NAMES:
        cls = scheduler_get(name)
        assert issubclass(cls, Scheduler) and cls.name == name


@pytest.mark.parametrize("bad", ["nope", "RR", "../rr", "", "sched"])
def test_unknown_scheduler_is_enoent(bad):
    assert scheduler_get(bad) is None
    with pytest.raises(ctl.IPVSError) as e:
        ctl.add_service(NetnsIPVS(), ctl.ServiceUser(addr=b"\xcb\0\x71\5", port=80, sched_name=bad))
    assert e.value.errno == errno.ENOENT


def test_edit_service_switches_scheduler_keeping_dests():
    lab = Lab("wlc")
    for i in (1, 2, 3):
        lab.add(i)
    lab.su.sched_name = "rr"
    ctl.edit_service(lab.ipvs, lab.su)
    assert lab.sched.name == "rr"
    assert lab.run(4) == ["rs3", "rs2", "rs1", "rs3"]


@pytest.mark.parametrize("sched", SCHEDULER_NAMES)
@settings(max_examples=25, deadline=None)
@given(spec=st.lists(dest_spec, min_size=1, max_size=6), clients=st.lists(st.integers(0, 2**32 - 1), max_size=8))
def test_never_weight_zero_or_overloaded(sched, spec, clients):
    lab = build(sched, spec)
    eligible = {f"rs{i}" for i, (w, over, _, _) in enumerate(spec, 1) if w > 0 and not over}
    srcs = [str(ipaddress.IPv4Address(c)) for c in clients] or ["198.51.100.2"]
    got = [lab.run(1, src=s, dst=ipaddress.IPv4Address(c ^ 0x5A5A).packed)[0] for s, c in zip(srcs, clients or [0])]
    got += lab.run(4)
    for g in got:
        assert g is None or g in eligible
    if sched in ALWAYS_FIND and eligible:
        assert None not in got


@settings(max_examples=30, deadline=None)
@given(spec=st.lists(dest_spec, min_size=1, max_size=6))
def test_ovf_finds_when_some_dest_has_room(spec):
    lab = build("ovf", spec)
    room = [w > 0 and not over and act <= w for (w, over, act, _) in spec]
    assert (lab.run(1)[0] is not None) == any(room)
