"""ipvs/core.py through Director.process: TCP state sequences, UDP, ICMP
errors both ways, ip_vs_leave, TTL, untouched non-IPVS packets, deleted
destinations, one-packet scheduling, counters and the defence settings.

Expected states come from the kernel tables (digest section 4.3), expected
rewrites from the NAT rules (digest section 3), and checksums are checked
with scapy and an independent word loop.
"""

import logging

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
from scapy.layers.inet6 import IPv6

from ipvs import ctl, sched
from ipvs.core import NF_ACCEPT, NF_DROP, NF_STOLEN
from ipvs.packet import Drop
from ipvs.uapi import IP_VS_SVC_F_ONEPACKET, IP_VS_SVC_F_PERSISTENT
from tests.conftest import (
    HZ,
    A,
    Lab,
    checksums_valid,
    estimator_period,
    icmp_error,
    inet_csum,
    quoted_ip_valid,
    scapy_valid,
    tcp,
    udp,
)

VIP = "203.0.113.5"
CLI = "198.51.100.2"
RS1, RS2 = "172.16.0.2", "172.16.0.3"


def web(**sysctls):
    """VIP:80 (rr) over RS1:80 and RS2:8080, MASQ."""
    lab = Lab(**sysctls)
    lab.su = lab.service(VIP, 80, sched="rr")
    lab.rs1 = lab.dest(lab.su, RS1, 80)
    lab.rs2 = lab.dest(lab.su, RS2, 8080)
    lab.svc = ctl.service_find(lab.ipvs, 2, 6, A(VIP), 80)
    return lab


def one(lab):
    """The single connection in the table."""
    [cp] = lab.conns()
    return cp


def state(lab, cp=None):
    cp = cp or one(lab)
    return lab.tcp_states[cp.state]


def c2v(lab, flags, cport=3456, payload=b"", ttl=64):
    """Client -> VIP packet; returns (verdict, packet after processing)."""
    buf = tcp(CLI, cport, VIP, 80, flags=flags, payload=payload, ttl=ttl)
    return lab.send(buf), buf


def r2c(lab, cp, flags, payload=b""):
    """Real server -> client reply of ``cp``."""
    buf = tcp(ip(cp.daddr), cp.dport, CLI, cp.cport, flags=flags, payload=payload)
    return lab.send(buf), buf


def ip(b: bytes) -> str:
    return ".".join(map(str, b))


def counters(dest):
    return dest.activeconns, dest.inactconns


# --------------------------------------------------------------- TCP states


def test_syn_creates_syn_recv_active_and_rewrites():
    lab = web()
    v, buf = c2v(lab, "S")
    assert v == NF_STOLEN
    cp = one(lab)
    assert state(lab) == "SYN_RECV"
    assert cp.timeout == 60 * HZ
    d = cp.dest
    assert counters(d) == (1, 0)
    p = IP(bytes(buf))
    assert (p.src, p[TCP].sport, p.dst, p[TCP].dport) == (CLI, 3456, ip(d.addr), d.port)
    assert p.ttl == 63
    assert checksums_valid(buf) and scapy_valid(buf)


def test_syn_only_expires_after_the_syn_recv_timeout():
    lab = web()
    c2v(lab, "S")
    cp = one(lab)
    lab.tick(lab.now + 60 * HZ - 1)
    assert lab.conns() == [cp]
    lab.tick(lab.now + 1)
    assert lab.conns() == []
    assert counters(cp.dest) == (0, 0) if cp.dest else True
    assert counters(lab.rs1) == counters(lab.rs2) == (0, 0)
    assert len(lab.ipvs.conn_tab) == 0


def test_syn_then_client_rst_stays_syn_recv():
    # INPUT rst from SYN_RECV is SR in the kernel table.
    lab = web()
    c2v(lab, "S")
    v, _ = c2v(lab, "R")
    assert v == NF_STOLEN
    assert state(lab) == "SYN_RECV"
    assert counters(one(lab).dest) == (1, 0)


def test_syn_then_server_rst_closes():
    lab = web()
    c2v(lab, "S")
    cp = one(lab)
    v, buf = r2c(lab, cp, "R")
    assert v == NF_STOLEN
    assert state(lab) == "CLOSE"
    assert counters(cp.dest) == (0, 1)
    assert cp.timeout == 10 * HZ
    assert IP(bytes(buf)).src == VIP and scapy_valid(buf)


