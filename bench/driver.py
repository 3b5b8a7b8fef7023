#!/usr/bin/env python3
"""Driver + core figures on fake rings: prints ``name value unit`` lines.

The real :class:`ipvs.driver.ring.RingSocket` RX and TX code runs over an
anonymous memory map instead of a socket's rings (no system calls: the
"kernel" refills RX slots and frees TX slots between batches, outside the
timed part), so these figures are what Python costs per frame on the
director, from slot to slot:

established_pps   client->VIP and RS->client segments of open connections
                  (partial checksums, as with offloads on), batches of 64
short_conn_pps    SYN, SYN-ACK, ACK, request, reply, FIN/ACK exchange of
                  short connections (the ab load), frames per second
conn_per_s        the same as connections per second
bulk_gbps         64,000-byte GSO super-frames of one connection, client to
                  real server (the iperf3 load), payload Gbit/s: each comes
                  as the daemon's rings get it, a truncated copy in its RX
                  slot and the frame on the socket's queue, which the
                  driver's ``recv_into`` takes (a system call and the
                  kernel's copy, both counted: the daemon's own cost), and
                  leaves by the direct socket (not counted, as the TX
                  ring's ``send``)
warm_first_conn_per_s, warm_steady_conn_per_s, warm_t90_s
                  with ``--warm S`` only (a fresh process: the JIT compiles
                  as it goes): short connections for S seconds of driver
                  time, in windows of 0.25 s; the first window's rate, the
                  steady rate (median of the last third) and the end of
                  the first window at 90% of it, in seconds of driver time
                  since the first frame (the daemon's "90% of its steady
                  rate within 2 s of its first packet", with the machine's
                  other work left out)
warm_up_conns, warm_up_s, after_warm_up_first_conn_per_s,
after_warm_up_steady_conn_per_s, after_warm_up_t90_s
                  with ``--warm-up S2`` only (a fresh process): what
                  ipvsd's JIT warm-up (ipvs/driver/warm.py) did in up to S2
                  seconds of CPU time (0: nothing), then the same figures as
                  above for the warm-up's own connections as traffic after
                  it, for ``--warm`` seconds (4 by default) of CPU time with
                  the frames' making counted, on rings of a NIC's class
machine_start_fast, _slow_share, machine_end_*
                  the machine's speed before and after the figures
                  (bench/_runtime.py: print_machine_speed): a slow share
                  above 0 says some figures may come from a half-speed spell
batch_us_p50, _p999, _max
                  CPU time of one RX batch in the last (warm) run of each
                  figure above: the tail is where garbage collection pauses
                  show (PyPy's minor and major collections, CPython's
                  cyclic collector), not the JIT's compiling

Run: .venv-pypy/bin/python bench/driver.py [--seconds S] [--batch N] [--repeat N] [--profile] [--warm S] [--warm-up S2]
     .venv/bin/python bench/driver.py --runtimes 3   (both runtimes, interleaved)

Times are the thread's CPU time (not wall-clock, which counts the time
other jobs of a shared machine had the CPU), each figure the best of
``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import ipaddress
import mmap
import os
import socket
import statistics
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from _runtime import (  # noqa: E402
    print_jit_traces_too_long,
    print_machine_speed,
    print_runtime,
    run_as_ipvsd,
    run_both,
    without_option,
)

from ipvs import ctl, uapi  # noqa: E402
from ipvs.core import Director  # noqa: E402
from ipvs.driver import ring as _ring  # noqa: E402
from ipvs.driver.afpacket import AFPacketDriver, Port  # noqa: E402
from ipvs.driver.neigh import ARPOP_REQUEST, arp_frame  # noqa: E402
from ipvs.driver.warm import WarmUp, tcp_frame  # noqa: E402


def ip4(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def A(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


VIP, CLIENT, OUTER, GW = "203.0.113.5", "198.51.100.2", "198.51.100.1", "172.16.0.1"
RS = ["172.16.0.2", "172.16.0.3"]
MAC_OUT, MAC_IN = bytes.fromhex("02000000000a"), bytes.fromhex("02000000000b")
MAC_CL = bytes.fromhex("02000000c001")
MAC_RS = [bytes.fromhex("02000000a001"), bytes.fromhex("02000000a002")]
SLOTS = 256


class NullSocket:
    """The direct (ring-less) socket of a RingSocket, minus the system call."""

    def send(self, data, flags: int = 0) -> int:
        return len(data)


class QueueSocket:
    """The packet socket's own receive queue, where the kernel puts a frame
    larger than an RX slot (``TP_STATUS_COPY``): a datagram socket pair,
    so that ``recv_into`` is the system call and the copy the daemon makes
    for such a frame (a copy in Python would measure the runtime's copy
    loop instead: PyPy's is many times slower than the kernel's)."""

    def __init__(self) -> None:
        self.tx, self.rx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in (self.tx, self.rx):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)

    def put(self, frame: bytes) -> None:
        self.tx.send(frame)

    def recv_into(self, buf, nbytes: int = 0, flags: int = 0) -> int:
        return self.rx.recv_into(buf, nbytes, flags)

    def close(self) -> None:
        self.tx.close()
        self.rx.close()


class MemRing(_ring.RingSocket):
    """A RingSocket over an anonymous map: the same rx/queue/flush code, no socket."""

    def __init__(self, name: str, size: int = 2048) -> None:  # noqa: D107 - not calling the socket setup
        self.ifname = name
        self.stats = _ring.RingStats()
        self.nslots = SLOTS
        self.ring_bytes = size * SLOTS
        self.mm = mmap.mmap(-1, 2 * self.ring_bytes)
        self.rx_slots = [i * size for i in range(SLOTS)]
        self.tx_slots = [self.ring_bytes + off for off in self.rx_slots]
        self.rx_head = self.tx_head = self.tx_pending = 0
        self.tx_max = size - _ring.TPACKET2_HDRLEN
        self.early = None
        self.tx_batch = 64
        self.direct_min = _ring.DIRECT_MIN
        self.sent = 0
        self.fill_at = 0
        self.direct = NullSocket()
        self.sock: QueueSocket | None = None  # made for the first frame larger than a slot

    def flush(self) -> None:
        # The system call is not measured here: only the bookkeeping.
        self.stats.tx_frames += self.tx_pending
        self.tx_pending = 0

    def complete(self) -> None:
        """The kernel's TX part (untimed): every queued slot is sent and freed."""
        mm = self.mm
        for off in self.tx_slots:
            if mm[off]:
                mm[off] = 0
                self.sent += 1

    def fill(self, frames: list[bytes]) -> None:
        """The kernel's RX part: put frames (vnet header first) in the next
        slots; one larger than a slot (a GSO super-frame) whole on the
        socket's queue, a truncated copy marked ``TP_STATUS_COPY`` in its
        slot (``PACKET_COPY_THRESH``, as the daemon's rings are set)."""
        mm = self.mm
        i = self.fill_at
        size = self.rx_slots[1] - self.rx_slots[0]
        for f in frames:
            off = self.rx_slots[i]
            mac = 66 + _ring.VNET_HDR_LEN  # TPACKET_V2 with vnet: tp_mac 76
            n = len(f) - _ring.VNET_HDR_LEN
            status, snap = 1 | 8, n  # TP_STATUS_USER | TP_STATUS_CSUMNOTREADY
            if mac + n > size:
                status, snap = status | _ring.TP_STATUS_COPY, size - mac
                if self.sock is None:
                    self.sock = QueueSocket()
                self.sock.put(f)
            mm[off + mac - _ring.VNET_HDR_LEN : off + mac + snap] = f[: _ring.VNET_HDR_LEN + snap]
            struct.pack_into("=IIIHH", mm, off, status, n, snap, mac, mac + 14)
            i = (i + 1) % SLOTS
        self.fill_at = i

    def fileno(self) -> int:
        return -1

    def set_filter(self, prog: bytes) -> None:
        pass

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


