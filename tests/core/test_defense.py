"""The kernel's defenses under memory pressure (issue 13): update_defense_level
(ipvs/ctl.py), ip_vs_random_dropentry (ipvs/conn.py), ip_vs_todrop and the
secure_tcp state table (ipvs/core.py), driven through the director as a SYN
flood would drive them."""

from __future__ import annotations

import random
import socket

import pytest

from ipvs import ctl
from ipvs.core import NF_DROP, NF_STOLEN
from ipvs.packet import Drop
from ipvs.proto import tcp as tcp_proto
from ipvs.uapi import IP_VS_CONN_F_HASHED, IP_VS_SVC_F_ONEPACKET, IP_VS_SVC_F_PERSISTENT
from tests.conftest import HZ, tcp, udp

from .test_core import CLI, VIP, web


def flood(lab, n, first=10000):
    return [lab.send(tcp(f"198.51.100.{2 + i % 200}", first + i, VIP, 80)) for i in range(n)]


@pytest.mark.parametrize("name", ["drop_entry", "drop_packet", "secure_tcp"])
def test_automatic_levels_follow_memory(name):
    """Level 1 turns itself into 2 while memory is short and back to 1 after."""
    lab = web(**{name: 1})
    ipvs = lab.ipvs
    ipvs.availmem = 10_000
    ctl.update_defense_level(ipvs)
    assert getattr(ipvs.sysctl, name) == 1
    ipvs.availmem = 100  # under amemthresh (1024 pages)
    ctl.update_defense_level(ipvs)
    assert getattr(ipvs.sysctl, name) == 2
    ipvs.availmem = 5000
    ctl.update_defense_level(ipvs)
    assert getattr(ipvs.sysctl, name) == 1


def test_without_a_budget_memory_is_never_short():
    lab = web(drop_entry=1, drop_packet=1, secure_tcp=1)
    assert lab.ipvs.availmem is None
    ctl.update_defense_level(lab.ipvs)
    assert (lab.ipvs.dropentry, lab.ipvs.drop_rate, lab.ipvs.sysctl.secure_tcp) == (False, 0, 1)


def test_drop_packet_rate_is_amemthresh_over_the_shortfall():
    """drop_rate = amemthresh / (amemthresh - availmem): 1024/(1024-768) = 4."""
    lab = web(drop_packet=1)
    lab.ipvs.availmem = 768
    lab.tick(lab.now + HZ)
    assert lab.ipvs.drop_rate == 4
    verdicts = flood(lab, 12)
    assert [i for i, v in enumerate(verdicts) if v == NF_DROP] == [3, 7, 11]
    assert lab.ipvs.drops[Drop.DEFENSE] == 3
    lab.ipvs.availmem = -50  # over budget: every new connection
    lab.tick(lab.now + HZ)
    assert lab.ipvs.drop_rate == 1
    assert set(flood(lab, 5, first=20000)) == {NF_DROP}


def test_secure_tcp_switches_to_the_dos_table_under_pressure():
    lab = web(secure_tcp=1)
    pd = lab.ipvs.proto_data[6]
    lab.ipvs.availmem = 10
    lab.tick(lab.now + HZ)
    assert pd.state_table is tcp_proto.TCP_STATES_DOS
    lab.ipvs.availmem = 100_000
    lab.tick(lab.now + HZ)
    assert pd.state_table is tcp_proto.TCP_STATES


def test_drop_entry_thins_half_open_entries_and_keeps_established():
    lab = web(drop_entry=1)
    assert set(flood(lab, 3200)) == {NF_STOLEN}
    # One established connection (SYN, then the handshake's ACK).
    lab.send(tcp(CLI, 4000, VIP, 80))
    lab.send(tcp(CLI, 4000, VIP, 80, flags="A"))
    established = [c for c in lab.conns() if c.state == tcp_proto.ESTABLISHED]
    assert len(established) == 1
    lab.ipvs.availmem = 0
    before = len(lab.conns())
    for _ in range(20):
        lab.tick(lab.now + HZ)  # (not long enough for SYN_RECV's own 60 s timeout)
    lab.ipvs.availmem = 100_000
    lab.tick(lab.now + 1)  # the last round's entries expire
    left = lab.conns()
    # 20 rounds of 1/32: (31/32)^20 of the half-open entries stay, about 53%.
    assert 0.35 * before < len(left) < 0.75 * before
    assert established[0] in left
    assert lab.ipvs.conn_tab.dropped == before - len(left)


