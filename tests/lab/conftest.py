"""The lab fixture: ``tools/ipvs-lab up`` in one of three ways, always torn down.

Needs root, ``ip netns``, nginx, curl and ab (``tools/bootstrap`` installs
them); otherwise every lab test is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODES = {
    "spare": ("spare", False),
    "shared": ("shared", False),
    "strict": ("spare", True),
}


# Namespaces of this test run's own (ipvst<pid>-client, ...), unless the
# caller chose a prefix: two runs at once, or a run beside a developer's
# ``ipvs-lab up``, must never share (and tear down) each other's lab.
os.environ.setdefault("IPVS_LAB_PREFIX", f"ipvst{os.getpid()}")


def _load_lab():
    import ipvs_harness.lab

    return ipvs_harness.lab


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "lab tests need root (network namespaces)"
    if shutil.which("ip") is None:
        return "lab tests need iproute2 (ip netns)"
    r = subprocess.run(["ip", "netns", "list"], capture_output=True)
    if r.returncode != 0:
        return "ip netns is not usable here"
    for tool in ("curl", "ab", "nft", "ethtool"):
        if shutil.which(tool) is None:
            return f"lab tests need {tool} (tools/bootstrap installs it)"
    if not os.path.exists(os.path.join(ROOT, "tools", "ipvsd")):
        return "tools/ipvsd is missing"
    return None


lab_mod = _load_lab()

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def netns(name: str):
    """Run the body in network namespace ``name`` (this thread only)."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        yield
    finally:
        _libc.setns(home, CLONE_NEWNET)
        os.close(fd)
        os.close(home)


def socket_in(ns: str, type_=socket.SOCK_STREAM, family=socket.AF_INET) -> socket.socket:
    """A socket of namespace ``ns`` (IPv4 unless ``family`` says otherwise)."""
    with netns(ns):
        return socket.socket(family, type_)


def udp_echo(addr: str, port: int, payload: bytes, timeout: float = 3) -> tuple[bytes, bytes, tuple]:
    """One datagram from the client to ``addr:port`` (either family) and
    the lab's UDP echo answer: (the server's name, the echo, the peer)."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket_in(lab_mod.NS_CLIENT, socket.SOCK_DGRAM, family)
    try:
        s.settimeout(timeout)
        s.connect((addr, port))
        s.send(payload)
        data, peer = s.recvfrom(65535)
    finally:
        s.close()
    name, _, echo = data.partition(b": ")
    return name, echo, peer


class Lab:
    """Handles for the tests: commands in the namespaces, listings."""

    mod = lab_mod
    VIP = lab_mod.VIP

    def __init__(self, name: str, mode: str, strict: bool) -> None:
        self.name, self.mode, self.strict = name, mode, strict

    def run(self, ns: str, *cmd: str, timeout: float = 120, check: bool = True) -> str:
        r = subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} in {ns} failed ({r.returncode}): {r.stderr.strip()}")
        return r.stdout

    def client(self, *cmd: str, **kw) -> str:
        return self.run(lab_mod.NS_CLIENT, *cmd, **kw)

    def ipvsadm(self, *args: str) -> str:
        return self.run(lab_mod.NS_DIR, sys.executable, os.path.join(ROOT, "tools", "ipvsadm"), *args)

    def conns(self) -> list[dict]:
        """``ipvsadm -Lnc`` as dicts: pro, expire (s), state, source, virtual, destination."""
        out = []
        for line in self.ipvsadm("-Lnc").splitlines()[2:]:
            f = line.split()
            if len(f) < 6:
                continue
            m, s = f[1].split(":")
            out.append({"pro": f[0], "expire": int(m) * 60 + int(s), "state": f[2], "source": f[3],
                        "virtual": f[4], "destination": f[5]})
        return out

    def dest_counts(self, vip_port: str) -> dict[str, tuple[int, int]]:
        """(ActiveConn, InActConn) per real server of one TCP service, from ``-Ln``."""
        counts, cur = {}, False
        for line in self.ipvsadm("-Ln").splitlines():
            if line.startswith(("TCP", "UDP")):
                cur = line.split()[1] == vip_port and line.startswith("TCP")
            elif cur and line.strip().startswith("->") and ":" in line:
                f = line.split()
                if f[1][0].isdigit():
                    counts[f[1]] = (int(f[4]), int(f[5]))
        return counts

    def csum_errors(self, *names: str) -> dict[str, int]:
        """The receivers' (the client's and the real servers') checksum
        error counters, IPv4's TCP and UDP ones unless ``names`` says."""
        names = names or ("TcpInCsumErrors", "UdpInCsumErrors")
        return {f"{ns}:{k}": v for ns in (lab_mod.NS_CLIENT, lab_mod.NS_RS1, lab_mod.NS_RS2)
                for k, v in self.nstat(ns, *names).items()}

    def ab(self, url: str, n: int, c: int) -> dict[str, str]:
        """``ab -n N -c C URL`` from the client (bounded: 20 s per request,
        180 s in all); its report's fields, after checking it ran."""
        r = subprocess.run(["ip", "netns", "exec", lab_mod.NS_CLIENT, "ab", "-q", "-n", str(n), "-c", str(c),
                            "-s", "20", url], capture_output=True, text=True, timeout=180)
        diag = (f"ab: {r.stderr.strip()}\n{r.stdout[-1500:]}\nclient: "
                f"{self.nstat(lab_mod.NS_CLIENT, 'TcpRetransSegs', 'TcpExtTCPSynRetrans', 'TcpExtTCPTimeouts')}")
        assert r.returncode == 0, diag
        return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in r.stdout.splitlines() if ":" in line)}

    def nstat(self, ns: str, *names: str) -> dict[str, int]:
        out = self.run(ns, "nstat", "-az", *names)
        vals = {}
        for line in out.splitlines():
            m = re.match(r"(\w+)\s+(\d+)", line)
            if m:
                vals[m.group(1)] = int(m.group(2))
        return vals


