"""ipvs/core.py's DR and TUN branch (``cp->packet_xmit`` for -g and -i):
through Director.process, the verdict, where the driver is told to send
the packet, the input-only TCP states of NOOUTPUT connections, and ICMP
errors passed on to the real server; over IPv6 too, and the tunnels that
mix the families."""

import errno

import pytest
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6PacketTooBig, IPv6

from ipvs import ctl, uapi
from ipvs.core import NF_ACCEPT, NF_STOLEN
from tests.conftest import A, Lab, icmp_error, scapy_valid, tcp

VIP = "203.0.113.5"
CLI = "198.51.100.2"
RS = "172.16.0.2"
DIR = "172.16.0.1"


def lab_with(fwd, tun_type=0, tun_port=0, tun_flags=0):
    lab = Lab()
    lab.d.own_address = lambda dst: A(DIR)
    su = lab.service(VIP, 80, sched="rr")
    ctl.add_dest(lab.ipvs, su, ctl.DestUser(addr=A(RS), port=80, conn_flags=fwd, tun_type=tun_type,
                                            tun_port=tun_port, tun_flags=tun_flags))
    return lab


def test_dr_syn_goes_to_the_real_server_unchanged():
    lab = lab_with(uapi.IP_VS_CONN_F_DROUTE)
    buf = tcp(CLI, 3456, VIP, 80, flags="S")
    assert lab.send(buf) == NF_STOLEN
    [cp] = lab.conns()
    assert lab.d.xmit_to is cp and cp.daddr == A(RS)
    p = IP(bytes(buf))
    assert (p.src, p.dst, p[TCP].dport, p.ttl) == (CLI, VIP, 80, 63) and scapy_valid(buf)
    [cp] = lab.conns()
    assert cp.flags & uapi.IP_VS_CONN_F_NOOUTPUT
    assert lab.tcp_states[cp.state] == "SYN_RECV"


def test_dr_input_only_states():
    """The replies bypass the director: the client's ACK establishes the
    connection and its FIN closes it (the kernel's INPUT_ONLY rows)."""
    lab = lab_with(uapi.IP_VS_CONN_F_DROUTE)
    lab.send(tcp(CLI, 3456, VIP, 80, flags="S"))
    lab.send(tcp(CLI, 3456, VIP, 80, flags="A"))
    [cp] = lab.conns()
    assert lab.tcp_states[cp.state] == "ESTABLISHED"
    assert cp.dest.activeconns == 1
    lab.send(tcp(CLI, 3456, VIP, 80, flags="FA"))
    assert lab.tcp_states[cp.state] == "FIN_WAIT"
    assert cp.dest.activeconns == 0 and cp.dest.inactconns == 1


def test_tun_ipip_from_the_directors_address():
    lab = lab_with(uapi.IP_VS_CONN_F_TUNNEL)
    buf = tcp(CLI, 3456, VIP, 80, flags="S")
    n = len(buf)
    assert lab.send(buf) == NF_STOLEN
    [cp] = lab.conns()
    assert lab.d.xmit_to is cp and cp.flags & uapi.IP_VS_CONN_F_FWD_MASK == uapi.IP_VS_CONN_F_TUNNEL
    o = IP(bytes(buf))
    assert (o.src, o.dst, o.proto, o.len) == (DIR, RS, 4, n + 20)
    assert o[IP:2].dst == VIP


def test_tun_gue_and_gre():
    for tun_type, proto, grow in ((uapi.IP_VS_CONN_F_TUNNEL_TYPE_GUE, 17, 32),
                                  (uapi.IP_VS_CONN_F_TUNNEL_TYPE_GRE, 47, 24)):
        lab = lab_with(uapi.IP_VS_CONN_F_TUNNEL, tun_type=tun_type, tun_port=6080)
        buf = tcp(CLI, 3456, VIP, 80, flags="S")
        n = len(buf)
        assert lab.send(buf) == NF_STOLEN
        o = IP(bytes(buf))
        assert (o.dst, o.proto, len(buf)) == (RS, proto, n + grow)


