"""Fragment reassembly and fragmentation (ipvs/driver/frag.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP

from ipvs.driver.frag import Reassembler, fragment

PRE = bytes(10) + bytes(14)
L3 = 24


def dgram(n: int, ident: int = 9) -> bytes:
    return bytes(IP(src="198.51.100.2", dst="203.0.113.5", id=ident) / UDP(sport=1, dport=7) / (bytes(range(256)) * 300)[:n])


@given(st.integers(1, 8000), st.integers(68, 1500), st.randoms())
def test_fragment_then_reassemble_in_any_order_is_identity(n, limit, rnd):
    whole = dgram(n)
    frags = fragment(bytearray(PRE + whole), L3, limit)
    assert all(len(f) - L3 <= limit for f in frags)
    rnd.shuffle(frags)
    r = Reassembler(250)
    got = None
    for i, f in enumerate(frags):
        res = r.add(bytearray(f), L3, 0) if len(frags) > 1 else (bytearray(f), 0)
        if i < len(frags) - 1:
            assert res is None
        else:
            got = res
    assert bytes(got[0][L3:]) == whole
    assert r.mem == 0 and not r.queues


def test_overlap_drops_the_queue_but_duplicates_are_ignored():
    frags = fragment(bytearray(PRE + dgram(3000)), L3, 1000)
    r = Reassembler(250)
    assert r.add(bytearray(frags[0]), L3, 0) is None
    assert r.add(bytearray(frags[0]), L3, 0) is None  # exact duplicate
    assert r.stats.overlaps == 0
    bad = bytearray(frags[1])
    bad[L3 + 6 : L3 + 8] = (0x2000 | (900 >> 3)).to_bytes(2, "big")  # starts inside fragment 0
    from ipvs.packet import ip_send_check
    ip_send_check(bad, L3)
    assert r.add(bad, L3, 0) is None
    assert r.stats.overlaps == 1 and not r.queues and r.mem == 0


def test_timeout_and_memory_bound():
    r = Reassembler(250, high_thresh=5000)
    a = fragment(bytearray(PRE + dgram(3000, 1)), L3, 1000)
    b = fragment(bytearray(PRE + dgram(3000, 2)), L3, 1000)
    c = fragment(bytearray(PRE + dgram(3000, 3)), L3, 1000)
    for f in a[:-1] + b[:-1]:
        r.add(bytearray(f), L3, 0)
    assert r.add(bytearray(c[0]), L3, 0) is None and r.stats.mem_drops == 1
    assert r.expire(30 * 250 - 1) == 0
    assert r.expire(30 * 250) == 2 and r.mem == 0
    # The late last fragment alone completes nothing.
    assert r.add(bytearray(a[-1]), L3, 30 * 250) is None


def test_oversized_datagram_is_refused():
    r = Reassembler(250)
    f = bytearray(fragment(bytearray(PRE + dgram(2000)), L3, 1000)[1])
    f[L3 + 6 : L3 + 8] = (8180).to_bytes(2, "big")  # offset 65440 + payload > 65535
    assert r.add(f, L3, 0) is None and r.stats.too_big == 1


def test_fragment_keeps_df_clear_and_sets_mf_on_all_but_last():
    frags = fragment(bytearray(PRE + dgram(2500)), L3, 1000)
    flags = [IP(bytes(f[L3:])).flags for f in frags]
    assert [str(x) for x in flags] == ["MF", "MF", ""]
