"""Compare every recorded golden with PyIPVS and write the report.

:func:`golden_items` runs one golden's scenario on the offline backend
(:mod:`.offline`) and compares the result with the golden
(:mod:`.compare`).  :data:`KNOWN_DIFFERENCES` lists every item where
PyIPVS is known to differ, with the reason; :func:`classify` turns raw
items into the report's statuses:

``equal``        the same under the documented normalisation;
``known``        different, and listed in KNOWN_DIFFERENCES with a reason;
``different``    different and not listed: a regression (the tests fail);
``not compared`` the backend cannot produce this item (reason given);
``fixed``        listed as known but now equal: the table must be updated
                 (the tests fail too, so the table stays true).
"""

from __future__ import annotations

import os
import re
import tempfile
import time

from ipvs_harness import GOLDENS, ROOT
from ipvs_harness.diff.compare import DIFFERENT, EQUAL, Item, compare_dirs
from ipvs_harness.diff.offline import CANNOT, run_offline

DOC = os.path.join(ROOT, "docs", "differential.md")

#: (scenario or "*", item regular expression) -> reason.  Every item of
#: the offline comparison that differs must match an entry; every entry
#: must match at least one differing item (else it is stale: fixed, or the
#: golden changed).  The reason's tag says whose difference it is:
#: [pyipvs] PyIPVS differs from the kernel; [inherent] no two kernel boots
#: agree either; [golden] the recording is incomplete; [offline] the offline
#: backend cannot model it.
_STATS = r"(.*-)?(ipvsadm-Ln(-exact)?-stats|ipvsadm-Ln|ipvsadm-Ln-persistent-conn|proc-net-ip_vs|proc-net-ip_vs_stats)\.txt"
_CONNS = r"(.*-)?(ipvsadm-Lnc|proc-net-ip_vs_conn|proc-net-ip_vs_conn_sync)\.txt"
_SVC_ORDER = ("[inherent] service hash order: ip_vs_svc_hashkey mixes in the address of the kernel's netns_ipvs, "
              "so --nosort and /proc/net/ip_vs order change with every boot, and ipvsadm's sort (a wrapping, "
              "non-transitive comparator over 1.0.0.0..200.0.0.0) inherits that order")
#: Goldens recorded ahead of the PyIPVS code they check (issue 17), with
#: why: the tests that compare goldens expect these to differ (strict
#: xfails), so each scenario leaves this table when its code lands.
#: PENDING_IPV6 is what the listing tests (test_ipvsadm, test_procfs),
#: which rebuild the kernel's state from its IPv6 dumps, cannot do yet:
#: nothing now (they read IPv6 rows since the IPv6 data path landed).
PENDING_IPV6: dict[str, str] = {}
PENDING: dict[str, str] = {
    **PENDING_IPV6,
}



def _pending_note(per: dict) -> str:
    """How many of the unexplained items belong to :data:`PENDING` scenarios
    (goldens recorded ahead of their code), for the report's summary."""
    n = sum(per[name]["different"] for name in PENDING if name in per)
    if not n:
        return ""
    return f" (all {n} of them in scenarios whose code is not written yet: {', '.join(sorted(PENDING))})" \
        if n == sum(c["different"] for c in per.values()) else f" ({n} of them in the pending {', '.join(sorted(PENDING))})"


KNOWN_DIFFERENCES: dict[tuple[str, str], str] = {
    # Empty: every difference the goldens show is a recording artefact with
    # its evidence (below).  A new PyIPVS difference goes here, with its tag.
}

