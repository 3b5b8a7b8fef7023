"""``--pe sip`` through the packet path (``Director.process``), the
control plane and the listings.

The service is the classic SIP one: UDP 203.0.113.5:5060, rr, persistent
300 s, two NAT real servers.  rr alternates, so a new template goes to
the other server each time: stickiness shows as "not alternating".
"""

from __future__ import annotations

import errno
import io

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP

from ipvs import ctl
from ipvs.cli.ipvsadm import main
from ipvs.core import NF_DROP, NF_STOLEN
from ipvs.netlink import LocalTransport
from ipvs.packet import Drop
from ipvs.pe.sip import SIP
from ipvs.procfs import render
from ipvs.uapi import IP_VS_CONN_F_TEMPLATE, IP_VS_SVC_F_PERSISTENT
from tests.conftest import HZ, A, Lab, scapy_valid, tcp, udp

VIP = "203.0.113.5"
CLI, CLI2 = "198.51.100.2", "198.51.100.3"
RS1, RS2 = "172.16.0.2", "172.16.0.3"


def sip_lab(timeout=300, netmask=0xFFFFFFFF, proto=17, flags=IP_VS_SVC_F_PERSISTENT, pe="sip", port=5060):
    lab = Lab()
    lab.su = ctl.ServiceUser(addr=A(VIP), port=port, protocol=proto, sched_name="rr", flags=flags,
                             timeout=timeout, netmask=netmask, pe_name=pe)
    ctl.add_service(lab.ipvs, lab.su)
    lab.rs1 = lab.dest(lab.su, RS1, port)
    lab.rs2 = lab.dest(lab.su, RS2, port)
    return lab


def invite(call_id: bytes | None, method=b"INVITE") -> bytes:
    head = method + b" sip:bob@biloxi.example.com SIP/2.0\r\nVia: SIP/2.0/UDP pc33.atlanta.example.com\r\n"
    cid = b"Call-ID: " + call_id + b"\r\n" if call_id is not None else b""
    return head + b"Max-Forwards: 70\r\n" + cid + b"CSeq: 314159 " + method + b"\r\nContent-Length: 0\r\n\r\n"


def send_sip(lab, call_id, src=CLI, sport=5060, now=None):
    buf = udp(src, sport, VIP, 5060, payload=invite(call_id))
    verdict = lab.send(buf, now)
    return verdict, IP(bytes(buf))


def server_of(lab, call_id, src=CLI, sport=5060, now=None):
    verdict, p = send_sip(lab, call_id, src, sport, now)
    assert verdict == NF_STOLEN
    assert scapy_valid(p)
    return p.dst


def test_one_call_sticks_two_calls_may_spread():
    lab = sip_lab()
    a = server_of(lab, b"call-a@pc33", sport=5060)
    # A new connection (another source port) of the same call: same server,
    # although rr would now pick the other one.
    assert server_of(lab, b"call-a@pc33", sport=5062) == a
    assert server_of(lab, b"call-a@pc33", sport=5064) == a
    # Another call from the same client gets a template of its own: rr moves on.
    b = server_of(lab, b"call-b@pc33", sport=5066)
    assert b != a
    assert server_of(lab, b"call-b@pc33", sport=5068) == b
    assert server_of(lab, b"call-a@pc33", sport=5070) == a
    tmpls = lab.templates()
    assert sorted(ct.pe_data for ct in tmpls) == [b"call-a@pc33", b"call-b@pc33"]
    for ct in tmpls:
        assert ct.pe is SIP
        assert (ct.caddr, ct.cport, ct.vaddr, ct.vport, ct.protocol) == (A(CLI), 0, A(VIP), 5060, 17)
        assert ct.flags & IP_VS_CONN_F_TEMPLATE
        assert ct.timeout == 300 * HZ
    by_call = {ct.pe_data: ct for ct in tmpls}
    assert by_call[b"call-a@pc33"].n_control == 4 and by_call[b"call-b@pc33"].n_control == 2
    # Connections carry no pe_data: only templates do (ip_vs_conn_new).
    assert all(cp.pe_data is None and cp.pe is None for cp in lab.conns())
    d = lab.rs1 if a == RS1 else lab.rs2
    assert d.persistconns == 1 and d.inactconns == 4


def test_same_call_from_two_clients_makes_two_templates():
    lab = sip_lab()
    a = server_of(lab, b"shared", src=CLI)
    b = server_of(lab, b"shared", src=CLI2)
    assert a != b  # ct_match compares the client address too
    assert sorted(ct.caddr for ct in lab.templates()) == [A(CLI), A(CLI2)]


