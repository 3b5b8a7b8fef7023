"""The socket filter, run by a small classic-BPF interpreter written here."""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether

from ipvs.driver import bpf

from .helpers import ip4


def run(prog: bytes, pkt: bytes) -> int:
    """Execute ``prog`` on ``pkt`` as the kernel would; returns the snap length."""
    ins = [bpf.INSN.unpack_from(prog, i) for i in range(0, len(prog), 8)]
    a = x = 0
    pc = 0
    steps = 0
    while True:
        steps += 1
        assert steps < 10000
        code, jt, jf, k = ins[pc]
        pc += 1
        cls = code & 7
        if cls == bpf.BPF_RET:
            return k
        if cls == bpf.BPF_LD:
            size = {bpf.BPF_W: 4, bpf.BPF_H: 2, bpf.BPF_B: 1}[code & 0x18]
            off = k + (x if code & 0xE0 == bpf.BPF_IND else 0)
            if off + size > len(pkt):
                return 0  # the kernel aborts with 0 on an out-of-bounds load
            a = int.from_bytes(pkt[off : off + size], "big")
        elif cls == bpf.BPF_LDX:
            assert code & 0xE0 == bpf.BPF_MSH
            x = (pkt[k] & 0xF) * 4
        elif cls == bpf.BPF_ALU:
            assert code & 0xF0 == bpf.BPF_AND
            a &= k
        elif cls == bpf.BPF_JMP:
            op = code & 0xF0
            cond = {bpf.BPF_JEQ: a == k, bpf.BPF_JGT: a > k, bpf.BPF_JGE: a >= k, bpf.BPF_JSET: bool(a & k),
                    bpf.BPF_JA: True}[op]
            pc += jt if cond else jf
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


E = Ether(dst="02:00:00:00:00:0a", src="02:00:00:00:c0:01")
VIP, OUTER, RS1, CLIENT = "203.0.113.5", "198.51.100.1", "172.16.0.2", "198.51.100.2"


def pkt(p) -> bytes:
    return bytes(E / p)


OUTER_SHARED = bpf.build([ip4(VIP)], masq=(ip4(OUTER), 61000, 65095))
INNER_SHARED = bpf.build(src_nets=[(ip4("172.16.0.0"), 0xFFFFFF00)], exclude_daddrs=[ip4("172.16.0.1"), ip4(OUTER)])


@pytest.mark.parametrize("prog, frame, accepted", [
    (OUTER_SHARED, pkt(ARP(pdst=VIP)), True),
    (OUTER_SHARED, pkt(IP(src=CLIENT, dst=VIP) / TCP(dport=80)), True),
    (OUTER_SHARED, pkt(IP(src=CLIENT, dst=VIP, frag=100) / (b"x" * 8)), True),
    (OUTER_SHARED, pkt(IP(src=CLIENT, dst="203.0.113.6") / TCP(dport=80)), False),
    (OUTER_SHARED, pkt(IP(src=CLIENT, dst=OUTER) / TCP(dport=61000)), True),
    (OUTER_SHARED, pkt(IP(src=CLIENT, dst=OUTER) / UDP(dport=65095)), True),
    (OUTER_SHARED, pkt(IP(src=CLIENT, dst=OUTER) / TCP(dport=22)), False),
    (OUTER_SHARED, pkt(IP(src=CLIENT, dst=OUTER) / TCP(dport=65096)), False),
    (OUTER_SHARED, pkt(IP(src=CLIENT, dst=OUTER, options=b"\x01" * 4) / TCP(dport=62000)), True),
    (OUTER_SHARED, pkt(IP(src=CLIENT, dst=OUTER, frag=3) / (b"\0" * 16)), False),
    (OUTER_SHARED, pkt(IP(src=CLIENT, dst=OUTER) / ICMP()), True),
    (OUTER_SHARED, pkt(IPv6() / TCP()), False),
    (INNER_SHARED, pkt(IP(src=RS1, dst=CLIENT) / TCP(sport=80)), True),
    (INNER_SHARED, pkt(IP(src=RS1, dst="172.16.0.1") / TCP(dport=22)), False),
    (INNER_SHARED, pkt(IP(src="10.0.0.1", dst=CLIENT) / TCP()), False),
])
def test_filter_decisions(prog, frame, accepted):
    got = run(prog, frame)
    assert (got >= 65549) if accepted else got == 0


def test_no_addresses_accepts_arp_only():
    prog = bpf.build()
    assert run(prog, pkt(ARP())) and not run(prog, pkt(IP(dst=VIP) / TCP()))


def test_too_many_addresses_falls_back_to_all_ipv4():
    prog = bpf.build(range(1, 300))
    assert run(prog, pkt(IP(dst="192.0.2.1") / TCP())) and not run(prog, pkt(IPv6()))


def test_instructions_are_eight_bytes_native_order():
    prog = bpf.build([1])
    assert len(prog) % 8 == 0
    code, jt, jf, k = struct.unpack_from("=HBBI", prog, 0)
    assert code == bpf.BPF_LD | bpf.BPF_H | bpf.BPF_ABS and k == 12
