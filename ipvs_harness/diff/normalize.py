"""The differential suite's normalisation rules, and nothing more.

Every rule here exists because the kernel itself does not give the same
text twice; each is listed in docs/differential.md.  A rule that would hide
a real difference does not belong here.

1. **Timers** - the ``expire`` column of ``ipvsadm -Lnc`` (``mm:ss``) and
   the ``Expires`` column of ``/proc/net/ip_vs_conn`` (seconds) are compared
   within a tolerance: the dump happens at a moment the scenario does not
   fix (each process start under TCG costs 0.3-0.5 s).  For the same reason
   a connection whose timer is within the tolerance of expiring may be
   missing from the other listing.
   :data:`EXPIRE_TOLERANCE_S` (3 s) against the offline backend, whose
   clock is the capture's; :data:`LIVE_EXPIRE_TOLERANCE_S` (10 s) between
   two live runs, because the VM runs the same script 2-3 times slower
   than the namespace lab, so connections are older when it dumps them.
2. **Hash order** - the rows of ``ipvsadm -Lnc`` and ``/proc/net/ip_vs_conn``
   (and ``_sync``) are sorted: their order follows a per-boot random hash
   seed.
3. **Ephemeral client ports** - a client port that the scenario did not fix
   (no ``requests.txt`` line names it) is replaced by ``*`` in connection
   rows.  Every shipped scenario fixes its ports, so this rule is idle there.
4. **Rates** - the values of ``--rate`` listings and the per-second rows of
   ``/proc/net/ip_vs_stats*`` come from a 2 s estimator over wall-clock
   time: only their layout (the rows and columns present) is compared.
5. **Run-specific stamps** - the leading time of real-server log lines, the
   ``t`` field of TCP state walk records and the absolute ``ack`` of their
   ``send`` records (the real server's random initial sequence number plus
   an offset; ``seq_rel``/``ack_rel`` stay) are dropped.
6. **CPUs** - the per-CPU rows of ``/proc/net/ip_vs_stats_percpu`` are
   summed into one row: which CPU counted a packet is the scheduler's
   choice of the moment (the VM has two; PyIPVS counts on CPU 0).  The
   ``~`` row (the estimator's snapshot) stays as it is.
7. **GUE source ports** - a VS/TUN GUE packet's UDP source port comes from
   ``udp_flow_src_port``, a hash of the inner flow with a per-boot random
   seed: in frames to real servers each such port is replaced by its rank
   of first appearance (so one flow must keep one port and two flows must
   not share one, as in the kernel), and a UDP checksum that verified is
   recomputed for the new port (one that did not is left to differ).
"""

from __future__ import annotations

import re

#: Seconds a timer may differ: offline (capture clock) and live-vs-live.
EXPIRE_TOLERANCE_S = 3
LIVE_EXPIRE_TOLERANCE_S = 10

_LNC_ROW = re.compile(r"^(\S+)\s+(\d\d):(\d\d)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)(.*)$")
_PROC_CONN_ROW = re.compile(
    r"^(\S+) (\S+) ([0-9A-F]{4}) (\S+) ([0-9A-F]{4}) (\S+) ([0-9A-F]{4}) (\S+)\s+(\S+)?\s*(\d+)(.*)$"
)


def _port_of(addr_port: str) -> str:
    return addr_port.rsplit(":", 1)[-1]


