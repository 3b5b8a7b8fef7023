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
float | None`` (seconds), ``on_idle(now)`` and ``close()``; ``now`` is in
jiffies.

Time: the daemon is the only place above the driver that reads a clock;
``now`` in jiffies is ``int(time.monotonic() * hz)``.
"""

from __future__ import annotations

import errno
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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ipvs import procfs
from ipvs.client import MAX_REQUEST, display_address, encode, socket_address

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.netns import NetnsIPVS

log = logging.getLogger("ipvs.daemon")

_LEN = struct.Struct("!I")
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
#: <asm-generic/socket.h>; PyPy's socket module does not export it.
SO_PEERCRED = getattr(socket, "SO_PEERCRED", 17)

#: Stop reading a client's requests while this much reply data waits for it.
OUT_HIGH_WATER = 8 << 20
#: Bytes read from a client at a time.
RECV_CHUNK = 64 << 10  # below malloc's mmap threshold: recv() allocates this much each call
#: Most clients connected at once; more are answered EAGAIN and closed.
MAX_CLIENTS = 256
#: How long to stop accepting after accept() failed (out of descriptors).
ACCEPT_PAUSE_S = 0.1
#: A client that has sent part of a frame and nothing more for this long is dropped.
IDLE_TIMEOUT_S = 60.0


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


class _Peer:
    """One connected client."""

    __slots__ = ("sock", "fd", "inbuf", "outbuf", "pid", "uid", "gid", "closing", "last", "events")

    def __init__(self, sock: socket.socket, pid: int, uid: int, gid: int, now: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.pid, self.uid, self.gid = pid, uid, gid
        self.closing = False  # close once outbuf is flushed
        self.last = now
        self.events = 0


class ControlServer:
    """The control socket of one instance.

    ``path`` is a filesystem path or an abstract name (leading NUL or
    ``@``); None means ``$IPVS_SOCKET`` or the default abstract name.
    With ``selector`` given, the server registers its sockets there (the
    :class:`Daemon` does this); otherwise call :meth:`serve` to run it.
    ``handler`` replaces :func:`ipvs.netlink.dispatch` (tests).
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
    ) -> None:
        self.ipvs = ipvs
        self.director = director
        self.allowed_gid = allowed_gid
        self.max_request = max_request
        self.clock = clock
        self.handler = handler
        self.address = socket_address(path)
        self._own_selector = selector is None
        self.sel = selector if selector is not None else selectors.DefaultSelector()
        self.peers: dict[int, _Peer] = {}
        self.requests = 0
        self.errors = 0
        self.refused = 0
        self._dispatch: Callable | None = None
        self._accept_paused_until: float | None = None
        self._listen = self._bind(self.address)
        self.sel.register(self._listen, selectors.EVENT_READ, self._on_accept)

    # ---------------------------------------------------------- socket

    @staticmethod
    def _bind(address: str) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if not address.startswith("\0"):
                ControlServer._remove_stale(address)
            s.bind(address)
            if not address.startswith("\0"):
                # Anyone may connect and be told EPERM; SO_PEERCRED decides.
                os.chmod(address, 0o666)
            s.listen(128)
            s.setblocking(False)
        except OSError:
            s.close()
            raise
        return s

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
        if self._own_selector:
            self.sel.close()

    def serve(self, timeout: float | None = None) -> None:
        """Handle whatever is ready (standalone use, with the own selector)."""
        for key, mask in self.sel.select(timeout):
            key.data(mask)
        self.tick()

    # --------------------------------------------------------- clients

    def _allowed(self, pid: int, uid: int, gid: int) -> bool:
        if uid == 0 or uid == os.geteuid():
            return True
        if self.allowed_gid is None:
            return False
        return gid == self.allowed_gid or self.allowed_gid in _supplementary_groups(pid)

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
                log.warning("accept on control socket failed: %s", e)
                self.sel.unregister(self._listen)
                self._accept_paused_until = self.clock() + ACCEPT_PAUSE_S
                return
            sock.setblocking(False)
            try:
                pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, SO_PEERCRED, _UCRED.size))
            except OSError:
                pid = uid = gid = -1
            peer = _Peer(sock, pid, uid, gid, self.clock())
            self.peers[peer.fd] = peer
            self.sel.register(sock, selectors.EVENT_READ, lambda m, p=peer: self._on_peer(p, m))
            peer.events = selectors.EVENT_READ
            if len(self.peers) > MAX_CLIENTS:
                self._fail(peer, errno.EAGAIN, "too many control connections")
            elif not self._allowed(pid, uid, gid):
                self.refused += 1
                log.info("control connection from uid %d (pid %d) refused", uid, pid)
                self._fail(peer, errno.EPERM, "Permission denied (you must be root)")

    def _fail(self, peer: _Peer, err: int, message: str) -> None:
        """Answer once with an error, then close."""
        self.errors += 1
        peer.outbuf += encode(error_reply(err, message))
        peer.closing = True
        peer.inbuf.clear()
        self._flush(peer)

    def _drop(self, peer: _Peer) -> None:
        self.peers.pop(peer.fd, None)
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
        if not data:
            # The client is done sending; answer what is complete, then close.
            if not peer.closing:
                self._process(peer, high_water=None)
            peer.closing = True
            peer.inbuf.clear()
            self._flush(peer)
            return
        peer.last = self.clock()
        if peer.closing:
            return  # refused or failed: discard
        peer.inbuf += data
        self._process(peer)
        self._flush(peer)

    def _process(self, peer: _Peer, high_water: int | None = OUT_HIGH_WATER) -> None:
        # The cyclic garbage collector is paused while requests run: a BATCH
        # of a thousand NEW_DESTs allocates thousands of long-lived objects,
        # each allocation burst sets off collections that walk the whole
        # (growing) rule table, and none of it is cyclic garbage.
        enabled = gc.isenabled()
        gc.disable()
        try:
            self._process_frames(peer, high_water)
        finally:
            if enabled:
                gc.enable()

    def _process_frames(self, peer: _Peer, high_water: int | None) -> None:
        buf = peer.inbuf
        pos = 0
        limit = high_water if high_water is not None else float("inf")
        while not peer.closing and len(peer.outbuf) < limit and len(buf) - pos >= 4:
            (n,) = _LEN.unpack_from(buf, pos)
            if n > self.max_request:
                del buf[:]
                pos = 0
                self._fail(peer, errno.EMSGSIZE, f"request of {n} bytes is over the {self.max_request} byte limit")
                return
            if len(buf) - pos - 4 < n:
                break
            body = bytes(buf[pos + 4 : pos + 4 + n])
            pos += 4 + n
            peer.outbuf += encode(self._answer(body))
        if pos:
            del buf[:pos]

    def _answer(self, body: bytes) -> dict:
        self.requests += 1
        try:
            req = json.loads(body.decode("utf-8"))
        except ValueError as e:  # also CPython's limit on an integer's digits
            self.errors += 1
            return error_reply(errno.EINVAL, f"request is not UTF-8 JSON: {_json_error(e)}")
        except RecursionError:
            self.errors += 1
            return error_reply(errno.EINVAL, "request nests too deeply")
        if not isinstance(req, dict):
            self.errors += 1
            return error_reply(errno.EINVAL, f"request must be a JSON object, not {type(req).__name__}")
        return self.handle(req)

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
            log.warning("request %.200r failed: %s: %s", req, type(e).__name__, e, exc_info=log.isEnabledFor(10))
            err = getattr(e, "errno", None)
            return error_reply(err if isinstance(err, int) and err > 0 else errno.EINVAL, f"{type(e).__name__}: {e}")
        if not isinstance(reply, dict):
            self.errors += 1
            return error_reply(errno.EIO, "internal error: dispatch returned no reply object")
        return reply

    def _load_dispatch(self) -> Callable | None:
        if self._dispatch is None:
            try:
                nl = importlib.import_module("ipvs.netlink")
            except ModuleNotFoundError as e:
                if e.name != "ipvs.netlink":
                    raise
                return None
            self._dispatch = nl.dispatch
        return self._dispatch

    def _flush(self, peer: _Peer) -> None:
        if peer.outbuf:
            try:
                sent = peer.sock.send(peer.outbuf)
                del peer.outbuf[:sent]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._drop(peer)
                return
        if not peer.outbuf:
            if peer.closing:
                self._drop(peer)
                return
            if peer.inbuf and len(peer.inbuf) >= 4:
                # Requests held back by the high-water mark can go on now.
                self._process(peer)
                if peer.outbuf:
                    return self._flush(peer)
        want = 0
        if not peer.closing and len(peer.outbuf) < OUT_HIGH_WATER:
            want |= selectors.EVENT_READ
        if peer.outbuf:
            want |= selectors.EVENT_WRITE
        if want != peer.events:
            if want:
                self.sel.modify(peer.sock, want, lambda m, p=peer: self._on_peer(p, m))
            peer.events = want

    def tick(self) -> None:
        """Resume accepting after a pause (called by the main loop)."""
        if self._accept_paused_until is not None and self.clock() >= self._accept_paused_until:
            self._accept_paused_until = None
            self.sel.register(self._listen, selectors.EVENT_READ, self._on_accept)

    def sweep(self) -> None:
        """Drop clients that stalled in the middle of a frame."""
        limit = self.clock() - IDLE_TIMEOUT_S
        for peer in list(self.peers.values()):
            if peer.last < limit and (peer.inbuf or peer.outbuf):
                log.info("dropping stalled control connection (pid %d)", peer.pid)
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