#: Recording artefacts: rules that excuse a differing item only when the
#: recording itself shows the artefact (the evidence is checked for every
#: run, so a re-recorded golden without it gets no excuse).
#: (evidence, item regular expression, reason).
ARTEFACTS: list[tuple[str, str, str]] = [
    ("capture_gap", _STATS + "|" + _CONNS + r"|frames to .*|order\.txt: .*|tcp-states\.jsonl#.*"
     r"|.*\.jsonl#\d+: ipvsadm -L.*", (
        "[golden] one of the kernel's captures is incomplete (it ends before the other one, or lacks a "
        "request the other side has: tcpdump without --immediate-mode lost the frames of the ring block still "
        "open at SIGINT; the committed goldens are recorded with it and show no gap), so the offline input "
        "lacks frames the kernel handled; states, counters and frames after the gap differ")),
    ("leak", r".*", (
        "[golden] the kernel's state did not start empty: its 'before' listing already holds connections (or "
        "counters) of the scenario recorded before it in the same boot, and every later listing carries them")),
    ("stats_lag", r"(.*-)?(ipvsadm-Ln(-exact)?-stats|proc-net-ip_vs_stats(_percpu)?)\.txt", (
        "[offline] counters lag in the kernel: 6.1's ipvsadm and /proc/net/ip_vs_stats counters are the "
        "estimator's snapshot (kstats, refreshed by estimation_timer, as in ipvs/est.py; the kernel's timer runs "
        "every 504 jiffies, the timer wheel rounding its 2*HZ up), and this golden has no trace of the timer's runs (est-trace.txt; esttrace.py): the offline model predicts "
        "them from the ipvs_loaded stamp (within about 20 ms, further off after a late run) or, without that "
        "stamp, puts one after the last frame (offline.py: _estimator_phase); the evidence: the kernel's own "
        "counters of one dump disagree (--stats against --exact --stats, the snapshot total against the sum of "
        "the live per-CPU rows, or the services' counters summed against the /proc/net/ip_vs_stats total read "
        "after them)")),
    ("svc_order", r"(.*-)?(proc-net-ip_vs|ipvsadm-Ln.*|ipvsadm-S-n)\.txt|.*\.jsonl#.*", _SVC_ORDER),
    ("reorder", r"frames to .*", (
        "[inherent] the kernel sent the same frames in another order (two vCPUs: a server's ACK overtaken by "
        "its data); PyIPVS forwards in arrival order")),
]
ARTEFACT = "artefact"


def evidence_of(name: str, notes: list[str], items: list[Item], offline: bool = True) -> set[str]:
    """The recording artefacts golden ``name`` shows (see :data:`ARTEFACTS`)."""
    ev = set()
    if any(n.startswith("capture gap") for n in notes) or any("kernel's client capture" in it.detail for it in items):
        ev.add("capture_gap")
    return ev | kernel_evidence(os.path.join(GOLDENS, name), offline)


def kernel_evidence(kdir: str, offline: bool = True) -> set[str]:
    """Artefacts a kernel run's own files show: ``stats_lag`` (its counters
    disagree with each other) and ``leak`` (its "before" listing is not empty).

    ``offline``: the comparison is with the offline backend, which runs
    the estimator when the kernel's ran wherever the golden traced them
    (``est-trace.txt``): the kernel's counters lagging within a dump are
    then reproduced, not excused.  A live PyIPVS (the lab) has a phase of
    its own, so there the evidence counts whatever the golden holds."""
    ev = set()
    traced = offline and os.path.exists(os.path.join(kdir, "est-trace.txt"))
    if not traced and _stats_disagree(kdir):
        ev.add("stats_lag")
    before = os.path.join(kdir, "before-ipvsadm-Lnc.txt")
    if os.path.exists(before):
        with open(before) as f:
            if any(line.split()[:1] in (["TCP"], ["UDP"]) for line in f):
                ev.add("leak")
    return ev


def _percpu_lags(path: str) -> bool:
    """Is the ``~`` total (the estimator's snapshot) behind the sum of the live per-CPU rows?"""
    try:
        with open(path) as f:
            rows = [line.split() for line in f]
    except OSError:
        return False
    cpus = [r for r in rows if len(r) == 6 and r[0].isdigit()]
    total = next((r for r in rows if len(r) == 6 and r[0] == "~"), None)
    if not cpus or total is None:
        return False
    try:
        live = [sum(int(r[i], 16) for r in cpus) for i in range(1, 6)]
        return live != [int(x, 16) for x in total[1:]]
    except ValueError:
        return False


#: A scenario that removes services or zeroes counters: the sum of the
#: services' counters may then legitimately fall short of the total.
_REMOVES = re.compile(r"(^|\s)(-[DCZ]|--delete-service|--clear|--zero)(\s|$)", re.M)


def _beside_exact_stats(golden: str, other: str) -> list[tuple[str, str]]:
    """(``ipvsadm -Ln --exact --stats`` file, the ``other`` file of the same
    dump) for every dump of ``golden`` that wrote both."""
    pairs = []
    for f in sorted(os.listdir(golden)) if os.path.isdir(golden) else []:
        if f.endswith("ipvsadm-Ln-exact-stats.txt"):
            beside = os.path.join(golden, f.replace("ipvsadm-Ln-exact-stats", other))
            if os.path.exists(beside):
                pairs.append((os.path.join(golden, f), beside))
    return pairs


