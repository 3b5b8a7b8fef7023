"""Firewall-mark services through the core, with the mark rule table.

The kernel's semantics (ip_vs_service_find, ip_vs_sched_persist): a marked
packet finds the fwmark service before any (proto, addr, port) service;
connections keep the packet's own addresses and ports; a persistent fwmark
service has one template per (client network, mark), protocol IP with the
mark as its virtual address, so every port and VIP marked alike sticks to
one real server.
"""

import io

from ipvs import ctl, uapi
from ipvs.cli.ipvs_mark import main as ipvs_mark
from ipvs.cli.ipvsadm import main as ipvsadm
from ipvs.core import NF_ACCEPT, NF_STOLEN, Director
from ipvs.fwmark import MarkRule
from ipvs.netlink import LocalTransport
from tests.conftest import A, checksums_valid, tcp, udp

MASQ = uapi.IP_VS_CONN_F_MASQ
CLI = "198.51.100.2"


def director(persistent=False, sched="rr"):
    d = Director()
    su = ctl.ServiceUser(fwmark=1, sched_name=sched,
                         flags=uapi.IP_VS_SVC_F_PERSISTENT if persistent else 0, timeout=300 if persistent else 0)
    ctl.add_service(d.ipvs, su)
    for rs in ("172.16.0.2", "172.16.0.3"):
        ctl.add_dest(d.ipvs, su, ctl.DestUser(addr=A(rs), port=0, conn_flags=MASQ))
    d.ipvs.marks.add(MarkRule(1, daddr="203.0.113.16/29"))
    return d


def test_marked_packets_reach_the_fwmark_service_with_their_own_ports():
    d = director()
    seen = []
    for i, vip in enumerate(("203.0.113.16", "203.0.113.20", "203.0.113.23")):
        buf = tcp(CLI, 40000 + i, vip, 8080 + i, flags="S")
        assert d.process(buf, 0, 1000) == NF_STOLEN and checksums_valid(buf)
        seen.append((buf[16:20], int.from_bytes(buf[22:24], "big")))
    # rr over the two servers (newest first); the port is the packet's.
    assert seen == [(A("172.16.0.3"), 8080), (A("172.16.0.2"), 8081), (A("172.16.0.3"), 8082)]
    cps = d.ipvs.conn_tab.all()
    assert {cp.fwmark for cp in cps} == {1}
    assert {cp.vaddr for cp in cps} == {A("203.0.113.16"), A("203.0.113.20"), A("203.0.113.23")}
    # Outside the marked prefix: no service, passed on untouched.
    buf = tcp(CLI, 41000, "203.0.113.24", 80, flags="S")
    before = bytes(buf)
    assert d.process(buf, 0, 1000) == NF_ACCEPT and bytes(buf) == before


def test_mark_wins_over_an_address_service():
    d = director()
    su = ctl.ServiceUser(addr=A("203.0.113.16"), port=80, sched_name="rr")
    ctl.add_service(d.ipvs, su)
    ctl.add_dest(d.ipvs, su, ctl.DestUser(addr=A("172.16.0.9"), port=80, conn_flags=MASQ))
    buf = tcp(CLI, 40000, "203.0.113.16", 80, flags="S")
    assert d.process(buf, 0, 1000) == NF_STOLEN
    assert buf[16:20] in (A("172.16.0.2"), A("172.16.0.3"))
    d.ipvs.marks.flush()  # no mark any more: the address service answers
    buf = tcp(CLI, 40001, "203.0.113.16", 80, flags="S")
    assert d.process(buf, 0, 1000) == NF_STOLEN and buf[16:20] == A("172.16.0.9")


def test_persistent_fwmark_sticks_across_ports_protocols_and_vips():
    d = director(persistent=True)
    first = tcp(CLI, 40000, "203.0.113.16", 80, flags="S")
    d.process(first, 0, 1000)
    server = first[16:20]
    for i, pkt in enumerate([tcp(CLI, 40001, "203.0.113.17", 443, flags="S"),
                             udp(CLI, 40002, "203.0.113.22", 53),
                             tcp(CLI, 40003, "203.0.113.16", 80, flags="S")]):
        assert d.process(pkt, 0, 1000 + i) == NF_STOLEN
        assert pkt[16:20] == server
    [tmpl] = [cp for cp in d.ipvs.conn_tab.all() if cp.flags & uapi.IP_VS_CONN_F_TEMPLATE]
    assert (tmpl.protocol, tmpl.vaddr, tmpl.vport, tmpl.cport) == (uapi.IPPROTO_IP, (1).to_bytes(4, "big"), 0, 0)
    out = io.StringIO()
    assert ipvsadm(["-Lnc"], LocalTransport(d.ipvs, clock=lambda: 1003), stdout=out) == 0
    assert any(line.startswith("IP ") and " 0.0.0.1:0 " in line for line in out.getvalue().splitlines())


def test_ipvs_mark_tool_through_the_schema():
    d = Director()
    t = LocalTransport(d.ipvs)
    out, err = io.StringIO(), io.StringIO()
    assert ipvs_mark(["-A", "-p", "tcp", "-d", "203.0.113.16/29", "--dport", "80:81", "--set-mark", "7"], t,
                     stdout=out, stderr=err) == 0, err.getvalue()
    assert ipvs_mark(["-A", "-d", "203.0.113.99", "--set-mark", "0x10"], t, stdout=out, stderr=err) == 0
    assert len(d.ipvs.marks) == 2
    out = io.StringIO()
    assert ipvs_mark(["-S"], t, stdout=out) == 0
    assert out.getvalue() == ("-A -p tcp -d 203.0.113.16/29 --dport 80:81 --set-mark 7\n"
                              "-A -d 203.0.113.99/32 --set-mark 16\n")
    # -R restores what -S printed, into another director.
    d2 = Director()
    assert ipvs_mark(["-R"], LocalTransport(d2.ipvs), stdin=io.StringIO(out.getvalue()), stderr=err) == 0
    assert d2.ipvs.marks.rules == d.ipvs.marks.rules
    # Errors: a duplicate is refused by the director (255), nonsense by the parser (2).
    err = io.StringIO()
    assert ipvs_mark(["-A", "-d", "203.0.113.99", "--set-mark", "16"], t, stderr=err) == 255
    assert "exists" in err.getvalue()
    assert ipvs_mark(["-A", "-d", "203.0.113.99"], t, stderr=io.StringIO()) == 2
    assert ipvs_mark(["-A", "-d", "nonsense", "--set-mark", "1"], t, stderr=io.StringIO()) == 2
    assert ipvs_mark(["-D", "-d", "203.0.113.99", "--set-mark", "16"], t) == 0
    assert ipvs_mark(["-F"], t) == 0 and len(d.ipvs.marks) == 0
