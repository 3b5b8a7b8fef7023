#!/usr/bin/env python3
"""SYN flood against ipvsd in the lab, defenses off and on: prints ``name value unit`` lines.

    sudo IPVS_LAB_PREFIX=me .venv/bin/python bench/synflood.py [--seconds S] [--budget 256M]
                        [--amemthresh PAGES] [--ports N] [--only off,on,off-noguard,on-noguard,entry]
                        [--timeline PREFIX] [--capture PREFIX] [--ipvsd-args ARGS]

For each variant the lab comes up (``ipvs_harness.lab``, spare mode, in
the namespaces ``$IPVS_LAB_PREFIX-*``), ipvsd is restarted with the
variant's options, and for ``--seconds`` (bounded) two things run in the
client namespace only:

* the flood: SYNs to VIP:80 as fast as one process sends them through an
  AF_PACKET socket, from 100 source addresses of 198.51.100.0/24 and
  ``--ports`` source ports each (100 x 600 = 60,000 distinct connections
  by default, sent round and round), each SYN a new connection for the
  director until its entry exists;
* a second client fetching ``http://VIP/`` every 20 ms (1 s timeout),
  which records each request's outcome (``ok``, or why not: a timeout
  of the handshake or of the response, a reset, ...), its latency and
  its handshake's.

Every half second a sampler in the director's namespace reads ipvsd's
counters (``GET_COUNTERS``, what ``tools/ipvs-counters`` prints: the
table, the defenses' state, the core's drops, the driver's ring drops
and SYN guard, the loop's turn times, the memory counted against the
budget), its resident memory and its CPU time and run-queue wait
(``/proc/PID/schedstat``: how long it waited for a CPU).  ``--timeline``
keeps these samples and the requests as JSON; ``--capture`` records the
second client's packets at the client and at the real servers (tcpdump),
which tells a packet lost on the way in from one lost on the way back.
Variants:

* ``off``: ipvsd as it comes (no budget given: the machine's memory, no
  defense levels set);
* ``on``: ``--memory-budget BUDGET --set amemthresh=PAGES --set
  drop_entry=1 --set drop_packet=1 --set secure_tcp=1``;
* ``entry``: the same without ``drop_packet``;
* ``off-noguard``, ``on-noguard``: ``off`` and ``on`` with the data
  path's SYN guard turned off (``--no-syn-guard``; docs/ipvsd.md, "Under
  a SYN flood"), to see what it buys.

Lines per variant: SYNs sent and their rate, the table's and the memory's
peak (resident, and what counts against the budget), the second client's
success rate, latency and handshake time (median, 99th percentile), its
failures by reason and its kernel's TCP counters (the flood uses a packet
socket, so they are the second client's alone), ipvsd's CPU share, its
longest loop turn, the highest ``drop_packet`` rate and the GC reclaims,
then the counters ipvsd's driver logged at exit that say where frames
went (the kernel's ring drops, the SYN guard, the core's drops and
defenses, the neighbour queue); then one comment line per failed request
with what the samples around it say.  The goal with defenses on: memory
within the budget and at least 99% of the second client's requests
served.  Everything is removed at the end, even on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


sys.path.insert(0, ROOT)
import _runtime  # noqa: E402 - the benches' helpers (this file's directory is on the path)

import ipvs_harness.lab as lab  # noqa: E402 - after the path (tools/ipvs-lab is only a launcher of it)

FLOOD = textwrap.dedent("""
    import socket, struct, sys, time
    ifname, dst_mac, vip, seconds = sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((ifname, 0))
    src_mac = bytes.fromhex(open(f"/sys/class/net/{ifname}/address").read().strip().replace(":", ""))
    eth = dst_mac + src_mac + b"\\x08\\x00"
    def csum(b):
        if len(b) % 2: b += b"\\0"
        t = sum(struct.unpack(f"!{len(b) // 2}H", b))
        while t >> 16: t = (t & 0xFFFF) + (t >> 16)
        return ~t & 0xFFFF
    dst = socket.inet_aton(vip)
    frames = []
    for i in range(100):
        src = socket.inet_aton(f"198.51.100.{100 + i}")
        for sport in range(1024, 1024 + int(sys.argv[5])):
            tcp = struct.pack("!HHIIBBHHH", sport, 80, 1, 0, 5 << 4, 0x02, 64240, 0, 0)
            c = csum(src + dst + struct.pack("!BBH", 0, 6, 20) + tcp)
            tcp = tcp[:16] + struct.pack("!H", c) + tcp[18:]
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, i, 0x4000, 64, 6, 0, src, dst)
            ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
            frames.append(eth + ip + tcp)
    sent, end, n = 0, time.monotonic() + seconds, len(frames)
    send = s.send
    while True:
        for k in range(1024):
            try:
                send(frames[(sent + k) % n])
            except OSError:
                pass
        sent += 1024
        if time.monotonic() >= end:
            break
    print(sent)
