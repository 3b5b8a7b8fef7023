"""ipvs/conn.py: the connection table (ip_vs_conn.c): keys and lookups,
NO_CPORT, templates, dest binding with the OVERLOAD rules (digest 5.15),
the timer wheel and the table bound."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipvs.conn import CONN_NEW_TIMEOUT_S, Connection, ConnTable
from ipvs.ip_vs import ConnParam, Dest, Sysctls
from ipvs.netns import NetnsIPVS
from ipvs.uapi import (
    IP_VS_CONN_F_HASHED,
    IP_VS_CONN_F_INACTIVE,
    IP_VS_CONN_F_NO_CPORT,
    IP_VS_CONN_F_ONE_PACKET,
    IP_VS_CONN_F_TEMPLATE,
    IP_VS_DEST_F_OVERLOAD,
)
from tests.conftest import A

HZ = 250
CLI, VIP, RS = A("198.51.100.2"), A("203.0.113.5"), A("172.16.0.2")


def dest(u=0, l=0, conn_flags=IP_VS_CONN_F_INACTIVE):
    return Dest(af=2, addr=RS, port=8080, conn_flags=conn_flags, u_threshold=u, l_threshold=l)


def new(tab, cport=1000, flags=0, d=None, proto=6, caddr=CLI):
    return tab.new(ConnParam(2, proto, caddr, cport, VIP, 80), RS, 8080, flags, d)


# ---------------------------------------------------------------- lookups


def test_in_and_out_lookups():
    tab = ConnTable(HZ)
    d = dest()
    cp = new(tab, d=d)
    assert cp.flags & IP_VS_CONN_F_HASHED
    assert (cp.caddr, cp.cport, cp.vaddr, cp.vport, cp.daddr, cp.dport) == (CLI, 1000, VIP, 80, RS, 8080)
    assert cp.timeout == CONN_NEW_TIMEOUT_S * HZ == 3 * HZ
    assert tab.in_get(6, CLI, VIP, 1000, 80) is cp
    assert tab.out_get(6, RS, CLI, 8080, 1000) is cp
    for miss in ((17, CLI, VIP, 1000, 80), (6, CLI, VIP, 1001, 80), (6, CLI, VIP, 1000, 81),
                 (6, A("198.51.100.3"), VIP, 1000, 80), (6, VIP, CLI, 80, 1000)):
        assert tab.in_get(*miss) is None
    assert tab.out_get(6, RS, CLI, 80, 1000) is None
    assert len(tab) == 1 and tab.all() == [cp]
    tab.unhash(cp)
    assert not cp.flags & IP_VS_CONN_F_HASHED
    assert tab.in_get(6, CLI, VIP, 1000, 80) is None and tab.out_get(6, RS, CLI, 8080, 1000) is None
    tab.unhash(cp)  # a second unhash is harmless
    tab.hash(cp)
    assert tab.in_get(6, CLI, VIP, 1000, 80) is cp


def test_one_client_port_to_many_service_ports_all_found_and_all_removed():
    """A client address and port may open a connection to every port of a
    port-0 service: all of them share one client key (the kernel's hash
    chain).  Each is found by its own in key and reply key, whatever the
    order they go in, and nothing is left once they have all gone."""
    import random

    tab = ConnTable(HZ)
    conns = [tab.new(ConnParam(2, 6, CLI, 1000, VIP, port), RS, port, 0, None) for port in range(1, 2001)]
    assert len(tab.table) == 1
    for cp in conns[::97]:
        assert tab.in_get(6, CLI, VIP, 1000, cp.vport) is cp
        assert tab.out_get(6, RS, CLI, cp.dport, 1000) is cp
    rng = random.Random(5)
    rng.shuffle(conns)
    for i, cp in enumerate(conns):
        tab.unhash(cp)
        assert tab.in_get(6, CLI, VIP, 1000, cp.vport) is None
        for other in conns[i + 1 : i + 3]:
            assert tab.in_get(6, CLI, VIP, 1000, other.vport) is other
            assert tab.out_get(6, RS, CLI, other.dport, 1000) is other
    assert (tab.table, tab.older, tab.older_in, tab.older_out) == ({}, {}, {}, {})


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5), st.integers(0, 3)), max_size=60))
def test_lookups_find_the_newest_hashed_connection_of_their_keys(ops):
    """Hashing and unhashing connections that share a client key, some with
    the same addresses (a reused tuple): a lookup finds the most recently
    hashed connection still hashed with its in key (its reply key), as the
    kernel's chain, filled at the head, does."""
    tab = ConnTable(HZ)
    live = []  # hashed connections, oldest first
    pool = []
    for add, vport, pick in ops:
        if add or not live:
            cp = Connection(2, 6, CLI, 1000, VIP, 80 + vport, RS, 8000 + vport)
            pool.append(cp)
            tab.hash(cp)
            live.append(cp)
        else:
            cp = live.pop(pick % len(live))
            tab.unhash(cp)
        for v in range(6):
            want = [c for c in live if c.vport == 80 + v]
            assert tab.in_get(6, CLI, VIP, 1000, 80 + v) is (want[-1] if want else None)
            assert tab.out_get(6, RS, CLI, 8000 + v, 1000) is (want[-1] if want else None)
        assert sorted(map(id, tab.all())) == sorted(map(id, live))


