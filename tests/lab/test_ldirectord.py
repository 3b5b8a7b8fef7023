"""Debian's ldirectord keeps a PyIPVS service healthy (the lab, end to end).

ldirectord runs ``/sbin/ipvsadm`` (or ``/usr/sbin/ipvsadm``) by path.  Here it
runs in the director's namespace inside a mount namespace of its own, where
a bind mount puts a wrapper that starts PyIPVS's ipvsadm over
``/usr/sbin/ipvsadm``: nothing on the host changes (contrib/ipvsadm-divert
is the permanent way, tested in tests/contrib/).  The lab starts without
rules: ldirectord adds the virtual service and its real servers, quiesces a
real server whose HTTP server dies (weight 0), restores it when it
returns, and removes the service when it stops; clients are served
throughout (after the quiescing, every request).

Needs root, the lab's tools and Debian's ldirectord (tools/bootstrap).
Run with ``IPVS_LAB_PREFIX`` set to your own prefix.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.lab.conftest import ROOT, _skip_reason, lab_mod, lab_up

LDIRECTORD = "/usr/sbin/ldirectord"
VIP = lab_mod.VIP


def _reason() -> str | None:
    reason = _skip_reason()
    if reason:
        return reason
    if not os.access(LDIRECTORD, os.X_OK):
        return "needs Debian's ldirectord (tools/bootstrap installs it)"
    if not os.path.exists("/usr/sbin/ipvsadm") or shutil.which("unshare") is None:
        return "needs /usr/sbin/ipvsadm (Debian's ipvsadm, an ldirectord dependency) to bind over, and unshare"
    return None


pytestmark = [pytest.mark.lab, pytest.mark.slow]

CONFIG = """\
checktimeout=1
checkinterval=1
autoreload=no
quiescent=yes
cleanstop=yes
logfile="{log}"
virtual={vip}:80
\treal=172.16.0.2:80 masq 1
\treal=172.16.0.3:8000 masq 2
\tscheduler=wlc
\tprotocol=tcp
\tchecktype=connect
"""


@pytest.fixture(scope="module")
def bare_lab():
    reason = _reason()
    if reason:
        pytest.skip(reason)
    # shared: the director namespace's own stack has addresses on the lab's
    # networks, so ldirectord's health checks (kernel sockets) reach the real servers.
    with lab_up("shared", rules=False):
        yield lab_mod


def ipvsadm_ln() -> str:
    return lab_mod.ipvsadm("-Ln").stdout


def weights() -> dict[str, int]:
    """Real server -> weight of VIP:80 in ``ipvsadm -Ln`` (empty: no service)."""
    out, cur = {}, False
    for line in ipvsadm_ln().splitlines():
        f = line.split()
        if f and f[0] in ("TCP", "UDP", "FWM"):
            cur = f[:2] == ["TCP", f"{VIP}:80"]
        elif cur and f and f[0] == "->" and f[1][0].isdigit():
            out[f[1]] = int(f[3])
    return out


def wait_until(pred, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what} did not happen within {timeout} s: {ipvsadm_ln()}")
        time.sleep(0.1)
    return time.monotonic() - t0


def get() -> str | None:
    """One request from the client: the server's name, or None on failure."""
    r = subprocess.run(lab_mod.nsexec(lab_mod.NS_CLIENT, "curl", "-s", "--max-time", "3", f"http://{VIP}/"),
                       capture_output=True, text=True, timeout=20)
    return r.stdout.strip() if r.returncode == 0 else None


def start_http(name: str) -> None:
    """rs's HTTP server again, as the lab started it."""
    ns, addr, port = lab_mod.RS[name]
    nginx = shutil.which("nginx") if os.environ.get("IPVS_LAB_HTTP") != "python" else None
    if nginx:
        conf = os.path.join(lab_mod.STATE, f"nginx-{name}.conf")
        lab_mod.start(f"http-{name}", ns, [nginx, "-c", conf, "-e", os.path.join(lab_mod.STATE, f"nginx-{name}.err")])
    else:
        lab_mod.start(f"http-{name}", ns, [sys.executable, os.path.join(ROOT, "tools", "ipvs-lab"), "_serve",
                                           "--name", name, "--http", f"{addr}:{port}"], ready="ready")
    lab_mod.wait_tcp(ns, addr, port)


def stop_http(name: str) -> None:
    with open(os.path.join(lab_mod.STATE, f"http-{name}.pid")) as f:
        lab_mod.stop_pid(int(f.read()))


def test_ldirectord_quiesces_and_restores_a_real_server(bare_lab, tmp_path):
    assert weights() == {}
    wrapper = tmp_path / "ipvsadm"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {os.path.join(ROOT, 'tools', 'ipvsadm')} \"$@\"\n")
    wrapper.chmod(0o755)
    conf = tmp_path / f"{lab_mod.PREFIX}-ldirectord.cf"
    log = tmp_path / "ldirectord.log"
    conf.write_text(CONFIG.format(log=log, vip=VIP))
    # ip netns exec (then unshare, sh) exec in turn: the PID is ldirectord's.
    script = 'mount --bind "$1" /usr/sbin/ipvsadm && exec "$2" -d "$3" start'
    pid = lab_mod.start("ldirectord", lab_mod.NS_DIR,
                        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(wrapper),
                         LDIRECTORD, str(conf)])
    try:
        wait_until(lambda: weights() == {"172.16.0.2:80": 1, "172.16.0.3:8000": 2}, 30, "ldirectord's service")
        served = [get() for _ in range(6)]
        assert set(served) == {"server=rs1", "server=rs2"}, served

        stop_http("rs1")
        took = wait_until(lambda: weights().get("172.16.0.2:80") == 0, 15, "quiescing rs1")
        print(f"rs1 quiesced {took:.1f} s after its server stopped")
        served = [get() for _ in range(10)]
        assert served == ["server=rs2"] * 10, served  # every client served, by rs2

        start_http("rs1")
        wait_until(lambda: weights().get("172.16.0.2:80") == 1, 15, "restoring rs1")
        wait_until(lambda: "server=rs1" in {get() for _ in range(6)}, 15, "rs1 serving again")

        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: weights() == {} and "TCP" not in ipvsadm_ln(), 15, "ldirectord's clean stop")
    finally:
        lab_mod.stop_pid(pid)
    # The bind mount lived in ldirectord's mount namespace only.
    with open("/usr/sbin/ipvsadm", "rb") as f:
        assert f.read(4) == b"\x7fELF"
