"""The offline PyIPVS backend: a recorded scenario played through the core.

No VM, no namespaces, no root: this is what the ordinary test command runs,
and PyIPVS's one golden replayer: the differential report
(tests/kernel/test_differential.py) and the scheduler goldens
(tests/sched/test_goldens.py) read the same replay.  Its records are named
(:class:`Event`, and :class:`~ipvs_harness.diff.compare.Request` for an
``order.txt``).
The scenario script itself is run by bash with the event-recording stub
library (``stub/oracle.sh``), which turns every library call and every
``ipvsadm`` command into a record.  :class:`OfflineRun` plays the records
against an in-process PyIPVS (:class:`ipvs.core.Director` behind
:class:`ipvs.netlink.LocalTransport`, the same dispatch ``ipvsd`` runs):

* ``ipvsadm`` commands, ``ipvs_rules`` (``-R``), ``vs_sysctl`` and
  ``transcript`` run through PyIPVS's ipvsadm (:func:`ipvs.cli.ipvsadm.main`);
* ``dump_ipvs``/``dump_conn`` and ``!sh ipvsadm ... > "$OUT/FILE"``
  snapshots write PyIPVS's listings, /proc views and sysctls under the
  kernel's file names;
* the traffic between ``capture_start`` and ``capture_stop`` cannot be
  re-made without a network, so the kernel's own captures are the input:
  the client's frames to the VIPs and the real servers' replies are fed to
  the director in capture order (as ``tools/ipvs-replay`` does), and the
  scenario's steps that act on IPVS between requests (``!sh ipvsadm -e``,
  snapshots) are played just before the first frame of the next step that
  sends one.  The server PyIPVS picks for each request becomes its
  ``order.txt``; the frames it transmits are compared with the kernel's at
  L3/L4 (items ``frames to real servers`` / ``frames to clients``).

The library's helpers that make traffic are modelled the same way: the
stub's ``ftp.py`` records each FTP client session (anchored at its control
connection's first frame; ``modprobe ip_vs_ftp`` registers PyIPVS's FTP
helper), and its ``tcpcraft.py`` records the TCP state walk, whose
``dump`` and ``sh`` steps are played before the next ``send`` step's frame
and written as the kernel's ``tcp-states.jsonl`` records (a ``sleep``
moves the steps before it back by its length).  ``mark_dst`` becomes a
PyIPVS mark rule (what ``tools/ipvs-mark -A -d CIDR --set-mark MARK`` adds).

The clock: inside the captures it is the frames' pcap timestamps (the
guest's ``CLOCK_REALTIME``).  Outside them, a golden recorded with guest
stamps (:class:`GuestClock`: ``clock.txt`` for every dumped file, ``!sh``
step and TCP walk ``dump``, ``t`` in transcript records; same clock) sets
it before each stamped step; an ipvsadm listing is read at the end of its
run (the next stamp; see :meth:`OfflineRun.stamp`).  Kernel outputs
without stamps (recorded before they existed) fall back to a model of the
VM's speed: :data:`IPVSADM_S` per ipvsadm run and the constants after it.

The estimator: listings show the snapshot the kernel's estimator timer
took last, so its runs are part of the clock.  A golden with the trace of
that timer (``est-trace.txt``) has PyIPVS's estimator run when the
kernel's ran; one with only the ``ipvs_loaded`` stamp has them predicted
from the load by the timer wheel's arithmetic (504 jiffies apart; see
:mod:`.esttrace`); an older one falls back to :meth:`OfflineRun._estimator_phase`.

What this backend cannot reproduce, and says so (MISSING items):
``requests.txt``, the real servers' logs and ``ftp-session.txt`` (no
sockets), the client's own records of a TCP walk (send/expect), and traffic
of scenarios recorded without captures.  Frames the kernel's director
routed without IPVS (the client's ICMP about an un-NATed reply) are not
IPVS output and have no offline counterpart.

Neighbour failures are modelled (:class:`Neighbours`): a real server that
the kernel's server-side capture shows asked for by ARP and never heard
from holds what PyIPVS sends it until the resolution fails (one second
after the kernel's third recorded request), then each held packet is
answered with ICMP host unreachable through the core's LOCAL_OUT pass
(:meth:`ipvs.core.Director.local_out`), as the AF_PACKET driver does
(:mod:`ipvs.driver.afpacket`): the client hears of it from the VIP, and the
real server's out-packets and out-bytes count it, as the kernel's do.
"""

from __future__ import annotations

import bisect
import io
import ipaddress
import json
import os
import re
import shlex
import subprocess
import tempfile
from typing import NamedTuple

from ipvs import procfs
from ipvs.cli.ipvsadm import Resolver
from ipvs.cli.ipvsadm import main as ipvsadm_main
from ipvs.core import NF_ACCEPT, NF_STOLEN, Director
from ipvs.driver import pcap
from ipvs.driver.replay import jiffies
from ipvs.netlink import LocalTransport
from ipvs.proto.icmp import build_error
from ipvs_harness import sandbox
from ipvs_harness.capture import parse_frame
from ipvs_harness.diff import normalize
from ipvs_harness.diff.compare import DIFFERENT, EQUAL, Item
from ipvs_harness.diff.esttrace import guest_estimator
from ipvs_harness.guest.transcript import entries as transcript_entries

HERE = os.path.dirname(os.path.abspath(__file__))
STUB = os.path.join(HERE, "stub")
INNER = ipaddress.ip_network("172.16.0.0/24")
GATEWAY = ipaddress.ip_address("172.16.0.1").packed
#: The same on the IPv6 side of the lab (oracle.sh setup_v6).
INNER6 = ipaddress.ip_network("2001:db8:2::/64")
GATEWAY6 = ipaddress.ip_address("2001:db8:2::1").packed
#: The fallback for goldens without guest stamps (see :class:`GuestClock`):
#: the VM's clock outside the captures, modelled: an ipvsadm run costs about
#: IPVSADM_S under TCG, a Python start PY_S, and capture_stop a 0.5 s sleep
#: plus two tcpdump decodes (DECODE_S each) after the last captured frame.
#: Fitted on the unstamped recordings of a busy machine; a quieter machine
#: runs faster, which these constants cannot know (timers 4-8 s off).
IPVSADM_S = 0.15
PY_S = 0.4
DECODE_S = 0.3
#: capture_stop's ``sleep 0.5`` before it stops tcpdump (oracle.sh).
CAPTURE_STOP_SLEEP_S = 0.5
#: Where the model puts an estimator tick: this long after the last frame
#: (half of capture_stop's 1.1 s before the dump; see _estimator_phase).
EST_AFTER_LAST_S = 0.55
#: An ipvsadm listing reads at the end of its run (OfflineRun.stamp):
#: the next stamp, unless the gap is longer than a run (something else
#: happened in between).
READ_AT_EXIT_MAX_S = 1.0
#: ... but no later than this after it started: the next stamp may come
#: well after ipvsadm's exit (the shell's and the harness's own steps).
#: The goldens bound it: dr6_classic's "during" listing (a 184 ms gap)
#: misses an estimator run 121 ms after its start, other listings include
#: runs 30-40 ms after theirs; every golden agrees from 0.04 to 0.12 s.
READ_AFTER_START_S = 0.08
SYSCTL_DIR = "/proc/sys/net/ipv4/vs/"
#: The VM has two CPUs: ip_vs_stats_percpu has rows 0 and 1.
NCPU = 2
#: Listings dump_ipvs writes: file stem -> ipvsadm arguments (oracle.sh).
LISTINGS = {
    "ipvsadm-Ln": ["-Ln"],
    "ipvsadm-Ln-stats": ["-Ln", "--stats"],
    "ipvsadm-Ln-rate": ["-Ln", "--rate"],
    "ipvsadm-Ln-exact-stats": ["-Ln", "--exact", "--stats"],
    "ipvsadm-Ln-timeout": ["-Ln", "--timeout"],
    "ipvsadm-Ln-persistent-conn": ["-Ln", "--persistent-conn"],
    "ipvsadm-Lnc": ["-Lnc"],
    "ipvsadm-S-n": ["-S", "-n"],
}
#: What this backend never writes, with the reason (see the module doc).
CANNOT = {
    r"requests\.txt": "offline: no sockets, only the scheduling decision (order.txt) is reproduced",
    r"rs\d+-.*\.log": "offline: no real servers run",
    r"ftp-session\.txt": "offline: no FTP client runs",
    r"tcp-states\.txt": "the human form of tcp-states.jsonl",
}


