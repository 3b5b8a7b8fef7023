"""Replay a recorded kernel scheduler scenario against PyIPVS's schedulers.

The scenario scripts (``tests/kernel/scenarios/sched_*.sh``, copied into
each golden directory as ``scenario.sh``) are run by bash with a stub
library (``tests/sched/stub/oracle.sh``) that prints the ipvsadm rules,
firewall marks and client steps instead of doing them.  :class:`Replay`
then applies the rules with PyIPVS's own ipvsadm and plays the steps,
doing the kernel's connection accounting that decides lc-family choices:

* a request (``LABEL SRC SPORT DST DPORT``) creates a connection that is
  ESTABLISHED (active) while served and ends in TIME_WAIT (inactive,
  120 s) before the next step;
* ``!hold`` keeps one ESTABLISHED (active);
* ``!release*`` closes held ones with a FIN (inactive, 120 s), ``!rst*``
  with a RST (CLOSE: inactive, 10 s);
* a connection scheduled to a real server the lab does not run stays in
  SYN_RECV (active, 60 s) and the request fails (``NONE``);
* time advances by the scenario's delay (plus 5 ms per connection) and
  by ``!sleep``; due connections expire through ConnTable.release, so
  thresholds recover as in the kernel;
* ``!sh ipvsadm ...`` changes the rules and ``!sh echo N >
  /proc/sys/net/ipv4/vs/NAME`` a setting (sched_lblcr cuts
  ``lblcr_expiration``), as they did in the recording.

It returns the predicted server per request line (``rsK`` or ``NONE``) and
the per-dest (weight, active, inactive) at each ``!snapshot``.
"""

from __future__ import annotations

import io
import ipaddress
import os
import re
import shlex
import subprocess
from pathlib import Path

from ipvs import ctl, ip_vs
from ipvs.cli.ipvsadm import main as ipvsadm_main
from ipvs.ip_vs import ConnParam
from ipvs.netlink import LocalTransport
from ipvs.netns import HZ, NetnsIPVS
from ipvs.sched import IPHdr
from ipvs.uapi import AF_INET, IP_VS_CONN_F_INACTIVE, IPPROTO_TCP

STUB = Path(__file__).parent / "stub"
TIME_WAIT_S = 120
CLOSE_S = 10
SYN_RECV_S = 60
RTT_S = 0.005
#: A step that writes a ``net.ipv4.vs`` setting, as the scenarios do it.
SYSCTL_WRITE = re.compile(r"echo (\d+) > /proc/sys/net/ipv4/vs/(\w+)")


def extract(scenario: Path) -> tuple[list[str], list[tuple[str, int]], float, list[str], int]:
    """(rules, marks, delay, steps, servers) of a scenario script."""
    env = dict(os.environ, LIB=str(STUB), OUT="/nonexistent")
    out = subprocess.run(["bash", str(scenario)], env=env, capture_output=True, text=True, timeout=30, check=True)
    rules, marks, steps = [], [], []
    delay = 0.05
    servers = 0
    for line in out.stdout.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "L":
            servers = int(rest)
        elif kind == "R":
            rules.append(rest)
        elif kind == "M":
            cidr, mark = rest.split()
            marks.append((cidr, int(mark)))
        elif kind == "D":
            delay = float(rest)
        elif kind == "S":
            steps.append(rest)
    return rules, marks, delay, steps, servers


