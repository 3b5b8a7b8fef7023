"""Stub of ipvs_harness/guest/ftp.py for the offline backend: records the call.

A client session becomes an ``ftp_client`` event (its control connection's
client address and port anchor it in the kernel's capture); the server
mode prints ``ready`` and exits.
"""

import os
import sys


def main(argv: list[str]) -> int:
    with open(os.environ["DIFF_EVENTS"], "a") as f:
        f.write("\t".join(["ftp_" + (argv[0] if argv else "?"), *argv[1:]]) + "\n")
    if argv and argv[0] == "server":
        print("ready", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
