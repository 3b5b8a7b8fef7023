"""``ippfvsadm``: the administration tool of the Linux 2.0 "Virtual Server
via port forwarding" patch (VS 0.x / 2.0.36), mapped onto PyIPVS.

The original tool (Wensong Zhang, 1998, derived from Steven Clarke's
``ipportfw``) is not preserved anywhere we could read; what is known is the
usage the LVS VS/NAT how-to shows::

    ippfvsadm -A -t 202.103.106.5:80 -R 172.16.0.2:80 -w 1
    ippfvsadm -A -t 202.103.106.5:80 -R 172.16.0.3:8000 -w 2
    ippfvsadm -A -t 202.103.106.5:21 -R 172.16.0.3:21

In that patch a virtual service was simply the set of port-forwarding
entries sharing a virtual address and port, scheduled by weighted
round-robin, and the only forwarding method was masquerading.  So here:

* ``-A -t|-u VIP:PORT -R RIP[:PORT] [-w W]`` makes sure a ``wrr`` service
  exists for VIP:PORT (it is created when missing; an existing service
  keeps its scheduler) and adds RIP:PORT as a masquerading real server of
  weight W (default 1; the real port defaults to the virtual one).
* ``-D -t|-u VIP:PORT -R RIP[:PORT]`` deletes that entry, and the service
  with its last entry; ``-D -t|-u VIP:PORT`` deletes all its entries.
* ``-C`` clears the table; ``-L`` (or no command) lists it.

The listing layout is PyIPVS's own (the original's is not known), one line
per entry.  Errors print ipvsadm's messages (the kernel errno meaning) and
exit like ipvsadm: 2 for a usage error, 255 when the director refuses.
Everything goes through the director's control socket (:mod:`ipvs.client`),
exactly as ``ipvsadm`` does.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from typing import TextIO

from ipvs.uapi import AF_INET, IP_VS_CONN_F_MASQ, IP_VS_MAX_WEIGHT, IPPROTO_TCP, IPPROTO_UDP

PROG = "ippfvsadm"
VERSION = "ippfvsadm (PyIPVS) 0.1, after the Linux 2.0 VS patch's tool"

USAGE = f"""\
{VERSION}
Usage:
  {PROG} -A -t|-u vaddr:vport -R raddr[:rport] [-w weight]
  {PROG} -D -t|-u vaddr:vport [-R raddr[:rport]]
  {PROG} -C
  {PROG} -L [-n]
  {PROG} -h

Commands:
  -A            add a port-forwarding entry: the virtual service vaddr:vport
                (weighted round-robin, created if missing) forwards to the
                real server raddr:rport by masquerading
  -D            delete an entry (with -R) or every entry of a virtual service;
                a service goes away with its last entry
  -C            clear the whole table
  -L            list the table (the default command)
  -h            show this help

Options:
  -t vaddr:vport   TCP virtual service
  -u vaddr:vport   UDP virtual service
  -R raddr[:rport] real server (rport defaults to vport)
  -w weight        weight 0..{IP_VS_MAX_WEIGHT} (default 1)
  -n               numeric output (the listing is always numeric)
  --socket PATH    director control socket (default: $IPVS_SOCKET, else the
                   director of this network namespace)
"""

# ipvsadm's messages for the kernel's errnos (ipvs_strerror).
_ERRORS = {
    ("add-service", errno.EEXIST): "Service already exists",
    ("add-server", errno.ESRCH): "Service not defined",
    ("add-server", errno.EEXIST): "Destination already exists",
    ("del-server", errno.ESRCH): "Service not defined",
    ("del-server", errno.ENOENT): "No such destination",
    ("del-service", errno.ESRCH): "No such service",
    (None, errno.EPERM): "Permission denied (you must be root)",
    (None, errno.EINVAL): "Invalid operation.  Possibly wrong module version, address not unicast, ...",
    (None, errno.ENOPROTOOPT): "Protocol not available",
    (None, errno.ENOMEM): "Memory allocation problem",
    (None, errno.EMSGSIZE): "Module is wrong version",
}


class UsageError(Exception):
    """A command line ippfvsadm cannot take: the usage is printed and the exit status is 2."""
    pass


class DirectorError(Exception):
    """The director refused a request: ipvsadm's message for its errno is printed and the exit status is 255."""
    pass