def conn_rows(text: str, fixed_ports: set[int] | None = None) -> tuple[list[str], list[tuple[str, int]]]:
    """Header lines and sorted ``(row without timer, seconds)`` of a connection listing.

    Works for ``ipvsadm -Lnc`` (``expire`` as ``mm:ss``) and for
    ``/proc/net/ip_vs_conn`` / ``ip_vs_conn_sync`` (``Expires`` in seconds).
    """
    header: list[str] = []
    rows: list[tuple[str, int]] = []
    for line in text.splitlines():
        m = _LNC_ROW.match(line)
        if m and m.group(1) in ("TCP", "UDP", "SCTP", "IP"):
            pro, mm, ss, state, src, vip, dst, rest = m.groups()
            src = _ephemeral(src, fixed_ports)
            rows.append((f"{pro} {state} {src} {vip} {dst}{rest.rstrip()}", int(mm) * 60 + int(ss)))
            continue
        p = line.split()
        if len(p) >= 9 and p[0] in ("TCP", "UDP", "SCTP", "IP") and re.fullmatch(r"[0-9A-F]{4}", p[2] or ""):
            # Pro FromIP FPrt ToIP TPrt DestIP DPrt State [Origin] Expires [PE...]
            if fixed_ports is not None and int(p[2], 16) not in fixed_ports:
                p[2] = "*"
            i = 8 if p[8].isdigit() else 9
            secs = int(p[i])
            rows.append((" ".join(p[:i] + p[i + 1:]), secs))
            continue
        header.append(line.rstrip())
    rows.sort()
    return header, rows


def _ephemeral(src: str, fixed_ports: set[int] | None) -> str:
    if fixed_ports is None:
        return src
    port = _port_of(src)
    if port.isdigit() and int(port) not in fixed_ports:
        return src[: -len(port)] + "*"
    return src


def compare_conn(ref: str, got: str, fixed_ports: set[int] | None = None,
                 tolerance: int = EXPIRE_TOLERANCE_S) -> str | None:
    """None when the two connection listings agree under rules 1-3, else why not."""
    h1, r1 = conn_rows(ref, fixed_ports)
    h2, r2 = conn_rows(got, fixed_ports)
    if h1 != h2:
        return f"header differs: {h1!r} vs {h2!r}"
    # A row about to expire (timer within the tolerance) may already be
    # gone from the other listing: that is rule 1 too.
    only1 = set(r for r, _ in r1) - set(r for r, _ in r2)
    only2 = set(r for r, _ in r2) - set(r for r, _ in r1)
    r1 = [x for x in r1 if not (x[0] in only1 and x[1] <= tolerance)]
    r2 = [x for x in r2 if not (x[0] in only2 and x[1] <= tolerance)]
    k1 = [r for r, _ in r1]
    k2 = [r for r, _ in r2]
    if k1 != k2:
        only1 = sorted(set(k1) - set(k2))[:3]
        only2 = sorted(set(k2) - set(k1))[:3]
        return f"{len(k1)} vs {len(k2)} rows; kernel only: {only1}; pyipvs only: {only2}"
    pairs = sorted(zip(r1, r2, strict=True), key=lambda p: -abs(p[0][1] - p[1][1]))
    if pairs and abs(pairs[0][0][1] - pairs[0][1][1]) > tolerance:
        (row, a), (_, b) = pairs[0]
        return f"timer off by {abs(a - b)} s > {tolerance} s ({row}: {a} s vs {b} s)"
    return None


_NUM = re.compile(r"\b[0-9A-F]+[KMG]?\b")


def rate_shape(text: str) -> list[str]:
    """A ``--rate`` listing with every number replaced by ``#`` (rule 4)."""
    out = []
    for line in text.splitlines():
        if line.lstrip().startswith(("->", "TCP", "UDP", "FWM", "SCTP")) or re.match(r"^\s+[0-9]", line):
            f = line.split()
            keep = 2 if f and f[0] in ("TCP", "UDP", "FWM", "SCTP", "->") else 0
            f = f[:keep] + ["#" if re.fullmatch(r"[0-9]+[KMG]?", x) else x for x in f[keep:]]
            out.append(" ".join(f))
        else:
            out.append(line.rstrip())
    return out