def test_icmp_error_for_a_dr_connection_is_passed_on():
    lab = lab_with(uapi.IP_VS_CONN_F_DROUTE)
    lab.send(tcp(CLI, 3456, VIP, 80, flags="S"))
    lab.d.xmit_to = None  # (the driver takes it)
    # The client's router says the real server's reply (from the VIP) was too big.
    quoted = bytes(tcp(VIP, 80, CLI, 3456, flags="A"))[:28]
    err = icmp_error("198.51.100.254", VIP, quoted, type_=3, code=4)
    before = bytes(err)
    assert lab.send(err) == NF_STOLEN
    assert lab.d.xmit_to is lab.conns()[0]
    assert bytes(err[12:]) == before[12:] and IP(bytes(err)).ttl == 63
    assert IP(bytes(err))[ICMP].type == 3


def test_icmp_error_for_a_tun_connection_is_tunnelled():
    lab = lab_with(uapi.IP_VS_CONN_F_TUNNEL)
    lab.send(tcp(CLI, 3456, VIP, 80, flags="S"))
    quoted = bytes(tcp(VIP, 80, CLI, 3456, flags="A"))[:28]
    err = icmp_error("198.51.100.254", VIP, quoted, type_=3, code=4)
    assert lab.send(err) == NF_STOLEN
    o = IP(bytes(err))
    assert (o.dst, o.proto) == (RS, 4) and o[IP:2][ICMP].type == 3


def test_masq_replies_still_go_through_ip_vs_out():
    # (A DR connection is not in the way of a NAT service's replies.)
    lab = lab_with(uapi.IP_VS_CONN_F_MASQ)
    lab.send(tcp(CLI, 3456, VIP, 80, flags="S"))
    assert lab.d.xmit_to is None
    assert lab.send(tcp(RS, 80, CLI, 3456, flags="SA")) == NF_STOLEN


def test_direct_replies_seen_by_the_director_are_counted_not_rewritten():
    """Kernel 5.10+ ("inspect reply packets from DR/TUN real servers"):
    when the director sees a DR/TUN real server's reply from the VIP (as
    its gateway), ip_vs_out finds the connection by VIP:vport, counts the
    reply and walks the TCP states with it (the first reply clears
    NOOUTPUT), and lets the host forward it unchanged."""
    for fwd in (uapi.IP_VS_CONN_F_DROUTE, uapi.IP_VS_CONN_F_TUNNEL):
        lab = lab_with(fwd)
        lab.send(tcp(CLI, 3456, VIP, 80, flags="S"))
        lab.d.xmit_to = None
        [cp] = lab.conns()
        reply = tcp(VIP, 80, CLI, 3456, flags="SA")
        before = bytes(reply)
        assert lab.send(reply) == NF_ACCEPT
        assert bytes(reply) == before and lab.d.xmit_to is None
        assert not cp.flags & uapi.IP_VS_CONN_F_NOOUTPUT
        assert cp.dest.stats.outpkts == 1 and cp.dest.stats.outbytes == len(before)
        lab.send(tcp(CLI, 3456, VIP, 80, flags="A"))
        assert lab.tcp_states[cp.state] == "ESTABLISHED"
        lab.send(tcp(VIP, 80, CLI, 3456, flags="FA"))
        assert lab.tcp_states[cp.state] == "FIN_WAIT"  # the normal table: the server closed first
        # One whose TTL runs out is the host's (ip_forward drops it before the hook).
        assert lab.send(tcp(VIP, 80, CLI, 3456, flags="A", ttl=1)) == NF_ACCEPT
        assert cp.dest.stats.outpkts == 2


def test_icmp_error_from_a_dr_real_server_is_counted_and_forwarded():
    lab = lab_with(uapi.IP_VS_CONN_F_DROUTE)
    lab.send(tcp(CLI, 3456, VIP, 80, flags="S"))
    [cp] = lab.conns()
    quoted = bytes(tcp(CLI, 3456, VIP, 80, flags="S"))[:28]
    err = icmp_error(RS, CLI, quoted, type_=3, code=3)
    before = bytes(err)
    assert lab.send(err) == NF_ACCEPT and bytes(err) == before
    assert cp.dest.stats.outpkts == 1