def _message(op: str, reply: dict) -> str:
    err = reply.get("errno", 0)
    text = _ERRORS.get((op, err)) or _ERRORS.get((None, err))
    if text is None:
        # ipvsadm falls back to strerror() for the rest.
        text = os.strerror(err) if err else reply.get("message") or "unknown error"
    return text


def _parse_hostport(text: str, proto: int, default_port: int | None, what: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = text, ""
    if not host:
        raise UsageError(f"illegal {what} address[:port] specified")
    try:
        addr = socket.inet_ntoa(socket.inet_aton(host)) if host.count(".") == 3 else None
    except OSError:
        addr = None
    if addr is None:
        try:
            addr = str(socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0])
        except (OSError, UnicodeError):
            raise UsageError(f"illegal {what} address[:port] specified") from None
    if port_text:
        if port_text.isdigit():
            port = int(port_text)
        else:
            try:
                port = socket.getservbyname(port_text, "udp" if proto == IPPROTO_UDP else "tcp")
            except OSError:
                raise UsageError(f"illegal {what} address[:port] specified") from None
    elif default_port is not None:
        port = default_port
    else:
        raise UsageError(f"illegal {what} address[:port] specified")
    if not 0 < port <= 0xFFFF:
        raise UsageError(f"illegal {what} address[:port] specified")
    return addr, port


def parse_args(argv: list[str]) -> dict:
    """The command line as a dict; raises UsageError."""
    opts: dict = {"cmd": None, "numeric": False, "socket": None}
    commands = {"-A": "add", "-D": "delete", "-C": "clear", "-L": "list", "-l": "list", "-h": "help",
                "--help": "help"}
    it = iter(argv)
    for arg in it:
        if arg in commands:
            if opts["cmd"] is not None:
                raise UsageError("multiple commands specified")
            opts["cmd"] = commands[arg]
        elif arg in ("-t", "-u", "-R", "-w", "--socket"):
            value = next(it, None)
            if value is None:
                raise UsageError(f"option {arg} needs a value")
            key = {"-t": "service", "-u": "service", "-R": "real", "-w": "weight", "--socket": "socket"}[arg]
            if opts.get(key) is not None and key != "socket":
                raise UsageError(f"multiple '{arg}' options specified")
            opts[key] = value
            if arg in ("-t", "-u"):
                opts["protocol"] = IPPROTO_TCP if arg == "-t" else IPPROTO_UDP
        elif arg == "-n":
            opts["numeric"] = True
        else:
            raise UsageError(f"invalid option `{arg}'")
    cmd = opts["cmd"] or "list"
    opts["cmd"] = cmd
    if cmd in ("add", "delete"):
        if opts.get("service") is None:
            raise UsageError(f"You need to supply the '-t' or '-u' option for the '-{cmd[0].upper()}' command")
        if cmd == "add" and opts.get("real") is None:
            raise UsageError("You need to supply the '-R' option for the '-A' command")
        if cmd == "delete" and opts.get("weight") is not None:
            raise UsageError("Illegal '-w' option with the '-D' command")
        proto = opts["protocol"]
        opts["vaddr"], opts["vport"] = _parse_hostport(opts["service"], proto, None, "virtual server")
        if opts.get("real") is not None:
            opts["raddr"], opts["rport"] = _parse_hostport(opts["real"], proto, opts["vport"], "real server")
        w = opts.get("weight")
        if w is None:
            opts["weight"] = 1
        elif not w.isdigit() or int(w) > IP_VS_MAX_WEIGHT:
            raise UsageError("illegal weight specified")
        else:
            opts["weight"] = int(w)
    elif cmd in ("clear", "list", "help"):
        for key in ("service", "real", "weight"):
            if opts.get(key) is not None:
                flag = {"service": "-t", "real": "-R", "weight": "-w"}[key]
                raise UsageError(f"Illegal '{flag}' option with the '-{cmd[0].upper()}' command")
    return opts


def _svc(opts: dict) -> dict:
    return {"af": AF_INET, "protocol": opts["protocol"], "addr": opts["vaddr"], "port": opts["vport"]}


def _req(cmd: str, **kw) -> dict:
    return {"version": 1, "cmd": cmd, **kw}