""")

FETCH = textwrap.dedent("""
    import http.client, json, socket, sys, time
    host, seconds = sys.argv[1], float(sys.argv[2])
    out, t_start = [], time.monotonic()
    end = t_start + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        step, why, t_conn = "connect", "ok", None
        c = http.client.HTTPConnection(host, 80, timeout=1.0)
        try:
            c.connect()
            t_conn = round(time.monotonic() - t0, 4)
            step = "response"
            c.request("GET", "/")
            r = c.getresponse()
            if r.status != 200 or not r.read():
                why = f"http_{r.status}"
        except socket.timeout:
            why = step + "_timeout"
        except ConnectionResetError:
            why = step + "_reset"
        except ConnectionRefusedError:
            why = "refused"
        except OSError as e:
            why = f"{step}_{type(e).__name__}"
        except Exception as e:
            why = type(e).__name__
        finally:
            c.close()
        t1 = time.monotonic()
        out.append((round(t0 - t_start, 3), why, round(t1 - t0, 4), t_conn))
        time.sleep(max(0.0, 0.02 - (time.monotonic() - t0)))
    print(json.dumps(out))
""")

#: Runs in the director's namespace: every ``period`` seconds, ipvsd's
#: counters (GET_COUNTERS, as ``ipvs-counters`` prints them) and its
#: resident memory, one JSON line each.
SAMPLE = textwrap.dedent("""
    import json, sys, time
    from ipvs.client import Client
    from ipvs.cli.ipvs_counters import read
    pid, seconds, period = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    t_start = time.monotonic()
    with Client(timeout=5.0) as c:
        while time.monotonic() < t_start + seconds:
            t0 = time.monotonic()
            try:
                with open(f"/proc/{pid}/status") as f:
                    rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024
                with open(f"/proc/{pid}/schedstat") as f:
                    cpu_ns, wait_ns, _ = (int(x) for x in f.read().split())
                row = read(c)
            except (OSError, RuntimeError, StopIteration):
                break
            row["t"], row["rss_mib"] = round(t0 - t_start, 3), rss
            # ipvsd's CPU time and its time waiting for a CPU (the run queue), in ms.
            row["cpu_ms"], row["runq_ms"] = cpu_ns // 1000000, wait_ns // 1000000
            row["ask_ms"] = round((time.monotonic() - t0) * 1e3, 1)
            print(json.dumps(row), flush=True)
            time.sleep(max(0.0, period - (time.monotonic() - t0)))
""")

#: The second client's TCP counters (its namespace's /proc/net/snmp and
#: netstat): the flood uses a packet socket, so every TCP event there is
#: the second client's.
TCP_COUNTERS = ("Tcp.ActiveOpens", "Tcp.AttemptFails", "Tcp.EstabResets", "Tcp.RetransSegs",
                "TcpExt.TCPSynRetrans", "TcpExt.TCPTimeouts", "TcpExt.TCPLossProbes")


def client_tcp() -> dict[str, int]:
    """The second client's namespace's TCP counters (:data:`TCP_COUNTERS`)."""
    out: dict[str, int] = {}
    for name in ("snmp", "netstat"):
        text = lab.run(*lab.nsexec(lab.NS_CLIENT, "cat", f"/proc/net/{name}"), check=False).stdout
        lines = text.splitlines()
        for head, vals in zip(lines[::2], lines[1::2]):
            prefix, keys = head.split(":", 1)
            for k, v in zip(keys.split(), vals.split(":", 1)[1].split()):
                if f"{prefix}.{k}" in TCP_COUNTERS:
                    out[f"{prefix}.{k}"] = int(v)
    return out


def restart_director(extra: list[str]) -> None:
    lab.stop_pid(lab.read_pid("director"))
    cmd = lab.director_cmd("spare", False) + extra
    lab.wait_answering(lab.start("director", lab.NS_DIR, cmd, env={"PYTHONPATH": ROOT}))
    for line in lab.RULES:
        lab.ipvsadm(*line.split(), check=False)


def stop_and_read_counters(pid: int) -> dict[str, int]:
    """Stop ipvsd (SIGTERM) and read the data path's counters from the line its driver logs when it closes."""
    lab.stop_pid(pid)
    out: dict[str, int] = {}
    with open(os.path.join(lab.STATE, "director.log")) as f:
        for line in f:
            if "data path counters:" in line:
                for item in line.split("data path counters:", 1)[1].split():
                    k, _, v = item.partition("=")
                    if v.isdigit():
                        out[k] = int(v)
    return out


