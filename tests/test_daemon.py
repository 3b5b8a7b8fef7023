"""ipvs/daemon.py and tools/ipvsd: the control socket, the main loop, signals,
the /proc directory, and node_exporter reading it.

The in-process tests run a :class:`Daemon` in a thread on a socket under
the test's temporary directory; the tool tests start ``tools/ipvsd`` as a
subprocess.  Every process started here is stopped by PID in a finally.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipvs import client, procfs
from ipvs.client import Client
from ipvs.daemon import ControlServer, Daemon, MemoryBudget, ProcfsWriter
from ipvs.netns import NetnsIPVS

netlink = pytest.importorskip("ipvs.netlink", reason="the message schema (ipvs.netlink) is not there yet")

ROOT = Path(__file__).resolve().parents[1]
IPVSD = ROOT / "tools" / "ipvsd"
V = {"version": 1}


def svc_attrs(port: int, addr: str = "203.0.113.5", sched: str = "wlc") -> dict:
    return {"af": 2, "protocol": 6, "addr": addr, "port": port, "sched_name": sched,
            "flags": {"flags": 0, "mask": 0xFFFFFFFF}, "timeout": 0, "netmask": 0xFFFFFFFF}


def new_service(port: int, **kw) -> dict:
    return {**V, "cmd": "NEW_SERVICE", "service": svc_attrs(port, **kw)}


class ThreadDaemon:
    """A Daemon serving from a background thread."""

    def __init__(self, path: str, **kw) -> None:
        self.ipvs = NetnsIPVS()
        self.daemon = Daemon(self.ipvs, socket_path=path, **kw)
        self.daemon.start()
        self.thread = threading.Thread(target=self.daemon.run, daemon=True)
        self.thread.start()
        self.path = path

    def stop(self) -> None:
        self.daemon.request_stop()
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture
def served(tmp_path):
    d = ThreadDaemon(str(tmp_path / "ipvsd.sock"))
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory):
    d = ThreadDaemon(str(tmp_path_factory.mktemp("shared") / "ipvsd.sock"))
    try:
        yield d
    finally:
        d.stop()


def raw_exchange(path: str, data: bytes, timeout: float = 5.0) -> tuple[list[dict], bool]:
    """Send bytes, half-close, read every reply frame until EOF.

    Returns (replies, closed_cleanly)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    try:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        buf = b""
        while True:
            try:
                chunk = s.recv(1 << 16)
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    replies = []
    pos = 0
    while len(buf) - pos >= 4:
        (n,) = struct.unpack_from("!I", buf, pos)
        replies.append(json.loads(buf[pos + 4 : pos + 4 + n]))
        pos += 4 + n
    return replies, pos == len(buf)


def assert_alive(path: str) -> None:
    with Client(path, timeout=5) as c:  # closed now, not when PyPy's GC runs
        reply = c.call({**V, "cmd": "GET_INFO"})
    assert reply["ok"] is True and reply["info"]["conn_tab_size"] > 0


# ------------------------------------------------------------ serving


def test_requests_reach_the_schema(served):
    with Client(served.path) as c:
        assert c.call(new_service(80))["ok"] is True
        again = c.call(new_service(80))
        assert again["ok"] is False and again["errno"] == errno.EEXIST
        text = c.call({**V, "cmd": "GET_PROC", "name": "ip_vs"})["text"]
    assert text == procfs.render(served.ipvs, "ip_vs", 0)
    assert "TCP  CB007105:0050 wlc  \n" in text