def test_full_close_from_the_client():
    lab = web()
    seq = []
    c2v(lab, "S")
    cp = one(lab)
    seq.append(state(lab))
    r2c(lab, cp, "SA")
    seq.append(state(lab))
    c2v(lab, "A")
    seq.append(state(lab))
    c2v(lab, "FA")
    seq.append(state(lab))
    r2c(lab, cp, "A")
    seq.append(state(lab))
    r2c(lab, cp, "FA")
    seq.append(state(lab))
    c2v(lab, "A")
    seq.append(state(lab))
    assert seq == ["SYN_RECV", "SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "CLOSE_WAIT", "TIME_WAIT", "TIME_WAIT"]
    assert counters(cp.dest) == (0, 1)
    assert cp.timeout == 120 * HZ


def test_full_close_from_the_server():
    lab = web()
    seq = []
    c2v(lab, "S")
    cp = one(lab)
    r2c(lab, cp, "SA")
    c2v(lab, "A")
    assert counters(cp.dest) == (1, 0)
    r2c(lab, cp, "FA")
    seq.append(state(lab))
    c2v(lab, "A")
    seq.append(state(lab))
    c2v(lab, "FA")
    seq.append(state(lab))
    r2c(lab, cp, "A")
    seq.append(state(lab))
    assert seq == ["FIN_WAIT", "FIN_WAIT", "TIME_WAIT", "TIME_WAIT"]
    assert counters(cp.dest) == (0, 1)


def test_ack_without_connection_is_passed_untouched():
    lab = web()
    v, buf = c2v(lab, "A")
    assert v == NF_ACCEPT
    assert buf == tcp(CLI, 3456, VIP, 80, flags="A")
    assert lab.conns() == []


def test_rst_never_schedules_even_when_sloppy():
    lab = web(sloppy_tcp=1)
    v, _ = c2v(lab, "R")
    assert v == NF_ACCEPT and lab.conns() == []


def test_sloppy_tcp_schedules_on_ack():
    lab = web(sloppy_tcp=1)
    v, buf = c2v(lab, "A")
    assert v == NF_STOLEN
    assert state(lab) == "ESTABLISHED"  # INPUT ack from NONE
    assert IP(bytes(buf)).dst in (RS1, RS2)


def _to_time_wait(lab):
    c2v(lab, "S")
    cp = one(lab)
    r2c(lab, cp, "SA")
    c2v(lab, "A")
    c2v(lab, "FA")
    r2c(lab, cp, "FA")
    assert state(lab, cp) == "TIME_WAIT"
    return cp


def test_new_syn_on_time_wait_is_rescheduled_with_conn_reuse_mode_1():
    lab = web()
    old = _to_time_wait(lab)
    first = old.dest
    v, buf = c2v(lab, "S")
    assert v == NF_STOLEN
    new = [c for c in lab.conns() if c is not old]
    assert len(new) == 1
    assert state(lab, new[0]) == "SYN_RECV"
    # rr moves on: the new connection goes to the other server.
    assert new[0].dest is not first
    assert IP(bytes(buf)).dst == ip(new[0].dest.addr)
    # The old one was expired at once: gone at the next timer run.
    lab.tick(lab.now + 1)
    assert lab.conns() == new
    assert counters(first) == (0, 0)
    assert counters(new[0].dest) == (1, 0)


def test_new_syn_on_time_wait_reuses_the_conn_with_conn_reuse_mode_0():
    lab = web(conn_reuse_mode=0)
    old = _to_time_wait(lab)
    v, buf = c2v(lab, "S")
    assert v == NF_STOLEN
    assert lab.conns() == [old]
    assert state(lab, old) == "SYN_RECV"  # INPUT syn from TIME_WAIT
    assert IP(bytes(buf)).dst == ip(old.dest.addr)


def test_syn_on_established_is_not_rescheduled():
    lab = web()
    c2v(lab, "S")
    cp = one(lab)
    r2c(lab, cp, "SA")
    c2v(lab, "A")
    c2v(lab, "S")
    assert lab.conns() == [cp]
    assert state(lab) == "ESTABLISHED"


def test_secure_tcp_switches_to_the_defence_table():
    # With secure_tcp=3 the kernel uses tcp_states_dos, where an ACK in
    # SYN_RECV keeps SYN_RECV (the normal table gives ESTABLISHED).
    lab = web(secure_tcp=3)
    lab.tick(lab.now + HZ)  # the defence work runs every second
    c2v(lab, "S")
    c2v(lab, "A")
    assert state(lab) == "SYN_RECV"
    lab.ipvs.sysctl.set("secure_tcp", 0)
    lab.tick(lab.now + HZ)
    c2v(lab, "A")
    assert state(lab) == "ESTABLISHED"


# ------------------------------------------------------------------- UDP


def dns(**sysctls):
    lab = Lab(**sysctls)
    lab.su = lab.service(VIP, 53, proto=17, sched="rr")
    lab.rs1 = lab.dest(lab.su, RS1, 5353)
    return lab


def test_udp_both_ways_and_udp_timeout():
    lab = dns()
    buf = udp(CLI, 4000, VIP, 53, payload=b"query")
    assert lab.send(buf) == NF_STOLEN
    p = IP(bytes(buf))
    assert (p.dst, p[UDP].dport, p.src, p[UDP].sport) == (RS1, 5353, CLI, 4000)
    assert scapy_valid(buf) and checksums_valid(buf)
    cp = one(lab)
    assert cp.timeout == 300 * HZ
    assert lab.ipvs.proto_data[17].state_names[cp.state] == "UDP"
    rep = udp(RS1, 5353, CLI, 4000, payload=b"answer")
    assert lab.send(rep) == NF_STOLEN
    p = IP(bytes(rep))
    assert (p.src, p[UDP].sport, p.dst, p[UDP].dport) == (VIP, 53, CLI, 4000)
    assert scapy_valid(rep) and checksums_valid(rep)
    # UDP conns count as inactive (no TCP state machine moves them).
    assert counters(lab.rs1) == (0, 1)
    lab.tick(lab.now + 300 * HZ)
    assert lab.conns() == [] and counters(lab.rs1) == (0, 0)


def test_udp_zero_checksum_gets_a_real_one_both_ways():
    lab = dns()
    buf = udp(CLI, 4000, VIP, 53, payload=b"query", chksum=0)
    assert lab.send(buf) == NF_STOLEN
    assert buf[26:28] != b"\0\0"
    assert scapy_valid(buf) and checksums_valid(buf)
    rep = udp(RS1, 5353, CLI, 4000, payload=b"answer", chksum=0)
    assert lab.send(rep) == NF_STOLEN
    assert rep[26:28] != b"\0\0"
    assert scapy_valid(rep) and checksums_valid(rep)


def _udp_zero_after_nat(src, sport, dst, dport, new_dst, new_dport):
    """A datagram with a valid non-zero checksum whose checksum after
    rewriting dst:dport to new_dst:new_dport computes to 0 (sum -0)."""
    body = bytearray(udp(new_dst, 1, new_dst, 1, payload=b"\0\0xyzw"))
    # Fill the first two payload bytes so the post-NAT datagram sums to -0.
    post = udp(src, sport, new_dst, new_dport, payload=b"\0\0xyzw", chksum=0)
    pseudo = bytes(post[12:20]) + b"\x00\x11" + (len(post) - 20).to_bytes(2, "big")
    s = ~inet_csum(pseudo + bytes(post[20:])) & 0xFFFF
    fill = (0xFFFF - s) & 0xFFFF
    del body
    payload = fill.to_bytes(2, "big") + b"xyzw"
    pre = udp(src, sport, dst, dport, payload=payload)
    return pre


def test_udp_incremental_result_zero_is_sent_as_ffff():
    """udp_fast_csum_update: a folded result of 0 becomes CSUM_MANGLED_0,
    otherwise the datagram would claim to have no checksum."""
    lab = dns()
    pre = _udp_zero_after_nat(CLI, 4000, VIP, 53, RS1, 5353)
    assert pre[26:28] != b"\0\0"
    assert lab.send(pre) == NF_STOLEN
    assert IP(bytes(pre)).dst == RS1
    assert pre[26:28] == b"\xff\xff"
    assert scapy_valid(pre)


def test_udp_one_packet_scheduling_keeps_no_connection():
    lab = Lab()
    su = lab.service(VIP, 53, proto=17, sched="rr", flags=IP_VS_SVC_F_ONEPACKET)
    rs1 = lab.dest(su, RS1, 53)
    rs2 = lab.dest(su, RS2, 53)
    dsts = []
    for _ in range(4):
        buf = udp(CLI, 4000, VIP, 53)
        assert lab.send(buf) == NF_STOLEN
        dsts.append(IP(bytes(buf)).dst)
        assert lab.conns() == []
        assert len(lab.ipvs.conn_tab) == 0
    # Same client and port, yet every datagram is scheduled on its own.
    assert dsts == [RS2, RS1, RS2, RS1]
    assert counters(rs1) == counters(rs2) == (0, 0)
    assert (rs1.stats.conns, rs2.stats.conns) == (2, 2)
    # No entry, so the real server's answer is not un-NATed (as the kernel's
    # udp_icmp capture shows: it leaves with the real server's address).
    rep = udp(RS1, 53, CLI, 4000)
    orig = bytes(rep)
    assert lab.send(rep) == NF_ACCEPT and bytes(rep) == orig


def test_one_packet_flag_is_ignored_for_tcp():
    lab = Lab()
    su = lab.service(VIP, 80, sched="rr", flags=IP_VS_SVC_F_ONEPACKET)
    lab.dest(su, RS1, 80)
    c2v(lab, "S")
    assert len(lab.conns()) == 1


# ------------------------------------------------------------------- ICMP


def test_icmp_port_unreachable_from_real_server_goes_back_to_the_client():
    lab = dns()
    req = udp(CLI, 4000, VIP, 53, payload=b"q")
    lab.send(req)  # now CLI:4000 -> RS1:5353 as the server sees it
    err = icmp_error(RS1, CLI, bytes(req), type_=3, code=3)
    assert lab.send(err) == NF_STOLEN
    p = IP(bytes(err))
    assert (p.src, p.dst, p.ttl) == (VIP, CLI, 63)
    q = p[IPerror]
    assert (q.src, q.dst) == (CLI, VIP)
    assert (p[UDPerror].sport, p[UDPerror].dport) == (4000, 53)
    assert inet_csum(bytes(err[:20])) == 0
    assert inet_csum(bytes(err[20:])) == 0  # ICMP checksum
    assert quoted_ip_valid(err)
    assert lab.rs1.stats.outpkts == 1


def test_icmp_error_from_the_client_side_goes_to_the_real_server():
    lab = web()
    c2v(lab, "S")
    cp = one(lab)
    _, rep = r2c(lab, cp, "SA")  # VIP:80 -> CLI:3456 as the client saw it
    err = icmp_error("192.0.2.1", VIP, bytes(rep), type_=11, code=0)
    assert lab.send(err) == NF_STOLEN
    p = IP(bytes(err))
    assert (p.src, p.dst) == ("192.0.2.1", ip(cp.daddr))
    q = p[IPerror]
    assert (q.src, q.dst) == (ip(cp.daddr), CLI)
    assert (p[TCPerror].sport, p[TCPerror].dport) == (cp.dport, 3456)
    assert inet_csum(bytes(err[:20])) == 0 and inet_csum(bytes(err[20:])) == 0
    assert quoted_ip_valid(err)


def test_icmp_error_does_not_restart_the_connection_timer():
    """ip_vs_in_icmp / handle_response_icmp end with __ip_vs_conn_put:
    the reference goes, the timer is left alone."""
    lab = dns()
    req = udp(CLI, 4000, VIP, 53)
    lab.send(req)
    cp = one(lab)
    expires = cp.expires
    lab.now += 200 * HZ
    assert lab.send(icmp_error(RS1, CLI, bytes(req))) == NF_STOLEN
    assert cp.expires == expires
    lab.tick(expires)
    assert lab.conns() == []


def test_icmp_with_bad_checksum_is_dropped():
    lab = dns()
    req = udp(CLI, 4000, VIP, 53)
    lab.send(req)
    err = icmp_error(RS1, CLI, bytes(req))
    err[22] ^= 0xFF
    assert lab.send(err) == NF_DROP
    assert lab.ipvs.drops[Drop.BAD_CSUM] == 1


def test_unrelated_icmp_is_passed_untouched():
    lab = dns()
    lab.send(udp(CLI, 4000, VIP, 53))
    echo = bytearray(bytes(IP(src=CLI, dst=VIP) / ICMP(type=8) / b"ping"))
    orig = bytearray(echo)
    assert lab.send(echo) == NF_ACCEPT and echo == orig
    # An error about a flow IPVS does not know.
    other = icmp_error(RS1, CLI, bytes(udp(CLI, 4001, RS1, 5353)))
    orig = bytearray(other)
    assert lab.send(other) == NF_ACCEPT and other == orig


# ------------------------------------------------------- leave, TTL, MTU


def test_no_destination_sends_port_unreachable_from_the_vip():
    lab = Lab()
    su = lab.service(VIP, 80, sched="wlc")
    lab.dest(su, RS1, 80, weight=0)
    lab.dest(su, RS2, 80, weight=0)
    syn = tcp(CLI, 3456, VIP, 80)
    orig = bytes(syn)
    assert lab.send(syn) == NF_DROP
    assert lab.conns() == []
    [err] = lab.ipvs.outbox
    p = IP(bytes(err))
    assert (p.src, p.dst) == (VIP, CLI)
    assert (p[ICMP].type, p[ICMP].code) == (3, 3)
    assert bytes(p[ICMP].payload) == orig
    assert scapy_valid(err)
    assert lab.ipvs.drops[Drop.NO_DEST] == 1


def test_no_destination_is_logged_once_per_failed_syn(caplog, monkeypatch):
    """The scheduler logs "no destination available" (ip_vs_scheduler_err);
    ip_vs_schedule adds nothing of its own, so one SYN makes one line."""
    monkeypatch.setattr(sched, "net_ratelimit", sched.RateLimit("net_ratelimit", 5, 10))  # a fresh window
    lab = Lab()
    su = lab.service(VIP, 80, sched="wlc")
    lab.dest(su, RS1, 80, weight=0)
    with caplog.at_level(logging.INFO, logger="ipvs.sched"):
        assert lab.send(tcp(CLI, 3456, VIP, 80)) == NF_DROP
    lines = [r.getMessage() for r in caplog.records if "no destination available" in r.getMessage()]
    assert lines == ["wlc: TCP 203.0.113.5:80 - no destination available"]


def test_udp_no_destination_also_port_unreachable():
    lab = Lab()
    lab.service(VIP, 53, proto=17)
    assert lab.send(udp(CLI, 1, VIP, 53)) == NF_DROP
    [err] = lab.ipvs.outbox
    assert (IP(bytes(err))[ICMP].type, IP(bytes(err))[ICMP].code) == (3, 3)


def test_ttl_1_gets_time_exceeded_from_the_vip():
    lab = web()
    v, buf = c2v(lab, "S", ttl=1)
    assert v == NF_DROP
    [err] = lab.ipvs.outbox
    p = IP(bytes(err))
    assert (p.src, p.dst, p[ICMP].type, p[ICMP].code) == (VIP, CLI, 11, 0)
    assert scapy_valid(err)
    assert lab.ipvs.drops[Drop.TTL_EXCEEDED] == 1


def test_reply_with_ttl_1_is_dropped():
    lab = web()
    c2v(lab, "S")
    cp = one(lab)
    buf = tcp(ip(cp.daddr), cp.dport, CLI, 3456, flags="SA", ttl=1)
    assert lab.send(buf) == NF_DROP


def test_mtu_exceeded_with_df_gets_frag_needed():
    lab = web()
    lab.d.mtu = 100
    buf = tcp(CLI, 3456, VIP, 80, flags="S", payload=b"x" * 200)
    buf[6] |= 0x40  # DF
    buf[10:12] = b"\0\0"
    buf[10:12] = inet_csum(bytes(buf[:20])).to_bytes(2, "big")
    assert lab.send(buf) == NF_DROP
    [err] = lab.ipvs.outbox
    p = IP(bytes(err))
    assert (p.src, p[ICMP].type, p[ICMP].code, p[ICMP].nexthopmtu) == (VIP, 3, 4, 100)
    # Without DF the packet goes on (the kernel fragments it).
    lab.ipvs.outbox.clear()
    ok = tcp(CLI, 3457, VIP, 80, flags="S", payload=b"x" * 200)
    assert lab.send(ok) == NF_STOLEN


def test_packets_matching_nothing_pass_untouched():
    lab = web()
    cases = [
        tcp(CLI, 3456, VIP, 81),
        tcp(CLI, 3456, "203.0.113.6", 80),
        udp(CLI, 3456, VIP, 80),
        bytearray(bytes(IP(src=CLI, dst=VIP, proto=47) / b"gre-ish payload")),
    ]
    for buf in cases:
        orig = bytes(buf)
        assert lab.send(buf) == NF_ACCEPT
        assert bytes(buf) == orig
    assert lab.conns() == []


def test_nothing_is_handled_before_the_first_service():
    lab = Lab()
    buf = tcp(CLI, 3456, VIP, 80)
    assert lab.send(buf) == NF_ACCEPT


def test_ipv6_without_a_service_is_passed_untouched():
    """IPv6 has its data path (tests/core/test_ipv6.py); a packet of no
    service passes as an IPv4 one does, counted nowhere."""
    lab = web()
    buf = bytearray(bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / TCP(flags="S")))
    orig = bytes(buf)
    assert lab.send(buf) == NF_ACCEPT and bytes(buf) == orig
    assert sum(lab.ipvs.drops.values()) == 0