def tcp(src: str, sport: int, dst: str, dport: int, flags: int, payload: bytes, dmac: bytes, smac: bytes,
        seq: int = 1000, ack: int = 0, gso_size: int = 0) -> bytes:
    """:func:`ipvs.driver.warm.tcp_frame` between dotted addresses."""
    return tcp_frame(A(src), sport, A(dst), dport, flags, payload, dmac, smac, seq, ack, gso_size)


def rig(batch: int, slot: int = 2048):
    d = Director()
    su = ctl.ServiceUser(addr=A(VIP), port=80, sched_name="rr")
    ctl.add_service(d.ipvs, su)
    for r, port in zip(RS, (80, 8000)):
        ctl.add_dest(d.ipvs, su, ctl.DestUser(addr=A(r), port=port, conn_flags=uapi.IP_VS_CONN_F_MASQ, weight=1))
    out_r, in_r = MemRing("d_out", slot), MemRing("br-in", slot)
    outer = Port("d_out", "outer", ip4(OUTER), 0xFFFFFF00, 250, MAC_OUT, 1500, out_r)
    inner = Port("br-in", "inner", ip4(GW), 0xFFFFFF00, 250, MAC_IN, 1500, in_r)
    drv = AFPacketDriver(d, [outer, inner], "spare", [(ip4("172.16.0.0"), 0xFFFFFF00)], batch=batch)
    drv.now = 1000
    vnet0 = b"\0" * 10
    out_r.fill([vnet0 + arp_frame(ARPOP_REQUEST, MAC_CL, ip4(CLIENT), b"\0" * 6, ip4(OUTER), b"\xff" * 6)[10:]])
    in_r.fill([vnet0 + arp_frame(ARPOP_REQUEST, m, ip4(r), b"\0" * 6, ip4(GW), b"\xff" * 6)[10:]
               for r, m in zip(RS, MAC_RS)])
    out_r.rx(outer.rx_handler)
    in_r.rx(inner.rx_handler)
    drv._after_batch()
    return d, drv, outer, inner


