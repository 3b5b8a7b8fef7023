"""ipvs/proto/tcp.py: the transition function against the kernel tables as
written in the reference digest (parsed here, at test time), the
active/inactive accounting, the NOOUTPUT rule, timeouts and the
secure_tcp table."""

import os
import re

import pytest

from ipvs.conn import Connection
from ipvs.ip_vs import Dest
from ipvs.packet import TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN
from ipvs.proto import state_name
from ipvs.proto import tcp as T
from ipvs.uapi import IP_VS_CONN_F_INACTIVE, IP_VS_CONN_F_NOOUTPUT, IP_VS_CONN_F_TEMPLATE
from ipvs_harness.capture import SHARED

DIGEST = os.path.join(SHARED, "reference", "kernel-ipvs-digest.md")
ABBR = ["NO", "ES", "SS", "SR", "FW", "TW", "CL", "CW", "LA", "LI", "SA"]
FLAGS = ["syn", "fin", "ack", "rst"]
HZ = 250


def _digest() -> str:
    if not os.path.exists(DIGEST):
        pytest.skip("reference digest not available beside the repo")
    with open(DIGEST) as f:
        return f.read()


def _section(text: str, start: str) -> str:
    i = text.index(start)
    j = text.index("\n### ", i + 1)
    return text[i:j]


def _parse_table(section: str) -> dict:
    """{(direction, flag): [next state name for each current state]}."""
    out = {}
    direction = None
    for line in section.splitlines():
        line = line.replace("*", "").strip()
        m = re.fullmatch(r"(INPUT_ONLY|INPUT|OUTPUT):", line)
        if m:
            direction = m.group(1)
            continue
        m = re.fullmatch(r"- (syn|fin|ack|rst): ((?:[A-Z]{2} ?){11})", line)
        if m and direction:
            cells = m.group(2).split()
            assert all(c in ABBR for c in cells)
            out[(direction, m.group(1))] = cells
    assert len(out) == 12, sorted(out)
    return out


def _kernel_tables():
    text = _digest()
    return {
        "normal": _parse_table(_section(text, "### 4.3")),
        "dos": _parse_table(_section(text, "### 4.4")),
    }


def _state_rows():
    """(name, timeout seconds, active?) from the digest's 4.1 table."""
    text = _section(_digest(), "### 4.1")
    rows = []
    for line in text.splitlines():
        m = re.match(r"\| (\d+) \| (\w+) \| (\d+) s.*\| (.*)\|$", line)
        if m:
            rows.append((int(m.group(1)), m.group(2), int(m.group(3)), "yes" in m.group(4)))
    assert [r[0] for r in rows] == list(range(11))
    return rows


def _expected(table, direction, flags, state):
    if flags & TCP_RST:
        f = "rst"
    elif flags & TCP_SYN:
        f = "syn"
    elif flags & TCP_FIN:
        f = "fin"
    elif flags & TCP_ACK:
        f = "ack"
    else:
        return "CL"  # no flag we know: the kernel moves to CLOSE
    return table[(direction, f)][state]


DIRS = {"INPUT": T.INPUT, "OUTPUT": T.OUTPUT, "INPUT_ONLY": T.INPUT_ONLY}


@pytest.mark.parametrize("which", ["normal", "dos"])
def test_transition_function_equals_kernel_table_cell_by_cell(which):
    table = _kernel_tables()[which]
    ours = T.TCP_STATES if which == "normal" else T.TCP_STATES_DOS
    checked = 0
    for dname, doff in DIRS.items():
        for flags in range(256):  # every combination of the 8 TCP flag bits
            for state in range(11):
                want = ABBR.index(_expected(table, dname, flags, state))
                assert T.next_state(ours, doff, flags, state) == want, (which, dname, hex(flags), ABBR[state])
                checked += 1
    assert checked == 3 * 256 * 11


def test_state_names_timeouts_and_active_set_match_the_digest():
    rows = _state_rows()
    assert T.STATE_NAMES == tuple(r[1] for r in rows)
    assert T.DEFAULT_TIMEOUTS_S == tuple(r[2] for r in rows)
    assert T.ACTIVE_STATES == {r[0] for r in rows if r[3]}
    pd = T.init_netns(HZ)
    assert pd.timeout_table == [r[2] * HZ for r in rows]


def _conn(state=T.NONE, flags=IP_VS_CONN_F_INACTIVE, dest=True):
    d = Dest(af=2, addr=b"\xac\x10\x00\x02", port=80) if dest else None
    cp = Connection(2, 6, b"\1\2\3\4", 1000, b"\5\6\7\x08", 80, b"\xac\x10\x00\x02", 80, flags=flags, state=state)
    if d is not None:
        cp.dest = d
        if flags & IP_VS_CONN_F_INACTIVE:
            d.inactconns = 1
        else:
            d.activeconns = 1
    return cp, d