def test_fragments_are_passed_and_counted():
    lab = web()
    buf = bytearray(bytes(IP(src=CLI, dst=VIP, flags="MF") / TCP(sport=1, dport=80, flags="S")))
    assert lab.send(buf) == NF_ACCEPT
    assert lab.ipvs.drops[Drop.FRAGMENT] == 1 and lab.conns() == []


@pytest.mark.parametrize("mangle", ["short_tcp", "doff", "short_udp"])
def test_truncated_l4_is_dropped_and_counted(mangle):
    lab = web()
    if mangle == "short_tcp":
        buf = bytearray(bytes(IP(src=CLI, dst=VIP, proto=6) / (b"\x0d\x80\x00\x50" + bytes(8))))
    elif mangle == "doff":
        buf = tcp(CLI, 3456, VIP, 80)
        buf[32] = 0x40
    else:
        buf = bytearray(bytes(IP(src=CLI, dst=VIP, proto=17) / b"\x0d\x80\x00\x35"))
    assert lab.send(buf) == NF_DROP
    assert lab.ipvs.drops[Drop.BAD_L4] == 1


def test_client_source_port_20_is_never_scheduled():
    lab = web()
    buf = tcp(CLI, 20, VIP, 80)
    assert lab.send(buf) == NF_ACCEPT and lab.conns() == []