def test_ipv6_keys_carry_the_family():
    tab = ConnTable(HZ)
    c6, v6, r6 = A("2001:db8::2"), A("2001:db8::5"), A("2001:db8:1::2")
    cp = tab.new(ConnParam(10, 6, c6, 1000, v6, 80), r6, 80, 0, None)
    assert cp.af == 10 and cp.caddr == c6 and cp.daddr == r6
    assert tab.in_get(6, c6, v6, 1000, 80) is cp
    assert tab.out_get(6, r6, c6, 80, 1000) is cp
    assert tab.in_get(6, CLI, VIP, 1000, 80) is None


def test_no_cport_retry_and_fill_cport():
    tab = ConnTable(HZ)
    cp = new(tab, cport=0, flags=IP_VS_CONN_F_NO_CPORT)
    plain = tab.new(ConnParam(2, 6, CLI, 0, VIP, 81), RS, 81, 0, None)  # cport 0 but not NO_CPORT
    assert tab.no_cport_count == 1
    assert tab.in_get(6, CLI, VIP, 5555, 80) is cp  # any client port matches
    assert tab.in_get(6, CLI, VIP, 5555, 81) is None  # only NO_CPORT conns match by retry
    assert tab.in_get(6, CLI, VIP, 0, 81) is plain
    tab.fill_cport(cp, 5555)
    assert tab.no_cport_count == 0
    assert cp.cport == 5555 and not cp.flags & IP_VS_CONN_F_NO_CPORT
    assert tab.in_get(6, CLI, VIP, 5555, 80) is cp
    assert tab.in_get(6, CLI, VIP, 5556, 80) is None
    assert tab.out_get(6, RS, CLI, 8080, 5555) is cp


def test_release_of_a_no_cport_conn_uncounts_it():
    tab = ConnTable(HZ)
    cp = new(tab, cport=0, flags=IP_VS_CONN_F_NO_CPORT)
    tab.release(cp)
    assert tab.no_cport_count == 0 and len(tab) == 0
    assert tab.in_get(6, CLI, VIP, 1, 80) is None


def test_templates_live_apart():
    tab = ConnTable(HZ)
    d = dest()
    ct = tab.new(ConnParam(2, 6, CLI, 0, VIP, 80), RS, 8080, IP_VS_CONN_F_TEMPLATE, d)
    assert tab.ct_in_get(6, CLI, VIP, 0, 80) is ct
    assert tab.in_get(6, CLI, VIP, 0, 80) is None
    assert tab.out_get(6, RS, CLI, 8080, 0) is None
    assert tab.ct_in_get(6, CLI, VIP, 0, 81) is None
    assert d.persistconns == 1 and (d.activeconns, d.inactconns) == (0, 0)
    assert tab.all() == [ct]
    tab.release(ct)
    assert d.persistconns == 0 and tab.ct_in_get(6, CLI, VIP, 0, 80) is None


