"""Real-server initiated SIP: the engine's ``conn_out`` (kernel 4.7+).

A real server of a ``--pe sip`` service sends a request of its own to a
client (an INVITE, a BYE): no connection matches it, so the director makes
one (``__ip_vs_rs_conn_out`` -> ``ip_vs_sip_conn_out`` ->
``ip_vs_new_conn_out``), source-NATs the datagram to VIP:5060 and keeps a
template for the client and the Call-ID that points at that server.

The service is the one of ``test_persistence_sip``: UDP 203.0.113.5:5060,
rr, persistent 300 s, NAT real servers 172.16.0.2 and .3.
"""

from __future__ import annotations

import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP, UDPerror
from scapy.layers.inet6 import IPv6

from ipvs import ctl, uapi
from ipvs.core import NF_ACCEPT, NF_DROP, NF_STOLEN
from ipvs.packet import Drop
from ipvs.pe import PersistenceEngine, register_pe, unregister_pe
from ipvs.pe.sip import SIP, get_callid
from ipvs.procfs import render
from ipvs.uapi import (
    IP_VS_CONN_F_ONE_PACKET,
    IP_VS_CONN_F_TEMPLATE,
    IP_VS_SVC_F_ONEPACKET,
    IP_VS_SVC_F_PERSISTENT,
)
from tests.conftest import HZ, A, Lab, checksums_valid, scapy_valid, tcp, udp
from tests.core.test_ipv6 import l4_ok
from tests.pe.test_persistence_sip import CLI, CLI2, RS1, RS2, VIP, invite, ipvsadm, server_of, sip_lab

VIP2 = "203.0.113.6"


def from_server(lab, rs, call_id, cport=5070, method=b"INVITE", dst=CLI, sport=5060, ttl=64):
    """A request ``rs`` starts towards ``dst:cport``: (verdict, packet after)."""
    buf = udp(rs, sport, dst, cport, payload=invite(call_id, method), ttl=ttl)
    before = bytes(buf)
    verdict = lab.send(buf)
    return verdict, buf, before


def sip_su(vip=VIP, port=5060, fwmark=0, pe_name="sip"):
    """A persistent UDP service with a persistence engine (rr, 300 s)."""
    return ctl.ServiceUser(addr=b"\0\0\0\0" if fwmark else A(vip), port=port, fwmark=fwmark, protocol=17,
                           sched_name="rr", flags=IP_VS_SVC_F_PERSISTENT, timeout=300, pe_name=pe_name)


def dest_of(lab, addr):
    return lab.rs1 if addr == RS1 else lab.rs2


# --------------------------------------------------------------------------
# The datagram, the connection, the template


@pytest.mark.parametrize("rs", [RS1, RS2])
def test_server_invite_leaves_from_the_vip_with_valid_checksums(rs):
    lab = sip_lab()
    verdict, buf, before = from_server(lab, rs, b"rs-call@srv")
    assert verdict == NF_STOLEN
    p, q = IP(bytes(buf)), IP(before)
    assert (p.src, p[UDP].sport, p.dst, p[UDP].dport) == (VIP, 5060, CLI, 5070)
    assert p.ttl == q.ttl - 1  # forwarded
    assert bytes(p[UDP].payload) == bytes(q[UDP].payload)
    assert scapy_valid(buf) and checksums_valid(buf)


