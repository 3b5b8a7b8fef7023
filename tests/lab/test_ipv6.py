"""End to end over IPv6: VS/NAT with real clients and servers, the lab's
IPv6 plan (``ipvs-lab up --ipv6``), in spare mode (the director's kernel
has IPv6 off and ipvsd answers neighbour discovery on its ports) and in
shared mode (the kernel holds the director's addresses and the VIP, and
ipvsd's ``ip6 pyipvs`` table keeps it off the stolen traffic).

curl and ab reach the IPv6 VIP and the answers come back from it; the
port mapping 80 -> 8000 holds; UDP goes both ways; an ICMPv6 port
unreachable from a real server reaches the client rewritten
(``ip_vs_out_icmp_v6``); a packet whose hop limit runs out at the
director gets its time exceeded from the VIP (``decrement_ttl``).
"""

from __future__ import annotations

import socket
import subprocess
import time

import pytest

from .conftest import MODES, Lab, _skip_reason, lab_mod, netns, socket_in, udp_echo

pytestmark = pytest.mark.lab

VIP6 = lab_mod.VIP6
SERVER_OF = {f"[{lab_mod.RS6['rs1']}]:80": "rs1", f"[{lab_mod.RS6['rs2']}]:8000": "rs2"}


@pytest.fixture(scope="module", params=["spare", "strict", "shared"])
def lab6(request):
    """The lab with its IPv6 plan, offloads on (spare), checksums in
    software on the whole path (strict: a wrong checksum is dropped by
    the receivers and counted), or in shared mode."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    mode, strict = MODES[request.param]
    try:
        lab_mod.up(mode, strict, ipv6=True)
        yield Lab(f"ipv6-{request.param}", mode, strict)
    finally:
        lab_mod.down()


def _csum_errors(lab) -> dict[str, int]:
    """The receivers' IPv6 checksum error counters (client and real servers)."""
    return lab.csum_errors("TcpInCsumErrors", "Udp6InCsumErrors", "Icmp6InCsumErrors")


def test_curl_over_ipv6_reaches_both_real_servers_with_the_port_mapping(lab6):
    got = [lab6.client("curl", "-s", "-m", "5", f"http://[{VIP6}]/").strip().removeprefix("server=")
           for _ in range(6)]
    assert set(got) == {"rs1", "rs2"}
    # wlc with weights 1 and 2 over sequential connections: rs2 twice as often.
    assert got.count("rs2") == 2 * got.count("rs1")
    seen = {(c["virtual"], c["destination"]) for c in lab6.conns() if c["pro"] == "TCP"}
    assert (f"[{VIP6}]:80", f"[{lab_mod.RS6['rs2']}]:8000") in seen
    assert (f"[{VIP6}]:80", f"[{lab_mod.RS6['rs1']}]:80") in seen


def test_ab_over_ipv6(lab6):
    before = _csum_errors(lab6)
    fields = lab6.ab(f"http://[{VIP6}]/", 2000, 20)
    assert int(fields["Complete requests"]) == 2000
    assert int(fields["Failed requests"]) == 0
    assert _csum_errors(lab6) == before


def test_closed_ports_and_ping_on_the_ipv6_vip(lab6):
    """A port of the VIP that is no service is refused at once (the driver
    answers in spare mode, and in shared mode too, where the ip6 table
    hides TCP to the VIP from the kernel); pings to the VIP are answered,
    in shared mode by the kernel, also a fragmented one (the table passes
    the ICMPv6 fragments); in spare mode the driver's reply to the large
    one leaves in fragments."""
    r = subprocess.run(lab_mod.nsexec(lab_mod.NS_CLIENT, "curl", "-s", "-m", "5", f"http://[{VIP6}]:9/"),
                       capture_output=True, timeout=30)
    assert r.returncode == 7, f"curl exit {r.returncode}: not refused"
    for size in ("56", "3000"):
        lab6.client("ping", "-6", "-n", "-c", "1", "-W", "3", "-s", size, VIP6)
    if lab6.mode == "shared":
        out = lab6.run(lab_mod.NS_DIR, "nft", "list", "table", "ip6", "pyipvs")
        assert "flags owner" in out and VIP6 in out


def test_udp_over_ipv6_both_ways(lab6):
    names = set()
    for i in range(4):
        name, echo, peer = udp_echo(VIP6, 7, b"ping %d" % i)
        assert peer[:2] == (VIP6, 7) and echo == b"ping %d" % i
        names.add(name)
    assert names == {b"rs1", b"rs2"}