class Tool:
    """The commands of ippfvsadm, each one or a few requests to the director over ``transport``."""
    def __init__(self, transport, stdout: TextIO) -> None:
        self.t = transport
        self.out = stdout

    def _do(self, op: str, req: dict, ok_errnos: tuple[int, ...] = ()) -> dict:
        reply = self.t.call(req)
        if not reply.get("ok") and reply.get("errno") not in ok_errnos:
            raise DirectorError(_message(op, reply))
        return reply

    def add(self, opts: dict) -> None:
        """``-A``: make sure the ``wrr`` service exists, then add the real server by masquerading with its weight."""
        svc = _svc(opts)
        full = {**svc, "sched_name": "wrr", "flags": {"flags": 0, "mask": 0xFFFFFFFF}, "timeout": 0,
                "netmask": 0xFFFFFFFF}
        # The service may exist already (another entry, or ipvsadm made it).
        self._do("add-service", _req("NEW_SERVICE", service=full), ok_errnos=(errno.EEXIST,))
        dest = {"addr": opts["raddr"], "port": opts["rport"], "fwd_method": IP_VS_CONN_F_MASQ,
                "weight": opts["weight"], "u_threshold": 0, "l_threshold": 0}
        self._do("add-server", _req("NEW_DEST", service=svc, dest=dest))

    def delete(self, opts: dict) -> None:
        """``-D``: delete one entry (with ``-R``), or the whole virtual service."""
        svc = _svc(opts)
        if opts.get("raddr") is None:
            self._do("del-service", _req("DEL_SERVICE", service=svc))
            return
        self._do("del-server", _req("DEL_DEST", service=svc, dest={"addr": opts["raddr"], "port": opts["rport"]}))
        left = self._do("del-server", _req("GET_DEST", service=svc))["dests"]
        if not left:
            self._do("del-service", _req("DEL_SERVICE", service=svc), ok_errnos=(errno.ESRCH,))

    def clear(self, opts: dict) -> None:
        """``-C``: flush the table."""
        self._do("flush", _req("FLUSH"))

    def list(self, opts: dict) -> None:
        """``-L``: one line per entry of the IPv4 TCP and UDP services, sorted by protocol, address and port."""
        services = self._do("list", _req("GET_SERVICE"))["services"]
        services = [s for s in services if not s.get("fwmark") and s.get("af") == AF_INET]
        services.sort(key=lambda s: (s["protocol"], socket.inet_aton(s["addr"]), s["port"]))
        reqs = [_req("GET_DEST", service={k: s[k] for k in ("af", "protocol", "addr", "port")}) for s in services]
        call_many = getattr(self.t, "call_many", None)
        replies = call_many(reqs) if call_many else [self.t.call(r) for r in reqs]
        out = ["Prot LocalAddress:Port      RemoteAddress:Port     Weight ActiveConn InActConn Scheduler\n"]
        for s, r in zip(services, replies, strict=True):
            proto = "TCP" if s["protocol"] == IPPROTO_TCP else "UDP" if s["protocol"] == IPPROTO_UDP else "SCTP"
            local = f"{s['addr']}:{s['port']}"
            dests = sorted(r.get("dests", []), key=lambda d: (socket.inet_aton(d["addr"]), d["port"]))
            if not dests:
                out.append(f"{proto:<4} {local:<21}  -\n")
            for d in dests:
                remote = f"{d['addr']}:{d['port']}"
                out.append(
                    f"{proto:<4} {local:<21}> {remote:<22} {d['weight']:<6} {d['active_conns']:<10} "
                    f"{d['inact_conns']:<9} {s['sched_name']}\n"
                )
        self.out.write("".join(out))


def main(argv: list[str] | None = None, transport=None, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    """Run ``ippfvsadm``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    try:
        opts = parse_args(argv)
    except UsageError as e:
        stderr.write(f"{e}\n")
        stderr.write(f"Try `{PROG} -h' for more information.\n")
        return 2
    if opts["cmd"] == "help":
        stdout.write(USAGE)
        return 0
    own = None
    if transport is None:
        from ipvs.client import Client, display_address

        own = transport = Client(opts["socket"])
        try:
            own.connect()
        except OSError as e:
            stderr.write(
                f"Can't reach the director at {display_address(own.address)}: {e.strerror or e}\n"
                "Is ipvsd running (in this network namespace)?\n"
            )
            return 2
    try:
        getattr(Tool(transport, stdout), opts["cmd"])(opts)
    except DirectorError as e:
        stderr.write(f"{e}\n")
        return 255
    except OSError as e:
        stderr.write(f"{PROG}: control socket: {e}\n")
        return 255
    finally:
        if own is not None:
            own.close()
    return 0
