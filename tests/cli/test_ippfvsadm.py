"""ipvs/cli/ippfvsadm.py: the VS 2.0 patch's tool mapped onto the control plane.

The seed's three commands must build exactly what the equivalent ipvsadm
rules build (a wrr masquerading service per VIP:port); checked through
``ipvsadm -S -n`` of the same instance and through /proc/net/ip_vs.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ipvs import procfs
from ipvs.cli import ippfvsadm
from ipvs.netns import NetnsIPVS

netlink = pytest.importorskip("ipvs.netlink", reason="the message schema (ipvs.netlink) is not there yet")

ROOT = Path(__file__).resolve().parents[2]

SEED = [
    "-A -t 203.0.113.5:80 -R 172.16.0.2:80 -w 1",
    "-A -t 203.0.113.5:80 -R 172.16.0.3:8000 -w 2",
    "-A -t 203.0.113.5:21 -R 172.16.0.3:21",
]


def run(ipvs: NetnsIPVS, line: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = ippfvsadm.main(line.split(), transport=netlink.LocalTransport(ipvs), stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


def save(ipvs: NetnsIPVS) -> str:
    ipvsadm = pytest.importorskip("ipvs.cli.ipvsadm")
    out = io.StringIO()
    assert ipvsadm.main(["-S", "-n"], transport=netlink.LocalTransport(ipvs), stdout=out, stderr=io.StringIO()) == 0
    return out.getvalue()


def test_seed_commands_build_wrr_masq_services():
    ipvs = NetnsIPVS()
    for line in SEED:
        assert run(ipvs, line) == (0, "", "")
    assert save(ipvs) == (
        "-A -t 203.0.113.5:21 -s wrr\n"
        "-a -t 203.0.113.5:21 -r 172.16.0.3:21 -m -w 1\n"
        "-A -t 203.0.113.5:80 -s wrr\n"
        "-a -t 203.0.113.5:80 -r 172.16.0.2:80 -m -w 1\n"
        "-a -t 203.0.113.5:80 -r 172.16.0.3:8000 -m -w 2\n"
    )
    # Kernel view: newest dest first, wrr, Masq.
    text = procfs.render(ipvs, "ip_vs", 0)
    assert "TCP  CB007105:0050 wrr  \n  -> AC100003:1F40      Masq    2      0          0         \n" in text


def test_list_shows_each_entry():
    ipvs = NetnsIPVS()
    for line in SEED + ["-A -u 203.0.113.5:53 -R 172.16.0.2"]:
        assert run(ipvs, line)[0] == 0
    rc, out, err = run(ipvs, "-L -n")
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["Prot", "LocalAddress:Port", "RemoteAddress:Port", "Weight", "ActiveConn",
                                "InActConn", "Scheduler"]
    rows = [line.split() for line in lines[1:]]
    assert rows == [
        ["TCP", "203.0.113.5:21", ">", "172.16.0.3:21", "1", "0", "0", "wrr"],
        ["TCP", "203.0.113.5:80", ">", "172.16.0.2:80", "1", "0", "0", "wrr"],
        ["TCP", "203.0.113.5:80", ">", "172.16.0.3:8000", "2", "0", "0", "wrr"],
        ["UDP", "203.0.113.5:53", ">", "172.16.0.2:53", "1", "0", "0", "wrr"],  # rport defaults to vport
    ]
    assert run(ipvs, "")[1] == out  # no command = -L


def test_delete_entry_then_service_and_clear():
    ipvs = NetnsIPVS()
    for line in SEED:
        run(ipvs, line)
    assert run(ipvs, "-D -t 203.0.113.5:80 -R 172.16.0.2:80") == (0, "", "")
    assert "172.16.0.2:80" not in save(ipvs) and "172.16.0.3:8000" in save(ipvs)
    # Deleting the last entry removes the virtual service.
    assert run(ipvs, "-D -t 203.0.113.5:80 -R 172.16.0.3:8000")[0] == 0
    assert "203.0.113.5:80" not in save(ipvs)
    assert run(ipvs, "-D -t 203.0.113.5:21")[0] == 0
    assert save(ipvs) == ""
    for line in SEED:
        run(ipvs, line)
    assert run(ipvs, "-C") == (0, "", "")
    assert save(ipvs) == ""


def test_existing_service_keeps_its_scheduler():
    ipvs = NetnsIPVS()
    ipvsadm = pytest.importorskip("ipvs.cli.ipvsadm")
    ipvsadm.main("-A -t 203.0.113.5:80 -s rr".split(), transport=netlink.LocalTransport(ipvs),
                 stdout=io.StringIO(), stderr=io.StringIO())
    assert run(ipvs, "-A -t 203.0.113.5:80 -R 172.16.0.2:80")[0] == 0
    assert save(ipvs).splitlines()[0] == "-A -t 203.0.113.5:80 -s rr"


@pytest.mark.parametrize(
    "line, rc, msg",
    [
        ("-A -t 203.0.113.5:80 -R 172.16.0.2:80", 255, "Destination already exists\n"),
        ("-D -t 203.0.113.5:80 -R 172.16.0.9:80", 255, "No such destination\n"),
        ("-D -t 203.0.113.5:81 -R 172.16.0.9:80", 255, "Service not defined\n"),
        ("-D -t 203.0.113.5:81", 255, "No such service\n"),
        ("-A -t 203.0.113.5:80 -R 224.0.0.1:80", 255,
         "Invalid operation.  Possibly wrong module version, address not unicast, ...\n"),
        ("-A -t 203.0.113.5:80", 2, "You need to supply the '-R' option for the '-A' command\n"),
        ("-A -R 172.16.0.2", 2, "You need to supply the '-t' or '-u' option for the '-A' command\n"),
        ("-A -t 203.0.113.5 -R 172.16.0.2", 2, "illegal virtual server address[:port] specified\n"),
        ("-A -t 203.0.113.5:80 -R 172.16.0.2 -w 70000", 2, "illegal weight specified\n"),
        ("-A -t 203.0.113.5:80 -R 172.16.0.2 -w -1", 2, "illegal weight specified\n"),
        ("-A -t 203.0.113.5:80 -R nosuchhost.invalid", 2, "illegal real server address[:port] specified\n"),
        ("-A -C", 2, "multiple commands specified\n"),
        ("-L -t 203.0.113.5:80", 2, "Illegal '-t' option with the '-L' command\n"),
        ("-D -t 203.0.113.5:80 -w 2", 2, "Illegal '-w' option with the '-D' command\n"),
        ("-X", 2, "invalid option `-X'\n"),
    ],
)
def test_errors(line, rc, msg):
    ipvs = NetnsIPVS()
    run(ipvs, SEED[0])
    got_rc, out, err = run(ipvs, line)
    assert (got_rc, out) == (rc, "")
    assert err.startswith(msg)
    if rc == 2:
        assert err.endswith("Try `ippfvsadm -h' for more information.\n")


def test_help_documents_the_syntax():
    rc, out, _ = run(NetnsIPVS(), "-h")
    assert rc == 0
    for piece in ("-A -t|-u vaddr:vport -R raddr[:rport] [-w weight]", "-D", "-C", "-L", "masquerading",
                  "round-robin"):
        assert piece in out


def test_tool_through_the_daemon_socket(tmp_path):
    from ipvs.daemon import Daemon

    sock = str(tmp_path / "s.sock")
    ipvs = NetnsIPVS()
    d = Daemon(ipvs, socket_path=sock)
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    try:
        env = {**os.environ, "IPVS_SOCKET": sock}
        for line in SEED:
            p = subprocess.run([sys.executable, str(ROOT / "tools" / "ippfvsadm"), *line.split()], env=env,
                               capture_output=True, text=True, timeout=30)
            assert (p.returncode, p.stdout, p.stderr) == (0, "", "")
        p = subprocess.run([sys.executable, str(ROOT / "tools" / "ippfvsadm"), "-L"], env=env,
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 0 and len(p.stdout.splitlines()) == 4
    finally:
        d.request_stop()
        t.join(10)
    assert {(s.port, len(s.destinations), s.sched_name) for s in ipvs.svc_order} == {(80, 2, "wrr"), (21, 1, "wrr")}


def test_no_director(tmp_path):
    out, err = io.StringIO(), io.StringIO()
    rc = ippfvsadm.main(["-L", "--socket", str(tmp_path / "none")], stdout=out, stderr=err)
    assert rc == 2 and "Is ipvsd running" in err.getvalue()


def test_man_page_documents_every_option():
    page = (ROOT / "docs" / "ippfvsadm.8").read_text()
    for opt in ("-A", "-D", "-C", "-L", "-h", "-t", "-u", "-R", "-w", "-n", "--socket"):
        roff = opt.replace("-", "\\-")
        assert f".B {roff}" in page or f".BI {roff}" in page or f".BR {roff}" in page, opt
        assert opt in ippfvsadm.USAGE, opt