def test_two_invalidated_templates_of_one_client_both_stay_listed():
    tab = ConnTable(HZ)
    d1, d2 = dest(), dest()
    t1 = tab.new(ConnParam(2, 6, CLI, 0, VIP, 80), RS, 8080, IP_VS_CONN_F_TEMPLATE, d1)
    for ct in (t1,):
        tab.unhash(ct)
        ct.dport = ct.vport = 0xFFFF
        tab.hash(ct)
    t2 = tab.new(ConnParam(2, 6, CLI, 0, VIP, 80), RS, 8080, IP_VS_CONN_F_TEMPLATE, d2)
    tab.unhash(t2)
    t2.dport = t2.vport = 0xFFFF
    tab.hash(t2)
    assert {id(c) for c in tab.all()} == {id(t1), id(t2)}


# -------------------------------------------------------- bind and OVERLOAD


def test_bind_takes_dest_flags_and_counts_inactive():
    tab = ConnTable(HZ)
    d = dest(conn_flags=IP_VS_CONN_F_INACTIVE | IP_VS_CONN_F_ONE_PACKET)
    cp = new(tab, d=d)
    assert cp.dest is d and d.refcnt == 1
    assert cp.flags & IP_VS_CONN_F_INACTIVE
    assert not cp.flags & IP_VS_CONN_F_ONE_PACKET  # stripped for TCP
    assert (d.activeconns, d.inactconns) == (0, 1)
    u = new(tab, d=d, proto=17, cport=2000)
    assert u.flags & IP_VS_CONN_F_ONE_PACKET
    assert not u.flags & IP_VS_CONN_F_HASHED  # one-packet conns are never hashed
    assert tab.in_get(17, CLI, VIP, 2000, 80) is None
    assert len(tab) == 2 and d.refcnt == 2
    tab.release(cp)
    tab.release(u)
    assert (d.activeconns, d.inactconns, d.refcnt) == (0, 0, 0)
    assert cp.dest is None


def test_bind_counts_active_when_the_conn_is_not_inactive():
    tab = ConnTable(HZ)
    d = dest(conn_flags=0)
    new(tab, d=d)
    assert (d.activeconns, d.inactconns) == (1, 0)


def test_overload_set_at_upper_threshold_and_cleared_below_three_quarters():
    tab = ConnTable(HZ)
    d = dest(u=4)
    conns = [new(tab, cport=i, d=d) for i in range(3)]
    assert not d.flags & IP_VS_DEST_F_OVERLOAD
    conns.append(new(tab, cport=9, d=d))
    assert d.flags & IP_VS_DEST_F_OVERLOAD
    tab.release(conns.pop())  # total 3: 12 < 12 is false, still overloaded
    assert d.flags & IP_VS_DEST_F_OVERLOAD
    tab.release(conns.pop())  # total 2: 8 < 12
    assert not d.flags & IP_VS_DEST_F_OVERLOAD


def test_overload_cleared_below_lower_threshold_when_set():
    tab = ConnTable(HZ)
    d = dest(u=4, l=2)
    conns = [new(tab, cport=i, d=d) for i in range(4)]
    assert d.flags & IP_VS_DEST_F_OVERLOAD
    tab.release(conns.pop())
    tab.release(conns.pop())  # total 2, not < 2
    assert d.flags & IP_VS_DEST_F_OVERLOAD
    tab.release(conns.pop())  # total 1 < 2
    assert not d.flags & IP_VS_DEST_F_OVERLOAD


def test_overload_always_cleared_without_thresholds():
    tab = ConnTable(HZ)
    d = dest()
    cp = new(tab, d=d)
    new(tab, cport=2, d=d)
    d.flags |= IP_VS_DEST_F_OVERLOAD
    tab.release(cp)
    assert not d.flags & IP_VS_DEST_F_OVERLOAD


