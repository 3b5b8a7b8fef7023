"""SIGKILL of ipvsd under load, in both NIC modes (issue 13), with IPv4
and IPv6 services (the lab's IPv6 plan).

After the kill nothing may be left that drops traffic (in shared mode
neither the ip nor the ip6 table: the kernel answers both VIPs itself, a
refused connection, not a timeout), and a restart serves the same rules
with nobody re-adding them (the state file).  The load is ``ab`` from the
client namespace, bounded in count and time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from .conftest import ROOT, Lab, _skip_reason, lab_mod

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module", params=["spare", "shared"])
def lab(request):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    try:
        lab_mod.up(request.param, False, ipv6=True)
        yield Lab(request.param, request.param, False)
    finally:
        lab_mod.down()


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _rules() -> str:
    return lab_mod.ipvsadm("-Sn").stdout


def test_sigkill_under_load_leaves_no_drop_and_restarts_with_the_rules(lab):
    before = _rules()
    assert f"-A -t {lab.VIP}:80" in before and f"-A -t [{lab_mod.VIP6}]:80" in before
    if lab.mode == "shared":
        tables = lab.run(lab_mod.NS_DIR, "nft", "list", "tables")
        assert "table ip pyipvs" in tables and "table ip6 pyipvs" in tables
    state = os.path.join(lab_mod.STATE, "ipvsadm.rules")
    deadline = time.monotonic() + 10
    while not (os.path.exists(state) and open(state).read().endswith(before)):
        assert time.monotonic() < deadline, "the state file never held the rules"
        time.sleep(0.1)
    ab = subprocess.Popen(lab_mod.nsexec(lab_mod.NS_CLIENT, "ab", "-q", "-r", "-n", "200000", "-c", "16", "-s", "2",
                                         "-t", "20", f"http://{lab.VIP}/"),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.5)  # mid-load
        pid = lab_mod.read_pid("director")
        os.kill(pid, signal.SIGKILL)
        assert _gone(pid)
        if lab.mode == "shared":
            tables = lab.run(lab_mod.NS_DIR, "nft", "list", "tables")
            assert "pyipvs" not in tables, "a killed ipvsd left its drop rules"
            # The kernel answers the VIPs itself now: refused at once, not dropped.
            for host in (lab.VIP, f"[{lab_mod.VIP6}]"):
                r = subprocess.run(lab_mod.nsexec(lab_mod.NS_CLIENT, "curl", "-s", "-m", "5", f"http://{host}:9/"),
                                   capture_output=True, timeout=30)
                assert r.returncode == 7, f"curl exit {r.returncode}: the traffic of {host} is dropped"
        lab_mod.start("director", lab_mod.NS_DIR, lab_mod.director_cmd(lab.mode, False, ipv6=True),
                      env={"PYTHONPATH": ROOT})
        deadline = time.monotonic() + 30
        while lab_mod.ipvsadm("-Ln", check=False).returncode != 0:
            assert time.monotonic() < deadline, lab_mod.log_tail("director", 2000)
            time.sleep(0.1)
        assert _rules() == before
    finally:
        if ab.poll() is None:
            ab.kill()
        ab.wait(30)
    for host in (lab.VIP, f"[{lab_mod.VIP6}]"):
        out = lab.client("curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", f"http://{host}/")
        assert out == "200", host
