"""Upper/lower connection thresholds (-x/-y) and OVERLOAD, digest 5.15:
set in ConnTable.bind_dest, cleared in unbind_dest and by edit_dest; the
schedulers skip overloaded destinations."""

import ipaddress

import pytest

from ipvs import ctl
from ipvs.ip_vs import ConnParam
from ipvs.uapi import IP_VS_CONN_F_TEMPLATE, IP_VS_DEST_F_OVERLOAD, IPPROTO_TCP
from tests.sched.util import VIP, Lab, golden_lab

CLIENT = ipaddress.ip_address("198.51.100.2").packed
_port = iter(range(20000, 60000))


def connect(lab, dest, template=False):
    """A new connection (or persistence template) bound to ``dest``."""
    flags = IP_VS_CONN_F_TEMPLATE if template else 0
    return lab.ipvs.conn_tab.new(ConnParam(dest.af, IPPROTO_TCP, CLIENT, next(_port), VIP, 80), dest.addr, dest.port, flags, dest)


def over(d):
    return bool(d.flags & IP_VS_DEST_F_OVERLOAD)


def test_upper_threshold_sets_overload_at_bind():
    lab = golden_lab("rr", [1])
    d = lab.edit(1, u=3)
    conns = [connect(lab, d) for _ in range(2)]
    assert not over(d)
    conns.append(connect(lab, d))  # active + inactive >= 3
    assert over(d) and d.inactconns == 3


def test_cleared_at_three_quarters_without_lower_threshold():
    lab = golden_lab("rr", [1])
    d = lab.edit(1, u=4)
    conns = [connect(lab, d) for _ in range(4)]
    assert over(d)
    tab = lab.ipvs.conn_tab
    tab.release(conns.pop())  # total 3: 3*4 < 4*3 is false
    assert over(d)
    tab.release(conns.pop())  # total 2: 8 < 12
    assert not over(d)


def test_cleared_below_lower_threshold():
    lab = golden_lab("rr", [1])
    d = lab.edit(1, u=4, lo=2)
    conns = [connect(lab, d) for _ in range(4)]
    tab = lab.ipvs.conn_tab
    tab.release(conns.pop())
    tab.release(conns.pop())  # total 2: not < 2
    assert over(d)
    tab.release(conns.pop())
    assert not over(d)


def test_no_threshold_clears_on_any_unbind():
    lab = golden_lab("rr", [1])
    d = lab.dest(1)
    c = connect(lab, d)
    d.flags |= IP_VS_DEST_F_OVERLOAD
    lab.ipvs.conn_tab.release(c)
    assert not over(d)


def test_templates_do_not_count():
    lab = golden_lab("rr", [1])
    d = lab.edit(1, u=1)
    connect(lab, d, template=True)
    assert d.persistconns == 1 and not over(d)
    connect(lab, d)
    assert over(d)


@pytest.mark.parametrize("new_u, cleared", [(5, True), (0, True), (3, False), (2, False)])
def test_edit_dest_threshold(new_u, cleared):
    lab = golden_lab("rr", [1])
    d = lab.edit(1, u=3)
    for _ in range(3):
        connect(lab, d)
    assert over(d)
    lab.edit(1, u=new_u)
    assert over(d) is not cleared


def test_lower_above_upper_is_erange():
    lab = golden_lab("rr", [1])
    with pytest.raises(ctl.IPVSError) as e:
        lab.edit(1, u=0, lo=1)
    assert e.value.errno == 34


@pytest.mark.parametrize("sched", ["rr", "wrr", "lc", "wlc", "sed", "nq", "fo", "ovf", "twos", "lblcr"])
def test_overflow_and_recovery(sched):
    """rs2 has -x 2: once two connections are bound it is skipped until
    they end; the others take the traffic."""
    lab = Lab(sched)
    lab.add(1, weight=1)
    lab.add(2, weight=5, u=2)  # rs2 heavier: preferred by the weighted ones
    rs2 = lab.dest(2)
    held = []
    for _ in range(8):
        d = lab.pick(sport=next(_port))
        assert d is not None
        c = connect(lab, d)
        if d is rs2:
            held.append(c)
            assert rs2.activeconns + rs2.inactconns <= 2
    assert over(rs2) and len(held) == 2
    for c in held:
        lab.ipvs.conn_tab.release(c)
    assert not over(rs2)
    assert any(lab.pick(sport=next(_port)) is rs2 for _ in range(6)) or sched == "lblcr"


def test_lblc_cache_hit_ignores_overload():
    """The kernel's lblc checks AVAILABLE, weight and its own load rule on
    a cache hit, not the OVERLOAD flag: a threshold does not move an
    address that is already mapped (only new addresses avoid the dest)."""
    lab = Lab("lblc")
    lab.add(1, weight=1)
    lab.add(2, weight=5, u=2)
    rs2 = lab.dest(2)
    for _ in range(3):
        d = lab.pick()
        assert d is rs2
        connect(lab, d)
    assert over(rs2) and rs2.inactconns == 3
    other = ipaddress.ip_address("203.0.113.99").packed
    assert lab.pick(dst=other) is lab.dest(1)