def stats_proc(text: str) -> tuple[list[str], list[str]]:
    """``/proc/net/ip_vs_stats[_percpu]``: (counter lines, rate lines as shapes).

    The counters are compared exactly; the lines after the ``Conns/s``
    header are rates (rule 4).
    """
    counters: list[str] = []
    rates: list[str] = []
    cpus: list[int] | None = None
    at = 0  # where the summed row goes
    in_rates = False
    for line in text.splitlines():
        if "Conns/s" in line:
            in_rates = True
            rates.append(" ".join(line.split()))
            continue
        f = line.split()
        if in_rates:
            rates.append(" ".join("#" if re.fullmatch(r"[0-9A-F]+", x) else x for x in f))
        elif len(f) == 6 and all(re.fullmatch(r"[0-9A-F]+", x) for x in f):
            # A per-CPU row (rule 6): summed, shown where the first one was.
            if cpus is None:
                cpus = [0] * 5
                at = len(counters)
                counters.append("")
            cpus = [a + int(x, 16) for a, x in zip(cpus, f[1:], strict=True)]
            counters[at] = "CPUs " + " ".join(f"{v:X}" for v in cpus)
        else:
            counters.append(line.rstrip())
    return counters, rates


_LOG_TIME = re.compile(r"^[0-9.]+ ")


def server_log(text: str) -> list[str]:
    """Real-server log lines without their leading monotonic time (rule 5)."""
    return [_LOG_TIME.sub("", line) for line in text.splitlines()]


def fixed_ports_of(requests_text: str) -> set[int]:
    """Client ports a scenario fixed: the SRC:SPORT of every ``requests.txt`` line."""
    ports = set()
    for line in requests_text.splitlines():
        if line.startswith("#"):
            continue
        f = line.split()
        if len(f) >= 3 and ":" in f[2]:
            p = _port_of(f[2])
            if p.isdigit():
                ports.add(int(p))
    return ports


def _ones(data: bytes) -> int:
    """Folded ones'-complement sum of 16-bit words (0xFFFF for -0)."""
    if len(data) & 1:
        data += b"\0"
    v = int.from_bytes(data, "big")
    return (v % 0xFFFF or 0xFFFF) if v else 0


def _is_gue(ip: bytes) -> bool:
    """An IPv4/UDP packet whose payload is a GUE version 0 data message
    carrying IPv4 (what ``ipvs_gue_encap`` builds)."""
    if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 17:
        return False
    ihl = (ip[0] & 15) * 4
    if len(ip) < ihl + 12 + 20 or ip[ihl + 8] >> 5 != 0 or ip[ihl + 9] != 4:
        return False
    inner = ihl + 12 + (ip[ihl + 8] & 0x1F) * 4  # (GUE's hlen counts its options)
    ulen = int.from_bytes(ip[ihl + 4 : ihl + 6], "big")
    # The payload must be one whole IPv4 packet, not a datagram that looks like it.
    return len(ip) >= inner + 20 and ip[inner] >> 4 == 4 and \
        int.from_bytes(ip[inner + 2 : inner + 4], "big") == ulen - (inner - ihl)


def gue_source_ports(frames: list[bytes]) -> list[bytes]:
    """Rule 7: the GUE source ports of ``frames`` (IP packets) by rank."""
    rank: dict[int, int] = {}
    out = []
    for ip in frames:
        if not _is_gue(ip):
            out.append(ip)
            continue
        ihl = (ip[0] & 15) * 4
        b = bytearray(ip)
        sport = int.from_bytes(b[ihl : ihl + 2], "big")
        new = rank.setdefault(sport, len(rank) + 1)
        ulen = int.from_bytes(b[ihl + 4 : ihl + 6], "big")
        pseudo = bytes(b[12:20]) + b"\0\x11" + ulen.to_bytes(2, "big")
        check = int.from_bytes(b[ihl + 6 : ihl + 8], "big")
        valid = check and _ones(pseudo + bytes(b[ihl : ihl + ulen])) == 0xFFFF
        b[ihl : ihl + 2] = new.to_bytes(2, "big")
        if valid:
            b[ihl + 6 : ihl + 8] = b"\0\0"
            c = ~_ones(pseudo + bytes(b[ihl : ihl + ulen])) & 0xFFFF
            b[ihl + 6 : ihl + 8] = (c or 0xFFFF).to_bytes(2, "big")
        out.append(bytes(b))
    return out
