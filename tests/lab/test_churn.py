"""Rules that change while traffic flows, as a health checker changes them.

ldirectord and keepalived add and delete services and real servers, edit
weights and, when they stop, remove everything, all on a director whose
data path has been busy (and, on PyPy, compiled by the JIT) for a while.
On PyPy 7.3.11 the last step once killed ipvsd with a segfault in the
JIT's code (``AFPacketDriver.sync_services``, docs/ipvsd.md).  Here, in the
shared-mode lab (whose change check also updates the nftables set):

1. while ``ab`` runs 3000 short connections to VIP:80, a second service,
   VIP:8080, is added, given real servers, edited and deleted over and
   over: every one of ab's requests is served;
2. while ``curl`` keeps asking VIP:80, the whole table is flushed and
   restored, again and again: ipvsd lives through it, and afterwards it
   holds the rules it started with and serves every request.

The churn goes through ipvsadm's own code in this process, on one
connection to the director, so that hundreds of changes take seconds, not
a process each.
"""

from __future__ import annotations

import io
import os
import subprocess
import time

import pytest

from ipvs.cli import ipvsadm
from ipvs.client import RUN_DIR, Client

from .conftest import lab_mod, lab_up

pytestmark = [pytest.mark.lab, pytest.mark.slow]

VIP = lab_mod.VIP
ROUNDS = 150  # of the second service's churn
FLUSHES = 40


@pytest.fixture(scope="module")
def shared_lab():
    with lab_up("shared"), Client(os.path.join(RUN_DIR, lab_mod.NS_DIR, "ipvsd.sock")) as client:
        yield client


def adm(client: Client, *args: str, stdin: str = "") -> str:
    """ipvsadm ``args`` through ``client``; its output (AssertionError on a failure)."""
    out, err = io.StringIO(), io.StringIO()
    rc = ipvsadm.main(list(args), transport=client, stdout=out, stderr=err, stdin=io.StringIO(stdin))
    assert rc == 0, (args, err.getvalue())
    return out.getvalue()


def director_alive() -> bool:
    with open(os.path.join(lab_mod.STATE, "director.pid")) as f:
        return lab_mod.alive(int(f.read()))


def curl(timeout: float = 3.0) -> subprocess.Popen:
    return subprocess.Popen(lab_mod.nsexec(lab_mod.NS_CLIENT, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                           "--max-time", str(timeout), f"http://{VIP}/"),
                            stdout=subprocess.PIPE, text=True)


def test_a_second_service_churns_while_ab_runs(shared_lab):
    ab = subprocess.Popen(lab_mod.nsexec(lab_mod.NS_CLIENT, "ab", "-q", "-n", "3000", "-c", "4", "-s", "10",
                                         f"http://{VIP}/"),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        svc = f"{VIP}:8080"
        rounds = 0
        while rounds < ROUNDS and ab.poll() is None:
            adm(shared_lab, "-A", "-t", svc, "-s", "wlc")
            adm(shared_lab, "-a", "-t", svc, "-r", "172.16.0.2:80", "-m", "-w", "1")
            adm(shared_lab, "-a", "-t", svc, "-r", "172.16.0.3:8000", "-m", "-w", "2")
            adm(shared_lab, "-e", "-t", svc, "-r", "172.16.0.2:80", "-m", "-w", "0")
            adm(shared_lab, "-d", "-t", svc, "-r", "172.16.0.3:8000")
            adm(shared_lab, "-D", "-t", svc)
            rounds += 1
        out, _ = ab.communicate(timeout=120)
    finally:
        if ab.poll() is None:
            ab.kill()
            ab.wait()
    print(f"{rounds} rounds of churn while ab ran")
    assert director_alive()
    assert rounds >= 10, f"ab ended after {rounds} rounds of churn: too few to say anything"
    assert ab.returncode == 0, out
    assert "Complete requests:      3000" in out and "Failed requests:        0" in out, out


def test_the_table_flushed_and_restored_under_requests(shared_lab):
    saved = adm(shared_lab, "-S", "-n")
    deadline = time.monotonic() + 60
    for _ in range(FLUSHES):
        # Requests keep the data path turning (and its loops compiled)
        # while the table goes empty and comes back.
        load = [curl(1.0) for _ in range(4)]
        adm(shared_lab, "-C")
        time.sleep(0.05)
        adm(shared_lab, "-R", stdin=saved)
        for p in load:
            p.communicate(timeout=30)
        assert director_alive(), "ipvsd died while its table was flushed and restored"
        assert time.monotonic() < deadline, "the flushes took more than a minute"
    assert adm(shared_lab, "-S", "-n") == saved
    codes = []
    for _ in range(10):
        out, _ = curl().communicate(timeout=30)
        codes.append(out)
    assert codes == ["200"] * 10, codes
