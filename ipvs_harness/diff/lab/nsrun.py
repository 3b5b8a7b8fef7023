"""Run one of ipvs_harness/guest's Python helpers in the PyIPVS namespace lab.

The kernel-side helpers name their namespaces ``cli`` and ``rsK``; the lab
names them ``$PYIPVS_DIFF_PREFIX`` + that name, so that several runs and the
host never collide.  This wrapper renames through ``nsutil.netns`` and then
runs the helper unchanged::

    python3 nsrun.py client.py 0.05 < steps
"""

from __future__ import annotations

import builtins
import io
import os
import re
import runpy
import subprocess
import sys

KLIB = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "guest"))


HERE = os.path.dirname(os.path.abspath(__file__))
CTL = os.path.join(HERE, "ctl.py")
#: Shell commands on the kernel's /proc files, as the daemon's socket answers them.
_SH_REWRITES = (
    (re.compile(r"echo\s+(-?\d+)\s*>\s*/proc/sys/net/ipv4/vs/(\w+)"), rf"python3 {CTL} sysctl \2 \1"),
    (re.compile(r"cat\s+/proc/sys/net/ipv4/vs/(\w+)"), rf"python3 {CTL} sysctl-get \1"),
    (re.compile(r"cat\s+/proc/net/(ip_vs\w*)"), rf"python3 {CTL} proc \1"),
)


def rewrite_sh(cmd: str) -> str:
    """A shell command with its /proc/net/ip_vs* and net.ipv4.vs accesses
    sent to the lab's daemon (this host's kernel has no IPVS)."""
    for pat, repl in _SH_REWRITES:
        cmd = pat.sub(repl, cmd)
    return cmd


def patch() -> None:
    prefix = os.environ["PYIPVS_DIFF_PREFIX"]
    sys.path.insert(0, KLIB)
    import nsutil

    inner = nsutil.netns

    def netns(name):
        return inner(prefix + name if name else name)

    nsutil.netns = netns

    # Reads of /proc/net/ip_vs* come from the daemon.
    real_open = builtins.open

    def proc_open(file, mode="r", *args, **kwargs):
        if isinstance(file, str) and file.startswith("/proc/net/ip_vs") and "w" not in mode and "b" not in mode:
            out = subprocess.run([sys.executable, CTL, "proc", file.rsplit("/", 1)[1]], capture_output=True,
                                 text=True, check=True).stdout
            return io.StringIO(out)
        return real_open(file, mode, *args, **kwargs)

    builtins.open = proc_open

    real_run = subprocess.run

    def run(args, *a, **kw):
        if kw.get("shell") and isinstance(args, str):
            args = rewrite_sh(args)
        return real_run(args, *a, **kw)

    subprocess.run = run


def run(script: str) -> None:
    patch()
    path = os.path.join(KLIB, script)
    sys.argv[0] = path
    runpy.run_path(path, run_name="__main__")


if __name__ == "__main__":
    run(sys.argv.pop(1))