#: Seconds of CPU time each RX batch took, for the latency figures.
BATCH_TIMES: list[float] = []


def run_batches(drv, port, frames: list[bytes], batch: int, now: int) -> float:
    """Seconds of driver time to take ``frames`` through ``port``'s RX ring in batches."""
    r = port.ring
    spent = 0.0
    for i in range(0, len(frames), batch):
        r.fill(frames[i : i + batch])
        t0 = time.thread_time()
        _drain(drv, port, now, batch)
        dt = time.thread_time() - t0
        spent += dt
        BATCH_TIMES.append(dt)
        for p in drv.ports:
            p.ring.complete()
    return spent


def _drain(drv, port, now, batch):
    drv.now = now
    port.ring.rx(port.rx_handler, batch)
    drv._after_batch()


def established(seconds: float, batch: int) -> float:
    d, drv, outer, inner = rig(batch)
    conns = 64
    syn = [tcp(CLIENT, 10000 + i, VIP, 80, 0x02, b"", MAC_OUT, MAC_CL) for i in range(conns)]
    run_batches(drv, outer, syn, batch, 1000)
    back = []
    for i in range(conns):
        cp = d.ipvs.conn_tab.in_find(b"\x06" + A(CLIENT) + A(VIP) + struct.pack("!HH", 10000 + i, 80))
        rs = str(ipaddress.IPv4Address(cp.daddr))
        back.append(tcp(rs, cp.dport, CLIENT, 10000 + i, 0x10, b"x" * 200, MAC_IN,
                        MAC_RS[RS.index(rs)]))
    fwd = [tcp(CLIENT, 10000 + i, VIP, 80, 0x10, b"y" * 100, MAC_OUT, MAC_CL) for i in range(conns)]
    n = 0
    spent = 0.0
    while spent < seconds:
        spent += run_batches(drv, outer, fwd, batch, 1001)
        spent += run_batches(drv, inner, back, batch, 1001)
        n += 2 * conns
    assert outer.ring.sent + inner.ring.sent >= n, "frames were not forwarded"
    return n / spent


def bulk(seconds: float, batch: int) -> float:
    """Payload Gbit/s of 64,000-byte GSO frames, client to real server, per second of driver time."""
    d, drv, outer, inner = rig(batch)
    run_batches(drv, outer, [tcp(CLIENT, 5201, VIP, 80, 0x02, b"", MAC_OUT, MAC_CL)], 1, 1000)
    payload = b"z" * 64000
    frames = [tcp(CLIENT, 5201, VIP, 80, 0x10, payload, MAC_OUT, MAC_CL, seq=1000 + i * 64000, gso_size=1448)
              for i in range(batch)]
    n = 0
    spent = 0.0
    while spent < seconds:
        spent += run_batches(drv, outer, frames, batch, 1001)
        n += len(frames)
    assert outer.ring.stats.tx_direct + inner.ring.stats.tx_direct >= n, "frames were not forwarded"
    outer.ring.close()
    inner.ring.close()
    return n * len(payload) * 8 / spent / 1e9


