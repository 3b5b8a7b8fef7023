"""ipvs/systemd.py and ipvs/ipvsd.service: ipvsd as a systemd service.

sd_notify is checked against a datagram socket standing in for systemd,
with a real ``tools/ipvsd`` (READY=1 only once the control socket serves
and the rules are restored; STOPPING=1 at SIGTERM, then the rules saved);
the unit is checked with ``systemd-analyze verify``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ipvs import systemd
from ipvs.client import Client

ROOT = Path(__file__).resolve().parents[1]
IPVSD = str(ROOT / "tools" / "ipvsd")


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    s.bind(path)
    s.settimeout(30)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    try:
        yield s
    finally:
        s.close()


def test_notify_sends_one_datagram(notify_socket):
    assert systemd.notify("READY=1")
    assert notify_socket.recv(256) == b"READY=1"


def test_notify_to_an_abstract_socket(monkeypatch):
    name = f"pyipvs-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("STOPPING=1")
        assert s.recv(256) == b"STOPPING=1"


def test_notify_outside_systemd_sends_nothing(monkeypatch, tmp_path):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not systemd.notify("READY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert not systemd.notify("READY=1")  # refused, not raised
    monkeypatch.setenv("NOTIFY_SOCKET", "relative")
    assert not systemd.notify("READY=1")


def test_ipvsd_is_ready_when_serving_and_saves_at_stop(notify_socket, tmp_path):
    rules = tmp_path / "ipvsadm.rules"
    rules.write_text("-A -t 203.0.113.5:80 -s rr\n-a -t 203.0.113.5:80 -r 172.16.0.2:80 -m -w 1\n")
    sock = str(tmp_path / "ipvsd.sock")
    env = {**os.environ, "NOTIFY_SOCKET": notify_socket.getsockname()}
    p = subprocess.Popen([sys.executable, IPVSD, "--foreground", "--socket", sock, "--rules", str(rules),
                          "--save", str(rules)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert notify_socket.recv(256) == b"READY=1"
        # Ready means serving, with the rules in.
        with Client(sock, timeout=10) as c:
            reply = c.call({"version": 1, "cmd": "GET_SERVICE"})
        assert [s["port"] for s in reply["services"]] == [80]
        subprocess.run([sys.executable, str(ROOT / "tools" / "ipvsadm"), "--socket", sock, "-D", "-t",
                        "203.0.113.5:80"], check=True, timeout=60)
        p.send_signal(signal.SIGTERM)
        assert notify_socket.recv(256) == b"STOPPING=1"
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert rules.read_text() == ""  # saved at stop: the service deleted above is gone


def test_install_unit_names_the_running_command(tmp_path):
    r = subprocess.run([sys.executable, IPVSD, "--install-unit", str(tmp_path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "ipvsd.service").read_text()
    assert f"\nExecStart={IPVSD} --foreground --rules /etc/ipvsadm.rules --save /etc/ipvsadm.rules " in text
    assert "\nType=notify\n" in text and "@IPVSD@" not in text


def test_unit_makes_the_directories_ipvsd_uses_by_default():
    """/run/pyipvs (control socket, /proc mirror, offload notes) and
    /var/lib/pyipvs (state file) are the unit's RuntimeDirectory and
    StateDirectory, so systemd creates them inside its sandbox, and the
    runtime one survives the restart after a crash."""
    from ipvs import client, daemon
    from ipvs.driver import afpacket

    lines = systemd.unit_text(IPVSD).splitlines()
    runtime = [x.split("=", 1)[1] for x in lines if x.startswith("RuntimeDirectory=")]
    state = [x.split("=", 1)[1] for x in lines if x.startswith("StateDirectory=")]
    assert ["/run/" + d for d in runtime] == [client.RUN_DIR] == [afpacket.STATE_DIR]
    assert ["/var/lib/" + d for d in state] == [daemon.STATE_DIR]
    assert "RuntimeDirectoryPreserve=restart" in lines
    assert "--procfs-dir /run/pyipvs/proc" in systemd.unit_text(IPVSD)


def test_install_unit_refuses_a_relative_command():
    with pytest.raises(ValueError):
        systemd.unit_text("ipvsd")


def test_unit_passes_systemd_analyze_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "ipvsd.service"
    unit.write_text(systemd.unit_text(IPVSD))
    # --man=no: the man pages may not be installed where man looks.
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "ipvsd.service" not in r.stderr, r.stderr  # no warning about the unit itself
    bad = tmp_path / "bad" / "ipvsd.service"
    bad.parent.mkdir()
    bad.write_text(systemd.unit_text("/nonexistent/ipvsd"))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(bad)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0  # the check can fail
