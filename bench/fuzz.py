#!/usr/bin/env python3
"""Fuzzing figures per surface: prints ``name value unit`` lines.

Three surfaces, each fed mutated copies of valid inputs (bit flips, byte
changes, truncation, extension, splices of two inputs), seeded so a run
can be repeated:

packets    frames through ``Director.process`` (the data path's entry):
           TCP, UDP, ICMP and fragments to and from a VIP with NAT, DR and
           tunnel services, then the director's timers run to the end
control    frames through the control socket's request boundary
           (:meth:`ipvs.daemon.ControlServer._request`): framing, JSON,
           the schema, BATCH, and every listing read back after
rules      rules files through :mod:`ipvs.rules` and ``ipvsadm -R``'s parser

Per surface: inputs run, inputs per second, unhandled exceptions (must be
0), and the process's resident memory before and after (a leak shows as
growth that more inputs keep growing; the connection table is emptied by
the timers first).  ``--quick`` runs a bounded version; the test command
runs smaller ones still (``tests/test_fuzz.py``).

Run: .venv-pypy/bin/python bench/fuzz.py [--packets N] [--control N] [--rules N] [--seed S] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import random
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from ipvs import ctl, uapi  # noqa: E402
from ipvs.client import encode  # noqa: E402
from ipvs.core import Director  # noqa: E402
from ipvs.daemon import runtime  # noqa: E402
from ipvs.netlink import LocalTransport  # noqa: E402
from ipvs.netns import NetnsIPVS  # noqa: E402
from ipvs.packet import ip_send_check  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _runtime import rss_bytes  # noqa: E402

VIP = bytes([203, 0, 113, 5])
CLIENT = bytes([198, 51, 100, 2])
RS = (bytes([172, 16, 0, 2]), bytes([172, 16, 0, 3]))
VIP6 = bytes.fromhex("20010db8000000050000000000000005")
CLIENT6 = bytes.fromhex("20010db8000000010000000000000002")
RS6 = (bytes.fromhex("20010db8000000020000000000000002"), bytes.fromhex("20010db8000000020000000000000003"))
HZ = 250


def mutate(rng: random.Random, data: bytes, others: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        if op == 0 and b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[rng.randrange(len(b))] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        elif op == 2 and b:
            del b[rng.randrange(len(b)) :]
        elif op == 3:
            b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 4 and others:
            o = rng.choice(others)
            cut = rng.randrange(len(b) + 1)
            b = b[:cut] + o[rng.randrange(len(o) + 1) :]
        elif op == 5 and len(b) > 2:
            i = rng.randrange(len(b) - 1)
            b[i : i + 2] = struct.pack("!H", rng.choice((0, 1, 0xFFFF, len(b), len(b) + 1)))
    return bytes(b)


# ------------------------------------------------------------------ packets


def _ip(src: bytes, dst: bytes, proto: int, l4: bytes, frag: int = 0x4000) -> bytes:
    ip = bytearray(20)
    ip[0] = 0x45
    ip[2:4] = (20 + len(l4)).to_bytes(2, "big")
    ip[6:8] = frag.to_bytes(2, "big")
    ip[8] = 64
    ip[9] = proto
    ip[12:16] = src
    ip[16:20] = dst
    buf = bytearray(b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00") + ip + l4
    ip_send_check(buf, 14)
    return bytes(buf)


def _ip6(src: bytes, dst: bytes, proto: int, l4: bytes, hbh: bool = False, frag: int | None = None) -> bytes:
    """An IPv6 frame, with a hop-by-hop header or a fragment header (offset|M) in front of ``l4``."""
    exts = b""
    nh = proto
    if frag is not None:
        exts = bytes([nh, 0]) + frag.to_bytes(2, "big") + (7).to_bytes(4, "big")
        nh = 44
    if hbh:
        exts = bytes([nh, 0, 1, 4, 0, 0, 0, 0]) + exts
        nh = 0
    ip = bytearray(40)
    ip[0] = 0x60
    ip[4:6] = (len(exts) + len(l4)).to_bytes(2, "big")
    ip[6] = nh
    ip[7] = 64
    ip[8:24] = src
    ip[24:40] = dst
    return bytes(bytearray(b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd") + ip + exts + l4)


def packet_seeds6() -> list[bytes]:
    """IPv6 seeds: TCP both ways (some behind a hop-by-hop header), UDP,
    FTP's EPRT, an ICMPv6 error quoting a reply, an echo, a neighbour
    solicitation and fragments."""
    seeds = []
    for sport in (1024, 40000):
        for flags in (0x02, 0x10, 0x18, 0x11, 0x04):
            tcp = struct.pack("!HHIIBBHHH", sport, 80, 1000, 0, 5 << 4, flags, 64240, 0, 0)
            seeds.append(_ip6(CLIENT6, VIP6, 6, tcp, hbh=flags == 0x10))
            back = struct.pack("!HHIIBBHHH", 80, sport, 5000, 1001, 5 << 4, flags, 64240, 0, 0)
            seeds.append(_ip6(RS6[0], CLIENT6, 6, back))
        seeds.append(_ip6(CLIENT6, VIP6, 17, struct.pack("!HHHH", sport, 53, 12, 0) + b"quer"))
        seeds.append(_ip6(CLIENT6, VIP6, 6, struct.pack("!HHIIBBHHH", sport, 21, 1, 0, 5 << 4, 0x18, 512, 0, 0)
                          + b"EPRT |2|2001:db8::2|1025|\r\n"))
    quoted = _ip6(VIP6, CLIENT6, 6, struct.pack("!HHI", 80, 1024, 1))[14:]
    seeds.append(_ip6(RS6[0], CLIENT6, 58, bytes([1, 4, 0, 0, 0, 0, 0, 0]) + quoted))
    seeds.append(_ip6(CLIENT6, VIP6, 58, bytes([2, 0, 0, 0, 0, 0, 5, 0]) + quoted))
    seeds.append(_ip6(CLIENT6, VIP6, 58, bytes([128, 0, 0, 0, 0, 1, 0, 1]) + b"ping"))
    seeds.append(_ip6(CLIENT6, VIP6, 58, bytes([135, 0, 0, 0, 0, 0, 0, 0]) + VIP6))
    seeds.append(_ip6(CLIENT6, VIP6, 17, struct.pack("!HHHH", 1024, 53, 1480, 0) + bytes(64), frag=1))
    seeds.append(_ip6(CLIENT6, VIP6, 17, bytes(64), frag=8))
    return seeds


def packet_seeds() -> list[bytes]:
    seeds = []
    for sport in (1024, 40000):
        for flags in (0x02, 0x10, 0x18, 0x11, 0x04, 0x12):
            tcp = struct.pack("!HHIIBBHHH", sport, 80, 1000, 0, 5 << 4, flags, 64240, 0, 0)
            seeds.append(_ip(CLIENT, VIP, 6, tcp + b"GET / HTTP/1.0\r\n\r\n" * (flags == 0x18)))
            back = struct.pack("!HHIIBBHHH", 80, sport, 5000, 1001, 5 << 4, flags, 64240, 0, 0)
            seeds.append(_ip(RS[0], CLIENT, 6, back))
        seeds.append(_ip(CLIENT, VIP, 17, struct.pack("!HHHH", sport, 53, 12, 0) + b"quer"))
        seeds.append(_ip(CLIENT, VIP, 6, struct.pack("!HHIIBBHHH", sport, 21, 1, 0, 5 << 4, 0x18, 512, 0, 0)
                         + b"PORT 198,51,100,2,4,1\r\n"))
    quoted = _ip(VIP, CLIENT, 6, struct.pack("!HHI", 80, 1024, 1))[14:]
    seeds.append(_ip(RS[0], CLIENT, 1, bytes([3, 4, 0, 0, 0, 0, 5, 0xDC]) + quoted))
    seeds.append(_ip(CLIENT, VIP, 1, bytes([8, 0, 0, 0, 0, 1, 0, 1]) + b"ping"))
    seeds.append(_ip(CLIENT, VIP, 17, struct.pack("!HHHH", 1024, 53, 1480, 0) + bytes(64), frag=0x2000))
    seeds.append(_ip(CLIENT, VIP, 17, bytes(64), frag=0x0008))
    return seeds + packet_seeds6()


def packet_director() -> Director:
    ipvs = NetnsIPVS()
    d = Director(ipvs)
    for port, fwd in ((80, uapi.IP_VS_CONN_F_MASQ), (53, uapi.IP_VS_CONN_F_DROUTE), (21, uapi.IP_VS_CONN_F_MASQ)):
        for proto in (6, 17):
            svc = ctl.ServiceUser(af=2, protocol=proto, addr=VIP, port=port, sched_name="wlc",
                                  flags=uapi.IP_VS_SVC_F_PERSISTENT if port == 21 else 0, timeout=300,
                                  netmask=0xFFFFFFFF)
            ctl.add_service(ipvs, svc)
            for rs in RS:
                ctl.add_dest(ipvs, svc, ctl.DestUser(addr=rs, port=port, conn_flags=fwd, weight=1))
            svc6 = ctl.ServiceUser(af=10, protocol=proto, addr=VIP6, port=port, sched_name="wlc",
                                   flags=uapi.IP_VS_SVC_F_PERSISTENT if port == 21 else 0, timeout=300, netmask=64)
            ctl.add_service(ipvs, svc6)
            for rs in RS6:
                ctl.add_dest(ipvs, svc6, ctl.DestUser(af=10, addr=rs, port=port, conn_flags=fwd, weight=1))
    return d


def fuzz_packets(n: int, seed: int) -> dict:
    rng = random.Random(seed)
    d = packet_director()
    seeds = packet_seeds()
    errors = 0
    now = 1000
    gc.collect()
    before = rss_bytes() // 1024
    t0 = time.perf_counter()
    for i in range(n):
        frame = bytearray(mutate(rng, rng.choice(seeds), seeds) if i % 8 else rng.choice(seeds))
        try:
            d.process(frame, 14, now)
        except Exception as e:  # noqa: BLE001 (counted: the figure this bench is for)
            errors += 1
            if errors <= 3:
                print(f"# packet {i}: {type(e).__name__}: {e}", file=sys.stderr)
        if i % 1000 == 0:
            now += 1
            d.run_timers(now)
    elapsed = time.perf_counter() - t0
    conns = len(d.ipvs.conn_tab)
    for step in range(0, 3600 * HZ, HZ):  # let every entry time out
        d.run_timers(now + step)
    gc.collect()
    return {"inputs": n, "per_s": n / elapsed, "errors": errors, "rss_before": before, "rss_after": rss_bytes() // 1024,
            "conns_peak": conns, "conns_left": len(d.ipvs.conn_tab)}


# ------------------------------------------------------------------ control


def control_seeds() -> list[bytes]:
    v = {"version": 1}
    svc = {"af": 2, "protocol": 6, "addr": "203.0.113.5", "port": 80, "sched_name": "wlc",
           "flags": {"flags": 0, "mask": 0xFFFFFFFF}, "timeout": 0, "netmask": 0xFFFFFFFF}
    dest = {"addr": "172.16.0.2", "port": 80, "fwd_method": 0, "weight": 1, "u_threshold": 0, "l_threshold": 0}
    reqs = [
        {**v, "cmd": "GET_INFO"}, {**v, "cmd": "NEW_SERVICE", "service": svc},
        {**v, "cmd": "NEW_DEST", "service": svc, "dest": dest}, {**v, "cmd": "GET_SERVICE"},
        {**v, "cmd": "GET_DEST", "service": svc}, {**v, "cmd": "SET_SYSCTL", "name": "sloppy_tcp", "value": 1},
        {**v, "cmd": "NEW_DAEMON", "daemon": {"state": 1, "mcast_ifn": "eth0", "sync_id": 1}},
        {**v, "cmd": "GET_DAEMON"}, {**v, "cmd": "GET_PROC", "name": "ip_vs"},
        {**v, "cmd": "BATCH", "requests": [{**v, "cmd": "GET_SERVICE"}, {**v, "cmd": "DEL_SERVICE", "service": svc}]},
        {**v, "cmd": "SET_CONFIG", "timeout_tcp": 900, "timeout_tcp_fin": 120, "timeout_udp": 300},
        {**v, "cmd": "ZERO"}, {**v, "cmd": "FLUSH"},
    ]
    return [encode(r)[4:] for r in reqs]


class _Peer:
    """Just what ``ControlServer._request`` touches of a connection."""

    def __init__(self) -> None:
        self.outbuf = bytearray()
        self.job = None


def fuzz_control(n: int, seed: int, path: str) -> dict:
    from ipvs.daemon import ControlServer

    rng = random.Random(seed)
    server = ControlServer(NetnsIPVS(), path=path)
    server.begin_turn = lambda: None
    server._deadline = float("inf")
    seeds = control_seeds()
    errors = 0
    gc.collect()
    before = rss_bytes() // 1024
    t0 = time.perf_counter()
    try:
        for i in range(n):
            body = mutate(rng, rng.choice(seeds), seeds) if i % 4 else rng.choice(seeds)
            peer = _Peer()
            try:
                server._request(peer, body)
                while peer.job is not None:
                    server._run_job(peer)
                (size,) = struct.unpack_from("!I", peer.outbuf)
                reply = json.loads(bytes(peer.outbuf[4 : 4 + size]))
                if not isinstance(reply, dict) or "ok" not in reply and "errno" not in reply:
                    raise AssertionError(f"not a reply: {reply!r}")
            except Exception as e:  # noqa: BLE001 (counted)
                errors += 1
                if errors <= 3:
                    print(f"# control {i}: {type(e).__name__}: {e}", file=sys.stderr)
            if i % 500 == 0:  # every listing of what was stored, read back and encoded
                for cmd in ("GET_SERVICE", "GET_DAEMON", "GET_SYSCTL", "GET_INFO", "GET_CONFIG"):
                    peer = _Peer()
                    server._request(peer, encode({"version": 1, "cmd": cmd})[4:])
                    reply = json.loads(bytes(peer.outbuf[4:]))
                    if not reply.get("ok") and cmd != "GET_SYSCTL":
                        errors += 1
                server.handle({"version": 1, "cmd": "FLUSH"})
    finally:
        server.close()
    elapsed = time.perf_counter() - t0
    gc.collect()
    return {"inputs": n, "per_s": n / elapsed, "errors": errors, "rss_before": before, "rss_after": rss_bytes() // 1024}


# -------------------------------------------------------------------- rules

RULES_SEED = (
    "# ipvsadm.rules\n#\n-A -t 203.0.113.5:80 -s wlc -p 300\n"
    "-a -t 203.0.113.5:80 -r 172.16.0.2:80 -m -w 1\n-a -t 203.0.113.5:80 -r 172.16.0.3:8000 -m -w 2\n"
    "-A -u 203.0.113.5:53 -s rr\n-a -u 203.0.113.5:53 -r 172.16.0.2:53 -g\n"
    "-A -f 7 -s sh -b sh-port\n-a -f 7 -r 172.16.0.2:0 -i -w 3\n"
    "-A -t [2001:db8::5]:443 -s mh -b mh-fallback\n--set 900 120 300\n"
)


def fuzz_rules(n: int, seed: int) -> dict:
    from ipvs import rules
    from ipvs.cli import ipvsadm

    rng = random.Random(seed)
    seeds = [RULES_SEED.encode(), b"-A -t 203.0.113.5:80\n", b"-a -t 203.0.113.5:80 -r 172.16.0.9 -x 5 -y 2\n"]
    errors = 0
    gc.collect()
    before = rss_bytes() // 1024
    t0 = time.perf_counter()
    for i in range(n):
        data = mutate(rng, rng.choice(seeds), seeds) if i % 4 else rng.choice(seeds)
        text = data.decode("utf-8", "surrogateescape")
        ipvs = NetnsIPVS()
        try:
            parsed = rules.parse(text)
            ipvsadm.restore(parsed.rules, LocalTransport(ipvs), io.StringIO())
            again = ipvsadm.save(LocalTransport(ipvs))
            # What was saved restores to the same rules.
            other = NetnsIPVS()
            if ipvsadm.restore(rules.parse(again).rules, LocalTransport(other), io.StringIO()) != 0:
                raise AssertionError(f"a saved rule set does not restore: {again!r}")
            if ipvsadm.save(LocalTransport(other)) != again:
                raise AssertionError("a saved rule set restores differently")
        except Exception as e:  # noqa: BLE001 (counted)
            errors += 1
            if errors <= 3:
                print(f"# rules {i}: {type(e).__name__}: {e}", file=sys.stderr)
    elapsed = time.perf_counter() - t0
    gc.collect()
    return {"inputs": n, "per_s": n / elapsed, "errors": errors, "rss_before": before, "rss_after": rss_bytes() // 1024}


def report(name: str, r: dict) -> None:
    print(f"fuzz_{name}_inputs {r['inputs']} inputs")
    print(f"fuzz_{name}_rate {r['per_s']:.0f} inputs/s")
    print(f"fuzz_{name}_unhandled {r['errors']} exceptions")
    print(f"fuzz_{name}_rss_growth {r['rss_after'] - r['rss_before']} KiB")
    if "conns_peak" in r:
        print(f"fuzz_{name}_conns_peak {r['conns_peak']} entries")
        print(f"fuzz_{name}_conns_left {r['conns_left']} entries")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--packets", type=int, default=1_000_000)
    p.add_argument("--control", type=int, default=100_000)
    p.add_argument("--rules", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="10,000 packets, 2,000 control frames, 200 rules files")
    args = p.parse_args(argv)
    if args.quick:
        args.packets, args.control, args.rules = 10_000, 2_000, 200
    print(f"# runtime {runtime()}")
    import tempfile

    failed = 0
    with tempfile.TemporaryDirectory(prefix="pyipvs-fuzz-") as tmp:
        for name, run in (("packets", lambda: fuzz_packets(args.packets, args.seed)),
                          ("control", lambda: fuzz_control(args.control, args.seed, os.path.join(tmp, "s.sock"))),
                          ("rules", lambda: fuzz_rules(args.rules, args.seed))):
            r = run()
            report(name, r)
            failed += r["errors"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
