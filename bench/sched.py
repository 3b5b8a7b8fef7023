#!/usr/bin/env python3
"""Scheduler figures: prints ``name value unit`` lines.

sched_<name>_n<N>      cost of one scheduling decision with N destinations
                       (us/decision), clients and VIP-side addresses cycling
                       through 1024 values; weights 1..4 in turn
sched_wrr_skewed_n<N>  wrr with one destination of weight 100, the rest 1
sched_mh_cold_n<N>     mh with a new client address every decision (no memo hit)
mh_build_n<N>          one Maglev table rebuild (ms), 4093 slots

The O(1) schedulers (rr, wrr, sh, dh, mh) should stay flat as N grows;
lc, wlc, sed, nq, fo, ovf, twos and the wlc fallback of lblc/lblcr walk
the list, as in the kernel.

Run: python3 bench/sched.py [--sizes 1,10,100,1000] [--budget 0.2]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from ipvs import ctl  # noqa: E402
from ipvs.netns import NetnsIPVS  # noqa: E402
from ipvs.sched import SCHEDULER_NAMES, IPHdr  # noqa: E402
from ipvs.uapi import AF_INET, IP_VS_CONN_F_MASQ, IPPROTO_TCP  # noqa: E402

VIP = ipaddress.ip_address("203.0.113.5").packed


def service(sched: str, n: int, weights=None):
    ipvs = NetnsIPVS()
    su = ctl.ServiceUser(af=AF_INET, protocol=IPPROTO_TCP, addr=VIP, port=80, sched_name=sched)
    svc = ctl.add_service(ipvs, su)
    base = int(ipaddress.ip_address("172.16.0.0"))
    for i in range(n):
        w = weights(i) if weights else 1 + i % 4
        addr = ipaddress.IPv4Address(base + 1 + i).packed
        ctl.add_dest(ipvs, su, ctl.DestUser(addr=addr, port=80, weight=w, conn_flags=IP_VS_CONN_F_MASQ))
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


def per_decision(svc, hdrs: list[IPHdr], budget: float, rounds: int = 3) -> float:
    """Microseconds per schedule() call, with the kernel's accounting (the
    chosen dest gets an inactive connection) so the lc family moves.

    The best of ``rounds`` timings, each of about ``budget / rounds``
    seconds, to damp the noise of a shared machine.
    """
    sched = svc.scheduler.schedule
    for h in hdrs[:256]:  # warm caches, lblc tables, wrr lists
        sched(h, 0)
    best = float("inf")
    for _ in range(rounds):
        done = 0
        t0 = time.perf_counter()
        elapsed = 0.0
        while elapsed < budget / rounds:
            for h in hdrs:
                d = sched(h, 0)
                if d is not None:
                    d.inactconns += 1
            done += len(hdrs)
            elapsed = time.perf_counter() - t0
        best = min(best, elapsed / done * 1e6)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,10,100,1000")
    ap.add_argument("--budget", type=float, default=0.2, help="seconds per figure")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    hdrs = headers(1024)
    for name in SCHEDULER_NAMES:
        for n in sizes:
            us = per_decision(service(name, n), hdrs, args.budget)
            print(f"sched_{name}_n{n} {us:.2f} us/decision", flush=True)
    for n in sizes:
        svc = service("wrr", n, weights=lambda i: 100 if i == 0 else 1)
        print(f"sched_wrr_skewed_n{n} {per_decision(svc, hdrs, args.budget):.2f} us/decision", flush=True)
    for n in sizes:
        svc = service("mh", n)
        svc.scheduler.lookup  # noqa: B018 - build the table outside the timing
        sched = svc.scheduler.schedule
        best = float("inf")
        for r in range(3):
            cold = headers(10000, start=(r + 1) << 20)  # never seen: no memo hit
            t0 = time.perf_counter()
            for h in cold:
                sched(h, 0)
            best = min(best, (time.perf_counter() - t0) / len(cold) * 1e6)
        print(f"sched_mh_cold_n{n} {best:.2f} us/decision", flush=True)
    for n in sizes:
        svc = service("mh", n)
        reps = 5
        t0 = time.perf_counter()
        for _ in range(reps):
            svc.scheduler.upd_dest(svc.destinations[0])
            svc.scheduler.lookup  # noqa: B018 - the rebuild is deferred to the first use
        print(f"mh_build_n{n} {(time.perf_counter() - t0) / reps * 1e3:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
