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

from .conftest import ROOT, Lab, lab_mod, lab_up

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module", params=["spare", "shared"])
def lab(request):
    with lab_up(request.param, ipv6=True):
        yield Lab(request.param, request.param, False)


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
        assert lab_mod.gone(pid, 10)
        if lab.mode == "shared":
            tables = lab.run(lab_mod.NS_DIR, "nft", "list", "tables")
            assert "pyipvs" not in tables, "a killed ipvsd left its drop rules"
            # The kernel answers the VIPs itself now: refused at once, not dropped.
            for host in (lab.VIP, f"[{lab_mod.VIP6}]"):
                r = subprocess.run(lab_mod.nsexec(lab_mod.NS_CLIENT, "curl", "-s", "-m", "5", f"http://{host}:9/"),
                                   capture_output=True, timeout=30)
                assert r.returncode == 7, f"curl exit {r.returncode}: the traffic of {host} is dropped"
        lab_mod.wait_answering(lab_mod.start("director", lab_mod.NS_DIR, lab_mod.director_cmd(lab.mode, False, ipv6=True),
                                             env={"PYTHONPATH": ROOT}))
        assert _rules() == before
    finally:
        if ab.poll() is None:
            ab.kill()
        ab.wait(30)
    for host in (lab.VIP, f"[{lab_mod.VIP6}]"):
        out = lab.client("curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", f"http://{host}/")
        assert out == "200", host