#: The counters that say where packets went, printed per variant when non-zero.
WHERE = ("d_out_rx_frames", "d_out_rx_kernel_drops", "br-in_rx_frames", "br-in_rx_kernel_drops", "ipvs",
         "drop_ipvs_drop", "drop_tx", "syn_guard_engaged", "syn_deferred", "syn_served", "drop_syn_full",
         "drop_syn_sources", "core_drop_defense",
         "core_drop_table_full", "conn_dropentry", "conn_room_passes", "conn_max", "d_out_neigh_queue_drops",
         "d_out_neigh_unresolved",
         "host_unreach", "drop_icmp_ratelimit")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far; 0.0 once it is gone."""
    try:
        return _runtime.cpu_seconds(pid)
    except (OSError, IndexError, ValueError):
        return 0.0


def at(samples: list[dict], t: float) -> dict:
    """The last sample taken at or before ``t`` (the first one if none)."""
    best = samples[0] if samples else {}
    for row in samples:
        if row["t"] > t:
            break
        best = row
    return best


def run_variant(name: str, extra: list[str], seconds: float, ports: int, capture: str | None = None) -> dict:
    restart_director(extra)
    pid = lab.read_pid("director")
    dumps = []
    if capture:
        # The second client's packets only (the flood's sources are other addresses), as each end saw them.
        for ns, ifname in ((lab.NS_CLIENT, "c0"), (lab.NS_RS1, "eth0"), (lab.NS_RS2, "eth0")):
            dumps.append(subprocess.Popen(
                lab.nsexec(ns, "tcpdump", "-i", ifname, "-n", "-s", "96", "-U", "-w", f"{capture}.{name}.{ns}.pcap",
                           f"tcp and host {lab.CLIENT}"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1.0)
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    tcp0 = client_tcp()
    mac = lab.run(*lab.nsexec(lab.NS_DIR, "cat", "/sys/class/net/d_out/address")).stdout.strip().replace(":", "")
    py = sys.executable
    env = {**os.environ, "PYTHONPATH": ROOT}
    # The sampler starts first, so its clock's 0 is a little before the
    # others'.  It writes to a file, not a pipe: nobody reads a pipe before
    # the flood ends, and a full one would stop the sampler.
    sample_out = tempfile.TemporaryFile("w+")
    sample = subprocess.Popen(lab.nsexec(lab.NS_DIR, py, "-c", SAMPLE, str(pid), str(seconds + 3), "0.5"),
                              stdout=sample_out, text=True, env=env)
    flood = subprocess.Popen(lab.nsexec(lab.NS_CLIENT, py, "-c", FLOOD, "c0", mac, lab.VIP, str(seconds), str(ports)),
                             stdout=subprocess.PIPE, text=True)
    fetch = subprocess.Popen(lab.nsexec(lab.NS_CLIENT, py, "-c", FETCH, lab.VIP, str(seconds)),
                             stdout=subprocess.PIPE, text=True)
    try:
        sent = int(flood.communicate(timeout=seconds + 60)[0].strip() or 0)
        results = json.loads(fetch.communicate(timeout=seconds + 60)[0] or "[]")
        sample.wait(timeout=seconds + 60)
        sample_out.seek(0)
        samples = [json.loads(line) for line in sample_out]
    finally:
        for p in (flood, fetch, sample):
            if p.poll() is None:
                p.kill()
                p.wait(10)
        sample_out.close()
        for p in dumps:
            p.terminate()
            p.wait(10)
    cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
    tcp1 = client_tcp()
    alive = lab.alive(pid)
    counters = stop_and_read_counters(pid)
    lat = sorted(t for _, why, t, _ in results if why == "ok")
    # The handshake's time: how long the SYN took through the director (and the SYN guard).
    conn = sorted(c for _, why, _, c in results if c is not None)
    ok = len(lat)
    last = samples[-1] if samples else {}
    return {
        "sent": sent, "rate": sent / seconds, "table_max": max((r["conn_count"] for r in samples), default=0),
        "rss_max": max((r["rss_mib"] for r in samples), default=0.0),
        # What ipvsd holds of its budget (private memory and rings: docs/ipvsd.md), when it has one.
        "used_max": max((r.get("memory.used_kib", 0) / 1024 for r in samples), default=0.0),
        "requests": len(results), "success": ok / len(results) if results else 0.0,
        "p50_ms": statistics.median(lat) * 1000 if lat else float("nan"),
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else float("nan"),
        "connect_p50_ms": statistics.median(conn) * 1000 if conn else float("nan"),
        "connect_p99_ms": conn[min(len(conn) - 1, int(len(conn) * 0.99))] * 1000 if conn else float("nan"),
        "alive": alive, "counters": counters, "cpu": cpu,
        "failures": [(t, why, lat_s) for t, why, lat_s, _ in results if why != "ok"],
        "tcp": {k: tcp1.get(k, 0) - tcp0.get(k, 0) for k in TCP_COUNTERS},
        "loop_turn_max_ms": last.get("loop.turn_max_us", 0) / 1000,
        "loop_timers_max_ms": last.get("loop.timers_max_us", 0) / 1000,
        "loop_turns_over_100ms": last.get("loop.turns_over_100ms", 0),
        "reclaims": last.get("memory.reclaims", 0),
        "drop_defense_max_rate": max((r["defense_drop_rate"] for r in samples), default=0),
        "samples": samples, "results": results,
    }


def explain(name: str, r: dict) -> None:
    """One comment line per failed request of the second client: when, why,
    and what ipvsd's counters said in the half second around it."""
    samples = r["samples"]
    for t, why, lat_s in r["failures"]:
        a, b = at(samples, t - 0.5), at(samples, t + lat_s + 0.5)
        delta = {k: v - a.get(k, 0) for k, v in b.items() if isinstance(v, int)}.get

        print(f"# {name} failed at {t:.2f}s after {lat_s * 1000:.0f} ms: {why}; around it: "
              f"drop_defense +{delta('drop_defense', 0)} (rate 1/{b.get('defense_drop_rate', 0)}, "
              f"availmem {b.get('defense_availmem', -1)} pages, rss {b.get('rss_mib', 0):.0f} MiB), "
              f"ring drops +{delta('driver.d_out_rx_kernel_drops', 0)}, "
              f"syn dropped full +{delta('driver.drop_syn_full', 0)} sources +{delta('driver.drop_syn_sources', 0)}, "
              f"table_full +{delta('drop_table_full', 0)}, turns over 100 ms +{delta('loop.turns_over_100ms', 0)} "
              f"(worst so far {b.get('loop.turn_max_us', 0) / 1000:.0f} ms), "
              f"ipvsd ran {delta('cpu_ms', 0)} ms and waited for a CPU {delta('runq_ms', 0)} ms "
              f"in {b.get('t', 0) - a.get('t', 0):.1f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--budget", default="256M")
    p.add_argument("--amemthresh", type=int, default=16384, help="pages (default 16384 = 64 MiB)")
    p.add_argument("--only", default="off,on")
    p.add_argument("--ports", type=int, default=600,
                   help="source ports per flooding address (100 addresses): the flood's distinct connections "
                        "are 100 times this (default %(default)s)")
    p.add_argument("--timeline", metavar="PREFIX",
                   help="write each variant's samples of ipvsd's counters and the second client's requests "
                        "to PREFIX.VARIANT.json")
    p.add_argument("--capture", metavar="PREFIX",
                   help="capture the second client's packets (tcpdump) at the client and at the real servers "
                        "to PREFIX.VARIANT.NAMESPACE.pcap")
    p.add_argument("--ipvsd-args", default="", metavar="ARGS",
                   help="more ipvsd options for every variant, e.g. '--ring-blocks 32' (split on spaces)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("needs root (network namespaces)")
    variants = {
        "off": [],
        "on": ["--memory-budget", args.budget, "--set", f"amemthresh={args.amemthresh}", "--set", "drop_entry=1",
               "--set", "drop_packet=1", "--set", "secure_tcp=1"],
        # The same without drop_packet, which drops new connections whoever sends them.
        "entry": ["--memory-budget", args.budget, "--set", f"amemthresh={args.amemthresh}", "--set",
                  "drop_entry=1", "--set", "secure_tcp=1"],
    }
    # The same as off and on without the data path's SYN guard (docs/ipvsd.md, "Under a SYN flood").
    variants["off-noguard"] = variants["off"] + ["--no-syn-guard"]
    variants["on-noguard"] = variants["on"] + ["--no-syn-guard"]
    print(f"# {time.strftime('%H:%M:%S', time.gmtime())} UTC; uptime: {open('/proc/loadavg').read().strip()}")
    print(f"# runtime of this script {platform.python_implementation()} {platform.python_version()}; "
          f"ipvsd runtime: {os.environ.get('IPVSD_RUNTIME', 'auto')}; {os.cpu_count()} CPUs; "
          f"load {os.getloadavg()[0]:.1f}")
    try:
        lab.up("spare", False)
        for name in args.only.split(","):
            # The machine may be shared: its load before each run says how much CPU there was to have.
            print(f"# {name}: {time.strftime('%H:%M:%S', time.gmtime())} UTC, load {os.getloadavg()[0]:.1f}")
            r = run_variant(name, variants[name] + args.ipvsd_args.split(), args.seconds, args.ports, args.capture)
            name = name.replace("-", "_")
            print(f"synflood_{name}_syns_sent {r['sent']} frames")
            print(f"synflood_{name}_syn_rate {r['rate']:.0f} frames/s")
            print(f"synflood_{name}_table_max {r['table_max']} entries")
            print(f"synflood_{name}_ipvsd_rss_max {r['rss_max']:.0f} MiB")
            if r["used_max"]:
                print(f"synflood_{name}_ipvsd_budget_used_max {r['used_max']:.0f} MiB")
            print(f"synflood_{name}_client_requests {r['requests']} requests")
            print(f"synflood_{name}_client_success {100 * r['success']:.1f} %")
            print(f"synflood_{name}_client_p50 {r['p50_ms']:.1f} ms")
            print(f"synflood_{name}_client_p99 {r['p99_ms']:.1f} ms")
            print(f"synflood_{name}_client_connect_p50 {r['connect_p50_ms']:.1f} ms")
            print(f"synflood_{name}_client_connect_p99 {r['connect_p99_ms']:.1f} ms")
            print(f"synflood_{name}_ipvsd_alive {int(r['alive'])} bool")
            print(f"synflood_{name}_ipvsd_cpu {100 * r['cpu']:.0f} %")
            print(f"synflood_{name}_loop_turn_max {r['loop_turn_max_ms']:.0f} ms")
            print(f"synflood_{name}_loop_timers_max {r['loop_timers_max_ms']:.0f} ms")
            print(f"synflood_{name}_loop_turns_over_100ms {r['loop_turns_over_100ms']} count")
            print(f"synflood_{name}_drop_packet_rate_max {r['drop_defense_max_rate']} 1/n")
            print(f"synflood_{name}_gc_reclaims {r['reclaims']} count")
            for why, n in sorted(Counter(why for _, why, _ in r["failures"]).items()):
                print(f"synflood_{name}_client_failed_{why} {n} requests")
            for k, v in r["tcp"].items():
                print(f"synflood_{name}_client_{k.replace('.', '_')} {v} count")
            for k in WHERE:
                if r["counters"].get(k):
                    print(f"synflood_{name}_{k.replace('-', '_')} {r['counters'][k]} count")
            explain(name, r)
            if args.timeline:
                with open(f"{args.timeline}.{name}.json", "w") as f:
                    json.dump({"samples": r["samples"], "requests": r["results"]}, f)
            sys.stdout.flush()
    finally:
        lab.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
