"""End to end through direct routing and tunnelling (``ipvs-lab up --method``):
real clients (curl, ab, UDP sockets) and real servers (nginx, UDP echo)
that hold the VIP themselves and answer the client directly; over IPv4,
and over IPv6 (``--ipv6``: the IPv6 VIP on the real servers' ``lo`` or
tun device, IPv6-in-IPv6, GUE and GRE over IPv6, Packet Too Big with the
tunnel's overhead, the director routing the direct replies).

DR: the real servers hold the VIP on ``lo``.  TUN: on a tun device fed by
the user-space decapsulator (:mod:`ipvs_harness.decap`) for IPIP, GUE
(with and without its checksum, and with remote checksum offload) and GRE
(with and without its checksum).  Each variant runs in spare mode; some
in shared mode (the director's kernel keeps its addresses; DR also over
IPv6, behind ipvsd's ip6 nftables table) and strict mode
(software checksums on the whole path: the receivers' checksum error
counters must not move, and a wrong outer UDP checksum would be dropped
by the real server's kernel before the decapsulator saw it).
"""

from __future__ import annotations

import errno
import os
import socket
import time

import pytest

from .conftest import MODES, Lab, _skip_reason, lab_mod, socket_in, udp_echo

pytestmark = pytest.mark.lab

#: (method, mode, IPv6): the IPv6 ones run the lab with ``--ipv6`` and
#: test its IPv6 services, by the same method.
VARIANTS = [
    ("dr", "spare", False), ("dr", "shared", False), ("dr", "strict", False),
    ("ipip", "spare", False), ("ipip", "shared", False), ("ipip", "strict", False),
    ("gue", "spare", False), ("gue-csum", "strict", False), ("gue-remcsum", "spare", False),
    ("gre", "spare", False), ("gre-csum", "strict", False),
    ("dr", "spare", True), ("dr", "shared", True), ("ipip", "strict", True), ("gue-remcsum", "spare", True),
    ("gre-csum", "spare", True),
]
FORWARD_NAME = {"dr": "Route"}


@pytest.fixture(scope="module", params=VARIANTS, ids=[f"{m}-{n}{'-ipv6' * v6}" for m, n, v6 in VARIANTS])
def flab(request):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    method, name, ipv6 = request.param
    mode, strict = MODES[name]
    try:
        lab_mod.up(mode, strict, ipv6=ipv6, method=method)
        lab = Lab(name, mode, strict)
        lab.method, lab.ipv6 = method, ipv6
        #: The service's address, as a URL's host and in ipvsadm's listings.
        lab.vip = lab_mod.VIP6 if ipv6 else lab_mod.VIP
        lab.host = f"[{lab.vip}]" if ipv6 else lab.vip
        lab.rs = [f"[{lab_mod.RS6[n]}]" for n in ("rs1", "rs2")] if ipv6 else ["172.16.0.2", "172.16.0.3"]
        yield lab
    finally:
        lab_mod.down()


def _csum_errors(lab) -> dict:
    return lab.csum_errors(*(("TcpInCsumErrors", "Udp6InCsumErrors") if lab.ipv6 else ()))


def test_listing_names_the_method(flab):
    out = flab.ipvsadm("-Ln")
    want = FORWARD_NAME.get(flab.method, "Tunnel")
    rows = [line.split() for line in out.splitlines()
            if line.strip().startswith("->") and line.split()[1].startswith(tuple(flab.rs))]
    assert len(rows) == 4 and {r[2] for r in rows} == {want}


def test_curl_reaches_both_real_servers(flab):
    before = _csum_errors(flab)
    got = [flab.client("curl", "-s", "-m", "5", f"http://{flab.host}/").strip() for _ in range(6)]
    # wlc over weights 1 and 2 with every connection finished: rs2 twice as often.
    assert sorted(got) == ["server=rs1"] * 2 + ["server=rs2"] * 4
    conns = [c for c in flab.conns() if c["pro"] == "TCP" and c["virtual"].startswith(flab.host)]
    assert {c["destination"] for c in conns} == {f"{rs}:80" for rs in flab.rs}
    assert {c["virtual"] for c in conns} == {f"{flab.host}:80"}
    # The director is the real servers' gateway, so it sees their direct
    # replies: ip_vs_out counts them and walks the states with them (5.10+),
    # and the connections close as through NAT (the client-only states would
    # stop at FIN_WAIT).
    assert "TIME_WAIT" in {c["state"] for c in conns}
    assert _csum_errors(flab) == before


def test_ab_2000_short_connections(flab):
    before = _csum_errors(flab)
    fields = flab.ab(f"http://{flab.host}/", 2000, 20)
    assert int(fields["Complete requests"]) == 2000
    assert int(fields["Failed requests"]) == 0
    assert _csum_errors(flab) == before


def test_udp_echo_from_both(flab):
    names = set()
    for i in range(4):
        name, echo, peer = udp_echo(flab.vip, 7, b"ping %d" % i)
        assert peer[:2] == (flab.vip, 7) and echo == b"ping %d" % i
        names.add(name)
    assert names == {b"rs1", b"rs2"}


