"""Guest clock stamps for the offline model (runs in the VM).

The packet captures carry the guest's ``CLOCK_REALTIME`` (tcpdump's pcap
timestamps); what happens outside them - a listing, a ``!sh`` step, a
``dump`` of a TCP walk - is stamped with the same clock in ``$OUT/clock.txt``
(one ``SECONDS<TAB>KIND<TAB>WHAT`` line each, taken just before the step
starts), so the offline backend (ipvs_harness/diff/offline.py) knows when
each step ran instead of modelling the VM's speed.  oracle.sh writes the
same lines for the files it dumps (kind ``file``).
"""

from __future__ import annotations

import os
import time

#: A bash prologue that stamps every simple command as it starts (kind
#: ``cmd``, WHAT the command's text as bash prints it), at no process cost.
STAMP_EACH_COMMAND = (
    "trap 'printf \"%s\\tcmd\\t%s\\n\" \"$EPOCHREALTIME\" \"$BASH_COMMAND\" >> \"$OUT/clock.txt\"' DEBUG\n"
)


def mark(kind: str, what: str, out: str | None = None) -> None:
    """Append a stamp for ``kind`` ``what`` to ``OUT/clock.txt`` (no-op without OUT)."""
    out = out or os.environ.get("OUT")
    if not out:
        return
    line = " ".join(what.split())  # one line, tab-free
    with open(os.path.join(out, "clock.txt"), "a") as f:
        f.write(f"{time.time():.6f}\t{kind}\t{line}\n")
