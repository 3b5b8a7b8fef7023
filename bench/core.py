#!/usr/bin/env python3
"""Core fast-path figures: prints ``name value unit`` lines.

established_pps   client->VIP and RS->client packets of open connections
new_conn_pps      SYNs that create a connection (rr scheduler)
established_in_pps_METHOD  client->VIP packets of open connections only,
                  by forwarding method: nat, dr, tun_ipip, tun_gue (with its
                  UDP checksum), tun_gre (DR and TUN have no replies through
                  the director: this is their whole load, and NAT's half)
new_conn_pps_METHOD  SYNs that create a connection, by method (dr, tun_ipip)
bytes_per_conn    memory per held connection over N connections: the
                  growth of the process's resident size (PyPy has no
                  tracemalloc; RSS means the same on both runtimes)
traced_bytes_per_conn  the same from tracemalloc (CPython only)
expire_us_per_conn  cost of expiring them
machine_start_fast, _slow_share, machine_end_*
                  the machine's speed before and after the figures
                  (bench/_runtime.py: print_machine_speed): a slow share
                  above 0 says some figures may come from a half-speed spell
jit_traces_too_long  (PyPy) traces the JIT abandoned as longer than ipvsd's
                  trace limit, with the functions it compiled apart
                  instead: a packet path split in pieces runs slower

With ``--ipv6`` the rates run again over IPv6 (the same kind of
service on 2001:db8::/32 addresses) and print with ``_v6``:
``new_conn_pps_v6`` and ``established_pps_v6`` (VS/NAT), and the
per-method ones (``established_in_pps_METHOD_v6``, ``new_conn_pps_dr_v6``,
``new_conn_pps_tun_ipip_v6``: DR, and IPv6-in-IPv6 tunnels).

The two rates are the best of ``--repeat`` timed runs, timed in the
thread's CPU time (wall-clock time counts what other jobs of a shared
machine had the CPU): the best run is the one least disturbed by others.  On
PyPy the first run includes the JIT's compiling; the best is a warm one.

Run: .venv-pypy/bin/python bench/core.py [--conns N] [--repeat N] [--quick] [--ipv6]
     .venv/bin/python bench/core.py --runtimes 3   (both runtimes, interleaved)
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from _runtime import (  # noqa: E402
    print_jit_traces_too_long,
    print_machine_speed,
    print_runtime,
    rss_bytes,
    run_as_ipvsd,
    run_both,
    without_option,
)

from ipvs import ctl, uapi  # noqa: E402
from ipvs.core import NF_STOLEN, Director  # noqa: E402
from ipvs.packet import ip_send_check, l4_checksum, parse  # noqa: E402

VIP = ipaddress.ip_address("203.0.113.5").packed
RS = [ipaddress.ip_address(f"172.16.0.{i}").packed for i in (2, 3)]
VIP6 = ipaddress.ip_address("2001:db8:0:5::5").packed
RS6 = [ipaddress.ip_address(f"2001:db8:0:2::{i}").packed for i in (2, 3)]


def tcp_header(sport: int, dport: int, flags: int) -> bytearray:
    """A 20-byte TCP header (sequence 1000, window 64240), checksum left 0:
    the part both frame builders share."""
    tcp = bytearray(20)
    tcp[0:2] = sport.to_bytes(2, "big")
    tcp[2:4] = dport.to_bytes(2, "big")
    tcp[4:8] = (1000).to_bytes(4, "big")
    tcp[12] = 5 << 4
    tcp[13] = flags
    tcp[14:16] = (64240).to_bytes(2, "big")
    return tcp


def tcp_frame(src: bytes, sport: int, dst: bytes, dport: int, flags: int, payload: bytes = b"") -> bytearray:
    eth = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
    tot = 20 + 20 + len(payload)
    ip = bytearray(20)
    ip[0] = 0x45
    ip[2:4] = tot.to_bytes(2, "big")
    ip[6] = 0x40
    ip[8] = 64
    ip[9] = 6
    ip[12:16] = src
    ip[16:20] = dst
    buf = bytearray(eth) + ip + tcp_header(sport, dport, flags) + payload
    ip_send_check(buf, 14)
    h = parse(buf, 14)
    buf[14 + 20 + 16 : 14 + 20 + 18] = l4_checksum(buf, h).to_bytes(2, "big")
    return buf


def tcp_frame6(src: bytes, sport: int, dst: bytes, dport: int, flags: int, payload: bytes = b"") -> bytearray:
    """The IPv6 twin of :func:`tcp_frame` (no extension headers)."""
    eth = b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd"
    ip = bytearray(40)
    ip[0] = 0x60
    ip[4:6] = (20 + len(payload)).to_bytes(2, "big")
    ip[6] = 6
    ip[7] = 64
    ip[8:24] = src
    ip[24:40] = dst
    buf = bytearray(eth) + ip + tcp_header(sport, dport, flags) + payload
    h = parse(buf, 14)
    buf[14 + 40 + 16 : 14 + 40 + 18] = l4_checksum(buf, h).to_bytes(2, "big")
    return buf


#: Per family: (frame builder, VIP, real servers, client address of n, offset of the rewritten daddr).
FAMILIES = {
    4: (tcp_frame, VIP, RS, lambda n: (0xC6336400 + 2 + n).to_bytes(4, "big"), (30, 34)),
    6: (tcp_frame6, VIP6, RS6, lambda n: bytes.fromhex("20010db8000000010000000000000000")[:12]
        + (2 + n).to_bytes(4, "big"), (38, 54)),
}



#: The forwarding methods of the per-method figures: ipvsadm's real server options.
METHODS = {
    "nat": {"conn_flags": uapi.IP_VS_CONN_F_MASQ},
    "dr": {"conn_flags": uapi.IP_VS_CONN_F_DROUTE},
    "tun_ipip": {"conn_flags": uapi.IP_VS_CONN_F_TUNNEL},
    "tun_gue": {"conn_flags": uapi.IP_VS_CONN_F_TUNNEL, "tun_type": uapi.IP_VS_CONN_F_TUNNEL_TYPE_GUE,
                "tun_port": 6080, "tun_flags": uapi.IP_VS_TUNNEL_ENCAP_FLAG_CSUM},
    "tun_gre": {"conn_flags": uapi.IP_VS_CONN_F_TUNNEL, "tun_type": uapi.IP_VS_CONN_F_TUNNEL_TYPE_GRE},
}
DIRECTOR = ipaddress.ip_address("172.16.0.1").packed
DIRECTOR6 = ipaddress.ip_address("2001:db8:0:2::1").packed


def director(sched: str = "rr", family: int = 4, method: str = "nat") -> Director:
    d = Director()
    # The tunnels' source (the driver's route lookup).
    d.own_address = lambda dst: DIRECTOR6 if len(dst) == 16 else DIRECTOR
    _frame, vip, rss, _c, _at = FAMILIES[family]
    af = uapi.AF_INET6 if family == 6 else uapi.AF_INET
    su = ctl.ServiceUser(af=af, addr=vip, port=80, sched_name=sched, netmask=128 if family == 6 else 0xFFFFFFFF)
    ctl.add_service(d.ipvs, su)
    for rs in rss:
        ctl.add_dest(d.ipvs, su, ctl.DestUser(af=af, addr=rs, port=80, **METHODS[method]))
    d.ipvs.conn_tab.max_conns = 1 << 24
    return d


def client(i: int, family: int = 4) -> tuple[bytes, int]:
    """The i-th distinct client address and port (60,000 ports per address)."""
    return FAMILIES[family][3](i // 60000), 1024 + i % 60000


def bench_new(n: int, repeat: int = 1, family: int = 4, method: str = "nat") -> float:
    best = 0.0
    frame, vip = FAMILIES[family][:2]
    for _ in range(repeat):
        d = director(family=family, method=method)
        frames = [frame(*client(i, family), vip, 80, 0x02) for i in range(n)]
        gc.collect()  # no earlier figure's garbage swept in this one's time
        t = time.thread_time()
        for f in frames:
            d.process(f, 14, 1000)
        best = max(best, n / (time.thread_time() - t))
        del d, frames
    return best


def forwarding_rate(d: Director, pkts: list[bytes], rounds: int, repeat: int) -> float:
    """Packets per second of CPU time for ``d`` forwarding ``pkts`` (frames
    of open connections) ``rounds`` times over, one jiffy per round: the
    best of ``repeat`` timed runs."""
    proc = d.process
    best = 0.0
    now = 1000
    for _ in range(repeat):
        gc.collect()  # no earlier figure's garbage swept in this one's time
        t = time.thread_time()
        for _r in range(rounds):
            now += 1
            for p in pkts:
                proc(bytearray(p), 14, now)
        best = max(best, rounds * len(pkts) / (time.thread_time() - t))
    return best


def bench_established(nconn: int, rounds: int, repeat: int = 1, family: int = 4) -> float:
    d = director(family=family)
    frame, vip, _rss, _c, (a, b) = FAMILIES[family]
    ins = []
    outs = []
    for i in range(nconn):
        c, p = client(i, family)
        syn = frame(c, p, vip, 80, 0x02)
        assert d.process(syn, 14, 1000) == NF_STOLEN
        rs = syn[a:b]
        ins.append(bytes(frame(c, p, vip, 80, 0x10, b"x" * 100)))
        outs.append(bytes(frame(bytes(rs), 80, c, p, 0x10, b"y" * 500)))
    return forwarding_rate(d, [x for pair in zip(ins, outs) for x in pair], rounds, repeat)


def bench_established_in(nconn: int, rounds: int, repeat: int, method: str, family: int = 4) -> float:
    """Client->VIP packets of ``nconn`` open connections forwarded by ``method``."""
    d = director(family=family, method=method)
    frame, vip = FAMILIES[family][:2]
    ins = []
    for i in range(nconn):
        c, p = client(i, family)
        assert d.process(frame(c, p, vip, 80, 0x02), 14, 1000) == NF_STOLEN
        ins.append(bytes(frame(c, p, vip, 80, 0x10, b"x" * 100)))
    return forwarding_rate(d, ins, rounds, repeat)


def bench_memory(n: int) -> tuple[float, float | None, float]:
    try:
        import tracemalloc
    except ImportError:  # PyPy
        tracemalloc = None
    d = director()
    tab = d.ipvs.conn_tab
    gc.collect()
    if tracemalloc is not None:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
    rss0 = rss_bytes()
    tmpl = bytes(tcp_frame(*client(0), VIP, 80, 0x02))
    for i in range(n):
        # A SYN from another client port; the checksum is left stale (the
        # core does not verify TCP checksums on this path, nor does the kernel).
        buf = bytearray(tmpl)
        c, p = client(i)
        buf[26:30] = c
        buf[34:36] = p.to_bytes(2, "big")
        d.process(buf, 14, 1000)
    assert not d.ipvs.outbox
    gc.collect()
    rss = rss_bytes() - rss0
    traced = None
    if tracemalloc is not None:
        traced = (tracemalloc.get_traced_memory()[0] - base) / n
        tracemalloc.stop()
    assert len(tab) == n, (len(tab), n)
    t = time.thread_time()
    d.run_timers(1000 + 3 * 60 * 250)
    dt = time.thread_time() - t
    assert len(tab) == 0
    return rss / n, traced, dt / n * 1e6


def main() -> None:
    run_as_ipvsd()  # on PyPy, as ipvsd runs: its GC nursery and malloc threshold
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of the two rates; the best is printed")
    ap.add_argument("--ipv6", action="store_true", help="also the two rates over IPv6 (*_v6)")
    ap.add_argument("--runtimes", type=int, metavar="ROUNDS",
                    help="run this benchmark under CPython and PyPy, alternating, ROUNDS times each")
    a = ap.parse_args()
    if a.runtimes:
        run_both(os.path.abspath(__file__), without_option(sys.argv[1:], "--runtimes"), a.runtimes)
        return
    print_runtime()
    print_machine_speed("start")
    # Memory first: memory the rate runs freed stays in the process and
    # would hide the growth of the resident size.
    per, traced, exp = bench_memory(20_000 if a.quick else a.conns)
    print(f"bytes_per_conn {per:.0f} B")
    if traced is not None:
        print(f"traced_bytes_per_conn {traced:.0f} B")
    print(f"expire_us_per_conn {exp:.2f} us")
    n = 20_000 if a.quick else 100_000
    print(f"new_conn_pps {bench_new(n, a.repeat):.0f} pkt/s")
    print(f"established_pps {bench_established(1000, 20 if a.quick else 100, a.repeat):.0f} pkt/s")
    if a.ipv6:
        print(f"new_conn_pps_v6 {bench_new(n, a.repeat, 6):.0f} pkt/s")
        print(f"established_pps_v6 {bench_established(1000, 20 if a.quick else 100, a.repeat, 6):.0f} pkt/s")
    for method in METHODS:
        pps = bench_established_in(1000, 20 if a.quick else 100, a.repeat, method)
        print(f"established_in_pps_{method} {pps:.0f} pkt/s")
    for method in ("dr", "tun_ipip"):
        print(f"new_conn_pps_{method} {bench_new(n, a.repeat, method=method):.0f} pkt/s")
    if a.ipv6:
        for method in METHODS:
            pps = bench_established_in(1000, 20 if a.quick else 100, a.repeat, method, 6)
            print(f"established_in_pps_{method}_v6 {pps:.0f} pkt/s")
        for method in ("dr", "tun_ipip"):
            print(f"new_conn_pps_{method}_v6 {bench_new(n, a.repeat, 6, method):.0f} pkt/s")
    print_machine_speed("end")
    print_jit_traces_too_long()


if __name__ == "__main__":
    main()
