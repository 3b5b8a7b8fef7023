"""Persistence (digest section 6): templates per client (and per -M
network), their timeout and the 60 s re-arm, expire_quiescent_template,
FTP (vport 0 templates) and port-zero services, one-packet UDP."""

from scapy.layers.inet import IP, TCP

from ipvs import ctl
from ipvs.core import NF_STOLEN
from ipvs.proto import state_name
from ipvs.uapi import IP_VS_SVC_F_ONEPACKET, IP_VS_SVC_F_PERSISTENT
from tests.conftest import HZ, A, Lab, scapy_valid, tcp, udp

VIP = "203.0.113.5"
CLI = "198.51.100.2"
RS1, RS2 = "172.16.0.2", "172.16.0.3"
P = IP_VS_SVC_F_PERSISTENT


def plab(port=80, timeout=300, netmask=0xFFFFFFFF, proto=6, dport=None, flags=P, **sysctls):
    lab = Lab(**sysctls)
    lab.su = lab.service(VIP, port, proto=proto, sched="rr", flags=flags, timeout=timeout, netmask=netmask)
    lab.rs1 = lab.dest(lab.su, RS1, port if dport is None else dport)
    lab.rs2 = lab.dest(lab.su, RS2, port if dport is None else dport)
    return lab


def syn(lab, src=CLI, sport=1000, dport=80):
    buf = tcp(src, sport, VIP, dport, flags="S")
    assert lab.send(buf) == NF_STOLEN
    assert scapy_valid(buf)
    return IP(bytes(buf))


def test_template_per_client_keeps_the_server():
    lab = plab()
    first = syn(lab, sport=1000).dst
    # rr would alternate; the template keeps this client on one server.
    assert {syn(lab, sport=p).dst for p in range(1001, 1006)} == {first}
    [ct] = lab.templates()
    assert (ct.caddr, ct.cport, ct.vaddr, ct.vport) == (A(CLI), 0, A(VIP), 80)
    assert ct.daddr == A(first) and ct.dport == 80
    assert ct.timeout == 300 * HZ
    assert ct.n_control == 6
    other = syn(lab, src="198.51.100.3").dst
    assert other != first
    assert len(lab.templates()) == 2
    d = lab.rs1 if first == RS1 else lab.rs2
    assert d.persistconns == 1 and d.activeconns == 6
    # Templates are not connections: conns counts the six real ones.
    assert d.stats.conns == 6


def test_netmask_groups_clients():
    lab = plab(netmask=0xFFFFFF80)  # -M 255.255.255.128
    a = syn(lab, src="198.51.100.2").dst
    assert syn(lab, src="198.51.100.77").dst == a
    b = syn(lab, src="198.51.100.200").dst
    assert b != a
    keys = sorted(ct.caddr for ct in lab.templates())
    assert keys == [A("198.51.100.0"), A("198.51.100.128")]


def test_dest_port_mapping_applies_to_conns_and_template():
    lab = plab(dport=8080)
    p = syn(lab)
    assert p[TCP].dport == 8080
    [ct] = lab.templates()
    assert ct.dport == 8080


def test_template_times_out_after_its_conns():
    lab = plab(timeout=100)
    first = syn(lab).dst
    [cp] = lab.conns()
    [ct] = lab.templates()
    # SYN_RECV conn: 60 s; template: 100 s from its last use.
    assert cp.expires == lab.now + 60 * HZ and ct.expires == lab.now + 100 * HZ
    lab.tick(lab.now + 60 * HZ)
    assert lab.conns() == [] and lab.templates() == [ct]
    lab.tick(ct.expires)
    assert lab.templates() == []
    assert (lab.rs1.persistconns, lab.rs2.persistconns) == (0, 0)
    # A new template, a new choice: rr has moved on.
    assert syn(lab).dst != first


def test_template_that_still_controls_conns_is_rearmed_for_60s():
    lab = plab(timeout=10)
    syn(lab)
    [cp] = lab.conns()
    [ct] = lab.templates()
    t0 = lab.now
    lab.tick(t0 + 10 * HZ)
    assert lab.templates() == [ct]
    assert ct.timeout == 60 * HZ and ct.expires == t0 + 70 * HZ
    # Once re-armed, new conns restart it with 60 s, not the -p timeout.
    lab.now = t0 + 20 * HZ
    syn(lab, sport=2000)
    assert ct.expires == lab.now + 60 * HZ
    # Everything goes: conns after SYN_RECV's 60 s, then the template.
    lab.tick(lab.now + 60 * HZ)
    lab.tick(lab.now + 60 * HZ)
    assert lab.conns() == [] and lab.templates() == []
    assert (lab.rs1.persistconns, lab.rs1.activeconns, lab.rs1.inactconns) == (0, 0, 0)
    assert (lab.rs2.persistconns, lab.rs2.activeconns, lab.rs2.inactconns) == (0, 0, 0)
    assert cp.dest is None