def test_netmask_groups_clients_of_one_call():
    lab = sip_lab(netmask=0xFFFFFF00)
    a = server_of(lab, b"c1", src=CLI)
    assert server_of(lab, b"c1", src=CLI2) == a
    [ct] = lab.templates()
    assert ct.caddr == A("198.51.100.0")


def test_existing_connection_needs_no_callid():
    # Only scheduling reads the Call-ID: later datagrams of a connection
    # (an ACK without headers, say) follow the connection.
    lab = sip_lab()
    a = server_of(lab, b"c1", sport=5060)
    buf = udp(CLI, 5060, VIP, 5060, payload=b"\r\n\r\n")  # a keep-alive
    assert lab.send(buf) == NF_STOLEN
    assert IP(bytes(buf)).dst == a


def test_new_datagram_without_callid_is_dropped_without_icmp():
    lab = sip_lab()
    for payload in [invite(None), b"hello", b"", invite(b"abc def")]:
        buf = udp(CLI, 6000, VIP, 5060, payload=payload)
        assert lab.send(buf) == NF_DROP
    # ignored = -1 in ip_vs_sched_persist: NF_DROP, no ip_vs_leave (no ICMP)
    assert lab.ipvs.outbox == []
    assert lab.ipvs.drops[Drop.NO_PE_DATA] == 4
    assert lab.ipvs.drops[Drop.NO_DEST] == 0
    assert lab.conns() == [] and lab.templates() == []
    assert (lab.rs1.stats.conns, lab.rs2.stats.conns) == (0, 0)


def test_tcp_persistent_service_with_sip_drops_every_new_connection():
    # The engine handles UDP only: its fill_param fails for a TCP SYN.
    lab = sip_lab(proto=6)
    assert lab.send(tcp(CLI, 1000, VIP, 5060, flags="S")) == NF_DROP
    assert lab.ipvs.drops[Drop.NO_PE_DATA] == 1 and lab.conns() == []


def test_engine_is_unused_without_persistence():
    # ipvsadm -A -u VIP:5060 -s rr --pe sip (no -p): the engine is set but
    # only ip_vs_sched_persist consults it.
    lab = sip_lab(flags=0)
    assert server_of(lab, None, sport=1) != server_of(lab, None, sport=2)
    assert lab.templates() == []


def test_no_dest_sends_port_unreachable():
    lab = sip_lab()
    ctl.del_dest(lab.ipvs, lab.su, 2, A(RS1), 5060)
    ctl.del_dest(lab.ipvs, lab.su, 2, A(RS2), 5060)
    verdict, _ = send_sip(lab, b"c1")
    assert verdict == NF_DROP
    assert lab.ipvs.drops[Drop.NO_DEST] == 1 and len(lab.ipvs.outbox) == 1


def test_template_expires_then_the_call_is_scheduled_anew():
    lab = sip_lab(timeout=10)
    a = server_of(lab, b"c1")
    [ct] = lab.templates()
    lab.tick(lab.now + 11 * HZ)  # the UDP conn (300 s) still controls it: re-armed for 60 s
    assert lab.templates() == [ct]
    lab.tick(lab.now + 290 * HZ)
    assert lab.templates() == [ct] and lab.conns() == []
    lab.tick(lab.now + 60 * HZ)
    assert lab.templates() == []
    assert (lab.rs1.persistconns, lab.rs2.persistconns) == (0, 0)
    # rr continues from where it stopped: the new template goes elsewhere.
    assert server_of(lab, b"c1") != a


def test_deleted_dest_invalidates_the_calls_template():
    lab = sip_lab()
    a = server_of(lab, b"c1")
    gone = lab.rs1 if a == RS1 else lab.rs2
    ctl.del_dest(lab.ipvs, lab.su, 2, gone.addr, 5060)
    b = server_of(lab, b"c1", sport=5061)
    assert b != a
    # The invalidated template stays (unmatched) until its timer: every template.
    tmpls = [c for c in lab.ipvs.conn_tab.all() if c.flags & IP_VS_CONN_F_TEMPLATE]
    assert sorted(ct.vport for ct in tmpls) == [5060, 0xFFFF]
    live = [ct for ct in tmpls if ct.vport == 5060]
    assert [ct.pe_data for ct in live] == [b"c1"]
    # The live one is found again, the invalidated one stays out of the way.
    assert server_of(lab, b"c1", sport=5062) == b


