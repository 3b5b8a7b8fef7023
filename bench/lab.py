"""Lab benchmark: plain routing, nftables DNAT, HAProxy and PyIPVS on one lab.

    sudo python3 bench/lab.py [--rounds N] [--ab-requests N] [--seconds S] [--only ab,wrk,iperf,iperf-bbr]
                              [--paths route,nft,haproxy,pyipvs,pyipvs-cpython] [--warm-seconds S]
                              [--variant NAME="IPVSD OPTIONS"]... [--iperf-bitrate RATE]

Builds the lab (``tools/ipvs-lab up --no-rules``, in namespaces named
``ipvsb-*`` so that lab tests may run meanwhile, or ``$IPVS_LAB_PREFIX-*``
where that is set), then for each round runs
every path through the director in turn (forward order on even rounds,
reverse on odd ones, so drifts of the shared 2-vCPU machine hit all paths
alike):

* ``route``: the director's kernel routes (ip_forward=1), client -> rs1
  directly: the ceiling, no load balancing;
* ``nft``: nftables DNAT with ``numgen inc`` round robin over rs1:80 and
  rs2:8000 (kernel NAT);
* ``haproxy``: HAProxy in TCP mode on the VIP (a userspace proxy);
* ``pyipvs``: ipvsd on AF_PACKET, spare mode, rr over the same servers,
  on PyPy (the data path's runtime);
* ``pyipvs-cpython``: the same ipvsd on CPython;
* ``pyipvs-NAME`` for each ``--variant NAME="OPTIONS"``: the same with
  extra ipvsd options (e.g. ``--variant big="--batch 512"``), to compare
  data-path settings in one interleaved run; OPTIONS starting with
  ``@DIR`` run the ipvsd of another checkout in DIR (before/after).

Loads, each bounded: ``ab -n N -c 50`` short connections, ``wrk -t2 -c50
-dS`` keep-alive requests, ``iperf3 -t S`` bulk to rs1 (through VIP:5201
where a balancer is in the path).  Offloads stay on (veth defaults).
Every path is warmed up before its measured loads, each round (``wrk``
for ``--warm-seconds`` and a 2,000-connection ``ab``): a fresh ipvsd on
PyPy runs interpreted until its JIT has compiled the data path.

The ``warm`` load (``--only warm``, not in the default set) measures that
warm-up instead: a fresh ipvsd, then back-to-back ``ab -n 1000 -c 50``
bursts for ``--warm-seconds`` seconds; it prints each burst's rate on
stderr, the steady rate (median of the last third of the bursts) and
``t90``, the end of the first burst at 90% of it, counted from the start
of the first burst (the director has seen one curl request before).

The bulk load names its sender's TCP congestion control (``iperf3 -C``)
instead of taking the machine's default, which is a kernel build option:
``iperf`` runs CUBIC, the default of Linux and of Debian's kernels, and
``iperf-bbr`` the same with BBR, the default of the kernel this project's
machine runs.  They are not alike for a balancer in user space: BBR
paces the sender at the delivery rate it has seen, and a path that
delivers in batches after each wake-up keeps that estimate, and with it
the transfer, low (in this lab CUBIC moved PyIPVS at about nftables'
rate, BBR at 0.65-0.8x of it; see ``docs/lab.md``).

Prints ``name value unit`` lines: the median of each load per path, and
each path's ratio to nftables DNAT, then what one unit of load (a
connection, a request, a gigabyte) cost, across the measured load:

* ``machine_*``: the whole machine's busy CPU time (``/proc/stat``: user,
  nice, system, irq, softirq; not idle, iowait or steal).  Where the load
  keeps both CPUs busy, a path's rate is about their two seconds a second
  divided by this figure, so the difference between two paths' figures
  is what one costs more than the other, everybody's work included;
* ``client_*``: the load generator's own CPU time (ab, wrk or iperf3,
  from the children's ``getrusage``);
* ``servers_*``: the processes in the real servers' namespaces (nginx,
  iperf3's server);
* ``director_*``: the processes in the director's namespace: ipvsd, or
  HAProxy; nothing on the kernel's paths, whose forwarding is billed to
  the senders' system calls and softirqs.

Each process's figure is its utime + stime from ``/proc/PID/stat``, which
includes the kernel work done in its system calls: on nftables' path the
client's sends run the forwarding and the servers' TCP, on PyIPVS's the
daemon's ``send`` delivers to the receivers' TCP.  What the machine spent
beyond the three (softirqs run outside any system call, kernel threads)
is the difference.  Figures are named ``lab.LOAD.PATH.ROLE_UNIT`` (e.g.
``lab.ab.nft.machine_us_per_conn``, ``lab.iperf.pyipvs.director_ms_per_gb``).
For each ipvsd path also, from its counters, the loop's wake-ups
(``loop.turns``) per unit and the frames received per wake-up, and on
PyPy the part of ``director_*`` its garbage collector ran (``gc_*``,
from ``memory.gc_time_ms``: ms, so coarse for a short load).
``--iperf-bitrate`` (iperf3's ``-b``, e.g. ``2G``) caps the bulk load, so
that every path moves the same data and the figures compare them at equal
work on a busy machine.  Everything is removed at the end, even on
failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from typing import NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_lab():
    sys.path.insert(0, ROOT)
    import ipvs_harness.lab

    return ipvs_harness.lab


lab = _load_lab()
from _runtime import children_cpu_seconds, cpu_seconds, describe  # noqa: E402 - CPU times; the interpreter, as ipvsd names it

# Namespaces and state of its own, so a benchmark never collides with a lab
# test or an ``ipvs-lab`` run going on at the same time (their names are
# ipvs-*; everything in tools/ipvs-lab reads these globals when called).
# With IPVS_LAB_PREFIX set, the namespaces are that prefix's (PREFIX-client,
# ...), as for the lab, so that several benchmarks can run side by side.
if "IPVS_LAB_PREFIX" not in os.environ:
    lab.NS_CLIENT, lab.NS_DIR, lab.NS_RS1, lab.NS_RS2 = "ipvsb-client", "ipvsb-director", "ipvsb-rs1", "ipvsb-rs2"
    lab.NAMESPACES = (lab.NS_CLIENT, lab.NS_DIR, lab.NS_RS1, lab.NS_RS2)
    lab.RS = {"rs1": (lab.NS_RS1, "172.16.0.2", 80), "rs2": (lab.NS_RS2, "172.16.0.3", 8000)}
lab.STATE = os.environ.get("IPVS_BENCH_STATE", f"/run/{lab.PREFIX}-bench")
VIP, OUTER, GW = lab.VIP, lab.OUTER, lab.GATEWAY
PATHS = ("route", "nft", "haproxy", "pyipvs", "pyipvs-cpython")

NFT_DNAT = f"""
table ip benchnat {{
  chain pre {{
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr {VIP} tcp dport 80 dnat ip addr . port to numgen inc mod 2 map {{
        0 : 172.16.0.2 . 80, 1 : 172.16.0.3 . 8000 }}
    ip daddr {VIP} tcp dport 5201 dnat ip to 172.16.0.2
  }}
}}
"""

HAPROXY = f"""
global
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend web
    bind {VIP}:80
    default_backend servers