def golden_order(gdir: Path) -> list[tuple[str, int, str, str]]:
    """(label, n, src:port, server) rows of a golden's requests.txt."""
    rows = []
    for line in (gdir / "requests.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        label, n, src, body = line.split(None, 3)
        m = re.search(r"server=(\S+)", body)
        rows.append((label, int(n), src, m.group(1) if m else body))
    return rows


def golden_snapshot(path: Path) -> dict[str, tuple[int, int, int]]:
    """``ipvsadm -Ln`` dest rows of one service listing: addr:port -> counts.

    Keys are prefixed with the service line, so several services can share
    a listing.
    """
    out = {}
    svc = ""
    for line in path.read_text().splitlines():
        if line.startswith(("TCP ", "UDP ", "FWM ", "SCTP ")):
            svc = " ".join(line.split()[:2])
        elif line.strip().startswith("->") and "RemoteAddress" not in line:
            f = line.split()
            out[f"{svc} {f[1]}"] = (int(f[3]), int(f[4]), int(f[5]))
    return out


class Replay:
    def __init__(self, rules: list[str], marks: list[tuple[str, int]], delay: float, servers: int = 0) -> None:
        self.ipvs = NetnsIPVS()
        #: How many real servers the lab runs: a connection scheduled to
        #: an address beyond them fails on the real system (NONE).
        self.servers = servers
        self.now = 0
        self.transport = LocalTransport(self.ipvs, clock=lambda: self.now)
        self.delay = delay
        self.marks = [(ipaddress.ip_network(c), m) for c, m in marks]
        self.held: dict[tuple[str, int], tuple[str, object]] = {}
        self.dying: list[tuple[int, object]] = []
        self.results: list[tuple[str, int, str, str]] = []
        self.snapshots: dict[str, dict[str, tuple[int, int, int]]] = {}
        self.n = 0
        for r in rules:
            self.ipvsadm(shlex.split(r))

    def ipvsadm(self, argv: list[str]) -> None:
        err = io.StringIO()
        rc = ipvsadm_main(argv, transport=self.transport, stdout=io.StringIO(), stderr=err)
        if rc != 0:
            raise AssertionError(f"ipvsadm {argv} -> {rc}: {err.getvalue()}")

    # ------------------------------------------------------------ time

    def advance(self, seconds: float) -> None:
        self.now += round(seconds * HZ)
        due = [x for x in self.dying if x[0] <= self.now]
        self.dying = [x for x in self.dying if x[0] > self.now]
        for _, cp in sorted(due, key=lambda x: x[0]):
            self.ipvs.conn_tab.release(cp)

    # ------------------------------------------------------- accounting

    @staticmethod
    def _established(cp) -> None:
        d = cp.dest
        if cp.flags & IP_VS_CONN_F_INACTIVE and d is not None:
            d.inactconns -= 1
            d.activeconns += 1
            cp.flags &= ~IP_VS_CONN_F_INACTIVE

    def _closed(self, cp, seconds: int) -> None:
        d = cp.dest
        if not cp.flags & IP_VS_CONN_F_INACTIVE and d is not None:
            d.activeconns -= 1
            d.inactconns += 1
            cp.flags |= IP_VS_CONN_F_INACTIVE
        self.dying.append((self.now + seconds * HZ, cp))

    # ------------------------------------------------------------ steps

    def _service(self, dst: bytes, dport: int):
        ip = ipaddress.ip_address(dst)
        mark = next((m for net, m in self.marks if ip in net), 0)
        return ctl.service_get(self.ipvs, AF_INET, mark, IPPROTO_TCP, dst, dport)

    def connect(self, label: str, src: str, sport: int, dst: str, dport: int, hold: bool) -> None:
        self.n += 1
        s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
        svc = self._service(d, dport)
        dest = None
        if svc is not None:
            dest = svc.scheduler.schedule(IPHdr(AF_INET, IPPROTO_TCP, s, d, sport, dport), self.now)
        name = "NONE"
        if dest is not None:
            cp = self.ipvs.conn_tab.new(ConnParam(AF_INET, IPPROTO_TCP, s, sport, d, dport), dest.addr, dest.port or dport, 0, dest)
            self._established(cp)  # SYN_RECV, then ESTABLISHED: active either way
            if self.servers and dest.addr[3] - 1 > self.servers:
                # No such server: the SYN goes unanswered and the connection
                # stays in SYN_RECV (active) until it times out.
                self.dying.append((self.now + SYN_RECV_S * HZ, cp))
            else:
                name = f"rs{dest.addr[3] - 1}"
                if hold:
                    self.held[(src, sport)] = (label, cp)
                else:
                    self._closed(cp, TIME_WAIT_S)
        self.results.append((label, self.n, f"{src}:{sport}", name))
        self.advance(self.delay + RTT_S)

    def release(self, label: str | None, rst: bool) -> None:
        for key, (lab, cp) in list(self.held.items()):
            if label is None or lab == label:
                del self.held[key]
                self._closed(cp, CLOSE_S if rst else TIME_WAIT_S)

    def snapshot(self, name: str) -> None:
        rows = {}
        for svc in ctl.services_sorted_by_bucket(self.ipvs):
            head = f"FWM {svc.fwmark}" if svc.fwmark else f"TCP {ip_vs.format_addr(svc.af, svc.addr)}:{svc.port}"
            for d in svc.destinations:
                key = f"{head} {ip_vs.format_addr(d.af, d.addr)}:{d.port}"
                rows[key] = (d.weight, d.activeconns, d.inactconns)
        self.snapshots[name] = rows

    def step(self, line: str) -> None:
        if not line.startswith("!"):
            label, src, sport, dst, dport = line.split()
            self.connect(label, src, int(sport), dst, int(dport), hold=False)
            return
        verb, _, rest = line[1:].partition(" ")
        args = rest.split()
        if verb == "hold":
            self.connect(args[0], args[1], int(args[2]), args[3], int(args[4]), hold=True)
        elif verb == "sleep":
            self.advance(float(args[0]))
        elif verb == "snapshot":
            self.snapshot(args[0])
        elif verb == "release-all":
            self.release(None, rst=False)
        elif verb == "release-label":
            self.release(args[0], rst=False)
        elif verb == "rst-all":
            self.release(None, rst=True)
        elif verb == "rst-label":
            self.release(args[0], rst=True)
        elif verb == "sh":
            argv = shlex.split(rest)
            if argv and argv[0] == "ipvsadm" and ">" not in argv:
                self.ipvsadm(argv[1:])
            elif m := SYSCTL_WRITE.fullmatch(rest.strip()):
                self.ipvs.sysctl.set(m.group(2), int(m.group(1)))
        elif verb == "note":
            pass
        else:
            raise AssertionError(f"unknown step {line!r}")


def replay(gdir: Path) -> Replay:
    rules, marks, delay, steps, servers = extract(gdir / "scenario.sh")
    r = Replay(rules, marks, delay, servers)
    for s in steps:
        r.step(s)
    return r
