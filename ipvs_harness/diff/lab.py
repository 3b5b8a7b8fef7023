"""The live PyIPVS backend: a scenario script in a namespace lab on this host.

:func:`run_lab` runs a scenario script, unchanged, with ``LIB`` pointing at
``ipvs_harness/diff/lab/`` (an ``oracle.sh`` with the kernel library's
functions, built on network namespaces named ``pyipvs-diff-PID-*``, veth
pairs only, the lab addresses, ``tools/ipvsd`` on AF_PACKET as the director
and ``tools/ipvsadm`` as ``ipvsadm``).  The script writes the kernel run's
file names into the output directory.  Whatever happens, every process the
run started (listed in its run directory, and anything left inside its
namespaces) is stopped by PID and every namespace is deleted.

Needs root, ``ip``, ``tcpdump`` and ``ethtool``; :func:`available` says
whether this host can run it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LABLIB = os.path.join(HERE, "lab")
from ipvs_harness import ROOT, sandbox  # noqa: E402
from ipvs_harness.lab import stop_pid  # noqa: E402

#: Files a lab run cannot write the way the kernel run does, with the reason.
CANNOT = {
    r".*\.pcap": "captures hold real sockets' ISNs and timestamps: not compared",
}


def available() -> str | None:
    """None when the lab can run here, else why not."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "tcpdump", "ethtool", "bash"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


def _namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip() and line.split()[0].startswith(prefix)]


def teardown(prefix: str, rundir: str, spare: int | None = None) -> None:
    """Stop the run's processes by PID (all but ``spare``) and delete its namespaces."""
    pids = []
    try:
        with open(os.path.join(rundir, "pids")) as f:
            pids = [int(x) for x in f.read().split() if x.isdigit()]
    except OSError:
        pass
    # The director last: the servers and captures first, so nothing waits on it.
    for pid in reversed(pids):
        if pid != spare:
            stop_pid(pid, grace=3.0)
    for ns in _namespaces(prefix):
        r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        for tok in r.stdout.split():
            if tok.isdigit():
                stop_pid(int(tok), grace=1.0)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def run_lab(scenario_sh: str, outdir: str, timeout: float = 900) -> int:
    """Run ``scenario_sh`` on PyIPVS in a fresh namespace lab; return its exit status."""
    why = available()
    if why:
        raise RuntimeError(f"the PyIPVS lab cannot run here: {why}")
    os.makedirs(outdir, exist_ok=True)
    prefix = f"pyipvs-diff-{os.getpid()}-"
    rundir = tempfile.mkdtemp(prefix="pyipvs-diff-")
    bindir = os.path.join(rundir, "bin")
    os.makedirs(bindir)
    with open(os.path.join(bindir, "ipvsadm"), "w") as f:
        f.write(f'#!/bin/sh\nexec python3 "{ROOT}/tools/ipvsadm" "$@"\n')
    os.chmod(os.path.join(bindir, "ipvsadm"), 0o755)
    # Scenarios name the kernel lab's namespaces (ip netns exec cli ...):
    # map those names to this run's.
    real_ip = shutil.which("ip") or "/usr/sbin/ip"
    with open(os.path.join(bindir, "ip"), "w") as f:
        f.write("#!/bin/sh\n"
                'if [ "$1" = netns ] && [ "$2" = exec ]; then case "$3" in cli|rs[0-9]*) ns=$3; shift 3; '
                f'exec {real_ip} netns exec "$PYIPVS_DIFF_PREFIX$ns" "$@";; esac; fi\n'
                'if [ "$1" = -n ]; then case "$2" in cli|rs[0-9]*) ns=$2; shift 2; '
                f'exec {real_ip} -n "$PYIPVS_DIFF_PREFIX$ns" "$@";; esac; fi\n'
                f'exec {real_ip} "$@"\n')
    os.chmod(os.path.join(bindir, "ip"), 0o755)
    if shutil.which("iptables") is None:
        # This host has only nftables: the lab's translation of the rule forms scenarios use.
        os.symlink(os.path.join(LABLIB, "iptables"), os.path.join(bindir, "iptables"))
    shutil.copy(scenario_sh, os.path.join(outdir, "scenario.sh"))
    env = dict(os.environ, OUT=os.path.abspath(outdir), LIB=LABLIB, PYIPVS_DIFF_PREFIX=prefix,
               PYIPVS_DIFF_RUN=rundir, IPVS_SOCKET=os.path.join(rundir, "ctl.sock"),
               PATH=f"{bindir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
               NAME=os.path.basename(scenario_sh)[:-3], LC_ALL="C", LANG="C", PYTHONPATH=ROOT)
    t0 = time.monotonic()
    rc = 124
    try:
        with open(os.path.join(outdir, "scenario.log"), "w") as log:
            # In a mount namespace of its own with a private /etc (the script
            # may edit /etc/hosts); its network namespaces live in that mount
            # namespace, so the run removes them there before it ends.
            inner = ["bash", "-c", 'bash -o pipefail "$1"; rc=$?; python3 -m ipvs_harness.diff.lab teardown '
                     '"$PYIPVS_DIFF_PREFIX" "$PYIPVS_DIFF_RUN"; exit $rc', "scenario", os.path.abspath(scenario_sh)]
            p = subprocess.Popen(sandbox.wrap(inner, rundir), cwd=rundir, env=env,
                                 stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
            with open(os.path.join(rundir, "pids"), "a") as f:
                f.write(f"{p.pid}\n")
            try:
                rc = p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=10)
            sandbox.check(p)
    finally:
        if os.path.exists(os.path.join(rundir, "ipvsd.log")):
            shutil.copy(os.path.join(rundir, "ipvsd.log"), os.path.join(outdir, "ipvsd.log"))
        teardown(prefix, rundir)
        shutil.rmtree(rundir, ignore_errors=True)
    with open(os.path.join(outdir, "rc"), "w") as f:
        f.write(f"{rc}\n")
    with open(os.path.join(outdir, "duration_s"), "w") as f:
        f.write(f"{time.monotonic() - t0:.1f}\n")
    return rc


if __name__ == "__main__":
    # python3 -m ipvs_harness.diff.lab teardown PREFIX RUNDIR (run_lab's own, inside its mount namespace)
    if len(sys.argv) == 4 and sys.argv[1] == "teardown":
        teardown(sys.argv[2], sys.argv[3], spare=os.getppid())  # not the run's own shell
    else:
        sys.exit("usage: python3 -m ipvs_harness.diff.lab teardown PREFIX RUNDIR")