@pytest.mark.parametrize("rs", [RS1, RS2])
def test_connection_and_template_are_the_kernels(rs):
    lab = sip_lab()
    from_server(lab, rs, b"rs-call@srv", cport=5070)
    [cp] = lab.conns()
    dest = dest_of(lab, rs)
    # client = the packet's destination, virtual = the service's, real = its source
    assert (cp.protocol, cp.caddr, cp.cport, cp.vaddr, cp.vport, cp.daddr, cp.dport) == (
        17, A(CLI), 5070, A(VIP), 5060, A(rs), 5060)
    # flags 0 | the dest's MASQ|INACTIVE (UDP conns stay "inactive"), hashed
    assert cp.dest is dest
    assert cp.flags == uapi.IP_VS_CONN_F_MASQ | uapi.IP_VS_CONN_F_INACTIVE | uapi.IP_VS_CONN_F_HASHED == 0x140
    assert cp.state == 0 and cp.timeout == 300 * HZ  # udp_state_transition: UDP NORMAL
    assert cp.pe is None and cp.pe_data is None
    [ct] = lab.templates()
    assert cp.control is ct and ct.n_control == 1
    assert (ct.protocol, ct.caddr, ct.cport, ct.vaddr, ct.vport, ct.daddr, ct.dport) == (
        17, A(CLI), 0, A(VIP), 5060, A(rs), 5060)
    assert ct.flags == IP_VS_CONN_F_TEMPLATE | cp.flags == 0x1140 and ct.dest is dest
    assert ct.pe is SIP and ct.pe_data == b"rs-call@srv"
    assert ct.timeout == 300 * HZ and ct.expires == lab.now + 300 * HZ
    assert ct.state == 1  # ip_vs_control_assure_ct on the OUTPUT transition
    # counters: one connection and one outgoing packet for that server only
    other = lab.rs2 if dest is lab.rs1 else lab.rs1
    assert (dest.stats.conns, dest.stats.outpkts, dest.stats.inpkts) == (1, 1, 0)
    assert dest.stats.outbytes == len(invite(b"rs-call@srv")) + 28
    assert (dest.inactconns, dest.activeconns, dest.persistconns) == (1, 0, 1)
    assert (other.stats.conns, other.inactconns, other.persistconns) == (0, 0, 0)


@pytest.mark.parametrize("rs", [RS1, RS2])
def test_the_clients_answer_reaches_that_server(rs):
    lab = sip_lab()
    from_server(lab, rs, b"rs-call@srv", cport=5070)
    ok = udp(CLI, 5070, VIP, 5060, payload=b"SIP/2.0 200 OK\r\nCall-ID: rs-call@srv\r\n\r\n")
    assert lab.send(ok) == NF_STOLEN
    p = IP(bytes(ok))
    assert (p.src, p.dst, p[UDP].dport) == (CLI, rs, 5060)
    assert scapy_valid(ok)
    assert dest_of(lab, rs).stats.inpkts == 1 and len(lab.conns()) == 1


@pytest.mark.parametrize("rs", [RS1, RS2])
def test_later_messages_of_the_call_from_the_client_go_to_that_server(rs):
    lab = sip_lab()
    from_server(lab, rs, b"rs-call@srv", cport=5070)
    [ct] = lab.templates()
    # New connections (other client ports) of the call: the template decides,
    # whatever rr would say; with rr alternating, both servers get tested.
    for sport in (5080, 5081, 5082):
        assert server_of(lab, b"rs-call@srv", sport=sport) == rs
    assert lab.templates() == [ct] and ct.n_control == 4
    # Another call of the same client is the scheduler's again: it alternates.
    picks = {server_of(lab, b"other-call", sport=s) for s in (6000,)} | {
        server_of(lab, f"c{s}".encode(), sport=s) for s in (6001, 6002)}
    assert picks == {RS1, RS2}


def test_a_template_naming_another_server_is_replaced():
    # ip_vs_check_template(ct, dest): the call now belongs to the server
    # that speaks for it.
    lab = sip_lab()
    a = server_of(lab, b"c1", sport=5080)
    b = RS1 if a == RS2 else RS2
    old = lab.templates()[0]
    assert from_server(lab, b, b"c1", cport=5080)[0] == NF_STOLEN
    assert (old.vport, old.dport, old.cport) == (0xFFFF, 0xFFFF, 0)  # invalidated
    [new] = [ct for ct in lab.templates() if ct.vport == 5060]
    assert new.dest is dest_of(lab, b) and new.pe_data == b"c1"
    assert server_of(lab, b"c1", sport=5081) == b


def test_a_template_naming_that_server_is_reused_and_refreshed():
    lab = sip_lab(timeout=100)
    a = server_of(lab, b"c1", sport=5080)
    [ct] = lab.templates()
    lab.now += 50 * HZ
    assert from_server(lab, a, b"c1", cport=5090, method=b"BYE")[0] == NF_STOLEN
    assert lab.templates() == [ct] and ct.n_control == 2
    assert ct.expires == lab.now + 100 * HZ  # ip_vs_conn_put(ct)
    assert dest_of(lab, a).persistconns == 1