def test_nat_connections_keep_their_out_key():
    lab = lab_with(uapi.IP_VS_CONN_F_MASQ)
    lab.send(tcp(CLI, 3456, VIP, 80, flags="S"))
    # A packet from VIP:80 is no reply of a NAT connection.
    assert lab.send(tcp(VIP, 80, CLI, 3456, flags="SA")) == NF_ACCEPT
    [cp] = lab.conns()
    assert cp.dest.stats.outpkts == 0


# ------------------------------------------------------------------ IPv6

VIP6, CLI6, RS6, DIR6 = "2001:db8:f::5", "2001:db8:1::2", "2001:db8:2::2", "2001:db8:2::1"


def lab6_with(fwd, vip=VIP6, rs=RS6, tun_type=0, tun_port=0):
    """A service on ``vip`` with one real server ``rs`` (of either family)."""
    lab = Lab()
    lab.d.own_address = lambda dst: A(DIR6) if len(dst) == 16 else A(DIR)
    su = lab.service(vip, 80, sched="rr")
    af = uapi.AF_INET6 if ":" in rs else uapi.AF_INET
    ctl.add_dest(lab.ipvs, su, ctl.DestUser(af=af, addr=A(rs), port=80, conn_flags=fwd, tun_type=tun_type,
                                            tun_port=tun_port))
    return lab


def tcp6(src, sport, dst, dport, flags="S", hlim=64):
    return bytearray(bytes(IPv6(src=src, dst=dst, hlim=hlim) / TCP(sport=sport, dport=dport, flags=flags)))


def test_dr6_syn_goes_to_the_real_server_unchanged():
    lab = lab6_with(uapi.IP_VS_CONN_F_DROUTE)
    buf = tcp6(CLI6, 3456, VIP6, 80)
    before = bytes(buf)
    assert lab.send(buf) == NF_STOLEN
    [cp] = lab.conns()
    assert lab.d.xmit_to is cp and cp.daddr == A(RS6)
    assert bytes(buf) == before[:7] + b"\x3f" + before[8:]
    assert cp.flags & uapi.IP_VS_CONN_F_NOOUTPUT and lab.tcp_states[cp.state] == "SYN_RECV"
    assert not lab.ipvs.drops


def test_tun6_ip6ip6_from_the_directors_address():
    lab = lab6_with(uapi.IP_VS_CONN_F_TUNNEL)
    buf = tcp6(CLI6, 3456, VIP6, 80)
    n = len(buf)
    assert lab.send(buf) == NF_STOLEN
    o = IPv6(bytes(buf))
    assert (o.src, o.dst, o.nh, o.plen, o[IPv6:2].dst) == (DIR6, RS6, 41, n, VIP6)
    assert lab.d.xmit_to is lab.conns()[0]


def test_tun_mixed_families_both_ways():
    """ip_vs_bind_xmit: a tunnel's transmitter goes by the real server's
    family: an IPv4 service tunnels in IPv6 to an IPv6 real server, an
    IPv6 service in IPv4 to an IPv4 one."""
    lab = lab6_with(uapi.IP_VS_CONN_F_TUNNEL, vip=VIP, rs=RS6)
    buf = tcp(CLI, 3456, VIP, 80)
    assert lab.send(buf) == NF_STOLEN
    o = IPv6(bytes(buf))
    assert (o.src, o.dst, o.nh, o[IP].dst) == (DIR6, RS6, 4, VIP)
    [cp] = lab.conns()
    assert (cp.af, cp.daf, lab.d._conn_text(cp)) == (2, 10, f"TCP {CLI}:3456 -> {VIP}:80 => {RS6}:80")
    lab = lab6_with(uapi.IP_VS_CONN_F_TUNNEL, vip=VIP6, rs=RS)
    buf = tcp6(CLI6, 3456, VIP6, 80)
    assert lab.send(buf) == NF_STOLEN
    o = IP(bytes(buf))
    assert (o.src, o.dst, o.proto, o[IPv6].dst) == (DIR, RS, 41, VIP6)


def test_mixed_families_only_for_tunnels():
    """ip_vs_genl_set_cmd: a real server of the other family than its
    service is accepted for tunnelling only, else EINVAL."""
    for fwd in (uapi.IP_VS_CONN_F_DROUTE, uapi.IP_VS_CONN_F_MASQ):
        with pytest.raises(ctl.IPVSError) as e:
            lab6_with(fwd, vip=VIP, rs=RS6)
        assert e.value.errno == errno.EINVAL


