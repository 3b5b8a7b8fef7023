"""ipvs/client.py: addressing, framing, pipelining and transport errors."""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import threading
import time

import pytest

from ipvs import client
from ipvs.client import Client, ProtocolError


def test_address_order(monkeypatch):
    monkeypatch.delenv(client.SOCKET_ENV, raising=False)
    monkeypatch.delenv(client.RUN_DIR_ENV, raising=False)
    assert client.socket_address() == f"/run/pyipvs/{client.netns_name()}/ipvsd.sock"
    monkeypatch.setenv(client.SOCKET_ENV, "/run/x.sock")
    assert client.socket_address() == "/run/x.sock"
    assert client.socket_address("/tmp/y") == "/tmp/y"
    assert client.socket_address("@lab") == "\0lab"
    assert client.display_address("\0lab") == "@lab"


def test_encode_is_length_prefixed_utf8_json():
    frame = client.encode({"cmd": "GET_INFO", "name": "é"})
    (n,) = struct.unpack("!I", frame[:4])
    assert n == len(frame) - 4
    assert json.loads(frame[4:].decode("utf-8")) == {"cmd": "GET_INFO", "name": "é"}


def test_no_daemon_is_an_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        Client(str(tmp_path / "none.sock")).call({"cmd": "GET_INFO"})
    # A socket file nobody listens on.
    path = str(tmp_path / "dead.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()
    with pytest.raises(ConnectionRefusedError):
        Client(path).call({"cmd": "GET_INFO"})


def test_oversized_request_is_refused_before_sending(tmp_path):
    with pytest.raises(OSError) as ei:
        Client(str(tmp_path / "none.sock")).call({"blob": "x" * client.MAX_REQUEST})
    assert ei.value.errno == errno.EMSGSIZE


class FakeServer:
    """A one-connection server that answers with canned bytes."""

    def __init__(self, path: str, answer) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(1)
        self.answer = answer
        self.got = b""
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(5)
            self.answer(conn, self)

    def close(self) -> None:
        self.thread.join(5)
        self.sock.close()


def _read_frame(conn) -> bytes:
    hdr = b""
    while len(hdr) < 4:
        hdr += conn.recv(4 - len(hdr))
    (n,) = struct.unpack("!I", hdr)
    body = b""
    while len(body) < n:
        body += conn.recv(n - len(body))
    return body


@pytest.mark.parametrize(
    "raw, msg",
    [
        (struct.pack("!I", 5) + b"nope!", "not JSON"),
        (struct.pack("!I", 2) + b"[]", "not a JSON object"),
        (struct.pack("!I", 10) + b"{}", "closed"),  # promised more than sent
        (struct.pack("!I", client.MAX_REPLY + 1), "over the"),
        (b"\x00\x00", "closed"),
    ],
)
def test_bad_replies_raise_protocol_error(tmp_path, raw, msg):
    path = str(tmp_path / "s.sock")

    def answer(conn, srv):
        _read_frame(conn)
        conn.sendall(raw)

    srv = FakeServer(path, answer)
    try:
        c = Client(path, timeout=5)
        with pytest.raises(ProtocolError, match=msg) as ei:
            c.call({"cmd": "GET_INFO"})
        assert isinstance(ei.value, OSError) and ei.value.errno == errno.EPROTO
        assert c._sock is None  # a broken stream is not reused
    finally:
        srv.close()


def test_pipelined_replies_come_back_in_order(tmp_path):
    path = str(tmp_path / "s.sock")
    n = 1000

    def answer(conn, srv):
        for _ in range(n):
            req = json.loads(_read_frame(conn))
            conn.sendall(client.encode({"seq": req["seq"], "pid": os.getpid()}))

    srv = FakeServer(path, answer)
    try:
        with Client(path, timeout=10) as c:
            replies = c.call_many([{"seq": i} for i in range(n)], window=64)
        assert [r["seq"] for r in replies] == list(range(n))
    finally:
        srv.close()


def test_refusal_after_close_is_still_read(tmp_path):
    """A daemon that answers and closes before reading still gets its answer across."""
    path = str(tmp_path / "s.sock")

    def answer(conn, srv):
        conn.sendall(client.encode({"ok": False, "errno": errno.EPERM}))

    srv = FakeServer(path, answer)
    try:
        c = Client(path, timeout=5)
        c.connect()
        srv.thread.join(5)  # the server has answered and closed
        assert not srv.thread.is_alive()
        reply = c.call({"cmd": "GET_INFO", "pad": "x" * 300_000})
        assert reply["errno"] == errno.EPERM
    finally:
        srv.close()


def test_submit_now_receive_later(tmp_path):
    """submit() sends without waiting; receive() gives the replies in order."""
    path = str(tmp_path / "s.sock")
    n = 50

    def answer(conn, srv):
        for _ in range(n):
            req = json.loads(_read_frame(conn))
            conn.sendall(client.encode({"seq": req["seq"]}))

    srv = FakeServer(path, answer)
    try:
        with Client(path, timeout=10) as c:
            for i in range(n):
                c.submit({"seq": i})
            assert [c.receive()["seq"] for _ in range(n)] == list(range(n))
            with pytest.raises(OSError) as ei:
                c.submit({"blob": "x" * client.MAX_REQUEST})
            assert ei.value.errno == errno.EMSGSIZE
            assert c._sock is not None  # nothing was sent: the connection is still good
    finally:
        srv.close()


def test_receive_without_a_request_is_an_error(tmp_path):
    with pytest.raises(ProtocolError):
        Client(str(tmp_path / "none.sock")).receive()


# ------------------------------------------------------- who answers (issue 13)


def _serve_as(uid: int, address: str, ready, answer: bytes) -> int:
    """Fork a server that binds ``address`` as ``uid`` and answers one frame."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover (child)
        try:
            os.setgid(uid)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(address)
            s.listen(4)
            os.write(ready, b"1")
            s.settimeout(10)
            c, _ = s.accept()
            c.recv(65536)
            c.sendall(answer)
            c.close()
        finally:
            os._exit(0)
    return pid


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a server as another user")
def test_client_refuses_a_daemon_not_run_by_root(monkeypatch):
    """Issue 13: anyone could bind the (abstract) name first and answer
    root's ipvsadm with made-up listings; the client checks SO_PEERCRED."""
    monkeypatch.delenv(client.DAEMON_USER_ENV, raising=False)
    address = f"\0pyipvs-test-{os.getpid()}-impostor"
    r, w = os.pipe()
    pid = _serve_as(65534, address, w, client.encode({"version": 1, "ok": True, "services": []}))
    try:
        assert os.read(r, 1) == b"1"
        with pytest.raises(PermissionError) as ei, Client("@" + address[1:], timeout=5) as c:
            c.call({"version": 1, "cmd": "GET_SERVICE"})
        assert ei.value.errno == errno.EPERM and "uid 65534" in str(ei.value)
        # A user the admin named is trusted.
        monkeypatch.setenv(client.DAEMON_USER_ENV, "65534")
        assert 65534 in client.trusted_uids()
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(r)
        os.close(w)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to try as another user")
def test_default_socket_is_out_of_reach_of_other_users(tmp_path, monkeypatch):
    """The default name lives in a root-owned directory: another user can
    neither bind it first nor remove it."""
    from ipvs.daemon import ControlServer
    from ipvs.netns import NetnsIPVS

    monkeypatch.setenv(client.RUN_DIR_ENV, str(tmp_path / "run"))
    monkeypatch.delenv(client.SOCKET_ENV, raising=False)
    tmp_path.chmod(0o755)
    path = client.default_socket()
    server = ControlServer(NetnsIPVS(), path=None)
    try:
        assert server.address == path
        st = os.stat(os.path.dirname(path))
        assert st.st_uid == 0 and not st.st_mode & 0o022
        assert os.stat(path).st_mode & 0o777 == 0o600
        pid = os.fork()
        if pid == 0:  # pragma: no cover (child)
            code = 0
            try:
                os.setgid(65534)
                os.setuid(65534)
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.bind(os.path.join(os.path.dirname(path), "other.sock"))
                    code = 1
                except PermissionError:
                    pass
                try:
                    s2 = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s2.connect(path)
                    code = 2
                except PermissionError:
                    pass
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
    finally:
        server.close()
    assert not os.path.exists(os.path.dirname(path))  # the namespace's directory went with it


def test_the_default_sockets_directory_goes_with_the_daemon_unless_it_holds_more(tmp_path, monkeypatch):
    from ipvs.daemon import ControlServer
    from ipvs.netns import NetnsIPVS

    monkeypatch.setenv(client.RUN_DIR_ENV, str(tmp_path / "run"))
    monkeypatch.delenv(client.SOCKET_ENV, raising=False)
    tmp_path.chmod(0o755)
    path = client.default_socket()
    server = ControlServer(NetnsIPVS(), path=None)
    other = os.path.join(os.path.dirname(path), "state")
    with open(other, "w") as f:
        f.write("kept")
    server.close()
    assert os.listdir(os.path.dirname(path)) == ["state"]
    os.unlink(other)
    server = ControlServer(NetnsIPVS(), path=None)
    assert os.path.exists(path)
    server.close()
    assert not os.path.exists(os.path.dirname(path))
    assert os.path.isdir(tmp_path / "run")  # only the namespace's own directory


def test_connect_retries_a_full_backlog(tmp_path):
    """Issue 13: a Unix socket answers EAGAIN at once when its backlog is
    full; the client waits for room instead of failing."""
    path = str(tmp_path / "full.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(0)
    fillers = []
    try:
        for _ in range(8):  # fill the backlog
            f = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            f.setblocking(False)
            try:
                f.connect(path)
            except BlockingIOError:
                f.close()
                break
            fillers.append(f)

        def drain():
            time.sleep(0.3)
            for _ in fillers:
                srv.accept()[0].close()
            c, _ = srv.accept()
            c.recv(65536)
            c.sendall(client.encode({"version": 1, "ok": True}))
            c.close()

        t = threading.Thread(target=drain)
        t.start()
        with Client(path, timeout=5) as c:
            assert c.call({"version": 1, "cmd": "GET_INFO"})["ok"] is True
        t.join(5)
    finally:
        for f in fillers:
            f.close()
        srv.close()
