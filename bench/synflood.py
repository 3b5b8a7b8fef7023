#!/usr/bin/env python3
"""SYN flood against ipvsd in the lab, defenses off and on: prints ``name value unit`` lines.

    sudo IPVS_LAB_PREFIX=me .venv/bin/python bench/synflood.py [--seconds S] [--budget 256M]
                        [--amemthresh PAGES] [--ports N] [--only off,on,off-noguard,on-noguard,entry]

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
  which records each request's success and latency.

Every second the bench reads the director's table size (``ipvsadm -Ln``:
active + inactive connections) and ipvsd's resident memory.  Variants:

* ``off``: ipvsd as it comes (no budget given: the machine's memory, no
  defense levels set);
* ``on``: ``--memory-budget BUDGET --set amemthresh=PAGES --set
  drop_entry=1 --set drop_packet=1 --set secure_tcp=1``;
* ``entry``: the same without ``drop_packet``;
* ``off-noguard``, ``on-noguard``: ``off`` and ``on`` with the data
  path's SYN guard turned off (``--no-syn-guard``; docs/ipvsd.md, "Under
  a SYN flood"), to see what it buys.

Lines per variant: SYNs sent and their rate, the table's and the memory's
peak, the second client's success rate and latency (median, 99th
percentile), ipvsd's CPU share, then the counters ipvsd's driver logged
at exit that say where frames went (the kernel's ring drops, the SYN
guard, the core's drops and defenses, the neighbour queue).  The goal
with defenses on: memory within the budget and at least 99% of the
second client's requests served.  Everything is removed at the end, even
on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


sys.path.insert(0, ROOT)
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
    import json, sys, time, urllib.request
    url, seconds = sys.argv[1], float(sys.argv[2])
    out, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:
                ok = r.status == 200 and len(r.read()) > 0
        except Exception:
            ok = False
        out.append((ok, time.monotonic() - t0))
        time.sleep(max(0.0, 0.02 - (time.monotonic() - t0)))
    print(json.dumps(out))
""")


def director_pid() -> int:
    with open(os.path.join(lab.STATE, "director.pid")) as f:
        return int(f.read())


def restart_director(extra: list[str]) -> None:
    lab.stop_pid(director_pid())
    cmd = lab.director_cmd("spare", False) + extra
    lab.start("director", lab.NS_DIR, cmd, env={"PYTHONPATH": ROOT})
    deadline = time.monotonic() + 30
    while lab.ipvsadm("-Ln", check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError(open(os.path.join(lab.STATE, "director.log")).read()[-2000:])
        time.sleep(0.1)
    for line in lab.RULES:
        lab.ipvsadm(*line.split(), check=False)


def table_size() -> int:
    r = lab.ipvsadm("-Ln", check=False)
    total = 0
    for line in r.stdout.splitlines():
        f = line.split()
        if len(f) >= 6 and f[0] == "->" and f[1][0].isdigit():
            total += int(f[4]) + int(f[5])
    return total


def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


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
         "core_drop_table_full", "conn_dropentry", "conn_max", "d_out_neigh_queue_drops", "d_out_neigh_unresolved",
         "host_unreach", "drop_icmp_ratelimit")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def run_variant(name: str, extra: list[str], seconds: float, ports: int) -> dict:
    restart_director(extra)
    pid = director_pid()
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    mac = lab.run(*lab.nsexec(lab.NS_DIR, "cat", "/sys/class/net/d_out/address")).stdout.strip().replace(":", "")
    py = sys.executable
    flood = subprocess.Popen(lab.nsexec(lab.NS_CLIENT, py, "-c", FLOOD, "c0", mac, lab.VIP, str(seconds), str(ports)),
                             stdout=subprocess.PIPE, text=True)
    fetch = subprocess.Popen(lab.nsexec(lab.NS_CLIENT, py, "-c", FETCH, f"http://{lab.VIP}/", str(seconds)),
                             stdout=subprocess.PIPE, text=True)
    table, mem = [], []
    try:
        end = time.monotonic() + seconds + 2
        while time.monotonic() < end and (flood.poll() is None or fetch.poll() is None):
            table.append(table_size())
            mem.append(rss_mib(pid))
            time.sleep(1.0)
        sent = int(flood.communicate(timeout=seconds + 60)[0].strip() or 0)
        results = json.loads(fetch.communicate(timeout=seconds + 60)[0] or "[]")
    finally:
        for p in (flood, fetch):
            if p.poll() is None:
                p.kill()
                p.wait(10)
    table.append(table_size())
    mem.append(rss_mib(pid))
    cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
    alive = lab.alive(pid)
    counters = stop_and_read_counters(pid)
    lat = sorted(t for ok, t in results if ok)
    ok = sum(1 for o, _ in results if o)
    return {
        "sent": sent, "rate": sent / seconds, "table_max": max(table), "rss_max": max(mem),
        "requests": len(results), "success": ok / len(results) if results else 0.0,
        "p50_ms": statistics.median(lat) * 1000 if lat else float("nan"),
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else float("nan"),
        "alive": alive, "counters": counters, "cpu": cpu,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--budget", default="256M")
    p.add_argument("--amemthresh", type=int, default=16384, help="pages (default 16384 = 64 MiB)")
    p.add_argument("--only", default="off,on")
    p.add_argument("--ports", type=int, default=600,
                   help="source ports per flooding address (100 addresses): the flood's distinct connections "
                        "are 100 times this (default %(default)s)")
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
    print(f"# runtime of this script {platform.python_implementation()} {platform.python_version()}; "
          f"ipvsd runtime: {os.environ.get('IPVSD_RUNTIME', 'auto')}; {os.cpu_count()} CPUs; "
          f"load {os.getloadavg()[0]:.1f}")
    try:
        lab.up("spare", False)
        for name in args.only.split(","):
            r = run_variant(name, variants[name], args.seconds, args.ports)
            name = name.replace("-", "_")
            print(f"synflood_{name}_syns_sent {r['sent']} frames")
            print(f"synflood_{name}_syn_rate {r['rate']:.0f} frames/s")
            print(f"synflood_{name}_table_max {r['table_max']} entries")
            print(f"synflood_{name}_ipvsd_rss_max {r['rss_max']:.0f} MiB")
            print(f"synflood_{name}_client_requests {r['requests']} requests")
            print(f"synflood_{name}_client_success {100 * r['success']:.1f} %")
            print(f"synflood_{name}_client_p50 {r['p50_ms']:.1f} ms")
            print(f"synflood_{name}_client_p99 {r['p99_ms']:.1f} ms")
            print(f"synflood_{name}_ipvsd_alive {int(r['alive'])} bool")
            print(f"synflood_{name}_ipvsd_cpu {100 * r['cpu']:.0f} %")
            for k in WHERE:
                if r["counters"].get(k):
                    print(f"synflood_{name}_{k.replace('-', '_')} {r['counters'][k]} count")
            sys.stdout.flush()
    finally:
        lab.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
