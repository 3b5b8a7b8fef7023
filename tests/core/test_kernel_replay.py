"""The kernel's own VS/NAT captures replayed through the core.

For every flow seen in both captures of a golden run, the frames the core
transmits must equal, byte for byte at L3/L4 (addresses, ports, TTL,
checksums, everything), what kernel IPVS 6.1 put on the wire, and the
scheduling order must be the kernel's.
"""

import os

import pytest

from ipvs import ctl, uapi
from ipvs.core import Director
from ipvs.driver import replay
from ipvs.netns import NetnsIPVS
from tests.kernel_capture import A, golden_dir, split

VIP = A("203.0.113.5")
MASQ = uapi.IP_VS_CONN_F_MASQ


def nat_classic_director():
    ipvs = NetnsIPVS()
    su = ctl.ServiceUser(addr=VIP, port=80, sched_name="wlc")
    ctl.add_service(ipvs, su)
    ctl.add_dest(ipvs, su, ctl.DestUser(addr=A("172.16.0.2"), port=80, conn_flags=MASQ))
    ctl.add_dest(ipvs, su, ctl.DestUser(addr=A("172.16.0.3"), port=8000, weight=2, conn_flags=MASQ))
    su21 = ctl.ServiceUser(addr=VIP, port=21, sched_name="wrr")
    ctl.add_service(ipvs, su21)
    ctl.add_dest(ipvs, su21, ctl.DestUser(addr=A("172.16.0.2"), port=21, conn_flags=MASQ))
    return Director(ipvs)


@pytest.fixture(scope="module")
def nat_classic():
    g = golden_dir("nat_classic")
    if g is None:
        pytest.skip("nat_classic golden not available")
    d = nat_classic_director()
    inp, to_rs, to_cli = split(g, {VIP})
    out = replay.replay(d, inp)
    return g, d, inp, to_rs, to_cli, out


def test_rewritten_frames_equal_kernel(nat_classic):
    _g, _d, inp, to_rs, to_cli, out = nat_classic
    assert len(inp) >= 100
    got_rs = [f[14:] for _t, f in out if f[30:33] == A("172.16.0.0")[:3]]
    got_cli = [f[14:] for _t, f in out if f[26:30] == VIP]
    assert len(got_rs) + len(got_cli) == len(out)
    assert got_rs == [r.data[14:] for r in to_rs]
    assert got_cli == [r.data[14:] for r in to_cli]


def test_scheduling_order_equals_kernel(nat_classic):
    g, _d, _inp, to_rs, _to_cli, _out = nat_classic
    order = {}
    with open(os.path.join(g, "order.txt")) as f:
        for line in f:
            label, _n, src, server = line.split()
            order[int(src.rsplit(":", 1)[1])] = server
    seen = {}
    for r in to_rs:
        sport = int.from_bytes(r.data[34:36], "big")
        seen.setdefault(sport, "rs1" if r.data[30:34] == A("172.16.0.2") else "rs2")
    assert seen and all(order[p] == s for p, s in seen.items())


def test_connection_states_and_counters(nat_classic):
    g, d, inp, _to_rs, _to_cli, out = nat_classic
    conns = d.ipvs.conn_tab.all()
    assert len(conns) == len({int.from_bytes(r.data[34:36], "big") for r in inp if r.data[30:34] == VIP})
    names = d.ipvs.proto_data[6].state_names
    assert {names[c.state] for c in conns} == {"TIME_WAIT"}
    rs1, rs2 = (ctl.find_dest(ctl.service_find(d.ipvs, 2, 6, VIP, 80), 2, A(a), p)
                for a, p in (("172.16.0.2", 80), ("172.16.0.3", 8000)))
    # every connection ended: nothing active, all inactive
    assert (rs1.activeconns, rs2.activeconns) == (0, 0)
    assert rs1.inactconns + rs2.inactconns == len(conns)
    tot = d.ipvs.tot_stats.counters()
    assert tot[0] == len(conns)
    assert tot[1] == sum(1 for r in inp if r.data[30:34] == VIP)
    assert tot[2] == len([f for _t, f in out if f[26:30] == VIP])
    assert tot[3] == sum(len(r.data) - 14 for r in inp if r.data[30:34] == VIP)


def test_everything_expires(nat_classic):
    _g, d, *_ = nat_classic
    last = max(c.expires for c in d.ipvs.conn_tab.all())
    d.run_timers(last + 1)
    assert len(d.ipvs.conn_tab) == 0
    for svc in d.ipvs.svc_order:
        for dest in svc.destinations:
            assert (dest.activeconns, dest.inactconns, dest.persistconns) == (0, 0, 0)