def _service_sum_lags(golden: str) -> bool:
    """Does a dump's ``ipvsadm -Ln --exact --stats`` (read first) count less,
    summed over its services, than the ``/proc/net/ip_vs_stats`` total read
    about half a second later in the same dump?  Every connection and packet
    IPVS counts goes to its service and to the total in the same update, and
    both are read from the estimator's snapshot, so in a scenario that never
    removes a service nor zeroes counters they differ only when an
    estimator tick came between the two reads (the listing then shows the
    snapshot of the tick before)."""
    try:
        with open(os.path.join(golden, "scenario.sh")) as f:
            if _REMOVES.search(f.read()):
                return False
    except OSError:
        return False
    for exact, total in _beside_exact_stats(golden, "proc-net-ip_vs_stats"):
        with open(exact) as a, open(total) as b:
            rows = [line.split() for line in a if line.split()[:1] in (["TCP"], ["UDP"], ["FWM"], ["SCTP"])]
            tot = [line.split() for line in b]
        try:
            svc_sum = [sum(int(r[i]) for r in rows) for i in range(2, 7)]
            proc = [int(x, 16) for x in tot[2]] if len(tot) > 2 and len(tot[2]) == 5 else None
        except (ValueError, IndexError):
            continue
        if rows and proc is not None and svc_sum != proc:
            return True
    return False


def _stats_disagree(golden: str) -> bool:
    """Do the kernel's counters of one dump disagree: --stats against --exact
    --stats, the snapshot total against the live per-CPU rows, or the
    services' sum against the total (:func:`_service_sum_lags`)?"""
    for f in os.listdir(golden) if os.path.isdir(golden) else []:
        if f.endswith("proc-net-ip_vs_stats_percpu.txt") and _percpu_lags(os.path.join(golden, f)):
            return True
    if os.path.isdir(golden) and _service_sum_lags(golden):
        return True
    for exact, other in _beside_exact_stats(golden, "ipvsadm-Ln-stats"):
        with open(exact) as a, open(other) as b:
            for x, y in zip(a.read().splitlines(), b.read().splitlines(), strict=False):
                fx, fy = x.split(), y.split()
                if (len(fx) == len(fy) and fx[:2] == fy[:2] and all(v.isdigit() for v in fx[2:] + fy[2:])
                        and fx != fy):
                    return True
    return False


def apply_artefacts(items: list[Item], evidence: set[str]) -> None:
    """Mark differing items a recording artefact explains (not KNOWN ones)."""
    for it in items:
        if it.status != DIFFERENT or known_reason(it):
            continue
        for key, pat, why in ARTEFACTS:
            if key == "reorder":
                held = it.detail.startswith("the same") and "frames" in it.detail
            elif key == "svc_order":
                held = it.detail.startswith("the same services")
            else:
                held = key in evidence
            if held and re.fullmatch(pat, it.name):
                it.status = ARTEFACT
                it.detail = f"{why} -- {it.detail}"
                break


def golden_names() -> list[str]:
    """Scenarios with a recorded golden (a directory with scenario.sh and rc 0)."""
    out = []
    for name in sorted(os.listdir(GOLDENS)) if os.path.isdir(GOLDENS) else []:
        d = os.path.join(GOLDENS, name)
        rc = os.path.join(d, "rc")
        if os.path.exists(os.path.join(d, "scenario.sh")) and (not os.path.exists(rc) or open(rc).read().strip() == "0"):
            out.append(name)
    return out


def golden_items(name: str, keep: str | None = None) -> tuple[list[Item], list[str]]:
    """(items, notes) of golden ``name`` against the offline backend.

    The golden's own ``scenario.sh`` (the exact script that produced it) is
    what runs.  ``keep`` names a directory to leave PyIPVS's outputs in.
    """
    g = os.path.join(GOLDENS, name)
    with tempfile.TemporaryDirectory(prefix="pyipvs-diff-") as tmp:
        out = keep or tmp
        run = run_offline(os.path.join(g, "scenario.sh"), g, out, name)
        items = compare_dirs(name, g, out, skip=CANNOT) + run.items
    apply_artefacts(items, evidence_of(name, run.notes, items))
    return items, run.notes


def _matches(key: tuple[str, str], item: Item) -> bool:
    return key[0] in ("*", item.scenario) and re.fullmatch(key[1], item.name) is not None


def known_reason(item: Item) -> str | None:
    for key, why in KNOWN_DIFFERENCES.items():
        if _matches(key, item):
            return why
    return None


