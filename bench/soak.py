#!/usr/bin/env python3
"""Soak: mixed traffic through ipvsd in the lab for a long time, then nothing: prints a table, figures and a verdict.

    sudo IPVS_LAB_PREFIX=me .venv/bin/python bench/soak.py [--minutes 30] [--interval 5] [--rate 20] [--quick]

The lab comes up (``ipvs_harness.lab``, spare mode, namespaces
``$IPVS_LAB_PREFIX-*``) with timeouts shortened so the test ends:
``ipvsadm --set 30 10 10`` (ESTABLISHED 30 s, FIN_WAIT 10 s, UDP 10 s)
and the FTP service's persistence at 20 s.  TIME_WAIT (120 s) and the
other TCP states keep the kernel's fixed timeouts, as ``ipvsadm --set``
cannot change them.

1. **warm-up**: one minute of the load (a tenth of ``--minutes`` with
   ``--quick``), then the table drains; the connection count, ipvsd's
   resident memory and its open descriptors then are the *start* values
   (after the JIT has compiled the data path: a fresh PyPy process grows
   while it warms up).
2. **load**: for ``--minutes``, one process in the client namespace
   sends, at about ``--rate`` operations a second in all: short HTTP
   requests (a connection each), requests on keep-alive connections
   (50 per connection), UDP echoes from a new port each, and an FTP
   login + passive RETR every 30 s.  It is bounded in time and in count.
3. **drain**: no traffic until the table is back to its start size or
   the longest timeout (TIME_WAIT, 120 s) plus a margin has passed.

Every ``--interval`` seconds the bench samples the table's size (every
entry of ``ipvsadm -Lnc``, templates included), ipvsd's RSS and its
open descriptors.  Verdict PASS when, at the end, the table holds what
it held at the start, the descriptors are as many, the RSS is within
``--rss-slack`` MiB of its start, ipvsd is alive and at least 99% of the
load's operations succeeded.  ``--quick`` (the test command's bounded
version) closes every TCP connection with a reset (state CLOSE, 10 s)
instead of a FIN (TIME_WAIT, 120 s) and skips FTP, so it ends in about a
minute.  Everything is removed at the end, even on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import ipvs_harness.lab as lab  # noqa: E402 - after the path

sys.path.insert(0, os.path.join(ROOT, "bench"))
from _runtime import rss_bytes  # noqa: E402

#: The longest timeout the load's entries can be left in (TIME_WAIT, fixed).
LONGEST_TIMEOUT_S = 120

LOAD = textwrap.dedent("""
    import ftplib, http.client, io, json, socket, struct, sys, time
    vip, seconds, rate, max_ops, quick = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), \\
        sys.argv[5] == "1"
    stats = {k: [0, 0] for k in ("short", "keepalive", "udp", "ftp")}

    def close(s):
        if quick:  # a reset: the entry goes to CLOSE (10 s), not TIME_WAIT (120 s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()

    def short():
        s = socket.create_connection((vip, 80), timeout=2)
        try:
            s.sendall(b"GET / HTTP/1.0\\r\\nHost: vip\\r\\n\\r\\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data.split(b"\\r\\n", 1)[0].endswith(b" 200 OK")
        finally:
            close(s)

    keep = {"conn": None, "left": 0}

    def keepalive():
        if keep["conn"] is None or keep["left"] <= 0:
            if keep["conn"] is not None and keep["conn"].sock is not None:
                close(keep["conn"].sock)
            keep["conn"], keep["left"] = http.client.HTTPConnection(vip, 80, timeout=2), 50
        keep["left"] -= 1
        c = keep["conn"]
        try:
            c.request("GET", "/")
            r = c.getresponse()
            return r.status == 200 and len(r.read()) > 0
        except Exception:
            keep["conn"] = None
            raise

    def udp():
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.settimeout(1)
            u.sendto(b"soak", (vip, 7))
            return u.recvfrom(2048)[0].endswith(b"soak")
        finally:
            u.close()

    def ftp():
        f = ftplib.FTP(timeout=5)
        f.connect(vip, 21)
        f.login()
        out = io.BytesIO()
        f.retrbinary("RETR hello.txt", out.write)
        f.quit()
        return out.getvalue().startswith(b"hello")

    kinds = [("short", short), ("keepalive", keepalive), ("udp", udp)]
    end = time.monotonic() + seconds
    next_ftp = time.monotonic() + 5
    ops = 0
    while time.monotonic() < end and ops < max_ops:
        t0 = time.monotonic()
        name, fn = kinds[ops % len(kinds)]
        if not quick and t0 >= next_ftp:
            name, fn, next_ftp = "ftp", ftp, t0 + 30
        try:
            ok = bool(fn())
        except Exception:
            ok = False
        stats[name][0 if ok else 1] += 1
        ops += 1
        time.sleep(max(0.0, 1.0 / rate - (time.monotonic() - t0)))
    if keep["conn"] is not None and keep["conn"].sock is not None:
        close(keep["conn"].sock)
    print(json.dumps(stats))
""")


def conn_entries() -> int:
    """Every entry of the table (``ipvsadm -Lnc``: connections and templates)."""
    r = lab.ipvsadm("-Lnc", check=False)
    if r.returncode != 0:
        return -1
    return sum(1 for line in r.stdout.splitlines()[2:] if line.strip())


def rss_mib(pid: int) -> float:
    """ipvsd's resident memory, or -1 once it is gone."""
    try:
        return rss_bytes(pid) / 2**20
    except OSError:
        return -1.0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


class Sampler:
    """The rows of the table: (seconds since the start, phase, entries, RSS MiB, descriptors)."""

    def __init__(self, pid: int, interval: float, out=sys.stdout) -> None:
        self.pid, self.interval, self.out = pid, interval, out
        self.t0 = time.monotonic()
        self.rows: list[tuple[float, str, int, float, int]] = []
        print(f"{'t_s':>7} {'phase':<8} {'entries':>8} {'rss_mib':>8} {'fds':>5}", file=out, flush=True)

    def sample(self, phase: str) -> tuple[float, str, int, float, int]:
        row = (time.monotonic() - self.t0, phase, conn_entries(), rss_mib(self.pid), open_fds(self.pid))
        self.rows.append(row)
        print(f"{row[0]:7.0f} {phase:<8} {row[2]:8d} {row[3]:8.1f} {row[4]:5d}", file=self.out, flush=True)
        return row

    def while_running(self, proc: subprocess.Popen, phase: str, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while proc.poll() is None and time.monotonic() < deadline:
            self.sample(phase)
            time.sleep(self.interval)

    def drain(self, target: int, limit_s: float) -> None:
        """Sample until the table is back to ``target`` entries (and once more) or ``limit_s`` passed."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.sample("drain")[2] <= target:
                break
            time.sleep(self.interval)


def run_load(seconds: float, rate: float, quick: bool) -> subprocess.Popen:
    max_ops = int(seconds * rate * 1.1) + 10  # bounded in count as well as in time
    return subprocess.Popen(lab.nsexec(lab.NS_CLIENT, sys.executable, "-c", LOAD, lab.VIP, str(seconds), str(rate),
                                       str(max_ops), "1" if quick else "0"),
                            stdout=subprocess.PIPE, text=True)


def finish_load(proc: subprocess.Popen, seconds: float) -> dict:
    try:
        out = proc.communicate(timeout=seconds + 60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return json.loads(out or "{}")


def soak(minutes: float, interval: float, rate: float, quick: bool, rss_slack: float) -> dict:
    """Run the three phases on a lab that is up; returns the figures and the verdict."""
    for cmd in (["--set", "30", "10", "10"], ["-E", "-t", f"{lab.VIP}:21", "-p", "20"]):
        lab.ipvsadm(*cmd)
    pid = lab.read_pid("director")
    s = Sampler(pid, interval)
    seconds = minutes * 60
    drain_limit = (15 if quick else LONGEST_TIMEOUT_S) + 30
    warm = run_load(seconds / 10 if quick else 60.0, rate, quick)
    s.while_running(warm, "warm-up", seconds + 120)
    finish_warm = finish_load(warm, 60)
    s.drain(0, drain_limit)
    start = s.sample("start")
    load = run_load(seconds, rate, quick)
    s.while_running(load, "load", seconds + 120)
    stats = finish_load(load, seconds)
    s.drain(start[2], drain_limit)
    time.sleep(interval)  # one more sample after the table is back: the descriptors of the last expiries
    end = s.sample("end")
    ok = sum(v[0] for v in stats.values())
    failed = sum(v[1] for v in stats.values())
    loaded = [r for r in s.rows if r[1] == "load"]
    r = {
        "start": start, "end": end, "stats": stats, "warm": finish_warm,
        "ops": ok + failed, "success": ok / (ok + failed) if ok + failed else 0.0,
        "entries_max": max((x[2] for x in loaded), default=0),
        "rss_max": max((x[3] for x in loaded), default=0.0),
        "fds_max": max((x[4] for x in loaded), default=0),
        "alive": lab.alive(pid),
    }
    r["checks"] = {
        "entries back to start": end[2] == start[2],
        "descriptors back to start": end[4] == start[4],
        f"rss within {rss_slack:g} MiB of start": end[3] - start[3] <= rss_slack,
        "ipvsd alive": r["alive"],
        "99% of operations succeeded": r["success"] >= 0.99,
    }
    r["pass"] = all(r["checks"].values())
    return r


def report(r: dict, minutes: float, rate: float) -> None:
    start, end = r["start"], r["end"]
    print(f"soak_minutes {minutes:g} min")
    print(f"soak_rate {rate:g} ops/s")
    print(f"soak_operations {r['ops']} ops")
    print(f"soak_success {100 * r['success']:.2f} %")
    for kind, (ok, failed) in sorted(r["stats"].items()):
        print(f"soak_{kind}_ok {ok} ops")
        print(f"soak_{kind}_failed {failed} ops")
    print(f"soak_entries_start {start[2]} entries")
    print(f"soak_entries_max {r['entries_max']} entries")
    print(f"soak_entries_end {end[2]} entries")
    print(f"soak_rss_start {start[3]:.1f} MiB")
    print(f"soak_rss_max {r['rss_max']:.1f} MiB")
    print(f"soak_rss_end {end[3]:.1f} MiB")
    print(f"soak_fds_start {start[4]} fds")
    print(f"soak_fds_max {r['fds_max']} fds")
    print(f"soak_fds_end {end[4]} fds")
    for name, ok in r["checks"].items():
        print(f"# {'ok  ' if ok else 'FAIL'} {name}")
    print(f"soak_verdict {'PASS' if r['pass'] else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="length of the load (default %(default)s)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between samples (default %(default)s)")
    p.add_argument("--rate", type=float, default=20.0, help="operations a second in all (default %(default)s)")
    p.add_argument("--rss-slack", type=float, default=16.0,
                   help="MiB the RSS may end above its start (PyPy's GC, default %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="resets instead of FINs and no FTP, so the drain takes seconds (the test's version)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("needs root (network namespaces)")
    if not 0 < args.minutes <= 120 or not 0 < args.rate <= 1000 or args.interval <= 0:
        p.error("--minutes in (0, 120], --rate in (0, 1000], --interval > 0")
    print(f"# runtime of this script {platform.python_implementation()} {platform.python_version()}; "
          f"ipvsd runtime: {os.environ.get('IPVSD_RUNTIME', 'auto')}; {os.cpu_count()} CPUs; "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    try:
        lab.up("spare", False)
        r = soak(args.minutes, args.interval, args.rate, args.quick, args.rss_slack)
    finally:
        lab.down()
    report(r, args.minutes, args.rate)
    print(f"# load average at the end {os.getloadavg()[0]:.1f}")
    return 0 if r["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