def test_an_existing_connection_is_used_not_a_new_one():
    # The server's own request to a client port that already has a
    # connection to it is an ordinary response: conn_out is not asked.
    lab = sip_lab()
    a = server_of(lab, b"c1", sport=5080)
    assert from_server(lab, a, b"another-call", cport=5080)[0] == NF_STOLEN
    assert len(lab.conns()) == 1 and [ct.pe_data for ct in lab.templates()] == [b"c1"]


def test_another_server_to_a_client_port_in_use_takes_it_over():
    # Both connections are hashed; the newest heads the kernel's chain, so
    # the client's next datagram from that port reaches the newer server.
    lab = sip_lab()
    a = server_of(lab, b"c1", sport=5080)
    b = RS1 if a == RS2 else RS2
    assert from_server(lab, b, b"c9", cport=5080)[0] == NF_STOLEN
    assert sorted(c.daddr for c in lab.conns()) == sorted([A(a), A(b)])
    ok = udp(CLI, 5080, VIP, 5060, payload=b"SIP/2.0 200 OK\r\n")
    assert lab.send(ok) == NF_STOLEN and IP(bytes(ok)).dst == b


def test_one_packet_service_makes_no_lasting_connection():
    # ipvsadm -A -u VIP:5060 -p 300 -o --pe sip: the usual SIP setup.
    lab = sip_lab(flags=IP_VS_SVC_F_PERSISTENT | IP_VS_SVC_F_ONEPACKET)
    verdict, buf, _ = from_server(lab, RS2, b"ops-call")
    assert verdict == NF_STOLEN and IP(bytes(buf)).src == VIP and scapy_valid(buf)
    assert lab.conns() == []  # ip_vs_conn_put expired it at once
    [ct] = lab.templates()
    assert ct.n_control == 0 and ct.dest is lab.rs2 and ct.pe_data == b"ops-call"
    assert (lab.rs2.stats.conns, lab.rs2.inactconns, lab.rs2.refcnt) == (1, 0, 1)
    # The client's answer is scheduled as a new one-packet connection, by the template.
    for sport in (5070, 5071, 5072):
        assert server_of(lab, b"ops-call", sport=sport) == RS2
    assert lab.conns() == []
    # and nothing is left in the timer wheel to expire twice
    lab.tick(lab.now + 301 * HZ)
    assert lab.templates() == [] and lab.rs2.refcnt == 0


def test_without_persistence_a_connection_without_template():
    # No -p: ip_vs_new_conn_out makes no template and never calls
    # fill_param, so even a datagram without a Call-ID gets a connection.
    lab = sip_lab(flags=0)
    buf = udp(RS1, 5060, CLI, 5070, payload=b"no sip here")
    assert lab.send(buf) == NF_STOLEN and IP(bytes(buf)).src == VIP
    [cp] = lab.conns()
    assert cp.control is None and lab.templates() == []


def test_netmask_keys_the_template_by_client_network():
    lab = sip_lab(netmask=0xFFFFFF00)
    from_server(lab, RS2, b"c1", dst=CLI)
    [ct] = lab.templates()
    assert ct.caddr == A("198.51.100.0")
    # another client of that network, same call: the same server
    assert server_of(lab, b"c1", src=CLI2, sport=7000) == RS2


# --------------------------------------------------------------------------
# What is not handled


def test_no_effect_without_a_pe_sip_service():
    lab = Lab()
    su = lab.service(VIP, 5060, proto=17, sched="rr", flags=IP_VS_SVC_F_PERSISTENT, timeout=300)
    lab.dest(su, RS1, 5060)
    assert lab.ipvs.conn_out_counter == 0
    verdict, buf, before = from_server(lab, RS1, b"c1")
    assert verdict == NF_ACCEPT and bytes(buf) == before
    assert lab.conns() == [] and lab.templates() == []


@pytest.mark.parametrize("payload", [invite(None), b"", b"hello", invite(b"abc def"), invite(b"x" * 256)])
def test_datagram_without_usable_callid_goes_on_untouched(payload):
    # fill_param fails: ip_vs_new_conn_out returns NULL and ip_vs_out goes
    # on as without engines (no drop, no counter, no ICMP).
    lab = sip_lab()
    buf = udp(RS1, 5060, CLI, 5070, payload=payload)
    before = bytes(buf)
    assert lab.send(buf) == NF_ACCEPT and bytes(buf) == before
    assert lab.conns() == [] and lab.templates() == []
    assert lab.ipvs.outbox == [] and sum(lab.ipvs.drops.values()) == 0
    assert lab.rs1.stats.conns == 0


