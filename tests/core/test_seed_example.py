"""The seed's worked example, replayed offline through a pcap.

Rules (the seed's, written for ipvsadm): virtual service 202.103.106.5:80
over 172.16.0.2:80 (weight 1) and 172.16.0.3:8000 (weight 2), and
202.103.106.5:21 to 172.16.0.3:21, all masqueraded.  A request from
202.100.1.2:3456 to the VIP must leave towards the real server chosen by
the scheduler with only the destination changed, and the reply must leave
from the VIP with only the source changed; every checksum must be what
scapy computes from scratch.
"""

import io

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from ipvs.core import NF_STOLEN
from ipvs.driver import pcap, replay
from tests.conftest import Lab, checksums_valid, scapy_valid

VIP = "202.103.106.5"
CLIENT = "202.100.1.2"
RS1, RS2 = ("172.16.0.2", 80), ("172.16.0.3", 8000)
DIRECTOR_MAC = "02:00:00:00:00:01"


def seed_lab(sched="wrr") -> Lab:
    lab = Lab()
    web = lab.service(VIP, 80, sched=sched)
    lab.dest(web, *RS1, weight=1)
    lab.dest(web, *RS2, weight=2)
    ftp = lab.service(VIP, 21, sched=sched)
    lab.dest(ftp, "172.16.0.3", 21)
    return lab


def frame(src, sport, dst, dport, flags, seq, ack=0, payload=b""):
    return bytes(
        Ether(src="02:00:00:00:00:99", dst=DIRECTOR_MAC)
        / IP(src=src, dst=dst, ttl=64, id=7)
        / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=8192)
        / payload
    )


def test_request_and_reply_rewritten_as_in_the_seed():
    lab = seed_lab()
    t0 = 1_000_000.0
    records = [
        pcap.Record(t0, frame(CLIENT, 3456, VIP, 80, "S", 100), pcap.LINKTYPE_ETHERNET),
        pcap.Record(t0 + 0.001, frame(*RS2, CLIENT, 3456, "SA", 500, 101), pcap.LINKTYPE_ETHERNET),
        pcap.Record(t0 + 0.002, frame(CLIENT, 3456, VIP, 80, "A", 101, 501, b"GET / HTTP/1.0\r\n\r\n"),
                    pcap.LINKTYPE_ETHERNET),
        pcap.Record(t0 + 0.003, frame(*RS2, CLIENT, 3456, "PA", 501, 119, b"HTTP/1.0 200 OK\r\n\r\n"),
                    pcap.LINKTYPE_ETHERNET),
    ]
    f = io.BytesIO()
    pcap.write(f, [(r.ts, r.data) for r in records])
    f.seek(0)
    out = replay.replay(lab.d, list(pcap.read(f)))
    assert len(out) == 4
    # wrr starts with the highest weight: 172.16.0.3:8000 gets the first connection.
    for (ts, data), rec in zip(out, records, strict=True):
        assert abs(ts - rec.ts) < 1e-6
        got, sent = IP(data[14:]), IP(rec.data[14:])
        assert checksums_valid(data[14:]) and scapy_valid(data[14:])
        assert got.ttl == sent.ttl - 1
        assert bytes(got[TCP].payload) == bytes(sent[TCP].payload)
        assert (got[TCP].seq, got[TCP].ack, got[TCP].flags) == (sent[TCP].seq, sent[TCP].ack, sent[TCP].flags)
    req, rep = IP(out[0][1][14:]), IP(out[1][1][14:])
    assert (req.src, req[TCP].sport, req.dst, req[TCP].dport) == (CLIENT, 3456, *RS2)
    assert (rep.src, rep[TCP].sport, rep.dst, rep[TCP].dport) == (VIP, 80, CLIENT, 3456)
    data_req, data_rep = IP(out[2][1][14:]), IP(out[3][1][14:])
    assert (data_req.dst, data_req[TCP].dport) == RS2
    assert (data_rep.src, data_rep[TCP].sport) == (VIP, 80)
    [cp] = lab.conns()
    assert lab.tcp_states[cp.state] == "ESTABLISHED"


def test_other_clients_spread_by_weight():
    lab = seed_lab()
    seen = []
    for i in range(6):
        buf = bytearray(frame(CLIENT, 4000 + i, VIP, 80, "S", 1)[14:])
        assert lab.send(buf) == NF_STOLEN
        p = IP(bytes(buf))
        seen.append((p.dst, p[TCP].dport))
        assert checksums_valid(buf) and scapy_valid(buf)
    # Kernel wrr: adding .2 (w1) first leaves the current weight at 1, so
    # the first round takes every dest with weight >= 1 (newest first),
    # then rounds at cw 2 and 1 follow: .3 .2 | .3 | .3 .2 | .3
    assert seen == [RS2, RS1, RS2, RS2, RS1, RS2]


def test_ftp_service_forwards_port_21():
    lab = seed_lab()
    buf = bytearray(frame(CLIENT, 3457, VIP, 21, "S", 1)[14:])
    assert lab.send(buf) == NF_STOLEN
    p = IP(bytes(buf))
    assert (p.src, p[TCP].sport, p.dst, p[TCP].dport) == (CLIENT, 3457, "172.16.0.3", 21)
    assert scapy_valid(buf)
    reply = bytearray(frame("172.16.0.3", 21, CLIENT, 3457, "SA", 9, 2)[14:])
    assert lab.send(reply) == NF_STOLEN
    p = IP(bytes(reply))
    assert (p.src, p[TCP].sport) == (VIP, 21) and scapy_valid(reply)


RULES = """\
-A -t 202.103.106.5:80 -s wrr
-a -t 202.103.106.5:80 -r 172.16.0.2:80 -m -w 1
-a -t 202.103.106.5:80 -r 172.16.0.3:8000 -m -w 2
-A -t 202.103.106.5:21 -s wrr
-a -t 202.103.106.5:21 -r 172.16.0.3:21 -m -w 1
"""


def test_tools_ipvs_replay_with_the_seed_rules(tmp_path):
    """The same example through ``tools/ipvs-replay RULES IN.pcap OUT.pcap``."""
    import os
    import subprocess
    import sys

    tool = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "ipvs-replay")
    rules = tmp_path / "rules"
    rules.write_text(RULES)
    inp, out = tmp_path / "in.pcap", tmp_path / "out.pcap"
    with open(inp, "wb") as f:
        pcap.write(f, [(10.0, frame(CLIENT, 3456, VIP, 80, "S", 100)),
                       (10.001, frame(*RS2, CLIENT, 3456, "SA", 500, 101))])
    r = subprocess.run([sys.executable, tool, str(rules), str(inp), str(out), "--trace"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = [IP(rec.data[14:]) for rec in pcap.read_file(str(out))]
    assert [(p.src, p[TCP].sport, p.dst, p[TCP].dport) for p in got] == [
        (CLIENT, 3456, *RS2), (VIP, 80, CLIENT, 3456)]
    assert all(scapy_valid(bytes(p)) for p in got)
    assert "172.16.0.3:8000" in r.stdout