def test_persistconns_are_not_part_of_the_total():
    tab = ConnTable(HZ)
    d = dest(u=2)
    tab.new(ConnParam(2, 6, CLI, 0, VIP, 80), RS, 8080, IP_VS_CONN_F_TEMPLATE, d)
    tab.new(ConnParam(2, 6, A("198.51.100.3"), 0, VIP, 80), RS, 8080, IP_VS_CONN_F_TEMPLATE, d)
    assert d.persistconns == 2 and not d.flags & IP_VS_DEST_F_OVERLOAD
    new(tab, d=d)
    assert not d.flags & IP_VS_DEST_F_OVERLOAD
    new(tab, cport=2, d=d)
    assert d.flags & IP_VS_DEST_F_OVERLOAD


def test_control_links():
    tab = ConnTable(HZ)
    ct = tab.new(ConnParam(2, 6, CLI, 0, VIP, 80), RS, 8080, IP_VS_CONN_F_TEMPLATE, None)
    cp = new(tab)
    tab.control_add(cp, ct)
    assert cp.control is ct and ct.n_control == 1
    tab.release(cp)
    assert ct.n_control == 0 and cp.control is None


# ------------------------------------------------------------- timer wheel


def test_put_and_due():
    tab = ConnTable(HZ)
    cp = new(tab)
    cp.timeout = 100
    tab.put(cp, 1000)
    assert cp.expires == 1100
    assert tab.next_timer() is not None and tab.next_timer() <= 1100
    assert tab.due(1099) == []
    assert tab.due(1100) == [cp]
    assert tab.due(5000) == []  # handed out once


def test_restart_later_is_refiled_lazily():
    tab = ConnTable(HZ)
    cp = new(tab)
    cp.timeout = 100
    tab.put(cp, 1000)
    tab.put(cp, 1050)  # later: only expires moves
    assert cp.expires == 1150
    assert tab.due(1100) == []  # the old slot comes due: re-filed, not expired
    assert tab.due(1149) == []
    assert tab.due(1150) == [cp]


def test_shorter_timeout_is_filed_earlier_at_once():
    tab = ConnTable(HZ)
    cp = new(tab)
    cp.timeout = 900 * HZ
    tab.put(cp, 1000)
    cp.timeout = 10
    tab.put(cp, 1001)
    assert tab.next_timer() <= 1011
    assert tab.due(1011) == [cp]
    assert tab.due(1000 + 900 * HZ) == []  # the stale filing does not fire again


def test_big_time_jumps_expire_exactly_what_is_due():
    tab = ConnTable(HZ)
    conns = []
    for i in range(50):
        cp = new(tab, cport=i)
        cp.timeout = (i + 1) * 1000
        tab.put(cp, 0)
        conns.append(cp)
    got = tab.due(25_000)
    assert {c.cport for c in got} == set(range(25))
    got = tab.due(10**12)
    assert {c.cport for c in got} == set(range(25, 50))
    assert tab.next_timer() is None


def test_expire_now_fires_at_the_next_run():
    tab = ConnTable(HZ)
    cp = new(tab)
    cp.timeout = 900 * HZ
    tab.put(cp, 1000)
    tab.due(1000)
    tab.expire_now(cp, 1000)
    # ip_vs_conn_expire_now only moves the timer; the timeout stays (only
    # ip_vs_conn_del, used by the flushes, zeroes it for controlled conns).
    assert cp.timeout == 900 * HZ
    assert tab.due(1001) == [cp]