def test_random_dropentry_looks_at_a_32nd():
    lab = web()
    flood(lab, 640)
    tab = lab.ipvs.conn_tab
    rng = random.Random(5)
    picked = []
    tab.random_dropentry(lab.now, lambda n: picked.append(rng.randrange(n)) or picked[-1])
    assert len(picked) == 20
    assert tab.dropped <= 20


def test_drop_entry_3_and_secure_tcp_3_are_always_on():
    lab = web(drop_entry=3, secure_tcp=3)
    ctl.update_defense_level(lab.ipvs)
    assert lab.ipvs.dropentry is True
    assert lab.ipvs.proto_data[6].state_table is tcp_proto.TCP_STATES_DOS


def test_in_pkts_counts_each_packet_from_the_client_side_only():
    lab = web()
    lab.send(tcp(CLI, 4100, VIP, 80))
    lab.send(tcp(CLI, 4100, VIP, 80, flags="A"))
    lab.send(tcp(CLI, 4100, VIP, 80, flags="PA", payload=b"GET / HTTP/1.0\r\n\r\n"))
    (cp,) = lab.conns()
    lab.send(tcp(socket.inet_ntoa(cp.daddr), cp.dport, CLI, 4100, flags="SA"))  # the real server's side
    assert cp.in_pkts == 3


def _established(lab, cport, packets):
    """An ESTABLISHED connection whose client sent ``packets`` packets (SYN, ACK, then data)."""
    lab.send(tcp(CLI, cport, VIP, 80))
    for _ in range(packets - 1):
        lab.send(tcp(CLI, cport, VIP, 80, flags="A"))
    (cp,) = [c for c in lab.conns() if c.cport == cport]
    assert cp.state == tcp_proto.ESTABLISHED and cp.in_pkts == packets
    return cp


def test_todrop_entry_drops_idle_established_entries_one_in_in_pkts():
    """todrop_entry: idle 60 s, i packets in (1..8): dropped one time in i; 9 or more: never."""
    lab = web()
    tab = lab.ipvs.conn_tab
    few = _established(lab, 4200, 2)
    many = _established(lab, 4201, 9)
    assert not tab.todrop_entry(few, lab.now)  # not idle for 60 s yet
    later = lab.now + 61 * HZ
    assert [tab.todrop_entry(few, later) for _ in range(4)] == [True, False, True, False]
    assert not any(tab.todrop_entry(many, later) for _ in range(20))


def test_random_dropentry_now_thins_idle_established_and_udp_entries():
    lab = web()
    tab = lab.ipvs.conn_tab
    for port in range(5000, 5064):
        _established(lab, port, 2 + port % 2)
    su = lab.service(VIP, 53, proto=17)
    lab.dest(su, "172.16.0.2", 53)
    for port in range(6000, 6064):
        lab.send(udp(CLI, port, VIP, 53))
    n = len(lab.conns())
    assert n == 128
    # 61 s idle: every entry qualifies for todrop_entry (UDP's 300 s and
    # ESTABLISHED's 900 s timeouts are far off).
    rng = random.Random(1)
    later = lab.now + 61 * HZ
    for _ in range(40):
        tab.random_dropentry(later, lambda k: rng.randrange(k))
    lab.tick(later + 1)  # the dropped entries expire
    left = lab.conns()
    assert tab.dropped == n - len(left) > 0
    assert sum(1 for c in left if c.protocol == 17) < 64 and sum(1 for c in left if c.protocol == 6) < 64


def test_a_one_packet_connection_counts_on_its_template():
    """ip_vs_in: for a ONE_PACKET conn the increment goes to its controlling template."""
    lab = web()
    su = lab.service(VIP, 53, proto=17, flags=IP_VS_SVC_F_ONEPACKET | IP_VS_SVC_F_PERSISTENT, timeout=300)
    lab.dest(su, "172.16.0.2", 53)
    for port in (7000, 7001, 7002):
        lab.send(udp(CLI, port, VIP, 53))
    (tpl,) = [c for c in lab.ipvs.conn_tab.all() if c.control is None and c.n_control == 0 and c.cport == 0]
    assert tpl.in_pkts == 3


# --------------------------------------------- a full table and drop_entry (ConnTable.make_room)


