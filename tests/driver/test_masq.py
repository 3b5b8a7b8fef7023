"""Masquerading (ipvs/driver/masq.py): rewrite, reverse, ports, timeouts."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP

from ipvs.driver.masq import Masq
from tests.conftest import checksums_valid, icmp_error, tcp, udp

from .helpers import ip4

NETS = [(ip4("172.16.0.0"), 0xFFFFFF00)]
OUTER = "198.51.100.1"


def masq(**kw) -> Masq:
    return Masq(NETS, ip4(OUTER), 250, **kw)


@given(st.integers(1, 65535), st.integers(1, 65535), st.sampled_from(["tcp", "udp"]), st.binary(max_size=64))
def test_out_then_in_restores_the_real_server_view(sport, dport, proto, payload):
    m = masq()
    mk = tcp if proto == "tcp" else udp
    out = mk("172.16.0.2", sport, "198.51.100.2", dport, payload=payload)
    assert m.out(out, 0, False, 0)
    ip = IP(bytes(out))
    assert ip.src == OUTER and 61000 <= ip.sport <= 65095 and checksums_valid(out)
    back = mk("198.51.100.2", dport, OUTER, ip.sport, payload=payload)
    assert m.in_(back, 0, False, 1)
    b = IP(bytes(back))
    assert b.dst == "172.16.0.2" and b.dport == sport and checksums_valid(back)


def test_partial_checksum_gets_address_only_uncomplemented_update():
    m = masq()
    out = tcp("172.16.0.2", 4000, "198.51.100.2", 80, flags="A", payload=b"z" * 100)
    tot = len(out)

    def pseudo(b):
        s = sum(struct.unpack("!4H", bytes(b[12:20]))) + 6 + tot - 20
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        return s

    out[36:38] = struct.pack("!H", pseudo(out))
    assert m.out(out, 0, True, 0)
    assert struct.unpack("!H", out[36:38])[0] == pseudo(out)


def test_ports_are_unique_per_remote_and_exhaust_cleanly():
    m = masq(ports=(61000, 61002))
    got = []
    for i in range(3):
        p = tcp("172.16.0.2", 5000 + i, "198.51.100.2", 80)
        assert m.out(p, 0, False, 0)
        got.append(IP(bytes(p)).sport)
    assert sorted(got) == [61000, 61001, 61002]
    assert not m.out(tcp("172.16.0.3", 7000, "198.51.100.2", 80), 0, False, 0)
    assert m.stats.no_port == 1
    # Another remote can reuse the same ports.
    assert m.out(tcp("172.16.0.3", 7000, "198.51.100.9", 80), 0, False, 0)


def test_entries_expire_with_their_protocol_timeouts():
    m = masq()
    m.out(udp("172.16.0.2", 53, "198.51.100.2", 53), 0, False, 0)
    m.out(tcp("172.16.0.2", 999, "198.51.100.2", 80), 0, False, 0)
    assert m.expire(119 * 250) == 0  # sweeps run at most once a second
    assert m.expire(120 * 250) == 1  # the unanswered SYN
    assert m.expire(300 * 250) == 1  # UDP
    assert not m.out_map and not m.in_map


def test_unknown_inbound_is_not_ours():
    m = masq()
    assert not m.in_(tcp("198.51.100.2", 80, OUTER, 61000), 0, False, 0)


def test_icmp_echo_and_errors_about_masqueraded_flows():
    m = masq()
    ping = bytearray(bytes(IP(src="172.16.0.2", dst="198.51.100.2") / ICMP(type=8, id=77, seq=1)))
    assert m.out(ping, 0, False, 0)
    mid = IP(bytes(ping))[ICMP].id
    assert checksums_valid(ping)
    reply = bytearray(bytes(IP(src="198.51.100.2", dst=OUTER) / ICMP(type=0, id=mid, seq=1)))
    assert m.in_(reply, 0, False, 0)
    assert IP(bytes(reply))[ICMP].id == 77 and IP(bytes(reply)).dst == "172.16.0.2" and checksums_valid(reply)

    d = udp("172.16.0.2", 4444, "198.51.100.2", 9)
    m.out(d, 0, False, 0)
    err = icmp_error("198.51.100.2", OUTER, bytes(d))
    assert m.in_(err, 0, False, 0)
    e = IP(bytes(err))
    assert e.dst == "172.16.0.2" and checksums_valid(err)
    q = bytes(e[ICMP].payload)
    assert q[12:16] == bytes([172, 16, 0, 2]) and struct.unpack("!H", q[20:22])[0] == 4444