def test_fragmented_udp(flab):
    """3000-byte datagrams: reassembled by the director, forwarded (and for
    TUN wrapped, then fragmented as the outer packet), answered directly.
    Over an IPv6 tunnel the client's 1500-byte fragments are too big for
    the path less the tunnel's overhead: as the kernel does
    (``__mtu_check_toobig_v6`` with ``frag_max_size``), the director
    answers Packet Too Big from the VIP (the connected socket reports
    EMSGSIZE), and the client's kernel, having learnt the path MTU, sends
    the next datagram in smaller fragments."""
    payload = bytes(range(256)) * 12
    if flab.ipv6 and flab.method != "dr" and _client_path_mtu6(flab.vip) == 1500:
        with pytest.raises(OSError) as err:
            udp_echo(flab.vip, 7, payload, timeout=2)
        assert err.value.errno == errno.EMSGSIZE
        # (A reassembled datagram's checksum is never partial: no remote
        # checksum offload option in the overhead.)
        assert _client_path_mtu6(flab.vip) == TUNNEL_MTU6[flab.method.replace("-remcsum", "")]
    name, echo, _peer = udp_echo(flab.vip, 7, payload)
    assert name in (b"rs1", b"rs2") and echo == payload


def test_100mb_download_intact(flab):
    if (flab.method, flab.name, flab.ipv6) not in (("dr", "spare", False), ("gue-remcsum", "spare", False),
                                                   ("gre-csum", "strict", False), ("ipip", "strict", True)):
        pytest.skip("the large download runs in four variants only (the replies bypass IPVS in all)")
    want = open(os.path.join(lab_mod.STATE, "www", "big.bin.sha256")).read().split()[0]
    before = _csum_errors(flab)
    out = flab.client("sh", "-c", f"curl -s -m 60 http://{flab.host}/big.bin | sha256sum", timeout=90)
    assert out.split()[0] == want
    assert _csum_errors(flab) == before


#: The path MTU the client learns towards the VIP: 1500 less the tunnel's
#: overhead (a remote checksum offload option when the client's UDP
#: checksum is offloaded, as on these veths).
TUNNEL_MTU = {"dr": 1500, "ipip": 1480, "gue": 1468, "gue-csum": 1468, "gue-remcsum": 1460, "gre": 1476,
              "gre-csum": 1472}
#: Over IPv6 the outer header is 40 bytes, not 20.
TUNNEL_MTU6 = {m: mtu if m == "dr" else mtu - 20 for m, mtu in TUNNEL_MTU.items()}
IP_MTU_DISCOVER, IP_PMTUDISC_DO, IP_MTU = 10, 2, 14
IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO, IPV6_MTU = 23, 2, 24


def _client_path_mtu6(vip: str) -> int:
    """The path MTU the client's kernel holds towards ``vip`` (IPv6)."""
    s = socket_in(lab_mod.NS_CLIENT, socket.SOCK_DGRAM, socket.AF_INET6)
    try:
        s.connect((vip, 7))
        return s.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU)
    finally:
        s.close()


def test_path_mtu_through_the_tunnel(flab):
    """A full-size datagram (IPv4: DF): the director answers "fragmentation
    needed" (IPv6: Packet Too Big) with the MTU less the tunnel's overhead
    (from the VIP), and the client's kernel takes that as the path MTU;
    through DR it fits."""
    if flab.ipv6:
        family, level, opts, table, size = socket.AF_INET6, socket.IPPROTO_IPV6, (
            IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO, IPV6_MTU), TUNNEL_MTU6, 1452
    else:
        family, level, opts, table, size = socket.AF_INET, socket.IPPROTO_IP, (
            IP_MTU_DISCOVER, IP_PMTUDISC_DO, IP_MTU), TUNNEL_MTU, 1472
    discover, do, mtu = opts
    s = socket_in(lab_mod.NS_CLIENT, socket.SOCK_DGRAM, family)
    try:
        s.setsockopt(level, discover, do)
        s.settimeout(3)
        s.connect((flab.vip, 7))
        # As large as the path the client knows allows: 1500 bytes with its
        # headers, or what test_fragmented_udp taught it through an IPv6 tunnel.
        known = s.getsockopt(level, mtu)
        size -= 1500 - known
        s.send(b"m" * size)
        if flab.method == "dr":
            assert s.recv(2000).endswith(b"m" * size)
        elif known != table[flab.method]:
            deadline = time.monotonic() + 3
            while s.getsockopt(level, mtu) == known and time.monotonic() < deadline:
                time.sleep(0.05)
        assert s.getsockopt(level, mtu) == table[flab.method]
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
                      "-w", "%{http_code} %{size_upload}", f"http://{flab.host}/", timeout=60)
    assert out.split() == ["200", "3000000"]
    assert _csum_errors(flab) == before


def test_decapsulator_saw_its_tunnel_only(flab):
    """Stop rs1's decapsulator and read its counters: every packet of its
    own kind, none bad, and remote checksum offload applied where asked
    (the client's checksums are offloaded unless strict).  Runs last: the
    variant's lab goes down after it."""
    if flab.method == "dr":
        pytest.skip("no tunnel in DR")
    lab_mod.stop_pid(lab_mod.read_pid("decap-rs1"))
    line = lab_mod.log_tail("decap-rs1").splitlines()[-1]
    counts = dict(kv.split("=") for kv in line.split()[1:])
    kind = flab.method.split("-")[0] + ("6" if flab.ipv6 else "")  # (an outer IPv6 header: ipip6, gue6, gre6)
    assert int(counts.pop(kind)) > 0
    remcsum = int(counts.pop("remcsum", 0))
    assert counts == {}, line
    if flab.method == "gue-remcsum" and not flab.strict:
        assert remcsum > 0
