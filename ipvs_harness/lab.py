"""ipvs-lab: the seed's LVS/NAT example, for real, in network namespaces.

    ipvs-lab up [--mode spare|shared] [--strict] [--no-rules] [--method nat|dr|ipip|gue|gre|...]
    ipvs-lab demo [--requests N] [--concurrency N]
    ipvs-lab run [--mode spare|shared] [--requests N]
    ipvs-lab status
    ipvs-lab down

``up``, ``demo``, ``run`` and ``down`` hold the lab's lock
(``/run/PREFIX-lab.lock``) while they run: a second run on the same lab
is refused with the holder's pid instead of tearing down the first one's
namespaces.  ``demo``'s progress line counts connections live (the
director's per-CPU counters, not the estimator's snapshot), and every
wait says what it waits for.

``up`` builds four namespaces joined by veth pairs only (nothing touches
the host's interfaces)::

    ipvs-client                ipvs-director                    ipvs-rs1 / ipvs-rs2
    198.51.100.2  c0 ==== d_out  [ipvsd]  br-in (d_rs1, d_rs2) ==== eth0 172.16.0.2 / .3
                            VIP 203.0.113.5      gateway 172.16.0.1

starts the real servers (HTTP on rs1:80 and rs2:8000 naming their server,
FTP on rs2:21, UDP echo on port 7 of both, and a 100 MB file for download
checks), starts ``tools/ipvsd`` in ipvs-director on AF_PACKET and applies
the seed's rules with ``tools/ipvsadm``::

    -A -t 203.0.113.5:80 -s wlc
    -a -t 203.0.113.5:80 -r 172.16.0.2:80 -m -w 1
    -a -t 203.0.113.5:80 -r 172.16.0.3:8000 -m -w 2
    -A -t 203.0.113.5:21 -p
    -a -t 203.0.113.5:21 -r 172.16.0.3:21 -m
    -A -u 203.0.113.5:7 -s rr
    -a -u 203.0.113.5:7 -r 172.16.0.2:7 -m
    -a -u 203.0.113.5:7 -r 172.16.0.3:7 -m

``--ipv6`` (either mode) adds the IPv6 plan, documentation prefixes
(RFC 3849) inside the namespaces only, and the same services over IPv6
(with ``--method``, by that method: :func:`rules6_for`)::

    client 2001:db8:0:1::2  ====  d_out 2001:db8:0:1::1   VIP 2001:db8:0:5::5
    br-in 2001:db8:0:2::1 (gateway)  ====  rs1 2001:db8:0:2::2, rs2 2001:db8:0:2::3

    -A -t [2001:db8:0:5::5]:80 -s wlc
    -a -t [2001:db8:0:5::5]:80 -r [2001:db8:0:2::2]:80 -m -w 1
    -a -t [2001:db8:0:5::5]:80 -r [2001:db8:0:2::3]:8000 -m -w 2
    -A -u [2001:db8:0:5::5]:7 -s rr
    -a -u [2001:db8:0:5::5]:7 -r [2001:db8:0:2::2]:7 -m
    -a -u [2001:db8:0:5::5]:7 -r [2001:db8:0:2::3]:7 -m
    -A -t [2001:db8:0:5::5]:21 -p
    -a -t [2001:db8:0:5::5]:21 -r [2001:db8:0:2::3]:21 -m

In spare mode the director's kernel keeps IPv6 off (ipvsd answers
neighbour discovery on its ports); in shared mode it holds
2001:db8:0:1::1, the VIP and 2001:db8:0:2::1 on ``d_out`` and ``br-in``
and forwards, beside ipvsd's ``ip6 pyipvs`` table.  The client's and the
real servers' kernels get IPv6 on their lab interface only, addresses
without duplicate address detection.

``--mode spare``: the director's kernel has no addresses on the lab NICs and
the driver answers ARP; ``--mode shared``: the kernel keeps 198.51.100.1,
the VIP and 172.16.0.1 (and forwards: ip_forward=1) and ipvsd installs its
early nftables drop rules.  ``--strict``: checksums in software (the
director's egress with ``tx off tso off``, the receivers ``rx off``), so a
checksum bug cannot hide behind offloads.

``--method`` chooses the forwarding method of the real servers (see
:data:`METHODS`): ``nat`` is the seed's example above; ``dr`` and the
tunnels (``ipip``, ``gue``, ``gre`` and their ``-csum``/``-remcsum``
variants) serve the same web and UDP echo services on port 80 and 7 of
both real servers, which hold the VIP themselves: on ``lo`` for DR, on a
tun device for the tunnels, fed by a user-space decapsulator
(:mod:`ipvs_harness.decap`, since this kernel may lack the tunnel
modules), with ``arp_ignore=1``/``arp_announce=2``.  The director is still
their gateway, so their direct replies pass it as routed traffic
(``ipvsd --forward``), never through IPVS.

``down`` stops every process started in the lab's namespaces (by PID) and
deletes the namespaces; it is idempotent and also cleans up leftovers of a
lab that was killed.  Traffic never leaves the namespaces; every load run
is bounded in requests and time.
"""


from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

from ipvs_harness import ROOT, TOOLS

