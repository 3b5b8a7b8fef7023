#!/usr/bin/env python3
"""Control-plane figures: prints ``name value unit`` lines.

A control-plane-only ``tools/ipvsd`` is started on a temporary socket; then,
through that real socket and the real command-line tools:

load_1min        the machine's load average when the timing starts: on a
                 shared machine the wall times below follow it
restore_s        ``tools/ipvsadm -R`` of SERVICES services x DESTS destinations
                 (goal for 10,000 x 10: under 3 s)
list_Ln_s        ``tools/ipvsadm -Ln`` of the same table (goal: under 3 s)
save_Sn_s        ``tools/ipvsadm -S -n``
*_ipvsadm_cpu_s  CPU time (user + system) of that ipvsadm process, and
*_ipvsd_cpu_s    of the daemon during it: these tell real progress from
                 the noise of other people's load
proc_ip_vs_s     GET_PROC ip_vs (the /proc/net/ip_vs text) through the socket
restore_lines_per_s           the same as a rate
restore_pipelined_s  the same rules parsed by ipvsadm's own code in this
                 process, the requests then sent one by one, pipelined
                 (Client.call_many), to a fresh daemon: the way before BATCH
parse_only_s     of restore_pipelined_s: ipvsadm's parsing alone (in process)
dispatch_only_s  the schema's dispatch of those requests alone (in process,
                 no socket, no JSON)
rtt_us           round trip of one small request (GET_INFO)
daemon_rss_mib   resident memory of the daemon holding the table
runtime, ipvsd_runtime  the interpreters of the bench and of the daemon

The times include starting the tool's Python interpreter, as a user sees
them.  No packets are sent: the addresses are only configuration.

Run: python3 bench/ctl.py [--services 10000] [--dests 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ipvs.client import Client  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from _runtime import children_cpu_seconds, cpu_seconds, print_runtime, rss_bytes, start_daemon, stop_daemon  # noqa: E402
from _venv import daemon_runtime  # noqa: E402


def rules(services: int, dests: int) -> str:
    out = []
    for i in range(services):
        vip = f"203.0.113.{1 + i // 1000 % 250}:{1000 + i % 1000 + 1000 * (i // 250_000)}"
        out.append(f"-A -t {vip} -s wlc")
        for k in range(dests):
            out.append(f"-a -t {vip} -r 172.16.{k // 250}.{2 + k % 250}:80 -m -w {1 + k}")
    return "\n".join(out) + "\n"


class Recorder:
    """A transport that only collects the requests ipvsadm would send."""

    def __init__(self) -> None:
        self.reqs: list[dict] = []

    def call(self, req: dict) -> dict:
        if req.get("cmd") == "GET_INFO":
            return {"version": 1, "ok": True, "info": {"version": 0x010201, "conn_tab_size": 4096}}
        self.reqs.append(req)
        return {"version": 1, "ok": True}


def timed(cmd: list[str], env: dict, stdin: str | None = None,
          daemon: subprocess.Popen | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """Run a tool; print its CPU time and the daemon's as ``<name>_cpu`` lines
    (the wall time on a shared machine is mostly other people's load)."""
    c0 = children_cpu_seconds()
    d0 = cpu_seconds(daemon.pid) if daemon is not None else 0.0
    t0 = time.perf_counter()
    p = subprocess.run(cmd, input=stdin, env=env, capture_output=True, text=True, timeout=600)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr[:500]}")
    p.tool_cpu = children_cpu_seconds() - c0
    p.daemon_cpu = cpu_seconds(daemon.pid) - d0 if daemon is not None else 0.0
    return dt, p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--dests", type=int, default=10)
    args = ap.parse_args()
    print_runtime()
    # tools/ipvsd picks its own interpreter (--runtime, $IPVSD_RUNTIME).
    print(f"ipvsd_runtime {daemon_runtime([])}")
    text = rules(args.services, args.dests)
    nlines = args.services * (1 + args.dests)

    with tempfile.TemporaryDirectory(prefix="pyipvs-bench-") as tmp:
        sock = os.path.join(tmp, "ipvsd.sock")
        env = {**os.environ, "IPVS_SOCKET": sock}
        daemon = start_daemon(sock)
        try:
            with Client(sock) as c:
                n = 2000
                t0 = time.perf_counter()
                for _ in range(n):
                    c.call({"version": 1, "cmd": "GET_INFO"})
                print(f"rtt_us {(time.perf_counter() - t0) / n * 1e6:.1f} us")

            ipvsadm = [sys.executable, os.path.join(ROOT, "tools", "ipvsadm")]
            print(f"load_1min {os.getloadavg()[0]:.2f} runnable")
            dt, p = timed(ipvsadm + ["-R"], env, stdin=text, daemon=daemon)
            print(f"restore_s {dt:.3f} s")
            print(f"restore_ipvsadm_cpu_s {p.tool_cpu:.3f} s")
            print(f"restore_ipvsd_cpu_s {p.daemon_cpu:.3f} s")
            print(f"restore_lines_per_s {nlines / dt:.0f} lines/s")
            dt, p = timed(ipvsadm + ["-Ln"], env, daemon=daemon)
            listed = len(p.stdout.splitlines()) - 3
            if listed != nlines:
                raise SystemExit(f"-Ln listed {listed} lines, expected {nlines}")
            print(f"list_Ln_s {dt:.3f} s")
            print(f"list_Ln_ipvsadm_cpu_s {p.tool_cpu:.3f} s")
            print(f"list_Ln_ipvsd_cpu_s {p.daemon_cpu:.3f} s")
            dt, p = timed(ipvsadm + ["-S", "-n"], env, daemon=daemon)
            if len(p.stdout.splitlines()) != nlines:
                raise SystemExit("-S -n does not give back the restored rules")
            print(f"save_Sn_s {dt:.3f} s")
            print(f"save_Sn_ipvsadm_cpu_s {p.tool_cpu:.3f} s")
            print(f"save_Sn_ipvsd_cpu_s {p.daemon_cpu:.3f} s")
            with Client(sock) as c:
                t0 = time.perf_counter()
                reply = c.call({"version": 1, "cmd": "GET_PROC", "name": "ip_vs"})
                dt = time.perf_counter() - t0
            if len(reply["text"].splitlines()) != nlines + 3:
                raise SystemExit("GET_PROC ip_vs has the wrong number of lines")
            print(f"proc_ip_vs_s {dt:.3f} s")
            print(f"daemon_rss_mib {rss_bytes(daemon.pid) / 2**20:.1f} MiB")
        finally:
            stop_daemon(daemon)

        # The same rules, pipelined: parse with ipvsadm's code, then send.
        from ipvs.cli import ipvsadm as ipvsadm_mod

        sock2 = os.path.join(tmp, "ipvsd2.sock")
        daemon = start_daemon(sock2)
        try:
            t0 = time.perf_counter()
            rec = Recorder()
            ipvsadm_mod.restore(text.splitlines(), rec, sys.stderr)
            parse_s = time.perf_counter() - t0
            with Client(sock2, timeout=600) as c:
                replies = c.call_many(rec.reqs)
            dt = time.perf_counter() - t0
            if not all(r.get("ok") for r in replies):
                raise SystemExit("pipelined restore had errors")
            print(f"restore_pipelined_s {dt:.3f} s")
            print(f"parse_only_s {parse_s:.3f} s")
        finally:
            stop_daemon(daemon)

        from ipvs import netlink
        from ipvs.netns import NetnsIPVS

        ipvs = NetnsIPVS()
        t0 = time.perf_counter()
        for r in rec.reqs:
            netlink.dispatch(ipvs, r, 0)
        print(f"dispatch_only_s {time.perf_counter() - t0:.3f} s")


if __name__ == "__main__":
    main()