@contextlib.contextmanager
def lab_up(mode: str, strict: bool = False, **kw):
    """The lab up in ``mode`` (``lab_mod.up``'s other keywords: rules, ipv6,
    method) for a module's tests, and always torn down; the tests are
    skipped, with the reason, where it cannot run."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    try:
        lab_mod.up(mode, strict, **kw)
        yield
    finally:
        lab_mod.down()


@pytest.fixture(scope="module", params=list(MODES))
def lab(request):
    mode, strict = MODES[request.param]
    with lab_up(mode, strict):
        yield Lab(request.param, mode, strict)


#: The lab variants that run once per test command, in its PyPy pass, with
#: ipvsd on PyPy (the data path's runtime): the forwarding methods, IPv6,
#: the kernel selftest topologies, the soak and the rules' churn (which
#: is about PyPy's JIT).  tools/run-tests' CPython
#: pass sets PYIPVS_LAB_SCOPE=core and runs the rest of the lab (the seed's
#: lab in both modes, FTP, SIGKILL, cleanup, ldirectord) with ipvsd on
#: CPython; the two passes run side by side (tools/run-tests).
VARIANTS = {"test_fwd_methods.py", "test_ipv6.py", "test_selftest_ipvs.py", "test_soak.py", "test_churn.py"}


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYIPVS_LAB_SCOPE") != "core":
        return
    skip = pytest.mark.skip(reason="a lab variant: run in the test command's PyPy pass (PYIPVS_LAB_SCOPE=core)")
    here = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        # (This hook sees the whole session's items: tests/core has a
        # test_fwd_methods.py and a test_ipv6.py of its own.)
        if item.path.name in VARIANTS and str(item.path.parent) == here:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed lab test shows the end of the director's log: the lab's
    teardown deletes it, and what ipvsd said last (a traceback, or the
    stack of a fatal signal) is often the cause."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when != "call" or not rep.failed:
        return
    try:
        with open(os.path.join(lab_mod.STATE, "director.log"), errors="replace") as f:
            tail = f.read()[-3000:]
    except OSError:
        return
    rep.sections.append(("the end of the director's log", tail))