def test_flushes_zero_the_timeout_of_controlled_conns_only():
    """ip_vs_conn_del: "drop cp->control chain too" -- a flushed conn that
    has a controller expires with timeout 0, which makes the expiry drop
    that controller too (unless it is an assured template)."""
    tab = ConnTable(HZ)
    d = dest()
    ct = tab.new(ConnParam(2, 6, CLI, 0, VIP, 80), RS, 8080, IP_VS_CONN_F_TEMPLATE, d)
    ruled = new(tab, cport=1, d=d)
    free = new(tab, cport=2, d=d)
    tab.control_add(ruled, ct)
    for cp in (ct, ruled, free):
        cp.timeout = 300 * HZ
        tab.put(cp, 0)
    tab.expire_dest_conns(d, 10)
    assert ruled.timeout == 0 and free.timeout == 300 * HZ
    tab2 = ConnTable(HZ)
    a = tab2.new(ConnParam(2, 6, CLI, 1, VIP, 80), RS, 8080, 0, None)
    b = tab2.new(ConnParam(2, 6, CLI, 2, VIP, 80), RS, 8080, 0, None)
    tab2.control_add(b, a)
    a.timeout = b.timeout = 60 * HZ
    tab2.flush(5)
    assert (a.timeout, b.timeout) == (60 * HZ, 0)


def test_flush_and_expire_dest_conns():
    tab = ConnTable(HZ)
    d1, d2 = dest(), dest()
    a = new(tab, cport=1, d=d1)
    b = new(tab, cport=2, d=d2)
    for cp in (a, b):
        cp.timeout = 900 * HZ
        tab.put(cp, 0)
    tab.expire_dest_conns(d1, 10)
    assert tab.due(11) == [a]
    tab.release(a)  # what the instance's expiry does with a due conn
    tab.flush(20)
    assert tab.due(21) == [b]


# ------------------------------------------------------------------ bounds


def test_max_conns_refuses_and_counts():
    tab = ConnTable(HZ, max_conns=2)
    assert new(tab, cport=1) is not None
    assert new(tab, cport=2) is not None
    assert new(tab, cport=3) is None
    assert tab.refused == 1 and len(tab) == 2
    tab.release(tab.in_get(6, CLI, VIP, 1, 80))
    assert new(tab, cport=3) is not None


@pytest.mark.parametrize("bits,size", [(12, 4096), (8, 256), (20, 1 << 20), (7, 4096), (21, 4096)])
def test_reported_size_is_two_to_conn_tab_bits_clamped(bits, size):
    ipvs = NetnsIPVS(sysctl=Sysctls(conn_tab_bits=bits))
    assert ipvs.conn_tab.size == size


def test_connection_repr_and_fwd():
    cp = Connection(2, 6, CLI, 1, VIP, 80, RS, 8080, flags=3)
    assert cp.fwd == 3
    assert "198.51.100.2:1" in repr(cp) and "172.16.0.2:8080" in repr(cp)


def test_dr_and_tun_connections_are_found_by_the_vip_as_reply_source():
    """ip_vs_conn_out_get (5.10+): a NAT connection's replies come from
    daddr:dport, a DR/TUN one's from vaddr:vport; unhashing removes either."""
    from ipvs.uapi import IP_VS_CONN_F_DROUTE, IP_VS_CONN_F_MASQ, IP_VS_CONN_F_TUNNEL

    tab = ConnTable(HZ)
    for fwd in (IP_VS_CONN_F_DROUTE, IP_VS_CONN_F_TUNNEL):
        cp = new(tab, cport=2000 + fwd, d=dest(conn_flags=IP_VS_CONN_F_INACTIVE | fwd))
        assert tab.out_get(6, VIP, CLI, 80, 2000 + fwd) is cp
        assert tab.out_get(6, RS, CLI, 8080, 2000 + fwd) is None
        assert cp.daddr == RS and cp.dport == 8080  # (the connection's own fields stay)
        tab.unhash(cp)
        assert tab.out_get(6, VIP, CLI, 80, 2000 + fwd) is None
    nat = new(tab, cport=3000, d=dest(conn_flags=IP_VS_CONN_F_INACTIVE | IP_VS_CONN_F_MASQ))
    assert tab.out_get(6, RS, CLI, 8080, 3000) is nat and tab.out_get(6, VIP, CLI, 80, 3000) is None
    assert len(tab.table) == 1 and not tab.older
