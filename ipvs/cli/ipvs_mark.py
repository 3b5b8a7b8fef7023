"""``ipvs-mark``: manage the firewall-mark rules of a PyIPVS director.

The kernel's fwmark services (``ipvsadm -A -f MARK``) rely on iptables or
nftables to mark packets.  PyIPVS keeps that classification in the
director (:mod:`ipvs.fwmark`), and this tool edits it with an iptables-like
syntax, over the control socket (schema commands NEW_MARK, DEL_MARK,
GET_MARK, FLUSH_MARK)::

    ipvs-mark -A [-6] [-p tcp|udp|sctp] [-s CIDR] [-d CIDR] [--dport N[:M]] --set-mark MARK
    ipvs-mark -D <the same rule>
    ipvs-mark -F                 remove every rule
    ipvs-mark -L                 list the rules, in evaluation order
    ipvs-mark -S                 the rules as -A lines (for a rules file)
    ipvs-mark -R                 read -A lines from stdin

Like the MARK target, every rule is evaluated and the last match wins.
Exit status: 0 on success, 2 for bad arguments, 255 when the director
refuses a command (with the reason on stderr), as ipvsadm does.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import TextIO

from ipvs.fwmark import PROTOCOLS, MarkError, MarkRule
from ipvs.uapi import AF_INET, AF_INET6

V = {"version": 1}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D102 - argparse hook
        raise MarkError(0, message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ipvs-mark", add_help=False)
    cmd = p.add_mutually_exclusive_group()
    for flag in ("-A", "-D", "-F", "-L", "-S", "-R", "-h"):
        cmd.add_argument(flag, dest="cmd", action="store_const", const=flag[1])
    p.add_argument("-6", dest="ipv6", action="store_true")
    p.add_argument("-p", dest="protocol", choices=sorted(PROTOCOLS))
    p.add_argument("-s", dest="saddr")
    p.add_argument("-d", dest="daddr")
    p.add_argument("--dport")
    p.add_argument("--set-mark", dest="mark")
    p.add_argument("--socket")
    return p


def parse_rule(args: argparse.Namespace) -> MarkRule:
    """The rule the options describe (checked)."""
    if args.mark is None:
        raise MarkError(0, "--set-mark is required")
    try:
        mark = int(args.mark, 0)
    except ValueError:
        raise MarkError(0, f"invalid mark `{args.mark}'") from None
    lo, hi = 0, 0xFFFF
    if args.dport is not None:
        try:
            a, _, b = args.dport.partition(":")
            lo, hi = int(a), int(b or a)
        except ValueError:
            raise MarkError(0, f"invalid port range `{args.dport}'") from None
    rule = MarkRule(
        mark, AF_INET6 if args.ipv6 else AF_INET, PROTOCOLS.get(args.protocol, 0), args.saddr, args.daddr, lo, hi
    )
    return rule.check()


def _call(transport, req: dict) -> dict:
    reply = transport.call({**V, **req})
    if not reply.get("ok"):
        raise MarkError(reply.get("errno", 0), reply.get("message") or reply.get("error", "refused"))
    return reply


def main(argv: list[str] | None = None, transport=None, stdout: TextIO | None = None,
         stderr: TextIO | None = None, stdin: TextIO | None = None) -> int:
    """Run ``ipvs-mark``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    stdout, stderr, stdin = stdout or sys.stdout, stderr or sys.stderr, stdin or sys.stdin
    try:
        args = _parser().parse_args(argv)
        if args.cmd in (None, "h"):
            stdout.write(__doc__.split("::\n\n", 1)[1].split("\n\n")[0] + "\n")
            return 0 if args.cmd == "h" else 2
        rule_dict = parse_rule(args).as_dict() if args.cmd in ("A", "D") else None
    except MarkError as e:
        stderr.write(f"ipvs-mark: {e}\nTry `ipvs-mark -h' for more information.\n")
        return 2
    own = None
    if transport is None:
        from ipvs.client import Client

        own = transport = Client(args.socket)
    try:
        if args.cmd == "A":
            _call(transport, {"cmd": "NEW_MARK", "mark": rule_dict})
        elif args.cmd == "D":
            _call(transport, {"cmd": "DEL_MARK", "mark": rule_dict})
        elif args.cmd == "F":
            _call(transport, {"cmd": "FLUSH_MARK"})
        elif args.cmd in ("L", "S"):
            rules = [MarkRule(**r) for r in _call(transport, {"cmd": "GET_MARK"})["marks"]]
            for i, r in enumerate(rules, 1):
                stdout.write(f"-A {r.text()}\n" if args.cmd == "S" else f"{i:<4d} {r.text()}\n")
        elif args.cmd == "R":
            status = 0
            for line in stdin:
                words = shlex.split(line, comments=True)
                if words:
                    status = main(words + (["--socket", args.socket] if args.socket else []), transport,
                                  stdout, stderr)
            return status
    except MarkError as e:
        stderr.write(f"ipvs-mark: {e}\n")
        return 255
    except OSError as e:
        stderr.write(f"ipvs-mark: cannot reach the director: {e.strerror or e}\n")
        return 2
    finally:
        if own is not None:
            own.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