def test_established_conn_assures_its_template():
    lab = plab()
    p = syn(lab)
    [ct] = lab.templates()
    pd = lab.ipvs.proto_data[6]
    assert state_name(ct, pd) == "NONE"
    lab.send(tcp(p.dst, 80, CLI, 1000, flags="SA"))
    lab.send(tcp(CLI, 1000, VIP, 80, flags="A"))
    assert state_name(ct, pd) == "ASSURED"


def test_udp_template_assured_by_a_reply():
    lab = plab(port=53, proto=17)
    buf = udp(CLI, 5000, VIP, 53)
    lab.send(buf)
    [ct] = lab.templates()
    pd = lab.ipvs.proto_data[17]
    assert state_name(ct, pd) == "NONE"
    lab.send(udp(IP(bytes(buf)).dst, 53, CLI, 5000))
    assert state_name(ct, pd) == "ASSURED"


def _quiesce(lab, addr):
    d = lab.rs1 if addr == RS1 else lab.rs2
    ctl.edit_dest(lab.ipvs, lab.su, ctl.DestUser(addr=d.addr, port=d.port, weight=0, conn_flags=0))
    return d


def test_quiescent_dest_keeps_persistent_clients_by_default():
    lab = plab()
    first = syn(lab).dst
    _quiesce(lab, first)
    assert syn(lab, sport=1001).dst == first


def test_expire_quiescent_template_moves_the_client():
    lab = plab(expire_quiescent_template=1)
    first = syn(lab).dst
    [old] = lab.templates()
    _quiesce(lab, first)
    p = syn(lab, sport=1001)
    assert p.dst != first
    # The old template is invalidated: rehashed with vport/dport 0xFFFF
    # and cport 0 so no lookup can find it, and left to expire.
    assert (old.vport, old.dport, old.cport) == (0xFFFF, 0xFFFF, 0)
    new = [t for t in lab.templates() if t is not old]
    assert len(new) == 1 and new[0].daddr == A(p.dst)


def test_deleted_dest_invalidates_the_template():
    lab = plab()
    first = syn(lab).dst
    d = lab.rs1 if first == RS1 else lab.rs2
    ctl.del_dest(lab.ipvs, lab.su, 2, d.addr, d.port)
    assert syn(lab, sport=1001).dst != first


def test_ftp_templates_have_vport_0_and_cover_data_ports():
    lab = plab(port=21)
    first = syn(lab, dport=21).dst
    [ct] = lab.templates()
    assert (ct.vport, ct.dport, ct.cport) == (0, 0, 0)
    # Passive data connection from the same client to VIP:2000 (>= 1024):
    # found through the FTP service and sent to the same server, port kept.
    p = syn(lab, sport=1001, dport=2000)
    assert (p.dst, p[TCP].dport) == (first, 2000)
    assert len(lab.templates()) == 1 and ct.n_control == 2
    # A port below 1024 other than 20 is not FTP data: not IPVS's business.
    buf = tcp(CLI, 1002, VIP, 443)
    assert lab.send(buf) != NF_STOLEN


def test_port_zero_service_keeps_the_requested_port():
    lab = plab(port=0)
    a = syn(lab, dport=8080)
    [ct] = lab.templates()
    assert (ct.vport, ct.dport) == (0, 0)
    b = syn(lab, sport=1001, dport=443)
    assert a.dst == b.dst
    assert (a[TCP].dport, b[TCP].dport) == (8080, 443)
    assert len(lab.templates()) == 1


def test_persistent_one_packet_udp_keeps_only_the_template():
    lab = plab(port=53, proto=17, flags=P | IP_VS_SVC_F_ONEPACKET)
    dsts = set()
    for i in range(3):
        buf = udp(CLI, 5000 + i, VIP, 53)
        assert lab.send(buf) == NF_STOLEN
        dsts.add(IP(bytes(buf)).dst)
    assert len(dsts) == 1
    assert lab.conns() == []
    [ct] = lab.templates()
    assert ct.n_control == 0
    lab.tick(ct.expires)
    assert lab.templates() == []
    assert len(lab.ipvs.conn_tab) == 0