backend servers
    balance roundrobin
    server rs1 172.16.0.2:80
    server rs2 172.16.0.3:8000
frontend bulk
    bind {VIP}:5201
    default_backend iperf
backend iperf
    server rs1 172.16.0.2:5201
"""

RULES = [
    f"-A -t {VIP}:80 -s rr",
    f"-a -t {VIP}:80 -r 172.16.0.2:80 -m",
    f"-a -t {VIP}:80 -r 172.16.0.3:8000 -m",
    f"-A -t {VIP}:5201 -s rr",
    f"-a -t {VIP}:5201 -r 172.16.0.2:5201 -m",
]


class Probe(NamedTuple):
    """CPU seconds so far (see :meth:`Bench.probe`)."""

    director: float
    servers: float
    counters: dict[str, int]


def ns_cpu_seconds(ns: str) -> float:
    """User + system CPU seconds of the processes now in network namespace ``ns``."""
    ino = os.stat(f"/run/netns/{ns}").st_ino
    total = 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino == ino:
                total += cpu_seconds(pid)
        except OSError:
            continue  # gone meanwhile
    return total


def d(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return lab.run(*lab.nsexec(lab.NS_DIR, *cmd), check=check)


def kernel_addrs(on: bool, vip: bool) -> None:
    d("ip", "addr", "flush", "dev", "d_out")
    d("ip", "addr", "flush", "dev", "br-in")
    if on:
        d("ip", "addr", "add", f"{OUTER}/24", "dev", "d_out")
        d("ip", "addr", "add", f"{GW}/24", "dev", "br-in")
        if vip:
            d("ip", "addr", "add", f"{VIP}/32", "dev", "d_out")
    lab.sysctl(lab.NS_DIR, {"net.ipv4.ip_forward": "1" if on else "0"})
    d("ip", "neigh", "flush", "all", check=False)
    lab.run(*lab.nsexec(lab.NS_CLIENT, "ip", "neigh", "flush", "all"), check=False)


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.current = None
        #: (path, "wrk_p99" or "wrk_max") -> milliseconds per round
        self.latency: dict[tuple[str, str], list[float]] = {}
        #: What the last load moved: connections, requests or bytes.
        self.units = 0.0
        #: (path, load, figure) -> per round, for ipvsd's paths (see probe/cost).
        self.cost: dict[tuple[str, str, str], list[float]] = {}

    def leave(self) -> None:
        cur = self.current
        self.current = None
        if cur is None:
            return
        if cur == "nft":
            d("nft", "delete", "table", "ip", "benchnat", check=False)
        elif cur == "haproxy" or cur.startswith("pyipvs"):
            name = "haproxy" if cur == "haproxy" else "director"
            pidf = os.path.join(lab.STATE, f"{name}.pid")
            if os.path.exists(pidf):
                lab.stop_pid(lab.read_pid(name))
                os.unlink(pidf)

    def enter(self, path: str) -> str:
        """Configure the director for ``path``; returns the target host."""
        self.leave()
        if path == "route":
            kernel_addrs(True, vip=False)
            target = "172.16.0.2"
        elif path == "nft":
            kernel_addrs(True, vip=True)
            lab.run(*lab.nsexec(lab.NS_DIR, "nft", "-f", "-"), input=NFT_DNAT)
            target = VIP
        elif path == "haproxy":
            kernel_addrs(True, vip=True)
            conf = os.path.join(lab.STATE, "haproxy.cfg")
            with open(conf, "w") as f:
                f.write(HAPROXY)
            lab.start("haproxy", lab.NS_DIR, [shutil.which("haproxy"), "-db", "-f", conf])
            self._wait_listen(VIP, 80)
            target = VIP
        else:
            kernel_addrs(False, vip=False)
            extra = self.args.variants.get(path, "").split()
            root = lab.ROOT
            if extra and extra[0].startswith("@"):
                root = extra.pop(0)[1:]  # another checkout's ipvsd (before/after comparisons)
            runtime = "cpython" if path == "pyipvs-cpython" else "pypy"
            cmd = lab.director_cmd("spare", False) + ["--runtime", runtime] + extra
            # The /proc mirror (a directory of files rewritten every second)
            # is a monitoring option, not the data path: off, as HAProxy
            # runs without its stats socket here.
            if "--procfs-dir" in cmd:
                i = cmd.index("--procfs-dir")
                del cmd[i : i + 2]
            # Each path's ipvsd starts empty and gets the bench's rules: no
            # state file restoring the previous path's.
            if "--state" in cmd:
                i = cmd.index("--state")
                cmd[i : i + 2] = ["--no-state"]
            cmd[1] = os.path.join(root, "tools", "ipvsd")
            lab.wait_answering(lab.start("director", lab.NS_DIR, cmd, env={"PYTHONPATH": root}))
            for line in RULES:
                lab.ipvsadm(*line.split())
            time.sleep(0.3)
            target = VIP
        self.current = path
        # One request first: ARP and neighbour caches, not the load, pay for it.
        lab.client("curl", "-s", "-m", "5", "-o", "/dev/null", f"http://{target}/", check=False)
        return target

    def _wait_listen(self, addr: str, port: int) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if d("ss", "-Hltn", f"src {addr}:{port}", check=False).stdout.strip():
                return
            time.sleep(0.1)
        raise RuntimeError(f"nothing listens on {addr}:{port}")

    def warm_up(self, target: str) -> None:
        """The same for every path: keep-alive requests, then short connections."""
        lab.client("wrk", "-t2", "-c50", f"-d{self.args.warm_seconds}s", f"http://{target}/", check=False,
                   timeout=self.args.warm_seconds + 60)
        lab.client("ab", "-q", "-n", "2000", "-c", "50", "-s", "10", f"http://{target}/", check=False, timeout=120)

    def warm_curve(self, target: str) -> list[tuple[float, float]]:
        """(seconds since the first burst began, conn/s) per ab burst of a fresh director."""
        curve = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.args.warm_seconds:
            rate = self._ab_rate(target, 1000)
            curve.append((time.monotonic() - t0, rate))
        return curve

    # -- ipvsd's cost per unit of load

    @staticmethod
    def machine_busy() -> float:
        """CPU seconds the machine has been busy, all CPUs and everybody
        (``/proc/stat``'s user, nice, system, irq and softirq: not idle,
        iowait or what the hypervisor stole)."""
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in f.readline().split()[1:8])
        return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")

    def probe(self) -> Probe:
        """The CPU seconds spent so far by the director's namespace and the
        servers' namespaces, and on ipvsd's paths ipvsd's counters ({} on the
        others).  Not the machine's: reading the counters runs a process,
        which the machine figure must not count (see :meth:`account`)."""
        director = ns_cpu_seconds(lab.NS_DIR)
        servers = ns_cpu_seconds(lab.NS_RS1) + ns_cpu_seconds(lab.NS_RS2)
        counters: dict[str, int] = {}
        if self.current is not None and self.current.startswith("pyipvs"):
            out = d(sys.executable, os.path.join(lab.TOOLS, "ipvs-counters"), "--json", "-a", check=False).stdout
            try:
                counters = json.loads(out)
            except ValueError:
                pass
        return Probe(director, servers, counters)

    def account(self, load: str, before: Probe, busy: float, client: float) -> dict[str, float]:
        """Record what the load just run cost per unit (see the docstring's
        figures) and return it; ``busy`` is what the machine spent during the
        load alone, ``client`` what the load generator spent."""
        after = self.probe()
        if self.units <= 0:
            return {}
        name, scale = {"ab": ("us_per_conn", 1e6), "wrk": ("us_per_req", 1e6),
                       "iperf": ("ms_per_gb", 1e3), "iperf-bbr": ("ms_per_gb", 1e3)}[load]
        units = self.units / 1e9 if load.startswith("iperf") else self.units
        unit = name.rpartition("_")[2]
        figures = {f"{role}_{name}": seconds * scale / units
                   for role, seconds in (("machine", busy), ("client", client),
                                         ("servers", after.servers - before.servers),
                                         ("director", after.director - before.director))}
        if after.counters:

            def delta(key: str) -> int:
                return after.counters.get(key, 0) - before.counters.get(key, 0)

            turns = delta("loop.turns")
            frames = sum(delta(k) for k in after.counters if k.startswith("driver.") and k.endswith("_rx_frames"))
            figures.update({f"wakeups_per_{unit}": turns / units,
                            "frames_per_wakeup": frames / turns if turns else 0.0})
            if "memory.gc_time_ms" in after.counters:  # PyPy's
                figures[f"gc_{name}"] = delta("memory.gc_time_ms") / 1e3 * scale / units
        for fig, v in figures.items():
            self.cost.setdefault((self.current, load, fig), []).append(v)
        return figures

    # -- loads

    def ab(self, target: str) -> float:
        self.units = self.args.ab_requests
        return self._ab_rate(target, self.args.ab_requests)

    def _ab_rate(self, target: str, n: int) -> float:
        out = lab.client("ab", "-q", "-n", str(n), "-c", "50", "-s", "10",
                         f"http://{target}/", check=False, timeout=120)
        fails = re.search(r"Failed requests:\s+(\d+)", out)
        rps = re.search(r"Requests per second:\s+([\d.]+)", out)
        if fails and int(fails.group(1)):
            print(f"# ab: {fails.group(1)} failed requests", file=sys.stderr)
        return float(rps.group(1)) if rps else 0.0

    def wrk(self, target: str) -> float:
        out = lab.client("wrk", "-t2", "-c50", "--latency", f"-d{self.args.seconds}s", f"http://{target}/",
                         check=False, timeout=self.args.seconds + 60)
        # Latency's tail, where a balancer's pauses (PyPy's GC among them) show.
        p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        top = re.search(r"^\s+Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out, re.M)
        for name, m in (("wrk_p99", p99), ("wrk_max", top)):
            if m:
                ms = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
                self.latency.setdefault((self.current, name), []).append(ms)
        m = re.search(r"Requests/sec:\s+([\d.]+)", out)
        n = re.search(r"^\s*(\d+) requests in", out, re.M)
        self.units = float(n.group(1)) if n else 0.0
        return float(m.group(1)) if m else 0.0

    def iperf(self, target: str) -> float:
        return self._iperf(target, "cubic")

    def iperf_bbr(self, target: str) -> float:
        return self._iperf(target, "bbr")

    def _iperf(self, target: str, cc: str) -> float:
        """Gbit/s of one ``iperf3`` run whose sender uses congestion control ``cc`` (see the docstring)."""
        cap = ["-b", self.args.iperf_bitrate] if self.args.iperf_bitrate else []
        out = lab.client("iperf3", "-c", target, "-t", str(self.args.seconds), "-C", cc, *cap, "-J",
                         check=False, timeout=self.args.seconds + 60)
        self.units = 0.0
        try:
            result = json.loads(out)
        except ValueError:
            result = {"error": out[-300:]}
        end = result.get("end", {}).get("sum_received", {})
        if "bytes" not in end:
            print(f"# iperf3 -C {cc}: no result: {result.get('error')}", file=sys.stderr)
            return 0.0
        self.units = float(end["bytes"])
        return end["bits_per_second"] / 1e9


def figure_unit(fig: str) -> str:
    """The unit of a cost figure (see :meth:`Bench.account`), from its name."""
    if fig == "frames_per_wakeup":
        return "frames"
    if fig.startswith("wakeups_per_"):
        return "wakeups"
    return fig.split("_")[1]  # director_us_per_conn, machine_ms_per_gb


LOADS = {"ab": ("conn/s", "ab"), "wrk": ("req/s", "wrk"), "iperf": ("Gbit/s", "iperf"),
         "iperf-bbr": ("Gbit/s", "iperf_bbr")}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ab-requests", type=int, default=5000)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--warm-seconds", type=int, default=3,
                   help="warm-up before each path's measured loads, and the length of the warm load's curve")
    p.add_argument("--only", default="ab,wrk,iperf,iperf-bbr")
    p.add_argument("--iperf-bitrate", metavar="RATE", help="iperf3 -b: a capped bulk load (e.g. 2G)")
    p.add_argument("--paths", default=",".join(PATHS))
    p.add_argument("--variant", action="append", default=[], metavar='NAME="OPTIONS"',
                   help="also measure ipvsd with extra options, as path pyipvs-NAME (repeatable)")
    args = p.parse_args(argv)
    args.variants = {}
    for v in args.variant:
        name, _, opts = v.partition("=")
        args.variants[f"pyipvs-{name}"] = opts
    args.rounds = max(1, min(args.rounds, 10))
    args.seconds = max(1, min(args.seconds, 30))
    args.warm_seconds = max(1, min(args.warm_seconds, 30))
    args.ab_requests = max(100, min(args.ab_requests, 50000))
    if args.iperf_bitrate and not re.fullmatch(r"\d+(\.\d+)?[KMG]?", args.iperf_bitrate):
        raise SystemExit(f"--iperf-bitrate: {args.iperf_bitrate!r} is not an iperf3 rate such as 2G or 500M")
    if os.geteuid() != 0:
        raise SystemExit("bench/lab.py needs root (network namespaces)")
    for tool in ("ab", "wrk", "iperf3", "haproxy", "nft"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench/lab.py needs {tool}")
    loads = [x for x in args.only.split(",") if x in LOADS]
    warm = "warm" in args.only.split(",")
    paths = [x for x in args.paths.split(",") if x in PATHS] + list(args.variants)
    results: dict[tuple[str, str], list[float]] = {}
    warm_curves: dict[str, list[list[tuple[float, float]]]] = {}
    b = Bench(args)
    try:
        lab.up("spare", False, rules=False)
        # The director started by up() has no rules; the bench starts its own.
        lab.stop_pid(lab.read_pid("director"))
        os.unlink(os.path.join(lab.STATE, "director.pid"))
        lab.start("iperf3-rs1", lab.NS_RS1, ["iperf3", "-s", "-B", "172.16.0.2"])
        lab.run(*lab.nsexec(lab.NS_CLIENT, "ip", "route", "replace", "172.16.0.0/24", "via", OUTER))
        for r in range(args.rounds):
            order = paths if r % 2 == 0 else list(reversed(paths))
            for path in order:
                target = b.enter(path)
                if warm and path.startswith("pyipvs"):
                    curve = b.warm_curve(target)
                    warm_curves.setdefault(path, []).append(curve)
                    print(f"# round {r} {path} warm " + " ".join(f"{t:.2f}s:{v:.0f}" for t, v in curve),
                          file=sys.stderr, flush=True)
                if not loads:
                    continue
                b.warm_up(target)
                for load in loads:
                    before = b.probe()
                    busy, client = b.machine_busy(), children_cpu_seconds()
                    v = getattr(b, LOADS[load][1])(target)
                    busy, client = b.machine_busy() - busy, children_cpu_seconds() - client
                    cost = b.account(load, before, busy, client)
                    results.setdefault((path, load), []).append(v)
                    print(f"# round {r} {path} {load} {v:.2f} {LOADS[load][0]}"
                          + "".join(f" {k}={x:.2f}" for k, x in cost.items()), file=sys.stderr, flush=True)
        b.leave()
    finally:
        b.leave()
        lab.down()
    # The bench's own interpreter; each pyipvs path names ipvsd's runtime.
    print(f"runtime {describe()}")
    for path, curves in warm_curves.items():
        for i, curve in enumerate(curves):
            rates = [v for _, v in curve]
            steady = statistics.median(rates[len(rates) * 2 // 3 :]) if rates else 0.0
            t90 = next((t for t, v in curve if steady and v >= 0.9 * steady), float("nan"))
            print(f"lab.warm.{path}.round{i}.first_burst {rates[0] if rates else 0:.0f} conn/s")
            print(f"lab.warm.{path}.round{i}.steady {steady:.0f} conn/s")
            print(f"lab.warm.{path}.round{i}.t90 {t90:.2f} s")
    for load in loads:
        unit = LOADS[load][0]
        base = statistics.median(results.get(("nft", load), [0.0])) or None
        for path in paths:
            vals = results.get((path, load))
            if not vals:
                continue
            med = statistics.median(vals)
            print(f"lab.{load}.{path} {med:.2f} {unit}")
            if base:
                print(f"lab.{load}.{path}.vs_nft {med / base:.2f} x")
    for (path, name), vals in b.latency.items():
        print(f"lab.{name}.{path} {statistics.median(vals):.2f} ms")
    for (path, load, fig), vals in b.cost.items():
        print(f"lab.{load}.{path}.{fig} {statistics.median(vals):.2f} {figure_unit(fig)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