def test_plain_and_sip_templates_do_not_mix():
    lab = sip_lab()
    a = server_of(lab, b"c1")
    # Edit the service without --pe: the engine goes (as in the kernel);
    # the SIP template is not found by the plain lookup.
    su = ctl.ServiceUser(addr=A(VIP), port=5060, protocol=17, sched_name="rr", flags=IP_VS_SVC_F_PERSISTENT,
                         timeout=300)
    ctl.edit_service(lab.ipvs, su)
    b = server_of(lab, b"c1", sport=5061)
    assert b != a
    plain = [ct for ct in lab.templates() if ct.pe is None]
    assert len(plain) == 1 and plain[0].pe_data is None
    # Without an engine every call of the client now sticks to b.
    assert server_of(lab, b"c2", sport=5062) == b
    # Back to --pe sip: the Call-ID finds its old template again.
    ctl.edit_service(lab.ipvs, lab.su)
    assert server_of(lab, b"c1", sport=5063) == a


def test_fwmark_service_with_sip():
    lab = Lab()
    su = ctl.ServiceUser(fwmark=7, protocol=17, addr=b"\0\0\0\0", sched_name="rr",
                         flags=IP_VS_SVC_F_PERSISTENT, timeout=300, pe_name="sip")
    svc = ctl.add_service(lab.ipvs, su)
    lab.dest(su, RS1, 5060)
    lab.dest(su, RS2, 5060)
    # The fwmark template: <IPPROTO_IP, caddr, 0, fwmark, 0>, with the Call-ID.
    c = lab.d._sched_persist
    from ipvs.packet import parse
    from ipvs.sched import IPHdr

    buf = udp(CLI, 5060, VIP, 5060, payload=invite(b"fw1"))
    iph = IPHdr(2, 17, A(CLI), A(VIP), 5060, 5060)
    cp1, ign = c(svc, iph, lab.now, buf, parse(buf, 0))
    cp2, _ = c(svc, attrs.evolve(iph, sport=5061), lab.now, buf, parse(buf, 0))
    assert ign == 0 and cp1.daddr == cp2.daddr
    [ct] = lab.templates()
    assert (ct.protocol, ct.vaddr, ct.vport, ct.pe_data) == (0, (7).to_bytes(4, "big"), 0, b"fw1")


# --------------------------------------------------------------------------
# Control plane


def test_unknown_engine_is_enoent_and_sip_is_accepted():
    lab = Lab()
    su = ctl.ServiceUser(addr=A(VIP), port=5060, protocol=17, sched_name="rr", pe_name="nosuch")
    with pytest.raises(ctl.IPVSError) as e:
        ctl.add_service(lab.ipvs, su)
    assert e.value.errno == errno.ENOENT
    su.pe_name = "sip"
    svc = ctl.add_service(lab.ipvs, su)
    assert svc.pe_name == "sip"
    su.pe_name = "__init__"
    with pytest.raises(ctl.IPVSError) as e:
        ctl.edit_service(lab.ipvs, su)
    assert e.value.errno == errno.ENOENT
    assert svc.pe_name == "sip"  # a failed edit changes nothing


# --------------------------------------------------------------------------
# Listings: /proc/net/ip_vs_conn, ipvsadm -Lnc --persistent-conn, -Ln, -S


def ipvsadm(lab, *argv):
    out, err = io.StringIO(), io.StringIO()
    t = LocalTransport(lab.ipvs, clock=lambda: lab.now)
    rc = main(list(argv), transport=t, stdout=out, stderr=err, stdin=io.StringIO(""))
    assert (rc, err.getvalue()) == (0, "")
    return out.getvalue()


def test_proc_ip_vs_conn_shows_engine_and_callid_on_templates_only():
    lab = sip_lab()
    a = server_of(lab, b"a84b4c76e66710@pc33.atlanta.example.com")
    text = render(lab.ipvs, "ip_vs_conn", lab.now)
    lines = text.splitlines()
    assert lines[0] == "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData"
    dhex = "".join(f"{int(x):02X}" for x in a.split("."))
    assert sorted(lines[1:]) == sorted([
        f"UDP C6336402 0000 CB007105 13C4 {dhex} 13C4 NONE            300 sip "
        "a84b4c76e66710@pc33.atlanta.example.com",
        f"UDP C6336402 13C4 CB007105 13C4 {dhex} 13C4 UDP             300",
    ])
    # the sync view has no engine columns
    assert "sip" not in render(lab.ipvs, "ip_vs_conn_sync", lab.now)


