"""All real servers of a scenario in one process (runs inside the VM).

Usage::

    python3 servers.py OUTDIR SPEC [SPEC ...]

SPEC is ``K:PORT`` or ``K:PORT/PROTO`` with PROTO ``tcp`` (default) or
``udp``: real server K lives in namespace ``rsK`` at 172.16.0.(K+1) and is
called ``rsK`` in answers and logs.  PROTO ``tcp6`` or ``udp6``: the server
listens on its IPv6 address instead, 2001:db8:2::(K+1) (oracle.sh setup_v6).

TCP protocol (first line from the client decides):

* ``GET ...`` (HTTP/1.0): answer a small HTTP response whose body is
  ``server=rsK local=IP:PORT peer=IP:PORT`` and close first (the server
  side closes, as a web server does);
* ``HOLD``: answer the same identity line and keep the connection open
  until the client closes, then close (client closes first); on it,
  ``PING`` is answered with ``PONG`` and ``ABORT`` closes with a RST;
* anything else: echo it back and close.

UDP: every datagram is answered with the identity line.

Each server logs ``TIME rsK local=... peer=... req='...'`` lines into
``OUTDIR/rsK-PORT.log`` (``rsK-PORT-udp.log`` for UDP).  The process
prints ``ready`` on stdout when every socket is bound and runs until
SIGTERM.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import struct
import sys
import time

from nsutil import socket_in


def rs_addr(k: int) -> str:
    return f"172.16.0.{k + 1}"


def rs_addr6(k: int) -> str:
    return f"2001:db8:2::{k + 1:x}"


class Server:
    def __init__(self, outdir: str, spec: str):
        k, _, rest = spec.partition(":")
        port, _, proto = rest.partition("/")
        self.k = int(k)
        self.port = int(port)
        v6 = proto.endswith("6")
        self.proto = proto.rstrip("6") or "tcp"
        self.name = f"rs{self.k}"
        suffix = ("" if self.proto == "tcp" else "-udp") + ("-v6" if v6 else "")
        self.log = open(f"{outdir}/{self.name}-{self.port}{suffix}.log", "a", buffering=1)
        stype = socket.SOCK_STREAM if self.proto == "tcp" else socket.SOCK_DGRAM
        self.sock = socket_in(self.name, socket.AF_INET6 if v6 else socket.AF_INET, stype)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # RS_BIND=VIP (oracle.sh rs_vip): bound to the VIP the server holds
        # (VS/DR, VS/TUN), so its answers, UDP ones too, leave from it.
        if v6:
            self.sock.bind((os.environ.get("RS_BIND6") or rs_addr6(self.k), self.port))
        else:
            self.sock.bind((os.environ.get("RS_BIND") or rs_addr(self.k), self.port))
        if self.proto == "tcp":
            self.sock.listen(128)
        self.sock.setblocking(False)

    def ident(self, local, peer) -> str:
        return f"server={self.name} local={local[0]}:{local[1]} peer={peer[0]}:{peer[1]}"

    def note(self, local, peer, req: str) -> None:
        self.log.write(f"{time.monotonic():.6f} {self.name} local={local[0]}:{local[1]} "
                       f"peer={peer[0]}:{peer[1]} req={req!r}\n")


class Conn:
    def __init__(self, srv: Server, sock: socket.socket, peer):
        self.srv = srv
        self.sock = sock
        self.peer = peer
        self.local = sock.getsockname()
        self.buf = b""
        self.mode = None  # None until the first line, then "http"/"hold"/"echo"


def main(argv: list[str]) -> int:
    outdir, specs = argv[0], argv[1:]
    sel = selectors.DefaultSelector()
    for spec in specs:
        srv = Server(outdir, spec)
        sel.register(srv.sock, selectors.EVENT_READ, ("listen", srv))
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    print("ready", flush=True)
    while not stop:
        for key, _ in sel.select(timeout=0.5):
            kind, obj = key.data
            if kind == "listen" and obj.proto == "udp":
                try:
                    data, peer = obj.sock.recvfrom(65535)
                except OSError:
                    continue
                local = obj.sock.getsockname()
                obj.note(local, peer, data.decode(errors="replace").strip())
                obj.sock.sendto((obj.ident(local, peer) + "\n").encode(), peer)
            elif kind == "listen":
                try:
                    cs, peer = obj.sock.accept()
                except OSError:
                    continue
                cs.setblocking(False)
                sel.register(cs, selectors.EVENT_READ, ("conn", Conn(obj, cs, peer)))
            else:
                serve(sel, obj)
    return 0


def close(sel, c: Conn) -> None:
    sel.unregister(c.sock)
    c.sock.close()


def serve(sel, c: Conn) -> None:
    try:
        data = c.sock.recv(65536)
    except OSError:
        close(sel, c)
        return
    if not data:
        # The client closed (HOLD mode, or it gave up): close our side too.
        close(sel, c)
        return
    c.buf += data
    if c.mode is None:
        if b"\n" not in c.buf:
            return
        first = c.buf.split(b"\n", 1)[0].strip().decode(errors="replace")
        c.srv.note(c.local, c.peer, first)
        ident = c.srv.ident(c.local, c.peer)
        if first.startswith("GET "):
            c.mode = "http"
        elif first.startswith("HOLD"):
            c.mode = "hold"
            c.buf = c.buf.split(b"\n", 1)[1]
            c.sock.sendall((ident + "\n").encode())
            return
        else:
            c.mode = "echo"
            c.sock.sendall(c.buf)
            close(sel, c)
            return
    if c.mode == "http":
        if b"\r\n\r\n" not in c.buf and b"\n\n" not in c.buf:
            return
        body = (c.srv.ident(c.local, c.peer) + "\n").encode()
        head = (f"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        c.sock.sendall(head + body)
        close(sel, c)
    if c.mode == "hold":
        # A held connection answers PING with PONG (a packet each way on a
        # connection IPVS already holds) and ABORT with a RST (the server
        # side aborts); anything else is ignored until the client closes.
        lines, _, c.buf = c.buf.rpartition(b"\n")
        for line in lines.split(b"\n"):
            if line.strip() == b"PING":
                c.sock.sendall(b"PONG\n")
            elif line.strip() == b"ABORT":
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                close(sel, c)
                return


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
