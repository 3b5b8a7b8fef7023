"""Client side of the director's control socket.

There is no kernel file to mirror: this is what ``libipvs`` (ipvsadm's
library that speaks generic netlink to the kernel) becomes when the IPVS
instance lives in a daemon.  The messages themselves are the schema of
:mod:`ipvs.netlink`; this module only carries them.

Where the socket is.  ``Client(path)`` connects to ``path``, else to the
``IPVS_SOCKET`` environment variable, else to the abstract Unix socket
``"\\0pyipvs-ipvsd"``.  Abstract names belong to a network namespace, so a
director started inside a namespace is the one ``ipvsadm`` run inside that
namespace reaches, as each namespace has its own kernel IPVS.  A value
starting with ``@`` (as ``ss`` prints them) also names an abstract socket.

Framing.  Each message is a 4-byte big-endian length followed by that many
bytes of UTF-8 JSON holding one object.  Replies come in request order,
so requests may be pipelined (:meth:`Client.call_many`, or
:meth:`Client.submit` now and :meth:`Client.receive` later).  Nothing is
ever pickled.  Many commands can also travel in one request (``BATCH``,
see :mod:`ipvs.netlink`).

Errors.  Transport problems raise :class:`OSError` subclasses: no daemon
listening gives ``FileNotFoundError`` or ``ConnectionRefusedError``, a
broken frame gives :class:`ProtocolError`.  Error *replies* (a command the
daemon refused, carrying an errno) are returned as dicts like any reply.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct

#: The default control socket: an abstract name (leading NUL).
DEFAULT_SOCKET = "\0pyipvs-ipvsd"
#: Environment variable that overrides the default socket.
SOCKET_ENV = "IPVS_SOCKET"
#: Largest request the daemon accepts (bytes of JSON).
MAX_REQUEST = 1 << 20
#: Largest reply this client accepts: a listing of 100,000 destinations
#: with their counters is about 30 MB of JSON.
MAX_REPLY = 256 << 20

_LEN = struct.Struct("!I")


class ProtocolError(OSError):
    """The other side sent something that is not a valid frame."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EPROTO, message)


def socket_address(path: str | None = None) -> str:
    """The address a client (or the daemon) uses: argument, env, default.

    ``@name`` is turned into the abstract name ``\\0name``.
    """
    addr = path or os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    return addr


def display_address(addr: str) -> str:
    """An address as a human reads it (abstract names as ``@name``)."""
    return "@" + addr[1:] if addr.startswith("\0") else addr


# One encoder for every frame: json.dumps() with arguments builds a new
# encoder per call, which costs more than the encoding of a small request.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode(obj: dict) -> bytes:
    """One frame: length prefix and compact UTF-8 JSON."""
    body = _ENCODER.encode(obj).encode()
    return _LEN.pack(len(body)) + body


class Client:
    """A connection to the director's control socket.

    The connection is opened on first use and kept for the next calls;
    ``with Client() as c:`` closes it at the end.
    """

    def __init__(self, path: str | None = None, timeout: float | None = 30.0) -> None:
        self.address = socket_address(path)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._rbuf = bytearray()

    # ------------------------------------------------------------ plumbing

    def connect(self) -> None:
        """Open the connection now (raises if no daemon listens)."""
        if self._sock is not None:
            return
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.address)
        except OSError:
            s.close()
            raise
        self._sock = s

    def close(self) -> None:
        """Close the socket (a later request connects again) and drop any half-read reply."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._rbuf.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _fill(self, n: int) -> None:
        """Read until the buffer holds ``n`` bytes (one recv usually brings
        several pipelined replies at once)."""
        assert self._sock is not None
        buf = self._rbuf
        while len(buf) < n:
            chunk = self._sock.recv(max(n - len(buf), 65536))
            if not chunk:
                raise ProtocolError("control socket closed by the daemon")
            buf += chunk

    def _read_reply(self) -> dict:
        self._fill(4)
        (n,) = _LEN.unpack_from(self._rbuf)
        if n > MAX_REPLY:
            raise ProtocolError(f"reply of {n} bytes is over the {MAX_REPLY} byte limit")
        self._fill(4 + n)
        body = bytes(self._rbuf[4 : 4 + n])
        del self._rbuf[: 4 + n]
        try:
            obj = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ProtocolError(f"reply is not JSON: {e}") from None
        if not isinstance(obj, dict):
            raise ProtocolError("reply is not a JSON object")
        return obj

    def _send(self, data: bytes) -> None:
        assert self._sock is not None
        try:
            self._sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            # The daemon may have answered (a refusal) and closed before
            # reading: its reply is still readable, and says why.
            pass

    # ----------------------------------------------------------------- api

    def call(self, req: dict) -> dict:
        """Send one request and return its reply."""
        self.submit(req)
        return self.receive()

    def submit(self, req: dict) -> None:
        """Send one request without waiting for its reply; read the replies,
        in request order, with :meth:`receive`.  This lets a caller keep
        working (parsing the next rules) while the daemon runs the last
        ones.  A request over :data:`MAX_REQUEST` raises ``EMSGSIZE``
        before anything is sent, and the connection stays usable."""
        frame = encode(req)
        if len(frame) - 4 > MAX_REQUEST:
            raise OSError(errno.EMSGSIZE, f"request of {len(frame) - 4} bytes is over the {MAX_REQUEST} byte limit")
        self.connect()
        try:
            self._send(frame)
        except BaseException:
            self.close()
            raise

    def receive(self) -> dict:
        """The reply to the oldest request sent and not yet answered."""
        if self._sock is None:
            raise ProtocolError("no request is waiting for a reply")
        try:
            return self._read_reply()
        except BaseException:
            self.close()  # a half-read stream cannot be reused
            raise

    def call_many(self, reqs: list[dict], window: int = 256) -> list[dict]:
        """Send requests pipelined (at most ``window`` unanswered) and
        return their replies in order.  Used by bulk restores, where a
        round trip per command would dominate."""
        frames = [encode(r) for r in reqs]
        for f in frames:
            if len(f) - 4 > MAX_REQUEST:
                raise OSError(errno.EMSGSIZE, f"request of {len(f) - 4} bytes is over the {MAX_REQUEST} byte limit")
        self.connect()
        replies: list[dict] = []
        try:
            sent = 0
            while len(replies) < len(frames):
                if sent < len(frames) and sent - len(replies) <= window // 2:
                    end = min(len(frames), len(replies) + window)
                    self._send(b"".join(frames[sent:end]))
                    sent = end
                replies.append(self._read_reply())
        except BaseException:
            # A half-read stream cannot be reused.
            self.close()
            raise
        return replies


def call(req: dict, path: str | None = None) -> dict:
    """One request on a fresh connection."""
    with Client(path) as c:
        return c.call(req)
