#!/usr/bin/env python3
"""Scheduler figures: prints ``name value unit`` lines.

runtime <impl> <version>  the interpreter that ran the figures (bench/_runtime.py)
loadavg_<when> <1 min>    the machine's load before and after (shared cores)
machine_<when>_fast, _slow_share  its speed before and after (bench/_runtime.py:
                       print_machine_speed): a slow share above 0 says some
                       figures may come from a half-speed spell
sched_<name>_n<N>      cost of one scheduling decision with N destinations
                       (us/decision), clients and VIP-side addresses cycling
                       through 1024 values; weights 1..4 in turn; each chosen
                       destination gets an inactive connection
sched_nq_busy_n<N>     nq when every destination has active connections (the
                       chosen one gets an active connection instead), so it
                       walks the list; sched_nq_n<N> is its fast case (an
                       idle destination early in the list)
sched_wrr_skewed_n<N>  wrr with one destination of weight 100, the rest 1
sched_mh_cold_n<N>     mh with a new client address every decision (no memo hit)
mh_build_n<N>          one Maglev table rebuild (ms), 4093 slots

The cursor and table schedulers (rr, wrr, sh, dh, mh, lblc and lblcr on a
hit, nq's fast case) should stay flat as N grows; lc, wlc, sed, nq, fo, ovf,
twos and the wlc fallback of lblc/lblcr walk the list, as in the kernel.

Method, fair to a JIT (PyPy) as well as to CPython:

* every figure runs in a fresh interpreter (a child of this script), so the
  JIT's traces of the timing loop are specialised to one scheduler, not a
  chain of bridges left by the ones measured before it;
* a warm-up as long as the measurement runs first, untimed, so the JIT has
  compiled the loop (and its bridges) before the clock starts;
* then the best of ``--rounds`` timings of about ``--budget / --rounds``
  seconds each, which damps the noise of other processes on the machine;
* the clock is this thread's CPU time (``time.thread_time``), not the wall
  clock: on a machine whose cores are shared, wall time also counts the
  time the process waits for a core (3x the CPU time at a load of 8 on 2
  cores).
  The timing loop's own cost (a list walk and one attribute increment) is
  included in every figure.

Run: python3 bench/sched.py [--sizes 1,10,100,1000] [--budget 0.3] [--only mh,wlc]
     .venv/bin/python bench/sched.py --runtimes 3   (both runtimes, interleaved)
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from _runtime import print_machine_speed, print_runtime, run_as_ipvsd, run_both, without_option  # noqa: E402

from ipvs import ctl  # noqa: E402
from ipvs.netns import NetnsIPVS  # noqa: E402
from ipvs.sched import SCHEDULER_NAMES, IPHdr  # noqa: E402
from ipvs.uapi import AF_INET, IP_VS_CONN_F_MASQ, IPPROTO_TCP  # noqa: E402

VIP = ipaddress.ip_address("203.0.113.5").packed
#: Decisions between two looks at the clock.
CHUNK = 1024


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "nan"


def weights_cycle(i: int) -> int:
    return 1 + i % 4


def weights_skewed(i: int) -> int:
    return 100 if i == 0 else 1


def service(sched: str, n: int, weights=weights_cycle):
    ipvs = NetnsIPVS()
    su = ctl.ServiceUser(af=AF_INET, protocol=IPPROTO_TCP, addr=VIP, port=80, sched_name=sched)
    svc = ctl.add_service(ipvs, su)
    base = int(ipaddress.ip_address("172.16.0.0"))
    for i in range(n):
        addr = ipaddress.IPv4Address(base + 1 + i).packed
        ctl.add_dest(ipvs, su, ctl.DestUser(addr=addr, port=80, weight=weights(i), conn_flags=IP_VS_CONN_F_MASQ))
    return svc


def headers(count: int, start: int = 0) -> list[IPHdr]:
    c0 = int(ipaddress.ip_address("198.51.100.0")) << 8  # spread over 24 bits
    d0 = int(ipaddress.ip_address("203.0.113.0"))
    return [
        IPHdr(
            AF_INET,
            IPPROTO_TCP,
            ipaddress.IPv4Address((c0 + start + i) & 0xFFFFFFFF).packed,
            ipaddress.IPv4Address(d0 + (i % 1024)).packed,
            1024 + i % 60000,
            80,
        )
        for i in range(count)
    ]


def timed_inactive(sched, hdrs: list[IPHdr], seconds: float) -> float:
    """Run ``sched`` over ``hdrs`` for about ``seconds``; us per decision.
    The chosen destination gets an inactive connection, as the kernel
    accounts a new one, so the lc family moves."""
    done = 0
    t0 = time.thread_time()
    elapsed = 0.0
    while elapsed < seconds:
        for h in hdrs:
            d = sched(h, 0)
            if d is not None:
                d.inactconns += 1
        done += len(hdrs)
        elapsed = time.thread_time() - t0
    return elapsed / done * 1e6


def timed_active(sched, hdrs: list[IPHdr], seconds: float) -> float:
    """As :func:`timed_inactive`, but the chosen one gets an active connection."""
    done = 0
    t0 = time.thread_time()
    elapsed = 0.0
    while elapsed < seconds:
        for h in hdrs:
            d = sched(h, 0)
            if d is not None:
                d.activeconns += 1
        done += len(hdrs)
        elapsed = time.thread_time() - t0
    return elapsed / done * 1e6


def best_of(run, budget: float, rounds: int) -> float:
    run(budget)  # warm-up: the JIT compiles before the clock starts
    return min(run(budget / rounds) for _ in range(rounds))


def figure_decision(name: str, n: int, budget: float, rounds: int) -> str:
    hdrs = headers(CHUNK)
    timed, sched_name, weights = timed_inactive, name, weights_cycle
    if name == "nq_busy":
        timed, sched_name = timed_active, "nq"
    elif name == "wrr_skewed":
        sched_name, weights = "wrr", weights_skewed
    sched = service(sched_name, n, weights).scheduler.schedule
    us = best_of(lambda s: timed(sched, hdrs, s), budget, rounds)
    return f"sched_{name}_n{n} {us:.3f} us/decision"


def figure_mh_cold(n: int, budget: float, rounds: int) -> str:
    """Every decision has a client address not seen before (no memo hit)."""
    sched = service("mh", n).scheduler.schedule
    count = 1 << 15
    batch = 0

    def run(seconds: float) -> float:
        nonlocal batch
        done = 0
        spent = 0.0
        while spent < seconds:
            batch += 1
            cold = headers(count, start=batch << 20)  # built outside the timing
            t0 = time.thread_time()
            for h in cold:
                sched(h, 0)
            spent += time.thread_time() - t0
            done += count
        return spent / done * 1e6

    return f"sched_mh_cold_n{n} {best_of(run, budget, rounds):.3f} us/decision"


def figure_mh_build(n: int, rounds: int) -> str:
    mh = service("mh", n).scheduler
    dest = mh.svc.destinations[0]

    def build() -> float:
        t0 = time.thread_time()
        mh.upd_dest(dest)
        mh.lookup  # noqa: B018 - the rebuild is deferred to the first use
        return (time.thread_time() - t0) * 1e3

    for _ in range(3):
        build()
    return f"mh_build_n{n} {min(build() for _ in range(rounds)):.2f} ms"


def one(fig: str, n: int, budget: float, rounds: int) -> str:
    if fig == "mh_cold":
        return figure_mh_cold(n, budget, rounds)
    if fig == "mh_build":
        return figure_mh_build(n, rounds)
    return figure_decision(fig, n, budget, rounds)


FIGURES = (*SCHEDULER_NAMES, "nq_busy", "wrr_skewed", "mh_cold", "mh_build")


def main() -> None:
    run_as_ipvsd()  # on PyPy, as ipvsd runs: its GC nursery and malloc threshold
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,10,100,1000")
    ap.add_argument("--budget", type=float, default=0.3, help="timed seconds per figure (plus as much warm-up)")
    ap.add_argument("--rounds", type=int, default=5, help="timings per figure; the best is printed")
    ap.add_argument("--only", default="", help="comma-separated figures (scheduler names, nq_busy, mh_cold, ...)")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument(
        "--runtimes", type=int, metavar="ROUNDS", help="run under CPython and PyPy, alternating, ROUNDS times each"
    )
    args = ap.parse_args()
    if args.runtimes:
        run_both(os.path.abspath(__file__), without_option(sys.argv[1:], "--runtimes"), args.runtimes)
        return
    sizes = [int(x) for x in args.sizes.split(",")]
    if args.child:
        print(one(args.child, sizes[0], args.budget, args.rounds), flush=True)
        return
    figs = [f for f in args.only.split(",") if f] or list(FIGURES)
    unknown = set(figs) - set(FIGURES)
    if unknown:
        ap.error(f"unknown figures: {', '.join(sorted(unknown))}")
    print_runtime()
    print(f"loadavg_start {loadavg()} load", flush=True)
    print_machine_speed("start")
    for fig in figs:
        for n in sizes:
            # A fresh interpreter per figure: see the module docstring.
            cmd = [sys.executable, __file__, "--child", fig, "--sizes", str(n)]
            cmd += ["--budget", str(args.budget), "--rounds", str(args.rounds)]
            subprocess.run(cmd, check=True)
    print(f"loadavg_end {loadavg()} load", flush=True)
    print_machine_speed("end")


if __name__ == "__main__":
    main()
