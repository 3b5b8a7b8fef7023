"""End to end: a real server that does not exist gives the client "No route to host".

A service whose only destination is 172.16.0.5, an address of the real
servers' subnet where nobody answers ARP: the driver resolves it three
times, a second apart, then answers each SYN that waited with an ICMP host
unreachable, rewritten by the core's LOCAL_OUT pass so that it comes from
the VIP and quotes VIP:port.  The client's connect() fails with
EHOSTUNREACH after about three seconds instead of timing out (and curl
exits 7), as with the kernel (the sched_sh golden).  Spare and shared
modes (the error is the driver's in both).
"""

from __future__ import annotations

import errno
import re
import time

import pytest

from .conftest import lab_mod, socket_in

pytestmark = pytest.mark.lab

VIP = lab_mod.VIP
PORT = 8181
ABSENT = "172.16.0.5"


def _out_stats(lab, rip: str) -> tuple[int, int]:
    """(OutPkts, OutBytes) of one destination, from ``ipvsadm -Ln --stats --exact``."""
    for line in lab.ipvsadm("-Ln", "--stats", "--exact").splitlines():
        f = line.split()
        if len(f) >= 7 and f[0] == "->" and f[1] == f"{rip}:80":
            return int(f[4]), int(f[6])
    raise AssertionError(f"{rip}:80 is not listed")


@pytest.mark.parametrize("lab", ["spare", "shared"], indirect=True)
def test_connection_to_an_absent_real_server_fails_fast_with_host_unreachable(lab):
    lab.ipvsadm("-A", "-t", f"{VIP}:{PORT}", "-s", "rr")
    try:
        lab.ipvsadm("-a", "-t", f"{VIP}:{PORT}", "-r", f"{ABSENT}:80", "-m")
        time.sleep(0.3)  # the driver follows the service table at its next idle pass
        s = socket_in(lab_mod.NS_CLIENT)
        try:
            s.settimeout(15)
            t0 = time.monotonic()
            with pytest.raises(OSError) as exc:
                s.connect((VIP, PORT))
            took = time.monotonic() - t0
        finally:
            s.close()
        assert exc.value.errno == errno.EHOSTUNREACH, exc.value
        # Three ARP requests a second apart, then the error: not the minutes
        # of SYN retransmissions a silent drop would cost.
        assert 2.5 <= took < 8, took
        r = lab.run(lab_mod.NS_CLIENT, "sh", "-c", f"curl -sS -m 15 http://{VIP}:{PORT}/ 2>&1; echo rc=$?",
                    timeout=30)
        # curl 7.88 words EHOSTUNREACH "Couldn't connect to server" (exit 7,
        # CURLE_COULDNT_CONNECT); what matters is that it fails at once.
        m = re.search(r"after (\d+) ms", r)
        assert "rc=7" in r and m and int(m.group(1)) < 8000, r
        # The errors count as the destination's outgoing traffic
        # (ip_vs_out_stats): one 88-byte error per SYN that waited, at least
        # the first two of each attempt.  The listing shows the estimator's
        # snapshot, at most 2 s old: the first attempt is in it by now.
        pkts, nbytes = _out_stats(lab, ABSENT)
        assert pkts >= 2 and nbytes == 88 * pkts
    finally:
        lab.ipvsadm("-D", "-t", f"{VIP}:{PORT}")
