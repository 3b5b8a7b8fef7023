"""Stub of ipvs_harness/guest/tcpcraft.py for the offline backend: records the
step script (stdin) as a ``tcpcraft OUTBASE`` event."""

import os
import sys


def main(argv: list[str]) -> int:
    lines = sys.stdin.read().splitlines()
    with open(os.environ["DIFF_EVENTS"], "a") as f:
        f.write("tcpcraft\t" + os.path.basename(argv[0]) + "\n")
        f.writelines(f"+\t{line}\n" for line in lines)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