def test_ipvsadm_lnc_persistent_conn():
    lab = sip_lab()
    a = server_of(lab, b"c1@host")
    out = ipvsadm(lab, "-Lnc", "--persistent-conn")
    lines = out.splitlines()
    assert lines[:2] == [
        "IPVS connection entries",
        "pro expire state       source             virtual            destination        pe name          pe_data",
    ]
    assert sorted(lines[2:]) == sorted([
        f"UDP 05:00  NONE        {CLI + ':0':<18} {VIP + ':5060':<18} {a + ':5060':<16} {'sip':<18} c1@host",
        f"UDP 05:00  UDP         {CLI + ':5060':<18} {VIP + ':5060':<18} {a}:5060",
    ])
    # Without --persistent-conn the engine columns are not shown.
    assert "c1@host" not in ipvsadm(lab, "-Lnc")


def test_ipvsadm_ln_and_save_show_the_engine():
    lab = sip_lab()
    ln = ipvsadm(lab, "-Ln")
    assert f"UDP  {VIP}:5060 rr persistent 300 pe sip\n" in ln
    assert f"-A -u {VIP}:5060 -s rr -p 300 --pe sip\n" in ipvsadm(lab, "-S", "-n")
    # Without -p ipvsadm's -Ln prints no "pe" (it sits in the persistent
    # branch), -S still saves it.
    lab2 = sip_lab(flags=0)
    assert f"UDP  {VIP}:5060 rr\n" in ipvsadm(lab2, "-Ln")
    assert f"-A -u {VIP}:5060 -s rr --pe sip\n" in ipvsadm(lab2, "-S", "-n")


def test_restore_with_pe_through_ipvsadm():
    lab = Lab()
    t = LocalTransport(lab.ipvs)
    out, err = io.StringIO(), io.StringIO()
    rules = f"-A -u {VIP}:5060 -s rr -p 60 --pe sip\n-a -u {VIP}:5060 -r {RS1}:5060 -m\n"
    assert main(["-R"], transport=t, stdout=out, stderr=err, stdin=io.StringIO(rules)) == 0
    assert err.getvalue() == ""
    assert server_of(lab, b"x") == RS1
    out, err = io.StringIO(), io.StringIO()
    rc = main(["-A", "-u", f"{VIP}:5061", "--pe", "nosuch"], transport=t, stdout=out, stderr=err,
              stdin=io.StringIO(""))
    assert rc != 0 and "persistence engine not found" in err.getvalue()


def test_reply_from_the_server_is_natted_back():
    lab = sip_lab()
    a = server_of(lab, b"c1", sport=5080)
    reply = udp(a, 5060, CLI, 5080, payload=b"SIP/2.0 200 OK\r\nCall-ID: c1\r\n\r\n")
    assert lab.send(reply) == NF_STOLEN
    p = IP(bytes(reply))
    assert (p.src, p[UDP].sport) == (VIP, 5060)


def test_server_initiated_datagram_gets_a_connection_of_its_own():
    # No connection matches a request the server starts towards another
    # client port: conn_out makes one (tests/pe/test_sip_conn_out.py).
    lab = sip_lab()
    a = server_of(lab, b"c1", sport=5080)
    bye = udp(a, 5060, CLI, 5999, payload=invite(b"c1", b"BYE"))
    assert lab.send(bye) == NF_STOLEN
    p = IP(bytes(bye))
    assert (p.src, p[UDP].sport, p.dst, p[UDP].dport) == (VIP, 5060, CLI, 5999)
    [ct] = lab.templates()
    assert ct.n_control == 2


@given(st.lists(st.tuples(st.sampled_from([CLI, CLI2, "198.51.100.4"]), st.sampled_from([b"c1", b"c2", b"c3@h"]),
                          st.integers(1024, 1100)), min_size=1, max_size=25))
def test_each_call_of_each_client_has_one_server(sends):
    # A datagram of an existing connection follows it whatever its Call-ID;
    # a new connection follows its (client, Call-ID) template if there is one.
    lab = sip_lab()
    calls, conns = {}, {}
    for src, cid, sport in sends:
        verdict, p = send_sip(lab, cid, src=src, sport=sport)
        assert verdict == NF_STOLEN
        if (src, sport) in conns:
            assert p.dst == conns[(src, sport)]
            continue
        conns[(src, sport)] = p.dst
        assert calls.setdefault((src, cid), p.dst) == p.dst
    tmpls = lab.templates()
    assert sorted((ct.caddr, ct.pe_data) for ct in tmpls) == sorted((A(s), c) for s, c in calls)
    assert sum(ct.n_control for ct in tmpls) == len(lab.conns())