def test_ftp_service_lets_other_ports_of_the_vip_through():
    lab = Lab()
    su = lab.service(VIP, 21)
    lab.dest(su, RS1, 21)
    buf = tcp(CLI, 3456, VIP, 2000)
    orig = bytes(buf)
    assert lab.send(buf) == NF_ACCEPT and bytes(buf) == orig
    assert lab.ipvs.outbox == [] and lab.conns() == []


def test_non_persistent_port_zero_service_refuses_with_port_unreachable():
    lab = Lab()
    su = lab.service(VIP, 0)
    lab.dest(su, RS1, 0)
    assert lab.send(tcp(CLI, 3456, VIP, 8080)) == NF_DROP
    assert len(lab.ipvs.outbox) == 1 and lab.conns() == []


def test_nat_icmp_send_answers_strays_from_real_servers():
    lab = web(nat_icmp_send=1)
    stray = tcp(RS1, 80, CLI, 9999, flags="A")
    assert lab.send(stray) == NF_DROP
    [err] = lab.ipvs.outbox
    # From the director's own address (0.0.0.0 offline: no driver to ask).
    assert IP(bytes(err)).src == "0.0.0.0" and IP(bytes(err))[ICMP].code == 3
    lab.ipvs.outbox.clear()
    rst = tcp(RS1, 80, CLI, 9999, flags="R")
    assert lab.send(rst) == NF_ACCEPT and lab.ipvs.outbox == []


