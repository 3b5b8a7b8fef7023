"""End to end through direct routing and tunnelling (``ipvs-lab up --method``):
real clients (curl, ab, UDP sockets) and real servers (nginx, UDP echo)
that hold the VIP themselves and answer the client directly.

DR: the real servers hold the VIP on ``lo``.  TUN: on a tun device fed by
the user-space decapsulator (:mod:`ipvs_harness.decap`) for IPIP, GUE
(with and without its checksum, and with remote checksum offload) and GRE
(with and without its checksum).  Each variant runs in spare mode; some
in shared mode (the director's kernel keeps its addresses) and strict mode
(software checksums on the whole path: the receivers' checksum error
counters must not move, and a wrong outer UDP checksum would be dropped
by the real server's kernel before the decapsulator saw it).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from .conftest import MODES, Lab, _skip_reason, lab_mod, socket_in

pytestmark = pytest.mark.lab

VIP = lab_mod.VIP
VARIANTS = [
    ("dr", "spare"), ("dr", "shared"), ("dr", "strict"),
    ("ipip", "spare"), ("ipip", "shared"), ("ipip", "strict"),
    ("gue", "spare"), ("gue-csum", "strict"), ("gue-remcsum", "spare"),
    ("gre", "spare"), ("gre-csum", "strict"),
]
FORWARD_NAME = {"dr": "Route"}


@pytest.fixture(scope="module", params=VARIANTS, ids=[f"{m}-{n}" for m, n in VARIANTS])
def flab(request):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    method, name = request.param
    mode, strict = MODES[name]
    try:
        lab_mod.up(mode, strict, method=method)
        lab = Lab(name, mode, strict)
        lab.method = method
        yield lab
    finally:
        lab_mod.down()


def _csum_errors(lab) -> dict:
    return {ns: lab.nstat(ns, "TcpInCsumErrors", "UdpInCsumErrors")
            for ns in (lab_mod.NS_CLIENT, lab_mod.NS_RS1, lab_mod.NS_RS2)}


def test_listing_names_the_method(flab):
    out = flab.ipvsadm("-Ln")
    want = FORWARD_NAME.get(flab.method, "Tunnel")
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("->") and "172.16" in line]
    assert len(rows) == 4 and {r[2] for r in rows} == {want}


def test_curl_reaches_both_real_servers(flab):
    before = _csum_errors(flab)
    got = [flab.client("curl", "-s", "-m", "5", f"http://{VIP}/").strip() for _ in range(6)]
    # wlc over weights 1 and 2 with every connection finished: rs2 twice as often.
    assert sorted(got) == ["server=rs1"] * 2 + ["server=rs2"] * 4
    conns = [c for c in flab.conns() if c["pro"] == "TCP"]
    assert {c["destination"] for c in conns} == {"172.16.0.2:80", "172.16.0.3:80"}
    assert {c["virtual"] for c in conns} == {f"{VIP}:80"}
    # The director is the real servers' gateway, so it sees their direct
    # replies: ip_vs_out counts them and walks the states with them (5.10+),
    # and the connections close as through NAT (the client-only states would
    # stop at FIN_WAIT).
    assert "TIME_WAIT" in {c["state"] for c in conns}
    assert _csum_errors(flab) == before


def test_ab_2000_short_connections(flab):
    before = _csum_errors(flab)
    r = subprocess.run(["ip", "netns", "exec", lab_mod.NS_CLIENT, "ab", "-q", "-n", "2000", "-c", "20", "-s", "20",
                        f"http://{VIP}/"], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr + r.stdout[-1500:]
    fields = dict(line.split(":", 1) for line in r.stdout.splitlines() if ":" in line)
    assert int(fields["Complete requests"]) == 2000
    assert int(fields["Failed requests"]) == 0
    assert _csum_errors(flab) == before


def test_udp_echo_from_both(flab):
    names = set()
    for i in range(4):
        s = socket_in(lab_mod.NS_CLIENT, socket.SOCK_DGRAM)
        try:
            s.settimeout(3)
            s.connect((VIP, 7))
            s.send(b"ping %d" % i)
            data, peer = s.recvfrom(100)
        finally:
            s.close()
        assert peer == (VIP, 7)
        name, _, echo = data.partition(b": ")
        assert echo == b"ping %d" % i
        names.add(name)
    assert names == {b"rs1", b"rs2"}


def test_fragmented_udp(flab):
    """3000-byte datagrams: reassembled by the director, forwarded (and for
    TUN wrapped, then fragmented as the outer packet), answered directly."""
    payload = bytes(range(256)) * 12
    s = socket_in(lab_mod.NS_CLIENT, socket.SOCK_DGRAM)
    try:
        s.settimeout(3)
        s.connect((VIP, 7))
        s.send(payload)
        data = s.recv(65535)
    finally:
        s.close()
    name, _, echo = data.partition(b": ")
    assert name in (b"rs1", b"rs2") and echo == payload


def test_100mb_download_intact(flab):
    if (flab.method, flab.name) not in (("dr", "spare"), ("gue-remcsum", "spare"), ("gre-csum", "strict")):
        pytest.skip("the large download runs in three variants only (the replies bypass IPVS in all)")
    want = open(os.path.join(lab_mod.STATE, "www", "big.bin.sha256")).read().split()[0]
    before = _csum_errors(flab)
    out = flab.client("sh", "-c", f"curl -s -m 60 http://{VIP}/big.bin | sha256sum", timeout=90)
    assert out.split()[0] == want
    assert _csum_errors(flab) == before


#: The path MTU the client learns towards the VIP: 1500 less the tunnel's
#: overhead (a remote checksum offload option when the client's UDP
#: checksum is offloaded, as on these veths).
TUNNEL_MTU = {"dr": 1500, "ipip": 1480, "gue": 1468, "gue-csum": 1468, "gue-remcsum": 1460, "gre": 1476,
              "gre-csum": 1472}
IP_MTU_DISCOVER, IP_PMTUDISC_DO, IP_MTU = 10, 2, 14


def test_path_mtu_through_the_tunnel(flab):
    """A full-size DF datagram: the director answers "fragmentation
    needed" with the MTU less the tunnel's overhead (from the VIP), and
    the client's kernel takes that as the path MTU; through DR it fits."""
    s = socket_in(lab_mod.NS_CLIENT, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        s.settimeout(3)
        s.connect((VIP, 7))
        s.send(b"m" * 1472)  # 1500 bytes with its headers, DF
        if flab.method == "dr":
            assert s.recv(2000).endswith(b"m" * 1472)
        else:
            deadline = time.monotonic() + 3
            while s.getsockopt(socket.IPPROTO_IP, IP_MTU) == 1500 and time.monotonic() < deadline:
                time.sleep(0.05)
        assert s.getsockopt(socket.IPPROTO_IP, IP_MTU) == TUNNEL_MTU[flab.method]
    finally:
        s.close()


def test_upload_3mb(flab, tmp_path):
    """A 3 MB request body: the client's TCP sends GSO super-frames (offloads
    on), which the director passes whole for DR and cuts into segments
    before tunnelling for TUN (the kernel's tunnel GSO)."""
    body = tmp_path / "up.bin"
    body.write_bytes(os.urandom(3_000_000))
    before = _csum_errors(flab)
    out = flab.client("curl", "-s", "-m", "30", "--data-binary", f"@{body}", "-o", "/dev/null",
                      "-w", "%{http_code} %{size_upload}", f"http://{VIP}/", timeout=60)
    assert out.split() == ["200", "3000000"]
    assert _csum_errors(flab) == before


def test_decapsulator_saw_its_tunnel_only(flab):
    """Stop rs1's decapsulator and read its counters: every packet of its
    own kind, none bad, and remote checksum offload applied where asked
    (the client's checksums are offloaded unless strict).  Runs last: the
    variant's lab goes down after it."""
    if flab.method == "dr":
        pytest.skip("no tunnel in DR")
    pid = int(open(os.path.join(lab_mod.STATE, "decap-rs1.pid")).read())
    lab_mod.stop_pid(pid)
    line = open(os.path.join(lab_mod.STATE, "decap-rs1.log")).read().splitlines()[-1]
    counts = dict(kv.split("=") for kv in line.split()[1:])
    kind = flab.method.split("-")[0]
    assert int(counts.pop(kind)) > 0
    remcsum = int(counts.pop("remcsum", 0))
    assert counts == {}, line
    if flab.method == "gue-remcsum" and not flab.strict:
        assert remcsum > 0
