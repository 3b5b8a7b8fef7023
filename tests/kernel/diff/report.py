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

from tests.kernel.diff.compare import DIFFERENT, EQUAL, Item, compare_dirs
from tests.kernel.diff.offline import CANNOT, OfflineRun

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
GOLDENS = os.path.join(ROOT, "tests", "kernel", "goldens")
DOC = os.path.join(ROOT, "docs", "differential.md")

#: (scenario, item regular expression) -> reason.  Every item of the
#: offline comparison that differs must match one entry; every entry must
#: match at least one differing item.
KNOWN_DIFFERENCES: dict[tuple[str, str], str] = {}


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
        run = OfflineRun(os.path.join(g, "scenario.sh"), g, out, name)
        run.run()
        items = compare_dirs(name, g, out, skip=CANNOT) + run.items
    return items, run.notes


def known_reason(item: Item) -> str | None:
    for (scen, pat), why in KNOWN_DIFFERENCES.items():
        if scen == item.scenario and re.fullmatch(pat, item.name):
            return why
    return None


def classify(items: list[Item]) -> list[tuple[Item, str, str]]:
    """(item, status, reason) for the report."""
    out = []
    for it in items:
        why = known_reason(it)
        if it.status == EQUAL:
            out.append((it, "fixed" if why else "equal", why or it.detail))
        elif it.status == DIFFERENT:
            out.append((it, "known" if why else "different", (why + " -- " if why else "") + it.detail))
        else:
            out.append((it, "not compared", it.detail))
    return out


def stale_known(items: list[Item]) -> list[tuple[str, str]]:
    """KNOWN_DIFFERENCES entries that match no differing item any more."""
    diff = [it for it in items if it.status == DIFFERENT]
    return [k for k in KNOWN_DIFFERENCES
            if not any(it.scenario == k[0] and re.fullmatch(k[1], it.name) for it in diff)
            and any(it.scenario == k[0] for it in items)]


def full_report(names: list[str] | None = None) -> tuple[list[tuple[Item, str, str]], dict[str, list[str]], float]:
    t0 = time.monotonic()
    rows: list[tuple[Item, str, str]] = []
    notes: dict[str, list[str]] = {}
    for name in names or golden_names():
        items, n = golden_items(name)
        rows.extend(classify(items))
        notes[name] = n
    return rows, notes, time.monotonic() - t0


STATUSES = ("equal", "known", "different", "fixed", "not compared")


def summary(rows: list[tuple[Item, str, str]]) -> dict[str, dict[str, int]]:
    per: dict[str, dict[str, int]] = {}
    for it, st, _ in rows:
        per.setdefault(it.scenario, dict.fromkeys(STATUSES, 0))[st] += 1
    return per


def text_report(rows, notes, seconds: float, verbose: bool = True) -> str:
    per = summary(rows)
    tot = dict.fromkeys(STATUSES, 0)
    for v in per.values():
        for k in STATUSES:
            tot[k] += v[k]
    compared = tot["equal"] + tot["known"] + tot["different"] + tot["fixed"]
    out = [f"PyIPVS vs kernel 6.1 goldens (offline backend): {len(per)} scenarios, {compared} items compared "
           f"({tot['equal']} equal, {tot['known']} known differences, {tot['different']} unexplained, "
           f"{tot['fixed']} fixed), {tot['not compared']} not comparable offline; {seconds:.1f} s", ""]
    out.append(f"{'scenario':<18} {'equal':>6} {'known':>6} {'diff':>6} {'fixed':>6} {'n/c':>6}")
    for s, v in per.items():
        out.append(f"{s:<18} {v['equal']:>6} {v['known']:>6} {v['different']:>6} {v['fixed']:>6} {v['not compared']:>6}")
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


def markdown(rows, notes, seconds: float) -> str:
    from tests.kernel.diff import normalize

    per = summary(rows)
    tot = dict.fromkeys(STATUSES, 0)
    for v in per.values():
        for k in STATUSES:
            tot[k] += v[k]
    compared = tot["equal"] + tot["known"] + tot["different"] + tot["fixed"]
    md = ["# Differential report: PyIPVS against kernel IPVS 6.1", "",
          "<!-- generated by `tools/ipvs-diff report`; do not edit by hand -->", "",
          "Every golden recorded from the real kernel (`tests/kernel/goldens/`, see "
          "`tests/kernel/README.md`) is re-run on PyIPVS and compared item by item.  This page is "
          "the report of the **offline** backend, the one the ordinary test command runs "
          "(`tests/kernel/test_differential.py`): no VM, no namespaces.  "
          "`tools/ipvs-diff run SCENARIO.sh` runs one scenario on the live backends instead "
          "(kernel VM and the PyIPVS namespace lab) and compares those.", "",
          f"**{compared} items compared in {len(per)} scenarios: {tot['equal']} equal, "
          f"{tot['known']} known differences (explained below), {tot['different']} unexplained, "
          f"{tot['fixed']} fixed-but-still-listed; {tot['not compared']} items the offline backend "
          f"cannot produce.**  Full compare: {seconds:.1f} s.", "",
          "## Backends and what each compares", "",
          "| backend | how | compares |", "| --- | --- | --- |",
          "| kernel | `tools/ipvs-kernel run` (qemu, Debian 6.1 kernel, ipvsadm 1.31), or the recorded golden | the reference |",
          "| offline | the scenario script under a recording stub (`tests/kernel/diff/stub/oracle.sh`); "
          "rules, sysctls, transcripts and dumps played in-process; the traffic is the kernel's own "
          "capture fed to `ipvs.core.Director` in capture order, IPVS-side steps (`!sh ipvsadm`, "
          "snapshots) between the frames they fell between | listings, /proc views, sysctls, "
          "transcripts, the server per request (`order.txt`), the transmitted frames at L3/L4 "
          "(`frames to real servers`, `frames to clients`); not `requests.txt`, server logs, FTP sessions |",
          "| lab | the same script with `tests/kernel/diff/lab/oracle.sh`: namespaces `pyipvs-diff-PID-*`, "
          "veth only, `tools/ipvsd` on AF_PACKET, `tools/ipvsadm`, real sockets and tcpdump | everything the "
          "kernel run writes, pcaps excepted (ISNs, timestamps) |", "",
          "## Normalisation (all of it)", ""]
    doc = normalize.__doc__ or ""
    rules = doc.split("\n\n", 2)[2] if doc.count("\n\n") >= 2 else doc
    md.append(rules.strip().replace("    ", "").replace(":data:`EXPIRE_TOLERANCE_S`",
                                                          f"`EXPIRE_TOLERANCE_S` = {normalize.EXPIRE_TOLERANCE_S}"))
    md += ["", "Nothing else is normalised: counters, states, addresses, ports, flags, weights, "
           "error messages and exit codes are compared exactly.", "",
           "## Scenarios", "", "| scenario | equal | known | unexplained | fixed | not compared |",
           "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for s, v in per.items():
        md.append(f"| {s} | {v['equal']} | {v['known']} | {v['different']} | {v['fixed']} | {v['not compared']} |")
    md += ["", "## Known differences", ""]
    if KNOWN_DIFFERENCES:
        md += ["| scenario | items | reason |", "| --- | --- | --- |"]
        for (s, pat), why in KNOWN_DIFFERENCES.items():
            md.append(f"| {s} | `{pat}` | {why} |")
    else:
        md.append("None.")
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