class GuestResolver(Resolver):
    """Name lookups as the VM answers them: it has no network, so only its
    /etc/hosts resolves (Debian's base file, plus what the scenario itself
    added: see :mod:`ipvs_harness.sandbox`); services come from
    /etc/services as there (netbase).  Asking this host's DNS would wait on
    timeouts and could give answers the VM never saw."""

    def __init__(self, hosts: list[tuple[str, list[str]]] | None = None) -> None:
        super().__init__()
        self.by_name: dict[str, bytes] = {}
        self.by_addr: dict[bytes, str] = {}
        for addr, names in hosts if hosts is not None else [("127.0.0.1", ["localhost"])]:
            try:
                packed = ipaddress.IPv4Address(addr).packed
            except ValueError:
                continue  # IPv6 lines: the scenarios are IPv4
            self.by_addr.setdefault(packed, names[0])
            for n in names:
                self.by_name.setdefault(n, packed)

    def host_to_addr(self, name: str) -> bytes | None:
        return self.by_name.get(name)

    def addr_to_host(self, af: int, packed: bytes) -> str | None:
        return self.by_addr.get(bytes(packed))


#: A service address in an ipvsadm command line (-t/-u ADDR:PORT).
_SVC_ADDR = re.compile(r"(?:-t|-u|--tcp-service|--udp-service)\s+(\d+\.\d+\.\d+\.\d+):")


def _one_line(text: str) -> str:
    """A step's text as guest/clock.py stamps it (whitespace runs folded)."""
    return " ".join(text.split())


def _cmd_key(text: str) -> str:
    """A command of a ``!sh`` line as its ``cmd`` stamp names it: bash prints
    the command it runs re-spaced (``>file`` as ``> file``), so without any
    whitespace."""
    return "".join(text.split())


def _sh_commands(line: str) -> list[str]:
    """The commands of a ``!sh`` line, split at the ``;``, ``&&`` and ``||``
    that are not quoted or escaped (the text of each as written)."""
    parts, cur, quote, i = [], [], "", 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == "\\" and quote == '"' and i + 1 < len(line):
                cur.append(line[i:i + 2])
                i += 2
                continue
            quote = "" if c == quote else quote
        elif c == "\\" and i + 1 < len(line):
            cur.append(line[i:i + 2])
            i += 2
            continue
        elif c in "'\"":
            quote = c
        elif c == ";" or line[i:i + 2] in ("&&", "||"):
            parts.append("".join(cur))
            cur = []
            i += 1 if c == ";" else 2
            continue
        cur.append(c)
        i += 1
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


class GuestClock:
    """The guest's own clock stamps of a golden, by step.

    ``clock.txt`` (``SECONDS<TAB>KIND<TAB>WHAT`` lines, written by oracle.sh
    and lib/clock.py just before each step) and the ``t`` of transcript
    records (lib/transcript.py) are the guest's ``CLOCK_REALTIME``, the
    clock of the pcap timestamps, so they convert to jiffies like frames
    (:func:`ipvs.driver.replay.jiffies`).  A step that ran more than once
    (the same ``!sh`` text twice) has its stamps in execution order;
    :meth:`take` hands them out in that order.
    """

    def __init__(self, golden: str) -> None:
        self.stamps: dict[tuple, list[float]] = {}
        path = os.path.join(golden, "clock.txt")
        if os.path.exists(path):
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                for line in f:
                    parts = line.rstrip("\n").split("\t", 2)
                    if len(parts) == 3:
                        what = _cmd_key(parts[2]) if parts[1] == "cmd" else _one_line(parts[2])
                        self.stamps.setdefault((parts[1], what), []).append(float(parts[0]))
        for name in sorted(os.listdir(golden)) if os.path.isdir(golden) else ():
            if not name.endswith(".jsonl"):
                continue
            with open(os.path.join(golden, name), encoding="utf-8", errors="surrogateescape") as f:
                for line in f:
                    rec = json.loads(line) if line.strip() else {}
                    # Transcript records only (a TCP walk's "t" is relative).
                    if "argv" in rec and isinstance(rec.get("t"), float):
                        self.stamps[("transcript", name[:-len(".jsonl")], rec["n"])] = [rec["t"]]

        #: Every stamp, in time order (see :meth:`next_after`).
        self.times = sorted(t for ts in self.stamps.values() for t in ts)

    def __bool__(self) -> bool:
        return bool(self.stamps)

    def next_after(self, t: float) -> float | None:
        """The first stamp after ``t``: when the step stamped ``t`` had
        finished (the scenario stamps each step just before it starts)."""
        i = bisect.bisect_right(self.times, t)
        return self.times[i] if i < len(self.times) else None

    def first(self) -> float | None:
        """The earliest stamp (None without stamps)."""
        return min((t for ts in self.stamps.values() for t in ts), default=None)

    def take_kind(self, kind: str) -> float | None:
        """The earliest unused stamp of any step of ``kind``."""
        keys = [k for k, ts in self.stamps.items() if k[0] == kind and ts]
        if not keys:
            return None
        return self.stamps[min(keys, key=lambda k: self.stamps[k][0])].pop(0)

    def peek(self, key: tuple, k: int = 0) -> float | None:
        """The ``k``-th unused stamp of step ``key``, left in place."""
        ts = self.stamps.get(key) or []
        return ts[k] if k < len(ts) else None

    def take(self, *key) -> float | None:
        """The next unused stamp of step ``key`` (None: not stamped)."""
        ts = self.stamps.get(key)
        return ts.pop(0) if ts else None


class Event(NamedTuple):
    """One record of the stub library (``stub/oracle.sh``): a library call
    or a command the scenario made."""

    #: The call (``ipvsadm``, ``ipvs_rules``, ``client_steps``, ``cmd``...).
    kind: str
    #: Its arguments.
    args: list[str]
    #: The lines it read from its standard input (a here-document).
    stdin: list[str]