def test_several_clients_at_once(served):
    n_clients, per_client = 8, 60
    clients = [Client(served.path, timeout=10) for _ in range(n_clients)]
    for c in clients:
        c.connect()  # all connected before anyone sends
    results: dict[int, list] = {}

    def work(i: int) -> None:
        reqs = [new_service(1000 + i * per_client + k) for k in range(per_client)]
        # Half pipelined, half one by one, so the daemon interleaves clients.
        results[i] = clients[i].call_many(reqs[: per_client // 2], window=8)
        results[i] += [clients[i].call(r) for r in reqs[per_client // 2 :]]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for c in clients:
        c.close()
    assert all(len(results[i]) == per_client and all(r["ok"] for r in results[i]) for i in range(n_clients))
    with Client(served.path) as c:
        services = c.call({**V, "cmd": "GET_SERVICE"})["services"]
    assert sorted(s["port"] for s in services) == list(range(1000, 1000 + n_clients * per_client))


def test_a_stalled_client_does_not_block_others(served):
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stalled.connect(served.path)
    try:
        frame = client.encode({**V, "cmd": "GET_INFO"})
        stalled.sendall(frame[:7])  # half a frame, then silence
        t0 = time.monotonic()
        assert_alive(served.path)
        assert time.monotonic() - t0 < 2
        stalled.sendall(frame[7:])  # completing it later still works
        stalled.settimeout(5)
        (n,) = struct.unpack("!I", stalled.recv(4))
        assert json.loads(stalled.recv(n))["ok"] is True
    finally:
        stalled.close()


def test_oversized_frame_gets_emsgsize_and_close(served):
    big = struct.pack("!I", client.MAX_REQUEST + 1) + b"{" * 1000
    replies, clean = raw_exchange(served.path, big)
    assert clean and len(replies) == 1
    assert replies[0]["errno"] == errno.EMSGSIZE and "limit" in replies[0]["message"]
    assert_alive(served.path)


def test_bad_json_keeps_the_connection(served):
    data = (
        struct.pack("!I", 3) + b"{x}"
        + client.encode([1, 2])  # type: ignore[arg-type]
        + struct.pack("!I", 2) + b"\xff\xfe"
        + client.encode({**V, "cmd": "GET_INFO"})
    )
    replies, clean = raw_exchange(served.path, data)
    assert clean and [r["ok"] for r in replies] == [False, False, False, True]
    assert [r.get("errno") for r in replies[:3]] == [errno.EINVAL] * 3


def test_deep_nesting_is_an_error_not_a_crash(served):
    body = b"[" * 200_000 + b"]" * 200_000
    replies, _ = raw_exchange(served.path, struct.pack("!I", len(body)) + body)
    assert replies[0]["ok"] is False and replies[0]["errno"] == errno.EINVAL
    assert_alive(served.path)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.binary(max_size=300))
def test_fuzz_random_bytes(shared_daemon, data):
    replies, _ = raw_exchange(shared_daemon.path, data)
    for r in replies:
        assert isinstance(r, dict) and (r.get("ok") is True or isinstance(r.get("errno"), int))
    assert_alive(shared_daemon.path)


@FUZZ
@given(body=st.binary(max_size=200))
def test_fuzz_framed_garbage(shared_daemon, body):
    replies, clean = raw_exchange(shared_daemon.path, struct.pack("!I", len(body)) + body)
    assert clean and len(replies) == 1
    assert replies[0]["ok"] is False and replies[0]["errno"] > 0
    assert_alive(shared_daemon.path)


@FUZZ
@given(n=st.integers(client.MAX_REQUEST + 1, 2**32 - 1), tail=st.binary(max_size=64))
def test_fuzz_bad_lengths(shared_daemon, n, tail):
    replies, clean = raw_exchange(shared_daemon.path, struct.pack("!I", n) + tail)
    assert clean and len(replies) == 1 and replies[0]["errno"] == errno.EMSGSIZE
    assert_alive(shared_daemon.path)


@FUZZ
@given(
    cmd=st.sampled_from(netlink.COMMANDS) | st.text(max_size=10),
    fields=st.dictionaries(
        st.sampled_from(["service", "dest", "daemon", "name", "value", "seq", "timeout_tcp", "version", "x"]),
        JSON, max_size=4,
    ),
    top=JSON,
)
def test_fuzz_wrong_types(shared_daemon, cmd, fields, top):
    reqs = [{**V, "cmd": cmd, **fields}, top]
    replies, clean = raw_exchange(shared_daemon.path, b"".join(client.encode(r) for r in reqs))
    assert clean and len(replies) == 2
    for r in replies:
        assert r["ok"] is True or (r["ok"] is False and r["errno"] > 0 and r["message"])
    if not isinstance(top, dict):
        assert replies[1]["errno"] == errno.EINVAL
    assert_alive(shared_daemon.path)


# --------------------------------------------------------- credentials


def _call_as(address: str, uid: int, gid: int) -> dict:
    """Call the daemon from a forked child running as another user; return its reply."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop privileges, ask, report, exit without cleanup
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            reply = Client(address, timeout=5).call({"version": 1, "cmd": "GET_INFO"})
            os.write(w, json.dumps(reply).encode())
        except BaseException as e:  # noqa: BLE001
            os.write(w, json.dumps({"child_error": repr(e)}).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    reply = json.loads(data)
    assert "child_error" not in reply, reply
    return reply


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
@pytest.mark.parametrize("grant", [False, True])
def test_non_root_peer(grant):
    # Abstract name: no directory permissions in the way, unique per test.
    address = f"\0pyipvs-test-{uuid.uuid4().hex}"
    nobody, group = 65534, 4242
    d = ThreadDaemon(address, allowed_gid=group if grant else None)
    try:
        reply = _call_as(address, nobody, group)
        if grant:
            assert reply["ok"] is True
        else:
            assert reply["ok"] is False and reply["errno"] == errno.EPERM
            assert reply["message"] == "Permission denied (you must be root)"
            assert d.daemon.server.refused == 1
        assert_alive(address)
    finally:
        d.stop()


# ------------------------------------------------------------ main loop


class FakeDirector:
    def __init__(self, due_in: int) -> None:
        self.calls: list[int] = []
        self.due_in = due_in
        self.due: int | None = 0  # due at once

    def run_timers(self, now: int) -> None:
        self.calls.append(now)
        self.due = now + self.due_in

    def next_timer(self) -> int | None:
        return self.due


class FakeDriver:
    def __init__(self) -> None:
        self.r, self.w = socket.socketpair()
        self.readable: list[bytes] = []
        self.idle = 0
        self.closed = False
        self.spins = 0
        #: What :meth:`spin` answers.
        self.spin_finds = False

    def fds(self) -> list[int]:
        return [self.r.fileno()]

    def on_readable(self, fd: int, now: int) -> None:
        assert fd == self.r.fileno() and isinstance(now, int)
        self.readable.append(self.r.recv(100))

    def poll_timeout(self) -> float | None:
        return 0.5

    def spin(self) -> bool:
        self.spins += 1
        return self.spin_finds

    def on_idle(self, now: int) -> None:
        self.idle += 1

    def close(self) -> None:
        self.closed = True
        self.r.close()
        self.w.close()


def test_loop_ticks_every_jiffy_with_a_driver(tmp_path):
    director = FakeDirector(due_in=10**9)  # next_timer() is not what drives a data path
    drv = FakeDriver()
    d = Daemon(NetnsIPVS(), director, socket_path=str(tmp_path / "s.sock"), driver=drv)
    try:
        d.start()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.3:
            d.run_once()
        drv.w.send(b"frame")
        d.run_once()
    finally:
        d.shutdown()
    # About 0.3 s / 4 ms = 75 ticks; never two in one jiffy.
    assert 20 < len(director.calls) < 100
    assert len(set(director.calls)) == len(director.calls) and director.calls == sorted(director.calls)
    assert drv.readable == [b"frame"]
    assert drv.idle >= len(director.calls)
    assert drv.closed
    assert not (tmp_path / "s.sock").exists()


def test_loop_asks_the_driver_to_spin_before_it_sleeps(tmp_path):
    """A driver whose busy polling found a frame keeps the loop from sleeping
    (the turn polls with no wait); one that found nothing lets it sleep."""
    director = FakeDirector(due_in=10**9)
    drv = FakeDriver()
    d = Daemon(NetnsIPVS(), director, socket_path=str(tmp_path / "s.sock"), driver=drv)
    waits = []
    try:
        d.start()
        d.run_once()  # the first turn runs the timers
        select = d.sel.select
        d.sel.select = lambda timeout=None: waits.append(timeout) or select(timeout)
        drv.spin_finds = True
        d.run_once()
        drv.spin_finds = False
        d.run_once()
    finally:
        d.shutdown()
    assert drv.spins >= 2
    assert waits[0] == 0.0 and waits[1] > 0.0


def test_control_plane_runs_timers_when_due(tmp_path):
    director = FakeDirector(due_in=25)  # due every 25 jiffies = 100 ms
    d = Daemon(NetnsIPVS(), director, socket_path=str(tmp_path / "s.sock"))
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.5:
            d.run_once()
    finally:
        d.shutdown()
    # Woken by the timer (about 5 runs), not a fixed 1 s sleep nor every jiffy.
    assert 3 <= len(director.calls) <= 8
    gaps = [b - a for a, b in zip(director.calls, director.calls[1:])]
    assert all(g >= 25 for g in gaps)


def test_live_socket_is_not_stolen(served, tmp_path):
    with pytest.raises(OSError) as ei:
        ControlServer(NetnsIPVS(), None, served.path)
    assert ei.value.errno == errno.EADDRINUSE
    assert_alive(served.path)
    # A stale socket file (its daemon died) is replaced.
    stale = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(stale)
    s.close()
    srv = ControlServer(NetnsIPVS(), None, stale)
    srv.close()
    assert not os.path.exists(stale)


# ----------------------------------------------------- the /proc directory


def test_procfs_writer_layout(tmp_path):
    ipvs = NetnsIPVS()
    ipvs.sysctl.set("sloppy_tcp", 1)
    root = tmp_path / "proc"
    w = ProcfsWriter(ipvs, root)
    w.write(0)
    assert (root / "net" / "ip_vs").read_text() == procfs.render(ipvs, "ip_vs", 0)
    assert (root / "net" / "ip_vs_stats").read_text().startswith("   Total Incoming")
    assert (root / "sys" / "net" / "ipv4" / "vs" / "sloppy_tcp").read_text() == "1\n"
    assert (root / "sys" / "net" / "ipv4" / "vs" / "sync_threshold").read_text() == "3\t50\n"
    assert not list(root.rglob(".*.tmp"))
    w.remove()
    assert not root.exists()


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


NODE_EXPORTER = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")


def scrape_node_exporter(procfs_root: Path) -> dict[str, float]:
    port = _free_port()
    p = subprocess.Popen(
        [NODE_EXPORTER, f"--path.procfs={procfs_root}", f"--web.listen-address=127.0.0.1:{port}",
         "--collector.disable-defaults", "--collector.ipvs"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        body = None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    body = r.read().decode()
                break
            except OSError:
                time.sleep(0.1)
        assert body is not None, "node_exporter did not answer"
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    metrics = {}
    for line in body.splitlines():
        if line.startswith("node_ipvs") or line.startswith('node_scrape_collector_success{collector="ipvs"}'):
            key, _, value = line.rpartition(" ")
            metrics[key] = float(value)
    return metrics


@pytest.mark.skipif(NODE_EXPORTER is None, reason="prometheus-node-exporter is not installed (apt package "
                    "prometheus-node-exporter)")
def test_node_exporter_reads_the_procfs_dir(tmp_path):
    """node_exporter's ipvs collector reports PyIPVS like kernel IPVS."""
    from tests.test_procfs import HZ, NOW, golden_instance, load_conns, set_expiries, set_totals

    ipvs, d = golden_instance("nat_classic")
    rows = (d / "proc-net-ip_vs_conn.txt").read_text().splitlines()[1:]
    set_expiries(load_conns(ipvs, rows, NOW), rows, NOW, 8)
    set_totals(ipvs, (d / "proc-net-ip_vs_stats.txt").read_text())
    assert ipvs.hz == HZ
    w = ProcfsWriter(ipvs, tmp_path / "proc")
    w.write(NOW)
    m = scrape_node_exporter(tmp_path / "proc")
    assert m['node_scrape_collector_success{collector="ipvs"}'] == 1
    # The totals of the recorded run, as the kernel's ip_vs_stats shows them (hex).
    totals = [int(x, 16) for x in (d / "proc-net-ip_vs_stats.txt").read_text().splitlines()[2].split()]
    names = ["connections", "incoming_packets", "outgoing_packets", "incoming_bytes", "outgoing_bytes"]
    assert totals[0] > 0
    assert [m[f"node_ipvs_{n}_total"] for n in names] == totals
    backends = {k: v for k, v in m.items() if k.startswith("node_ipvs_backend_connections_inactive")}
    by_rs = {re.search(r'remote_address="([^"]+)",remote_port="(\d+)"', k).groups(): v for k, v in backends.items()}
    inact = {}
    for line in (d / "proc-net-ip_vs_conn.txt").read_text().splitlines()[1:]:
        f = line.split()
        rs = (str(ipaddress.IPv4Address(int(f[5], 16))), str(int(f[6], 16)))
        inact[rs] = inact.get(rs, 0) + 1
    assert by_rs == {("172.16.0.2", "21"): 0, **inact}
    weights = {k for k, v in m.items() if k.startswith("node_ipvs_backend_weight") and v == 2}
    assert len(weights) == 1 and 'remote_address="172.16.0.3"' in next(iter(weights))


# ------------------------------------------------------------ tools/ipvsd


def _ipvsadm_or_skip():
    return pytest.importorskip("ipvs.cli.ipvsadm", reason="ipvsadm (ipvs.cli.ipvsadm) is not there yet")


class IpvsdProcess:
    def __init__(self, args: list[str], sock: str) -> None:
        self.sock = sock
        self.p = subprocess.Popen([sys.executable, str(IPVSD), "--foreground", "--socket", sock, *args],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                assert_alive(sock)
                return
            except (OSError, AssertionError):
                if self.p.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"ipvsd did not start: {self.p.stderr.read()}") from None
                time.sleep(0.05)

    def call(self, req: dict) -> dict:
        with Client(self.sock, timeout=10) as c:
            return c.call(req)

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(10)


def wait_for(pred, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


RULES_A = "-A -t 203.0.113.5:80 -s wlc\n-a -t 203.0.113.5:80 -r 172.16.0.2:80 -m -w 1\n"
RULES_B = RULES_A + "-A -u 203.0.113.5:53 -s rr\n-a -u 203.0.113.5:53 -r 172.16.0.3:53 -m -w 2\n"


def test_ipvsd_procfs_dir_and_settings(tmp_path):
    sock, proc = str(tmp_path / "s.sock"), tmp_path / "proc"
    d = IpvsdProcess(["--procfs-dir", str(proc), "--set", "sloppy_tcp=1", "--conn-tab-bits", "14"], sock)
    try:
        assert d.call(new_service(8080))["ok"]
        want = d.call({**V, "cmd": "GET_PROC", "name": "ip_vs"})["text"]
        assert "(size=16384)" in want
        assert wait_for(lambda: (proc / "net" / "ip_vs").exists() and (proc / "net" / "ip_vs").read_text() == want, 5)
        assert (proc / "sys" / "net" / "ipv4" / "vs" / "sloppy_tcp").read_text() == "1\n"
        d.p.send_signal(signal.SIGTERM)
        assert d.p.wait(10) == 0
        assert not proc.exists() and not os.path.exists(sock)
    finally:
        d.kill()


def test_ipvsd_rules_sighup_and_sigterm_save(tmp_path):
    _ipvsadm_or_skip()
    sock, rules, saved = str(tmp_path / "s.sock"), tmp_path / "rules", tmp_path / "saved"
    rules.write_text(RULES_A)
    d = IpvsdProcess(["--rules", str(rules), "--save", str(saved)], sock)
    try:
        def ports():
            return sorted(s["port"] for s in d.call({**V, "cmd": "GET_SERVICE"})["services"])

        assert ports() == [80]
        rules.write_text(RULES_B)
        d.p.send_signal(signal.SIGHUP)
        assert wait_for(lambda: ports() == [53, 80])
        assert d.call(new_service(443))["ok"]
        d.p.send_signal(signal.SIGTERM)
        assert d.p.wait(10) == 0
        assert not os.path.exists(sock)
        # ipvsadm -S order: protocol, then address, then port.
        assert saved.read_text() == (
            "-A -t 203.0.113.5:80 -s wlc\n-a -t 203.0.113.5:80 -r 172.16.0.2:80 -m -w 1\n"
            "-A -t 203.0.113.5:443 -s wlc\n"
            "-A -u 203.0.113.5:53 -s rr\n-a -u 203.0.113.5:53 -r 172.16.0.3:53 -m -w 2\n"
        )
    finally:
        d.kill()


def test_ipvsd_marks_file_at_start_and_sighup(tmp_path):
    sock, marks = str(tmp_path / "s.sock"), tmp_path / "marks"
    marks.write_text("-A -d 203.0.113.16/29 --set-mark 1\n-A -p tcp --dport 80 --set-mark 2\n")
    d = IpvsdProcess(["--marks", str(marks)], sock)
    try:
        def rules():
            return [(m["mark"], m["daddr"]) for m in d.call({**V, "cmd": "GET_MARK"})["marks"]]

        assert rules() == [(1, "203.0.113.16/29"), (2, None)]
        marks.write_text("-A -d 203.0.113.32/28 --set-mark 3\n")
        d.p.send_signal(signal.SIGHUP)
        assert wait_for(lambda: rules() == [(3, "203.0.113.32/28")])
    finally:
        d.kill()


def test_ipvsd_refuses_bad_options(tmp_path):
    sock = str(tmp_path / "s.sock")
    p = subprocess.run([sys.executable, str(IPVSD), "--foreground", "--socket", sock, "--set", "no_such=1"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "no_such" in p.stderr
    assert not os.path.exists(sock)
    p = subprocess.run([sys.executable, str(IPVSD), "--foreground", "--socket", sock, "--set", "sloppy_tcp"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "NAME=INTEGER" in p.stderr


def test_ipvsd_detaches_with_pidfile(tmp_path):
    sock, pidfile = str(tmp_path / "s.sock"), tmp_path / "ipvsd.pid"
    p = subprocess.run([sys.executable, str(IPVSD), "--socket", sock, "--pidfile", str(pidfile),
                        "--log-file", str(tmp_path / "log")], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    pid = int(pidfile.read_text())
    try:
        assert_alive(sock)  # serving as soon as the launcher returned
        assert os.getsid(pid) != os.getsid(0)  # detached into a session of its own
    finally:
        os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: not pidfile.exists() and not os.path.exists(sock))


# ------------------------------------------------------------ tools/ipvs-sysctl


def ipvs_sysctl(sock: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "ipvs-sysctl"), "--socket", sock, *args],
                          capture_output=True, text=True, timeout=30)


def test_ipvs_sysctl_reads_and_writes_at_run_time(tmp_path):
    sock, proc = str(tmp_path / "s.sock"), tmp_path / "proc"
    d = IpvsdProcess(["--procfs-dir", str(proc)], sock)
    try:
        p = ipvs_sysctl(sock, "-a")
        assert p.returncode == 0
        shown = dict(line.split(" = ", 1) for line in p.stdout.splitlines())
        # Every sysctl the kernel shows, with the same values (the recorded kernel's defaults).
        from tests.test_procfs import golden_dir

        golden = {}
        for line in (golden_dir() / "nat_classic" / "sysctl-net.ipv4.vs.txt").read_text().splitlines():
            k, v = line.split(":", 1)
            golden["net.ipv4.vs." + k.rsplit("/", 1)[1]] = v
        assert len(golden) > 20
        for k, v in golden.items():
            assert shown[k] == v, k
        assert shown["net.ipv4.vs.sloppy_tcp"] == "0"

        p = ipvs_sysctl(sock, "net.ipv4.vs.sloppy_tcp=1", "expire_nodest_conn=1")
        assert (p.returncode, p.stdout) == (0, "net.ipv4.vs.sloppy_tcp = 1\nnet.ipv4.vs.expire_nodest_conn = 1\n")
        assert ipvs_sysctl(sock, "-n", "net/ipv4/vs/sloppy_tcp").stdout == "1\n"
        reply = d.call({**V, "cmd": "GET_SYSCTL", "name": "expire_nodest_conn"})
        assert reply["value"] == 1
        assert wait_for(lambda: (proc / "sys/net/ipv4/vs/sloppy_tcp").read_text() == "1\n", 5)

        for bad, msg in [("secure_tcp=7", "Invalid argument"), ("sloppy_tcp=x", "Invalid argument"),
                         ("sync_version=2", "not settable"), ("no_such", "No such setting")]:
            p = ipvs_sysctl(sock, bad)
            assert p.returncode == 255 and msg in p.stderr, (bad, p.stderr)
        assert ipvs_sysctl(sock, "-n", "secure_tcp").stdout == "0\n"
    finally:
        d.kill()


def test_ipvs_sysctl_without_director(tmp_path):
    p = ipvs_sysctl(str(tmp_path / "none.sock"), "-a")
    assert p.returncode == 255 and "cannot reach the director" in p.stderr


# ------------------------------------------- goldens through the real tools


def service_blocks(text: str) -> list[str]:
    """/proc/net/ip_vs as sorted service blocks (a service line and its dests)."""
    lines = text.splitlines(keepends=True)
    blocks: list[str] = []
    for line in lines[3:]:
        if line.startswith("  ->"):
            blocks[-1] += line
        else:
            blocks.append(line)
    return [lines[0] + lines[1] + lines[2]] + sorted(blocks)


def _golden_scenarios() -> list[str]:
    from tests.test_procfs import scenarios

    return scenarios()


@pytest.fixture(scope="module")
def golden_daemons(tmp_path_factory):
    """Two control-plane-only ipvsd processes, with and without the FTP helper
    (some scenarios ran ``modprobe ip_vs_ftp``); each test flushes first."""
    base = tmp_path_factory.mktemp("golden")
    procs = {}
    try:
        for ftp in (False, True):
            sock = str(base / f"ftp{int(ftp)}.sock")
            procs[ftp] = IpvsdProcess(["--procfs-dir", str(base / f"proc{int(ftp)}"), *(["--ftp"] if ftp else [])],
                                      sock)
            procs[ftp].proc = base / f"proc{int(ftp)}"
        yield procs
    finally:
        for p in procs.values():
            p.kill()


@pytest.mark.parametrize("scenario", _golden_scenarios())
def test_golden_rules_through_ipvsadm_give_kernel_proc(golden_daemons, scenario):
    """The scenario's rules sent by tools/ipvsadm to a control-plane-only
    tools/ipvsd: the /proc views over the socket equal the kernel's (and the
    --procfs-dir files equal what the socket serves)."""
    _ipvsadm_or_skip()
    from tests.test_procfs import TRAFFIC_VIEWS, golden_dir, leftovers, percpu_rows, scenario_ftp_ports, scenario_rules

    d = golden_dir() / scenario
    rules = scenario_rules(d)
    assert rules
    ftp_ports = scenario_ftp_ports(d)
    ipvsd = golden_daemons[bool(ftp_ports)]
    p = subprocess.run([sys.executable, str(ROOT / "tools" / "ipvsadm"), "-R"], input="\n".join(["-C", *rules]) + "\n",
                       env={**os.environ, "IPVS_SOCKET": ipvsd.sock}, capture_output=True, text=True, timeout=60)
    if p.returncode != 0 and "Scheduler or persistence engine not found" in p.stderr:
        pytest.skip(f"a scheduler of {scenario} is missing: {p.stderr.strip()}")
    assert (p.returncode, p.stderr) == (0, "")
    for view in procfs.PROC_NAMES:
        path = d / f"before-proc-net-{view}.txt"
        if not path.exists() or view in TRAFFIC_VIEWS and leftovers(d):
            continue
        if view == "ip_vs_app" and ftp_ports not in ((), (21,)):
            continue  # ipvsd --ftp serves port 21; the scenario loaded ip_vs_ftp with ports=...
        golden = path.read_text()
        served = ipvsd.call({**V, "cmd": "GET_PROC", "name": view})["text"]
        if scenario == "nat_classic":  # the files too (they refresh every second)
            f = ipvsd.proc / "net" / view
            assert wait_for(lambda f=f, s=served: f.exists() and f.read_text() == s, 5), view
        if view == "ip_vs_stats_percpu" and percpu_rows(golden) != percpu_rows(served):
            # A machine with another CPU count: same text apart from the per-CPU rows.
            g, s = golden.splitlines(), served.splitlines()
            assert g[:2] == s[:2] and g[2 + percpu_rows(golden):] == s[2 + percpu_rows(served):]
            continue
        if view == "ip_vs" and served != golden:
            # The service order depends on the kernel's netns address
            # (test_procfs finds that byte); here: same blocks, same text.
            assert service_blocks(served) == service_blocks(golden)
            continue
        assert served == golden, view
    if scenario == "nat_classic":
        for name, value in procfs.sysctl_values(NetnsIPVS()).items():
            assert (ipvsd.proc / "sys/net/ipv4/vs" / name).read_text() == value + "\n"


def test_procfs_writer_spaces_out_slow_views(tmp_path, monkeypatch):
    """A view that takes long to render is refreshed less often (budget), the others every time."""
    import ipvs.daemon as dmod

    t = [100.0]
    rendered: dict[str, list[int]] = {}
    real_render = procfs.render

    def slow_render(ipvs_, name, now, **kw):
        rendered.setdefault(name, []).append(now)
        if name == "ip_vs_conn":
            t[0] += 0.1  # pretend this one takes 100 ms
        return real_render(ipvs_, name, now, **kw)

    monkeypatch.setattr(dmod.procfs, "render", slow_render)
    w = ProcfsWriter(NetnsIPVS(), tmp_path / "proc", budget=50, clock=lambda: t[0])
    for now in range(20):  # one write per "second"
        w.write(now)
        t[0] += 1.0
    assert rendered["ip_vs_stats"] == list(range(20))
    assert rendered["ip_vs_conn"] == [0, 5, 10, 15]  # 0.1 s x 50 = every 5 s
    w.write(20, force=True)
    assert rendered["ip_vs_conn"][-1] == 20


def test_out_of_descriptors_pauses_accept_instead_of_spinning(tmp_path):
    """accept() failing (EMFILE) must not turn the loop into a busy spin."""
    import resource

    ipvs = NetnsIPVS()
    d = Daemon(ipvs, socket_path=str(tmp_path / "s.sock"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hold = []
    try:
        d.run_once(timeout=0)
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(d.address)
        # Use up every descriptor so that the daemon's accept() fails.
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        try:
            while True:
                hold.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        loops, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < 0.05:
            d.run_once(timeout=0.2)
            loops += 1
        assert loops < 5  # paused: select() sleeps instead of returning at once
    finally:
        for fd in hold:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        time.sleep(0.15)
        d.run_once(timeout=0.1)  # resumes accepting
        d.run_once(timeout=0.1)
        assert d.server._accept_paused_until is None and len(d.server.peers) == 1
        c.close()
    finally:
        d.shutdown()


@pytest.mark.lab
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2")
def test_default_socket_is_per_network_namespace(tmp_path):
    """Like kernel IPVS per netns: ipvsd started in a namespace on the default
    (abstract) socket is the one ipvsadm in that namespace reaches, and only it."""
    # Under the caller's lab prefix when one is set (parallel runs keep to their own names).
    ns = f"{os.environ.get('IPVS_LAB_PREFIX', 'pyipvs-t')}-sock-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    pidfile = tmp_path / "ipvsd.pid"
    env = {k: v for k, v in os.environ.items() if k != "IPVS_SOCKET"}
    try:
        subprocess.run(["ip", "netns", "exec", ns, sys.executable, str(IPVSD), "--pidfile", str(pidfile),
                        "--log-file", str(tmp_path / "log")], check=True, env=env, timeout=30)

        def ipvsadm(*args, netns=ns):
            pre = ["ip", "netns", "exec", netns] if netns else []
            return subprocess.run([*pre, sys.executable, str(ROOT / "tools" / "ipvsadm"), *args], env=env,
                                  capture_output=True, text=True, timeout=30)

        assert ipvsadm("-A", "-t", "203.0.113.5:80", "-s", "rr").returncode == 0
        assert "203.0.113.5:80" in ipvsadm("-Ln").stdout
        # From another namespace the name is not there (or is another director).
        other = ipvsadm("-Ln", netns=None)
        assert "203.0.113.5:80" not in other.stdout
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
            wait_for(lambda: not pidfile.exists(), 10)
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_a_failing_driver_or_timer_does_not_stop_the_director(tmp_path):
    class BadDriver(FakeDriver):
        def on_readable(self, fd, now):
            self.r.recv(100)
            raise ValueError("driver bug")

    class BadDirector(FakeDirector):
        def run_timers(self, now):
            super().run_timers(now)
            raise RuntimeError("timer bug")

    drv = BadDriver()
    d = Daemon(NetnsIPVS(), BadDirector(due_in=1), socket_path=str(tmp_path / "s.sock"), driver=drv)
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    try:
        for _ in range(3):
            drv.w.send(b"x")
            time.sleep(0.02)
        assert_alive(d.address)
        assert wait_for(lambda: d.failures.get("driver.on_readable") == 3, 5)
        assert d.failures["director.run_timers"] >= 1
    finally:
        d.request_stop()
        t.join(10)
    assert not t.is_alive()


@pytest.mark.skipif(NODE_EXPORTER is None, reason="prometheus-node-exporter is not installed (apt package "
                    "prometheus-node-exporter)")
def test_node_exporter_on_a_running_ipvsd(tmp_path):
    """End to end: rules sent to tools/ipvsd show up in node_exporter's ipvs metrics."""
    _ipvsadm_or_skip()
    sock, proc = str(tmp_path / "s.sock"), tmp_path / "proc"
    d = IpvsdProcess(["--procfs-dir", str(proc)], sock)
    try:
        p = subprocess.run([sys.executable, str(ROOT / "tools" / "ipvsadm"), "-R"], input=RULES_B,
                           env={**os.environ, "IPVS_SOCKET": sock}, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert wait_for(lambda: "AC100003:0035" in (proc / "net" / "ip_vs").read_text(), 5)
        m = scrape_node_exporter(proc)
    finally:
        d.kill()
    weights = {re.search(r'proto="(\w+)",remote_address="([^"]+)",remote_port="(\d+)"', k).groups(): v
               for k, v in m.items() if k.startswith("node_ipvs_backend_weight")}
    assert weights == {("TCP", "172.16.0.2", "80"): 1, ("UDP", "172.16.0.3", "53"): 2}
    assert m["node_ipvs_connections_total"] == 0


# ------------------------------------------------- hardening (issue 13)


def _raw_call(path: str, body: bytes) -> dict:
    """One hand-made frame (JSON the client's encoder would refuse to make)."""
    with Client(path, timeout=10) as c:
        c.connect()
        c._sock.sendall(struct.pack("!I", len(body)) + body)
        return c.receive()


def test_a_lone_surrogate_is_refused_and_listings_still_work(served):
    """Issue 13: a NEW_DAEMON whose mcast_ifn held a lone surrogate was kept,
    and the next listing could not be encoded and ended the daemon."""
    body = b'{"version":1,"cmd":"NEW_DAEMON","daemon":{"state":1,"mcast_ifn":"eth\\udc80","sync_id":1}}'
    reply = _raw_call(served.path, body)
    assert reply["ok"] is False and reply["errno"] == errno.EINVAL
    with Client(served.path, timeout=10) as c:
        assert c.call({**V, "cmd": "GET_DAEMON"}) == {**V, "ok": True, "daemons": []}
    assert served.thread.is_alive()


def test_a_reply_that_cannot_be_encoded_is_an_error_reply(tmp_path):
    """Whatever a handler returns, the loop answers: a value read back later
    that is not Unicode text gives an error reply, not a dead daemon."""
    path = str(tmp_path / "s.sock")
    server = ControlServer(NetnsIPVS(), path=path, handler=lambda ipvs, req, now: {**V, "ok": True, "x": "\udc80"})
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall(client.encode({**V, "cmd": "GET_INFO"}))
        for _ in range(5):
            server.serve(0.1)
        s.settimeout(2)
        data = s.recv(65536)
    server.close()
    reply = json.loads(data[4:])
    assert reply["ok"] is False and reply["errno"] == errno.EIO


@given(st.text(max_size=20).map(lambda t: t + "\udc80"), st.sampled_from(["sched_name", "pe_name"]))
@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fuzz_stored_strings_read_back(shared_daemon, text, field):
    """Strings the tables keep are read back by every listing later: a
    string that cannot be sent back must be refused when it arrives."""
    svc = {**svc_attrs(8000), field: text}
    body = json.dumps({**V, "cmd": "NEW_SERVICE", "service": svc}).encode()
    assert _raw_call(shared_daemon.path, body)["ok"] is False
    for cmd in ("GET_SERVICE", "GET_DAEMON", "GET_INFO"):
        with Client(shared_daemon.path, timeout=10) as c:
            assert c.call({**V, "cmd": cmd})["ok"] is True


class StepClock:
    """A clock that moves ``step`` seconds each time it is read."""

    def __init__(self, step: float) -> None:
        self.t = 1000.0
        self.step = step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def test_a_long_batch_runs_a_slice_per_turn(tmp_path):
    """Issue 13: one BATCH of 5,000 GET_SERVICE ran in one go and stalled
    the loop (data path included) for seconds; now each turn of the loop
    does at most TURN_BUDGET_S of it and the reply comes whole at the end."""
    from ipvs import daemon as daemon_mod

    ipvs = NetnsIPVS()
    for port in range(1, 21):
        netlink.dispatch(ipvs, new_service(port), 0)
    clock = StepClock(0.0005)  # every read of the clock: half a millisecond of work
    path = str(tmp_path / "s.sock")
    server = ControlServer(ipvs, path=path, clock=clock)
    n = 5000
    turns = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall(client.encode({**V, "cmd": "BATCH", "requests": [{**V, "cmd": "GET_SERVICE"}] * n, "seq": 7}))
        s.setblocking(False)
        data = b""
        while turns < 100000:
            server.serve(0.01)
            turns += 1
            try:
                data += s.recv(1 << 20)
            except BlockingIOError:
                pass
            if len(data) >= 4 and len(data) - 4 >= struct.unpack_from("!I", data)[0]:
                break
    server.close()
    budget_reads = daemon_mod.TURN_BUDGET_S / clock.step
    assert turns >= n / (budget_reads + 1) / 2  # many turns, not one
    reply = json.loads(data[4:])
    assert reply["ok"] is True and reply["seq"] == 7 and len(reply["replies"]) == n
    assert all(len(r["services"]) == 20 for r in reply["replies"])


def test_a_batch_reply_over_the_limit_is_cut_short(tmp_path, monkeypatch):
    from ipvs import daemon as daemon_mod

    monkeypatch.setattr(daemon_mod, "MAX_REPLY_BYTES", 20000)
    ipvs = NetnsIPVS()
    for port in range(1, 21):
        netlink.dispatch(ipvs, new_service(port), 0)
    d = ThreadDaemon(str(tmp_path / "s.sock"))
    d.daemon.server.ipvs = d.ipvs = ipvs
    try:
        with Client(d.path, timeout=10) as c:
            reply = c.call({**V, "cmd": "BATCH", "requests": [{**V, "cmd": "GET_SERVICE"}] * 100})
        assert reply["ok"] is False and reply["errno"] == errno.EMSGSIZE and "of 100 requests" in reply["message"]
        assert_alive(d.path)
    finally:
        d.stop()


def test_idle_connections_are_dropped(tmp_path):
    """Issue 13: a connection that never sent anything was kept for ever."""
    from ipvs import daemon as daemon_mod

    now = [1000.0]
    path = str(tmp_path / "s.sock")
    server = ControlServer(NetnsIPVS(), path=path, clock=lambda: now[0])
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        server.serve(0.1)
        assert len(server.peers) == 1
        now[0] += daemon_mod.IDLE_TIMEOUT_S / 2
        server.sweep()
        assert len(server.peers) == 1
        now[0] += daemon_mod.IDLE_TIMEOUT_S
        server.sweep()
        assert server.peers == {}
        s.settimeout(2)
        assert s.recv(10) == b""
    server.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run clients as another user")
def test_a_group_user_cannot_lock_root_out(tmp_path, monkeypatch):
    """Issue 13: idle connections filled the table and root's ipvsadm got
    EAGAIN.  Other users leave ROOT_RESERVE places free and hold at most
    MAX_PER_USER each."""
    from ipvs import daemon as daemon_mod

    monkeypatch.setattr(daemon_mod, "MAX_CLIENTS", 40)
    monkeypatch.setattr(daemon_mod, "ROOT_RESERVE", 8)
    monkeypatch.setattr(daemon_mod, "MAX_PER_USER", 100)
    address = f"\0pyipvs-test-{uuid.uuid4().hex}"
    group = 4242
    d = ThreadDaemon(address, allowed_gid=group)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (child: hold 60 idle connections as nobody)
        try:
            os.setgroups([])
            os.setgid(group)
            os.setuid(65534)
            held = []
            for _ in range(60):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(address)
                held.append(s)
            os.write(w, b"1")
            time.sleep(30)
        finally:
            os._exit(0)
    try:
        assert os.read(r, 1) == b"1"
        assert wait_for(lambda: len(d.daemon.server.peers) <= 40 - 8 + 1, 10)
        for _ in range(5):
            assert_alive(address)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
        os.close(w)
        d.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
def test_refused_peers_are_logged_rate_limited(caplog):
    """Issue 13: every refused connection wrote a log line (15k lines/s)."""
    address = f"\0pyipvs-test-{uuid.uuid4().hex}"
    d = ThreadDaemon(address)
    try:
        caplog.set_level("INFO", logger="ipvs.daemon")
        pid = os.fork()
        if pid == 0:  # pragma: no cover (child)
            try:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                for _ in range(200):
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.connect(address)
                    s.settimeout(5)
                    s.recv(4096)
                    s.close()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert wait_for(lambda: d.daemon.server.refused == 200, 10)
        lines = [r for r in caplog.records if "refused" in r.getMessage()]
        assert 1 <= len(lines) <= 20
    finally:
        d.stop()


def test_ipvsd_restores_a_debian_rules_file_with_comments(tmp_path):
    """Issue 13: the comment lines of Debian's /etc/ipvsadm.rules failed the
    restore, and the save at stop then wrote the file as 0 bytes."""
    _ipvsadm_or_skip()
    sock, rules_file = str(tmp_path / "s.sock"), tmp_path / "ipvsadm.rules"
    header = "# ipvsadm.rules\n#\n# Rules saved by the ipvsadm service.\n"
    rules_file.write_text(header + RULES_A)
    d = IpvsdProcess(["--rules", str(rules_file), "--save", str(rules_file), "--no-state"], sock)
    try:
        assert [s["port"] for s in d.call({**V, "cmd": "GET_SERVICE"})["services"]] == [80]
        assert d.call(new_service(443))["ok"]
        d.p.send_signal(signal.SIGTERM)
        assert d.p.wait(10) == 0
    finally:
        d.kill()
    assert rules_file.read_text() == header + RULES_A + "-A -t 203.0.113.5:443 -s wlc\n"


def test_ipvsd_never_saves_over_a_file_it_could_not_restore(tmp_path):
    _ipvsadm_or_skip()
    sock, rules_file = str(tmp_path / "s.sock"), tmp_path / "ipvsadm.rules"
    broken = RULES_A + "-A -t 203.0.113.5:81 -s no_such_scheduler\n"
    rules_file.write_text(broken)
    d = IpvsdProcess(["--rules", str(rules_file), "--save", str(rules_file), "--no-state"], sock)
    try:
        d.p.send_signal(signal.SIGTERM)
        assert d.p.wait(10) == 0
    finally:
        d.kill()
    assert rules_file.read_text() == broken


def test_ipvsd_starts_with_a_missing_rules_file(tmp_path):
    """Issue 13: a missing rules file was fatal (Restart=on-failure looped)."""
    sock, rules_file = str(tmp_path / "s.sock"), tmp_path / "ipvsadm.rules"
    d = IpvsdProcess(["--rules", str(rules_file), "--save", str(rules_file), "--no-state"], sock)
    try:
        assert d.call(new_service(80))["ok"]
        d.p.send_signal(signal.SIGTERM)
        assert d.p.wait(10) == 0
    finally:
        d.kill()
    assert rules_file.read_text() == "-A -t 203.0.113.5:80 -s wlc\n"


def test_ipvsd_sigkill_then_restart_serves_the_same_rules(tmp_path):
    """Issue 13: SIGKILL skips --save, and a restart came up with 0 services;
    the state file is written on every change and restored at start."""
    sock, state = str(tmp_path / "s.sock"), tmp_path / "state" / "ipvsadm.rules"
    d = IpvsdProcess(["--state", str(state)], sock)
    try:
        assert d.call(new_service(80))["ok"]
        assert d.call({**V, "cmd": "NEW_DEST", "service": svc_attrs(80),
                       "dest": {"addr": "172.16.0.2", "port": 80, "fwd_method": 0, "weight": 3,
                                "u_threshold": 0, "l_threshold": 0}})["ok"]
        assert wait_for(lambda: state.exists() and "172.16.0.2" in state.read_text(), 5)
    finally:
        d.p.send_signal(signal.SIGKILL)
        d.kill()
    d = IpvsdProcess(["--state", str(state)], sock)
    try:
        svcs = d.call({**V, "cmd": "GET_SERVICE"})["services"]
        assert [s["port"] for s in svcs] == [80]
        dests = d.call({**V, "cmd": "GET_DEST", "service": svc_attrs(80)})["dests"]
        assert [(x["addr"], x["weight"]) for x in dests] == [("172.16.0.2", 3)]
    finally:
        d.kill()


@pytest.mark.parametrize("to_file", [False, True], ids=["stderr", "log-file"])
def test_a_fatal_signal_leaves_the_python_stack_in_the_log(tmp_path, to_file):
    """A crash in the runtime (here a SIGSEGV sent from outside, as a fault
    in PyPy's JIT would raise it) leaves the stack ipvsd died in where its
    log goes, instead of nothing at all."""
    sock, log = str(tmp_path / "s.sock"), tmp_path / "ipvsd.log"
    d = IpvsdProcess(["--no-state", *(["--log-file", str(log)] if to_file else [])], sock)
    try:
        d.p.send_signal(signal.SIGSEGV)
        assert d.p.wait(10) == -signal.SIGSEGV
        text = log.read_text() if to_file else d.p.stderr.read()
        assert "Fatal Python error: Segmentation fault" in text, text
        assert "daemon.py" in text and "in run" in text, text
    finally:
        d.kill()


def test_ipvsd_state_file_keeps_the_timeouts_and_the_changed_settings(tmp_path):
    """With the kernel, ``ipvsadm --set`` and the net.ipv4.vs sysctls outlive
    anything short of a reboot; a restarted ipvsd must bring them back too.
    The command line's --set NAME=VALUE still wins over the state file."""
    sock, state = str(tmp_path / "s.sock"), tmp_path / "state" / "ipvsadm.rules"
    d = IpvsdProcess(["--state", str(state)], sock)
    try:
        assert d.call(new_service(80))["ok"]
        assert d.call({**V, "cmd": "SET_CONFIG", "timeout_tcp": 30, "timeout_tcp_fin": 10, "timeout_udp": 20})["ok"]
        for name, value in (("expire_nodest_conn", 1), ("drop_entry", 2), ("sloppy_tcp", 1)):
            assert d.call({**V, "cmd": "SET_SYSCTL", "name": name, "value": value})["ok"]
        assert wait_for(lambda: state.exists() and "sloppy_tcp" in state.read_text(), 5)
    finally:
        d.p.send_signal(signal.SIGKILL)
        d.kill()
    text = state.read_text()
    assert "# sysctl net.ipv4.vs.expire_nodest_conn = 1\n" in text
    assert "# sysctl net.ipv4.vs.drop_entry = 1\n" in text  # 2 is the automatic mode caught under pressure
    assert "pmtu_disc" not in text  # defaults are not written
    assert text.endswith("-A -t 203.0.113.5:80 -s wlc\n--set 30 10 20\n")
    d = IpvsdProcess(["--state", str(state), "--set", "sloppy_tcp=0"], sock)
    try:
        got = {n: d.call({**V, "cmd": "GET_SYSCTL", "name": n})["value"]
               for n in ("expire_nodest_conn", "drop_entry", "sloppy_tcp")}
        assert got == {"expire_nodest_conn": 1, "drop_entry": 1, "sloppy_tcp": 0}
        cfg = d.call({**V, "cmd": "GET_CONFIG"})
        assert (cfg["timeout_tcp"], cfg["timeout_tcp_fin"], cfg["timeout_udp"]) == (30, 10, 20)
        assert [s["port"] for s in d.call({**V, "cmd": "GET_SERVICE"})["services"]] == [80]
    finally:
        d.kill()


def test_the_procfs_dir_says_when_its_writer_died(tmp_path):
    """Issue 13: after a SIGKILL the /proc mirror stayed, stale, with
    nothing to tell a reader; the writer holds ipvsd.pid locked."""
    proc = tmp_path / "proc"
    d = IpvsdProcess(["--procfs-dir", str(proc), "--no-state"], str(tmp_path / "s.sock"))
    try:
        assert wait_for(lambda: (proc / "ipvsd.pid").exists(), 5)
        assert procfs.writer_alive(proc)
        assert (proc / "ipvsd.pid").read_text() == f"{d.p.pid}\n"
        with pytest.raises(OSError):  # a second writer is refused
            ProcfsWriter(NetnsIPVS(), proc).write(0, force=True)
    finally:
        d.p.send_signal(signal.SIGKILL)
        d.kill()
    assert (proc / "net" / "ip_vs").exists() and not procfs.writer_alive(proc)
    w = ProcfsWriter(NetnsIPVS(), proc)  # the next daemon takes over
    w.write(0, force=True)
    assert procfs.writer_alive(proc)
    w.remove()
    assert not procfs.writer_alive(tmp_path / "none")


def test_memory_budget_sources(tmp_path):
    """The defenses' memory model: a configured limit, the cgroup's, the machine's."""
    from ipvs.daemon import parse_size

    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    page = MemoryBudget.PAGE
    (proc / "self" / "statm").write_text(f"1000 {(64 << 20) // page} 0 0 0 0 0\n")
    (proc / "meminfo").write_text("MemTotal: 8000000 kB\nMemAvailable: 2097152 kB\n")
    (proc / "self" / "cgroup").write_text("0::/system.slice/ipvsd.service\n")
    cg = tmp_path / "cg"
    m = MemoryBudget(parse_size("256M"), proc=str(proc), cgroup_fs=str(cg))
    assert (m.source, m.left()) == ("configured", 192 << 20)
    assert m.left_pages() == (192 << 20) // page and m.table_cap() == (192 << 20) // 1024
    m = MemoryBudget(proc=str(proc), cgroup_fs=str(cg))
    assert (m.source, m.left()) == ("machine", 2 << 30)
    d = cg / "system.slice" / "ipvsd.service"
    d.mkdir(parents=True)
    (d / "memory.max").write_text("max\n")
    assert MemoryBudget(proc=str(proc), cgroup_fs=str(cg)).source == "machine"  # no limit there
    (d / "memory.max").write_text(f"{128 << 20}\n")
    (d / "memory.current").write_text(f"{130 << 20}\n")
    m = MemoryBudget(proc=str(proc), cgroup_fs=str(cg))
    assert (m.source, m.left()) == ("cgroup", -(2 << 20))
    assert m.table_cap() == 4096
    with pytest.raises(ValueError):
        parse_size("0")
    assert parse_size("64k") == 65536 and parse_size("1GiB") == 1 << 30


class FixedBudget(MemoryBudget):
    """A configured 64 MiB budget of which the process holds ``held`` bytes
    of private memory (1 MiB unless a test changes it), whatever it really holds."""

    def __init__(self) -> None:
        self.limit, self.source, self.cgroup, self.pinned, self.proc = 64 << 20, "configured", None, 0, "/proc"
        self.held = 1 << 20

    def private(self) -> int:
        return self.held


def test_the_daemon_feeds_availmem_and_caps_the_table(tmp_path):
    budget = FixedBudget()
    d = Daemon(NetnsIPVS(), socket_path=str(tmp_path / "s.sock"), memory=budget)
    try:
        assert d.ipvs.conn_tab.max_conns == (63 << 20) // 1024
        d.run_once(0)
        assert d.ipvs.availmem == (63 << 20) // MemoryBudget.PAGE
    finally:
        d.shutdown()


# ------------------------------------------------- PyPy's GC nursery at start


def runtime_log_line(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 60) -> str:
    """Start a control-plane-only ipvsd by ``cmd`` and return its
    ``running on ...`` log line; the daemon is stopped (SIGTERM) either way."""
    import select

    p = subprocess.Popen([*cmd, "--foreground", "--socket", str(cwd / "ipvsd.sock"), "--no-state",
                          "--log-level", "info"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env=env, cwd=cwd)
    seen = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not select.select([p.stderr], [], [], deadline - time.monotonic())[0]:
                break
            line = p.stderr.readline()
            if not line:
                break
            seen.append(line)
            if "running on " in line:
                return line.strip()
    finally:
        p.terminate()
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        p.stderr.close()
    raise AssertionError(f"no 'running on' line from {cmd}: {''.join(seen)[-2000:]}")


def test_pypy_env_only_on_pypy_and_only_what_is_missing():
    from ipvs.daemon import PYPY_ENV, pypy_env_missing

    assert PYPY_ENV == {"PYPY_GC_NURSERY": "4M", "MALLOC_MMAP_THRESHOLD_": "1048576"}
    assert pypy_env_missing("pypy", {}) == PYPY_ENV
    # The caller's own choices stand.
    assert pypy_env_missing("pypy", {"PYPY_GC_NURSERY": "1M"}) == {"MALLOC_MMAP_THRESHOLD_": "1048576"}
    assert pypy_env_missing("pypy", {"PYPY_GC_NURSERY": "1M", "MALLOC_MMAP_THRESHOLD_": "0"}) == {}
    assert pypy_env_missing("cpython", {}) == {}


def test_tune_jit_sets_the_trace_limit_and_keeps_scheduling_and_encapsulation_apart(monkeypatch):
    """On PyPy the two settings reach pypyjit; elsewhere pypyjit is never
    imported (CPython has none)."""
    import types

    from ipvs import daemon as dmod
    from ipvs.core import Director
    from ipvs.ip_vs import IPVSProtocol
    from ipvs.xmit import tunnel_encap

    calls: list[tuple[str, object]] = []
    fake = types.SimpleNamespace(
        set_param=lambda arg: calls.append(("set_param", arg)),
        dont_trace_here=lambda instr, profiled, code: calls.append(("dont_trace_here", (instr, profiled, code))),
    )
    monkeypatch.setitem(sys.modules, "pypyjit", fake)
    monkeypatch.setattr(dmod.sys.implementation, "name", "cpython")
    dmod.tune_jit()
    assert calls == []
    monkeypatch.setattr(dmod.sys.implementation, "name", "pypy")
    dmod.tune_jit()
    assert calls == [("set_param", "trace_limit=10000"),
                     ("dont_trace_here", (0, False, IPVSProtocol.conn_schedule.__code__)),
                     ("dont_trace_here", (0, False, Director.schedule.__code__)),
                     ("dont_trace_here", (0, False, tunnel_encap.__code__))]


_TRACE_PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
import pypyjit
from ipvs import ctl, uapi
from ipvs.core import Director
from ipvs.daemon import tune_jit
from ipvs.packet import ip_send_check, l4_checksum, parse
if sys.argv[2] == "tuned":
    tune_jit()
too_long = []
pypyjit.set_trace_too_long_hook(lambda driver, key: too_long.append(key[0].co_filename + ":" + key[0].co_name))

def frame(src, sport, dst, dport, flags, payload):
    ip = bytearray(20)
    ip[0], ip[8], ip[9] = 0x45, 64, 6
    ip[2:4] = (40 + len(payload)).to_bytes(2, "big")
    ip[12:16], ip[16:20] = src, dst
    tcp = bytearray(20)
    tcp[0:2], tcp[2:4] = sport.to_bytes(2, "big"), dport.to_bytes(2, "big")
    tcp[12], tcp[13], tcp[14:16] = 0x50, flags, b"\\xfa\\xf0"
    buf = bytearray(14) + ip + tcp + payload
    ip_send_check(buf, 14)
    buf[50:52] = l4_checksum(buf, parse(buf, 14)).to_bytes(2, "big")
    return bytes(buf)

vip = bytes((203, 0, 113, 5))
tunnel = sys.argv[3] == "tun"  # VS/TUN (IPIP): no replies come through the director
d = Director()
d.own_address = lambda dst: bytes((172, 16, 0, 1))  # the tunnel's outer source
su = ctl.ServiceUser(af=uapi.AF_INET, addr=vip, port=80, sched_name="rr")
ctl.add_service(d.ipvs, su)
rs = bytes((172, 16, 0, 2))
method = uapi.IP_VS_CONN_F_TUNNEL if tunnel else uapi.IP_VS_CONN_F_MASQ
ctl.add_dest(d.ipvs, su, ctl.DestUser(af=uapi.AF_INET, addr=rs, port=80, conn_flags=method))
d.ipvs.conn_tab.max_conns = 1 << 20
frames, held = [], []  # new connections, each followed by packets of ten of the last 500
for i in range(40000):
    client = (0xC6336400 + 2 + i // 60000).to_bytes(4, "big"), 1024 + i % 60000
    frames.append(frame(*client, vip, 80, 0x02, b""))
    request = frame(*client, vip, 80, 0x10, b"x" * 100)
    held.append((request,) if tunnel else (request, frame(rs, 80, *client, 0x10, b"y" * 500)))
    for pkts in held[-500::50]:
        frames.extend(pkts)
for i, p in enumerate(frames):  # as the driver's receive loop hands them over
    d.process(bytearray(p), 14, 1000 + i // 1000)
for i in range(20000):  # then only new connections, as from a burst of clients
    client = (0xC6336400 + 20 + i // 60000).to_bytes(4, "big"), 1024 + i % 60000
    d.process(bytearray(frame(*client, vip, 80, 0x02, b"")), 14, 2000)
print([k for k in too_long if "/ipvs/" in k])
"""


@pytest.mark.skipif(sys.implementation.name != "pypy", reason="PyPy's JIT")
def test_packet_paths_fit_in_one_trace_at_ipvsd_settings():
    """With :func:`ipvs.daemon.tune_jit`, the JIT abandons no trace through
    ``ipvs/`` while the core makes 40,000 connections and forwards the
    established packets of the newest among them, then takes 20,000 SYNs
    alone: a path that grows past the limit is compiled in pieces and runs
    much slower (``ipvs.daemon.PYPY_JIT`` and ``_traced_apart`` say how
    much).  A fresh PyPy, so the traces are this test's own."""
    assert _trace_probe("tuned", "nat") == "[]"
    assert _trace_probe("default", "nat") != "[]"  # the probe can tell: PyPy's defaults split the path


@pytest.mark.skipif(sys.implementation.name != "pypy", reason="PyPy's JIT")
def test_tunnelled_packets_fit_in_one_trace_at_ipvsd_settings():
    """The same through a VS/TUN service: the encapsulation is compiled
    apart (``_traced_apart``), or it makes the trace of each tunnelled
    packet too long and the JIT stops inlining ``Director.process`` for
    every packet after it, NAT's too."""
    assert _trace_probe("tuned", "tun") == "[]"


def _trace_probe(mode: str, method: str) -> str:
    """The traces through ``ipvs/`` that :data:`_TRACE_PROBE` saw abandoned, in a fresh PyPy."""
    return subprocess.run([sys.executable, "-c", _TRACE_PROBE, str(ROOT), mode, method], capture_output=True,
                          text=True, timeout=300, check=True).stdout.strip().splitlines()[-1]


def test_console_main_restarts_once_on_pypy_without_the_nursery(monkeypatch, tmp_path):
    """The exec: the same interpreter, the same script and arguments, the
    variable set; with the variable set, no exec and on to main()."""
    from ipvs import daemon as dmod

    script = tmp_path / "ipvsd"
    script.write_text("# a console script\n")
    execs: list[tuple[str, list[str], str | None, str | None]] = []

    def fake_execv(path, args):
        execs.append((path, list(args), os.environ.get("PYPY_GC_NURSERY"), os.environ.get("MALLOC_MMAP_THRESHOLD_")))
        raise SystemExit("exec")

    monkeypatch.setattr(dmod.os, "execv", fake_execv)
    monkeypatch.setattr(dmod, "main", lambda argv=None: 7)
    monkeypatch.setattr(dmod.sys.implementation, "name", "pypy")
    monkeypatch.setattr(dmod.sys, "argv", [str(script), "--foreground", "--socket", "/x"])
    monkeypatch.delenv("PYPY_GC_NURSERY", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    with pytest.raises(SystemExit, match="exec"):
        dmod.console_main()
    argv = [sys.executable, str(script), "--foreground", "--socket", "/x"]
    assert execs == [(sys.executable, argv, "4M", "1048576")]
    # The new process finds the variables set and runs the daemon.
    assert dmod.console_main() == 7
    assert len(execs) == 1


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / ".venv-pypy" / "bin" / "python").exists(), reason="no .venv-pypy (tools/bootstrap)")
def test_tools_ipvsd_on_pypy_runs_with_the_4m_nursery(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYPY_GC_NURSERY", "IPVS_SOCKET")}
    env["IPVSD_RUNTIME"] = "pypy"  # tools/run-tests sets cpython for its CPython pass
    line = runtime_log_line([str(ROOT / ".venv-pypy" / "bin" / "python"), str(IPVSD)], tmp_path, env)
    assert line.startswith("ipvsd: INFO running on PyPy ") and line.endswith(", GC nursery 4M, JIT trace_limit 10000)"), line


# ------------------------------------------------- counters while running (issue 13)


def test_get_counters_adds_the_data_paths_the_loops_and_the_memorys(tmp_path):
    """The daemon's GET_COUNTERS reply: the core's counters, the driver's, the loop's turns, the memory."""
    from ipvs.packet import Drop

    class Driver:
        def fds(self):
            return []

        def counters(self):
            return {"d_out_rx_kernel_drops": 7}

        def poll_timeout(self):
            return 0.0

        def spin(self):
            return False

        def on_idle(self, now):
            pass

        def close(self):
            pass

    ipvs = NetnsIPVS()
    d = Daemon(ipvs, socket_path=str(tmp_path / "s.sock"))
    try:
        ipvs.drops[Drop.TABLE_FULL] += 3
        reply = d.transport().call({**V, "cmd": "GET_COUNTERS"})
        assert reply["ok"] and reply["counters"]["drop_table_full"] == 3 and "driver" not in reply
        assert reply["memory"]["rss_kib"] > 0 and "budget_kib" not in reply["memory"]
        d.attach_driver(Driver())
        for _ in range(3):
            d.run_once(0)
        reply = d.transport().call({**V, "cmd": "GET_COUNTERS"})
        assert reply["driver"] == {"d_out_rx_kernel_drops": 7}
        loop = reply["loop"]
        assert loop["turns"] == 3 and loop["turn_max_us"] >= 0 and loop["turns_over_1000ms"] == 0
    finally:
        d.shutdown()


def test_loop_stats_count_long_turns():
    from ipvs.daemon import LoopStats

    s = LoopStats()
    for seconds in (0.0005, 0.012, 0.25, 1.5, 0.004):
        s.add(seconds)
    c = s.counters()
    assert (c["turns"], c["turn_max_us"]) == (5, 1500000)
    assert (c["turns_over_10ms"], c["turns_over_100ms"], c["turns_over_1000ms"]) == (3, 2, 1)


def test_ipvs_counters_prints_what_the_director_counted(tmp_path):
    from ipvs.packet import Drop

    sock = str(tmp_path / "s.sock")
    d = ThreadDaemon(sock)
    try:
        d.ipvs.drops[Drop.DEFENSE] += 5
        run = [sys.executable, str(ROOT / "tools" / "ipvs-counters"), "--socket", sock]
        p = subprocess.run(run, capture_output=True, text=True, timeout=30)
        lines = dict(line.split() for line in p.stdout.splitlines())
        assert p.returncode == 0 and lines["drop_defense"] == "5" and "drop_truncated" not in lines
        assert int(lines["memory.rss_kib"]) > 0 and int(lines["loop.turns"]) > 0
        p = subprocess.run(run + ["-a"], capture_output=True, text=True, timeout=30)
        assert "drop_truncated 0\n" in p.stdout
        p = subprocess.run(run + ["--json", "drop_defense", "conn_count"], capture_output=True, text=True, timeout=30)
        assert json.loads(p.stdout) == {"drop_defense": 5, "conn_count": 0}
        p = subprocess.run(run + ["nope"], capture_output=True, text=True, timeout=30)
        assert p.returncode == 255 and "no counter nope" in p.stderr
    finally:
        d.stop()
    p = subprocess.run(run, capture_output=True, text=True, timeout=30)
    assert p.returncode == 255 and "cannot reach the director" in p.stderr


def test_memory_budget_counts_private_memory_and_the_rings(tmp_path):
    """Shared file pages (the interpreter's code) are not PyIPVS's use of its budget; the rings are."""
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    page = MemoryBudget.PAGE
    # resident 160 MiB, of which 96 MiB map files
    (proc / "self" / "statm").write_text(f"99999 {(160 << 20) // page} {(96 << 20) // page} 0 0 0 0\n")
    m = MemoryBudget(256 << 20, proc=str(proc))
    assert (m.rss(), m.private(), m.used(), m.left()) == (160 << 20, 64 << 20, 64 << 20, 192 << 20)
    m.pinned = 32 << 20
    assert (m.used(), m.left()) == (96 << 20, 160 << 20)


def test_memory_pressure_reclaims_the_gcs_garbage_first(tmp_path):
    """Under 1.5 x amemthresh pages left, a major collection runs in steps, one per loop turn, at most every
    RECLAIM_INTERVAL_S; above it, none."""
    from types import SimpleNamespace

    steps = []

    def collect_step():
        steps.append(1)
        return SimpleNamespace(major_is_done=len(steps) % 3 == 0)

    t = [100.0]
    budget = FixedBudget()
    d = Daemon(NetnsIPVS(), socket_path=str(tmp_path / "s.sock"), memory=budget, clock=lambda: t[0])
    d._collect_step = collect_step
    d.ipvs.sysctl.amemthresh = 4096  # 16 MiB: reclaim under 24 MiB left
    try:
        d.run_once(0)
        assert steps == [] and d.reclaims == 0
        budget.held = 44 << 20  # 20 MiB left
        t[0] += 1.0
        for _ in range(5):
            d.run_once(0)
        assert (len(steps), d.reclaims) == (3, 1)  # one collection in three steps, then none
        t[0] += 1.0
        d.run_once(0)
        assert len(steps) == 3  # not again within RECLAIM_INTERVAL_S
        t[0] += d.RECLAIM_INTERVAL_S
        for _ in range(4):
            d.run_once(0)
        assert (len(steps), d.reclaims) == (6, 2)
    finally:
        d.shutdown()


def test_a_reclaim_gives_the_freed_memory_back_and_the_defenses_stand_down(tmp_path):
    """After the flood's entries are gone, the memory they took leaves ipvsd's resident size (the collection,
    then malloc_trim) and update_defense_level sees it: drop_packet, drop_entry and secure_tcp go back to
    their level 1, as in the kernel when freed slab pages return to the page allocator."""
    from types import SimpleNamespace

    from ipvs.ctl import update_defense_level

    budget = FixedBudget()
    budget.held = 60 << 20  # 4 MiB left of 64: under amemthresh (16 MiB)
    d = Daemon(NetnsIPVS(), socket_path=str(tmp_path / "s.sock"), memory=budget, clock=lambda: 100.0)
    steps, trims = [], []
    d._collect_step = lambda: steps.append(1) or SimpleNamespace(major_is_done=len(steps) == 2)

    def trim():
        trims.append(budget.held)
        budget.held = 8 << 20  # what the GC freed goes back to the system
        return 1

    d._trim = trim
    sc = d.ipvs.sysctl
    sc.amemthresh, sc.drop_packet, sc.drop_entry, sc.secure_tcp = 4096, 1, 1, 1
    try:
        d.run_once(0)  # reads 4 MiB left, starts a reclaim: its first step
        update_defense_level(d.ipvs)
        assert (sc.drop_packet, sc.drop_entry, sc.secure_tcp) == (2, 2, 2) and d.ipvs.drop_rate == 1
        d.run_once(0)  # the second step ends the collection: the trim follows at once
        assert (len(steps), trims, d.reclaims) == (2, [60 << 20], 1)
        assert d.trimmed == 52 << 20
        d.run_once(0)  # what is left is read again at once, not a second later
        assert d.ipvs.availmem == (56 << 20) // MemoryBudget.PAGE
        update_defense_level(d.ipvs)
        assert (sc.drop_packet, sc.drop_entry, sc.secure_tcp) == (1, 1, 1)
        assert (d.ipvs.drop_rate, d.ipvs.dropentry) == (0, False)
        counters = d.memory_counters()
        assert (counters["reclaims"], counters["trimmed_kib"]) == (1, 52 << 10)
    finally:
        d.shutdown()


def test_without_collect_step_a_reclaim_is_the_trim_alone(tmp_path):
    """CPython frees by reference counting: under pressure the reclaim is malloc_trim, at most every
    RECLAIM_INTERVAL_S."""
    budget = FixedBudget()
    budget.held = 44 << 20  # 20 MiB left: under 1.5 x amemthresh (24 MiB)
    t = [100.0]
    d = Daemon(NetnsIPVS(), socket_path=str(tmp_path / "s.sock"), memory=budget, clock=lambda: t[0])
    trims = []
    d._collect_step, d._trim = None, lambda: trims.append(1) or 1
    d.ipvs.sysctl.amemthresh = 4096
    try:
        for _ in range(3):
            d.run_once(0)
        assert (len(trims), d.reclaims) == (1, 1)
        t[0] += d.RECLAIM_INTERVAL_S
        for _ in range(2):
            d.run_once(0)
        assert (len(trims), d.reclaims) == (2, 2)
    finally:
        d.shutdown()


def test_malloc_trim_returns_freed_heap_pages_to_the_system():
    """The real call: memory freed in the middle of malloc's heap stays resident until the trim."""
    import gc

    from ipvs.daemon import malloc_trim, resident_bytes

    trim = malloc_trim()
    if trim is None:
        pytest.skip("no malloc_trim (not glibc)")
    # 2 KiB buffers come from malloc's heap on both runtimes (CPython's small-object arenas stop at 512
    # bytes); the last one stays alive, so the heap's top is in use and only a trim can free the rest.
    blocks = [bytearray(2048) for _ in range(40000)]  # about 80 MiB
    keep = blocks[-1]
    del blocks
    gc.collect()
    before = resident_bytes(private=True)
    trim()
    after = resident_bytes(private=True)
    assert keep is not None and before - after > 40 << 20, (before >> 20, after >> 20)


def test_the_rings_count_against_a_configured_budget(tmp_path):
    """attach_driver: the driver's mapped rings join what ipvsd holds, and the table's cap shrinks by them."""
    class Driver:
        def fds(self):
            return []

        def mapped_bytes(self):
            return 32 << 20

    budget = FixedBudget()
    d = Daemon(NetnsIPVS(), socket_path=str(tmp_path / "s.sock"), memory=budget)
    try:
        assert d.ipvs.conn_tab.max_conns == (63 << 20) // 1024
        d.attach_driver(Driver())
        assert budget.pinned == 32 << 20 and budget.left() == 31 << 20
        assert d.ipvs.conn_tab.max_conns == (31 << 20) // 1024
    finally:
        d.driver = None
        d.shutdown()
