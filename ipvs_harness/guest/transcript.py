"""Record a command transcript: argv, stdin, stdout, stderr and exit code.

Usage: ``python3 transcript.py OUTBASE < commands`` writes
``OUTBASE.jsonl`` (one JSON object per command, the golden) and
``OUTBASE.txt`` (the same for humans).

Input, one command per line, split with shlex (no shell: the argv is
recorded exactly as run):

* ``ipvsadm -A -t 203.0.113.5:80`` - run it;
* ``ipvsadm -R <<< "JSON string"`` - run it with that text on stdin;
* ``# text`` - starts a new section; following records carry
  ``"section": "text"``;
* blank lines are ignored.

Commands run one after another against the same IPVS table, so replaying
the transcript in order on another implementation must give the same
results.  JSON record fields: ``n`` (1-based), ``section``, ``cmd`` (the
line as written, without the stdin part), ``argv``, ``stdin`` (null when
none: stdin is then empty), ``stdout``, ``stderr``, ``rc``, and ``t``: the
guest's realtime clock (seconds, the pcap timestamps' clock) just before
the command started, for the offline model's clock (timers in listings).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time


def entries(lines):
    """The input's lines as ``(section, cmd, argv, stdin)``, blank lines left out.

    A ``# text`` line yields ``(text, None, None, None)``: the section
    starts there.  A command yields the current section, the line without
    its stdin part, the shlex-split argv and the stdin text (None when
    none).  The offline backend reads transcripts with this too, so both
    sides agree on the grammar.
    """
    section = ""
    for raw in lines:
        line = raw.rstrip("\n")
        if not line.strip():
            continue
        if line.lstrip().startswith("#"):
            section = line.lstrip()[1:].strip()
            yield section, None, None, None
            continue
        stdin = None
        cmd = line
        if " <<< " in line:
            cmd, _, payload = line.partition(" <<< ")
            stdin = json.loads(payload)
        yield section, cmd, shlex.split(cmd), stdin


def main(argv: list[str]) -> int:
    base = argv[0]
    env = dict(os.environ, LC_ALL="C", LANG="C")
    n = 0
    with open(base + ".jsonl", "w") as js, open(base + ".txt", "w") as txt:
        for section, cmd, args, stdin in entries(sys.stdin):
            if cmd is None:
                txt.write(f"\n## {section}\n")
                continue
            n += 1
            t = time.time()
            p = subprocess.run(args, input=(stdin or "").encode(),
                               capture_output=True, env=env, check=False)
            rec = {
                "n": n, "section": section, "cmd": cmd, "argv": args, "stdin": stdin,
                "stdout": p.stdout.decode(errors="surrogateescape"),
                "stderr": p.stderr.decode(errors="surrogateescape"),
                "rc": p.returncode, "t": round(t, 6),
            }
            js.write(json.dumps(rec, ensure_ascii=False) + "\n")
            txt.write(f"$ {cmd}\n")
            if stdin is not None:
                txt.write("".join(f"< {ln}\n" for ln in stdin.splitlines()))
            txt.write("".join(f"1| {ln}\n" for ln in rec["stdout"].splitlines()))
            txt.write("".join(f"2| {ln}\n" for ln in rec["stderr"].splitlines()))
            txt.write(f"rc={p.returncode}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
