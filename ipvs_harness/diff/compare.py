"""Compare one scenario's outputs from two backends, item by item.

``compare_dirs(ref, got)`` walks the reference directory (the kernel's: a
golden or a fresh VM run) and compares each output file the other backend
also wrote.  An *item* is one file, except that ``order.txt`` gives one
item per request (which real server it reached) and a ``.jsonl``
transcript one item per command.  Files only the kernel can write (guest
and boot facts, the packet decodes with their timestamps, the pcaps
themselves: compared by the backends that can, see :mod:`.offline`) are
not items.  Normalisation is :mod:`.normalize`'s and nothing else.
"""

from __future__ import annotations

import json
import os
import re
from typing import NamedTuple

import attrs

from ipvs_harness.diff import normalize

EQUAL, DIFFERENT, MISSING = "equal", "different", "missing"

#: Kernel-only facts, never compared: VM, boot, module list, logs with
#: timings (the guest's clock stamps, the estimator timer's trace),
#: tcpdump's own text decodes (timestamps, ISNs of real sockets), values
#: a scenario computed at run time (``value``: the offline run is handed them).
NOT_ITEMS = re.compile(
    r"^(scenario\.sh|rc|run-info\.txt|guest-info\.txt|guest-packages\.txt|lsmod\.txt|scenario\.log|"
    r"dmesg\.txt|console\.log|duration_s|clock\.txt|est-trace\.txt|.*\.pcap|(client|server)-side\.txt|"
    r".*\.err|.*\.out|value-.*\.txt)$"
)


@attrs.define(slots=True)
class Item:
    """One compared item: ``status`` is equal, different or missing."""

    scenario: str
    name: str
    status: str
    detail: str = ""


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


def _first_diff(a: list[str], b: list[str]) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"line {i + 1}: kernel {x!r} vs pyipvs {y!r}"
    return f"{len(a)} vs {len(b)} lines"


class Request(NamedTuple):
    """One line of an ``order.txt`` (``order_summary``): a client request
    and the real server that answered it."""

    #: The scenario's label of the step (``wlc-fresh``).
    label: str
    #: The request's number in the scenario, from 1.
    n: int
    #: The client's ``ADDR:PORT``.
    src: str
    #: ``rsK``, ``NONE`` (no server answered) or ``?`` (offline: the
    #: kernel's capture has no frame of it to a VIP).
    server: str

    @property
    def key(self) -> str:
        """``N SRC:PORT``: what identifies the request across backends."""
        return f"{self.n} {self.src}"


def read_order(text: str) -> list[Request]:
    """The requests of an ``order.txt``, in its order."""
    rows = []
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 4 and not line.startswith("#"):
            rows.append(Request(f[0], int(f[1]), f[2], f[3]))
    return rows


class DestCounts(NamedTuple):
    """A real server's row of ``ipvsadm -Ln``: what the schedulers read."""

    weight: int
    active: int
    inactive: int


def read_listing_dests(text: str) -> dict[str, DestCounts]:
    """The real-server rows of an ``ipvsadm -Ln`` listing, keyed
    ``"PROT VIP:PORT RS:PORT"`` (``FWM MARK RS:PORT``), so that several
    services can share a listing."""
    out = {}
    svc = ""
    for line in text.splitlines():
        if line.startswith(("TCP ", "UDP ", "FWM ", "SCTP ")):
            svc = " ".join(line.split()[:2])
        elif line.strip().startswith("->") and "RemoteAddress" not in line:
            f = line.split()
            out[f"{svc} {f[1]}"] = DestCounts(int(f[3]), int(f[4]), int(f[5]))
    return out


def compare_order(scenario: str, ref: str, got: str, name: str = "order.txt") -> list[Item]:
    """One item per request of the reference: the same server (or NONE)."""
    g = {r.key: r for r in read_order(got)}
    items = []
    for r in read_order(ref):
        item = f"{name}: {r.label} {r.key}"
        mine = g.get(r.key)
        if mine is None:
            items.append(Item(scenario, item, MISSING, "request not made"))
        elif mine.server == "?":
            items.append(Item(scenario, item, MISSING, "no frame of this request to a VIP in the kernel's client capture (the offline notes say where it went)"))
        elif mine.server != r.server:
            items.append(Item(scenario, item, DIFFERENT, f"kernel {r.server}, pyipvs {mine.server}"))
        else:
            items.append(Item(scenario, item, EQUAL))
    return items


def _lists_conns(argv: list[str]) -> bool:
    """ipvsadm -L with -c/--connection: rows in hash order with timers."""
    short = "".join(a[1:] for a in argv[1:] if a.startswith("-") and not a.startswith("--"))
    return ("c" in short or "--connection" in argv) and ("L" in short or "l" in short or "--list" in argv)


