"""ipvs/driver/replay.py: captures through the core, the pcap clock as
the core's time, what comes out (rewritten frames and generated ICMP),
and the one-line packet descriptions of --trace."""

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

from ipvs.driver import pcap, replay
from tests.conftest import Lab, scapy_valid

VIP, CLI, RS = "203.0.113.5", "198.51.100.2", "172.16.0.2"
DMAC, CMAC = "02:00:00:00:00:01", "02:00:00:00:00:99"


def lab():
    lb = Lab()
    su = lb.service(VIP, 80)
    lb.dest(su, RS, 8080)
    lb.service(VIP, 81)  # no real server: port unreachable
    return lb


def rec(ts, pkt, linktype=pcap.LINKTYPE_ETHERNET):
    if linktype == pcap.LINKTYPE_ETHERNET:
        return pcap.Record(ts, bytes(Ether(src=CMAC, dst=DMAC) / pkt), linktype)
    return pcap.Record(ts, bytes(pkt), linktype)


def test_jiffies():
    assert replay.jiffies(0.0, 250) == 0
    assert replay.jiffies(1.5, 250) == 375
    assert replay.jiffies(1_700_000_000.001, 250) == 425_000_000_000


def test_rewritten_frames_and_generated_errors():
    lb = lab()
    t0 = 1_700_000_000.0
    records = [
        rec(t0, IP(src=CLI, dst=VIP) / TCP(sport=1000, dport=80, flags="S")),
        rec(t0 + 0.1, IP(src=RS, dst=CLI) / TCP(sport=8080, dport=1000, flags="SA")),
        rec(t0 + 0.2, IP(src=CLI, dst=VIP) / TCP(sport=1001, dport=81, flags="S")),
        rec(t0 + 0.3, IP(src=CLI, dst="203.0.113.77") / UDP(sport=1, dport=2)),  # not ours
        rec(t0 + 0.4, ARP()),  # not IP
    ]
    lines = []
    out = replay.replay(lb.d, records, trace=lines.append)
    assert [ts for ts, _ in out] == [t0, t0 + 0.1, t0 + 0.2]
    req, rep, err = (Ether(f) for _, f in out)
    assert (req.src, req.dst) == (DMAC, "00:00:00:00:00:00")
    assert (req[IP].dst, req[TCP].dport, req[IP].ttl) == (RS, 8080, 63)
    assert (rep[IP].src, rep[TCP].sport) == (VIP, 80)
    assert err.type == 0x0800 and err.src == DMAC
    assert (err[IP].src, err[IP].dst, err[ICMP].type, err[ICMP].code) == (VIP, CLI, 3, 3)
    for _, f in out:
        assert scapy_valid(f[14:])
    text = "\n".join(lines)
    assert "not IP" in text and "sent" in text and "generated" in text and "ACCEPT" in text


def test_raw_ip_captures():
    lb = lab()
    out = replay.replay(lb.d, [rec(5.0, IP(src=CLI, dst=VIP) / TCP(sport=1, dport=80, flags="S"),
                                   pcap.LINKTYPE_RAW)])
    [(ts, f)] = out
    assert ts == 5.0 and IP(f).dst == RS


def test_the_capture_clock_drives_expiry():
    lb = lab()
    t0 = 1_000.0
    syn = IP(src=CLI, dst=VIP) / TCP(sport=1000, dport=80, flags="S")
    replay.replay(lb.d, [rec(t0, syn)])
    assert len(lb.conns()) == 1
    # 59 s later the SYN_RECV conn (60 s) is still there, 61 s later it is gone.
    other = IP(src=CLI, dst="203.0.113.77") / UDP()
    replay.replay(lb.d, [rec(t0 + 59, other)])
    assert len(lb.conns()) == 1
    replay.replay(lb.d, [rec(t0 + 61, other)])
    assert lb.conns() == []


def test_output_pcap_round_trip(tmp_path):
    lb = lab()
    out = replay.replay(lb.d, [rec(7.25, IP(src=CLI, dst=VIP) / TCP(sport=1, dport=80, flags="S"))])
    path = tmp_path / "out.pcap"
    with open(path, "wb") as f:
        pcap.write(f, out)
    [r] = pcap.read_file(str(path))
    assert r.ts == 7.25 and r.data == out[0][1]


def test_describe():
    p = bytes(IP(src=CLI, dst=VIP, ttl=9) / TCP(sport=1, dport=80, flags="SA"))
    assert replay.describe(p, 0) == f"TCP {CLI}:1 > {VIP}:80 [SA] ttl 9"
    u = bytes(Ether() / IP(src=CLI, dst=VIP) / UDP(sport=5, dport=53))
    assert replay.describe(u, 14) == f"UDP {CLI}:5 > {VIP}:53 ttl 64"
    i = bytes(IP(src=CLI, dst=VIP) / ICMP(type=3, code=1))
    assert replay.describe(i, 0) == f"ICMP {CLI} > {VIP} type 3 code 1 ttl 64"
    assert replay.describe(bytes(IP(src=CLI, dst=VIP, proto=47)), 0) == f"proto 47 {CLI} > {VIP} ttl 64"
    assert replay.describe(b"\x60" + bytes(50), 0).startswith("non-IPv4")
    assert replay.describe(b"\x45" + bytes(5), 0).startswith("non-IPv4")
