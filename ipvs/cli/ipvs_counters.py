"""ipvs-counters: what a running PyIPVS director dropped, and why, while it runs.

The kernel has no file for these: a packet IPVS drops is counted nowhere
that ipvsadm shows.  PyIPVS counts each drop by reason, and this tool
asks the director over its control socket (GET_COUNTERS of the message
schema, ipvs/netlink.py) and prints ``name value`` lines, as ``nstat``
does::

    ipvs-counters            the counters that are not zero
    ipvs-counters -a         all of them
    ipvs-counters drop_defense driver.d_out_rx_kernel_drops   only these
    ipvs-counters --json     the reply's counters as one JSON object

Names without a prefix are the core's: ``drop_<reason>`` for each
:class:`ipvs.packet.Drop` (``drop_defense``: ``drop_packet`` refused a new
connection; ``drop_table_full``: the table is at its cap), the table
(``conn_count``, ``conn_max``, ``conn_dropentry``: entries
``drop_entry`` removed, ``conn_room_passes``: its passes run because the
table was at its cap) and the defenses' state (``defense_availmem`` in
pages, -1 without a budget; ``defense_drop_rate``: one new connection in
that many is dropped, 0 = off; ``defense_dropentry``,
``defense_secure_tcp``: 1 when on).  ``driver.*`` are the AF_PACKET data
path's (ring drops, the SYN guard, neighbours, fragments), ``loop.*``
the daemon loop's (turns, the longest turn in microseconds, turns
longer than 10 ms, 100 ms, 1 s), ``memory.*`` ipvsd's memory in KiB
(resident; the budget and what is left of it; on PyPy what its GC uses
and holds, and its time so far in ms).

Exit status: 0 on success, 255 when no director answers or a name is
unknown.
"""

from __future__ import annotations

import argparse
import json
import sys

from ipvs.client import Client, display_address


def flatten(reply: dict) -> dict[str, int]:
    """The counters of a GET_COUNTERS reply as one mapping: the core's as
    they are, the daemon's sections (``driver``, ``loop``, ``memory``) prefixed."""
    out = dict(reply.get("counters", {}))
    for section in ("driver", "loop", "memory"):
        for k, v in reply.get(section, {}).items():
            out[f"{section}.{k}"] = v
    return out


def read(c: Client) -> dict[str, int]:
    """Ask the director for its counters (raises OSError, or RuntimeError on an error reply)."""
    reply = c.call({"version": 1, "cmd": "GET_COUNTERS"})
    if not reply.get("ok"):
        raise RuntimeError(reply.get("message", "GET_COUNTERS failed"))
    return flatten(reply)


def main(argv: list[str] | None = None) -> int:
    """Run ``ipvs-counters`` with ``argv`` (default: the command line); returns the exit status."""
    p = argparse.ArgumentParser(prog="ipvs-counters", description=__doc__.split("\n\n")[0])
    p.add_argument("-a", "--all", action="store_true", help="also the counters that are zero")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--socket", metavar="PATH", help="director control socket (default: $IPVS_SOCKET, else the "
                   "director of this network namespace)")
    p.add_argument("names", nargs="*", metavar="NAME", help="print only these")
    args = p.parse_args(argv)
    with Client(args.socket) as c:
        try:
            counters = read(c)
        except OSError as e:
            print(f"ipvs-counters: cannot reach the director at {display_address(c.address)}: {e.strerror or e}",
                  file=sys.stderr)
            return 255
        except RuntimeError as e:
            print(f"ipvs-counters: {e}", file=sys.stderr)
            return 255
    rc = 0
    if args.names:
        unknown = [n for n in args.names if n not in counters]
        for n in unknown:
            print(f"ipvs-counters: no counter {n}", file=sys.stderr)
            rc = 255
        counters = {n: counters[n] for n in args.names if n in counters}
    elif not args.all:
        counters = {k: v for k, v in counters.items() if v}
    if args.json:
        print(json.dumps(counters, sort_keys=not args.names))
    else:
        for k in (counters if args.names else sorted(counters)):
            print(f"{k} {counters[k]}")
    return rc