def test_without_callid_and_nat_icmp_send_the_server_hears_port_unreachable():
    # ... the next step of ip_vs_out: nat_icmp_send.
    lab = sip_lab()
    lab.ipvs.sysctl.set("nat_icmp_send", 1)
    assert lab.send(udp(RS1, 5060, CLI, 5070, payload=b"hello")) == NF_DROP
    [err] = lab.ipvs.outbox
    e = IP(bytes(err))
    assert e.dst == RS1 and (e[ICMP].type, e[ICMP].code) == (3, 3) and e[UDPerror].sport == 5060
    assert lab.conns() == []
    # with a Call-ID the connection is made and no error sent
    lab.ipvs.outbox.clear()
    assert from_server(lab, RS1, b"c1")[0] == NF_STOLEN and lab.ipvs.outbox == []


def test_only_udp():
    lab = sip_lab(proto=6)
    assert lab.ipvs.conn_out_counter == 1
    for flags in ("S", "SA", "A"):
        buf = tcp(RS1, 5060, CLI, 5070, flags=flags)
        before = bytes(buf)
        assert lab.send(buf) == NF_ACCEPT and bytes(buf) == before
    assert lab.conns() == []


def test_other_source_ports_and_addresses_are_not_real_servers():
    lab = sip_lab()
    for src, sport in ((RS1, 5061), (RS1, 40000), ("172.16.0.9", 5060)):
        verdict, buf, before = from_server(lab, src, b"c1", sport=sport)
        assert verdict == NF_ACCEPT and bytes(buf) == before
    assert lab.conns() == []


def test_direct_routing_servers_are_not_in_the_real_server_table():
    lab = sip_lab()
    ctl.edit_dest(lab.ipvs, lab.su, ctl.DestUser(addr=A(RS1), port=5060, conn_flags=uapi.IP_VS_CONN_F_DROUTE))
    assert from_server(lab, RS1, b"c1")[0] == NF_ACCEPT
    assert from_server(lab, RS2, b"c1")[0] == NF_STOLEN


def test_a_datagram_to_a_virtual_address_is_a_clients():
    # __ip_vs_rs_conn_out ignores LOCAL_IN: the VIPs are the director's,
    # so the server is treated as a client of the service (ip_vs_in).
    lab = sip_lab()
    verdict, buf, _ = from_server(lab, RS1, b"c1", dst=VIP, cport=5060)
    assert verdict == NF_STOLEN
    [cp] = lab.conns()
    assert cp.caddr == A(RS1) and cp.vaddr == A(VIP)


def test_ttl_running_out_makes_no_connection():
    # ip_forward answers time exceeded before the FORWARD hook.
    lab = sip_lab()
    verdict, buf, before = from_server(lab, RS1, b"c1", ttl=1)
    assert verdict == NF_ACCEPT and bytes(buf) == before
    assert lab.conns() == [] and lab.templates() == []


def test_fwmark_and_port_zero_services_make_nothing():
    # ip_vs_new_conn_out: "if (svc->fwmark) return NULL; if (!vport ...)".
    lab = Lab()
    fw = sip_su(fwmark=7)
    ctl.add_service(lab.ipvs, fw)
    lab.dest(fw, RS1, 5060)
    z = sip_su(port=0)
    ctl.add_service(lab.ipvs, z)
    lab.dest(z, RS2, 5060)
    assert lab.ipvs.conn_out_counter == 2
    assert from_server(lab, RS1, b"c1")[0] == NF_ACCEPT
    assert from_server(lab, RS2, b"c1")[0] == NF_ACCEPT
    assert lab.conns() == [] and lab.templates() == []


def two_services(sip_last: bool):
    """RS1:5060 serves a --pe sip service and a plain one; which was added last?"""
    lab = Lab()
    sip = sip_su()
    plain = ctl.ServiceUser(addr=A(VIP2), port=5060, protocol=17, sched_name="rr")
    ctl.add_service(lab.ipvs, sip)
    ctl.add_service(lab.ipvs, plain)
    order = [plain, sip] if sip_last else [sip, plain]
    dests = {id(su): lab.dest(su, RS1, 5060) for su in order}
    return lab, dests[id(sip)], dests[id(plain)]


