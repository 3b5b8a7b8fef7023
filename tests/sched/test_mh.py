"""ipvs/sched/mh.py against the kernel's ip_vs_mh.c and lib/siphash.c."""

import ipaddress
import os
import shutil
import struct
import subprocess
import sys
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from ipvs.sched.mh import MH_TAB_SIZE, hsiphash, hsiphash_1u32
from ipvs.uapi import IP_VS_DEST_F_OVERLOAD, IP_VS_SVC_F_SCHED_MH_FALLBACK, IP_VS_SVC_F_SCHED_MH_PORT
from tests.sched.util import Lab, golden_lab, name_of


def _cpython_hashes(datas: list[bytes]) -> list[int]:
    """CPython's hash of each bytes object, with PYTHONHASHSEED=0.

    CPython 3.11 hashes bytes with SipHash-1-3, and with that seed the key
    is zero: an independent implementation to check ours against.
    """
    code = "import sys;print(' '.join(str(hash(bytes.fromhex(a)) % 2**64) for a in sys.argv[1:]))"
    code += ";assert sys.hash_info.algorithm == 'siphash13'"
    env = dict(os.environ, PYTHONHASHSEED="0")
    # CPython's hash, whichever interpreter runs the tests (PyPy's differs).
    cpython = sys.executable if sys.implementation.name == "cpython" else shutil.which("python3")
    out = subprocess.run(
        [cpython, "-c", code, *(d.hex() for d in datas)], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return [int(h) for h in out]


def test_hsiphash_1u32_matches_cpython():
    # hsiphash of one u32 on a 64-bit kernel is SipHash-1-3 of its 4
    # little-endian bytes, truncated to 32 bits.
    values = [0, 1, 12345, 0xDEADBEEF, 0xFFFFFFFF]
    want = _cpython_hashes([struct.pack("<I", v) for v in values])
    assert [h & 0xFFFFFFFF for h in want] == [hsiphash_1u32(v, (0, 0)) for v in values]


def test_hsiphash_matches_cpython_at_every_length():
    # Whole 8-byte words, then the tail switch, for lengths 1..24 (hash(b"")
    # is 0 by definition in CPython, not SipHash, so the empty input is left out).
    datas = [bytes(range(7, 7 + n)) for n in range(1, 25)]
    want = _cpython_hashes(datas)
    assert [h & 0xFFFFFFFF for h in want] == [hsiphash(d, (0, 0)) for d in datas]


def test_hsiphash_of_a_u32_is_hsiphash_1u32():
    key = (2654435761, 2654446892)
    for v in (0, 7, 0x80000000, 0xFFFFFFFF):
        assert hsiphash(struct.pack("<I", v), key) == hsiphash_1u32(v, key)


def test_table_is_full_and_weighted():
    lab = golden_lab("mh", [1, 2, 3])
    table = lab.sched.lookup
    assert len(table) == MH_TAB_SIZE == 4093
    share = Counter(name_of(d) for d in table)
    assert sum(share.values()) == MH_TAB_SIZE
    assert share["rs1"] < share["rs2"] < share["rs3"]
    assert abs(share["rs3"] / share["rs1"] - 3) < 0.3


def test_rshift_limits_turns():
    lab = golden_lab("mh", [1, 1000])
    s = lab.sched
    assert (s.gcd, s.rshift) == (1, 4)  # fls(1000) = 10, minus MH_TAB_BITS 6
    lab = golden_lab("mh", [4, 6])
    assert (lab.sched.gcd, lab.sched.rshift) == (2, 0)


def test_no_weights_empties_the_table():
    lab = golden_lab("mh", [0, 0])
    assert lab.sched.gcd == 0
    assert set(lab.sched.lookup) == {None}
    assert lab.run(1) == [None]


def test_quiesced_dest_keeps_its_slots():
    lab = golden_lab("mh", [1, 1, 1])
    before = list(lab.sched.lookup)
    lab.edit(2, weight=0)  # last_weight stays 1: same table
    assert lab.sched.lookup == before
    srcs = [f"198.51.100.{i}" for i in range(1, 60)]
    got = [lab.run(1, src=s)[0] for s in srcs]
    assert None in got and "rs2" not in got
    assert {g for g in got if g} == {"rs1", "rs3"}


def test_fallback_skips_unavailable():
    lab = Lab("mh", flags=IP_VS_SVC_F_SCHED_MH_FALLBACK)
    for i in (1, 2, 3):
        lab.add(i)
    plain = golden_lab("mh", [1, 1, 1])
    srcs = [f"198.51.100.{i}" for i in range(1, 60)]
    orig = {s: plain.run(1, src=s)[0] for s in srcs}
    lab.edit(2, weight=0)
    lab.dest(3).flags |= IP_VS_DEST_F_OVERLOAD
    for s in srcs:
        assert lab.run(1, src=s) == ["rs1"]
    lab.dest(3).flags &= ~IP_VS_DEST_F_OVERLOAD
    for s in srcs:
        got = lab.run(1, src=s)[0]
        assert got in ("rs1", "rs3")
        if orig[s] != "rs2":
            assert got == orig[s]  # only rs2's clients move
    lab.dest(1).flags |= IP_VS_DEST_F_OVERLOAD
    lab.dest(3).flags |= IP_VS_DEST_F_OVERLOAD
    assert lab.run(1) == [None]


def test_mh_port():
    lab = Lab("mh", flags=IP_VS_SVC_F_SCHED_MH_PORT)
    for i in (1, 2, 3):
        lab.add(i)
    assert {lab.run(1, sport=p)[0] for p in range(40000, 40040)} == {"rs1", "rs2", "rs3"}
    plain = golden_lab("mh", [1, 1, 1])
    assert len({plain.run(1, sport=p)[0] for p in range(40000, 40040)}) == 1


def test_ipv4_lookup_key_uses_address_and_port():
    lab = golden_lab("mh", [1, 1, 1, 1, 1])
    src = "198.51.100.77"
    v = int(ipaddress.ip_address(src))
    slot = hsiphash_1u32(v, (2654435761, 2654435761)) % MH_TAB_SIZE
    assert lab.pick(src=src) is lab.sched.lookup[slot]


@settings(max_examples=15, deadline=None)
@given(st.integers(3, 12), st.data())
def test_removing_one_of_n_moves_about_one_nth(n, data):
    lab = golden_lab("mh", [1] * n)
    victim_no = data.draw(st.integers(1, n))
    victim = lab.dest(victim_no)
    before = list(lab.sched.lookup)
    lab.delete(victim_no)
    after = lab.sched.lookup
    owned = sum(1 for d in before if d is victim)
    moved_others = sum(1 for a, b in zip(before, after) if a is not victim and a is not b)
    assert abs(owned - MH_TAB_SIZE / n) < MH_TAB_SIZE / n * 0.25
    assert moved_others < MH_TAB_SIZE * 0.03
    assert victim not in after


@settings(max_examples=20, deadline=None)
@given(
    st.lists(st.integers(0, 4), min_size=1, max_size=6), st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=15)
)
def test_stable_for_a_fixed_set(weights, clients):
    lab = golden_lab("mh", weights)
    srcs = [str(ipaddress.IPv4Address(c)) for c in clients]
    first = [lab.run(1, src=s)[0] for s in srcs]
    assert [lab.run(1, src=s)[0] for s in srcs] == first


def _small(n):
    from ipvs.sched.mh import MaglevHashing

    lab = Lab("mh")
    lab.svc.scheduler = MaglevHashing(lab.svc, tab_size=251)
    for i in range(1, n + 1):
        lab.add(i)
    return lab


def test_more_dests_than_slots_keeps_the_last_table():
    lab = _small(251)
    table = list(lab.sched.lookup)
    assert len(set(table)) == 251  # one slot each
    assert lab.sched._dest_changed() == 0
    lab.add(252)  # -EINVAL in the kernel: the old table stays
    assert lab.sched.lookup == table
    assert lab.dest(252) not in lab.sched.lookup


def test_deferred_rebuild_across_the_limit():
    ref = _small(251)
    lab = _small(250)
    lab.add(251)  # rebuild pending (never looked up) ...
    lab.add(252)  # ... then refused: the pending table must be the 251-dest one
    assert [name_of(d) for d in lab.sched.lookup] == [name_of(d) for d in ref.sched.lookup]