def extract_events(scenario: str, timeout: float = 60, prefill: dict[str, str] | None = None,
                   hosts: list | None = None, golden: str = "") -> list[Event]:
    """The records of ``scenario`` run with the stub.

    ``prefill`` maps an output file name to the text PyIPVS wrote there on
    a previous pass: the stub's ``ipvsadm ... > "$OUT/NAME"`` then writes
    it, so a script that reads its own outputs back (``-R`` of a ``-S``
    file) sees PyIPVS's.
    """
    with tempfile.TemporaryDirectory(prefix="pyipvs-diff-stub-") as tmp:
        ev = os.path.join(tmp, "events")
        open(ev, "w").close()
        pre = os.path.join(tmp, "prefill")
        os.makedirs(pre)
        for name, text in (prefill or {}).items():
            with open(os.path.join(pre, name), "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write(text)
        out = os.path.join(tmp, "out")
        os.makedirs(out)
        env = dict(os.environ, LIB=STUB, OUT=out, DIFF_EVENTS=ev, DIFF_PREFILL=pre, LC_ALL="C",
                   DIFF_GOLDEN=os.path.abspath(golden) if golden else "")
        # In a mount namespace of its own: the script may edit /etc (hosts).
        proc = subprocess.run(sandbox.wrap(["bash", "-o", "pipefail", os.path.abspath(scenario)], tmp), cwd=out,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout,
                              check=False)
        sandbox.check(proc)
        if hosts is not None:
            hosts[:] = sandbox.hosts(tmp)
        with open(ev, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    if not lines and proc.returncode != 0:
        # Every scenario sets rules before anything else, so a run that
        # recorded nothing failed before its first command: say how, rather
        # than hand the caller an empty scenario.
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"{scenario} recorded nothing under the stub (exit status {proc.returncode}): "
                           + " | ".join(tail))
    out: list[Event] = []
    for line in lines:
        kind, *args = line.split("\t")
        if kind == "+" and out:
            out[-1].stdin.append("\t".join(args))
        else:
            out.append(Event(kind, args, []))
    return out


#: iptables options of a mangle MARK rule, as ipvs-mark takes them.
_MARK_OPTS = {"-p": "-p", "--protocol": "-p", "-s": "-s", "--source": "-s", "-d": "-d",
              "--destination": "-d", "--dport": "--dport", "--destination-port": "--dport",
              "--set-mark": "--set-mark", "--set-xmark": "--set-mark"}


def _iptables_mark(args: list[str]) -> list[str] | None:
    """``iptables -t mangle -A|-I PREROUTING ... -j MARK --set-mark M`` as
    the ipvs-mark arguments of the same rule (None: not such a rule, or one
    with a match PyIPVS's mark rules do not have)."""
    if not args or args[0] != "iptables" or "MARK" not in args or "mangle" not in args:
        return None
    out, i, a = ["-A"], 1, args
    while i < len(a):
        if a[i] in ("-t", "-j", "-m") and i + 1 < len(a):
            i += 2
        elif a[i] in ("-A", "-I") and i + 1 < len(a) and a[i + 1] == "PREROUTING":
            i += 2
            if i < len(a) and a[i].isdigit():  # -I PREROUTING 1
                i += 1
        elif a[i] in _MARK_OPTS and i + 1 < len(a):
            out += [_MARK_OPTS[a[i]], a[i + 1].split("/")[0] if a[i] == "--set-xmark" else a[i + 1]]
            i += 2
        else:
            return None
    return out if "--set-mark" in out else None


def _inner(a: bytes | bytearray) -> bool:
    addr = ipaddress.ip_address(bytes(a))
    return addr in (INNER if addr.version == 4 else INNER6)


def _daddr(b: bytes | bytearray, l3: int = 0) -> bytes:
    """The destination address of the IP packet at ``l3``, either family."""
    return bytes(b[l3 + 16:l3 + 20] if b[l3] >> 4 == 4 else b[l3 + 24:l3 + 40])


def _ip_len(b: bytes | bytearray, l3: int = 0) -> int:
    """The length of the IP packet at ``l3``: the IPv4 total length, or the
    IPv6 header and its payload length."""
    if b[l3] >> 4 == 4:
        return (b[l3 + 2] << 8) | b[l3 + 3]
    return 40 + ((b[l3 + 4] << 8) | b[l3 + 5])


def _arp(r: pcap.Record) -> tuple[int, bytes, bytes] | None:
    """(op, sender address, target address) of an Ethernet ARP frame, or None."""
    d = r.data
    if r.linktype != pcap.LINKTYPE_ETHERNET or len(d) < 42 or d[12:14] != b"\x08\x06":
        return None
    return (d[20] << 8) | d[21], bytes(d[28:32]), bytes(d[38:42])


class Traffic:
    """The kernel's captures of one golden, split into director input and output."""

    def __init__(self, golden: str, vips: set[bytes]):
        cli = [(r, i) for r in pcap.read_file(os.path.join(golden, "client-side.pcap")) if (i := parse_frame(r))]
        # A scenario may capture the client side only.
        srv_path = os.path.join(golden, "server-side.pcap")
        srv_all = pcap.read_file(srv_path) if os.path.exists(srv_path) else []
        #: Every client-side TCP/UDP frame (for what the offline run did not replay).
        self.client_frames = cli
        srv = [(r, i) for r in srv_all if (i := parse_frame(r))]
        #: The director's ARP requests for each inner address (times), and
        #: the inner addresses that ever answered or sent anything.
        self.arp_requests: dict[bytes, list[float]] = {}
        self.heard: set[bytes] = {bytes(i.saddr) for _, i in srv}
        for r in srv_all:
            a = _arp(r)
            if a is None:
                continue
            op, spa, tpa = a
            if op == 1 and spa == GATEWAY:
                self.arp_requests.setdefault(tpa, []).append(r.ts)
            else:
                self.heard.add(spa)
        self.vips = vips
        # Client side: frames to a VIP (input) and from a VIP (kernel output).
        to_vip = [(r, i) for r, i in cli if i.daddr in vips and not _inner(i.saddr)]
        # (TCP from a VIP with TTL 64 was made by the director's own stack -
        # a RST for a packet IPVS let through - not forwarded by IPVS.)
        self.to_cli = [(r, i) for r, i in cli if i.saddr in vips and not (i.proto == 6 and r.data[i.l3 + 8] == 64)]
        # Server side: replies of real servers (input), frames to them (output).
        # A VS/DR or VS/TUN server answers from the VIP itself, and its
        # answers still cross the director (its default gateway), where
        # ip_vs_out counts them; the director's frames to such a server are
        # addressed to the VIP (DR) or tunnelled (TUN: parse_frame gives
        # the inner packet).
        from_rs = [(r, i) for r, i in srv if ((_inner(i.saddr) and i.saddr not in (GATEWAY, GATEWAY6))
                                              or i.saddr in vips)
                   and not _inner(i.daddr)]
        # Frames the client addressed to a real server itself (an ICMP error
        # about an un-NATed reply) cross the director by ordinary routing,
        # not IPVS: they are not IPVS output.
        routed = {(i.saddr, i.daddr, bytes(r.data[i.l3 + 4:i.l3 + 6])) for r, i in cli if _inner(i.daddr)}
        self.to_rs = [(r, i) for r, i in srv if (_inner(i.daddr) or i.daddr in vips) and not _inner(i.saddr)
                      and (i.saddr, i.daddr, bytes(r.data[i.l3 + 4:i.l3 + 6])) not in routed]
        # Answers that bypassed IPVS's rewriting (VS/DR, VS/TUN) reach the
        # client by plain forwarding: they are not IPVS output.
        bypass = {self.flow(i) for _, i in from_rs if i.saddr in vips}
        self.to_cli = [(r, i) for r, i in self.to_cli if self.flow(i) not in bypass]
        rs_flows = {self.flow(i) for _, i in from_rs} | {self.flow(i) for _, i in self.to_rs}
        self.rs_flows = rs_flows
        cli_flows = {self.flow(i) for _, i in to_vip}
        #: Flows seen on both sides (frames compared for these only).
        self.both = rs_flows & cli_flows
        self.input = sorted(to_vip + [(r, i) for r, i in from_rs if self.flow(i) in cli_flows], key=lambda x: x[0].ts)
        #: Last frame time of each capture among the flows IPVS carried to
        #: both sides: a capture that stopped early leaves the offline input
        #: without the other side's late frames.  (Frames of one side only -
        #: the director's own port unreachable for a VIP without a service -
        #: legitimately end one capture later.)
        cli_both = [r.ts for r, i in cli if self.flow(i) in self.both]
        srv_both = [r.ts for r, i in srv if self.flow(i) in self.both]
        self.ends = (cli_both[-1] if cli_both else 0.0, srv_both[-1] if srv_both else 0.0)

    def flow(self, i) -> tuple[int, bytes, int]:
        """(proto, client addr, client port) of a frame on either side."""
        if i.quoted is not None:
            proto, s, d, sp, dp = i.quoted  # an ICMP error: the quoted packet's flow
        else:
            _l3, proto, s, d, sp, dp, _f, _q, _outer = i
        if _inner(s) or s in self.vips:
            return proto, d, dp
        return proto, s, sp


#: The kernel's neighbour parameters (``net.ipv4.neigh.*``): requests a
#: second apart (retrans_time_ms 1000), three of them (mcast_solicit).
RETRANS_S = 1.0
MCAST_PROBES = 3
ICMP_DEST_UNREACH, ICMP_HOST_UNREACH = 3, 1


class Neighbours:
    """The kernel director's neighbour layer towards the real servers, as far
    as the recording shows it.

    An inner address is absent when the server-side capture holds the
    director's ARP requests for it and nothing from it.  A packet PyIPVS
    sends there is held; the resolution it starts (or joins) fails
    RETRANS_S after the kernel's third request of that resolution (the
    kernel's timers run a little late under TCG, so its recorded requests,
    not a fixed 3 s, place the failure; without them, 3 s after the first
    packet), and :meth:`due` hands back the held packets, oldest first.
    A packet after a failure starts a new resolution, as in the kernel.
    """

    def __init__(self, traffic: Traffic, hz: int) -> None:
        self.hz = hz
        self.requests = {a: [jiffies(t, hz) for t in ts] for a, ts in traffic.arp_requests.items()
                         if a not in traffic.heard}
        #: address -> [jiffies of the failure, held packets]
        self.pending: dict[bytes, list] = {}

    def hold(self, pkt: bytes, now: int, daddr: bytes | None = None) -> bool:
        """Hold ``pkt`` (an IP packet) if its destination (or the next hop
        ``daddr`` it goes to, for direct routing) is absent."""
        if daddr is None:
            daddr = _daddr(pkt)
        if daddr not in self.requests:
            return False
        e = self.pending.get(daddr)
        if e is None:
            # This resolution's requests: the kernel's first one at (or a
            # capture timestamp's skew before) this packet, and the next two.
            reqs = [t for t in self.requests[daddr] if t >= now - self.hz // 20][:MCAST_PROBES]
            if len(reqs) == MCAST_PROBES:
                fail = reqs[-1] + round(RETRANS_S * self.hz)
            else:
                fail = now + round(MCAST_PROBES * RETRANS_S * self.hz)
            e = self.pending[daddr] = [fail, []]
        e[1].append(pkt)
        return True

    def due(self, now: int) -> list[tuple[int, list[bytes]]]:
        """(failure time, held packets) of the resolutions failed by ``now``, in time order."""
        out = sorted((e[0], a) for a, e in self.pending.items() if e[0] <= now)
        return [(t, self.pending.pop(a)[1]) for t, a in out]


def run_offline(scenario_sh: str, golden: str, out: str, name: str, passes: int = 4) -> OfflineRun:
    """Play ``scenario_sh`` offline into ``out``, again while its script
    reads back outputs that changed (see :func:`extract_events`)."""
    prefill: dict[str, str] = {}
    for _ in range(passes):
        run = OfflineRun(scenario_sh, golden, out, name, prefill)
        run.run()
        if not run.redirected or run.redirected == prefill:
            break
        prefill = run.redirected
    return run


class OfflineRun:
    """Play a scenario's events against PyIPVS; write its outputs into ``out``."""

    def __init__(self, scenario_sh: str, golden: str, out: str, name: str,
                 prefill: dict[str, str] | None = None):
        self.scenario_sh = scenario_sh
        self.prefill = prefill
        #: What ``ipvsadm ... > "$OUT/NAME"`` wrote: NAME -> text.
        self.redirected: dict[str, str] = {}
        self.golden = golden
        self.out = out
        self.name = name
        self.d = Director()
        # The director's address towards the real servers (the guest's
        # 172.16.0.1, 2001:db8:2::1 over IPv6): what a tunnel's outer header comes from.
        self.d.own_address = lambda dst: (GATEWAY6 if len(dst) == 16 else GATEWAY) if _inner(dst) else None
        self.ipvs = self.d.ipvs
        self.now = 0
        #: The guest director's network devices (a sync daemon needs one):
        #: the VM has no NIC, only lo, until setup_nat adds its own.
        self.interfaces: set[str] = {"lo"}
        self.transport = LocalTransport(self.ipvs, clock=lambda: self.now, interfaces=self.interfaces)
        self.items: list[Item] = []
        self.notes: list[str] = []
        self.vips: set[bytes] = set()
        #: Every address a service had so far (frames to it are IPVS input).
        self.seen_vips: set[bytes] = set()
        self.resolver = GuestResolver()
        self.steps: list[tuple[str, str]] = []  # (kind, line) in the capture window
        self.in_capture = False
        self.requests: list[tuple[str, int, str, int, int]] = []  # label, n, src, sport, proto
        self.n = 0
        self.decisions: dict[tuple[int, bytes, int], str] = {}
        self.traffic: Traffic | None = None
        self.nservers = 0
        self.replaying = False
        self.answered: set[tuple[int, bytes, int]] = set()
        self.tc_records: list[dict] = []
        self.clock = GuestClock(golden)
        #: Where the estimator's runs come from: "trace", "load stamp" (see
        #: esttrace.py), or "" (the assumption of :meth:`_estimator_phase`).
        self.est_source: str
        est, self.est_source = guest_estimator(self.ipvs.est, golden, self.clock.take("ipvs_loaded", "ip_vs"))
        if est is not None:
            self.ipvs.est = est
        #: While steps run between captured frames: the next frame's time,
        #: which a stamp may not pass (the step ran before that frame).
        self.horizon: int | None = None
        os.makedirs(out, exist_ok=True)
        starts = [self.clock.first()]
        if os.path.exists(os.path.join(golden, "client-side.pcap")):
            starts += [r.ts for r in pcap.read_file(os.path.join(golden, "client-side.pcap"))][:1]
        starts = [t for t in starts if t is not None]
        if starts:
            # Configuration happened a little before the first stamp or frame.
            self.now = jiffies(min(starts), self.ipvs.hz) - 2 * self.ipvs.hz

    # ------------------------------------------------------------ ipvsadm

    def tick(self, seconds: float) -> None:
        """Advance the modelled VM clock (outside the captured traffic); a
        golden with guest stamps has its clock set by :meth:`stamp` instead."""
        if not self.clock:
            self.now += round(seconds * self.ipvs.hz)

    def stamp(self, *key, at_exit: bool = False) -> None:
        """Set the clock to the guest's stamp of step ``key``, if it has one.

        ``at_exit``: to when the step had finished instead (the next stamp,
        if within :data:`READ_AT_EXIT_MAX_S`, and at most
        :data:`READ_AFTER_START_S` after the start): an ipvsadm listing reads the
        kernel's tables at the end of its run, after exec, the libraries,
        option parsing and the generic netlink family lookup, with only
        the printing after the read; the estimator's runs the kernel's
        listings include show it (a run 30-40 ms into a 60 ms ipvsadm is
        in them).  Never backwards (frames and earlier stamps already ran
        timers up to ``self.now``) and never past :attr:`horizon`."""
        t = self.clock.take(*key)
        if t is None:
            return
        end = self.clock.next_after(t) if at_exit else None
        if end is not None and end - t <= READ_AT_EXIT_MAX_S:
            t = min(end, t + READ_AFTER_START_S)
        now = jiffies(t, self.ipvs.hz)
        if self.horizon is not None:
            now = min(now, self.horizon)
        self.now = max(self.now, now)
        self.d.run_timers(self.now)

    def ipvsadm(self, argv: list[str], stdin: str = "") -> tuple[int, str, str]:
        self.d.run_timers(self.now)
        out, err = io.StringIO(), io.StringIO()
        rc = ipvsadm_main(argv, transport=self.transport, stdout=out, stderr=err, stdin=io.StringIO(stdin),
                          resolver=self.resolver)
        self.seen_vips |= {svc.addr for svc in self.ipvs.svc_order if not svc.fwmark}
        if not self.replaying:
            self.tick(IPVSADM_S)
        return rc, out.getvalue(), err.getvalue()

    def proc(self, name: str) -> str:
        """/proc/net/NAME now (timers due by now have run, as in the kernel)."""
        self.d.run_timers(self.now)
        return procfs.render(self.ipvs, name, self.now, ncpu=NCPU)

    def write(self, name: str, text: str) -> None:
        with open(os.path.join(self.out, name), "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)

    def dump_conn(self, prefix: str) -> None:
        self.stamp("file", f"{prefix}ipvsadm-Lnc.txt", at_exit=True)
        self.write(f"{prefix}ipvsadm-Lnc.txt", self.ipvsadm(["-Lnc"])[1])
        self.stamp("file", f"{prefix}proc-net-ip_vs_conn.txt")
        self.write(f"{prefix}proc-net-ip_vs_conn.txt", self.proc("ip_vs_conn"))

    def dump_ipvs(self, prefix: str) -> None:
        for stem, argv in LISTINGS.items():
            self.stamp("file", f"{prefix}{stem}.txt", at_exit=True)
            self.write(f"{prefix}{stem}.txt", self.ipvsadm(argv)[1])
        for name in ("ip_vs", "ip_vs_conn", "ip_vs_conn_sync", "ip_vs_stats", "ip_vs_stats_percpu", "ip_vs_app"):
            self.stamp("file", f"{prefix}proc-net-{name}.txt")
            self.write(f"{prefix}proc-net-{name}.txt", self.proc(name))
        self.stamp("file", f"{prefix}sysctl-net.ipv4.vs.txt")
        files = procfs.render_sysctl(self.ipvs)
        self.write(f"{prefix}sysctl-net.ipv4.vs.txt", "".join(
            f"/proc/sys/net/ipv4/vs/{k}:{v.splitlines()[0] if v else ''}\n" for k, v in sorted(files.items())))

    def sh(self, cmd: str) -> tuple[str, str, int]:
        """A ``!sh`` step: ipvsadm (with ``> "$OUT/FILE"``), ``cat /proc/net/ip_vs*``,
        and reads and writes of ``/proc/sys/net/ipv4/vs/*``; (stdout, stderr, rc)."""
        stdout, stderr, rc = "", "", 0
        self.stamp("sh", _one_line(cmd))
        for part in _sh_commands(cmd):
            lex = shlex.shlex(part.replace("$OUT/", ""), posix=True, punctuation_chars=True)
            lex.whitespace_split = True
            try:
                words = list(lex)
            except ValueError as e:
                self.notes.append(f"!sh not modelled: {part} ({e})")
                continue
            target = None
            if ">" in words:
                i = words.index(">")
                target, words = (words[i + 1] if i + 1 < len(words) else None), words[:i]
            if not words:
                continue
            # Each command's own stamp, where the golden has them (guest/clock.py).
            self.stamp("cmd", _cmd_key(part), at_exit=words[0] == "ipvsadm")
            text = ""
            if words[0] == "ipvsadm":
                rc, text, err = self.ipvsadm(words[1:])
                stderr += err
            elif words[0] == "cat" and len(words) == 2 and words[1].startswith("/proc/net/ip_vs"):
                text = self.proc(words[1].rsplit("/", 1)[1])
            elif words[0] == "cat" and len(words) == 2 and words[1].startswith(SYSCTL_DIR):
                text = procfs.render_sysctl(self.ipvs).get(words[1][len(SYSCTL_DIR):], "")
            elif words[0] == "echo" and len(words) == 2 and target and target.startswith(SYSCTL_DIR):
                self.transport.call({"version": 1, "cmd": "SET_SYSCTL", "name": target[len(SYSCTL_DIR):],
                                     "value": int(words[1])})
                continue
            else:
                self.notes.append(f"!sh not modelled: {part.strip()}")
                continue
            if target:
                self.write(os.path.basename(target), text)
            else:
                stdout += text
        return stdout, stderr, rc

    def library_call(self, kind: str, args: list[str]) -> None:
        """A library call that changes IPVS's surroundings: a setting, a
        firewall mark (``mark_dst`` or a raw ``iptables -t mangle ... -j
        MARK --set-mark``), a module."""
        if kind == "vs_sysctl":
            self.stamp("vs_sysctl", f"{args[0]} {args[1]}")
            self.transport.call({"version": 1, "cmd": "SET_SYSCTL", "name": args[0], "value": int(args[1])})
        elif kind == "mark_dst":
            # iptables' MARK on packets to CIDR: PyIPVS's own mark rules (tools/ipvs-mark).
            self.mark(["-A", "-d", args[0], "--set-mark", args[1]])
        elif kind == "iptables_mark":
            self.mark(args)
        elif kind == "modprobe":
            self.modprobe(args)

    def mark(self, argv: list[str]) -> None:
        from ipvs.cli.ipvs_mark import main as ipvs_mark_main

        err = io.StringIO()
        if ipvs_mark_main(argv, transport=self.transport, stdout=io.StringIO(), stderr=err) != 0:
            self.notes.append(f"ipvs-mark {' '.join(argv)}: {err.getvalue().strip()}")

    def modprobe(self, args: list[str]) -> None:
        """``modprobe ip_vs_ftp``: the FTP helper on port 21, as ``ipvsd --ftp``."""
        if args and args[0] == "ip_vs_ftp":
            from ipvs.app import ftp

            # ports=21,2100: a comma-separated list, as the module parameter takes it.
            ports = [int(p) for a in args[1:] if a.startswith("ports=")
                     for p in a.split("=", 1)[1].split(",") if p.strip().isdigit()] or [21]
            ftp.register(self.ipvs, ports=tuple(ports))
        elif args and not args[0].startswith("ip_vs"):
            self.notes.append(f"modprobe {' '.join(args)}: not modelled")

    def transcript(self, base: str, lines: list[str]) -> None:
        """Like lib/transcript.py, with PyIPVS's ipvsadm in-process."""
        n = 0
        recs = []
        self.tick(PY_S)  # python3 transcript.py
        for section, cmd, args, stdin in transcript_entries(lines):
            if cmd is None:
                continue
            n += 1
            self.stamp("transcript", os.path.basename(base), n)
            if args and args[0] == "ipvsadm":
                rc, so, se = self.ipvsadm(args[1:], stdin or "")
            else:
                rc, so, se = 127, "", f"offline: {args[0] if args else ''} not modelled\n"
            recs.append({"n": n, "section": section, "cmd": cmd, "argv": args, "stdin": stdin,
                         "stdout": so, "stderr": se, "rc": rc})
        self.write(f"{base}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))

    # ------------------------------------------------------------ traffic

    def request(self, label: str, src: str, sport: int, proto: int) -> None:
        self.n += 1
        self.requests.append((label, self.n, src, sport, proto))

    def play_traffic(self) -> None:
        """Feed the captured input, playing the IPVS-side steps in between."""
        if not os.path.exists(os.path.join(self.golden, "client-side.pcap")):
            self.notes.append("no captures recorded: traffic not replayed")
            self.steps = []
            return
        # The VIPs: add_vip's, and every address a service had or gets during
        # the capture (a "!sh ipvsadm -A" among the steps), declared or not.
        vips = {svc.addr for svc in self.ipvs.svc_order if not svc.fwmark} | self.vips | self.seen_vips
        for kind, line in self.steps:
            if kind == "step" and line.lstrip().startswith("!sh"):
                vips |= {ipaddress.ip_address(a).packed for a in _SVC_ADDR.findall(line)}
        t = self.traffic = Traffic(self.golden, vips)
        gap = t.ends[0] - t.ends[1]
        if abs(gap) > 0.2:
            side = "server" if gap > 0 else "client"
            self.notes.append(f"capture gap: the kernel's {side}-side capture ends {abs(gap):.2f} s before the other one")
        answered = {t.flow(i) for _, i in t.to_cli if i.proto == 6} & {t.flow(i) for _, i in t.input
                                                                     if not _inner(i.saddr)}
        lost = sorted(f[2] for f in answered - t.rs_flows if f[0] == 6)
        if lost:
            self.notes.append(f"capture gap: the kernel answered client ports {lost[:8]} through a real server "
                              "whose side of the flow the server-side capture lacks")
        first: dict[tuple[int, bytes, int], int] = {}
        for idx, (_r, i) in enumerate(t.input):
            first.setdefault(t.flow(i), idx)
        # Anchor every step that sends a frame; the others run before the next anchor.
        held: dict[str, list[tuple[int, bytes, int]]] = {}
        occurrences: dict[tuple, int] = {}  # stamp key -> how many steps of it so far
        plan: list[tuple[int, list]] = []  # (input index, actions to run before it)
        pending: list = []
        last = -1  # the input index of the last anchored step

        def anchor(idx: int | None) -> None:
            nonlocal pending, last
            if idx is None:
                return
            if pending:
                plan.append((idx, pending))
                pending = []
            last = max(last, idx)

        def sleep(secs: float) -> None:
            # Actions before a sleep ran that much before the next frame.
            for p in pending:
                p[1] += secs

        def next_from_client(flow, mask: int = 0) -> int | None:
            return next((k for k in range(last + 1, len(t.input)) if t.flow(t.input[k][1]) == flow
                         and not _inner(t.input[k][1].saddr) and (not mask or t.input[k][1].flags & mask)), None)

        for kind, line in self.steps:
            if kind == "action":
                pending.append([line, 0.0])
                continue
            if kind == "ftp":
                src, sport = line
                anchor(first.get((6, ipaddress.ip_address(src).packed, int(sport))))
                continue
            if kind == "tcpcraft":
                self._plan_tcpcraft(line, lambda action: pending.append([action, 0.0]), anchor, next_from_client,
                                    lambda secs: sleep(secs))
                continue
            if kind == "http_get":
                src, sport = line.split()[:2]
                f = (6, ipaddress.ip_address(src).packed, int(sport))
                self.request("http_get", src, int(sport), 6)
                anchor(first.get(f))
                continue
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not line.startswith("!"):
                label, src, sport, _dst, _dport = line.split()
                self.request(label, src, int(sport), 6)
                anchor(first.get((6, ipaddress.ip_address(src).packed, int(sport))))
                continue
            verb, _, rest = line[1:].partition(" ")
            a = rest.split()
            if verb in ("hold", "udp"):
                proto = 6 if verb == "hold" else 17
                f = (proto, ipaddress.ip_address(a[1]).packed, int(a[2]))
                self.request(a[0], a[1], int(a[2]), proto)
                if verb == "hold":
                    held.setdefault(a[0], []).append(f)
                anchor(first.get(f))
            elif verb == "sh":
                key = ("sh", _one_line(rest))
                pending.append([lambda cmd=rest: self.sh(cmd), 0.0, key, occurrences.get(key, 0)])
                occurrences[key] = occurrences.get(key, 0) + 1
            elif verb == "sleep":
                sleep(float(a[0]))
            elif verb in ("ping", "abort"):
                # Data on held connections: the first client frame of them after the last anchor.
                flows = held.get(a[0], [])
                anchor(next((k for k in range(last + 1, len(t.input)) if t.flow(t.input[k][1]) in flows
                             and not _inner(t.input[k][1].saddr)), None))
                if verb == "abort":
                    held.pop(a[0], None)
            elif verb == "tcp":
                # A crafted segment: the flow's next client frame.
                anchor(next_from_client((6, ipaddress.ip_address(a[1]).packed, int(a[2]))))
            elif verb in ("release-all", "rst-all", "release-label", "rst-label", "release"):
                if verb == "release":
                    flows = [(6, ipaddress.ip_address(a[0]).packed, int(a[1]))]
                else:
                    flows = [f for lab, fs in held.items() if verb.endswith("all") or lab == a[0] for f in fs]
                mask = 0x04 if verb.startswith("rst") else 0x05
                idx = next((k for k in range(last + 1, len(t.input)) if t.flow(t.input[k][1]) in flows
                            and t.input[k][1].flags & mask and not _inner(t.input[k][1].saddr)), None)
                if idx is None and flows:
                    self.notes.append(f"capture gap: the kernel's client capture ends before the frames of step {line!r} "
                                      "(no FIN/RST of the held connections)")
                anchor(idx)
        # Steps after the last frame they can be anchored to: where the
        # guest's stamps put them among the remaining frames (a snapshot
        # before the client's final FINs), else after every frame.
        times = [r.ts for r, _i in t.input]
        group: list = []
        for p in pending:
            group.append(p)
            at = self.clock.peek(p[2], p[3]) if len(p) > 2 else None
            if at is not None:
                idx = max(bisect.bisect_right(times, at), last + 1)
                if idx < len(t.input):
                    plan.append((idx, group))
                    group = []
                    last = idx - 1
        plan.append((len(t.input), group))
        self.steps = []
        jobs: dict[int, list] = {}
        for idx, actions in plan:
            jobs.setdefault(idx, []).extend(actions)
        sent: list[tuple[bytes, tuple]] = []
        if t.input and not self.est_source:
            self._estimator_phase(jiffies(t.input[0][0].ts, self.ipvs.hz), jiffies(t.input[-1][0].ts, self.ipvs.hz))
        neigh = Neighbours(t, self.ipvs.hz)
        for idx, (rec, info) in enumerate(t.input):
            now = jiffies(rec.ts, self.ipvs.hz)
            self._unreachable(neigh, now, sent, info)
            if idx in jobs:
                self.horizon = now
                for action, lead, *_key in jobs.pop(idx):
                    if not self.clock:
                        self.now = max(self.now, now - round(lead * self.ipvs.hz))
                    self.d.run_timers(self.now)
                    action()
                self.horizon = None
            self.now = now
            self.d.run_timers(now)
            buf = bytearray(rec.data)
            l3 = info.l3
            flow = t.flow(info)
            if not _inner(info.saddr) and flow not in self.decisions:
                self.decisions[flow] = "NONE"
            verdict = self.d.process(buf, l3, now)
            if verdict == NF_STOLEN:
                tot = _ip_len(buf, l3)
                pkt = bytes(buf[l3:l3 + tot])
                # A DR or TUN transmit names the real server the packet goes
                # to (a DR packet still says VIP): Director.xmit_to.
                cp = self.d.xmit_to
                self.d.xmit_to = None
                to = cp.daddr if cp is not None else _daddr(buf, l3)
                if not neigh.hold(pkt, now, to):
                    sent.append((pkt, info) if cp is None else (pkt, info, True))
                if self.decisions.get(flow) == "NONE" and _inner(to):
                    self.decisions[flow] = f"rs{to[-1] - 1}"
                elif _inner(info.saddr) and info.proto in (6, 17):
                    # A server's TCP/UDP reply reached the client (ICMP errors do not count).
                    self.answered.add(flow)
            elif verdict == NF_ACCEPT and info.saddr in t.vips and info.proto in (6, 17):
                # A DR/TUN server's answer from the VIP itself: ip_vs_out
                # counted it and let it pass on to the client.
                self.answered.add(flow)
            for pkt in self.ipvs.outbox:
                sent.append((bytes(pkt), info))
            self.ipvs.outbox.clear()
        if t.input:
            self.now = jiffies(t.input[-1][0].ts, self.ipvs.hz)
        self.d.run_timers(self.now)
        for _idx, actions in sorted(jobs.items()):
            for action, _lead, *_key in actions:
                action()
        stop = self.clock.take_kind("capture_stop")
        if stop is not None:
            # The captures end capture_stop's sleep after its stamp (SIGINT).
            self.now = max(self.now, jiffies(stop + CAPTURE_STOP_SLEEP_S, self.ipvs.hz))
        self.tick(CAPTURE_STOP_SLEEP_S + 2 * DECODE_S)
        # Resolutions that fail before the dump (capture_stop's wait).
        self._unreachable(neigh, self.now, sent, None)
        self.d.run_timers(self.now)
        self._frames(sent)

    def _unreachable(self, neigh: Neighbours, now: int, sent: list, info) -> None:
        """``ipv4_link_failure`` for the packets of the resolutions failed by
        ``now``: a host unreachable each, through the core's LOCAL_OUT pass
        (the source the kernel's route lookup picks is replaced by the VIP
        there; offline there is no address to pick, so 0.0.0.0 goes in).
        Timers due by each failure run first; the modelled clock of the
        scenario's steps (``self.now``) is left alone."""
        for fail, pkts in neigh.due(now):
            self.d.run_timers(fail)
            for pkt in pkts:
                err = build_error(pkt, 0, len(pkt), ICMP_DEST_UNREACH, ICMP_HOST_UNREACH, b"\0\0\0\0")
                self.d.local_out(err, 0, fail)
                sent.append((bytes(err), info))

    def _estimator_phase(self, first: int, last: int) -> None:
        """Put the estimator's ticks where the kernel's were, by assumption:
        the fallback for goldens recorded before ``load_ipvs`` stamped and
        traced the estimator's timer (esttrace.py; those set
        :attr:`est_source` and never come here).

        The kernel's timer has the phase of the module load; what listings
        show depends on it (they read its snapshot).  The assumption: a
        tick came EST_AFTER_LAST_S after the last captured frame, between
        it and the dump, so the dump saw all traffic.  A golden whose own
        counters say otherwise shows ``stats_lag`` (report.py).
        """
        period = self.ipvs.est.period
        target = last + round(EST_AFTER_LAST_S * self.ipvs.hz)
        # The first tick at or after the first frame (the modelled clock of
        # the configuration steps before it may have run ahead of the
        # capture's; the frames' own times are the reference).
        self.ipvs.est.next_run = first + (target - first) % period

    def _plan_tcpcraft(self, job, add, anchor, next_from_client, sleep) -> None:
        """tcpcraft's steps: each ``send`` is the flow's next client frame in
        the capture; ``dump`` and ``sh`` run before the next send's frame and
        write their records (the others - send, expect, sleep - are the
        client's own view, not rebuilt offline)."""
        base, lines = job
        flows: dict[str, tuple[int, bytes, int]] = {}
        section, n = "", 0
        for raw in lines:
            line = raw.strip()
            if not line:
                continue
            if line.startswith("#"):
                section = line[1:].strip()
                continue
            verb, _, rest = line.partition(" ")
            a = rest.split()
            if verb == "conn":
                flows[a[0]] = (6, ipaddress.ip_address(a[1]).packed, int(a[2]))
                continue
            n += 1
            if verb == "send":
                idx = next_from_client(flows[a[0]])
                if idx is None:
                    self.notes.append(f"capture gap: the kernel's client capture ends before the frame of tcpcraft step {n} "
                                      f"({line})")
                anchor(idx)
            elif verb == "sleep":
                sleep(float(a[0]))
            elif verb == "dump":
                add(lambda n=n, section=section, label=a[0], key=_one_line(rest): self.stamp("dump", key)
                    or self.tc_records.append(
                    {"n": n, "section": section, "step": "dump", "label": label,
                     "ipvsadm_Lnc": self.ipvsadm(["-Lnc"])[1],
                     "proc_net_ip_vs_conn": self.proc("ip_vs_conn")}))
            elif verb == "sh":
                def run_sh(n=n, section=section, cmd=rest):
                    out, err, rc = self.sh(cmd)
                    self.tc_records.append({"n": n, "section": section, "step": "sh", "cmd": cmd,
                                            "stdout": out, "stderr": err, "rc": rc})
                add(run_sh)
        add(lambda base=base: self.write(
            f"{base}.jsonl", "".join(json.dumps(r) + "\n" for r in sorted(self.tc_records, key=lambda r: r["n"]))))

    def _frames(self, sent: list[tuple[bytes, tuple]]) -> None:
        t = self.traffic
        assert t is not None
        # (A frame the core sent to a real server by Director.xmit_to is
        # marked: a DR frame still says VIP.)
        to_rs = [len(e) > 2 or _inner(_daddr(e[0])) for e in sent]
        got_rs = [e[0] for e, rs in zip(sent, to_rs) if rs and self._flow_of(e[0]) in t.both]
        got_cli = [e[0] for e, rs in zip(sent, to_rs) if not rs and self._flow_of(e[0]) in t.both]
        want_rs = [r.data[i.outer if i.outer >= 0 else i.l3:] for r, i in t.to_rs if t.flow(i) in t.both]
        want_cli = [r.data[i.l3:] for r, i in t.to_cli if t.flow(i) in t.both]
        # (Normalisation 7: the GUE source ports the kernel hashed with its boot's seed.)
        got_rs, want_rs = normalize.gue_source_ports(got_rs), normalize.gue_source_ports(want_rs)
        for label, got, want in (("frames to real servers", got_rs, want_rs), ("frames to clients", got_cli, want_cli)):
            if not want:
                continue
            if got == want:
                self.items.append(Item(self.name, label, EQUAL, f"{len(want)} frames byte-identical at L3/L4"))
            else:
                k = next((k for k, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
                if sorted(got) == sorted(want):
                    why = f"the same {len(want)} frames, in another order from frame {k + 1}"
                else:
                    why = f"{len(got)} vs kernel {len(want)} frames, first difference at frame {k + 1}"
                self.items.append(Item(self.name, label, DIFFERENT, why))

    def _flow_of(self, b: bytes) -> tuple[int, bytes, int]:
        t = self.traffic
        assert t is not None
        i = parse_frame(pcap.Record(0.0, bytes(b), pcap.LINKTYPE_RAW))
        return t.flow(i) if i is not None else (0, b"", 0)

    def order(self) -> None:
        lines = []
        for label, n, src, sport, proto in self.requests:
            f = (proto, ipaddress.ip_address(src).packed, sport)
            # "?": the kernel's client capture has no frame of this request to a VIP.
            server = self.decisions.get(f, "?")
            if server == "?" and self.traffic is not None:
                to = sorted({str(ipaddress.ip_address(bytes(i.daddr))) for _r, i in self.traffic.client_frames
                             if (i.proto, bytes(i.saddr), i.sport) == f})
                if to:
                    self.notes.append(f"request {label} {src}:{sport}: the kernel's client capture has it to "
                                      f"{', '.join(to)}, which neither a service nor add_vip names: not replayed")
            if server.startswith("rs") and f not in self.answered:
                # Like the client's view: scheduled, but no server answered
                # (none runs at that address, or it sent an ICMP error).
                server = "NONE"
            lines.append(f"{label} {n} {src}:{sport} {server}\n")
        self.write("order.txt", "".join(lines))

    # ------------------------------------------------------------ driver

    def run(self) -> None:
        events = extract_events(self.scenario_sh, prefill=self.prefill, golden=self.golden)
        self.resolver = GuestResolver(sandbox.parse_hosts(sandbox.GUEST_HOSTS))
        for kind, args, lines in events:
            if kind == "hosts":
                # The scenario's /etc/hosts changed: names resolve as they then did in the VM.
                self.resolver = GuestResolver(sandbox.parse_hosts("\n".join(lines)))
            elif kind == "ipvsadm" and self.in_capture:
                self.steps.append(("action", lambda a=args, i="".join(x + "\n" for x in lines): self.ipvsadm(a, i)))
            elif kind == "ipvsadm":
                self.ipvsadm(args, "".join(x + "\n" for x in lines))
            elif kind == "ipvsadm_to":
                # ipvsadm ... > "$OUT/FILE": the kernel run has that file too.
                out = self.ipvsadm(args[1:], "".join(x + "\n" for x in lines))[1]
                self.write(args[0], out)
                self.redirected[args[0]] = out
            elif kind == "ipvs_rules":
                rc, _o, e = self.ipvsadm(["-R"], "".join(x + "\n" for x in lines))
                if rc:
                    self.notes.append(f"ipvs_rules failed: {e.strip()}")
            elif kind in ("vs_sysctl", "mark_dst", "modprobe", "iptables_mark") and self.in_capture:
                # Between two client_steps of one capture: in step order, not at once.
                self.steps.append(("action", lambda k=kind, a=args: self.library_call(k, a)))
            elif kind in ("vs_sysctl", "mark_dst", "modprobe", "iptables_mark"):
                self.library_call(kind, args)
            elif kind in ("add_vip", "add_vip6"):
                self.vips.add(ipaddress.ip_address(args[0]).packed)
            elif kind in ("dump_ipvs", "dump_conn") and self.in_capture:
                fn = self.dump_ipvs if kind == "dump_ipvs" else self.dump_conn
                self.steps.append(("action", lambda fn=fn, p=args[0] if args else "": fn(p)))
            elif kind == "dump_ipvs":
                self.dump_ipvs(args[0] if args else "")
            elif kind == "dump_conn":
                self.dump_conn(args[0] if args else "")
            elif kind == "ftp_client":
                # client OUTFILE SRC SPORT DST MODE DATAPORT
                self.steps.append(("ftp", (args[1], args[2])))
            elif kind == "tcpcraft":
                self.steps.append(("tcpcraft", (args[0], lines)))
            elif kind == "cmd" and _iptables_mark(args) is not None:
                # A raw "iptables -t mangle -A PREROUTING ... -j MARK --set-mark M".
                if self.in_capture:
                    self.steps.append(("action", lambda a=_iptables_mark(args): self.library_call("iptables_mark", a)))
                else:
                    self.library_call("iptables_mark", _iptables_mark(args))
            elif kind == "cmd" and args and args[0] in ("iptables", "iptables-restore") and "MARK" in args:
                self.notes.append(f"not modelled: {' '.join(args)}")
            elif kind in ("ftp_server", "cmd", "value"):
                pass
            elif kind == "transcript":
                self.transcript(args[0], lines)
            elif kind == "capture_start":
                self.in_capture = True
            elif kind == "client_steps":
                self.steps.extend(("step", x) for x in lines)
            elif kind == "http_get":
                self.steps.append(("http_get", " ".join(args)))
            elif kind == "capture_stop":
                if self.in_capture:
                    self.replaying = True
                    try:
                        self.play_traffic()
                    finally:
                        self.replaying = False
                self.in_capture = False
            elif kind == "order_summary":
                self.order()
            elif kind == "setup_nat":
                self.nservers = int(args[0])
                # oracle.sh's setup_nat: the bridge, the client veth, one veth per server.
                self.interfaces |= {"br0", "cli0", *(f"rs{k}" for k in range(1, self.nservers + 1))}
            elif kind in ("start_servers", "cleanup", "snap", "dump_sysctl", "setup_v6", "rs_vip", "rs_vip6"):
                pass
            else:
                self.notes.append(f"not modelled: {kind} {' '.join(args)}")
        if self.requests and not os.path.exists(os.path.join(self.out, "order.txt")):
            self.order()