def test_the_real_server_hashed_last_decides():
    # ip_vs_find_real_service returns the head of the hash chain: the dest
    # hashed last.  Its service's engine is the only one asked.
    lab, sip_dest, _ = two_services(sip_last=True)
    verdict, buf, _ = from_server(lab, RS1, b"c1")
    assert verdict == NF_STOLEN and IP(bytes(buf)).src == VIP
    assert lab.conns()[0].dest is sip_dest
    lab, _, plain_dest = two_services(sip_last=False)
    assert ctl.find_real_service(lab.ipvs, 2, 17, A(RS1), 5060) is plain_dest
    verdict, buf, before = from_server(lab, RS1, b"c1")
    assert verdict == NF_ACCEPT and bytes(buf) == before
    # Deleting the plain service's dest uncovers the SIP one.
    ctl.del_dest(lab.ipvs, ctl.ServiceUser(addr=A(VIP2), port=5060, protocol=17), 2, A(RS1), 5060)
    assert from_server(lab, RS1, b"c1")[0] == NF_STOLEN


def test_engine_without_conn_out_is_not_counted():
    class Plain(PersistenceEngine):
        name = "plaintest"

    pe = register_pe(Plain())
    try:
        lab = Lab()
        su = sip_su(pe_name="plaintest")
        ctl.add_service(lab.ipvs, su)
        lab.dest(su, RS1, 5060)
        assert lab.ipvs.conn_out_counter == 0
        assert from_server(lab, RS1, b"c1")[0] == NF_ACCEPT
    finally:
        unregister_pe(pe)


# --------------------------------------------------------------------------
# conn_out_counter through the control plane


def test_conn_out_counter_follows_add_edit_delete_and_flush():
    lab = Lab()
    ipvs = lab.ipvs

    def su(port, pe="sip"):
        return sip_su(port=port, pe_name=pe)

    ctl.add_service(ipvs, su(5060))
    ctl.add_service(ipvs, su(5061))
    ctl.add_service(ipvs, su(5062, pe=""))
    assert ipvs.conn_out_counter == 2
    ctl.edit_service(ipvs, su(5060))  # same engine: no change
    assert ipvs.conn_out_counter == 2
    ctl.edit_service(ipvs, su(5060, pe=""))  # engine dropped
    assert ipvs.conn_out_counter == 1
    ctl.edit_service(ipvs, su(5062))  # engine added
    assert ipvs.conn_out_counter == 2
    with pytest.raises(ctl.IPVSError) as e:
        ctl.edit_service(ipvs, su(5061, pe="nosuch"))
    assert e.value.errno == errno.ENOENT and ipvs.conn_out_counter == 2
    ctl.del_service(ipvs, su(5061))
    assert ipvs.conn_out_counter == 1
    ctl.add_service(ipvs, su(5063))
    ctl.flush(ipvs)
    assert ipvs.conn_out_counter == 0
    assert ipvs.rs_table == {}


def test_rs_table_chains_follow_dests():
    lab = sip_lab()
    assert lab.ipvs.rs_table == {(2, A(RS1), 5060): [lab.rs1], (2, A(RS2), 5060): [lab.rs2]}
    ctl.del_dest(lab.ipvs, lab.su, 2, A(RS1), 5060)
    assert list(lab.ipvs.rs_table) == [(2, A(RS2), 5060)]
    assert ctl.find_real_service(lab.ipvs, 2, 17, A(RS1), 5060) is None
    lab.dest(lab.su, RS1, 5060)  # revived from the trash: hashed again
    assert ctl.find_real_service(lab.ipvs, 2, 17, A(RS1), 5060) is lab.rs1
    assert ctl.find_real_service(lab.ipvs, 2, 6, A(RS1), 5060) is None  # other protocol


# --------------------------------------------------------------------------
# Listings


def test_ipvsadm_lnc_shows_the_connection_and_the_assured_template():
    lab = sip_lab()
    from_server(lab, RS2, b"rs-call@srv", cport=5070)
    lines = ipvsadm(lab, "-Lnc", "--persistent-conn").splitlines()
    assert sorted(lines[2:]) == sorted([
        f"UDP 05:00  UDP         {CLI + ':5070':<18} {VIP + ':5060':<18} {RS2}:5060",
        f"UDP 05:00  ASSURED     {CLI + ':0':<18} {VIP + ':5060':<18} {RS2 + ':5060':<16} {'sip':<18} rs-call@srv",
    ])
    text = render(lab.ipvs, "ip_vs_conn", lab.now).splitlines()
    assert sorted(text[1:]) == sorted([
        "UDP C6336402 13CE CB007105 13C4 AC100003 13C4 UDP             300",
        "UDP C6336402 0000 CB007105 13C4 AC100003 13C4 ASSURED         300 sip rs-call@srv",
    ])