class _FallbackTimers:
    """Timer work when :mod:`ipvs.core` is not available: the estimator and
    the destination trash (there are no connections without a data path)."""

    def __init__(self, ipvs: NetnsIPVS) -> None:
        self.ipvs = ipvs

    def run_timers(self, now: int) -> None:
        from ipvs.ctl import dest_trash_expire

        self.ipvs.est.run(now)
        dest_trash_expire(self.ipvs, now)

    def next_timer(self) -> int | None:
        return None


def make_director(ipvs: NetnsIPVS) -> Any:
    """``ipvs.core.Director(ipvs)``, or a timer-only stand-in if the core is missing."""
    try:
        core = importlib.import_module("ipvs.core")
        return core.Director(ipvs)
    except (ImportError, AttributeError) as e:
        log.warning("ipvs.core unavailable (%s): control plane and timers only", e)
        return _FallbackTimers(ipvs)


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
        clock: Callable[[], float] = time.monotonic,
        max_request: int = MAX_REQUEST,
    ) -> None:
        self.ipvs = ipvs
        self.director = director if director is not None else make_director(ipvs)
        self.clock = clock
        self.sel = selectors.DefaultSelector()
        self.server = ControlServer(
            ipvs, self.director, socket_path, allowed_gid, max_request=max_request, selector=self.sel, clock=clock
        )
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
        for sig, fn in ((signal.SIGTERM, self.request_stop), (signal.SIGINT, self.request_stop),
                        (signal.SIGHUP, self.request_reload)):
            self._old_handlers[sig] = signal.signal(sig, lambda s, f, fn=fn: fn())

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
        """Restore an ``ipvsadm -S`` rules file; returns ipvsadm's exit code."""
        from ipvs.cli import ipvsadm

        with open(path) as f:
            lines = f.read().splitlines()
        err = io.StringIO()
        tr = self.transport()
        if flush_first:
            ipvsadm.main(["-C"], transport=tr, stdout=io.StringIO(), stderr=err)
        rc = ipvsadm.restore(lines, tr, err)
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
        """Write ``ipvsadm -S -n`` into ``path`` (atomically)."""
        from ipvs.cli import ipvsadm

        out, err = io.StringIO(), io.StringIO()
        rc = ipvsadm.main(["-S", "-n"], transport=self.transport(), stdout=out, stderr=err)
        if rc == 0:
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                f.write(out.getvalue())
            os.replace(tmp, path)
            log.info("rules saved to %s", path)
        else:
            log.error("saving rules failed: %s", err.getvalue().strip())
        return rc

    # -------------------------------------------------------------- loop

    def start(self) -> None:
        """Restore the rules file and write the first /proc snapshot."""
        if self.rules_file:
            self.load_rules(self.rules_file)
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
        self._guard("director.run_timers", self.director.run_timers, now)
        self._last_timer = now
        self.ticks += 1
        if self.driver is None:
            nt = getattr(self.director, "next_timer", None)
            self._due = nt() if nt is not None else None

    def run_once(self, timeout: float | None = None) -> None:
        """Wait for events (at most ``timeout`` or until a timer is due), handle them, run timers."""
        wait = self._timeout() if timeout is None else timeout
        for key, mask in self.sel.select(wait):
            key.data(mask)
        now = self.now()
        self._run_timers(now)
        self.server.tick()
        if self.driver is not None:
            self._guard("driver.on_idle", self.driver.on_idle, now)
        now_s = self.clock()
        if self.procfs is not None and now_s >= self._next_procfs:
            try:
                self.procfs.write(now)
            except OSError as e:
                log.error("writing %s failed: %s", self.procfs.root, e)
            self._next_procfs = now_s + self.procfs_interval
        if now_s >= self._next_sweep:
            self.server.sweep()
            self._next_sweep = now_s + 5.0
        if self._reload:
            self._reload = False
            if self.rules_file:
                try:
                    self.load_rules(self.rules_file, flush_first=True)
                except (OSError, ImportError) as e:
                    log.error("reloading %s failed: %s", self.rules_file, e)
            else:
                log.info("SIGHUP: no rules file to reload")
            if self.marks_file:
                try:
                    self.load_marks(self.marks_file)
                except OSError as e:
                    log.error("reloading %s failed: %s", self.marks_file, e)

    def run(self) -> None:
        """Serve until :meth:`request_stop` (or SIGTERM), then shut down."""
        try:
            while not self._stop:
                self.run_once()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Save the rules if asked, close everything, remove the socket and files."""
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
    p.add_argument("--save", metavar="FILE", help="save the rules (ipvsadm -S -n) into FILE at stop")
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
    if driver_mod is not None:
        driver_mod.add_arguments(p)
    return p


RUNTIMES = ("auto", "pypy", "cpython")


def runtime() -> str:
    """The interpreter this daemon runs on, for the log."""
    import platform

    if sys.implementation.name == "pypy":
        v = sys.pypy_version_info  # type: ignore[attr-defined]
        nursery = os.environ.get("PYPY_GC_NURSERY", "default")
        return f"PyPy {v.major}.{v.minor}.{v.micro} (Python {platform.python_version()}, GC nursery {nursery})"
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


def main(argv: list[str] | None = None) -> int:
    """``tools/ipvsd``: parse the options, build the instance, serve until stopped; the exit status."""
    from ipvs.ip_vs import Sysctls
    from ipvs.netns import NetnsIPVS

    driver_mod = _driver_module()
    parser = build_parser(driver_mod)
    args = parser.parse_args(argv)
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
    log.info("running on %s", runtime())

    sc = Sysctls() if args.conn_tab_bits is None else Sysctls(conn_tab_bits=args.conn_tab_bits)
    ipvs = NetnsIPVS(sysctl=sc)
    try:
        daemon = Daemon(ipvs, socket_path=args.socket, allowed_gid=gid, procfs_dir=args.procfs_dir,
                        rules_file=args.rules, save_file=args.save, marks_file=args.marks)
    except OSError as e:
        print(f"ipvsd: control socket {display_address(socket_address(args.socket))}: {e.strerror or e}",
              file=sys.stderr)
        return 1
    try:
        tr = daemon.transport()
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
    if args.pidfile:
        with open(args.pidfile, "w") as f:
            f.write(f"{os.getpid()}\n")
    daemon.install_signal_handlers()
    if ready is not None:
        os.write(ready, b"1")
        os.close(ready)
    try:
        daemon.run()
    finally:
        if args.pidfile:
            try:
                os.unlink(args.pidfile)
            except FileNotFoundError:
                pass
    return 0
