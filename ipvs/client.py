"""Client side of the director's control socket.

There is no kernel file to mirror: this is what ``libipvs`` (ipvsadm's
library that speaks generic netlink to the kernel) becomes when the IPVS
instance lives in a daemon.  The messages themselves are the schema of
:mod:`ipvs.netlink`; this module only carries them.

Where the socket is.  ``Client(path)`` connects to ``path``, else to the
``IPVS_SOCKET`` environment variable, else to :func:`default_socket`:
``/run/pyipvs/<netns>/ipvsd.sock``, a path in a directory only root can
write, one per network namespace (``<netns>`` is the name ``ip netns``
gave the namespace, ``init`` for the host's, else ``net-<inode>``), so a
director started inside a namespace is the one ``ipvsadm`` run inside that
namespace reaches, as each namespace has its own kernel IPVS.  A value
starting with ``@`` (as ``ss`` prints them) names an abstract socket.

Who answers.  Kernel IPVS is reached through netlink, where only the
kernel can answer.  A Unix socket can be served by anyone who bound it
first, so the client checks the server's credentials (``SO_PEERCRED``)
before sending anything: the server must run as root, as the client's own
user, or as the user named by ``IPVS_DAEMON_USER``.  Anything else raises
``PermissionError`` and no request leaves the client.

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
import time

#: The directory of the default control sockets (one subdirectory per
#: network namespace); ``$IPVS_RUN_DIR`` overrides it (tests).
RUN_DIR = "/run/pyipvs"
RUN_DIR_ENV = "IPVS_RUN_DIR"
#: Environment variable that overrides the default socket.
SOCKET_ENV = "IPVS_SOCKET"
#: A user (name or uid) besides root whose daemon a client trusts.
DAEMON_USER_ENV = "IPVS_DAEMON_USER"
#: <asm-generic/socket.h>; PyPy's socket module does not export it.
SO_PEERCRED = getattr(socket, "SO_PEERCRED", 17)
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
#: How long a connect() to a full backlog (EAGAIN) is retried when the
#: client has no timeout of its own.
CONNECT_RETRY_S = 5.0
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


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    return _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, SO_PEERCRED, _UCRED.size))


def netns_name() -> str:
    """A stable name for this process's network namespace.

    The name ``ip netns add`` gave it (its bind mount in ``/run/netns``),
    ``init`` for the host's namespace, else ``net-<inode>``.  Names stay
    the same when a namespace is made again, which an inode does not.
    """
    try:
        me = os.stat("/proc/self/ns/net")
    except OSError:
        return "init"
    try:
        init = os.stat("/proc/1/ns/net")
        if (init.st_dev, init.st_ino) == (me.st_dev, me.st_ino):
            return "init"
    except OSError:
        pass  # /proc/1 of another pid namespace, or not ours to read
    try:
        names = sorted(os.listdir("/run/netns"))
    except OSError:
        names = []
    for name in names:
        try:
            st = os.stat(os.path.join("/run/netns", name))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (me.st_dev, me.st_ino):
            return name
    return f"net-{me.st_ino}"


def run_dir() -> str:
    """The root-owned directory of this namespace's control socket."""
    return os.path.join(os.environ.get(RUN_DIR_ENV) or RUN_DIR, netns_name())


def default_socket() -> str:
    """The control socket when none is named: ``/run/pyipvs/<netns>/ipvsd.sock``."""
    return os.path.join(run_dir(), "ipvsd.sock")


def trusted_uids() -> set[int]:
    """The users whose daemon a client will talk to: root, itself, ``$IPVS_DAEMON_USER``."""
    uids = {0, os.geteuid()}
    who = os.environ.get(DAEMON_USER_ENV, "").strip()
    if who.isdigit():
        uids.add(int(who))
    elif who:
        import pwd

        try:
            uids.add(pwd.getpwnam(who).pw_uid)
        except KeyError:
            pass
    return uids


def socket_address(path: str | None = None) -> str:
    """The address a client (or the daemon) uses: argument, env, default.

    ``@name`` is turned into the abstract name ``\\0name``.
    """
    addr = path or os.environ.get(SOCKET_ENV) or default_socket()
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
        """Open the connection now (raises if no daemon listens, or if the
        one that listens is not run by a trusted user)."""
        if self._sock is not None:
            return
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            self._connect(s)
            self._check_server(s)
        except OSError:
            s.close()
            raise
        self._sock = s

    def _connect(self, s: socket.socket) -> None:
        """connect(), retried while the daemon's backlog is full: a Unix
        socket answers EAGAIN at once then, where TCP would wait."""
        give_up = time.monotonic() + (self.timeout if self.timeout is not None else CONNECT_RETRY_S)
        pause = 0.001
        while True:
            try:
                s.connect(self.address)
                return
            except BlockingIOError:
                if time.monotonic() + pause > give_up:
                    raise OSError(errno.EAGAIN, f"control socket {display_address(self.address)}: "
                                  "the daemon's backlog stays full") from None
            except PermissionError as e:
                # The socket's mode kept us out: the kernel's answer to a
                # user without CAP_NET_ADMIN is EPERM, and ipvsadm says so.
                raise PermissionError(errno.EPERM, f"{display_address(self.address)}: {e.strerror}") from None
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _check_server(self, s: socket.socket) -> None:
        """Refuse a server that is not root (or a trusted user): anyone
        can bind a name nobody holds, and would then read our commands and
        make up our listings."""
        pid, uid, _gid = peer_credentials(s)
        if uid not in trusted_uids():
            raise PermissionError(errno.EPERM, f"control socket {display_address(self.address)} is served by "
                                  f"uid {uid} (pid {pid}), not by root: not talking to it")

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