# IPVS_LAB_PREFIX names the namespaces (default ipvs-*), so that two labs,
# say a developer's and a test run's, can stand side by side.
PREFIX = os.environ.get("IPVS_LAB_PREFIX", "ipvs")
STATE = os.environ.get("IPVS_LAB_STATE", f"/run/{PREFIX}-lab")
NS_CLIENT, NS_DIR, NS_RS1, NS_RS2 = (f"{PREFIX}-{n}" for n in ("client", "director", "rs1", "rs2"))
NAMESPACES = (NS_CLIENT, NS_DIR, NS_RS1, NS_RS2)
CLIENT = "198.51.100.2"
OUTER = "198.51.100.1"
VIP = "203.0.113.5"
GATEWAY = "172.16.0.1"
RS = {"rs1": (NS_RS1, "172.16.0.2", 80), "rs2": (NS_RS2, "172.16.0.3", 8000)}
BIG_SIZE = 100 * 1000 * 1000

CLIENT6 = "2001:db8:0:1::2"
OUTER6 = "2001:db8:0:1::1"
VIP6 = "2001:db8:0:5::5"
GATEWAY6 = "2001:db8:0:2::1"
RS6 = {"rs1": "2001:db8:0:2::2", "rs2": "2001:db8:0:2::3"}

#: The IPv6 services of the NAT plan (see :func:`rules6_for` for the others).
RULES6 = [
    f"-A -t [{VIP6}]:80 -s wlc",
    f"-a -t [{VIP6}]:80 -r [{RS6['rs1']}]:80 -m -w 1",
    f"-a -t [{VIP6}]:80 -r [{RS6['rs2']}]:8000 -m -w 2",
    f"-A -u [{VIP6}]:7 -s rr",
    f"-a -u [{VIP6}]:7 -r [{RS6['rs1']}]:7 -m",
    f"-a -u [{VIP6}]:7 -r [{RS6['rs2']}]:7 -m",
    f"-A -t [{VIP6}]:21 -p",
    f"-a -t [{VIP6}]:21 -r [{RS6['rs2']}]:21 -m",
]

#: The forwarding method variants of ``up --method``: NAT (the seed's
#: example), direct routing, and tunnelling by IPIP, GUE or GRE (with
#: their checksum options): the ipvsadm options of the real servers.
GUE_PORT = 6080
METHODS = {
    "nat": ["-m"],
    "dr": ["-g"],
    "ipip": ["-i"],
    "gue": ["-i", "--tun-type", "gue", "--tun-port", str(GUE_PORT)],
    "gue-csum": ["-i", "--tun-type", "gue", "--tun-port", str(GUE_PORT), "--tun-csum"],
    "gue-remcsum": ["-i", "--tun-type", "gue", "--tun-port", str(GUE_PORT), "--tun-remcsum"],
    "gre": ["-i", "--tun-type", "gre"],
    "gre-csum": ["-i", "--tun-type", "gre", "--tun-csum"],
}

RULES = [
    f"-A -t {VIP}:80 -s wlc",
    f"-a -t {VIP}:80 -r 172.16.0.2:80 -m -w 1",
    f"-a -t {VIP}:80 -r 172.16.0.3:8000 -m -w 2",
    f"-A -t {VIP}:21 -p",
    f"-a -t {VIP}:21 -r 172.16.0.3:21 -m",
    f"-A -u {VIP}:7 -s rr",
    f"-a -u {VIP}:7 -r 172.16.0.2:7 -m",
    f"-a -u {VIP}:7 -r 172.16.0.3:7 -m",
]


def _direct_rules(vip: str, rs1: str, rs2: str, opts: str) -> list[str]:
    """The web (wlc, weights 1 and 2) and UDP echo (rr) services of a DR or
    TUN lab on ``vip`` over ``rs1`` and ``rs2``, addresses as ipvsadm
    writes them (``[...]`` for IPv6), each real server with ``opts``."""
    return [
        f"-A -t {vip}:80 -s wlc",
        f"-a -t {vip}:80 -r {rs1}:80 {opts} -w 1",
        f"-a -t {vip}:80 -r {rs2}:80 {opts} -w 2",
        f"-A -u {vip}:7 -s rr",
        f"-a -u {vip}:7 -r {rs1}:7 {opts}",
        f"-a -u {vip}:7 -r {rs2}:7 {opts}",
    ]


def rules_for(method: str) -> list[str]:
    """The lab's rules for a forwarding method.  NAT: the seed's rules.  DR
    and TUN: the same web and UDP echo services on both real servers,
    which hold the VIP themselves and so serve the service's own port (the
    kernel forwards DR and TUN to the service's port); no FTP service (the
    FTP helper is NAT's)."""
    if method == "nat":
        return list(RULES)
    return _direct_rules(VIP, "172.16.0.2", "172.16.0.3", " ".join(METHODS[method]))


def rules6_for(method: str) -> list[str]:
    """The IPv6 services of ``--ipv6`` for a forwarding method: NAT's
    :data:`RULES6`, or for DR and TUN the same web and UDP echo services
    as :func:`rules_for` on the IPv6 VIP and real servers (which hold the
    IPv6 VIP themselves: on ``lo``, or on the decapsulator's tun device,
    fed by IPv6-in-IPv6, GUE or GRE over IPv6)."""
    if method == "nat":
        return list(RULES6)
    return _direct_rules(f"[{VIP6}]", f"[{RS6['rs1']}]", f"[{RS6['rs2']}]", " ".join(METHODS[method]))