def test_trace_names_the_server_initiated_connection():
    lab = sip_lab()
    lines = []
    lab.d.trace = lines.append
    from_server(lab, RS1, b"c1", cport=5070)
    assert any(s.startswith("conn_out ") and f"UDP {CLI}:5070 -> {VIP}:5060 => {RS1}:5060" in s for s in lines)
    assert lab.ipvs.drops[Drop.NO_PE_DATA] == 0


# --------------------------------------------------------------------------
# Properties


payloads = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda a, cid, b: a + b"\r\nCall-ID: " + cid + b"\r\n" + b,
              st.binary(max_size=40),
              st.one_of(st.binary(min_size=1, max_size=40), st.from_regex(rb"[A-Za-z0-9.\-]{1,20}(@[a-z.]{1,9})?",
                                                                           fullmatch=True)),
              st.binary(max_size=40)),
)


@given(st.lists(st.tuples(st.sampled_from([RS1, RS2]), payloads, st.integers(1024, 1030)), min_size=1, max_size=8))
def test_random_payloads_from_a_server_never_raise(sends):
    lab = sip_lab()
    for rs, payload, cport in sends:
        buf = udp(rs, 5060, CLI, cport, payload=payload)
        before = bytes(buf)
        had_conn = any(c.cport == cport and c.daddr == A(rs) for c in lab.conns())
        verdict = lab.send(buf)
        found = get_callid(payload)
        if verdict == NF_ACCEPT:
            # Only a datagram no connection wants, without a usable Call-ID.
            assert found is None and not had_conn and bytes(buf) == before
            continue
        assert verdict == NF_STOLEN
        assert IP(bytes(buf)).src == VIP and scapy_valid(buf)
        if not had_conn:
            off, n = found
            cid = payload[off : off + n]
            live = [ct for ct in lab.templates() if ct.vport == 5060 and ct.pe_data == cid]
            assert [ct.dest.addr for ct in live] == [A(rs)]
    # Every connection is controlled by a template (invalidated ones included).
    tmpls = [c for c in lab.ipvs.conn_tab.all() if c.flags & IP_VS_CONN_F_TEMPLATE]
    assert sum(ct.n_control for ct in tmpls) == len(lab.conns())
    assert all(ct.flags & IP_VS_CONN_F_TEMPLATE and not ct.flags & IP_VS_CONN_F_ONE_PACKET for ct in tmpls)


# --------------------------------------------------------------------------
# IPv6: ip_vs_out_hook takes the conn_out branch for either family

VIP6, CLI6, CLI6B = "2001:db8:0:5::5", "2001:db8:0:1::2", "2001:db8:0:1::99"
RS6_1, RS6_2 = "2001:db8:0:2::2", "2001:db8:0:2::3"


def sip6_lab(netmask=128, flags=IP_VS_SVC_F_PERSISTENT):
    lab = Lab()
    su = ctl.ServiceUser(af=uapi.AF_INET6, addr=A(VIP6), port=5060, protocol=17, sched_name="rr", flags=flags,
                         timeout=300, netmask=netmask, pe_name="sip")
    ctl.add_service(lab.ipvs, su)
    lab.su = su
    lab.rs1 = lab.dest(su, RS6_1, 5060)
    lab.rs2 = lab.dest(su, RS6_2, 5060)
    return lab


def udp6(src, sport, dst, dport, payload, hlim=64) -> bytearray:
    return bytearray(bytes(IPv6(src=src, dst=dst, hlim=hlim) / UDP(sport=sport, dport=dport) / payload))


