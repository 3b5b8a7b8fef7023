"""The director daemon: one IPVS instance, its control socket, its timers
and (optionally) a data path.

No single kernel file corresponds to this module.  It plays the parts the
kernel spreads around IPVS: the generic-netlink socket user space talks to
(``ip_vs_genl_*`` in ``ip_vs_ctl.c``, reached here through a Unix socket
and :func:`ipvs.netlink.dispatch`), the ``CAP_NET_ADMIN`` check on every
command, the timers (connection expiry, the estimator, the destination
trash: :meth:`ipvs.core.Director.run_timers`) and the ``/proc`` files
(:mod:`ipvs.procfs`, optionally written into a directory every second).

Pieces:

* :class:`ControlServer`: the Unix socket.  Non-blocking, driven by a
  :mod:`selectors` selector, any number of clients at once, requests may be
  pipelined.  Each connection is checked once with ``SO_PEERCRED``: uid 0
  (and the daemon's own uid) may talk to it; ``allowed_gid`` grants a
  group too.  Others get one ``EPERM`` reply and are disconnected, as the
  kernel answers ``EPERM`` to a user without ``CAP_NET_ADMIN``.  A frame
  over ``max_request`` bytes gets an ``EMSGSIZE`` reply and the connection
  is closed (the rest of the stream can no longer be framed); bad JSON or
  a non-object gets an ``EINVAL`` reply and the connection stays usable.
* :class:`Daemon`: the main loop.  One selector serves the control socket
  and the data-path plug-in's file descriptors; between events it runs the
  director's timers when due (every jiffy at most, HZ=250) and refreshes
  the ``/proc`` directory.  SIGTERM stops it cleanly (rules saved if asked,
  socket and files removed), SIGHUP reloads the rules file.

The data-path plug-in interface (implemented by :mod:`ipvs.driver`):
``fds() -> list[int]``, ``on_readable(fd, now)``, ``poll_timeout() ->
float | None`` (seconds), ``spin() -> bool`` (busy polling before the
loop sleeps: True when there is work after all), ``on_idle(now)`` and
``close()``; ``now`` is in jiffies.

Time: the daemon is the only place above the driver that reads a clock;
``now`` in jiffies is ``int(time.monotonic() * hz)``.
"""

from __future__ import annotations

import errno
import faulthandler
import gc
import importlib
import io
import json
import logging
import os
import selectors
import signal
import socket
import stat
import struct
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ipvs import procfs, rules, systemd
from ipvs.cli import ipvsadm
from ipvs.client import (
    MAX_REQUEST,
    SO_PEERCRED,  # noqa: F401 (re-exported: one definition for both ends)
    default_socket,
    display_address,
    encode,
    peer_credentials,
    socket_address,
)
from ipvs.core import Director
from ipvs.ip_vs import IPVSProtocol
from ipvs.xmit import tunnel_encap

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.netns import NetnsIPVS

log = logging.getLogger("ipvs.daemon")

_LEN = struct.Struct("!I")

#: Stop reading a client's requests while this much reply data waits for it.
OUT_HIGH_WATER = 1 << 20
#: Largest reply one request may build (a BATCH over it is cut short with
#: ``EMSGSIZE``): what a client holds in memory for one answer.
MAX_REPLY_BYTES = 64 << 20
#: Bytes read from a client at a time.
RECV_CHUNK = 64 << 10  # below malloc's mmap threshold: recv() allocates this much each call
#: Most clients connected at once; more are answered EAGAIN and closed.
MAX_CLIENTS = 256
#: Of those, places only root may take: users of ``--group`` cannot lock root out.
ROOT_RESERVE = 32
#: Most connections of one non-root user.
MAX_PER_USER = 64
#: How long to stop accepting after accept() failed (out of descriptors).
ACCEPT_PAUSE_S = 0.1
#: A connection that neither sends nor reads anything for this long is dropped.
IDLE_TIMEOUT_S = 60.0
#: Control work done in one turn of the loop before the data path's turn
#: comes again; what is left goes on in the next turn.
TURN_BUDGET_S = 0.002
#: The state file is written at most this often (and at stop).
STATE_INTERVAL_S = 1.0
#: The comment lines a state file starts with.
STATE_HEADER = ["# ipvsd state: the rules it ran last, restored at its start (ipvsadm -S -n format,",
                "# then --set if the timeouts were changed); the '# sysctl' lines are the net.ipv4.vs",
                "# settings that differ from the defaults."]
#: A setting in the state file's header: ``# sysctl net.ipv4.vs.NAME = VALUE``.
SYSCTL_LINE = "# sysctl net.ipv4.vs."
#: ``ipvsadm --set``'s defaults (tcp, tcpfin, udp): ESTABLISHED, FIN_WAIT, UDP.
DEFAULT_TIMEOUTS = (900, 120, 300)
#: Where state files live, one directory per network namespace; ``$IPVSD_STATE_DIR`` overrides it.
STATE_DIR = "/var/lib/pyipvs"
STATE_DIR_ENV = "IPVSD_STATE_DIR"


def _mtime(path: str) -> float:
    return os.stat(path).st_mtime


def default_state_file(address: str | None = None) -> str:
    """One state file per instance: ``/var/lib/pyipvs/<netns>/ipvsadm.rules``
    for the namespace's default socket, ``.../socket-<hash>.rules`` for a
    daemon on another socket (``address``), which is another instance."""
    import hashlib

    from ipvs.client import netns_name

    name = "ipvsadm.rules"
    if address is not None and address != default_socket():
        name = f"socket-{hashlib.sha256(address.encode('utf-8', 'surrogateescape')).hexdigest()[:16]}.rules"
    return os.path.join(os.environ.get(STATE_DIR_ENV) or STATE_DIR, netns_name(), name)