def classify(items: list[Item]) -> list[tuple[Item, str, str]]:
    """(item, status, reason) for the report."""
    out = []
    for it in items:
        why = known_reason(it)
        if it.status == EQUAL:
            out.append((it, "equal", ""))
        elif it.status == DIFFERENT:
            out.append((it, "known" if why else "different", (why + " -- " if why else "") + it.detail))
        elif it.status == ARTEFACT:
            out.append((it, "artefact", it.detail))
        else:
            out.append((it, "not compared", it.detail))
    return out


def stale_known(items: list[Item]) -> list[tuple[str, str]]:
    """KNOWN_DIFFERENCES entries (of the scenarios in ``items``) that match
    no differing item any more: fixed, or the golden changed."""
    diff = [it for it in items if it.status == DIFFERENT]
    scenarios = {it.scenario for it in items}
    return [k for k in KNOWN_DIFFERENCES
            if (k[0] == "*" or k[0] in scenarios) and not any(_matches(k, it) for it in diff)]


def full_report(names: list[str] | None = None) -> tuple[list[tuple[Item, str, str]], dict[str, list[str]], float]:
    t0 = time.monotonic()
    rows: list[tuple[Item, str, str]] = []
    notes: dict[str, list[str]] = {}
    for name in names or golden_names():
        items, n = golden_items(name)
        rows.extend(classify(items))
        notes[name] = n
    return rows, notes, time.monotonic() - t0


STATUSES = ("equal", "known", "artefact", "different", "not compared")


def lab_report(names: list[str] | None = None, log=None) -> tuple[dict[str, list[Item]], dict[str, float]]:
    """Every golden's scenario, unchanged, in the namespace lab, compared
    with the golden (live timer tolerance).  No KNOWN_DIFFERENCES gate:
    two live runs also differ in timing-dependent packet counts."""
    from ipvs_harness.diff import lab, normalize

    results: dict[str, list[Item]] = {}
    times: dict[str, float] = {}
    for name in names or golden_names():
        g = os.path.join(GOLDENS, name)
        with tempfile.TemporaryDirectory(prefix="pyipvs-diff-lab-") as out:
            t0 = time.monotonic()
            rc = lab.run_lab(os.path.join(g, "scenario.sh"), out, timeout=600)
            times[name] = time.monotonic() - t0
            items = compare_dirs(name, g, out, skip=lab.CANNOT, tolerance=normalize.LIVE_EXPIRE_TOLERANCE_S)
            # The lab starts clean: a golden whose kernel did not is a recording artefact here too.
            apply_artefacts(items, evidence_of(name, [], items, offline=False) & {"leak", "stats_lag"})
            if rc != 0:
                with open(os.path.join(out, "scenario.log")) as f:
                    tail = f.read()[-300:].replace("\n", " / ")
                items.insert(0, Item(name, "scenario exit status", DIFFERENT, f"rc={rc}: {tail}"))
        results[name] = items
        if log:
            eq = sum(i.status == EQUAL for i in items)
            log(f"lab {name}: {eq} of {sum(i.status != 'missing' for i in items)} equal in {times[name]:.0f} s")
    return results, times