# ------------------------------------------------------- deleted dests


def test_deleted_dest_drops_packets_without_restarting_the_timer():
    lab = web()
    c2v(lab, "S")
    cp = one(lab)
    d = cp.dest
    expires = cp.expires
    ctl.del_dest(lab.ipvs, lab.su, 2, d.addr, d.port)
    lab.now += 10
    v, _ = c2v(lab, "A")
    assert v == NF_DROP
    assert lab.ipvs.drops[Drop.DEST_UNAVAILABLE] == 1
    assert cp.expires == expires
    assert d.stats.inpkts == 1
    # Replies still get through (handle_response does not look at the dest)
    # but are not counted: ip_vs_out_stats wants an available dest.
    out_before = (d.stats.outpkts, lab.svc.stats.outpkts, lab.ipvs.tot_stats.outpkts)
    v, buf = r2c(lab, cp, "SA")
    assert v == NF_STOLEN and IP(bytes(buf)).src == VIP
    assert (d.stats.outpkts, lab.svc.stats.outpkts, lab.ipvs.tot_stats.outpkts) == out_before
    # handle_response does end with ip_vs_conn_put: the reply restarts it.
    assert cp.expires == lab.now + cp.timeout
    lab.tick(cp.expires)
    assert lab.conns() == []
    assert counters(d) == (0, 0)


def test_expire_nodest_conn_expires_at_once():
    lab = web(expire_nodest_conn=1)
    c2v(lab, "S")
    cp = one(lab)
    ctl.del_dest(lab.ipvs, lab.su, 2, cp.dest.addr, cp.dest.port)
    lab.tick(lab.now + 1)
    assert lab.conns() == []


def test_expire_nodest_conn_on_packet():
    """5.9+ (so 6.1): the dest check comes before scheduling; with
    expire_nodest_conn the entry is expired and the packet goes on as if
    there were none.  A TCP ACK cannot schedule, so it is not IPVS's."""
    lab = web()
    c2v(lab, "S")
    cp = one(lab)
    ctl.del_dest(lab.ipvs, lab.su, 2, cp.dest.addr, cp.dest.port)
    lab.ipvs.sysctl.set("expire_nodest_conn", 1)
    v, buf = c2v(lab, "A")
    assert v == NF_ACCEPT and IP(bytes(buf)).dst == VIP
    lab.tick(lab.now + 1)
    assert lab.conns() == []


def test_expire_nodest_conn_reschedules_udp_at_once():
    """The point of the 5.9 change: a client reusing its source port is
    scheduled to a live server instead of being dropped."""
    lab = Lab()
    su = lab.service(VIP, 53, proto=17, sched="rr")
    rs1 = lab.dest(su, RS1, 53)
    rs2 = lab.dest(su, RS2, 53)
    first = udp(CLI, 4000, VIP, 53)
    lab.send(first)
    gone = rs1 if IP(bytes(first)).dst == RS1 else rs2
    other = rs2 if gone is rs1 else rs1
    ctl.del_dest(lab.ipvs, su, 2, gone.addr, 53)
    lab.ipvs.sysctl.set("expire_nodest_conn", 1)
    again = udp(CLI, 4000, VIP, 53)
    assert lab.send(again) == NF_STOLEN
    assert IP(bytes(again)).dst == ip(other.addr) and scapy_valid(again)
    lab.tick(lab.now + 1)
    [cp] = lab.conns()
    assert cp.dest is other and counters(gone) == (0, 0) and counters(other) == (0, 1)
    assert gone.stats.inpkts == 1 and other.stats.inpkts == 1


def test_expire_nodest_conn_weight_zero_syn_reschedules():
    lab = web(expire_nodest_conn=1)
    c2v(lab, "S")
    cp = one(lab)
    first = cp.dest
    ctl.edit_dest(lab.ipvs, lab.su, ctl.DestUser(addr=first.addr, port=first.port, weight=0,
                                                 conn_flags=0))
    v, buf = c2v(lab, "S")
    assert v == NF_STOLEN
    other = lab.rs2 if first is lab.rs1 else lab.rs1
    assert IP(bytes(buf)).dst == ip(other.addr)


# ---------------------------------------------------- counters and stats


