"""ipvs/metrics.py and ``ipvsd --metrics``: node_exporter's ipvs metrics.

The parsers read the kernel's /proc texts as node_exporter's procfs does;
the endpoint is scraped over HTTP and compared with ``ipvsadm -Ln`` and
``ipvsadm -Ln --stats --exact`` of the same director, after real traffic
(the nat_classic golden capture run through the director).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from ipvs import metrics
from ipvs.cli import ipvsadm
from ipvs.daemon import Daemon
from ipvs.driver.replay import replay
from ipvs.netns import NetnsIPVS
from ipvs_harness.capture import A, Split, golden_dir

prometheus_parser = pytest.importorskip("prometheus_client.parser")

ROOT = Path(__file__).resolve().parents[1]
IPVSADM = str(ROOT / "tools" / "ipvsadm")
IPVSD = str(ROOT / "tools" / "ipvsd")

KERNEL_IP_VS = """IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
TCP  C0A80001:0050 wlc
  -> 0A000002:1F90      Masq    2      5          7
  -> 0A000003:1F90      Route   0      0          1
FWM  00000064 rr
  -> 0A000004:0000      Route   3      1          0
UDP  [2001:0db8:0000:0000:0000:0000:0000:0001]:0035 rr
  -> [2001:0db8:0000:0000:0000:0000:0000:0002]:0035      Masq    1      0          4
"""

KERNEL_IP_VS_STATS = """   Total Incoming Outgoing         Incoming         Outgoing
   Conns  Packets  Packets            Bytes            Bytes
      1A      2B0      1F4            1C3E0            9C400

 Conns/s   Pkts/s   Pkts/s          Bytes/s          Bytes/s
       0        0        0                0                0
"""


def test_parse_ip_vs_stats_reads_the_hex_totals():
    assert metrics.parse_ip_vs_stats(KERNEL_IP_VS_STATS) == (0x1A, 0x2B0, 0x1F4, 0x1C3E0, 0x9C400)


def test_parse_ip_vs_labels_as_procfs():
    got = metrics.parse_ip_vs(KERNEL_IP_VS)
    assert got == {
        ("192.168.0.1", "80", "10.0.0.2", "8080", "TCP", ""): [5, 7, 2],
        ("192.168.0.1", "80", "10.0.0.3", "8080", "TCP", ""): [0, 1, 0],
        ("", "0", "10.0.0.4", "0", "FWM", "00000064"): [1, 0, 3],
        ("2001:db8::1", "53", "2001:db8::2", "53", "UDP", ""): [0, 4, 1],
    }


@pytest.mark.parametrize("bad", ["", "x\ny\n", "a\nb\n1 2 3\n\n", "a\nb\n1 2 3 4 zz\n\n"])
def test_parse_ip_vs_stats_refuses_what_is_not_the_kernel_format(bad):
    with pytest.raises(metrics.ProcFormatError):
        metrics.parse_ip_vs_stats(bad)


def test_parse_ip_vs_refuses_bad_addresses():
    with pytest.raises(metrics.ProcFormatError):
        metrics.parse_ip_vs("TCP  C0A8:0050 wlc\n")
    with pytest.raises(metrics.ProcFormatError):
        metrics.parse_ip_vs("  -> 0A000002:1F90 Masq 1 0 0\n")


@pytest.mark.parametrize("text, want", [(":9100", ("0.0.0.0", 9100)), ("9100", ("0.0.0.0", 9100)),
                                        ("127.0.0.1:9", ("127.0.0.1", 9)), ("[::1]:9100", ("::1", 9100))])
def test_parse_listen(text, want):
    assert metrics.parse_listen(text) == want


@pytest.mark.parametrize("text", ["", ":", "host:http", ":-1", ":70000"])
def test_parse_listen_refuses(text):
    with pytest.raises(ValueError):
        metrics.parse_listen(text)


# ------------------------------------------------------------------ scraped


def scrape(port: int) -> dict[str, list]:
    """name -> [(labels, value)] of the endpoint's text exposition."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=20) as r:
        text = r.read().decode()
    out: dict[str, list] = {}
    for fam in prometheus_parser.text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def listed(sock: str, *args: str) -> str:
    return subprocess.run([sys.executable, IPVSADM, *args], capture_output=True, text=True, check=True,
                          env={**os.environ, "IPVS_SOCKET": sock}, timeout=60).stdout


