"""ipvs-diff: differential comparison of PyIPVS with the kernel's IPVS.

    ipvs-diff run SCENARIO.sh [--kernel auto|vm|golden | --kernel-dir DIR] [--pyipvs auto|lab|offline] [--out DIR]
    ipvs-diff report [--text FILE] [--doc FILE] [--items FILE] [--quiet] [--lab]

``run`` runs one scenario script on both backends and prints the
comparison, item by item.  The kernel side is a fresh VM run
(``tools/ipvs-kernel run``) when ``tools/ipvs-kernel build`` works here,
else the scenario's recorded golden (``tests/kernel/goldens/NAME``).  The
PyIPVS side is the namespace lab (``tools/ipvsd`` on AF_PACKET; needs root)
when it can run, else the offline backend, which replays the kernel run's
own captures.  Items that differ are "known" when KNOWN_DIFFERENCES
(ipvs_harness/diff/report.py) explains them; the exit status is 0 when no
other item differs.

``report`` compares every recorded golden with the offline backend (no VM,
no lab), prints the summary and writes the committed summary page
``docs/differential.md`` (``--items FILE``: every item too); items listed
in KNOWN_DIFFERENCES (ipvs_harness/diff/report.py) are reported
with their reason.  See docs/differential.md for the rules.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from ipvs_harness import ROOT
from ipvs_harness.diff import lab, normalize, offline, report
from ipvs_harness.diff.compare import compare_dirs


def log(msg: str) -> None:
    print(f"ipvs-diff: {msg}", file=sys.stderr, flush=True)


def kernel_vm_works() -> bool:
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "ipvs-kernel"), "build"],
                       capture_output=True, text=True, timeout=1800)
    return r.returncode == 0


def run(args) -> int:
    scen = os.path.abspath(args.scenario)
    if not os.path.isfile(scen):
        # A bare name: the suite's scenarios, then ours.
        for d in ("scenarios", "scenarios_pyipvs"):
            cand = os.path.join(ROOT, "tests", "kernel", d, args.scenario.removesuffix(".sh") + ".sh")
            if os.path.isfile(cand):
                scen = cand
                break
        else:
            log(f"no scenario {args.scenario!r} (a path, or a name under tests/kernel/scenarios*/)")
            return 2
    name = os.path.basename(scen)[:-3] if scen.endswith(".sh") else os.path.basename(scen)
    out = args.out or tempfile.mkdtemp(prefix=f"pyipvs-diff-{name}-")
    kdir, pdir = os.path.join(out, "kernel"), os.path.join(out, "pyipvs")
    for d in (kdir, pdir):
        if not (args.kernel_dir and os.path.abspath(args.kernel_dir) == os.path.abspath(d)):
            shutil.rmtree(d, ignore_errors=True)
    golden = os.path.join(report.GOLDENS, name)
    t0 = time.monotonic()
    # Kernel side.
    kmode = args.kernel
    if args.kernel_dir:
        kmode, kdir = "dir", os.path.abspath(args.kernel_dir)
        log(f"kernel: the earlier run in {kdir}")
    elif kmode == "auto":
        kmode = "vm" if kernel_vm_works() else "golden"
    if kmode == "vm":
        log(f"kernel: tools/ipvs-kernel run {scen} (qemu, about 30-60 s)")
        r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "ipvs-kernel"), "run", scen, kdir])
        if r.returncode != 0:
            log(f"kernel run failed (rc={r.returncode}); see {kdir}/scenario.log")
            return 2
    elif kmode == "golden":
        if not os.path.isdir(golden):
            log(f"no VM here and no golden {golden}: nothing to compare with")
            return 2
        log(f"kernel: the recorded golden {golden}")
        kdir = golden
    tk = time.monotonic() - t0
    # PyIPVS side.
    pmode = args.pyipvs
    if pmode == "auto":
        pmode = "lab" if lab.available() is None else "offline"
    t1 = time.monotonic()
    if pmode == "lab":
        log("pyipvs: namespace lab, tools/ipvsd on AF_PACKET")
        rc = lab.run_lab(scen, pdir)
        if rc != 0:
            log(f"the scenario failed on PyIPVS (rc={rc}); see {pdir}/scenario.log")
        skip = lab.CANNOT
        extra = []
        tol = normalize.LIVE_EXPIRE_TOLERANCE_S
    else:
        log("pyipvs: offline (the kernel run's captures through the core)")
        o = offline.run_offline(scen, kdir, pdir, name)
        skip = offline.CANNOT
        extra = o.items
        tol = normalize.EXPIRE_TOLERANCE_S
        for n in o.notes:
            log(f"note: {n}")
    tp = time.monotonic() - t1
    items = compare_dirs(name, kdir, pdir, skip=skip, tolerance=tol) + extra
    # Differences the two runs themselves explain (frames or services reordered by the kernel).
    report.apply_artefacts(items, report.kernel_evidence(kdir, offline=pmode != "lab"))
    width = min(max((len(i.name) for i in items), default=10), 60)
    rows = report.classify(items)
    for it, st, why in rows:
        print(f"{st:<12} {it.name:<{width}}  {why if st != 'equal' else ''}".rstrip())
    count = {k: sum(1 for _, st, _ in rows if st == k) for k in report.STATUSES}
    compared = count["equal"] + count["known"] + count["artefact"] + count["different"]
    print(f"\n{name}: kernel ({kmode}) vs pyipvs ({pmode}): {compared} items compared, {count['equal']} equal, "
          f"{count['known']} known differences, {count['artefact']} run artefacts, {count['different']} different, "
          f"{count['not compared']} not "
          f"compared; kernel {tk:.1f} s, pyipvs {tp:.1f} s; outputs in {out}")
    return 0 if count["different"] == 0 else 1


def do_report(args) -> int:
    rows, notes, secs = report.full_report()
    stale = report.stale_known([r[0] for r in rows])
    text = report.text_report(rows, notes, secs, verbose=not args.quiet, stale=stale)
    print(text if not args.quiet else text.split("\n\n")[0] + "\n" + text.split("\n\n")[1])
    if args.text:
        with open(args.text, "w") as f:
            f.write(report.text_report(rows, notes, secs, stale=stale))
    lab_md = ""
    if args.lab:
        why = lab.available()
        if why:
            log(f"--lab: the namespace lab cannot run here ({why})")
        else:
            t0 = time.monotonic()
            results, times = report.lab_report(log=log)
            lab_md = report.lab_text(results, times) + f"\nLab run of every golden: {time.monotonic() - t0:.0f} s.\n"
            print(lab_md)
    if args.doc:
        # The committed summary: no item list, no timings of this machine.
        with open(args.doc, "w") as f:
            f.write(report.markdown(rows, notes))
        log(f"wrote {args.doc}")
    if args.items:
        with open(args.items, "w") as f:
            f.write(report.markdown(rows, notes, secs, items=True) + lab_md)
        log(f"wrote every item to {args.items}")
    bad = [r for r in rows if r[1] == "different"]
    return 1 if bad or stale else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ipvs-diff", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run one scenario on both backends and compare")
    r.add_argument("scenario")
    r.add_argument("--kernel", choices=("auto", "vm", "golden"), default="auto")
    r.add_argument("--kernel-dir", help="compare with this earlier kernel run (a golden or an --out DIR/kernel)")
    r.add_argument("--pyipvs", choices=("auto", "lab", "offline"), default="auto")
    r.add_argument("--out", help="keep both runs' outputs here (default: a new temporary directory)")
    p = sub.add_parser("report", help="every golden against the offline backend; writes docs/differential.md")
    p.add_argument("--text", help="also write the full text report here")
    p.add_argument("--doc", default=report.DOC, help="the markdown page (default docs/differential.md; '' for none)")
    p.add_argument("--items", metavar="FILE", help="also write every item with its status here (markdown)")
    p.add_argument("--quiet", action="store_true", help="print the summary table only")
    p.add_argument("--lab", action="store_true",
                   help="also run every golden's scenario in the namespace lab (root; minutes)")
    args = ap.parse_args(argv)
    return run(args) if args.cmd == "run" else do_report(args)


if __name__ == "__main__":
    sys.exit(main())