def test_counters_per_dest_service_and_total():
    lab = web()
    sizes_in, sizes_out = [], []
    c2v(lab, "S")
    cp = one(lab)
    d = cp.dest
    _, b = r2c(lab, cp, "SA")
    sizes_out.append(len(b))
    for payload in (b"", b"GET / HTTP/1.0\r\n\r\n"):
        _, b = c2v(lab, "PA", payload=payload)
        sizes_in.append(len(b))
    _, b = r2c(lab, cp, "PA", payload=b"x" * 100)
    sizes_out.append(len(b))
    syn_len = len(tcp(CLI, 3456, VIP, 80))
    want = (1, 3, 2, syn_len + sum(sizes_in), sum(sizes_out))
    assert d.stats.raw() == want
    # Listings show the estimator's snapshot: nothing before its next run.
    assert d.stats.counters() == lab.svc.stats.counters() == (0, 0, 0, 0, 0)
    estimator_period(lab.ipvs)
    assert d.stats.counters() == want
    assert lab.svc.stats.counters() == want
    assert lab.ipvs.tot_stats.counters() == want
    other = lab.rs2 if d is lab.rs1 else lab.rs1
    assert other.stats.counters() == (0, 0, 0, 0, 0)


def test_templates_are_not_counted_as_connections():
    lab = Lab()
    su = lab.service(VIP, 80, flags=1, timeout=300)
    d = lab.dest(su, RS1, 80)
    c2v(lab, "S")
    estimator_period(lab.ipvs)
    assert d.stats.counters()[0] == 1 and lab.ipvs.tot_stats.counters()[0] == 1
    assert d.persistconns == 1


# --------------------------------------------------------- bounds, defence


def test_table_full_drops_new_connections():
    lab = web()
    lab.ipvs.conn_tab.max_conns = 2
    assert c2v(lab, "S", cport=1)[0] == NF_STOLEN
    assert c2v(lab, "S", cport=2)[0] == NF_STOLEN
    assert c2v(lab, "S", cport=3)[0] == NF_DROP
    assert lab.ipvs.drops[Drop.TABLE_FULL] == 1
    assert len(lab.conns()) == 2
    # An existing connection still works.
    assert c2v(lab, "A", cport=1)[0] == NF_STOLEN


def test_drop_packet_3_drops_one_in_am_droprate():
    """ip_vs_todrop with drop_packet=3: drop_rate = am_droprate and a
    countdown that starts at 0, so the 1st, 11th, 21st ... new connection
    is dropped (am_droprate 10)."""
    lab = web(drop_packet=3)
    lab.tick(lab.now + HZ)
    verdicts = [c2v(lab, "S", cport=1000 + i)[0] for i in range(25)]
    dropped = [i for i, v in enumerate(verdicts) if v == NF_DROP]
    assert dropped == [0, 10, 20]
    assert lab.ipvs.drops[Drop.DEFENSE] == 3


def test_random_bytes_do_not_change_a_clean_table():
    lab = web()
    for junk in (b"", b"\x45", bytes(19), b"\x60" + bytes(30), b"\xff" * 60):
        assert lab.send(bytearray(junk)) in (NF_DROP, NF_ACCEPT)
    assert lab.conns() == []


def test_csum_partial_keeps_the_pseudo_header_sum():
    lab = web()
    buf = tcp(CLI, 3456, VIP, 80, flags="S")
    words = bytes(buf[12:20]) + b"\x00\x06" + (len(buf) - 20).to_bytes(2, "big")
    buf[36:38] = (~inet_csum(words) & 0xFFFF).to_bytes(2, "big")
    assert lab.send(buf, partial=True) == NF_STOLEN
    words = bytes(buf[12:20]) + b"\x00\x06" + (len(buf) - 20).to_bytes(2, "big")
    assert int.from_bytes(buf[36:38], "big") == ~inet_csum(words) & 0xFFFF
    assert inet_csum(bytes(buf[:20])) == 0


def test_icmp_error_with_ttl_1_is_dropped_without_an_error_about_it():
    """icmp_send never answers an ICMP error (RFC 1122 3.2.2.)."""
    lab = web()
    c2v(lab, "S")
    cp = one(lab)
    _, rep = r2c(lab, cp, "SA")
    err = icmp_error("192.0.2.1", VIP, bytes(rep), type_=3, code=1, ttl=1)
    assert lab.send(err) == NF_DROP
    assert lab.ipvs.outbox == []
    assert lab.ipvs.drops[Drop.TTL_EXCEEDED] == 1


