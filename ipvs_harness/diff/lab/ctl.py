"""The lab's stand-in for /proc reads and sysctl writes: the daemon's socket.

    python3 ctl.py proc NAME            print /proc/net/NAME (GET_PROC)
    python3 ctl.py sysctl-dump          print PATH:VALUE lines like oracle.sh's dump_sysctl
    python3 ctl.py sysctl NAME VALUE    set net.ipv4.vs.NAME
    python3 ctl.py sysctl-get NAME      print net.ipv4.vs.NAME
    python3 ctl.py dump PREFIX_PATH     every /proc view and the sysctls into PREFIX_PATH*

The socket is ``$IPVS_SOCKET``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")))

from ipvs import procfs  # noqa: E402
from ipvs.client import Client  # noqa: E402

PROC = ("ip_vs", "ip_vs_conn", "ip_vs_conn_sync", "ip_vs_stats", "ip_vs_stats_percpu", "ip_vs_app")


def proc(c: Client, name: str) -> str:
    r = c.call({"version": 1, "cmd": "GET_PROC", "name": name})
    if not r.get("ok"):
        raise SystemExit(f"ctl.py: GET_PROC {name}: {r.get('message', r)}")
    return r["text"]


def sysctls(c: Client) -> str:
    # The files /proc/sys/net/ipv4/vs/ would hold: what ipvs.procfs renders.
    r = c.call({"version": 1, "cmd": "GET_SYSCTL"})
    if not r.get("ok"):
        raise SystemExit(f"ctl.py: GET_SYSCTL: {r.get('message', r)}")
    vals = {k: v for k, v in (r.get("sysctls") or {}).items() if k not in procfs.NOT_SYSCTLS}
    vals.update(procfs.INERT_SYSCTLS)
    return "".join(f"/proc/sys/net/ipv4/vs/{k}:{vals[k]}\n" for k in sorted(vals))


def main(argv: list[str]) -> int:
    c = Client(path=os.environ.get("IPVS_SOCKET"))
    if argv[0] == "proc":
        sys.stdout.write(proc(c, argv[1]))
    elif argv[0] == "sysctl-dump":
        sys.stdout.write(sysctls(c))
    elif argv[0] == "sysctl-get":
        r = c.call({"version": 1, "cmd": "GET_SYSCTL", "name": argv[1]})
        if not r.get("ok"):
            print(f"cat: /proc/sys/net/ipv4/vs/{argv[1]}: No such file or directory", file=sys.stderr)
            return 1
        print(r["value"])
    elif argv[0] == "sysctl":
        r = c.call({"version": 1, "cmd": "SET_SYSCTL", "name": argv[1], "value": int(argv[2])})
        if not r.get("ok"):
            print(f"ctl.py: sysctl {argv[1]}={argv[2]}: {r}", file=sys.stderr)
            return 1
    elif argv[0] == "dump":
        p = argv[1]
        for n in PROC:
            with open(f"{p}proc-net-{n}.txt", "w") as f:
                f.write(proc(c, n))
        with open(f"{p}sysctl-net.ipv4.vs.txt", "w") as f:
            f.write(sysctls(c))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
