"""Run one of tests/kernel/lib's Python helpers in the PyIPVS namespace lab.

The kernel-side helpers name their namespaces ``cli`` and ``rsK``; the lab
names them ``$PYIPVS_DIFF_PREFIX`` + that name, so that several runs and the
host never collide.  This wrapper renames through ``nsutil.netns`` and then
runs the helper unchanged::

    python3 nsrun.py client.py 0.05 < steps
"""

from __future__ import annotations

import os
import runpy
import sys

KLIB = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "lib"))


def patch() -> None:
    prefix = os.environ["PYIPVS_DIFF_PREFIX"]
    sys.path.insert(0, KLIB)
    import nsutil

    inner = nsutil.netns

    def netns(name):
        return inner(prefix + name if name else name)

    nsutil.netns = netns


def run(script: str) -> None:
    patch()
    path = os.path.join(KLIB, script)
    sys.argv[0] = path
    runpy.run_path(path, run_name="__main__")


if __name__ == "__main__":
    run(sys.argv.pop(1))