def test_everything_unwinds_after_all_timeouts():
    lab = plab(timeout=30)
    for i in range(5):
        syn(lab, src=f"198.51.100.{i + 2}", sport=1000 + i)
    lab.tick(lab.now + 60 * HZ)   # conns (SYN_RECV) expire; templates re-armed or expired
    lab.tick(lab.now + 120 * HZ)
    assert len(lab.ipvs.conn_tab) == 0
    for d in (lab.rs1, lab.rs2):
        assert (d.activeconns, d.inactconns, d.persistconns) == (0, 0, 0)


def test_persistent_choices_match_the_kernel():
    """The sched_persist golden: rr with -p 30, -p 60 -M 255.255.255.252,
    -p 60 -M 255.255.255.0 (one template for all the clients), a
    persistent port-zero service; then one server quiesced (weight 0: its
    clients stay) and one deleted (its clients move).  Every connection
    must reach the server kernel 6.1 chose (order.txt).  The fwmark part is
    left out: Director.process has no packet mark to match -f services."""
    import os

    import pytest

    from ipvs_harness.capture import golden_dir

    g = golden_dir("sched_persist")
    if g is None:
        pytest.skip("sched_persist golden not available")
    lab = Lab()
    rs = {f"rs{i}": f"172.16.0.{i + 1}" for i in (1, 2, 3)}
    p30 = lab.service(VIP, 80, sched="rr", flags=P, timeout=30)
    m30 = lab.service(VIP, 81, sched="rr", flags=P, timeout=60, netmask=0xFFFFFFFC)
    m24 = lab.service(VIP, 82, sched="rr", flags=P, timeout=60, netmask=0xFFFFFF00)
    p0 = lab.service("203.0.113.6", 0, sched="rr", flags=P, timeout=120)
    for su_, port in ((p30, 80), (m30, 80), (m24, 80), (p0, 0)):
        for i in (1, 2, 3):
            lab.dest(su_, rs[f"rs{i}"], port)
    target = {"p30": (VIP, 80), "mask30": (VIP, 81), "mask24": (VIP, 82), "port0": ("203.0.113.6", 80)}
    with open(os.path.join(g, "order.txt")) as f:
        lines = [line.split() for line in f if line.strip() and not line.startswith("#")]
    quiesced = deleted = False
    checked = 0
    for label, _n, src, server in lines:
        if label.startswith("fwm5"):
            continue
        if label == "p30-rs2-w0" and not quiesced:
            ctl.edit_dest(lab.ipvs, p30, ctl.DestUser(addr=A(rs["rs2"]), port=80, weight=0, conn_flags=0))
            quiesced = True
        if label == "p30-rs3-deleted" and not deleted:
            ctl.del_dest(lab.ipvs, p30, 2, A(rs["rs3"]), 80)
            deleted = True
        vip, vport = target[label.split("-")[0]]
        caddr, cport = src.rsplit(":", 1)
        lab.now += 20
        buf = tcp(caddr, int(cport), vip, vport, flags="S")
        assert lab.send(buf) == NF_STOLEN
        assert IP(bytes(buf)).dst == rs[server], (label, src)
        checked += 1
    assert checked >= 78 and quiesced and deleted


def test_nodest_expiry_on_a_packet_leaves_the_template_to_its_timer():
    """ip_vs_conn_expire_now (used when a packet finds its dest deleted)
    only moves the timer: the expired conn keeps its timeout, so its
    template is not dropped with it and lives until its own timer."""
    lab = plab(timeout=300)
    syn(lab)
    [cp] = lab.conns()
    [ct] = lab.templates()
    ctl.del_dest(lab.ipvs, lab.su, 2, cp.dest.addr, cp.dest.port)
    lab.ipvs.sysctl.set("expire_nodest_conn", 1)
    lab.send(tcp(CLI, 1000, VIP, 80, flags="A"))
    lab.tick(lab.now + 1)
    assert lab.conns() == [] and lab.templates() == [ct]
    lab.tick(ct.expires)
    assert lab.templates() == []


def test_deleting_a_dest_with_expire_nodest_conn_drops_conns_and_their_template():
    """ip_vs_expire_nodest_conn_flush deletes the conns (ip_vs_conn_del:
    timeout 0 for controlled ones) and then their unassured template."""
    lab = plab(timeout=300, expire_nodest_conn=1)
    first = syn(lab).dst
    syn(lab, sport=1001)
    d = lab.rs1 if first == RS1 else lab.rs2
    ctl.del_dest(lab.ipvs, lab.su, 2, d.addr, d.port)
    for _ in range(3):
        lab.tick(lab.now + 1)
    assert lab.conns() == [] and lab.templates() == []
    assert (d.activeconns, d.inactconns, d.persistconns) == (0, 0, 0)
