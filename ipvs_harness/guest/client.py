"""The scenario's client: one process drives a whole request sequence.

Runs in the director's (root) namespace and makes its sockets inside the
client namespace (``cli``), so ``!sh`` steps can run ipvsadm between
requests without another process juggling namespaces.

Usage: ``python3 client.py DELAY < steps``; one step per line:

``LABEL SRC SPORT DST DPORT``
    an HTTP/1.0 GET from SRC:SPORT (fixed) to DST:DPORT; prints
    ``LABEL N SRC:SPORT server=rsK local=IP:PORT peer=IP:PORT``
    (``server=NONE error=...`` when it fails), then sleeps DELAY s.
``!hold LABEL SRC SPORT DST DPORT``
    connect, send ``HOLD`` and keep the connection open (ESTABLISHED, so it
    counts as an active connection) until ``!release``; prints like above.
``!release SRC SPORT`` / ``!release-all`` / ``!release-label LABEL``
    close held connections (the client closes first, with a FIN).
``!rst-label LABEL`` / ``!rst-all``
    abort held connections with a RST (SO_LINGER 0): IPVS moves them to
    CLOSE, which expires in 10 s instead of TIME_WAIT's 120 s.
``!udp LABEL SRC SPORT DST DPORT``
    one datagram, wait for the answer (or the ICMP error) for 3 s.
``!ping LABEL``
    on each held connection of LABEL send ``PING`` and wait for ``PONG``
    (a packet each way on a connection IPVS holds).
``!abort LABEL``
    the server side aborts each held connection of LABEL (``ABORT``: the
    real server closes with a RST); the client then closes its socket.
``!tcp FLAGS SRC SPORT DST DPORT [SEQ [ACK]]``
    one hand-made TCP segment from the client namespace (FLAGS from
    ``SAFRPU``; SEQ default ``1000000 * SPORT``, ACK default 0), answers
    not awaited: a crafted client for segments no socket would send.
``!sleep SECONDS``, ``!note TEXT`` (prints ``# TEXT``),
``!sh COMMAND`` (run in the director's namespace; its stdout goes to stderr
so it never mixes with the request lines unless redirected).
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

import clock
from nsutil import family_of, netns, socket_in

NS = "cli"
TIMEOUT = 10.0


def _counter_path() -> str:
    """Where the request count lives between client_steps calls of one run."""
    key = hashlib.sha1(os.environ.get("OUT", "").encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), f"pyipvs-client-{key}.n")


class Client:
    def __init__(self, delay: float):
        self.delay = delay
        # Requests are numbered across every client_steps call of a scenario.
        try:
            with open(_counter_path()) as f:
                self.n = int(f.read().strip() or 0)
        except (OSError, ValueError):
            self.n = 0
        self.held: dict[tuple[str, int], tuple[str, socket.socket]] = {}

    def out(self, line: str) -> None:
        print(line, flush=True)

    def _tcp(self, src: str, sport: int, dst: str, dport: int) -> socket.socket:
        s = socket_in(NS, family_of(dst))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.settimeout(TIMEOUT)
        s.bind((src, sport))
        s.connect((dst, dport))
        return s

    def _fail(self, label: str, src: str, sport: int, exc: BaseException) -> None:
        name = errno.errorcode.get(getattr(exc, "errno", None) or 0, type(exc).__name__)
        self.out(f"{label} {self.n} {src}:{sport} server=NONE error={name}")

    def http(self, label, src, sport, dst, dport) -> None:
        self.n += 1
        try:
            s = self._tcp(src, sport, dst, dport)
            s.sendall(f"GET / HTTP/1.0\r\nHost: {dst}\r\n\r\n".encode())
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            s.close()
            body = data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace").strip()
            self.out(f"{label} {self.n} {src}:{sport} {body}")
        except OSError as exc:
            self._fail(label, src, sport, exc)
        if self.delay:
            time.sleep(self.delay)

    def hold(self, label, src, sport, dst, dport) -> None:
        self.n += 1
        try:
            s = self._tcp(src, sport, dst, dport)
            s.sendall(b"HOLD\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            self.held[(src, sport)] = (label, s)
            self.out(f"{label} {self.n} {src}:{sport} {data.decode(errors='replace').strip()}")
        except OSError as exc:
            self._fail(label, src, sport, exc)
        if self.delay:
            time.sleep(self.delay)

    def release(self, src, sport, rst: bool = False) -> None:
        item = self.held.pop((src, sport), None)
        if item is None:
            return
        s = item[1]
        if rst:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()

    def release_where(self, label: str | None, rst: bool) -> None:
        for key, (lab, _) in list(self.held.items()):
            if label is None or lab == label:
                self.release(*key, rst=rst)

    def on_held(self, label: str, verb: str) -> None:
        for key, (lab, s) in list(self.held.items()):
            if lab != label:
                continue
            try:
                if verb == "ping":
                    s.sendall(b"PING\n")
                    s.recv(4096)
                else:
                    s.sendall(b"ABORT\n")
                    s.recv(4096)  # the server's RST: ECONNRESET (or EOF)
            except OSError:
                pass
            if verb == "abort":
                self.held.pop(key)
                s.close()
        if self.delay:
            time.sleep(self.delay)

    def tcp(self, args: list[str]) -> None:
        from tcpcraft import FLAG_BITS, Flow

        flags, src, sport, dst, dport = args[0], args[1], int(args[2]), args[3], int(args[4])
        f = Flow(src, sport, dst, dport, int(args[5]) if len(args) > 5 else None)
        f.ack = int(args[6]) if len(args) > 6 else 0
        if any(ch not in FLAG_BITS for ch in flags):
            raise SystemExit(f"client.py: !tcp flags {flags!r}: use S A F R P U")
        with netns(NS):
            tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        with tx:
            tx.sendto(f.segment(flags, b""), (dst, 0))
        if self.delay:
            time.sleep(self.delay)

    def udp(self, label, src, sport, dst, dport) -> None:
        self.n += 1
        s = socket_in(NS, family_of(dst), socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.settimeout(3.0)
            s.bind((src, sport))
            s.connect((dst, dport))
            s.send(f"{label} {self.n}\n".encode())
            data = s.recv(4096)
            self.out(f"{label} {self.n} {src}:{sport} {data.decode(errors='replace').strip()}")
        except (TimeoutError, OSError) as exc:
            self._fail(label, src, sport, exc)
        finally:
            s.close()
        if self.delay:
            time.sleep(self.delay)

    def step(self, line: str) -> None:
        line = line.strip()
        if not line or line.startswith("#"):
            return
        if line.startswith("!"):
            verb, _, rest = line[1:].partition(" ")
            args = rest.split()
            if verb == "sleep":
                time.sleep(float(args[0]))
            elif verb == "note":
                self.out(f"# {rest}")
            elif verb == "sh":
                sys.stderr.flush()
                clock.mark("sh", rest)
                # bash stamps each command of the line as it starts (kind
                # "cmd"): a line of several ipvsadm runs spreads over a
                # second or two under TCG, and the offline model follows.
                subprocess.run(["bash", "-c", clock.STAMP_EACH_COMMAND + rest], stdout=sys.stderr, check=False)
            elif verb == "hold":
                self.hold(args[0], args[1], int(args[2]), args[3], int(args[4]))
            elif verb == "udp":
                self.udp(args[0], args[1], int(args[2]), args[3], int(args[4]))
            elif verb == "release":
                self.release(args[0], int(args[1]))
            elif verb == "release-all":
                self.release_where(None, rst=False)
            elif verb == "release-label":
                self.release_where(args[0], rst=False)
            elif verb == "rst-all":
                self.release_where(None, rst=True)
            elif verb == "rst-label":
                self.release_where(args[0], rst=True)
            elif verb in ("ping", "abort"):
                self.on_held(args[0], verb)
            elif verb == "tcp":
                self.tcp(args)
            else:
                raise SystemExit(f"client.py: unknown step {line!r}")
            return
        label, src, sport, dst, dport = line.split()
        self.http(label, src, int(sport), dst, int(dport))


def main(argv: list[str]) -> int:
    c = Client(float(argv[0]) if argv else 0.0)
    for line in sys.stdin:
        c.step(line)
    c.release_where(None, rst=False)
    with open(_counter_path(), "w") as f:
        f.write(f"{c.n}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