@pytest.mark.parametrize("which", ["normal", "dos"])
def test_set_state_walks_the_table_and_keeps_counters(which):
    table = _kernel_tables()[which]
    rows = _state_rows()
    active = {r[0] for r in rows if r[3]}
    pd = T.init_netns(HZ)
    T.timeout_change(pd, which == "dos")
    for dname in ("INPUT", "OUTPUT"):
        for f, bits in (("syn", TCP_SYN), ("fin", TCP_FIN | TCP_ACK), ("ack", TCP_ACK), ("rst", TCP_RST)):
            for state in range(11):
                was_active = state in active
                cp, d = _conn(state, 0 if was_active else IP_VS_CONN_F_INACTIVE)
                T.set_state(cp, pd, DIRS[dname], bits)
                new = ABBR.index(table[(dname, f)][state])
                assert cp.state == new
                assert cp.timeout == rows[new][2] * HZ
                now_active = new in active
                assert (d.activeconns, d.inactconns) == ((1, 0) if now_active else (0, 1))
                assert bool(cp.flags & IP_VS_CONN_F_INACTIVE) == (not now_active)


def test_no_flags_moves_to_close_and_goes_inactive():
    pd = T.init_netns(HZ)
    cp, d = _conn(T.ESTABLISHED, 0)
    T.set_state(cp, pd, T.INPUT, TCP_PSH)
    assert cp.state == T.CLOSE
    assert (d.activeconns, d.inactconns) == (0, 1)
    assert cp.timeout == 10 * HZ


def test_state_unchanged_leaves_counters_alone_but_refreshes_timeout():
    pd = T.init_netns(HZ)
    cp, d = _conn(T.ESTABLISHED, 0)
    cp.timeout = 0
    T.set_state(cp, pd, T.INPUT, TCP_ACK)
    assert cp.state == T.ESTABLISHED and (d.activeconns, d.inactconns) == (1, 0)
    assert cp.timeout == 900 * HZ


def test_noooutput_uses_input_only_until_the_first_reply():
    table = _kernel_tables()["normal"]
    pd = T.init_netns(HZ)
    cp, _d = _conn(T.ESTABLISHED, IP_VS_CONN_F_NOOUTPUT)
    T.set_state(cp, pd, T.INPUT, TCP_FIN | TCP_ACK)
    # INPUT_ONLY fin from ES is FW, where INPUT would give CW.
    assert ABBR[cp.state] == table[("INPUT_ONLY", "fin")][1] == "FW"
    assert table[("INPUT", "fin")][1] == "CW"
    assert cp.flags & IP_VS_CONN_F_NOOUTPUT
    # A reply clears NOOUTPUT; later input packets use the INPUT rows.
    T.set_state(cp, pd, T.OUTPUT, TCP_ACK)
    assert not cp.flags & IP_VS_CONN_F_NOOUTPUT
    cp.state = T.ESTABLISHED
    T.set_state(cp, pd, T.INPUT, TCP_FIN)
    assert cp.state == T.CLOSE_WAIT


def test_without_dest_no_counters_are_touched():
    pd = T.init_netns(HZ)
    cp, _ = _conn(T.NONE, IP_VS_CONN_F_INACTIVE, dest=False)
    T.set_state(cp, pd, T.INPUT, TCP_SYN)
    assert cp.state == T.SYN_RECV
    assert cp.flags & IP_VS_CONN_F_INACTIVE  # nothing to move between


def test_established_assures_the_controlling_template():
    pd = T.init_netns(HZ)
    cp, _ = _conn(T.SYN_RECV, 0)
    ct, _ = _conn(0, IP_VS_CONN_F_TEMPLATE)
    cp.control = ct
    assert state_name(ct, pd) == "NONE"
    T.set_state(cp, pd, T.INPUT, TCP_ACK)
    assert cp.state == T.ESTABLISHED
    assert state_name(ct, pd) == "ASSURED"


def test_may_schedule_syn_only_unless_sloppy():
    for flags in range(256):
        want = not flags & TCP_RST and bool(flags & TCP_SYN)
        assert T.may_schedule(flags, 0) == want
        assert T.may_schedule(flags, 1) == (not flags & TCP_RST)


def test_timeout_change_switches_tables():
    pd = T.init_netns(HZ)
    assert pd.state_table is T.TCP_STATES
    T.timeout_change(pd, True)
    assert pd.state_table is T.TCP_STATES_DOS
    T.timeout_change(pd, False)
    assert pd.state_table is T.TCP_STATES


def test_conn_listen():
    pd = T.init_netns(HZ)
    cp, _ = _conn()
    T.conn_listen(cp, pd)
    assert state_name(cp, pd) == "LISTEN" and cp.timeout == 120 * HZ


def test_state_name_rules():
    pd = T.init_netns(HZ)
    cp, _ = _conn(T.TIME_WAIT)
    assert state_name(cp, pd) == "TIME_WAIT"
    cp.state = 11
    assert state_name(cp, pd) == "ERR!"
    fwm = Connection(2, 0, b"\1\2\3\4", 0, b"\0\0\0\1", 0, b"\5\6\7\x08", 0)
    assert state_name(fwm, None) == "NONE"
    other = Connection(2, 99, b"\1\2\3\4", 0, b"\0\0\0\1", 0, b"\5\6\7\x08", 0)
    assert state_name(other, None) == "ERR!"