def log(msg: str) -> None:
    print(f"ipvs-lab: {msg}", file=sys.stderr, flush=True)


#: How long :func:`run` waits on a command unless told otherwise: the lab's
#: commands set things up and take well under a second; one that hangs (a
#: namespace stuck, a tool waiting on input) must not hang the test or the
#: bench that called it.
RUN_TIMEOUT = 120.0


def run(*cmd: str, check: bool = True, input: str | None = None, quiet: bool = True,
        timeout: float | None = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    """Run ``cmd`` (output captured); with ``check``, a failure raises
    RuntimeError with its message.  ``subprocess.TimeoutExpired`` after
    ``timeout`` seconds (None: no limit)."""
    r = subprocess.run(cmd, input=input, text=True, capture_output=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip() or r.stdout.strip()}")
    return r


def nsexec(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def ip_batch(ns: str | None, lines: list[str]) -> None:
    cmd = ["ip"] + (["-n", ns] if ns else []) + ["-batch", "-"]
    run(*cmd, input="\n".join(lines) + "\n")


def sysctl(ns: str, settings: dict[str, str]) -> None:
    script = "; ".join(f"echo {v} > /proc/sys/{k.replace('.', '/')} 2>/dev/null || true"
                       for k, v in settings.items())
    run(*nsexec(ns, "sh", "-c", script))


def lab_exists() -> bool:
    out = run("ip", "netns", "list", check=False).stdout
    return any(line.split()[0] in NAMESPACES for line in out.splitlines() if line.strip())


# ---------------------------------------------------------------- processes


def start(name: str, ns: str, cmd: list[str], ready: str | None = None, timeout: float = 15.0,
          env: dict | None = None) -> int:
    """Start ``cmd`` in ``ns`` holding its real PID (ip netns exec execs it)."""
    os.makedirs(STATE, exist_ok=True)
    with open(os.path.join(STATE, f"{name}.log"), "w") as out:  # the child keeps its own copy
        p = subprocess.Popen(nsexec(ns, *cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, env={**os.environ, **(env or {})})
    with open(os.path.join(STATE, f"{name}.pid"), "w") as f:
        f.write(f"{p.pid}\n")
    if ready:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(os.path.join(STATE, f"{name}.log")) as f:
                if ready in f.read():
                    return p.pid
            if p.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not become ready:\n{log_tail(name, 2000)}")
    return p.pid


def read_pid(name: str) -> int:
    """The PID :func:`start` recorded for ``name``."""
    with open(os.path.join(STATE, f"{name}.pid")) as f:
        return int(f.read())


def log_tail(name: str, chars: int = 3000) -> str:
    """The end of ``name``'s log (what it printed before failing)."""
    with open(os.path.join(STATE, f"{name}.log")) as f:
        return f.read()[-chars:]


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a child of ours that exited is reaped)."""
    try:
        # A child of ours that exited is a zombie until reaped, and a zombie
        # still answers kill(pid, 0).
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def gone(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` has ended within ``timeout`` seconds (see :func:`alive`)."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def wait_answering(pid: int, tool=None, log_end=None, timeout: float = 30.0) -> None:
    """Wait until the ipvsd of ``pid`` answers ``ipvsadm -Ln``.

    ``tool`` runs ipvsadm where that ipvsd is (by default :func:`ipvsadm`,
    in this lab's director), ``log_end`` returns the end of its log.  A
    RuntimeError, with that log, if it exits or has not answered within
    ``timeout`` seconds.
    """
    tool = tool or ipvsadm
    deadline = time.monotonic() + timeout
    while tool("-Ln", check=False).returncode != 0:
        if not alive(pid) or time.monotonic() > deadline:
            state = "exited" if not alive(pid) else "no answer to ipvsadm -Ln"
            raise RuntimeError(f"ipvsd did not start ({state}):\n" + (log_end or (lambda: log_tail("director")))())
        time.sleep(0.1)


def stop_pid(pid: int, grace: float = 5.0) -> None:
    """SIGTERM, up to ``grace`` seconds to exit, then SIGKILL (a child of
    ours is reaped either way, so no zombie is left behind)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not gone(pid, grace):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


# ---------------------------------------------------------------- down


def forget_offload_notes(ns: str) -> None:
    """Drop ipvsd's offload notes (``--strict-checksums``) for a namespace about
    to be deleted: its interfaces go with it, nothing is left to restore."""
    try:
        ino = os.stat(f"/run/netns/{ns}").st_ino
    except OSError:
        return
    notes = "/run/pyipvs"
    if os.path.isdir(notes):
        for name in os.listdir(notes):
            if name.startswith(f"offloads-{ino}-"):
                try:
                    os.unlink(os.path.join(notes, name))
                except OSError:
                    pass


def down() -> None:
    """Stop the lab's processes and delete its namespaces (idempotent)."""
    # The director first, so it removes its own rules while its namespace exists.
    if os.path.isdir(STATE):
        names = sorted(f for f in os.listdir(STATE) if f.endswith(".pid"))
        names.sort(key=lambda f: f != "director.pid")
        for f in names:
            try:
                pid = int(open(os.path.join(STATE, f)).read().strip())
            except (OSError, ValueError):
                continue
            # The director restores offloads and removes its rules on SIGTERM:
            # give it time before SIGKILL on a busy machine.
            stop_pid(pid, grace=15.0 if f == "director.pid" else 5.0)
    # Leftovers of a killed lab: whatever still runs inside our namespaces
    # was started there by a lab run.
    for ns in NAMESPACES:
        r = run("ip", "netns", "pids", ns, check=False)
        for tok in r.stdout.split():
            if tok.isdigit():
                stop_pid(int(tok), grace=2.0)
    for ns in NAMESPACES:
        forget_offload_notes(ns)
        run("ip", "netns", "del", ns, check=False)
    if os.path.isdir(STATE):
        shutil.rmtree(STATE, ignore_errors=True)


# ---------------------------------------------------------------- up


def build_net(mode: str, strict: bool, ipv6: bool = False, method: str = "nat") -> None:
    for ns in NAMESPACES:
        run("ip", "netns", "add", ns)
    # veth pairs created straight inside the namespaces: none ever exists in
    # the host's namespace.
    run("ip", "link", "add", "c0", "netns", NS_CLIENT, "type", "veth", "peer", "name", "d_out", "netns", NS_DIR)
    run("ip", "link", "add", "eth0", "netns", NS_RS1, "type", "veth", "peer", "name", "d_rs1", "netns", NS_DIR)
    run("ip", "link", "add", "eth0", "netns", NS_RS2, "type", "veth", "peer", "name", "d_rs2", "netns", NS_DIR)
    common = {"net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.default.rp_filter": "0",
              "net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}
    for ns in NAMESPACES:
        sysctl(ns, common)
    ip_batch(NS_CLIENT, ["link set lo up", "link set c0 up", f"addr add {CLIENT}/24 dev c0",
                         "route add 203.0.113.0/24 dev c0"])
    for ns, addr, _port in RS.values():
        ip_batch(ns, ["link set lo up", "link set eth0 up", f"addr add {addr}/24 dev eth0",
                      f"route add default via {GATEWAY}"])
        if method != "nat":
            # The real server holds the VIP (DR: on lo; TUN: on the
            # decapsulator's tun device) but must never answer ARP for it,
            # nor use it as the source of its own ARP requests.
            sysctl(ns, {"net.ipv4.conf.all.arp_ignore": "1", "net.ipv4.conf.all.arp_announce": "2",
                        "net.ipv4.conf.eth0.arp_ignore": "1", "net.ipv4.conf.eth0.arp_announce": "2"})
            if method == "dr":
                ip_batch(ns, [f"addr add {VIP}/32 dev lo"])
    d = ["link set lo up", "link add br-in type bridge stp_state 0 forward_delay 0",
         "link set d_rs1 master br-in", "link set d_rs2 master br-in",
         "link set d_rs1 up", "link set d_rs2 up", "link set br-in up", "link set d_out up"]
    if mode == "shared":
        d += [f"addr add {OUTER}/24 dev d_out", f"addr add {VIP}/32 dev d_out", f"addr add {GATEWAY}/24 dev br-in"]
    ip_batch(NS_DIR, d)
    dsys = {"net.bridge.bridge-nf-call-iptables": "0", "net.bridge.bridge-nf-call-arptables": "0",
            "net.ipv4.ip_forward": "1" if mode == "shared" else "0", "net.bridge.bridge-nf-call-ip6tables": "0"}
    for dev in ("d_out", "br-in", "d_rs1", "d_rs2"):
        dsys[f"net.ipv4.conf.{dev}.rp_filter"] = "0"
    sysctl(NS_DIR, dsys)
    for ns, dev in ((NS_CLIENT, "c0"), (NS_RS1, "eth0"), (NS_RS2, "eth0")):
        sysctl(ns, {f"net.ipv4.conf.{dev}.rp_filter": "0"})
    if ipv6:
        build_net6(method, mode)
    if strict:
        eth = shutil.which("ethtool") or "ethtool"
        # Bridge ports too: the director's frames leave through them.
        for dev in ("d_rs1", "d_rs2"):
            run(*nsexec(NS_DIR, eth, "-K", dev, "tx", "off", "tso", "off"))
        for ns, dev in ((NS_CLIENT, "c0"), (NS_RS1, "eth0"), (NS_RS2, "eth0")):
            run(*nsexec(ns, eth, "-K", dev, "rx", "off"))


def build_net6(method: str = "nat", mode: str = "spare") -> None:
    """The IPv6 plan: IPv6 on the client's and the real servers' lab
    interface only (no router solicitations, no autoconfiguration, no
    duplicate address detection: the lab is up at once); in spare mode
    the director's kernel keeps IPv6 off and ipvsd answers for its
    addresses; in shared mode the kernel holds them too (and the VIP,
    which it answers for ping) on ``d_out`` and ``br-in``, not on the
    bridge's ports, and forwards, as for IPv4.  DR: the
    real servers hold the IPv6 VIP on ``lo`` (IPv6 answers neighbour
    solicitations only for the addresses of the interface asked, so no
    ``arp_ignore`` is needed); the tunnels' decapsulator puts it on its
    tun device."""
    on = {"net.ipv6.conf.all.disable_ipv6": "0", "net.ipv6.conf.default.disable_ipv6": "1",
          "net.ipv6.conf.all.accept_ra": "0", "net.ipv6.conf.all.router_solicitations": "0"}
    for ns, dev in ((NS_CLIENT, "c0"), (NS_RS1, "eth0"), (NS_RS2, "eth0")):
        sysctl(ns, {**on, f"net.ipv6.conf.{dev}.disable_ipv6": "0", f"net.ipv6.conf.{dev}.accept_ra": "0",
                    f"net.ipv6.conf.{dev}.router_solicitations": "0", "net.ipv6.conf.lo.disable_ipv6": "0"})
    ip_batch(NS_CLIENT, [f"addr add {CLIENT6}/64 dev c0 nodad", f"route add {VIP6.rsplit(':', 2)[0]}::/64 dev c0"])
    for name, (ns, _addr, _port) in RS.items():
        ip_batch(ns, [f"addr add {RS6[name]}/64 dev eth0 nodad", f"route add default via {GATEWAY6} dev eth0"])
        if method == "dr":
            ip_batch(ns, [f"addr add {VIP6}/128 dev lo nodad"])
    if mode == "shared":
        dsys = {"net.ipv6.conf.all.forwarding": "1", "net.ipv6.conf.all.accept_ra": "0"}
        for dev in ("lo", "d_out", "br-in"):
            dsys.update({f"net.ipv6.conf.{dev}.accept_dad": "0", f"net.ipv6.conf.{dev}.accept_ra": "0",
                         f"net.ipv6.conf.{dev}.router_solicitations": "0", f"net.ipv6.conf.{dev}.disable_ipv6": "0"})
        sysctl(NS_DIR, dsys)
        ip_batch(NS_DIR, [f"addr add {OUTER6}/64 dev d_out nodad", f"addr add {VIP6}/128 dev d_out nodad",
                          f"addr add {GATEWAY6}/64 dev br-in nodad"])


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
user root;
pid {state}/nginx-{name}.pid;
error_log {state}/nginx-{name}.err warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {state}/nginx-{name}-tmp;
    proxy_temp_path {state}/nginx-{name}-tmp;
    fastcgi_temp_path {state}/nginx-{name}-tmp;
    uwsgi_temp_path {state}/nginx-{name}-tmp;
    scgi_temp_path {state}/nginx-{name}-tmp;
    keepalive_requests 1000000;
    client_max_body_size 16m;
    server {{
        listen {addr}:{port} backlog=4096 reuseport;{listen6}
        location = / {{ default_type text/plain; return 200 "server={name}\\n"; }}
        location / {{ root {state}/www; }}
    }}
}}
"""


def start_decap(method: str, ipv6: bool = False) -> None:
    """TUN: each real server's user-space decapsulator (:mod:`ipvs_harness.decap`),
    which makes the ``vip0`` tun device holding the VIP (and with ``ipv6``
    the IPv6 VIP, and takes tunnel packets with an outer IPv6 header)."""
    kind = method.split("-")[0]
    opt = {"ipip": ["--ipip"], "gre": ["--gre"], "gue": ["--gue-port", str(GUE_PORT)]}[kind]
    if ipv6:
        opt += ["--ipv6", "--addr", f"{VIP6}/128"]
    for name, (ns, _addr, _port) in RS.items():
        start(f"decap-{name}", ns, [sys.executable, "-m", "ipvs_harness.decap", "--dev", "vip0",
                                    "--addr", f"{VIP}/32", *opt], ready="ready", env={"PYTHONPATH": ROOT})


def start_servers(ipv6: bool = False, method: str = "nat") -> None:
    os.makedirs(os.path.join(STATE, "www"), exist_ok=True)
    os.makedirs(os.path.join(STATE, "ftp"), exist_ok=True)
    big = os.path.join(STATE, "www", "big.bin")
    h = hashlib.sha256()
    with open(big, "wb") as f:
        left = BIG_SIZE
        seed = b"pyipvs-lab"
        while left:
            seed = hashlib.sha256(seed).digest()
            chunk = (seed * 32768)[: min(left, 1 << 20)]  # 1 MiB chunks of varying content
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    with open(big + ".sha256", "w") as f:
        f.write(h.hexdigest() + "\n")
    with open(os.path.join(STATE, "ftp", "hello.txt"), "w") as f:
        f.write("hello from rs2 over FTP\n")
    # IPVS_LAB_HTTP=python uses the built-in Python server even where nginx is.
    nginx = shutil.which("nginx") if os.environ.get("IPVS_LAB_HTTP") != "python" else None
    me = os.path.join(TOOLS, "ipvs-lab")
    if method not in ("nat", "dr"):
        start_decap(method, ipv6)
    for name, (ns, addr, port) in RS.items():
        addr6 = RS6[name]
        if method != "nat":
            addr, addr6, port = VIP, VIP6, 80  # DR/TUN: the real servers serve the VIP itself
        if nginx:
            os.makedirs(os.path.join(STATE, f"nginx-{name}-tmp"), exist_ok=True)
            conf = os.path.join(STATE, f"nginx-{name}.conf")
            with open(conf, "w") as f:
                listen6 = f"\n        listen [{addr6}]:{port} backlog=4096 reuseport;" if ipv6 else ""
                f.write(NGINX_CONF.format(state=STATE, name=name, addr=addr, port=port, listen6=listen6))
            start(f"http-{name}", ns, [nginx, "-c", conf, "-e", os.path.join(STATE, f"nginx-{name}.err")])
        else:
            http = ["--http", f"{addr}:{port}"] + (["--http", f"{addr6}:{port}"] if ipv6 else [])
            start(f"http-{name}", ns, [sys.executable, me, "_serve", "--name", name, *http], ready="ready")
        udp = ["--udp", f"{addr}:7"] + (["--udp", f"{addr6}:7"] if ipv6 else [])
        start(f"udp-{name}", ns, [sys.executable, me, "_serve", "--name", name, *udp], ready="ready")
    if method != "nat":
        for ns, _addr, _port in RS.values():
            wait_tcp(ns, VIP, 80)
            if ipv6:
                wait_tcp(ns, f"[{VIP6}]", 80)
        return
    if importlib.util.find_spec("pyftpdlib") is not None:
        start("ftp-rs2", NS_RS2, [sys.executable, me, "_ftp", "172.16.0.3", os.path.join(STATE, "ftp")],
              ready="ready")
        if ipv6:
            start("ftp6-rs2", NS_RS2, [sys.executable, me, "_ftp", RS6["rs2"], os.path.join(STATE, "ftp")],
                  ready="ready")
    else:
        log("pyftpdlib is not installed: no FTP server on rs2:21")
    for ns, addr, port in RS.values():
        wait_tcp(ns, addr, port)


def wait_tcp(ns: str, addr: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = run(*nsexec(ns, "ss", "-Hltn", f"src {addr}:{port}"), check=False)
        if r.stdout.strip():
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {addr}:{port} in {ns}")


def director_cmd(mode: str, strict: bool, ipv6: bool = False, method: str = "nat") -> list[str]:
    opts = ["--outer", "d_out", "--outer-addr", f"{OUTER}/24", "--inner", "br-in",
            "--inner-addr", f"{GATEWAY}/24", "--mode", mode, "--masquerade", "172.16.0.0/24"]
    if ipv6:
        opts += ["--outer-addr6", f"{OUTER6}/64", "--inner-addr6", f"{GATEWAY6}/64"]
    if strict:
        opts.append("--strict-checksums")
    if method != "nat":
        # The director is still the real servers' gateway: their direct
        # replies (from the VIP) pass it as plain routed traffic, as through
        # a kernel director with ip_forward=1, never through IPVS.
        opts.append("--forward")
    # --ftp: the FTP helper for VIP:21, as the seed's director loaded ip_vs_ftp.
    # --state in the lab's own directory: a restart after SIGKILL serves the
    # same rules, and `down` removes it, so every `up` starts with none.
    return [sys.executable, os.path.join(TOOLS, "ipvsd"), "--foreground", "--ftp",
            "--procfs-dir", os.path.join(STATE, "proc"), "--state", os.path.join(STATE, "ipvsadm.rules"), *opts]


def ipvsadm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(*nsexec(NS_DIR, sys.executable, os.path.join(TOOLS, "ipvsadm"), *args), check=check)


def start_director(mode: str, strict: bool, rules: bool = True, ipv6: bool = False, method: str = "nat") -> None:
    """Start ipvsd in the director's namespace and apply the method's rules with ipvsadm."""
    wait_answering(start("director", NS_DIR, director_cmd(mode, strict, ipv6, method), env={"PYTHONPATH": ROOT}))
    if rules:
        for line in rules_for(method) + (rules6_for(method) if ipv6 else []):
            ipvsadm(*line.split())


def up(mode: str = "spare", strict: bool = False, rules: bool = True, ipv6: bool = False, method: str = "nat") -> None:
    if method not in METHODS:
        raise RuntimeError(f"unknown forwarding method {method!r} (one of {', '.join(METHODS)})")
    down()
    os.makedirs(STATE, exist_ok=True)
    with open(os.path.join(STATE, "lab.json"), "w") as f:
        json.dump({"mode": mode, "strict": strict, "ipv6": ipv6, "method": method}, f)
    try:
        build_net(mode, strict, ipv6, method)
        start_servers(ipv6, method)
        start_director(mode, strict, rules, ipv6, method)
        # Warm the neighbour caches so the first request is not an ARP race.
        run(*nsexec(NS_CLIENT, "ping", "-c", "1", "-W", "2", VIP), check=False)
        if ipv6:
            run(*nsexec(NS_CLIENT, "ping", "-6", "-c", "1", "-W", "2", VIP6), check=False)
    except BaseException:
        try:
            tail = open(os.path.join(STATE, "director.log")).read()[-3000:]
            log("the director's log ends with:\n" + tail)
        except OSError:
            pass
        down()
        raise
    rs2_port = 8000 if method == "nat" else 80
    log(f"up ({mode} mode{', strict checksums' if strict else ''}, {method}): client {CLIENT} -> VIP {VIP} -> "
        f"rs1 172.16.0.2:80, rs2 172.16.0.3:{rs2_port}")


# ---------------------------------------------------------------- demo


def client(*cmd: str, check: bool = True, timeout: float = 120) -> str:
    r = subprocess.run(nsexec(NS_CLIENT, *cmd), text=True, capture_output=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r.stdout


def listing(*args: str) -> str:
    return ipvsadm(*args, check=False).stdout


def demo(requests: int = 5000, concurrency: int = 20) -> None:
    if not lab_exists():
        raise SystemExit("ipvs-lab: no lab; run 'ipvs-lab up' first")
    print(f"$ curl http://{VIP}/   (six times)")
    for _ in range(6):
        print("  " + client("curl", "-s", "-m", "5", f"http://{VIP}/").strip())
    first = conn_count(fresh=True)
    print(f"$ ab -n {requests} -c {concurrency} http://{VIP}/")
    ab = subprocess.Popen(nsexec(NS_CLIENT, "ab", "-q", "-n", str(requests), "-c", str(concurrency), "-s", "10",
                                 f"http://{VIP}/"), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    deadline = t0 + 120
    done = 0
    while ab.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
        done = conn_count() - first
        elapsed = time.monotonic() - t0
        print(f"\r  {elapsed:5.1f} s: {done} of {requests} connections scheduled by the director, "
              f"{done / elapsed:6.0f}/s   ", end="", flush=True)
    if ab.poll() is None:
        ab.kill()
    out = ab.communicate()[0]
    elapsed = time.monotonic() - t0
    done = conn_count(fresh=True) - first  # the mirror's rewrite after ab's last connection
    print(f"\r  {elapsed:5.1f} s: {done} of {requests} connections scheduled by the director, "
          f"{done / elapsed:6.0f}/s   ", flush=True)
    for line in out.splitlines():
        if re.match(r"(Complete requests|Failed requests|Requests per second|Time per request)", line):
            print("  " + line)
    # The counters ipvsadm shows are the estimator's snapshot, taken every
    # 2 s (as in kernel 6.1): wait for the one after the last request.
    print("  (waiting 2.5 s for the estimator's next snapshot: ipvsadm --stats shows that, as the kernel's does)",
          flush=True)
    time.sleep(2.5)  # ipvs.est: a run every 2.016 s, and a margin
    print("$ ipvsadm -Ln --stats")
    print(listing("-Ln", "--stats"), end="")
    print("$ ipvsadm -Lnc | head")
    print("".join(listing("-Lnc").splitlines(keepends=True)[:12]), end="", flush=True)


def conn_count(fresh: bool = False) -> int:
    """Connections the director scheduled so far, live: the per-CPU rows of
    its /proc/net/ip_vs_stats_percpu mirror, which ipvsd rewrites every
    second (the ``--stats`` listings show the estimator's 2-second snapshot,
    which lags; the connection table's counts miss a client port ab reuses
    while its old entry waits in TIME_WAIT).  ``fresh``: wait for a rewrite
    that began after this call."""
    path = os.path.join(STATE, "proc", "net", "ip_vs_stats_percpu")
    if fresh:
        seen = []
        deadline = time.monotonic() + 3.0
        while len(set(seen)) < 3 and time.monotonic() < deadline:
            try:
                seen.append(os.stat(path).st_mtime_ns)
            except OSError:
                pass
            time.sleep(0.05)
    try:
        with open(path) as f:
            rows = f.read().split("\n\n", 1)[0].splitlines()[2:]
    except OSError:
        return 0
    return sum(int(r.split()[1], 16) for r in rows if r.split() and r.split()[0] != "~")


def status() -> None:
    have = [line.split()[0] for line in run("ip", "netns", "list", check=False).stdout.splitlines() if line.strip()]
    print("namespaces:", " ".join(ns for ns in NAMESPACES if ns in have) or "none")
    if os.path.exists(os.path.join(STATE, "lab.json")):
        print("lab:", open(os.path.join(STATE, "lab.json")).read())
        print(listing("-Ln"), end="")


# ---------------------------------------------------------------- helpers run inside namespaces


def _serve(args: argparse.Namespace) -> int:
    import selectors
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    threads = []
    name = args.name
    for http in args.http:
        host, port = http.rsplit(":", 1)

        class H(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if self.path == "/":
                    body = f"server={name}\n".encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                path = os.path.join(STATE, "www", os.path.basename(self.path))
                if not os.path.isfile(path):
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(os.path.getsize(path)))
                self.end_headers()
                with open(path, "rb") as f:
                    self.wfile.flush()
                    self.connection.sendfile(f)

            def log_message(self, *a):
                pass

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            request_queue_size = 1024

        srv = Server((host, int(port)), H)
        srv.daemon_threads = True
        t = threading.Thread(target=srv.serve_forever, daemon=True)
        t.start()
        threads.append(srv)
    sel = selectors.DefaultSelector()
    for udp in args.udp:
        host, port = udp.rsplit(":", 1)
        us = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        us.bind((host, int(port)))
        us.setblocking(False)
        sel.register(us, selectors.EVENT_READ)

    def udp_loop():
        while not stop.is_set():
            for key, _ in sel.select(0.5):
                try:
                    data, peer = key.fileobj.recvfrom(65535)
                    key.fileobj.sendto(f"{args.name}: ".encode() + data, peer)
                except OSError:
                    pass

    if args.udp:
        threading.Thread(target=udp_loop, daemon=True).start()
    print("ready", flush=True)
    while not stop.wait(0.5):
        pass
    for srv in threads:
        srv.shutdown()
    return 0


def _ftp(addr: str, root: str) -> int:
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.handlers.ftp.dispatchers import ActiveDTP
    from pyftpdlib.servers import FTPServer

    class FromDataPort(ActiveDTP):
        """Active data connections from the control port minus one (20), as
        vsftpd's connect_from_port_20 does: the port ip_vs_ftp expects them
        from (pyftpdlib would pick any port)."""

        def bind(self, addr):
            self.set_reuse_addr()
            return super().bind((addr[0], self.cmd_channel.socket.getsockname()[1] - 1))

    auth = DummyAuthorizer()
    auth.add_anonymous(root)
    handler = FTPHandler
    handler.authorizer = auth
    handler.passive_ports = range(50000, 50100)
    handler.active_dtp = FromDataPort
    server = FTPServer((addr, 21), handler)
    signal.signal(signal.SIGTERM, lambda *a: server.close_all())
    print("ready", flush=True)
    try:
        server.serve_forever(handle_exit=False)
    except Exception:
        pass
    return 0


#: The lock's file descriptor, held open until the process ends.
_LOCK = None


def lock() -> None:
    """Hold the lab's lock until this process ends: two runs on one lab
    (one prefix) would tear down each other's namespaces.  Another prefix
    (IPVS_LAB_PREFIX) is another lab with a lock of its own."""
    global _LOCK
    path = f"/run/{PREFIX}-lab.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise SystemExit(f"ipvs-lab: the {PREFIX}-* lab is in use by another ipvs-lab run (pid {holder}, "
                         f"lock {path}); wait for it, or run another lab with IPVS_LAB_PREFIX=NAME") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _LOCK = fd


def _reexec_in_venv() -> None:
    sys.path.insert(0, TOOLS)
    import _venv  # tools/_venv.py

    _venv.ensure()


def main(argv: list[str] | None = None) -> int:
    """The ``ipvs-lab`` command (``tools/ipvs-lab``, the entry point)."""
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except RuntimeError as e:
        print(f"ipvs-lab: {e}", file=sys.stderr)
        return 1


def _main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ipvs-lab", description="The PyIPVS lab in network namespaces "
                                "(see docs/lab.md). Needs root; IPVS_LAB_PREFIX names the namespaces.")
    # _serve and _ftp are the lab's own helpers (run inside its namespaces): not in the usage.
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{up,demo,run,status,down}")
    u = sub.add_parser("up", help="build the lab and start everything",
                       description="Build the namespaces, start the real servers and ipvsd, apply the rules.")
    u.add_argument("--mode", choices=("spare", "shared"), default="spare")
    u.add_argument("--strict", action="store_true", help="software checksums (offloads off on the path)")
    u.add_argument("--no-rules", action="store_true", help="start the director without the seed's rules")
    u.add_argument("--ipv6", action="store_true", help="add the IPv6 plan and services")
    u.add_argument("--method", choices=list(METHODS), default="nat",
                   help="forwarding method: nat (the seed's example), dr, or a tunnel (ipip, gue, gre, "
                        "and their checksum variants; the real servers decapsulate in user space)")
    dm = sub.add_parser("demo", help="curl and ab through the VIP, then the listings",
                        description="curl six times, ab with a live progress line, then ipvsadm's listings.")
    dm.add_argument("--requests", type=int, default=5000)
    dm.add_argument("--concurrency", type=int, default=20)
    r = sub.add_parser("run", help="the main job: install what is missing, then up, demo and down",
                       description="tools/bootstrap, then up, demo and down (down also on failure).")
    r.add_argument("--mode", choices=("spare", "shared"), default="spare")
    r.add_argument("--requests", type=int, default=5000)
    sub.add_parser("status", help="the lab's namespaces, mode and ipvsadm -Ln", description="Show the lab's "
                   "namespaces, how it was brought up, and the director's ipvsadm -Ln.")
    sub.add_parser("down", help="remove everything (idempotent)", description="Stop every process the lab "
                   "started (by PID) and delete its namespaces; also cleans up after a killed lab.")
    s = sub.add_parser("_serve", description="internal: a real server's HTTP or UDP echo (run in its namespace)")
    s.add_argument("--name")
    s.add_argument("--http", action="append", default=[])
    s.add_argument("--udp", action="append", default=[])
    f = sub.add_parser("_ftp", description="internal: rs2's FTP server (run in its namespace)")
    f.add_argument("addr")
    f.add_argument("root")
    args = p.parse_args(argv)
    if args.cmd not in ("_serve", "_ftp") and os.geteuid() != 0:
        raise SystemExit("ipvs-lab: needs root (network namespaces)")
    if args.cmd in ("up", "demo", "run", "down"):
        lock()
    if args.cmd == "run":
        if not os.environ.get("PYIPVS_BOOTSTRAPPED"):
            subprocess.run([os.path.join(TOOLS, "bootstrap")], check=True)
            os.environ["PYIPVS_BOOTSTRAPPED"] = "1"
            _reexec_in_venv()  # the dependencies are in .venv now
        up(args.mode, False, True)
        try:
            demo(min(args.requests, 100000), 20)
        finally:
            down()
            log("down")
    elif args.cmd == "up":
        up(args.mode, args.strict, not args.no_rules, args.ipv6, args.method)
    elif args.cmd == "demo":
        demo(min(args.requests, 100000), min(args.concurrency, 200))
    elif args.cmd == "status":
        status()
    elif args.cmd == "down":
        down()
        log("down")
    elif args.cmd == "_serve":
        return _serve(args)
    elif args.cmd == "_ftp":
        return _ftp(args.addr, args.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