def compare_transcript(scenario: str, name: str, ref: str, got: str, fixed: set[int] | None = None,
                       tolerance: int = normalize.EXPIRE_TOLERANCE_S) -> list[Item]:
    """One item per recorded command: same stdout, stderr and exit status
    (connection listings and rates under the normalisation rules)."""
    r = [json.loads(x) for x in ref.splitlines() if x.strip()]
    g = {x["n"]: x for x in (json.loads(y) for y in got.splitlines() if y.strip())}
    items = []
    for rec in r:
        label = f"{name}#{rec['n']}: {rec.get('cmd', '')}"[:160]
        other = g.get(rec["n"])
        if other is None or other.get("argv") != rec.get("argv"):
            items.append(Item(scenario, label, MISSING, "command not run"))
            continue
        bad = [k for k in ("stdout", "stderr", "rc") if other.get(k) != rec.get(k)]
        argv = rec.get("argv") or []
        if bad == ["stdout"] and _lists_conns(argv):
            why = normalize.compare_conn(rec["stdout"], other["stdout"], fixed, tolerance)
            bad = [] if why is None else bad
        elif bad == ["stdout"] and any(a in ("--rate",) for a in argv):
            a, b = normalize.rate_shape(rec["stdout"]), normalize.rate_shape(other["stdout"])
            if a == b:
                bad = []
            elif _svc_blocks(a) == _svc_blocks(b):
                items.append(Item(scenario, label, DIFFERENT, "the same services in another order: " + _first_diff(a, b)))
                continue
        if bad == ["stdout"] and _same_services(rec["stdout"], other["stdout"]):
            items.append(Item(scenario, label, DIFFERENT, "the same services in another order: "
                              + _first_diff(rec["stdout"].splitlines(), other["stdout"].splitlines())))
        elif bad:
            k = bad[0]
            items.append(Item(scenario, label, DIFFERENT, f"{k}: kernel {rec.get(k)!r} vs pyipvs {other.get(k)!r}"[:300]))
        else:
            items.append(Item(scenario, label, EQUAL))
    return items


def _tcp_states(text: str, fixed: set[int] | None) -> list[str]:
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        rec.pop("t", None)
        step = rec.get("step")
        if step == "send":
            rec.pop("ack", None)  # absolute: the real server's random ISN plus an offset
        if step == "dump":
            for k in ("ipvsadm_Lnc", "proc_net_ip_vs_conn"):
                if k in rec:
                    rec[k] = normalize.conn_rows(rec[k], fixed)
                    rec[k] = [rec[k][0], [r for r, _ in rec[k][1]], [s for _, s in rec[k][1]]]
        out.append(json.dumps(rec, sort_keys=True))
    return out


def _compare_tcp_states(scenario: str, ref: str, got: str, tolerance: int = normalize.EXPIRE_TOLERANCE_S) -> list[Item]:
    """One item per TCP state walk record; dumps under rules 1-3."""
    r, g = _tcp_states(ref, None), _tcp_states(got, None)
    by_n = {json.loads(x).get("n"): x for x in g}
    items = []
    for i, line in enumerate(r):
        rec = json.loads(line)
        label = f"tcp-states.jsonl#{rec.get('n', i + 1)}: {rec.get('step')} {rec.get('label', '')}"[:160]
        if rec.get("n") not in by_n:
            items.append(Item(scenario, label, MISSING, "record not produced by this backend"))
            continue
        other = json.loads(by_n[rec.get("n")])
        if rec.get("step") == "dump":
            # Timers within the tolerance, rows exact.
            ok = True
            for k in ("ipvsadm_Lnc", "proc_net_ip_vs_conn"):
                if k in rec:
                    a, b = rec[k], other.get(k) or [[], [], []]
                    if a[0] != b[0] or a[1] != b[1] or any(
                            abs(x - y) > tolerance for x, y in zip(a[2], b[2], strict=False)):
                        ok = False
            items.append(Item(scenario, label, EQUAL if ok else DIFFERENT, "" if ok else "connection dump differs"))
        elif rec == other:
            items.append(Item(scenario, label, EQUAL))
        else:
            items.append(Item(scenario, label, DIFFERENT, f"kernel {line[:160]} vs pyipvs {by_n[rec.get('n')][:160]}"))
    return items