def backends_of_listing(text: str) -> dict[tuple[str, str, str, str], tuple[int, int, int]]:
    """(vip, vport, rip, rport) -> (active, inactive, weight) from ``ipvsadm -Ln``."""
    out, vip = {}, None
    for line in text.splitlines()[3:]:
        f = line.split()
        if f[0] in ("TCP", "UDP"):
            vip = f[1].rsplit(":", 1)
        elif f[0] == "->":
            rip = f[1].rsplit(":", 1)
            out[(vip[0], vip[1], rip[0], rip[1])] = (int(f[4]), int(f[5]), int(f[3]))
    return out


def totals_of_stats(text: str) -> list[int]:
    """The sums over services of ``ipvsadm -Ln --stats --exact``'s five columns."""
    sums = [0] * 5
    for line in text.splitlines()[3:]:
        f = line.split()
        if f[0] in ("TCP", "UDP", "FWM"):
            for i, v in enumerate(f[-5:]):
                sums[i] += int(v)
    return sums


@pytest.fixture
def director_after_traffic(tmp_path):
    """A daemon serving in a thread whose director has handled the
    nat_classic capture (so counters and connections are not zero)."""
    g = golden_dir("nat_classic")
    if g is None:
        pytest.skip("nat_classic golden not available")
    sock = str(tmp_path / "ipvsd.sock")
    daemon = Daemon(NetnsIPVS(), socket_path=sock)
    rules = Path(g, "before-ipvsadm-S-n.txt").read_text().splitlines()
    assert ipvsadm.restore(rules, daemon.transport()) == 0
    replay(daemon.director, Split(g, {A("203.0.113.5")}).input)
    daemon.start()
    t = threading.Thread(target=daemon.run, daemon=True)
    t.start()
    try:
        yield sock
    finally:
        daemon.request_stop()
        t.join(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_scrape_equals_ipvsadm_listings(director_after_traffic):
    sock = director_after_traffic
    server = metrics.MetricsServer("127.0.0.1:0", sock)
    try:
        got = scrape(server.address[1])
    finally:
        server.close()
    stats = totals_of_stats(listed(sock, "-Ln", "--stats", "--exact"))
    assert stats[0] > 0 and stats[1] > 0 and stats[3] > 0, "the capture should have made traffic"
    names = [name for name, _help in metrics.TOTALS]
    assert [got[n][0][1] for n in names] == stats
    want = backends_of_listing(listed(sock, "-Ln"))
    seen = {}
    for i, (name, _help) in enumerate(metrics.BACKEND_GAUGES):
        for labels, value in got[name]:
            assert set(labels) == set(metrics.BACKEND_LABELS)
            assert labels["proto"] == "TCP" and labels["local_mark"] == ""
            key = (labels["local_address"], labels["local_port"], labels["remote_address"], labels["remote_port"])
            seen.setdefault(key, [0, 0, 0])[i] = int(value)
    assert {k: tuple(v) for k, v in seen.items()} == want
    assert any(v[0] + v[1] > 0 for v in want.values()), "the capture should leave connections"


def test_ipvsd_metrics_option_serves_and_stops(tmp_path):
    sock, port = str(tmp_path / "ipvsd.sock"), free_port()
    p = subprocess.Popen([sys.executable, IPVSD, "--foreground", "--socket", sock, "--metrics", f"127.0.0.1:{port}"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                got = scrape(port)
                break
            except OSError:
                assert p.poll() is None, p.stderr.read()
                assert time.monotonic() < deadline, "no metrics endpoint"
                time.sleep(0.1)
        assert got["node_ipvs_connections_total"] == [({}, 0.0)]
        assert "node_ipvs_backend_weight" not in got  # no service yet
        subprocess.run([sys.executable, IPVSADM, "-R"], input="-A -f 7 -s rr\n-a -f 7 -r 198.51.100.9 -g -w 4\n",
                       text=True, check=True, env={**os.environ, "IPVS_SOCKET": sock}, timeout=60)
        got = scrape(port)
        assert got["node_ipvs_backend_weight"] == [({"local_address": "", "local_port": "0",
                                                     "remote_address": "198.51.100.9", "remote_port": "0",
                                                     "proto": "FWM", "local_mark": "00000007"}, 4.0)]
        p.terminate()
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_ipvsd_metrics_refuses_a_bad_address(tmp_path):
    r = subprocess.run([sys.executable, IPVSD, "--foreground", "--socket", str(tmp_path / "s"), "--metrics", "x:y"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "--metrics" in r.stderr