@pytest.mark.parametrize("rs", [RS6_1, RS6_2])
def test_ipv6_server_invite_leaves_from_the_vip_and_the_clients_answer_reaches_it(rs):
    lab = sip6_lab()
    buf = udp6(rs, 5060, CLI6, 5070, invite(b"v6-call@srv"))
    assert lab.send(buf) == NF_STOLEN
    p = IPv6(bytes(buf))
    assert (p.src, p[UDP].sport, p.dst, p[UDP].dport, p.hlim) == (VIP6, 5060, CLI6, 5070, 63)
    assert l4_ok(buf)
    [cp] = lab.conns()
    dest = lab.rs1 if rs == RS6_1 else lab.rs2
    assert (cp.af, cp.caddr, cp.cport, cp.vaddr, cp.vport, cp.daddr, cp.dport) == (
        uapi.AF_INET6, A(CLI6), 5070, A(VIP6), 5060, A(rs), 5060)
    assert cp.dest is dest and cp.flags == 0x140
    [ct] = lab.templates()
    assert cp.control is ct and ct.af == uapi.AF_INET6 and ct.caddr == A(CLI6) and ct.pe_data == b"v6-call@srv"
    assert (dest.stats.conns, dest.stats.outpkts, dest.persistconns) == (1, 1, 1)
    ok = udp6(CLI6, 5070, VIP6, 5060, b"SIP/2.0 200 OK\r\nCall-ID: v6-call@srv\r\n\r\n")
    assert lab.send(ok) == NF_STOLEN
    assert (IPv6(bytes(ok)).dst, IPv6(bytes(ok))[UDP].dport) == (rs, 5060) and l4_ok(ok)
    # another connection of the call from the client: the template's server
    again = udp6(CLI6, 5071, VIP6, 5060, invite(b"v6-call@srv"))
    assert lab.send(again) == NF_STOLEN and IPv6(bytes(again)).dst == rs


def test_ipv6_template_is_keyed_by_the_clients_prefix():
    lab = sip6_lab(netmask=64)
    assert lab.send(udp6(RS6_2, 5060, CLI6, 5070, invite(b"c1"))) == NF_STOLEN
    [ct] = lab.templates()
    assert ct.caddr == A("2001:db8:0:1::")
    for sport in (7000, 7001):  # rr would alternate; the template holds
        buf = udp6(CLI6B, sport, VIP6, 5060, invite(b"c1"))
        assert lab.send(buf) == NF_STOLEN and IPv6(bytes(buf)).dst == RS6_2


def test_ipv6_what_makes_no_connection():
    """Hop limit 1 (ip6_forward answers first), a datagram to the VIP (a
    client's), one without a Call-ID, another port, an IPv4 datagram from
    the same server's IPv4 twin: none is a server-started connection."""
    lab = sip6_lab()
    for buf in (udp6(RS6_1, 5060, CLI6, 5070, invite(b"c1"), hlim=1),
                udp6(RS6_1, 5060, CLI6, 5070, b"hello"),
                udp6(RS6_1, 5061, CLI6, 5070, invite(b"c1")),
                udp(RS1, 5060, CLI, 5070, payload=invite(b"c1"))):
        before = bytes(buf)
        assert lab.send(buf) == NF_ACCEPT and bytes(buf) == before
    assert lab.conns() == [] and lab.templates() == []
    buf = udp6(RS6_1, 5060, VIP6, 5060, invite(b"c1"))
    assert lab.send(buf) == NF_STOLEN
    [cp] = lab.conns()
    assert cp.caddr == A(RS6_1)  # scheduled as a client of the service


def test_ipv6_one_packet_service_and_the_listing():
    lab = sip6_lab(flags=IP_VS_SVC_F_PERSISTENT | IP_VS_SVC_F_ONEPACKET)
    assert lab.send(udp6(RS6_1, 5060, CLI6, 5070, invite(b"ops"))) == NF_STOLEN
    assert lab.conns() == []
    [ct] = lab.templates()
    assert ct.dest is lab.rs1 and ct.n_control == 0
    lab = sip6_lab()
    lab.send(udp6(RS6_2, 5060, CLI6, 5070, invite(b"c6")))
    lines = ipvsadm(lab, "-Lnc", "--persistent-conn").splitlines()
    assert sorted(lines[2:]) == sorted([
        f"UDP 05:00  UDP         [{CLI6}]:5070 [{VIP6}]:5060 [{RS6_2}]:5060",
        f"UDP 05:00  ASSURED     [{CLI6}]:0 [{VIP6}]:5060 [{RS6_2}]:5060 {'sip':<18} c6",
    ])
