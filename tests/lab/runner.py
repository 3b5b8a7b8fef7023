"""A minimal director for the lab: a Director, rules set in-process, the AF_PACKET driver.

Used by the lab tests and ``tools/ipvs-lab`` when ``tools/ipvsd`` is not
there.  Rules are ipvsadm-like lines (a subset: ``-A -t|-u ADDR:PORT [-s
SCHED] [-p [T]]`` and ``-a -t|-u ADDR:PORT -r ADDR:PORT -m [-w W]``) in a
file; the driver options are ``tools/ipvsd``'s (``ipvs.driver.afpacket``).
It runs under :class:`ipvs.daemon.Daemon`, so the control socket and the
``/proc`` snapshot directory work as with the real daemon.

    python3 tests/lab/runner.py --rules FILE --procfs DIR --socket PATH -- DRIVER-OPTIONS
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from ipvs import ctl, uapi  # noqa: E402
from ipvs.core import Director  # noqa: E402
from ipvs.daemon import Daemon  # noqa: E402
from ipvs.driver import afpacket  # noqa: E402
from ipvs.netns import NetnsIPVS  # noqa: E402


def _addr(text: str) -> tuple[bytes, int]:
    host, _, port = text.rpartition(":")
    return ctl.parse_addr(uapi.AF_INET, host), int(port)


def apply_rules(ipvs: NetnsIPVS, lines: list[str]) -> None:
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        p = argparse.ArgumentParser(exit_on_error=False, add_help=False)
        p.add_argument("-A", action="store_true")
        p.add_argument("-a", action="store_true")
        p.add_argument("-t")
        p.add_argument("-u")
        p.add_argument("-s", default="wlc")
        p.add_argument("-p", nargs="?", const=300, type=int, default=0)
        p.add_argument("-r")
        p.add_argument("-m", action="store_true")
        p.add_argument("-w", type=int, default=1)
        a = p.parse_args(shlex.split(line))
        proto = uapi.IPPROTO_TCP if a.t else uapi.IPPROTO_UDP
        vaddr, vport = _addr(a.t or a.u)
        su = ctl.ServiceUser(protocol=proto, addr=vaddr, port=vport, sched_name=a.s,
                             flags=uapi.IP_VS_SVC_F_PERSISTENT if a.p else 0, timeout=a.p or 0)
        if a.A:
            ctl.add_service(ipvs, su)
        elif a.a:
            raddr, rport = _addr(a.r)
            ctl.add_dest(ipvs, su, ctl.DestUser(addr=raddr, port=rport, weight=a.w,
                                                conn_flags=uapi.IP_VS_CONN_F_MASQ))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rules")
    p.add_argument("--procfs")
    p.add_argument("--socket")
    p.add_argument("-v", "--verbose", action="store_true")
    afpacket.add_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(message)s")
    ipvs = NetnsIPVS()
    director = Director(ipvs)
    if args.rules:
        with open(args.rules) as f:
            apply_rules(ipvs, f.read().splitlines())
    drv = afpacket.from_args(args, director)
    daemon = Daemon(ipvs, director, socket_path=args.socket, driver=drv, procfs_dir=args.procfs,
                    procfs_interval=0.5)
    daemon.install_signal_handlers()
    daemon.start()
    print("ready", flush=True)
    try:
        daemon.run()
    finally:
        logging.getLogger("ipvs.driver").info("counters %s", drv.counters() if drv else {})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