def short_conns(seconds: float, batch: int, curve: list[tuple[float, int]] | None = None) -> tuple[float, float]:
    """Frames/s and connections/s for the ab exchange, ``batch`` connections in flight;
    ``curve`` gets (driver seconds, connections) so far after each round."""
    d, drv, outer, inner = rig(batch)
    port = 20000
    n = conns = 0
    spent = 0.0
    now = 1000
    while spent < seconds:
        sports = list(range(port, port + batch))
        port += batch
        if port > 60000:
            port = 20000
            now += 250 * 200  # everything of the last pass has expired
            d.run_timers(now)
        spent += run_batches(drv, outer, [tcp(CLIENT, s, VIP, 80, 0x02, b"", MAC_OUT, MAC_CL) for s in sports],
                             batch, now)
        peers = []
        for s in sports:
            cp = d.ipvs.conn_tab.in_find(b"\x06" + A(CLIENT) + A(VIP) + struct.pack("!HH", s, 80))
            rs = str(ipaddress.IPv4Address(cp.daddr))
            peers.append((s, rs, cp.dport, MAC_RS[RS.index(rs)]))
        steps = [
            (inner, lambda s, rs, dp, m: tcp(rs, dp, CLIENT, s, 0x12, b"", MAC_IN, m)),
            (outer, lambda s, rs, dp, m: tcp(CLIENT, s, VIP, 80, 0x10, b"", MAC_OUT, MAC_CL)),
            (outer, lambda s, rs, dp, m: tcp(CLIENT, s, VIP, 80, 0x18, b"G" * 80, MAC_OUT, MAC_CL)),
            (inner, lambda s, rs, dp, m: tcp(rs, dp, CLIENT, s, 0x18, b"H" * 240, MAC_IN, m)),
            (outer, lambda s, rs, dp, m: tcp(CLIENT, s, VIP, 80, 0x11, b"", MAC_OUT, MAC_CL)),
            (inner, lambda s, rs, dp, m: tcp(rs, dp, CLIENT, s, 0x11, b"", MAC_IN, m)),
            (outer, lambda s, rs, dp, m: tcp(CLIENT, s, VIP, 80, 0x10, b"", MAC_OUT, MAC_CL)),
        ]
        for p, make in steps:
            spent += run_batches(drv, p, [make(*x) for x in peers], batch, now)
        n += 8 * batch
        conns += batch
        if curve is not None:
            curve.append((spent, conns))
    assert not drv.drops, dict(drv.drops)
    return n / spent, conns / spent


#: The warm-up curve's resolution: seconds of driver time per rate.
WARM_WINDOW = 0.25


def warm_up(seconds: float, batch: int) -> tuple[float, float, float]:
    """A fresh director's short connections for ``seconds`` of driver time:
    the rate of its first window, the steady rate (median of the last
    third of the windows) and the driver time at the end of the first
    window at 90% of it, as ``bench/lab.py``'s warm load reads its curve.
    Meaningful in a fresh process only (the JIT has compiled nothing yet)."""
    curve: list[tuple[float, int]] = []
    short_conns(seconds, batch, curve)
    return curve_figures(curve)