class RateLimit:
    """``net_ratelimit()``: at most ``burst`` messages per ``interval``
    seconds; the number held back is told with the next one let through."""

    def __init__(self, burst: int = 10, interval: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.interval = interval
        self.clock = clock
        self.begin = -interval
        self.printed = 0
        self.missed = 0

    def __call__(self) -> bool:
        now = self.clock()
        if now - self.begin >= self.interval:
            if self.missed:
                log.warning("%d control messages suppressed", self.missed)
            self.begin, self.printed, self.missed = now, 0, 0
        if self.printed < self.burst:
            self.printed += 1
            return True
        self.missed += 1
        return False


def error_reply(err: int, message: str) -> dict:
    """An error reply: the kernel errno (number and name) and a message.

    The same shape as the error replies of :func:`ipvs.netlink.dispatch`.
    """
    try:
        nl = importlib.import_module("ipvs.netlink")
        make = getattr(nl, "error_reply", None)
        if make is not None:
            return make(err, message)
    except ImportError:
        pass
    return {"errno": err, "error": errno.errorcode.get(err, str(err)), "message": message}


def jiffies(hz: int, clock: Callable[[], float] = time.monotonic) -> int:
    """The current time in jiffies."""
    return int(clock() * hz)


def _supplementary_groups(pid: int) -> set[int]:
    """A process's supplementary groups (SO_PEERCRED gives only the primary gid)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except (OSError, ValueError):
        pass
    return set()


def _json_error(e: ValueError) -> str:
    """Say where decoding failed without the decoder's message: PyPy 3.9
    builds that message from the offending character unchecked, and
    formatting it can then fail inside the interpreter."""
    if isinstance(e, json.JSONDecodeError):
        return f"invalid JSON at line {e.lineno} column {e.colno} (char {e.pos})"
    if isinstance(e, UnicodeDecodeError):
        return f"invalid UTF-8 at byte {e.start}"
    return str(e)


def _secure_dir(path: str, create: bool) -> None:
    """Make sure only root (this process's user) can create names in ``path``.

    With ``create``, missing directories are made (mode 0755).  A directory
    another user owns or may write into (without the sticky bit) is
    refused: whoever can write there can put their own socket in our place.
    """
    if create and not os.path.isdir(path):
        os.makedirs(path, mode=0o755, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, f"{path} is not a directory")
    if st.st_uid not in (0, os.geteuid()):
        raise OSError(errno.EPERM, f"{path} belongs to uid {st.st_uid}: refusing to put the control socket there")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise OSError(errno.EPERM, f"{path} is writable by others: refusing to put the control socket there")


class _Peer:
    """One connected client."""

    __slots__ = ("sock", "fd", "inbuf", "outbuf", "pid", "uid", "gid", "closing", "eof", "last", "events", "job")

    def __init__(self, sock: socket.socket, pid: int, uid: int, gid: int, now: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.pid, self.uid, self.gid = pid, uid, gid
        self.closing = False  # close once outbuf is flushed
        self.eof = False  # the client is done sending: answer what is complete, then close
        self.last = now
        self.events = 0
        self.job: _BatchJob | None = None


class _BatchJob:
    """A BATCH being answered a slice at a time: the inner replies, each
    encoded as it comes, are joined into one reply frame at the end."""

    __slots__ = ("steps", "requests", "parts", "size", "done", "total", "seq")

    def __init__(self, steps: Any, requests: list, seq: Any) -> None:
        self.steps = steps
        self.requests = requests
        self.parts: list[bytes] = []
        self.size = 0
        self.done = 0
        self.total = len(requests)
        self.seq = seq

    def frame(self) -> bytes:
        seq = f',"seq":{self.seq}' if isinstance(self.seq, int) else ""
        body = b'{"version":1,"ok":true,"replies":[' + b",".join(self.parts) + f"]{seq}}}".encode()
        return _LEN.pack(len(body)) + body


class ControlServer:
    """The control socket of one instance.

    ``path`` is a filesystem path or an abstract name (leading NUL or
    ``@``); None means ``$IPVS_SOCKET`` or the default path (see
    :func:`ipvs.client.default_socket`).  With ``selector`` given, the
    server registers its sockets there (the :class:`Daemon` does this);
    otherwise call :meth:`serve` to run it.  ``handler`` replaces
    :func:`ipvs.netlink.dispatch` (tests).  ``on_change`` is called after
    a request that may have changed the rules ran.  ``counters`` returns
    what the daemon adds to a ``GET_COUNTERS`` reply (the data path's and
    the loop's counters, next to the core's ``counters``).
    """

    def __init__(
        self,
        ipvs: NetnsIPVS,
        director: Any = None,
        path: str | None = None,
        allowed_gid: int | None = None,
        *,
        max_request: int = MAX_REQUEST,
        selector: selectors.BaseSelector | None = None,
        clock: Callable[[], float] = time.monotonic,
        handler: Callable[[NetnsIPVS, dict, int], dict] | None = None,
        on_change: Callable[[], None] | None = None,
        counters: Callable[[], dict] | None = None,
    ) -> None:
        self.ipvs = ipvs
        self.director = director
        self.counters = counters
        self.allowed_gid = allowed_gid
        self.max_request = max_request
        self.clock = clock
        self.handler = handler
        self.on_change = on_change
        self.address = socket_address(path)
        self._own_selector = selector is None
        self.sel = selector if selector is not None else selectors.DefaultSelector()
        self.peers: dict[int, _Peer] = {}
        self.requests = 0
        self.errors = 0
        self.refused = 0
        self.ratelimit = RateLimit(clock=clock)
        self._dispatch: Callable | None = None
        self._netlink: Any = None
        self._accept_paused_until: float | None = None
        self._deadline = float("inf")
        self._pending: dict[int, _Peer] = {}  # peers with requests left for a later turn
        default = self.address == default_socket()
        self._listen = self._bind(self.address, allowed_gid, default)
        #: The namespace's directory of the default socket (None for a named one).
        self._netns_dir = os.path.dirname(self.address) if default else None
        self.sel.register(self._listen, selectors.EVENT_READ, self._on_accept)

    # ---------------------------------------------------------- socket

    @staticmethod
    def _bind(address: str, allowed_gid: int | None = None, default: bool = False) -> socket.socket:
        """Bind and listen on ``address``; ``default``: it is the namespace's
        default socket, whose directories are made here if missing."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if not address.startswith("\0"):
                parent = os.path.dirname(address) or "."
                if default:
                    _secure_dir(os.path.dirname(parent), create=True)
                _secure_dir(parent, create=default)
                ControlServer._remove_stale(address)
            try:
                s.bind(address)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise OSError(errno.EADDRINUSE, ControlServer._holder(address)) from None
                raise
            if not address.startswith("\0"):
                # Only root (and the group) may connect; SO_PEERCRED checks again.
                if allowed_gid is not None:
                    os.chown(address, -1, allowed_gid)
                os.chmod(address, 0o660 if allowed_gid is not None else 0o600)
            s.listen(128)
            s.setblocking(False)
        except OSError:
            s.close()
            raise
        return s

    @staticmethod
    def _holder(address: str) -> str:
        """Who holds a name we could not bind (for the refusal's message)."""
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(address)
            pid, uid, _gid = peer_credentials(probe)
        except OSError:
            return f"{display_address(address)} is in use"
        finally:
            probe.close()
        return f"{display_address(address)} is held by pid {pid} (uid {uid}): not starting"

    @staticmethod
    def _remove_stale(path: str) -> None:
        """Remove a socket file left by a daemon that died, refuse to steal a live one."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: stale
            return
        finally:
            probe.close()
        raise OSError(errno.EADDRINUSE, f"a daemon already listens on {path}")

    def fileno(self) -> int:
        """The listening socket's descriptor, for the daemon's poll loop."""
        return self._listen.fileno()

    def close(self) -> None:
        """Close every connection and the listening socket, unlink its file."""
        for peer in list(self.peers.values()):
            self._drop(peer)
        if self._listen.fileno() >= 0:
            if self._accept_paused_until is None:
                self.sel.unregister(self._listen)
            self._listen.close()
            if not self.address.startswith("\0"):
                try:
                    os.unlink(self.address)
                except FileNotFoundError:
                    pass
                if self._netns_dir is not None:
                    # The namespace's own directory goes with its daemon, as
                    # systemd's RuntimeDirectory= would (test namespaces have
                    # names of their own, and left one each); not if it holds
                    # anything else.
                    try:
                        os.rmdir(self._netns_dir)
                    except OSError:
                        pass
        if self._own_selector:
            self.sel.close()

    def serve(self, timeout: float | None = None) -> None:
        """Handle whatever is ready (standalone use, with the own selector)."""
        self.begin_turn()
        for key, mask in self.sel.select(0 if self._pending else timeout):
            key.data(mask)
        self.run_pending()
        self.tick()

    # --------------------------------------------------------- clients

    def _allowed(self, pid: int, uid: int, gid: int) -> bool:
        if uid == 0 or uid == os.geteuid():
            return True
        if self.allowed_gid is None:
            return False
        return gid == self.allowed_gid or self.allowed_gid in _supplementary_groups(pid)

    def _room_for(self, uid: int) -> bool:
        """Connection limits: root may use every place, others leave
        ``ROOT_RESERVE`` free and hold at most ``MAX_PER_USER`` each."""
        if len(self.peers) > MAX_CLIENTS:
            return False
        if uid == 0:
            return True
        if len(self.peers) > MAX_CLIENTS - ROOT_RESERVE:
            return False
        return sum(1 for p in self.peers.values() if p.uid == uid) <= MAX_PER_USER

    def _on_accept(self, mask: int) -> None:
        while True:
            try:
                sock, _ = self._listen.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # EMFILE and friends: the connection stays queued and the
                # socket stays readable, so stop listening for a moment
                # instead of spinning; keep serving the others.
                if self.ratelimit():
                    log.warning("accept on control socket failed: %s", e)
                self.sel.unregister(self._listen)
                self._accept_paused_until = self.clock() + ACCEPT_PAUSE_S
                return
            sock.setblocking(False)
            try:
                pid, uid, gid = peer_credentials(sock)
            except OSError:
                pid = uid = gid = -1
            peer = _Peer(sock, pid, uid, gid, self.clock())
            self.peers[peer.fd] = peer
            self.sel.register(sock, selectors.EVENT_READ, lambda m, p=peer: self._on_peer(p, m))
            peer.events = selectors.EVENT_READ
            if not self._allowed(pid, uid, gid):
                self.refused += 1
                if self.ratelimit():
                    log.info("control connection from uid %d (pid %d) refused", uid, pid)
                self._fail(peer, errno.EPERM, "Permission denied (you must be root)")
            elif not self._room_for(uid):
                self._fail(peer, errno.EAGAIN, "too many control connections")

    def _fail(self, peer: _Peer, err: int, message: str) -> None:
        """Answer once with an error, then close."""
        self.errors += 1
        peer.outbuf += encode(error_reply(err, message))
        peer.closing = True
        peer.inbuf.clear()
        peer.job = None
        self._pending.pop(peer.fd, None)
        self._flush(peer)

    def _drop(self, peer: _Peer) -> None:
        self.peers.pop(peer.fd, None)
        self._pending.pop(peer.fd, None)
        if peer.events:
            try:
                self.sel.unregister(peer.sock)
            except (KeyError, ValueError):
                pass
        peer.sock.close()

    def _on_peer(self, peer: _Peer, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            self._read(peer)
        if peer.fd in self.peers and mask & selectors.EVENT_WRITE:
            self._flush(peer)

    def _read(self, peer: _Peer) -> None:
        try:
            data = peer.sock.recv(RECV_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(peer)
            return
        peer.last = self.clock()
        if not data:
            # The client is done sending; answer what is complete, then close.
            peer.eof = True
        elif peer.closing:
            return  # refused or failed: discard
        else:
            peer.inbuf += data
        self._process(peer)
        self._flush(peer)

    # -------------------------------------------------------- requests

    def begin_turn(self) -> None:
        """Start a turn of the loop: control work stops at the turn's deadline."""
        self._deadline = self.clock() + TURN_BUDGET_S

    def has_pending(self) -> bool:
        """Requests wait for the next turn (the loop should not sleep)."""
        return bool(self._pending)

    def run_pending(self) -> None:
        """Go on with requests left over from earlier turns, until the deadline."""
        for peer in list(self._pending.values()):
            if self.clock() >= self._deadline:
                return
            if peer.fd in self.peers:
                self._process(peer)
                self._flush(peer)

    def _process(self, peer: _Peer) -> None:
        # The cyclic garbage collector is paused while requests run: a BATCH
        # of a thousand NEW_DESTs allocates thousands of long-lived objects,
        # each allocation burst sets off collections that walk the whole
        # (growing) rule table, and none of it is cyclic garbage.
        enabled = gc.isenabled()
        gc.disable()
        try:
            self._process_frames(peer)
        finally:
            if enabled:
                gc.enable()
        if peer.closing or peer.fd not in self.peers:
            self._pending.pop(peer.fd, None)
        elif peer.job is not None or (self._complete_frame(peer) and len(peer.outbuf) < OUT_HIGH_WATER):
            self._pending[peer.fd] = peer
        else:
            self._pending.pop(peer.fd, None)
            if peer.eof and not peer.outbuf:
                peer.closing = True
            elif peer.eof:
                peer.closing = True  # flushed, then closed

    def _complete_frame(self, peer: _Peer) -> bool:
        buf = peer.inbuf
        if len(buf) < 4:
            return False
        (n,) = _LEN.unpack_from(buf, 0)
        return n > self.max_request or len(buf) - 4 >= n

    def _process_frames(self, peer: _Peer) -> None:
        buf = peer.inbuf
        pos = 0
        try:
            while not peer.closing and len(peer.outbuf) < OUT_HIGH_WATER:
                if peer.job is not None:
                    if not self._run_job(peer):
                        return
                    continue
                if self.clock() >= self._deadline or len(buf) - pos < 4:
                    return
                (n,) = _LEN.unpack_from(buf, pos)
                if n > self.max_request:
                    del buf[:]
                    pos = 0
                    self._fail(peer, errno.EMSGSIZE, f"request of {n} bytes is over the {self.max_request} byte limit")
                    return
                if len(buf) - pos - 4 < n:
                    return
                body = bytes(buf[pos + 4 : pos + 4 + n])
                pos += 4 + n
                self._request(peer, body)
        finally:
            if pos:
                del buf[:pos]

    def _request(self, peer: _Peer, body: bytes) -> None:
        """Answer one frame: every error becomes an error reply, nothing
        a client sends leaves this function as an exception."""
        try:
            req, refusal = self._decode(body)
            if refusal is not None:
                reply = refusal
            elif req.get("cmd") == "BATCH" and self.handler is None and self._start_job(peer, req):
                return
            else:
                reply = self.handle(req)
            frame = self._encode(reply)
        except Exception as e:  # the one boundary: a bug here must not end the daemon
            self.errors += 1
            if self.ratelimit():
                log.warning("control request failed: %s: %s", type(e).__name__, e)
            frame = encode(error_reply(errno.EIO, f"internal error: {type(e).__name__}"))
        peer.outbuf += frame

    def _decode(self, body: bytes) -> tuple[dict, dict | None]:
        """(request, None), or ({}, error reply) for a frame that holds no request."""
        self.requests += 1
        try:
            req = json.loads(body.decode("utf-8"))
        except ValueError as e:  # also CPython's limit on an integer's digits
            self.errors += 1
            return {}, error_reply(errno.EINVAL, f"request is not UTF-8 JSON: {_json_error(e)}")
        except RecursionError:
            self.errors += 1
            return {}, error_reply(errno.EINVAL, "request nests too deeply")
        if not isinstance(req, dict):
            self.errors += 1
            return {}, error_reply(errno.EINVAL, f"request must be a JSON object, not {type(req).__name__}")
        return req, None

    def _encode(self, reply: dict) -> bytes:
        """A reply frame; a reply that cannot be encoded (a string that is
        not Unicode text) or is too large becomes an error reply."""
        try:
            frame = encode(reply)
        except (ValueError, TypeError, RecursionError) as e:
            self.errors += 1
            return encode(error_reply(errno.EIO, f"internal error: the reply cannot be encoded ({type(e).__name__})"))
        if len(frame) > MAX_REPLY_BYTES:
            self.errors += 1
            return encode(error_reply(errno.EMSGSIZE, f"reply of {len(frame)} bytes is over the {MAX_REPLY_BYTES} "
                                      "byte limit"))
        return frame

    def _answer(self, body: bytes) -> dict:
        """One frame's reply as an object (for callers without a peer)."""
        req, refusal = self._decode(body)
        return refusal if refusal is not None else self.handle(req)

    def _start_job(self, peer: _Peer, req: dict) -> bool:
        """Begin a BATCH that runs a slice per turn; False if the schema
        rejects it as a whole (the caller answers as for any request)."""
        nl = self._schema()
        if nl is None or not hasattr(nl, "batch_steps"):
            return False
        try:
            nl.validate(req)
        except nl.SchemaError:
            return False
        if not isinstance(req.get("requests"), list):
            return False
        steps = nl.batch_steps(self.ipvs, req, jiffies(self.ipvs.hz, self.clock))
        peer.job = _BatchJob(steps, req["requests"], req.get("seq"))
        self._run_job(peer)
        return True

    def _run_job(self, peer: _Peer) -> bool:
        """Run a slice of the peer's BATCH; True once its reply is queued."""
        job = peer.job
        assert job is not None
        while True:
            if self.clock() >= self._deadline:
                return False
            try:
                inner = next(job.steps)
            except StopIteration:
                break
            except Exception as e:  # the one boundary, for each request of the batch
                self.errors += 1
                if self.ratelimit():
                    log.warning("control request failed: %s: %s", type(e).__name__, e)
                inner = error_reply(errno.EIO, f"internal error: {type(e).__name__}")
            if self.on_change is not None and inner.get("ok") and self._changes(job.requests[job.done]):
                self.on_change()
            job.done += 1
            part = self._encode(inner)[4:]
            job.parts.append(part)
            job.size += len(part) + 1
            if job.size > MAX_REPLY_BYTES:
                peer.job = None
                self.errors += 1
                peer.outbuf += encode(error_reply(
                    errno.EMSGSIZE, f"BATCH reply over the {MAX_REPLY_BYTES} byte limit after {job.done} of "
                    f"{job.total} requests (those ran, the others did not): send smaller batches"))
                return True
        peer.job = None
        peer.outbuf += job.frame()
        return True

    def _schema(self) -> Any:
        if self._netlink is None:
            try:
                self._netlink = importlib.import_module("ipvs.netlink")
            except ModuleNotFoundError as e:
                if e.name != "ipvs.netlink":
                    raise
                return None
        return self._netlink

    def handle(self, req: dict) -> dict:
        """Answer one decoded request (``ipvs.netlink.dispatch``)."""
        dispatch = self.handler or self._load_dispatch()
        if dispatch is None:
            self.errors += 1
            return error_reply(errno.ENOSYS, "this PyIPVS has no message schema (ipvs.netlink is missing)")
        now = jiffies(self.ipvs.hz, self.clock)
        try:
            reply = dispatch(self.ipvs, req, now)
        except RecursionError:
            self.errors += 1
            return error_reply(errno.EINVAL, "request nests too deeply")
        except Exception as e:  # bad input must never take the daemon down
            self.errors += 1
            if self.ratelimit():
                log.warning("request %.200r failed: %s: %s", req, type(e).__name__, e,
                            exc_info=log.isEnabledFor(10))
            err = getattr(e, "errno", None)
            return error_reply(err if isinstance(err, int) and err > 0 else errno.EINVAL, f"{type(e).__name__}: {e}")
        if not isinstance(reply, dict):
            self.errors += 1
            return error_reply(errno.EIO, "internal error: dispatch returned no reply object")
        if reply.get("ok"):
            if self.on_change is not None and self._changes(req):
                self.on_change()
            if self.counters is not None and req.get("cmd") == "GET_COUNTERS":
                reply.update(self.counters())
        return reply

    def _changes(self, req: Any) -> bool:
        """Whether a request may have changed what the state file keeps."""
        if not isinstance(req, dict):
            return False
        nl = self._schema()
        changing = getattr(nl, "CHANGING", ()) if nl is not None else ()
        cmd = req.get("cmd")
        if cmd == "BATCH":
            inner = req.get("requests")
            return isinstance(inner, list) and any(isinstance(r, dict) and r.get("cmd") in changing for r in inner)
        return cmd in changing

    def _load_dispatch(self) -> Callable | None:
        if self._dispatch is None:
            nl = self._schema()
            if nl is None:
                return None
            self._dispatch = nl.dispatch
        return self._dispatch

    def _flush(self, peer: _Peer) -> None:
        if peer.outbuf:
            try:
                sent = peer.sock.send(peer.outbuf)
                del peer.outbuf[:sent]
                if sent:
                    peer.last = self.clock()
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._drop(peer)
                return
        if not peer.outbuf:
            if peer.closing:
                self._drop(peer)
                return
            if peer.fd not in self._pending and self._complete_frame(peer) and self.clock() < self._deadline:
                # Requests held back by the high-water mark can go on now.
                self._process(peer)
                if peer.outbuf:
                    return self._flush(peer)
            if peer.closing:
                self._drop(peer)
                return
        want = 0
        # Read on only while little waits: the input buffer then holds at
        # most one frame and a chunk, the output buffer one high-water mark.
        if (not peer.closing and not peer.eof and len(peer.outbuf) < OUT_HIGH_WATER
                and peer.fd not in self._pending and len(peer.inbuf) <= self.max_request + 4):
            want |= selectors.EVENT_READ
        if peer.outbuf:
            want |= selectors.EVENT_WRITE
        if want != peer.events:
            callback = lambda m, p=peer: self._on_peer(p, m)  # noqa: E731
            if not want:
                self.sel.unregister(peer.sock)  # waits for its turn (pending) or has nothing to do
            elif not peer.events:
                self.sel.register(peer.sock, want, callback)
            else:
                self.sel.modify(peer.sock, want, callback)
            peer.events = want

    def tick(self) -> None:
        """Resume accepting after a pause (called by the main loop)."""
        if self._accept_paused_until is not None and self.clock() >= self._accept_paused_until:
            self._accept_paused_until = None
            self.sel.register(self._listen, selectors.EVENT_READ, self._on_accept)

    def sweep(self) -> None:
        """Drop connections that did nothing (sent nothing, read nothing)
        for ``IDLE_TIMEOUT_S``: a client that never sends, that stalled in
        the middle of a frame, or that does not read its replies."""
        limit = self.clock() - IDLE_TIMEOUT_S
        for peer in list(self.peers.values()):
            if peer.last < limit and peer.fd not in self._pending:
                if self.ratelimit():
                    log.info("dropping idle control connection (pid %d, uid %d)", peer.pid, peer.uid)
                self._drop(peer)


class InProcessTransport:
    """A transport for :mod:`ipvs.cli.ipvsadm` that calls the schema directly
    (used by the daemon itself to restore and save its rules file)."""

    def __init__(self, server: ControlServer) -> None:
        self.server = server

    def call(self, req: dict) -> dict:
        """Handle one request in this process, as the control socket would; returns the reply."""
        return self.server.handle(req)

    def call_many(self, reqs: list[dict]) -> list[dict]:
        """Handle several requests in order; returns their replies in the same order."""
        return [self.server.handle(r) for r in reqs]

    def close(self) -> None:
        """Nothing to close: the transport holds no socket (the client interface asks for the method)."""
        pass


class ProcfsWriter:
    """Writes the ``/proc`` views into ``root`` the way ``/proc`` lays them out:
    ``root/net/ip_vs*`` and ``root/sys/net/ipv4/vs/*``, each file replaced
    atomically so a reader (node_exporter) never sees half a file.

    The daemon calls :meth:`write` every second.  A view that is slow to
    render (``ip_vs_conn`` with a hundred thousand connections) is
    refreshed less often, so that rendering it takes at most
    ``1/budget`` of the director's time: the data path runs in the same
    loop and must not stall for it.
    """

    def __init__(self, ipvs: NetnsIPVS, root: str | os.PathLike, budget: float = 50.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ipvs = ipvs
        self.root = Path(root)
        self.budget = budget
        self.clock = clock
        self.written: set[Path] = set()
        self.created: list[Path] = []
        self.next_due: dict[str, float] = {}
        self._lock_fd: int | None = None

    def _claim(self) -> None:
        """Hold ``root/ipvsd.pid`` locked while this writer lives
        (:func:`ipvs.procfs.writer_alive`); refuse a directory another
        live daemon writes."""
        import fcntl

        path = self.root / procfs.WRITER_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OSError(errno.EBUSY, f"another daemon writes {self.root}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        self.written.add(path)

    def _mkdir(self, d: Path) -> None:
        missing = []
        p = d
        while not p.exists():
            missing.append(p)
            p = p.parent
        for m in reversed(missing):
            m.mkdir()
            self.created.append(m)

    def _write(self, path: Path, text: str) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        self.written.add(path)

    def write(self, now: int, force: bool = False) -> None:
        """Write every view that is due (all of them with ``force``)."""
        net = self.root / "net"
        vs = self.root / "sys" / "net" / "ipv4" / "vs"
        self._mkdir(net)
        self._mkdir(vs)
        if self._lock_fd is None:
            self._claim()
        for name in procfs.PROC_NAMES:
            t0 = self.clock()
            if not force and t0 < self.next_due.get(name, 0.0):
                continue
            self._write(net / name, procfs.render(self.ipvs, name, now))
            self.next_due[name] = t0 + (self.clock() - t0) * self.budget
        for name, text in procfs.render_sysctl(self.ipvs).items():
            self._write(vs / name, text)

    def remove(self) -> None:
        """Remove the files (and the directories) this writer created."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        for p in self.written:
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        self.written.clear()
        for d in reversed(self.created):
            try:
                d.rmdir()
            except OSError:
                pass
        self.created.clear()


def resident_bytes(proc: str = "/proc", private: bool = False) -> int:
    """This process's resident memory in bytes (0 if unknown); with
    ``private``, less its resident pages that map files (``statm``'s
    ``shared``: the interpreter's and libraries' code and data, and the
    data path's rings)."""
    try:
        with open(os.path.join(proc, "self", "statm")) as f:
            fields = f.read().split()
        return (int(fields[1]) - (int(fields[2]) if private else 0)) * MemoryBudget.PAGE
    except (OSError, ValueError, IndexError):
        return 0


def malloc_trim() -> Callable[[], int] | None:
    """The C library's ``malloc_trim(0)`` (glibc), or None where there is none.

    It hands the free pages of malloc's heap back to the system
    (``MADV_DONTNEED`` on every free chunk of a page or more, not only at
    the heap's top).  Both runtimes keep memory they freed there: PyPy
    frees the GC's emptied arenas with ``free()``, CPython its larger
    objects (dict tables, buffers), and without a trim the resident size
    stays at its peak after a flood's entries are gone.  The kernel's
    freed slab pages go back to its page allocator; this is that step."""
    try:
        import ctypes

        fn = ctypes.CDLL(None).malloc_trim
    except (ImportError, OSError, AttributeError):  # not glibc (musl has none), or no ctypes
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: fn(0)


class MemoryBudget:
    """The memory PyIPVS may use and how much of it is left: the daemon's
    stand-in for the kernel's ``si_meminfo`` in ``update_defense_level``.

    The budget is, in this order: ``limit`` (``--memory-budget``), the
    memory limit of the process's cgroup (v2 ``memory.max``), else the
    machine's.  What is left is the limit less what the process holds
    (:meth:`used`), the cgroup's limit less its ``memory.current``, or the
    machine's ``MemAvailable``.  :meth:`left_pages` is what
    ``ipvs.availmem`` gets every second, compared with ``amemthresh``.

    What the process holds is its private resident memory (the heap, the
    GC's, the JIT's code) plus :attr:`pinned`, the rings the data path
    mapped (the daemon sets it from the driver), not its whole resident
    size: that also counts the pages of the interpreter's files, which
    are clean and shared with every process that maps the same files
    (PyPy's library is about 35 MiB of them), and the kernel drops and
    reads them again as it needs.

    The private memory can fall: the daemon's reclaim under pressure
    (``Daemon._reclaim_step``: PyPy's major collection, then
    :func:`malloc_trim`) gives the pages of freed entries back to the
    system, as the kernel's freed slab pages go back to its page
    allocator, so the memory left grows again once a flood's entries are
    gone.  Without the trim both runtimes keep those pages resident (PyPy
    frees the GC's emptied arenas into malloc's heap), and what is left
    would stay at its lowest.
    """

    #: Bytes one connection entry costs at most (bench/core.py measures
    #: about 700 on CPython, less on PyPy): sizes the table's hard cap.
    CONN_BYTES = 1024
    PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def __init__(self, limit: int | None = None, proc: str = "/proc", cgroup_fs: str = "/sys/fs/cgroup") -> None:
        self.proc = proc
        self.cgroup: str | None = None
        #: Bytes the data path mapped into the process (its rings), counted in :meth:`used`.
        self.pinned = 0
        if limit is not None:
            self.limit, self.source = limit, "configured"
            return
        cg = self._cgroup_dir(cgroup_fs)
        if cg is not None:
            self.cgroup = cg
            self.limit, self.source = self._read_int(os.path.join(cg, "memory.max")) or 0, "cgroup"
            return
        self.limit = (self._meminfo("MemAvailable") or 0) + self.private()
        self.source = "machine"

    def _cgroup_dir(self, cgroup_fs: str) -> str | None:
        """The cgroup v2 directory of this process, if it has a memory limit."""
        try:
            with open(os.path.join(self.proc, "self", "cgroup")) as f:
                for line in f:
                    if line.startswith("0::"):
                        d = os.path.join(cgroup_fs, line[3:].strip().lstrip("/"))
                        if self._read_int(os.path.join(d, "memory.max")) is not None:
                            return d
        except OSError:
            pass
        return None

    @staticmethod
    def _read_int(path: str) -> int | None:
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def _meminfo(self, key: str) -> int | None:
        try:
            with open(os.path.join(self.proc, "meminfo")) as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return None

    def rss(self) -> int:
        """This process's resident memory in bytes."""
        return resident_bytes(self.proc)

    def private(self) -> int:
        """This process's resident memory that maps no file, in bytes."""
        return resident_bytes(self.proc, private=True)

    def used(self) -> int:
        """Bytes the process holds of a configured budget: :meth:`private` and :attr:`pinned`."""
        return self.private() + self.pinned

    def left(self) -> int:
        """Bytes left to PyIPVS (negative when over the budget)."""
        if self.source == "configured":
            return self.limit - self.used()
        if self.source == "cgroup":
            assert self.cgroup is not None
            return self.limit - (self._read_int(os.path.join(self.cgroup, "memory.current")) or 0)
        return self._meminfo("MemAvailable") or 0

    def left_pages(self) -> int:
        """:meth:`left` in pages, the unit of ``amemthresh``."""
        return self.left() // self.PAGE

    def table_cap(self) -> int:
        """A hard cap on the connection table that keeps it inside the budget."""
        return max(4096, self.left() // self.CONN_BYTES)


def parse_size(text: str) -> int:
    """``512M``, ``2G``, ``65536K`` or bytes."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    if mult > 1:
        text = text[:-1]
    value = int(float(text) * mult)
    if value <= 0:
        raise ValueError("a size must be positive")
    return value


class LoopStats:
    """How long the loop's turns took: the work of a turn (what it handled
    after ``select`` returned), so a turn that holds the data path back
    (a large control reply, a timer that expires many connections at
    once, a garbage collection) shows here while the daemon runs
    (``GET_COUNTERS``, ``ipvs-counters``)."""

    #: Turns longer than these many milliseconds are counted.
    OVER_MS = (10, 100, 1000)

    __slots__ = ("turns", "max_us", "over", "timers_max_us")

    def __init__(self) -> None:
        self.turns = 0
        self.max_us = 0  #: the longest turn so far
        self.over = [0] * len(self.OVER_MS)  #: turns longer than each of OVER_MS
        self.timers_max_us = 0  #: the longest run of the director's timers so far

    def add(self, seconds: float) -> None:
        """Count one turn of ``seconds``."""
        self.turns += 1
        us = int(seconds * 1e6)
        if us > self.max_us:
            self.max_us = us
        if us >= 10000:
            for i, ms in enumerate(self.OVER_MS):
                if us >= ms * 1000:
                    self.over[i] += 1

    def counters(self) -> dict[str, int]:
        """The figures as ``loop.*`` counters: turns, the longest turn and timer run (µs), the long turns."""
        out = {"turns": self.turns, "turn_max_us": self.max_us, "timers_max_us": self.timers_max_us}
        for ms, n in zip(self.OVER_MS, self.over):
            out[f"turns_over_{ms}ms"] = n
        return out


class Daemon:
    """The director's main loop.

    ``rules_file`` is restored at :meth:`start` and on SIGHUP (after a
    flush, as the ipvsadm service's reload does); ``save_file`` receives
    ``ipvsadm -S -n`` at :meth:`shutdown`.
    """

    def __init__(
        self,
        ipvs: NetnsIPVS,
        director: Any = None,
        *,
        socket_path: str | None = None,
        allowed_gid: int | None = None,
        driver: Any = None,
        procfs_dir: str | None = None,
        procfs_interval: float = 1.0,
        rules_file: str | None = None,
        marks_file: str | None = None,
        save_file: str | None = None,
        state_file: str | None = None,
        memory: MemoryBudget | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_request: int = MAX_REQUEST,
    ) -> None:
        self.ipvs = ipvs
        self.director = director if director is not None else Director(ipvs)
        self.clock = clock
        self.sel = selectors.DefaultSelector()
        self.server = ControlServer(
            ipvs, self.director, socket_path, allowed_gid, max_request=max_request, selector=self.sel, clock=clock,
            on_change=self._changed, counters=self.counters,
        )
        self.state_file = state_file
        #: The memory model of the defenses (None: no budget, memory is never short).
        self.memory = memory
        self._next_memory = 0.0
        if memory is not None:
            cap = memory.table_cap()
            ipvs.conn_tab.max_conns = min(ipvs.conn_tab.max_conns, cap)
            log.info("memory budget %d MiB (%s): %d MiB left, connection table capped at %d entries",
                     memory.limit >> 20, memory.source, memory.left() >> 20, ipvs.conn_tab.max_conns)
        self._dirty = False  # the rules changed since the state file was written
        self._settings_restored = False  # restore_settings ran
        self._next_state = 0.0  # when the state file may be written again
        self.driver = None
        self.procfs = ProcfsWriter(ipvs, procfs_dir, clock=clock) if procfs_dir else None
        self.procfs_interval = procfs_interval
        self.rules_file = rules_file
        self.marks_file = marks_file
        self.save_file = save_file
        self._stop = False
        self._reload = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
        self._old_handlers: dict[int, Any] = {}
        self._old_wakeup_fd: int | None = None
        self._next_procfs = 0.0
        self._next_sweep = 0.0
        self._last_timer = -1  # jiffy of the last run_timers
        self._due: int | None = None  # next_timer() after that run
        self.failures: dict[str, int] = {}  # callback name -> exceptions caught
        self.ticks = 0
        self.loop = LoopStats()
        #: Reclaiming memory under pressure (see _reclaim_step): PyPy's GC collects its
        #: garbage, then malloc's free pages go back to the system.
        self._collect_step: Callable[[], Any] | None = getattr(gc, "collect_step", None)
        self._trim: Callable[[], int] | None = malloc_trim() if memory is not None else None
        self._reclaiming = False
        self._next_reclaim = 0.0
        self.reclaims = 0  # reclaims done by _reclaim_step (on PyPy: major collections)
        self.reclaim_steps = 0
        self.trimmed = 0  # bytes of private memory the trims gave back, in all
        self.trim_max_us = 0  # the longest trim so far
        if driver is not None:
            self.attach_driver(driver)

    # ------------------------------------------------------------ pieces

    @property
    def address(self) -> str:
        """The control socket's address (a path, or ``@name`` for an abstract one)."""
        return self.server.address

    def now(self) -> int:
        """The current time in jiffies (HZ of the instance), from the daemon's monotonic clock."""
        return jiffies(self.ipvs.hz, self.clock)

    def attach_driver(self, driver: Any) -> None:
        """Serve a data-path plug-in's descriptors from this loop."""
        self.driver = driver
        mapped = getattr(driver, "mapped_bytes", None)
        if self.memory is not None and self.memory.source == "configured" and mapped is not None:
            # The rings count against a configured budget (a cgroup's memory.current and the
            # machine's MemAvailable see them already): the table's cap shrinks by what they take.
            self.memory.pinned = mapped()
            self.ipvs.conn_tab.max_conns = min(self.ipvs.conn_tab.max_conns, self.memory.table_cap())
            log.info("the data path's rings take %d MiB of the budget: %d MiB left, connection table capped at "
                     "%d entries", self.memory.pinned >> 20, self.memory.left() >> 20, self.ipvs.conn_tab.max_conns)
        for fd in driver.fds():
            self.sel.register(fd, selectors.EVENT_READ,
                              lambda m, fd=fd: self._guard("driver.on_readable", driver.on_readable, fd, self.now()))

    def _guard(self, what: str, fn: Callable, *args: Any) -> None:
        """Run a data-path or timer callback; a bug there is logged and
        counted (``self.failures``), and the director keeps serving."""
        try:
            fn(*args)
        except Exception:
            self.failures[what] = n = self.failures.get(what, 0) + 1
            # The first few in full, then one in a thousand: a bug hit by
            # every packet must not flood the log.
            if n <= 5 or n % 1000 == 0:
                log.exception("%s failed (%d times so far)", what, n)

    def transport(self) -> InProcessTransport:
        """A transport that sends requests straight to this daemon's control server (tests, embedding)."""
        return InProcessTransport(self.server)

    def _on_wake(self, mask: int) -> None:
        try:
            while self._wake_r.recv(512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def wake(self) -> None:
        """Make a sleeping :meth:`run` look at its flags (thread or signal safe)."""
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass

    def request_stop(self) -> None:
        """Ask the main loop to stop at its next turn (SIGTERM, SIGINT); safe from a signal handler."""
        self._stop = True
        self.wake()

    def request_reload(self) -> None:
        """Ask the main loop to reload ``--rules`` and ``--marks`` at its next turn (SIGHUP)."""
        self._reload = True
        self.wake()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop, SIGHUP reloads (main thread only)."""
        self._old_wakeup_fd = signal.set_wakeup_fd(self._wake_w.fileno())
        def handler(fn: Callable[[], None]) -> Callable[[int, Any], None]:
            return lambda _signum, _frame: fn()

        for sig, fn in ((signal.SIGTERM, self.request_stop), (signal.SIGINT, self.request_stop),
                        (signal.SIGHUP, self.request_reload)):
            self._old_handlers[sig] = signal.signal(sig, handler(fn))

    def restore_signal_handlers(self) -> None:
        """Put back the signal handlers and wake-up descriptor the daemon replaced at start."""
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        self._old_handlers.clear()
        if self._old_wakeup_fd is not None:
            signal.set_wakeup_fd(self._old_wakeup_fd)
            self._old_wakeup_fd = None

    # ------------------------------------------------------------- rules

    def load_rules(self, path: str, flush_first: bool = False) -> int:
        """Restore a rules file (``ipvsadm -S`` lines, comment lines allowed,
        a missing file is empty); returns ``ipvsadm -R``'s exit code."""
        text = rules.read(path)
        err = io.StringIO()
        tr = self.transport()
        if flush_first:
            ipvsadm.main(["-C"], transport=tr, stdout=io.StringIO(), stderr=err)
        if not text.exists:
            log.info("no rules file %s: no rules to restore", path)
            return 0
        rc = ipvsadm.restore(text.rules, tr, err)
        for line in err.getvalue().splitlines():
            log.warning("%s: %s", path, line)
        log.info("rules restored from %s (exit %d, %d services)", path, rc, len(self.ipvs.svc_order))
        return rc

    def load_marks(self, path: str) -> int:
        """Replace the firewall-mark rules with an ``ipvs-mark -S`` file
        (``-A ...`` lines); returns ipvs-mark's exit status."""
        from ipvs.cli import ipvs_mark

        with open(path) as f:
            text = f.read()
        err = io.StringIO()
        tr = self.transport()
        ipvs_mark.main(["-F"], transport=tr, stderr=err)
        rc = ipvs_mark.main(["-R"], transport=tr, stdin=io.StringIO(text), stdout=io.StringIO(), stderr=err)
        for line in err.getvalue().splitlines():
            log.warning("%s: %s", path, line)
        log.info("mark rules restored from %s (exit %d, %d rules)", path, rc, len(self.ipvs.marks))
        return rc

    def save_rules(self, path: str) -> int:
        """Write ``ipvsadm -S -n`` into ``path`` atomically, keeping the
        comment lines the file starts with; returns 0 or 1."""
        try:
            rules.write(path, ipvsadm.save(self.transport()))
        except OSError as e:
            log.error("saving rules into %s failed: %s", path, e)
            return 1
        log.info("rules saved to %s", path)
        return 0

    def _changed(self) -> None:
        self._dirty = True

    def write_state(self, force: bool = False) -> None:
        """Write the state file if the rules changed: at once after a quiet
        spell, then at most every ``STATE_INTERVAL_S`` (a restore of many
        rules changes them in every turn, and each write lists them all)."""
        if not self._dirty or self.state_file is None:
            return
        now_s = self.clock()
        if not force and now_s < self._next_state:
            return
        self._dirty = False
        self._next_state = now_s + STATE_INTERVAL_S
        try:
            os.makedirs(os.path.dirname(self.state_file) or ".", mode=0o700, exist_ok=True)
            text, settings = self.state_text()
            rules.write(self.state_file, text, header=STATE_HEADER + settings)
        except OSError as e:
            self._dirty = True
            if self.server.ratelimit():
                log.error("writing the state file %s failed: %s", self.state_file, e)

    def state_text(self) -> tuple[str, list[str]]:
        """What the state file keeps: the rule lines (``ipvsadm -S -n``,
        then ``--set TCP TCPFIN UDP`` when the timeouts are not the
        defaults) and the header lines of the settings that differ from
        their defaults.  See docs/ipvsd.md, "The state file", for why both
        belong there."""
        from ipvs.ctl import get_timeouts
        from ipvs.ip_vs import Sysctls

        text = ipvsadm.save(self.transport())
        timeouts = get_timeouts(self.ipvs)
        if timeouts != DEFAULT_TIMEOUTS:
            text += "--set {} {} {}\n".format(*timeouts)
        defaults = Sysctls()
        sc = self.ipvs.sysctl
        settings = []
        for name in Sysctls.names():
            value = getattr(sc, name)
            if name in ("drop_entry", "drop_packet", "secure_tcp") and value == 2:
                value = 1  # the automatic mode, caught while memory was short
            if name != "conn_tab_bits" and value != getattr(defaults, name):
                settings.append(f"{SYSCTL_LINE}{name} = {value}")
        return text, settings

    def restore_settings(self) -> int:
        """Apply the state file's ``# sysctl`` lines (once, before the rules
        and before ``ipvsd --set``, which wins); returns how many applied."""
        if self._settings_restored:
            return 0
        self._settings_restored = True
        if not self.state_file or not os.path.exists(self.state_file):
            return 0
        try:
            header = rules.read(self.state_file).header
        except OSError as e:
            log.error("reading the settings of %s failed: %s", self.state_file, e)
            return 0
        done = 0
        tr = self.transport()
        for line in header:
            if not line.startswith(SYSCTL_LINE):
                continue
            name, _, value = line[len(SYSCTL_LINE):].partition("=")
            try:
                reply = tr.call({"version": 1, "cmd": "SET_SYSCTL", "name": name.strip(), "value": int(value)})
            except ValueError:
                reply = {"ok": False, "message": "not an integer"}
            if reply.get("ok"):
                done += 1
            else:
                log.error("the state file's %r was not applied: %s", line, reply.get("message"))
        return done

    def _restore_at_start(self) -> None:
        """The settings of the state file, then the rules of the newest of
        the state file and ``--rules``: the state file holds what ran last
        (a SIGKILL skips ``--save``), but a rules file edited since wins.  A failed restore turns ``--save`` off, so a
        broken or half-read file is never saved over; a broken state file
        is kept aside as ``<state>.bad``."""
        self.restore_settings()
        source = self.rules_file
        if self.state_file and os.path.exists(self.state_file):
            if source is None or not os.path.exists(source) or _mtime(self.state_file) >= _mtime(source):
                source = self.state_file
        if source is None:
            return
        try:
            rc = self.load_rules(source)
        except OSError as e:
            log.error("restoring %s failed: %s", source, e)
            rc = 1
        if rc == 0:
            return
        if self.save_file:
            log.error("restoring %s failed: --save %s is off, so that file is not saved over", source,
                      self.save_file)
            self.save_file = None
        if source == self.state_file:
            bad = f"{self.state_file}.bad"
            log.error("the state file %s did not restore whole: kept as %s", source, bad)
            try:
                os.replace(source, bad)
            except OSError:
                pass

    # -------------------------------------------------------------- loop

    def start(self) -> None:
        """Restore the rules file and write the first /proc snapshot."""
        self._restore_at_start()
        if self.marks_file:
            self.load_marks(self.marks_file)
        if self.procfs is not None:
            self.procfs.write(self.now(), force=True)
            self._next_procfs = self.clock() + self.procfs_interval
        log.info("control socket %s", display_address(self.address))

    def _timeout(self) -> float:
        hz = self.ipvs.hz
        now_s = self.clock()
        wait = 1.0
        if self.server.has_pending():
            return 0.0  # control work left over from the last turn
        if self._dirty and self.state_file is not None:
            wait = min(wait, max(0.0, self._next_state - now_s))
        if self.driver is not None:
            # With a data path, timers tick every jiffy (the kernel's
            # timer granularity); next_timer() is not asked, as it may
            # have to look over many pending connections.
            wait = min(wait, max(0.0, (self._last_timer + 1) / hz - now_s))
            pt = self.driver.poll_timeout()
            if pt is not None:
                wait = min(wait, max(0.0, pt))
        elif self._last_timer < 0:
            wait = 0.0  # the first run sets up the timers
        elif self._due is not None:
            wait = min(wait, max(0.0, self._due / hz - now_s))
        if self.procfs is not None:
            wait = min(wait, max(0.0, self._next_procfs - now_s))
        return wait

    def _run_timers(self, now: int) -> None:
        """``director.run_timers`` at most once per jiffy: every jiffy with a
        data path, otherwise when ``next_timer()`` says so (or each second)."""
        if now <= self._last_timer:
            return
        if self.driver is None and (self._due is None or now < self._due) and now - self._last_timer < self.ipvs.hz:
            return
        t0 = self.clock()
        self._guard("director.run_timers", self.director.run_timers, now)
        us = int((self.clock() - t0) * 1e6)
        if us > self.loop.timers_max_us:
            self.loop.timers_max_us = us
        self._last_timer = now
        self.ticks += 1
        if self.driver is None:
            nt = getattr(self.director, "next_timer", None)
            self._due = nt() if nt is not None else None

    def run_once(self, timeout: float | None = None) -> None:
        """Wait for events (at most ``timeout`` or until a timer is due), handle them, run timers."""
        wait = self._timeout() if timeout is None else timeout
        if wait > 0 and self.driver is not None and self.driver.spin():
            wait = 0.0  # a frame came while the driver watched its rings
        self.server.begin_turn()
        events = self.sel.select(wait)
        t0 = self.clock()
        for key, mask in events:
            key.data(mask)
        self.server.run_pending()
        now = self.now()
        self._run_timers(now)
        self.server.tick()
        self.write_state()
        if self.driver is not None:
            self._guard("driver.on_idle", self.driver.on_idle, now)
        now_s = self.clock()
        if self.procfs is not None and now_s >= self._next_procfs:
            try:
                self.procfs.write(now)
            except OSError as e:
                log.error("writing %s failed: %s", self.procfs.root, e)
            self._next_procfs = now_s + self.procfs_interval
        if self.memory is not None and now_s >= self._next_memory:
            # update_defense_level reads this on its next run (every second).
            self.ipvs.availmem = left = self.memory.left_pages()
            self._next_memory = now_s + 1.0
            if (left < self.reclaim_watermark() and now_s >= self._next_reclaim
                    and (self._collect_step is not None or self._trim is not None)):
                self._reclaiming = True
                self._next_reclaim = now_s + self.RECLAIM_INTERVAL_S
        if self._reclaiming:
            self._reclaim_step()
        if now_s >= self._next_sweep:
            self.server.sweep()
            self._next_sweep = now_s + 1.0
        if self._reload:
            self._reload = False
            if self.rules_file:
                try:
                    rc = self.load_rules(self.rules_file, flush_first=True)
                except (OSError, ImportError) as e:
                    log.error("reloading %s failed: %s", self.rules_file, e)
                    rc = 1
                if rc != 0 and self.save_file:
                    log.error("reloading %s failed: --save %s is off, so that file is not saved over",
                              self.rules_file, self.save_file)
                    self.save_file = None
            else:
                log.info("SIGHUP: no rules file to reload")
            if self.marks_file:
                try:
                    self.load_marks(self.marks_file)
                except OSError as e:
                    log.error("reloading %s failed: %s", self.marks_file, e)
        self.loop.add(self.clock() - t0)

    #: Seconds between the starts of two reclaims (a full collection of a
    #: 100 MiB PyPy heap costs about 50 ms: at most 2.5% of the time).
    RECLAIM_INTERVAL_S = 2.0

    def reclaim_watermark(self) -> int:
        """Pages left under which the GC's garbage is reclaimed: 1.5 times
        ``amemthresh``, as the kernel's page reclaim (kswapd) works to keep
        free memory above its high watermark, 1.5 times the minimum."""
        return self.ipvs.sysctl.amemthresh * 3 // 2

    def _reclaim_step(self) -> None:
        """One bounded step of reclaiming memory, as the kernel's page
        reclaim frees what can be freed before the defenses count what is
        left: on PyPy one step of a major collection (``gc.collect_step``,
        about 10 ms at most), so that garbage the GC would collect later is
        freed now; once the collection is done (at once on CPython, which
        frees by reference counting), :func:`malloc_trim` gives malloc's
        free pages back to the system.  The memory of the entries a flood
        left behind then leaves ipvsd's resident size, as freed slab pages
        go back to the kernel's page allocator, and the memory left, which
        ``amemthresh`` is compared with, grows again: without it the
        resident size stays at its peak and ``drop_packet`` at 1 in 1."""
        if self._collect_step is not None:
            self.reclaim_steps += 1
            if not self._collect_step().major_is_done:
                return
        self._reclaiming = False
        self.reclaims += 1
        if self._trim is not None and self.memory is not None:
            before, t0 = self.memory.private(), time.perf_counter()
            self._trim()
            self.trim_max_us = max(self.trim_max_us, int((time.perf_counter() - t0) * 1e6))
            self.trimmed += max(0, before - self.memory.private())
            self._next_memory = 0.0  # the defenses see what is left now, not in a second

    def counters(self) -> dict:
        """What the daemon adds to a ``GET_COUNTERS`` reply: the data path's
        counters (``driver``, when it has some) and the loop's (``loop``)."""
        out: dict = {"loop": self.loop.counters(), "memory": self.memory_counters()}
        fn = getattr(self.driver, "counters", None)
        if fn is not None:
            out["driver"] = fn()
        if self.failures:
            out["loop"].update({f"failures_{k}": n for k, n in self.failures.items()})
        return out

    def memory_counters(self) -> dict[str, int]:
        """The process's memory in KiB: resident, the budget and what is left
        of it (with a memory model), and on PyPy what its GC holds (in use,
        obtained from the system) and the milliseconds it ran so far."""
        out = {"rss_kib": (self.memory.rss() if self.memory is not None else resident_bytes()) >> 10}
        if self.memory is not None:
            out["budget_kib"] = self.memory.limit >> 10
            out["left_kib"] = self.memory.left() >> 10
            if self.memory.source == "configured":
                out["used_kib"] = self.memory.used() >> 10
            out["reclaims"] = self.reclaims
            out["reclaim_steps"] = self.reclaim_steps
            out["trimmed_kib"] = self.trimmed >> 10
            out["trim_max_us"] = self.trim_max_us
        gs = getattr(gc.get_stats(), "_s", None)  # PyPy's raw GC figures (CPython's get_stats is a list)
        if gs is not None:
            out["gc_used_kib"] = gs.total_gc_memory >> 10
            out["gc_allocated_kib"] = gs.total_allocated_memory >> 10
            out["gc_time_ms"] = gs.total_gc_time
        return out

    def run(self) -> None:
        """Serve until :meth:`request_stop` (or SIGTERM), then shut down."""
        try:
            while not self._stop:
                self.run_once()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Save the rules if asked, close everything, remove the socket and files."""
        systemd.notify("STOPPING=1")
        self.write_state(force=True)
        if self.save_file:
            try:
                self.save_rules(self.save_file)
            except (OSError, ImportError) as e:
                log.error("saving %s failed: %s", self.save_file, e)
            self.save_file = None
        if self.driver is not None:
            try:
                self.driver.close()
            finally:
                self.driver = None
        self.server.close()
        if self.procfs is not None:
            self.procfs.remove()
        try:
            self.sel.unregister(self._wake_r)
        except (KeyError, ValueError):
            pass
        self.restore_signal_handlers()
        self._wake_r.close()
        self._wake_w.close()
        self.sel.close()


# ----------------------------------------------------------------------
# tools/ipvsd


def _log_level(text: str) -> int:
    """``--log-level``: an IPVS debug level 0..12 (0 = informational
    messages only, 1 and up add debugging, like the kernel's
    ``net.ipv4.vs.debug_level``) or a logging name."""
    if text.isdigit():
        n = int(text)
        if not 0 <= n <= 12:
            raise ValueError("debug levels are 0..12")
        return logging.INFO if n == 0 else logging.DEBUG
    level = logging.getLevelName(text.upper())
    if not isinstance(level, int):
        raise ValueError(f"unknown log level {text!r}")
    return level


def _group_id(name: str) -> int:
    import grp

    if name.isdigit():
        return int(name)
    return grp.getgrnam(name).gr_gid


def _driver_module():
    try:
        return importlib.import_module("ipvs.driver.afpacket")
    except ImportError as e:
        log.debug("no AF_PACKET driver: %s", e)
        return None


def build_parser(driver_mod=None):
    """ipvsd's argument parser; with ``driver_mod`` (the AF_PACKET driver) its options too. The CLI reference page and
    ``ipvsd.8`` are generated from it.
    """
    import argparse

    p = argparse.ArgumentParser(
        prog="ipvsd",
        description="PyIPVS director daemon: one IPVS instance, its control socket and (with an "
        "interface) its data path.  Without an interface it is a control plane only.",
    )
    p.add_argument("--socket", metavar="PATH",
                   help="control socket: a path, or @NAME for an abstract name (default: $IPVS_SOCKET, "
                   "else @pyipvs-ipvsd, which is per network namespace)")
    p.add_argument("--group", metavar="NAME", help="also let members of this group use the control socket")
    p.add_argument("--rules", metavar="FILE", help="restore this ipvsadm -S rules file at start and on SIGHUP")
    p.add_argument("--save", metavar="FILE", help="save the rules (ipvsadm -S -n) into FILE at stop "
                   "(not after a failed restore of --rules)")
    p.add_argument("--state", metavar="FILE",
                   help="keep the rules in FILE, written on every change and restored at start (default: "
                   f"$IPVSD_STATE_DIR or {STATE_DIR}, then /<netns>/ipvsadm.rules)")
    p.add_argument("--no-state", action="store_true", help="keep no state file")
    p.add_argument("--memory-budget", metavar="SIZE",
                   help="memory PyIPVS may use (e.g. 512M), for the defenses (amemthresh, drop_entry, "
                   "drop_packet, secure_tcp) and the connection table's cap (default: the cgroup's limit, "
                   "else the machine's memory)")
    p.add_argument("--marks", metavar="FILE",
                   help="firewall-mark rules (ipvs-mark -S lines) to load at start and on SIGHUP")
    p.add_argument("--procfs-dir", metavar="DIR",
                   help="write the /proc views into DIR/net/ip_vs* and DIR/sys/net/ipv4/vs/* every second "
                   "(for node_exporter --path.procfs DIR)")
    p.add_argument("--set", metavar="NAME=VALUE", action="append", default=[],
                   help="set a net.ipv4.vs setting at start (repeatable), e.g. --set sloppy_tcp=1")
    p.add_argument("--ftp", nargs="?", const="21", metavar="PORTS",
                   help="load the FTP helper (modprobe ip_vs_ftp) for these virtual ports, comma separated, "
                   "up to 8 (default 21)")
    p.add_argument("--conn-tab-bits", type=int, metavar="N",
                   help="connection table size 2^N, 8..20 (default 12), as the ip_vs module parameter")
    p.add_argument("--log-level", default="0", metavar="LEVEL",
                   help="0 (default: information), 1..12 (debugging, like the IPVS debug_level), or "
                   "error/warning/info/debug")
    p.add_argument("--log-file", metavar="FILE", help="log here (default: stderr in the foreground, syslog otherwise)")
    p.add_argument("--foreground", "-F", action="store_true", help="do not detach")
    p.add_argument("--pidfile", metavar="FILE", help="write the daemon's pid here")
    p.add_argument("--runtime", choices=RUNTIMES, default=os.environ.get("IPVSD_RUNTIME", "auto"),
                   help="the Python that runs the daemon: pypy, cpython, or auto (default, or $IPVSD_RUNTIME: "
                   "PyPy where tools/bootstrap installed it).  tools/ipvsd starts the one chosen; "
                   "the log says which runs")
    p.add_argument("--metrics", metavar="[ADDR]:PORT",
                   help="serve node_exporter's ipvs metrics for Prometheus here (e.g. :9100; off by default)")
    p.add_argument("--install-unit", nargs="?", const="", metavar="PATH",
                   help="write the systemd unit for this ipvsd (default /etc/systemd/system/ipvsd.service; - for "
                   "stdout) and exit")
    if driver_mod is not None:
        driver_mod.add_arguments(p)
    return p


RUNTIMES = ("auto", "pypy", "cpython")
#: The environment ipvsd's PyPy starts with, unless the caller set it:
#:
#: * a 4 MB young generation.  Chosen when every 64 KB GSO super-frame
#:   was copied out of its RX slot into a new object, "large" for PyPy's
#:   default nursery (sized from the L2 cache), and bulk ran at half the
#:   rate.  Measured again after the driver came to reuse one receive
#:   buffer (December 2026, 3 and 5 interleaved runs): bulk and the
#:   driver's short connections no longer depend on it, but new
#:   connections in ``bench/core.py`` do, with fewer minor collections
#:   for the objects a connection leaves (1003k/s against 771k/s, median);
#: * glibc's mmap threshold fixed at 1 MiB.  The connection table's dicts
#:   grow by moving to larger arrays (tens of MB at a million connections),
#:   and by default glibc raises its threshold to the size of the first
#:   such array freed, so the later ones come from the heap and, freed,
#:   stay resident there: 15 bytes per held connection (``bench/core.py``'s
#:   bytes_per_conn, 321 against 302).  With the threshold fixed, a block
#:   of 1 MiB or more is a mapping of its own, returned when freed; smaller
#:   ones (64 KB frames among them) come from the heap as before.
PYPY_ENV = {"PYPY_GC_NURSERY": "4M", "MALLOC_MMAP_THRESHOLD_": "1048576"}

#: The JIT settings ipvsd's PyPy runs with (:func:`tune_jit`): the longest
#: trace PyPy records, in operations.  One packet's path through the core
#: mirrors the kernel's call chain (``ip_vs_out`` → ``handle_response`` →
#: the SNAT handler → ``set_tcp_state`` → ``ip_vs_conn_put``, and the
#: ``ip_vs_in`` chain likewise), and with the driver's receive loop around
#: it, recorded whole, it is longer than PyPy's default of 6000.  The JIT
#: then abandons the trace and compiles the function it spent most time in
#: (``_handle_response``, ``process``) as a loop of its own, entered with its
#: arguments boxed.  PyPy refuses more than 16384.
#:
#: 10000 is where the data path's two costs meet (``bench/driver.py``, a
#: shared 2-core machine, 6 Dec 2026).  The driver's receive loop with the
#: core in it ran 20-30% faster at 10000 than at 6000 and no faster at
#: 11000-12000.  The warm-up got slower above 10000: the first quarter
#: second of a fresh director ran at 2-8k conn/s instead of 10-34k while the
#: JIT recorded and compiled the longer traces, and it reached 90% of its
#: steady rate after 1.0-3.0 s of CPU time instead of 0.75-1.0 s (issue 11
#: asks for 2 s).  ``bench/core.py``'s own loop fits whole only from 11000
#: (established 6.0 M pkt/s there against 4.6-5.2 M at 10000).
PYPY_JIT = {"trace_limit": 10000}


def _traced_apart() -> list[Callable[..., object]]:
    """The functions ipvsd's JIT compiles on their own instead of inlining
    them into the trace of each packet: a new connection's slow path,
    ``conn_schedule``'s shared body (service lookup, ``ip_vs_todrop``,
    ``ip_vs_leave``) and within it ``ip_vs_schedule`` (scheduler,
    persistence, a new entry in the table).  The kernel keeps the same path
    out of line too: ``pp->conn_schedule`` is an indirect call, and
    ``ip_vs_try_to_schedule`` is ``unlikely``.

    Inlined, they make a SYN's trace too long even at the limit above, and
    the JIT then gives up on inlining the function it finds biggest in it,
    ``Director.process`` itself: every established packet afterwards pays
    a call into it.  ``bench/core.py`` on PyPy (6 Dec 2026), established
    packets measured after the SYNs of the memory figure: 4.9-5.0 M pkt/s
    with ``schedule`` alone apart, 5.9-6.0 M with ``conn_schedule`` too
    (new connections unchanged, 1.1-1.3 M/s), and no trace too long.

    A tunnel's encapsulation (:func:`ipvs.xmit.tunnel_encap`, the body of
    ``ip_vs_tunnel_xmit``, which the kernel reaches through
    ``cp->packet_xmit``) is compiled apart for the same reason.  Inlined, a
    VS/TUN packet's trace grew too long and the JIT stopped inlining
    ``process`` (or ``_in``): on PyPy, NAT packets after some tunnelled
    traffic ran at 3.0-3.2 M pkt/s instead of 3.8-4.1 M (``bench/core.py``'s
    per-method figures, 8 interleaved pairs, 7 Dec 2026), the tunnels' own
    rate unchanged."""
    return [IPVSProtocol.conn_schedule, Director.schedule, tunnel_encap]


def tune_jit() -> None:
    """Apply :data:`PYPY_JIT` and :func:`_traced_apart` to this process's
    JIT, on PyPy (elsewhere nothing).  Unlike the nursery, PyPy takes these
    at run time.

    Measured on PyPy 7.3.11 (6 Dec 2026, a shared 2-core machine), against
    PyPy's defaults: the driver's established frames 20-30% faster, its
    short connections 10-20% (``bench/driver.py``); in ``bench/core.py``
    established packets 25-30% and new connections 20-30% (3.9 M → 4.6-5.2 M
    pkt/s, 500k → 570-700k conn/s).  Each bench prints
    ``jit_traces_too_long``.
    """
    if sys.implementation.name != "pypy":
        return
    import pypyjit  # type: ignore[import-not-found]  # PyPy's own module

    for name, value in PYPY_JIT.items():
        pypyjit.set_param(f"{name}={value}")
    for fn in _traced_apart():
        pypyjit.dont_trace_here(0, False, fn.__code__)


def runtime() -> str:
    """The interpreter this daemon runs on, for the log."""
    import platform

    if sys.implementation.name == "pypy":
        v = sys.pypy_version_info  # type: ignore[attr-defined]
        nursery = os.environ.get("PYPY_GC_NURSERY", "default")
        jit = ", ".join(f"JIT {k} {v}" for k, v in PYPY_JIT.items())
        return (f"PyPy {v.major}.{v.minor}.{v.micro} (Python {platform.python_version()}, GC nursery {nursery}, "
                f"{jit})")
    return f"{platform.python_implementation()} {platform.python_version()}"


def _setup_logging(level: int, log_file: str | None, foreground: bool) -> None:
    import logging.handlers

    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    if log_file:
        handler: logging.Handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s ipvsd[%(process)d] %(levelname)s %(message)s"))
    elif foreground or not os.path.exists("/dev/log"):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("ipvsd: %(levelname)s %(message)s"))
    else:
        handler = logging.handlers.SysLogHandler("/dev/log")
        handler.setFormatter(logging.Formatter("ipvsd[%(process)d]: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    # A fatal signal in the runtime itself (a segfault in PyPy's JIT, say)
    # ends the director without a word from Python: this way the Python
    # stack it died in goes where the log goes (the file, or stderr, which
    # is the journal under systemd; syslog cannot take it from a signal
    # handler).
    faulthandler.enable(file=(handler.stream if isinstance(handler, logging.FileHandler) else None) or sys.stderr)


def _detach() -> int | None:
    """Fork into the background; the caller's process exits once the
    daemon has written its pid file and is serving.  Returns the write end
    of the readiness pipe in the daemon (None in the foreground)."""
    r, w = os.pipe()
    if os.fork():
        os.close(w)
        ok = os.read(r, 1)
        os._exit(0 if ok == b"1" else 1)
    os.close(r)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    return w


def pypy_env_missing(implementation: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The part of :data:`PYPY_ENV` that ``environ`` lacks, on PyPy (elsewhere nothing)."""
    if implementation != "pypy":
        return {}
    return {k: v for k, v in PYPY_ENV.items() if k not in environ}


def console_main() -> int:
    """The ``ipvsd`` command (the console script ``pip install`` makes, and
    ``tools/ipvsd``): :func:`main` on ``sys.argv``, on PyPy with
    :data:`PYPY_ENV`.

    PyPy reads ``PYPY_GC_NURSERY`` only when it starts (and glibc its
    ``MALLOC_MMAP_THRESHOLD_``), so where one is not set this process
    starts again once, the same command line under the same interpreter
    with the variables added (the new process finds them set and goes on);
    the log's ``running on`` line names the nursery.
    """
    missing = pypy_env_missing(sys.implementation.name, os.environ)
    if missing and os.path.isfile(sys.argv[0]):
        os.environ.update(missing)
        os.execv(sys.executable, [sys.executable, sys.argv[0], *sys.argv[1:]])
    return main()


def main(argv: list[str] | None = None) -> int:
    """Parse the options (``argv``, default the command line), build the
    instance, serve until stopped; the exit status."""
    from ipvs.ip_vs import Sysctls
    from ipvs.netns import NetnsIPVS

    driver_mod = _driver_module()
    parser = build_parser(driver_mod)
    args = parser.parse_args(argv)
    if args.install_unit is not None:
        return systemd.install_unit(args.install_unit or None)
    try:
        level = _log_level(args.log_level)
    except ValueError as e:
        parser.error(str(e))
    settings: list[tuple[str, int]] = []
    for item in args.set:
        name, sep, value = item.partition("=")
        name = name.strip().removeprefix("net.ipv4.vs.")
        try:
            settings.append((name, int(value, 0)))
        except ValueError:
            parser.error(f"--set wants NAME=INTEGER, not {item!r}")
        if not sep:
            parser.error(f"--set wants NAME=INTEGER, not {item!r}")
    ftp_ports = None
    if args.ftp is not None:
        try:
            ftp_ports = tuple(int(x) for x in args.ftp.split(",") if x.strip())
        except ValueError:
            parser.error(f"--ftp wants port numbers like 21,2121, not {args.ftp!r}")
    gid = None
    if args.group:
        try:
            gid = _group_id(args.group)
        except KeyError:
            parser.error(f"no group named {args.group!r}")
    if args.runtime not in ("auto", sys.implementation.name):
        parser.error(f"--runtime {args.runtime}: this ipvsd runs on {runtime()}; start it through tools/ipvsd, "
                     "which picks the interpreter, or under that interpreter")
    _setup_logging(level, args.log_file, args.foreground)
    tune_jit()
    log.info("running on %s", runtime())

    sc = Sysctls() if args.conn_tab_bits is None else Sysctls(conn_tab_bits=args.conn_tab_bits)
    ipvs = NetnsIPVS(sysctl=sc)
    try:
        try:
            memory = MemoryBudget(parse_size(args.memory_budget) if args.memory_budget else None)
        except ValueError as e:
            parser.error(f"--memory-budget: {e}")
        state = None if args.no_state else (args.state or default_state_file(socket_address(args.socket)))
        daemon = Daemon(ipvs, socket_path=args.socket, allowed_gid=gid, procfs_dir=args.procfs_dir,
                        rules_file=args.rules, save_file=args.save, marks_file=args.marks, state_file=state,
                        memory=memory)
    except OSError as e:
        print(f"ipvsd: control socket {display_address(socket_address(args.socket))}: {e.strerror or e}",
              file=sys.stderr)
        return 1
    try:
        tr = daemon.transport()
        daemon.restore_settings()  # the state file's settings first: --set NAME=VALUE wins
        for name, value in settings:
            reply = tr.call({"version": 1, "cmd": "SET_SYSCTL", "name": name, "value": value})
            if not reply.get("ok"):
                print(f"ipvsd: --set {name}={value}: {reply.get('message')}", file=sys.stderr)
                daemon.shutdown()
                return 2
        if ftp_ports is not None:
            from ipvs.app import ftp

            ftp.register(ipvs, ports=ftp_ports)
        if driver_mod is not None:
            driver = driver_mod.from_args(args, daemon.director)
            if driver is not None:
                daemon.attach_driver(driver)
        daemon.start()
    except (Exception, SystemExit) as e:
        # A driver refusing its options raises SystemExit: still clean up.
        if isinstance(e, SystemExit) and not isinstance(e.code, str):
            code = e.code if isinstance(e.code, int) else 1
        else:
            print(f"ipvsd: {e}", file=sys.stderr)
            code = 2 if isinstance(e, SystemExit) else 1
        daemon.save_file = None  # nothing was running yet: keep the old file
        daemon.shutdown()
        return code
    ready = None if args.foreground else _detach()
    metrics = None
    if args.metrics:  # after _detach: its HTTP thread would not survive the fork
        from ipvs.metrics import MetricsServer

        try:
            metrics = MetricsServer(args.metrics, daemon.address)
        except (OSError, ValueError) as e:
            log.error("--metrics %s: %s", args.metrics, e)
            daemon.save_file = None
            daemon.shutdown()
            return 1
    if args.pidfile:
        with open(args.pidfile, "w") as f:
            f.write(f"{os.getpid()}\n")
    daemon.install_signal_handlers()
    if ready is not None:
        os.write(ready, b"1")
        os.close(ready)
    systemd.notify("READY=1")
    try:
        daemon.run()
    finally:
        if metrics is not None:
            metrics.close()
        if args.pidfile:
            try:
                os.unlink(args.pidfile)
            except FileNotFoundError:
                pass
    return 0
