"""ipvs-sysctl: read and change a PyIPVS director's net.ipv4.vs settings at run time.

The ``sysctl(8)`` of PyIPVS: the settings live in the ``ipvsd`` process, not
in /proc/sys, so this tool asks the director over its control socket
(GET_SYSCTL / SET_SYSCTL of the message schema, ipvs/netlink.py)::

    ipvs-sysctl -a                          every setting
    ipvs-sysctl net.ipv4.vs.sloppy_tcp      one setting (the prefix is optional)
    ipvs-sysctl -n expire_nodest_conn       the value only
    ipvs-sysctl net.ipv4.vs.sloppy_tcp=1    change one (or several) at run time

Names are the kernel's sysctl names (net.ipv4.vs.NAME, net/ipv4/vs/NAME or
just NAME).  The connection-sync settings (sync_*) are shown with the
kernel's defaults but cannot be changed: PyIPVS has no sync daemon.  The
connection table size is not a sysctl: it is ipvsd's --conn-tab-bits.

Exit status: 0 on success, 255 when a name is unknown, a value is refused,
or no director answers (as sysctl(8) does for its errors).
"""

from __future__ import annotations

import argparse
import os
import sys

from ipvs.client import Client, display_address
from ipvs.procfs import INERT_SYSCTLS, NOT_SYSCTLS

PREFIX = "net.ipv4.vs."
V = {"version": 1}


def short_name(name: str) -> str:
    """A setting's name without ``net.ipv4.vs.`` (``/`` as ``.``), as the director names it."""
    name = name.strip().replace("/", ".")
    return name[len(PREFIX):] if name.startswith(PREFIX) else name


def all_settings(c: Client) -> dict[str, str]:
    """Every setting the director has, with the inert sync ones, sorted by name."""
    reply = c.call({**V, "cmd": "GET_SYSCTL"})
    if not reply.get("ok"):
        raise RuntimeError(reply.get("message", "GET_SYSCTL failed"))
    values = dict(INERT_SYSCTLS)
    values.update({k: str(v) for k, v in reply["sysctls"].items() if k not in NOT_SYSCTLS})
    return dict(sorted(values.items()))


def main(argv: list[str] | None = None) -> int:
    """Run ``ipvs-sysctl`` with ``argv`` (default: the command line); returns the exit status."""
    p = argparse.ArgumentParser(prog="ipvs-sysctl", description=__doc__.split("\n\n")[0],
                                epilog="Example: ipvs-sysctl net.ipv4.vs.sloppy_tcp=1")
    p.add_argument("-a", "--all", action="store_true", help="show every setting")
    p.add_argument("-n", "--values", action="store_true", help="print values without names")
    p.add_argument("-N", "--names", action="store_true", help="print names without values")
    p.add_argument("-q", "--quiet", action="store_true", help="do not echo the values set")
    p.add_argument("-w", "--write", action="store_true", help="accepted for sysctl compatibility: NAME=VALUE writes")
    p.add_argument("--socket", metavar="PATH", help="director control socket (default: $IPVS_SOCKET, else the "
                   "director of this network namespace)")
    p.add_argument("settings", nargs="*", metavar="NAME[=VALUE]")
    args = p.parse_args(argv)
    if not args.all and not args.settings:
        p.error("give -a, NAME or NAME=VALUE")

    def show(name: str, value: str) -> None:
        if args.names:
            print(PREFIX + name)
        elif args.values:
            print(value)
        else:
            print(f"{PREFIX}{name} = {value}")

    rc = 0
    with Client(args.socket) as c:
        try:
            current = all_settings(c)
        except OSError as e:
            print(f"ipvs-sysctl: cannot reach the director at {display_address(c.address)}: {e.strerror or e}",
                  file=sys.stderr)
            return 255
        except RuntimeError as e:
            print(f"ipvs-sysctl: {e}", file=sys.stderr)
            return 255
        if args.all:
            for name, value in current.items():
                show(name, value)
        for item in args.settings:
            raw_name, sep, text = item.partition("=")
            name = short_name(raw_name)
            if name not in current:
                print(f"ipvs-sysctl: cannot stat {PREFIX}{name}: No such setting", file=sys.stderr)
                rc = 255
                continue
            if not sep:
                show(name, current[name])
                continue
            if name in INERT_SYSCTLS:
                print(f"ipvs-sysctl: setting key \"{PREFIX}{name}\": not settable (PyIPVS has no connection "
                      "sync)", file=sys.stderr)
                rc = 255
                continue
            try:
                number = int(text.strip(), 0)
            except ValueError:
                print(f"ipvs-sysctl: setting key \"{PREFIX}{name}\": Invalid argument", file=sys.stderr)
                rc = 255
                continue
            reply = c.call({**V, "cmd": "SET_SYSCTL", "name": name, "value": number})
            if not reply.get("ok"):
                print(f"ipvs-sysctl: setting key \"{PREFIX}{name}\": {os.strerror(reply.get('errno', 22))} "
                      f"({reply.get('message')})", file=sys.stderr)
                rc = 255
                continue
            current[name] = str(number)
            if not args.quiet:
                show(name, str(number))
    return rc

