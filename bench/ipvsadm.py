#!/usr/bin/env python3
"""What one ``ipvsadm`` call costs, against starting Python at all.

ldirectord, keepalived's notify scripts and admins' loops run ``ipvsadm``
once per change, one after the other, so the cost of one call is the
interpreter's start plus the imports plus the work.  This bench starts a
control-plane-only ``tools/ipvsd`` on a temporary socket, loads SERVICES
services of 2 real servers each, then runs, alternately, RUNS times each:

* ``PYTHON -c pass``: the floor, the same interpreter started for nothing;
* ``PYTHON tools/ipvsadm -Ln``: the launcher as a user calls it by path;
* ``ipvsadm -Ln`` through the installed console script, when ``--installed
  PATH`` names one.

For each it prints the median user+system CPU (``os.wait4``'s rusage of
that child alone) and the median wall time, then the ratio of ipvsadm's
CPU to the floor's (the goal is at most 2.5).  It prints
``name value unit`` lines and the runtime it ran on, with the load average
(the machine is shared: wall times follow other people's load, CPU times
much less).

Byte-compiled files are written in a warm-up run (``PYTHONDONTWRITEBYTECODE``
is dropped for the children), as they are after a ``pip install``.

Run: python3 bench/ipvsadm.py [--services 10 1000] [--runs 21] [--python python3]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ipvs.client import Client  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "bench"))
from _runtime import start_daemon, stop_daemon  # noqa: E402


def rules(services: int) -> str:
    out = []
    for i in range(services):
        vip = f"203.0.113.{1 + i // 1000 % 250}:{1000 + i % 1000}"
        out.append(f"-A -t {vip} -s wlc")
        for k in range(2):
            out.append(f"-a -t {vip} -r 172.16.0.{2 + k}:80 -m -w {1 + k}")
    return "\n".join(out) + "\n"


def measure(cmd: list[str], env: dict) -> tuple[float, float, bytes]:
    """(CPU seconds of this child alone, wall seconds, stdout) of one run of ``cmd``."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = p.stdout.read()
    err = p.stderr.read()
    p.stdout.close()
    p.stderr.close()
    _pid, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait again
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}): {err.decode(errors='replace')[:500]}")
    return ru.ru_utime + ru.ru_stime, wall, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, nargs="+", default=[10, 1000])
    ap.add_argument("--runs", type=int, default=21)
    ap.add_argument("--python", default="python3", help="the interpreter tools/ipvsadm's #! line finds")
    ap.add_argument("--installed", metavar="PATH", help="an installed ipvsadm console script to measure too")
    args = ap.parse_args()
    python = shutil.which(args.python) or args.python
    ver = subprocess.run([python, "-c", "import platform; print(platform.python_implementation(), "
                          "platform.python_version())"], capture_output=True, text=True).stdout.strip()
    print(f"runtime {ver.replace(' ', '-')} ({python}); bench on {platform.python_implementation()}")
    print(f"load_1min {os.getloadavg()[0]:.2f} runnable")
    with tempfile.TemporaryDirectory(prefix="pyipvs-bench-") as tmp:
        sock = os.path.join(tmp, "ipvsd.sock")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["IPVS_SOCKET"] = sock
        daemon = start_daemon(sock)
        try:
            for n in args.services:
                with Client(sock, timeout=60) as c:
                    c.call({"version": 1, "cmd": "FLUSH"})
                r = subprocess.run([python, os.path.join(ROOT, "tools", "ipvsadm"), "-R"], input=rules(n),
                                   env=env, capture_output=True, text=True, timeout=300)
                if r.returncode != 0:
                    raise SystemExit(f"ipvsadm -R failed: {r.stderr[:500]}")
                cmds = {"python_pass": [python, "-c", "pass"],
                        "ipvsadm_Ln": [python, os.path.join(ROOT, "tools", "ipvsadm"), "-Ln"]}
                if args.installed:
                    cmds["installed_ipvsadm_Ln"] = [args.installed, "-Ln"]
                for cmd in cmds.values():  # warm-up: byte-compile, fill the page cache
                    measure(cmd, env)
                cpu: dict[str, list[float]] = {k: [] for k in cmds}
                wall: dict[str, list[float]] = {k: [] for k in cmds}
                for _ in range(args.runs):
                    for name, cmd in cmds.items():
                        c, w, out = measure(cmd, env)
                        if name != "python_pass" and len(out.splitlines()) != 3 + 3 * n:
                            raise SystemExit(f"{name} listed {len(out.splitlines())} lines, expected {3 + 3 * n}")
                        cpu[name].append(c)
                        wall[name].append(w)
                floor = statistics.median(cpu["python_pass"])
                for name in cmds:
                    print(f"{name}_{n}_cpu_ms {statistics.median(cpu[name]) * 1e3:.1f} ms")
                    print(f"{name}_{n}_wall_ms {statistics.median(wall[name]) * 1e3:.1f} ms")
                    if name != "python_pass":
                        print(f"{name}_{n}_cpu_ratio {statistics.median(cpu[name]) / floor:.2f} x_python_pass")
        finally:
            stop_daemon(daemon)
    print(f"load_1min_after {os.getloadavg()[0]:.2f} runnable")


if __name__ == "__main__":
    main()