def lab_text(results: dict[str, list[Item]], times: dict[str, float]) -> str:
    out = ["", "## The namespace lab against the goldens", "",
           "Each golden's own scenario.sh, unchanged, on `tools/ipvsd` (AF_PACKET) in namespaces "
           "(`tools/ipvs-diff report --lab`), compared with the golden with the live timer tolerance.  "
           "KNOWN_DIFFERENCES and the leaked-state artefact apply as offline; the rest is listed, not gated: "
           "two live systems also differ in timing (a delayed ACK changes a packet count, a SYN-ACK "
           "retransmission lands inside or outside a wait).", "",
           "| scenario | equal | known | artefact | different | not compared | seconds |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    rows_by = {name: classify(items) for name, items in results.items()}
    for name, rows in rows_by.items():
        c = {k: sum(1 for _, st, _ in rows if st == k) for k in STATUSES}
        out.append(f"| {name} | {c['equal']} | {c['known']} | {c['artefact']} | {c['different']} | "
                   f"{c['not compared']} | {times[name]:.0f} |")
    out += ["", "Differences not explained above:", ""]
    for name, rows in rows_by.items():
        for it, st, why in rows:
            if st == "different":
                out.append(f"* {name} `{_cell(it.name)}`: {_cell(why)[:240]}")
    return "\n".join(out) + "\n"


def summary(rows: list[tuple[Item, str, str]]) -> dict[str, dict[str, int]]:
    per: dict[str, dict[str, int]] = {}
    for it, st, _ in rows:
        per.setdefault(it.scenario, dict.fromkeys(STATUSES, 0))[st] += 1
    return per


def _totals(rows):
    per = summary(rows)
    tot = dict.fromkeys(STATUSES, 0)
    for v in per.values():
        for k in STATUSES:
            tot[k] += v[k]
    return per, tot, tot["equal"] + tot["known"] + tot["artefact"] + tot["different"]


def text_report(rows, notes, seconds: float, verbose: bool = True, stale=()) -> str:
    per, tot, compared = _totals(rows)
    out = [f"PyIPVS vs kernel 6.1 goldens (offline backend): {len(per)} scenarios, {compared} items compared "
           f"({tot['equal']} equal, {tot['known']} known differences, {tot['artefact']} recording artefacts, "
           f"{tot['different']} unexplained), {tot['not compared']} not comparable offline; {seconds:.1f} s", ""]
    out += [f"stale KNOWN_DIFFERENCES entry (nothing differs any more): {k}" for k in stale]
    out.append(f"{'scenario':<18} {'equal':>6} {'known':>6} {'artef':>6} {'diff':>6} {'n/c':>6}")
    for s, v in per.items():
        out.append(f"{s:<18} {v['equal']:>6} {v['known']:>6} {v['artefact']:>6} {v['different']:>6} "
                   f"{v['not compared']:>6}")
    if verbose:
        for s in per:
            out.append("")
            out.append(f"== {s}")
            for it, st, why in rows:
                if it.scenario == s:
                    out.append(f"  {st:<12} {it.name}" + (f"  [{why}]" if why and st != "equal" else ""))
            for n in notes.get(s, []):
                out.append(f"  note: {n}")
    return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(rows, notes, seconds: float | None = None, items: bool = False) -> str:
    """The report page.  Committed as the summary (``docs/differential.md``:
    totals, the table per scenario, the rules; no timings of this machine);
    with ``items`` also every item with its status (``ipvs-diff report
    --items FILE``, generated on demand)."""
    from ipvs_harness.diff import normalize

    per, tot, compared = _totals(rows)
    timing = f"  Full compare: {seconds:.1f} s." if seconds is not None else ""
    md = ["# Differential report: PyIPVS against kernel IPVS 6.1", "",
          "<!-- generated by `tools/ipvs-diff report`; do not edit by hand -->", "",
          "Every golden recorded from the real kernel (`tests/kernel/goldens/`, see "
          "`tests/kernel/README.md`) is re-run on PyIPVS and compared item by item.  This page is "
          "the report of the **offline** backend, the one the ordinary test command runs "
          "(`tests/kernel/test_differential.py`): no VM, no namespaces.  "
          "`tools/ipvs-diff run SCENARIO.sh` runs one scenario on the live backends instead "
          "(kernel VM and the PyIPVS namespace lab) and compares those.", "",
          f"**{compared} items compared in {len(per)} scenarios: {tot['equal']} equal, "
          f"{tot['known']} known differences and {tot['artefact']} recording artefacts (both explained "
          f"below), {tot['different']} unexplained{_pending_note(per)}; {tot['not compared']} items the "
          f"offline backend cannot produce.**{timing}  Every item with its status: "
          "`tools/ipvs-diff report --items FILE`.", "",
          "## Commands", "",
          "| command | does | time (measured here, 2 shared cores) |", "| --- | --- | --- |",
          "| `tools/ipvs-diff report` | every golden against the offline backend; prints the table, writes this page "
          "| 5-10 s |",
          "| `tools/ipvs-diff report --items FILE` | also every item with its status and reason, into FILE | "
          "the same |",
          "| `tools/ipvs-diff report --lab` | also every golden's scenario, unchanged, in the namespace lab (root); "
          "the lab's table is printed, not committed | 5-10 min |",
          "| `tools/ipvs-diff run SCENARIO.sh` | one scenario on both backends: a fresh kernel VM run if "
          "`tools/ipvs-kernel build` works (else the golden), the lab if root (else offline); prints every item | "
          "VM 45-50 s per small scenario, lab 10-30 s |",
          "| `tools/ipvs-diff run tests/kernel/scenarios_pyipvs/fresh_example.sh` | a scenario written for no "
          "golden (wrr 3:1:2, held connections, a weight set to 0, a persistent service on a mapped port), on "
          "both live backends with one command | about 55 s |",
          "| `pytest tests/kernel/test_differential.py` | the offline comparison as tests (part of the ordinary test "
          "command) | about 4-6 s |", "",
          "## Backends and what each compares", "",
          "| backend | how | compares |", "| --- | --- | --- |",
          "| kernel | `tools/ipvs-kernel run` (qemu, Debian 6.1 kernel, ipvsadm 1.31), or the recorded golden | the reference |",
          "| offline | the scenario script under a recording stub (`ipvs_harness/diff/stub/oracle.sh`); "
          "rules, sysctls, transcripts and dumps played in-process; the traffic is the kernel's own "
          "capture fed to `ipvs.core.Director` in capture order, IPVS-side steps (`!sh ipvsadm`, "
          "snapshots, FTP sessions, TCP-walk dumps) between the frames they fell between; the clock is the "
          "frames' pcap time inside the captures and the guest's own stamps outside them (`clock.txt`, "
          "transcripts' `t`; see tests/kernel/README.md, Capture and timing), and PyIPVS's estimator runs "
          "when the kernel's traced one ran (`est-trace.txt`, `ipvs_harness/diff/esttrace.py`) | listings, /proc "
          "views, sysctls, transcripts, the server per request (`order.txt`), the TCP state walk's connection "
          "dumps, the transmitted frames at L3/L4 (`frames to real servers`, `frames to clients`); "
          "not `requests.txt`, server logs, FTP sessions as the client saw them |",
          "| lab | the same script with `ipvs_harness/diff/lab/oracle.sh`: namespaces `pyipvs-diff-PID-*`, "
          "veth only, `tools/ipvsd` on AF_PACKET, `tools/ipvsadm`, real sockets and tcpdump | everything the "
          "kernel run writes, pcaps excepted (ISNs, timestamps) |", "",
          "## Normalisation (all of it)", ""]
    doc = normalize.__doc__ or ""
    rules = doc.split("\n\n", 2)[2] if doc.count("\n\n") >= 2 else doc
    rules = re.sub(r":data:`(\w+)`", r"`\1`", rules).replace("``", "`")
    md.append("\n".join(line.strip() if not re.match(r"\d\.", line.strip()) else "\n" + line.strip()
                         for line in rules.strip().splitlines()).strip())
    md += ["", "Nothing else is normalised: counters, states, addresses, ports, flags, weights, "
           "error messages and exit codes are compared exactly.", "",
           "## Scenarios", "", "| scenario | equal | known | artefact | unexplained | not compared |",
           "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for s, v in per.items():
        md.append(f"| {s} | {v['equal']} | {v['known']} | {v['artefact']} | {v['different']} | "
                  f"{v['not compared']} |")
    md += ["", "## Known differences", "",
           "Listed in `ipvs_harness/diff/report.py` (`KNOWN_DIFFERENCES`).  Tags: **[pyipvs]** PyIPVS differs "
           "from the kernel; **[inherent]** no two kernel boots agree either; **[offline]** the offline "
           "backend cannot model it.  The tests fail when an entry stops matching a differing item.", ""]
    if KNOWN_DIFFERENCES:
        md += ["| scenario | items | reason |", "| --- | --- | --- |"]
        for (s, pat), why in KNOWN_DIFFERENCES.items():
            md.append(f"| {s} | `{_cell(pat)}` | {why} |")
    else:
        md.append("None: every item that differs is a recording artefact, explained below with its evidence.")
    md += ["", "## Recording artefacts", "",
           "Rules in `ARTEFACTS` that excuse an item only when the recording shows the artefact: the scenario's "
           "notes say a capture ended early or lacks a request, its `before-ipvsadm-Lnc.txt` is not empty, its "
           "own counters of one dump disagree, or the same frames or services came in another order.", "", "| evidence | items | reason |", "| --- | --- | --- |"]
    for key, pat, why in ARTEFACTS:
        md.append(f"| {key} | `{_cell(pat)}` | {why} |")
    if not items:
        return "\n".join(md) + "\n"
    md += ["", "## Every item", ""]
    for s in per:
        md += [f"### {s}", "", "| item | status | reason |", "| --- | --- | --- |"]
        for it, st, why in rows:
            if it.scenario == s:
                md.append(f"| `{it.name.replace('|', '/')}` | {st} | {why.replace('|', '/') if st != 'equal' else ''} |")
        for n in notes.get(s, []):
            md.append(f"| (note) | | {n.replace('|', '/')} |")
        md.append("")
    return "\n".join(md) + "\n"