def test_every_drop_reason_is_reachable_and_counted():
    lab = web()
    dns_svc = lab.service(VIP, 53, proto=17)
    lab.dest(dns_svc, RS1, 53)
    good = tcp(CLI, 3456, VIP, 80)
    cases = {
        Drop.TRUNCATED: bytearray(good[:10]),
        Drop.BAD_VERSION: bytearray(b"\x75" + good[1:]),
        Drop.BAD_IHL: bytearray(b"\x44" + good[1:]),
        Drop.BAD_TOTLEN: bytearray(good[:-1]),
        Drop.BAD_L4: bytearray(bytes(IP(src=CLI, dst=VIP, proto=17) / b"\0\1")),
        # An IPv6 hop-by-hop header longer than the packet.
        Drop.BAD_EXTHDR: bytearray(bytes(IPv6(nh=0, plen=8) / (b"\x06\x07" + bytes(6)))),
    }
    for reason, buf in cases.items():
        assert lab.send(buf) == NF_DROP, reason
        assert lab.ipvs.drops[reason] == 1, reason
    reached = set(cases)
    # The rest come from the scenarios above; run the short ones again here.
    lab.send(bytearray(bytes(IP(src=CLI, dst=VIP, flags="MF") / TCP(dport=80))))
    lab.send(tcp(CLI, 1, VIP, 80, ttl=1))
    reached |= {Drop.FRAGMENT, Drop.TTL_EXCEEDED}
    req = udp(CLI, 4000, VIP, 53)
    lab.send(req)
    bad = icmp_error(RS1, CLI, bytes(req))
    bad[22] ^= 1
    lab.send(bad)
    reached.add(Drop.BAD_CSUM)
    ctl.edit_dest(lab.ipvs, lab.su, ctl.DestUser(addr=lab.rs1.addr, port=80, weight=0, conn_flags=0))
    ctl.edit_dest(lab.ipvs, lab.su, ctl.DestUser(addr=lab.rs2.addr, port=8080, weight=0, conn_flags=0))
    lab.send(tcp(CLI, 2, VIP, 80))
    reached.add(Drop.NO_DEST)
    gone = lab.ipvs.conn_tab.in_get(6, A(CLI), A(VIP), 1, 80).dest  # the TTL-1 SYN made a conn
    ctl.del_dest(lab.ipvs, lab.su, 2, gone.addr, gone.port)
    lab.send(tcp(CLI, 1, VIP, 80, flags="A"))
    reached.add(Drop.DEST_UNAVAILABLE)
    lab.ipvs.sysctl.set("drop_packet", 3)
    ctl.update_defense_level(lab.ipvs)  # as proc_do_defense_mode does on a write
    lab.send(tcp(CLI, 3, VIP, 80))
    lab.ipvs.sysctl.set("drop_packet", 0)
    ctl.update_defense_level(lab.ipvs)
    # A persistent --pe sip service drops a datagram without a Call-ID (ipvs.pe.sip).
    sip = ctl.ServiceUser(addr=A(VIP), port=5060, protocol=17, sched_name="rr", flags=IP_VS_SVC_F_PERSISTENT,
                          timeout=60, pe_name="sip")
    ctl.add_service(lab.ipvs, sip)
    lab.dest(sip, RS1, 5060)
    assert lab.send(udp(CLI, 4002, VIP, 5060)) == NF_DROP
    reached.add(Drop.NO_PE_DATA)
    lab.ipvs.conn_tab.max_conns = 0
    lab.send(udp(CLI, 4001, VIP, 53))
    reached |= {Drop.DEFENSE, Drop.TABLE_FULL}
    for reason in reached:
        assert lab.ipvs.drops[reason] >= 1, reason
    # CONN_REUSE is the kernel's "drop the SYN while old conntrack must be
    # kept", which needs conntrack (not in PyIPVS): never counted.
    assert set(Drop) - reached == {Drop.CONN_REUSE}
    assert lab.ipvs.drops[Drop.CONN_REUSE] == 0


def test_nat_icmp_send_error_does_not_claim_to_come_from_the_real_server():
    lab = web(nat_icmp_send=1)
    lab.d.own_address = lambda dst: A("172.16.0.1") if dst[:3] == A(RS1)[:3] else None
    assert lab.send(tcp(RS1, 80, CLI, 9999, flags="A")) == NF_DROP
    [err] = lab.ipvs.outbox
    p = IP(bytes(err))
    assert p.dst == RS1
    assert p.src == "172.16.0.1"


def test_time_exceeded_for_a_reply_does_not_come_from_the_vip():
    lab = web()
    c2v(lab, "S")
    cp = one(lab)
    assert lab.send(tcp(ip(cp.daddr), cp.dport, CLI, 3456, flags="SA", ttl=1)) == NF_DROP
    [err] = lab.ipvs.outbox
    assert IP(bytes(err)).dst == ip(cp.daddr)
    assert IP(bytes(err)).src == "0.0.0.0"  # offline: the director's address is unknown


def test_truncated_icmp_header_is_dropped():
    """ip_vs_in_icmp / ip_vs_out_icmp: fewer than 8 bytes of ICMP header
    (skb_header_pointer fails) is NF_DROP, with the packet counted as related."""
    lab = web()
    for n in (0, 4, 7):
        buf = bytearray(bytes(IP(src=CLI, dst=VIP, proto=1) / (b"\x03\x03" + bytes(n))[:n]))
        assert lab.send(buf) == NF_DROP
    assert lab.ipvs.drops[Drop.BAD_L4] == 3
    # Eight bytes are enough: an echo request is simply not related.
    assert lab.send(bytearray(bytes(IP(src=CLI, dst=VIP) / ICMP(type=8)))) == NF_ACCEPT


# ------------------------------------------------ against the kernel's record


def _golden(name):
    from ipvs_harness.capture import golden_dir

    g = golden_dir(name)
    if g is None:
        pytest.skip(f"{name} golden not available")
    return g