def test_dr6_direct_replies_are_counted_and_walk_the_states():
    for fwd in (uapi.IP_VS_CONN_F_DROUTE, uapi.IP_VS_CONN_F_TUNNEL):
        lab = lab6_with(fwd)
        lab.send(tcp6(CLI6, 3456, VIP6, 80))
        lab.d.xmit_to = None
        [cp] = lab.conns()
        reply = tcp6(VIP6, 80, CLI6, 3456, flags="SA")
        before = bytes(reply)
        assert lab.send(reply) == NF_ACCEPT and bytes(reply) == before and lab.d.xmit_to is None
        assert not cp.flags & uapi.IP_VS_CONN_F_NOOUTPUT
        assert cp.dest.stats.outpkts == 1 and cp.dest.stats.outbytes == len(before)
        lab.send(tcp6(CLI6, 3456, VIP6, 80, flags="A"))
        assert lab.tcp_states[cp.state] == "ESTABLISHED"
        # Hop limit 1: ip6_forward drops it before the hook.
        assert lab.send(tcp6(VIP6, 80, CLI6, 3456, flags="A", hlim=1)) == NF_ACCEPT
        assert cp.dest.stats.outpkts == 1


def test_icmpv6_errors_of_dr6_connections():
    """ip_vs_in_icmp_v6 passes an error from the client side on through
    cp->packet_xmit (one hop less, otherwise unchanged); one from the real
    server is only counted (handle_response_icmp)."""
    lab = lab6_with(uapi.IP_VS_CONN_F_DROUTE)
    lab.send(tcp6(CLI6, 3456, VIP6, 80))
    lab.d.xmit_to = None
    [cp] = lab.conns()
    quoted = bytes(IPv6(src=VIP6, dst=CLI6) / TCP(sport=80, dport=3456, flags="SA"))
    err = bytearray(bytes(IPv6(src="2001:db8:1::fe", dst=VIP6) / ICMPv6DestUnreach(code=1) / quoted))
    before = bytes(err)
    assert lab.send(err) == NF_STOLEN and lab.d.xmit_to is cp
    assert bytes(err) == before[:7] + b"\x3f" + before[8:]
    lab.d.xmit_to = None
    quoted = bytes(IPv6(src=CLI6, dst=VIP6) / TCP(sport=3456, dport=80))
    err = bytearray(bytes(IPv6(src=RS6, dst=CLI6) / ICMPv6DestUnreach(code=4) / quoted))
    before = bytes(err)
    assert lab.send(err) == NF_ACCEPT and bytes(err) == before
    assert cp.dest.stats.outpkts == 1


@pytest.mark.parametrize("fwd,rs,limit", [(uapi.IP_VS_CONN_F_TUNNEL, RS6, 1460), (uapi.IP_VS_CONN_F_TUNNEL, RS, 1480),
                                          (uapi.IP_VS_CONN_F_DROUTE, RS6, 1500)])
def test_a_reassembled_ipv6_packet_is_judged_by_its_largest_fragment(fwd, rs, limit):
    """__mtu_check_toobig_v6: with frag_max_size, the largest fragment and
    not the datagram's length meets the MTU the method leaves (1500 less
    the outer IPv6 or IPv4 header for a tunnel)."""
    for frag_max, whole, verdict in ((limit, 3000, NF_STOLEN), (limit + 1, 200, "ptb"), (0, limit + 1, "ptb")):
        lab = lab6_with(fwd, rs=rs)
        lab.d.mtu = 1500
        lab.d.frag_max = frag_max
        buf = bytearray(bytes(IPv6(src=CLI6, dst=VIP6) / TCP(sport=3456, dport=80, flags="S")
                              / bytes(whole - 60)))
        got = lab.send(buf)
        if verdict == NF_STOLEN:
            assert got == NF_STOLEN and not lab.ipvs.outbox
        else:
            [err] = lab.ipvs.outbox
            e = IPv6(bytes(err))
            assert got != NF_STOLEN and (e.src, e.dst, e[ICMPv6PacketTooBig].mtu) == (VIP6, CLI6, limit)