def test_fragmented_udp_over_ipv6_both_ways(lab6):
    """3000-byte datagrams: fragmented by the client, reassembled, NATed and
    fragmented again by the director (IPv6 routers never fragment, but the
    kernel's nf_defrag_ipv6 + ip6_fragment do around IPVS), and the same
    for the real server's echo."""
    payload = bytes(range(256)) * 12
    name, echo, _peer = udp_echo(VIP6, 7, payload)
    assert name in (b"rs1", b"rs2") and echo == payload


def test_icmpv6_port_unreachable_from_a_real_server_reaches_the_client_rewritten(lab6):
    lab6.ipvsadm("-A", "-u", f"[{VIP6}]:9", "-s", "rr")
    try:
        lab6.ipvsadm("-a", "-u", f"[{VIP6}]:9", "-r", f"[{lab_mod.RS6['rs1']}]:9", "-m")
        time.sleep(0.3)  # the driver follows the service table at its next idle pass
        s = socket_in(lab_mod.NS_CLIENT, socket.SOCK_DGRAM, socket.AF_INET6)
        try:
            s.settimeout(3)
            s.connect((VIP6, 9))
            s.send(b"anyone?")
            # Only an error from the VIP quoting client -> VIP:9 (rewritten
            # back from rs1:9) reaches this connected socket as ECONNREFUSED.
            with pytest.raises(ConnectionRefusedError):
                s.recv(100)
        finally:
            s.close()
    finally:
        lab6.ipvsadm("-D", "-u", f"[{VIP6}]:9")


def test_hop_limit_spent_at_the_director_is_answered_from_the_vip(lab6):
    """A SYN to the service with hop limit 1 is forwarded by IPVS, whose
    decrement_ttl answers it with an ICMPv6 time exceeded from the VIP,
    quoting the SYN."""
    with netns(lab_mod.NS_CLIENT):
        raw = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        raw.settimeout(3)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 1)
        s.setblocking(False)
        s.connect_ex((VIP6, 80))
        deadline = time.monotonic() + 3
        got = None
        while time.monotonic() < deadline:
            data, peer = raw.recvfrom(2048)
            if data[0] == 3:  # ICMPV6_TIME_EXCEED (raw ICMPv6 sockets get the message only)
                got = (data, peer)
                break
        assert got is not None, "no time exceeded"
        data, peer = got
        assert peer[0] == VIP6 and data[1] == 0
        quoted_dst = socket.inet_ntop(socket.AF_INET6, data[8 + 24 : 8 + 40])
        assert quoted_dst == VIP6 and data[8 + 40 + 2 : 8 + 40 + 4] == (80).to_bytes(2, "big")
    finally:
        s.close()
        raw.close()


@pytest.mark.parametrize("passive", [True, False], ids=["epsv", "eprt"])
def test_ftp_over_ipv6_in_both_modes(lab6, passive):
    """ftplib over IPv6 speaks EPSV (passive) and EPRT |2| (active); the
    helper expects the data connection in both, the file arrives whole, and
    ``ipvsadm -Lnc`` lists the data connection it expected."""
    import ftplib
    import importlib.util
    import io

    if importlib.util.find_spec("pyftpdlib") is None:
        pytest.skip("pyftpdlib is not installed: no FTP server on rs2")
    got = io.BytesIO()
    with netns(lab_mod.NS_CLIENT):
        f = ftplib.FTP()
        try:
            f.connect(VIP6, 21, timeout=10)
            f.login()
            f.set_pasv(passive)
            f.retrbinary("RETR hello.txt", got.write)
            f.quit()
        finally:
            f.close()
    assert got.getvalue() == b"hello from rs2 over FTP\n"
    rs2 = lab_mod.RS6["rs2"]
    data = [c for c in lab6.conns() if c["pro"] == "TCP" and c["destination"].startswith(f"[{rs2}]:")
            and not c["destination"].endswith("]:21")]
    if passive:
        assert any(c["virtual"].startswith(f"[{VIP6}]:5") and c["destination"].startswith(f"[{rs2}]:5")
                   for c in data), data
    else:
        assert any(c["virtual"] == f"[{VIP6}]:20" and c["destination"] == f"[{rs2}]:20" for c in data), data