def test_tcp_state_trajectories_match_the_kernel():
    """The tcp_states golden: crafted segments (SYN only, SYN+RST, closes
    from either side, ACK without connection, SYN on TIME_WAIT with
    conn_reuse_mode 1 and 0, RST, --set timeouts) were sent through kernel
    6.1 and /proc/net/ip_vs_conn was dumped after every step.  Replaying
    both captures through the core, every dump must show the same entries,
    states and (within a second) expiry times."""
    import json
    import os

    from ipvs.driver import pcap, replay

    g = _golden("tcp_states")
    vip, rs = A(VIP), A(RS1)
    cli = [r for r in pcap.read_file(os.path.join(g, "client-side.pcap")) if r.data[30:34] == vip]
    srv = [r for r in pcap.read_file(os.path.join(g, "server-side.pcap")) if r.data[26:30] == rs]
    frames = sorted(cli + srv, key=lambda r: r.ts)
    with open(os.path.join(g, "tcp-states.jsonl")) as f:
        steps = [json.loads(line) for line in f]
    first = next(s for s in steps if s["step"] == "send")
    first_ts = min(r.ts for r in cli if int.from_bytes(r.data[34:36], "big") == 41001)
    offset = first_ts - first["t"]
    lab = Lab()
    su = lab.service(VIP, 80, sched="rr")
    lab.dest(su, RS1, 80)
    pos = dumps = 0
    for s in steps:
        at = offset + s["t"]
        chunk = []
        while pos < len(frames) and frames[pos].ts < at:
            chunk.append(frames[pos])
            pos += 1
        replay.replay(lab.d, chunk)
        now = replay.jiffies(at, HZ)
        lab.tick(now)
        if s["step"] == "sh":
            cmd = s["cmd"]
            if cmd.startswith("ipvsadm --set"):
                ctl.set_timeouts(lab.ipvs, *map(int, cmd.split()[2:5]))
            elif "conn_reuse_mode" in cmd and cmd.startswith("echo"):
                lab.ipvs.sysctl.set("conn_reuse_mode", int(cmd.split()[1]))
        if s["step"] != "dump":
            continue
        dumps += 1
        want = {}
        for row in s["proc_net_ip_vs_conn"].splitlines()[1:]:
            f_ = row.split()
            want[int(f_[2], 16)] = (f_[7], int(f_[8]))
        got = {cp.cport: (state(lab, cp), (cp.expires - now) // HZ) for cp in lab.conns()}
        assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in want.items()}, s["label"]
        for k, (_st, exp) in want.items():
            assert abs(got[k][1] - exp) <= 1, (s["label"], k, got[k][1], exp)
    assert dumps >= 20


def test_icmp_port_unreachable_from_a_real_server_matches_the_kernel():
    """The udp_icmp golden: a datagram to VIP:54, whose real server has no
    socket on port 9999, twice.  The ICMP errors the kernel sent to the
    client must be what the core makes of the server's errors, byte for
    byte at L3, and the counters must be the kernel's."""
    import os

    from ipvs.driver import pcap, replay

    g = _golden("udp_icmp")
    vip, rs = A(VIP), A(RS1)

    def udp_to_54(r):
        return r.data[23] == 17 and r.data[30:34] == vip and r.data[36:38] == (54).to_bytes(2, "big")

    cli = pcap.read_file(os.path.join(g, "client-side.pcap"))
    srv = pcap.read_file(os.path.join(g, "server-side.pcap"))
    inp = [r for r in cli if udp_to_54(r)] + [r for r in srv if r.data[23] == 1 and r.data[26:30] == rs]
    inp.sort(key=lambda r: r.ts)
    want_rs = [r.data[14:] for r in srv if r.data[23] == 17 and r.data[30:34] == rs
               and r.data[36:38] == (9999).to_bytes(2, "big")]
    want_cli = [r.data[14:] for r in cli if r.data[23] == 1 and r.data[26:30] == vip
                and r.data[64:66] == (54).to_bytes(2, "big")]  # the quoted datagram went to VIP:54
    assert len(inp) == 4 and len(want_rs) == 2 and len(want_cli) == 2
    lab = Lab()
    su = lab.service(VIP, 54, proto=17, sched="rr")
    d = lab.dest(su, RS1, 9999)
    out = replay.replay(lab.d, inp)
    assert [f[14:] for _t, f in out if f[23] == 17] == want_rs
    assert [f[14:] for _t, f in out if f[23] == 1] == want_cli
    # ipvsadm -Ln --stats: 1 conn, 2 in, 2 out (the errors), 84 and 140 bytes,
    # once the estimator has run after the last packet (as it had there).
    estimator_period(lab.ipvs)
    assert d.stats.counters() == (1, 2, 2, 84, 140)


def test_ip_options_and_link_offsets():
    from scapy.layers.l2 import Dot1Q, Ether

    lab = web()
    pkt = IP(src=CLI, dst=VIP, options=b"\x01\x01\x01\x00") / TCP(sport=5000, dport=80, flags="S") / b"opt"
    for link, l3 in ((b"", 0), (bytes(Ether()), 14), (bytes(Ether() / Dot1Q(vlan=7)), 18)):
        buf = bytearray(link + bytes(pkt) + b"\0" * 6)  # trailing Ethernet padding
        assert lab.send(buf, l3=l3) == NF_STOLEN
        assert buf[:l3] == link and buf[-6:] == b"\0" * 6
        p = IP(bytes(buf[l3:-6]))
        assert p.ihl == 6 and p.options == IP(bytes(pkt)).options
        assert p.dst in (RS1, RS2) and bytes(p[TCP].payload) == b"opt"
        assert checksums_valid(buf[l3:]) and scapy_valid(bytes(buf[l3:-6]))


def test_next_timer_reports_the_earliest_work():
    lab = web()
    lab.tick(lab.now)
    c2v(lab, "S")
    cp = one(lab)
    nt = lab.d.next_timer()
    assert nt is not None and lab.now < nt <= cp.expires
    # Running the timers at next_timer() repeatedly reaches the conn's expiry.
    for _ in range(1000):
        if not lab.conns():
            break
        lab.tick(lab.d.next_timer())
    assert lab.conns() == [] and lab.now == cp.expires


def test_deleted_dest_stays_revivable_for_180_seconds():
    lab = web()
    lab.tick(lab.now)
    d = lab.rs1
    d.stats.inpkts = 42
    t0 = lab.now
    ctl.del_dest(lab.ipvs, lab.su, 2, d.addr, d.port)
    for s in range(1, 171):
        lab.tick(t0 + s * HZ)
    again = ctl.add_dest(lab.ipvs, lab.su, ctl.DestUser(addr=d.addr, port=d.port, conn_flags=0))
    assert again is d and again.stats.inpkts == 42


@pytest.mark.parametrize("how", ["del_service", "flush"])
def test_removed_service_leaves_conns_to_expire_and_drops_their_packets(how):
    """ip_vs_del_service / ip_vs_flush unlink the service and trash its
    dests; connections keep their (now unavailable) dest and expire on their
    own, their client packets are dropped and nothing is counted."""
    lab = web()
    c2v(lab, "S")
    cp = one(lab)
    d = cp.dest
    before = d.stats.counters()
    if how == "del_service":
        ctl.del_service(lab.ipvs, lab.su)
    else:
        ctl.flush(lab.ipvs)
    assert lab.conns() == [cp] and cp.dest is d
    assert lab.send(tcp(CLI, 3456, VIP, 80, flags="A")) == NF_DROP
    v, buf = r2c(lab, cp, "SA")
    assert v == NF_STOLEN and IP(bytes(buf)).src == VIP
    assert d.stats.counters() == before
    # A new connection finds no service: not IPVS's packet any more.
    assert c2v(lab, "S", cport=4000)[0] == NF_ACCEPT
    lab.tick(cp.expires)
    assert lab.conns() == [] and counters(d) == (0, 0)