def curve_figures(curve: list[tuple[float, int]]) -> tuple[float, float, float]:
    """The first window's rate, the steady rate and t90 of (seconds, connections) points."""
    rates = []
    t0 = c0 = 0
    for t, c in curve:
        if t - t0 >= WARM_WINDOW:
            rates.append((t, (c - c0) / (t - t0)))
            t0, c0 = t, c
    values = [r for _, r in rates]
    steady = statistics.median(values[len(values) * 2 // 3 :])
    t90 = next(t for t, r in rates if r >= 0.9 * steady)
    return values[0], steady, t90


def warm_up_effect(seconds: float, budget: float, batch: int) -> tuple[int, float, tuple[float, float, float]]:
    """ipvsd's JIT warm-up for up to ``budget`` seconds of CPU time, then
    the warm-up's own short connections through fresh directors for
    ``seconds`` more, as traffic after it: on rings of the class a NIC's
    are (the bench's other figures use a subclass, which the JIT compiles
    apart), in CPU time with the frames' making and the kernel's part
    counted.  The connections and seconds the warm-up took, and the
    traffic's figures as :func:`warm_up` reads them."""
    like = rig(batch)[1]
    pre = WarmUp(like, budget)
    while not pre.step():
        pass
    curve: list[tuple[float, int]] = []
    spent, conns = 0.0, 0
    while spent < seconds:  # a fresh director each time one has used its client ports
        traffic = WarmUp(like, seconds - spent)
        while not traffic.step():
            curve.append((spent + traffic.spent, conns + traffic.conns))
        spent, conns = spent + traffic.spent, conns + traffic.conns
    return pre.conns, pre.spent, curve_figures(curve)


def main(argv: list[str]) -> int:
    run_as_ipvsd()  # on PyPy, as ipvsd runs: its GC nursery and malloc threshold
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3, help="best of N runs (default %(default)s)")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--warm", type=float, metavar="S",
                   help="only the warm-up figures, over S seconds of driver time (run in a fresh process)")
    p.add_argument("--warm-up", type=float, metavar="S",
                   help="only the warm-up's effect: ipvsd's JIT warm-up (ipvs/driver/warm.py) for up to S "
                        "seconds of CPU time (0: none), then --warm seconds (default 4) of its connections as "
                        "traffic (run in a fresh process)")
    p.add_argument("--runtimes", type=int, metavar="ROUNDS",
                   help="run this benchmark under CPython and PyPy, alternating, ROUNDS times each")
    args = p.parse_args(argv)
    if args.runtimes:
        run_both(os.path.abspath(__file__), without_option(argv, "--runtimes"), args.runtimes)
        return 0
    print_runtime()
    seconds = max(0.1, min(args.seconds, 30.0))
    batch = max(1, min(args.batch, SLOTS))
    if args.profile:
        import cProfile
        import pstats

        cProfile.runctx("short_conns(seconds, batch)", globals(), {"seconds": seconds, "batch": batch},
                        "/tmp/driver.prof")
        pstats.Stats("/tmp/driver.prof").sort_stats("tottime").print_stats(25)
        return 0
    if args.warm_up is not None:
        conns, spent, (first, steady, t90) = warm_up_effect(max(1.0, min(args.warm or 4.0, 60.0)),
                                                            max(0.0, min(args.warm_up, 30.0)), batch)
        print(f"driver.warm_up_conns {conns} conn")
        print(f"driver.warm_up_s {spent:.2f} s")
        print(f"driver.after_warm_up_first_conn_per_s {first:.0f} conn/s")
        print(f"driver.after_warm_up_steady_conn_per_s {steady:.0f} conn/s")
        print(f"driver.after_warm_up_t90_s {t90:.2f} s")
        return 0
    if args.warm:
        first, steady, t90 = warm_up(max(1.0, min(args.warm, 60.0)), batch)
        print(f"driver.warm_first_conn_per_s {first:.0f} conn/s")
        print(f"driver.warm_steady_conn_per_s {steady:.0f} conn/s")
        print(f"driver.warm_t90_s {t90:.2f} s")
        return 0
    rep = max(1, min(args.repeat, 10))
    warm: list[float] = []

    def best(run):
        results = []
        for i in range(rep):
            start = len(BATCH_TIMES)
            results.append(run())
            if i == rep - 1:
                warm.extend(BATCH_TIMES[start:])
        return max(results)

    print_machine_speed("start")
    print(f"driver.established_pps {best(lambda: established(seconds, batch)):.0f} pps")
    fps, cps = best(lambda: short_conns(seconds, batch))
    print(f"driver.short_conn_pps {fps:.0f} pps")
    print(f"driver.conn_per_s {cps:.0f} conn/s")
    print(f"driver.bulk_gbps {best(lambda: bulk(seconds, min(batch, 16))):.2f} Gbit/s")
    times = sorted(warm)
    for name, q in (("p50", 0.5), ("p999", 0.999)):
        print(f"driver.batch_us_{name} {times[int(q * (len(times) - 1))] * 1e6:.1f} us")
    print(f"driver.batch_us_max {times[-1] * 1e6:.1f} us")
    print_machine_speed("end")
    print_jit_traces_too_long()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