def test_a_full_table_makes_room_for_a_new_client_when_drop_entry_is_on():
    """At the cap, half-open flood entries are dropped at once (ip_vs_random_dropentry's pass), so a new
    client's SYN still finds a place; without it every new connection is refused until the flood's entries
    expire (60 s in SYN_RECV)."""
    lab = web(drop_entry=1)
    tab = lab.ipvs.conn_tab
    tab.max_conns = 640
    lab.tick(lab.now + 1)
    flood(lab, 640)
    assert len(tab) == 640 and lab.ipvs.dropentry is False  # memory is not short: no budget
    assert lab.send(tcp(CLI, 4100, VIP, 80)) == NF_STOLEN
    assert 4100 in [c.cport for c in lab.conns()] and len(tab) == 640 - tab.dropped + 1
    assert tab.room_passes == 1 and 0 < tab.dropped <= 20 and lab.ipvs.drops[Drop.TABLE_FULL] == 0
    # The room one pass made is used; the next pass comes a tenth of a second later, not per packet.
    verdicts = flood(lab, 40, first=20000)
    assert tab.room_passes == 1 and NF_DROP in verdicts
    lab.tick(lab.now + HZ // 10)
    assert lab.send(tcp(CLI, 4101, VIP, 80)) == NF_STOLEN
    assert tab.room_passes == 2


def test_a_full_table_refuses_when_drop_entry_is_off():
    lab = web()
    tab = lab.ipvs.conn_tab
    tab.max_conns = 64
    flood(lab, 64)
    assert lab.send(tcp(CLI, 4100, VIP, 80)) == NF_DROP
    assert (tab.room_passes, tab.dropped, lab.ipvs.drops[Drop.TABLE_FULL]) == (0, 0, 1)


def test_a_table_full_of_established_connections_refuses_and_looks_again_a_second_later():
    lab = web(drop_entry=1)
    tab = lab.ipvs.conn_tab
    tab.max_conns = 4
    for port in range(4200, 4204):
        _established(lab, port, 9)
    lab.tick(lab.now + 1)
    assert lab.send(tcp(CLI, 4300, VIP, 80)) == NF_DROP
    assert (tab.room_passes, tab.dropped) == (1, 0)
    lab.tick(lab.now + HZ // 10)
    assert lab.send(tcp(CLI, 4301, VIP, 80)) == NF_DROP
    assert tab.room_passes == 1  # nothing was freed: the next look is a second after the last
    lab.tick(lab.now + HZ)
    assert lab.send(tcp(CLI, 4302, VIP, 80)) == NF_DROP
    assert (tab.room_passes, len(tab)) == (2, 4)


def test_making_room_leaves_the_templates_to_the_timers():
    """Only the dropped connections go at once; a persistence template they leave without connections
    expires at the next run of the timers, as in the kernel, so a new connection of the same client that
    binds to it (in the same packet) never holds a template already freed."""
    lab = web()
    su = lab.service(VIP, 443, flags=IP_VS_SVC_F_PERSISTENT, timeout=300)
    lab.dest(su, "172.16.0.2", 443)
    tab = lab.ipvs.conn_tab
    tab.max_conns = 400
    lab.tick(lab.now + 1)
    for i in range(400):  # one template and one connection per client
        lab.send(tcp(f"198.51.100.{2 + i % 200}", 10000 + i, VIP, 443))
    assert (len(tab), len(tab.templates)) == (400, 200)
    templates = list(tab.templates.values())
    lab.ipvs.sysctl.drop_entry = 1
    lab.send(tcp("198.51.100.2", 30000, VIP, 443))
    assert tab.room_passes == 1 and tab.dropped > 0
    assert all(t.flags & IP_VS_CONN_F_HASHED for t in templates)  # none freed in the packet's path
    assert len(tab.templates) == 200 and len(lab.conns()) == 200 - tab.dropped + 1
    # Which connections the pass dropped is random; where one was the first
    # client's, its template now controls the new connection instead.
    new = next(c for c in lab.conns() if c.cport == 30000)
    orphans = [t for t in templates if not t.n_control]
    assert new.control is not None and new.control.n_control >= 1
    assert len(orphans) == tab.dropped - (new.control.n_control == 1)
    lab.tick(lab.now + 1)  # the templates left without connections go now
    assert len(tab.templates) == 200 - len(orphans)
    assert not any(t.flags & IP_VS_CONN_F_HASHED for t in orphans)
    assert new.control.flags & IP_VS_CONN_F_HASHED