def compare_file(scenario: str, name: str, ref: str, got: str, fixed: set[int] | None,
                 tolerance: int = normalize.EXPIRE_TOLERANCE_S) -> Item:
    """One file under the rule that fits its kind."""
    if re.search(r"ipvsadm-Lnc\.txt$|proc-net-ip_vs_conn(_sync)?\.txt$", name):
        why = normalize.compare_conn(ref, got, fixed, tolerance)
        return Item(scenario, name, EQUAL if why is None else DIFFERENT, why or "")
    if re.search(r"-rate\.txt$", name):
        a, b = normalize.rate_shape(ref), normalize.rate_shape(got)
        if a != b and _svc_blocks(a) == _svc_blocks(b):
            return Item(scenario, name, DIFFERENT, "the same services in another order: " + _first_diff(a, b))
        return Item(scenario, name, EQUAL if a == b else DIFFERENT, "" if a == b else _first_diff(a, b))
    if re.search(r"proc-net-ip_vs_stats(_percpu)?\.txt$", name):
        (c1, r1), (c2, r2) = normalize.stats_proc(ref), normalize.stats_proc(got)
        if c1 != c2:
            return Item(scenario, name, DIFFERENT, "counters: " + _first_diff(c1, c2))
        if r1 != r2:
            return Item(scenario, name, DIFFERENT, "rates layout: " + _first_diff(r1, r2))
        return Item(scenario, name, EQUAL)
    if re.fullmatch(r"rs\d+-\d+(-udp)?\.log|rs\d+-21-ftp\.log", name):
        a, b = normalize.server_log(ref), normalize.server_log(got)
        return Item(scenario, name, EQUAL if a == b else DIFFERENT, "" if a == b else _first_diff(a, b))
    a, b = ref.splitlines(), got.splitlines()
    if a != b and re.search(r"(proc-net-ip_vs|ipvsadm-Ln.*|ipvsadm-S-n)\.txt$", name) and _same_services(ref, got):
        return Item(scenario, name, DIFFERENT, "the same services in another order: " + _first_diff(a, b))
    return Item(scenario, name, EQUAL if a == b else DIFFERENT, "" if a == b else _first_diff(a, b))


def _svc_blocks(lines: list[str]) -> list[tuple[str, ...]]:
    """A service listing (/proc/net/ip_vs, ``ipvsadm -L``, ``-S``) as sorted
    blocks: a service line with its destination lines (``  ->`` or ``-a``)."""
    blocks: list[list[str]] = []
    for line in lines:
        if line.lstrip().startswith(("->", "-a ")) and blocks:
            blocks[-1].append(line)
        else:
            blocks.append([line])
    return sorted(tuple(b) for b in blocks)


def _same_services(ref: str, got: str) -> bool:
    """Do two service listings differ in the order of their services only?"""
    a, b = ref.splitlines(), got.splitlines()
    return a != b and _svc_blocks(a) == _svc_blocks(b)


def compare_dirs(scenario: str, ref_dir: str, got_dir: str, skip: dict[str, str] | None = None,
                 tolerance: int = normalize.EXPIRE_TOLERANCE_S) -> list[Item]:
    """Every item of ``ref_dir`` (the kernel) against ``got_dir`` (PyIPVS).

    ``tolerance`` is the timer tolerance in seconds (normalisation rule 1).
    ``skip`` maps a file name pattern (regular expression) to the reason the
    backend that wrote ``got_dir`` cannot produce it; such files become
    MISSING items carrying the reason.
    """
    skip = skip or {}
    items: list[Item] = []
    req = os.path.join(ref_dir, "requests.txt")
    fixed = normalize.fixed_ports_of(_read(req)) if os.path.exists(req) else None
    for name in sorted(os.listdir(ref_dir)):
        path = os.path.join(ref_dir, name)
        if not os.path.isfile(path) or NOT_ITEMS.match(name):
            continue
        other = os.path.join(got_dir, name)
        reason = next((why for pat, why in skip.items() if re.fullmatch(pat, name)), None)
        if reason is not None or not os.path.exists(other):
            items.append(Item(scenario, name, MISSING, reason or "not written by this backend"))
            continue
        ref, got = _read(path), _read(other)
        if name == "order.txt":
            items.extend(compare_order(scenario, ref, got))
        elif name == "tcp-states.jsonl":
            items.extend(_compare_tcp_states(scenario, ref, got, tolerance))
        elif name.endswith(".jsonl"):
            items.extend(compare_transcript(scenario, name, ref, got, fixed, tolerance))
        elif name == "requests.txt" or name.endswith((".txt", ".log")):
            if name.endswith(".txt") and os.path.exists(path[:-4] + ".jsonl"):
                continue  # the human form of a transcript compared above
            items.append(compare_file(scenario, name, ref, got, fixed, tolerance))
    return items
