"""The kernel's own IPVS selftest, ``tools/testing/selftests/net/netfilter/ipvs.sh``,
with ipvsd (shared mode: the kernel keeps its addresses) in place of kernel IPVS.

Its topology, three namespaces joined by veth pairs::

    ns0 (client)             ns1 (director)               ns2 (real server)
    br0 = veth01 + veth02    veth10 <-> veth01            veth21 <-> veth12
    cip 198.51.100.2/24      gip 198.51.100.1/24          rip 172.16.0.2/24
                             dip 172.16.0.1/24 (veth12)   sip 198.51.100.3/24 (veth20 <-> veth02)

and its three cases, each on a fresh topology: DR (the real server holds
the VIP on ``lo`` with ``arp_ignore=1``/``arp_announce=2`` and answers the
client directly through veth20), NAT (veth20 deleted, the real server's
default route via the director) and TUN (IPIP; the real server's
decapsulation is :mod:`ipvs_harness.decap`, since this kernel has no
``ipip`` module, and the GUE and GRE tunnel types besides).  The test
itself is the selftest's: socat sends 32 random bytes to VIP:8080 and the
real server's socat must write the same bytes.

The addresses are the selftest's mapped into the project's lab ranges
(its 10.0.0.0/24 is 198.51.100.0/24 here, its VIP 207.175.44.110 is
203.0.113.110): traffic stays inside the namespaces either way.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from .conftest import ROOT, _skip_reason, lab_mod

pytestmark = pytest.mark.lab

PORT = 8080
VIP, CIP, GIP, DIP, RIP, SIP = ("203.0.113.110", "198.51.100.2", "198.51.100.1", "172.16.0.1", "172.16.0.2",
                                "198.51.100.3")
NS0, NS1, NS2 = (f"{lab_mod.PREFIX}-st{i}" for i in range(3))


def sh(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)
    if check and r.returncode:
        raise AssertionError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r


def nsx(ns: str, *cmd: str, **kw) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", ns, *cmd, **kw)


def sysctl(ns: str, **kv: str) -> None:
    for k, v in kv.items():
        nsx(ns, "sysctl", "-qw", f"{k.replace('__', '.')}={v}")


class Topology:
    """setup() and cleanup() of the selftest, plus ipvsd and the decapsulator."""

    def __init__(self, tmp) -> None:
        self.tmp = str(tmp)
        self.pids: list[int] = []

    def setup(self) -> None:
        for ns in (NS0, NS1, NS2):
            sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", "veth01", "netns", NS0, "type", "veth", "peer", "name", "veth10", "netns", NS1)
        sh("ip", "link", "add", "veth02", "netns", NS0, "type", "veth", "peer", "name", "veth20", "netns", NS2)
        sh("ip", "link", "add", "veth12", "netns", NS1, "type", "veth", "peer", "name", "veth21", "netns", NS2)
        for ns in (NS0, NS1, NS2):
            nsx(ns, "ip", "link", "set", "lo", "up")
            sysctl(ns, net__ipv6__conf__all__disable_ipv6="1")
        for cmd in (["link", "set", "veth01", "up"], ["link", "set", "veth02", "up"],
                    ["link", "add", "br0", "type", "bridge"], ["link", "set", "veth01", "master", "br0"],
                    ["link", "set", "veth02", "master", "br0"], ["link", "set", "br0", "up"],
                    ["addr", "add", f"{CIP}/24", "dev", "br0"]):
            nsx(NS0, "ip", *cmd)
        for cmd in (["link", "set", "veth10", "up"], ["addr", "add", f"{GIP}/24", "dev", "veth10"],
                    ["link", "set", "veth12", "up"], ["addr", "add", f"{DIP}/24", "dev", "veth12"]):
            nsx(NS1, "ip", *cmd)
        for cmd in (["link", "set", "veth21", "up"], ["addr", "add", f"{RIP}/24", "dev", "veth21"],
                    ["link", "set", "veth20", "up"], ["addr", "add", f"{SIP}/24", "dev", "veth20"]):
            nsx(NS2, "ip", *cmd)

    def start(self, name: str, ns: str, cmd: list[str], ready: str | None = None) -> None:
        log = os.path.join(self.tmp, f"{name}.log")
        with open(log, "w") as out:
            p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True,
                                 env={**os.environ, "PYTHONPATH": ROOT})
        self.pids.append(p.pid)
        deadline = time.monotonic() + 30
        while ready is not None and ready not in open(log).read():
            if p.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{name} did not start:\n{open(log).read()[-2000:]}")
            time.sleep(0.05)

    def ipvsd(self) -> None:
        """ipvsd in ns1 where the selftest has kernel IPVS (shared mode)."""
        self.start("ipvsd", NS1, [sys.executable, os.path.join(ROOT, "tools", "ipvsd"), "--foreground",
                                  "--no-state", "--outer", "veth10", "--outer-addr", f"{GIP}/24",
                                  "--inner", "veth12", "--inner-addr", f"{DIP}/24", "--mode", "shared"])
        lab_mod.wait_answering(self.pids[-1], self.ipvsadm, lambda: open(os.path.join(self.tmp, "ipvsd.log")).read()[-2000:])

    def ipvsadm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return nsx(NS1, sys.executable, os.path.join(ROOT, "tools", "ipvsadm"), *args, check=check)

    def cleanup(self) -> None:
        for pid in reversed(self.pids):
            lab_mod.stop_pid(pid, grace=10.0)
        for ns in (NS0, NS1, NS2):
            for tok in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                lab_mod.stop_pid(int(tok), grace=2.0)
            sh("ip", "netns", "del", ns, check=False)

    def test_service(self) -> None:
        """server_listen, client_connect, verify_data."""
        infile, outfile = os.path.join(self.tmp, "in"), os.path.join(self.tmp, "out")
        with open(infile, "wb") as f:
            f.write(os.urandom(32))
        with open(outfile, "wb") as out:
            server = subprocess.Popen(["ip", "netns", "exec", NS2, "timeout", "5", "socat", "-u", "-4",
                                       f"TCP-LISTEN:{PORT},reuseaddr", "STDOUT"], stdout=out)
        try:
            deadline = time.monotonic() + 5
            while not nsx(NS2, "ss", "-Hltn", f"sport = :{PORT}").stdout.strip():
                assert time.monotonic() < deadline, "socat does not listen"
                time.sleep(0.05)
            with open(infile, "rb") as f:
                r = subprocess.run(["ip", "netns", "exec", NS0, "timeout", "2", "socat", "-u", "-4", "STDIN",
                                    f"TCP:{VIP}:{PORT}"], stdin=f, capture_output=True, timeout=10)
            assert r.returncode == 0, r.stderr
            server.wait(timeout=10)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        assert open(outfile, "rb").read() == open(infile, "rb").read()
        # And it was ipvsd that forwarded it (nothing else could: the
        # director's kernel has no IPVS and ipvsd's rules hide the VIP's
        # ports from it).
        conns = self.ipvsadm("-Lnc").stdout
        assert f"{CIP}:" in conns and f"{VIP}:{PORT}" in conns and f"{RIP}:{PORT}" in conns, conns


@pytest.fixture
def topo(tmp_path):
    reason = _skip_reason() or (None if shutil.which("socat") else "the selftest needs socat")
    if reason:
        pytest.skip(reason)
    t = Topology(tmp_path)
    t.cleanup()  # leftovers of a killed run
    try:
        t.setup()
        yield t
    finally:
        t.cleanup()


def test_dr(topo):
    nsx(NS0, "ip", "route", "add", VIP, "via", GIP, "dev", "br0")
    sysctl(NS1, net__ipv4__ip_forward="1")
    topo.ipvsd()
    topo.ipvsadm("-A", "-t", f"{VIP}:{PORT}", "-s", "rr")
    topo.ipvsadm("-a", "-t", f"{VIP}:{PORT}", "-r", f"{RIP}:{PORT}")
    nsx(NS1, "ip", "addr", "add", f"{VIP}/32", "dev", "lo")
    sysctl(NS2, net__ipv4__conf__all__arp_ignore="1", net__ipv4__conf__all__arp_announce="2",
           net__ipv4__conf__all__rp_filter="0", net__ipv4__conf__veth21__rp_filter="0")
    nsx(NS2, "ip", "addr", "add", f"{VIP}/32", "dev", "lo")
    topo.test_service()
    assert "Route" in topo.ipvsadm("-Ln").stdout


def test_nat(topo):
    nsx(NS0, "ip", "route", "add", VIP, "via", GIP, "dev", "br0")
    sysctl(NS1, net__ipv4__ip_forward="1")
    topo.ipvsd()
    topo.ipvsadm("-A", "-t", f"{VIP}:{PORT}", "-s", "rr")
    topo.ipvsadm("-a", "-m", "-t", f"{VIP}:{PORT}", "-r", f"{RIP}:{PORT}")
    nsx(NS1, "ip", "addr", "add", f"{VIP}/32", "dev", "lo")
    nsx(NS2, "ip", "link", "del", "veth20")
    nsx(NS2, "ip", "route", "add", "default", "via", DIP, "dev", "veth21")
    topo.test_service()
    assert "Masq" in topo.ipvsadm("-Ln").stdout


@pytest.mark.parametrize("tun", [[], ["--tun-type", "gue", "--tun-port", "6080"], ["--tun-type", "gre"]],
                         ids=["ipip", "gue", "gre"])
def test_tun(topo, tun):
    nsx(NS0, "ip", "route", "add", VIP, "via", GIP, "dev", "br0")
    sysctl(NS1, net__ipv4__ip_forward="0", net__ipv4__conf__all__send_redirects="0",
           net__ipv4__conf__default__send_redirects="0")
    topo.ipvsd()
    topo.ipvsadm("-A", "-t", f"{VIP}:{PORT}", "-s", "rr")
    topo.ipvsadm("-a", "-i", "-t", f"{VIP}:{PORT}", "-r", f"{RIP}:{PORT}", *tun)
    nsx(NS1, "ip", "addr", "add", f"{VIP}/32", "dev", "lo")
    # (The selftest's "modprobe ipip; ip link set tunl0 up" on the real server.)
    kind = {"": ["--ipip"], "gue": ["--gue-port", "6080"], "gre": ["--gre"]}[tun[1] if tun else ""]
    topo.start("decap", NS2, [sys.executable, "-m", "ipvs_harness.decap", "--dev", "tunl0", "--addr",
                              f"{VIP}/32", *kind], ready="ready")
    sysctl(NS2, net__ipv4__conf__all__arp_ignore="1", net__ipv4__conf__all__arp_announce="2",
           net__ipv4__conf__all__rp_filter="0", net__ipv4__conf__tunl0__rp_filter="0",
           net__ipv4__conf__veth21__rp_filter="0")
    topo.test_service()
    assert "Tunnel" in topo.ipvsadm("-Ln").stdout
