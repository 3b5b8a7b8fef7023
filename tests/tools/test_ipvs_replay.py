"""tools/ipvs-replay end to end: rules file + kernel captures in, pcap out."""

import os
import subprocess
import sys

import pytest

from ipvs.driver import pcap
from ipvs_harness.capture import A, Split, golden_dir

TOOL = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "ipvs-replay")
VIP = A("203.0.113.5")


@pytest.fixture()
def nat_classic(tmp_path):
    g = golden_dir("nat_classic")
    if g is None:
        pytest.skip("nat_classic golden not available")
    sp = Split(g, {VIP})
    to_rs, to_cli = sp.to_rs, sp.to_cli
    src = tmp_path / "in.pcap"
    with open(src, "wb") as f:
        pcap.write(f, [(r.ts, r.data) for r in sp.input])
    rules = tmp_path / "rules"
    rules.write_text(open(os.path.join(g, "before-ipvsadm-S-n.txt")).read())
    return tmp_path, src, rules, to_rs, to_cli


def run(*args):
    return subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True, timeout=60)


def test_replay_tool_output_equals_kernel(nat_classic):
    tmp, src, rules, to_rs, to_cli = nat_classic
    out = tmp / "out.pcap"
    r = run(rules, src, out)
    assert r.returncode == 0, r.stderr
    got = pcap.read_file(str(out))
    assert sorted(g.data[14:] for g in got) == sorted(x.data[14:] for x in to_rs + to_cli)
    assert "frames in" in r.stderr


def test_trace_explains_each_decision(nat_classic):
    tmp, src, rules, *_ = nat_classic
    r = run(rules, src, tmp / "o.pcap", "--trace")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(line.startswith("sched <Service TCP 203.0.113.5:80 wlc> chose <Dest 172.16.0.3:8000") for line in lines)
    assert any("NONE->SYN_RECV" in line for line in lines)
    assert any("SYN_RECV->ESTABLISHED" in line for line in lines)
    assert any(line.startswith("out ") and "TIME_WAIT" in line for line in lines)


def test_bad_inputs_give_status_2(tmp_path):
    rules = tmp_path / "rules"
    rules.write_text("-A -t 203.0.113.5:80 -s nosuchsched\n")
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"not a pcap at all")
    r = run(rules, junk, tmp_path / "o.pcap")
    assert r.returncode == 2 and "rules not accepted" in r.stderr
    rules.write_text("-A -t 203.0.113.5:80 -s rr\n")
    r = run(rules, junk, tmp_path / "o.pcap")
    assert r.returncode == 2 and "bad magic" in r.stderr
    r = run(tmp_path / "missing", junk, tmp_path / "o.pcap")
    assert r.returncode == 2


def _write_pcapng(path, records):
    """The frames as Wireshark saves them (pcapng), with scapy's writer."""
    from scapy.layers.l2 import Ether
    from scapy.utils import PcapNgWriter

    w = PcapNgWriter(str(path))
    try:
        for r in records:
            p = Ether(r.data)
            assert bytes(p) == r.data
            p.time = r.ts
            w.write(p)
    finally:
        w.close()


def test_pcapng_input_gives_the_same_output(nat_classic):
    pytest.importorskip("scapy")
    tmp, src, rules, *_ = nat_classic
    ng = tmp / "in.pcapng"
    _write_pcapng(ng, pcap.read_file(str(src)))
    assert ng.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"
    r1, r2 = run(rules, src, tmp / "a.pcap"), run(rules, ng, tmp / "b.pcap")
    assert r1.returncode == 0 and r2.returncode == 0, r2.stderr
    assert (tmp / "a.pcap").read_bytes() == (tmp / "b.pcap").read_bytes()


def test_broken_pcapng_gives_status_2(tmp_path):
    rules = tmp_path / "rules"
    rules.write_text("-A -t 203.0.113.5:80 -s rr\n")
    bad = tmp_path / "bad.pcapng"
    bad.write_bytes(b"\x0a\x0d\x0d\x0a" + b"\xff" * 40)
    r = run(rules, bad, tmp_path / "o.pcap")
    assert r.returncode == 2
    assert "pcapng" in r.stderr and "Traceback" not in r.stderr
