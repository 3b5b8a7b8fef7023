"""TCP: the IPVS connection state machine, timeouts and scheduling rule.

Mirrors ``net/netfilter/ipvs/ip_vs_proto_tcp.c`` as in kernel 6.1;
:data:`ip_vs_protocol_tcp` is its ``struct ip_vs_protocol``.  The NAT
handlers (``tcp_snat_handler``, ``tcp_dnat_handler``) are shared with UDP
in :mod:`ipvs.xmit`, which reads the checksum offset from here.

The state tables are data, copied cell for cell from the kernel's
``tcp_states`` and ``tcp_states_dos`` (the latter is used while the
``secure_tcp`` defence is on).  A row is picked by direction (INPUT,
OUTPUT, INPUT_ONLY for connections that never see replies) and by the
packet's flags with priority RST > SYN > FIN > ACK; a packet with none of
them moves the connection to CLOSE.  The column is the current state.

Active/inactive accounting follows ``tcp_state_active_table`` (4.8+): a
connection counts as active in SYN_SENT, SYN_RECV, ESTABLISHED and SYNACK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ipvs.ip_vs import IP_VS_DIR_OUTPUT, NF_ACCEPT, IPVSProtocol, ProtoData, control_assure_ct
from ipvs.packet import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, IPHeader
from ipvs.uapi import IP_VS_CONN_F_INACTIVE, IP_VS_CONN_F_NOOUTPUT, IPPROTO_TCP

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.conn import Connection

PROTOCOL = IPPROTO_TCP
NAME = "TCP"

# State numbers (enum ip_vs_tcp_states).
NONE, ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT, TIME_WAIT, CLOSE, CLOSE_WAIT, LAST_ACK, LISTEN, SYNACK = range(11)
STATE_NAMES = (
    "NONE", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT", "TIME_WAIT",
    "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "SYNACK",
)
#: Default timeouts in seconds, by state (tcp_timeouts[]).
DEFAULT_TIMEOUTS_S = (2, 15 * 60, 2 * 60, 1 * 60, 2 * 60, 2 * 60, 10, 60, 30, 2 * 60, 2 * 60)
#: States in which a connection counts in ``activeconns``.
ACTIVE_STATES = frozenset((ESTABLISHED, SYN_SENT, SYN_RECV, SYNACK))

# Direction offsets into the table (tcp_state_off[]).
INPUT, OUTPUT, INPUT_ONLY = 0, 4, 8
# Flag index within a direction (tcp_state_idx()).
IDX_SYN, IDX_FIN, IDX_ACK, IDX_RST = 0, 1, 2, 3

_ABBR = {
    "NO": NONE, "ES": ESTABLISHED, "SS": SYN_SENT, "SR": SYN_RECV, "FW": FIN_WAIT, "TW": TIME_WAIT,
    "CL": CLOSE, "CW": CLOSE_WAIT, "LA": LAST_ACK, "LI": LISTEN, "SA": SYNACK,
}


def _table(text: str) -> tuple[tuple[int, ...], ...]:
    """Parse rows written like the kernel's (columns: NO ES SS SR FW TW CL CW LA LI SA)."""
    rows = []
    for line in text.strip().splitlines():
        cells = line.split(":", 1)[1].split()
        assert len(cells) == 11, line
        rows.append(tuple(_ABBR[c] for c in cells))
    assert len(rows) == 12
    return tuple(rows)


#: ``tcp_states``: rows INPUT syn/fin/ack/rst, OUTPUT ..., INPUT_ONLY ...
TCP_STATES = _table("""
in-syn:  SR ES ES SR SR SR SR SR SR SR SR
in-fin:  CL CW SS TW TW TW CL CW LA LI TW
in-ack:  ES ES SS ES FW TW CL CW CL LI ES
in-rst:  CL CL CL SR CL CL CL CL LA LI SR
out-syn: SS ES SS SR SS SS SS SS SS LI SR
out-fin: TW FW SS TW FW TW CL TW LA LI TW
out-ack: ES ES SS ES FW TW CL CW LA ES ES
out-rst: CL CL SS CL CL TW CL CL CL CL CL
io-syn:  SR ES ES SR SR SR SR SR SR SR SR
io-fin:  CL FW SS TW FW TW CL CW LA LI TW
io-ack:  ES ES SS ES FW TW CL CW CL LI ES
io-rst:  CL CL CL SR CL CL CL CL LA LI CL
""")

#: ``tcp_states_dos``: the secure_tcp table.
TCP_STATES_DOS = _table("""
in-syn:  SR ES ES SR SR SR SR SR SR SR SA
in-fin:  CL CW SS TW TW TW CL CW LA LI SA
in-ack:  ES ES SS SR FW TW CL CW CL LI SA
in-rst:  CL CL CL SR CL CL CL CL LA LI CL
out-syn: SS ES SS SA SS SS SS SS SS LI SA
out-fin: TW FW SS TW FW TW CL TW LA LI TW
out-ack: ES ES SS ES FW TW CL CW LA ES ES
out-rst: CL CL SS CL CL TW CL CL CL CL CL
io-syn:  SA ES ES SR SA SA SA SA SA SA SA
io-fin:  CL FW SS TW FW TW CL CW LA LI TW
io-ack:  ES ES SS ES FW TW CL CW CL LI ES
io-rst:  CL CL CL SR CL CL CL CL LA LI CL
""")


def init_netns(hz: int) -> ProtoData:
    """``__ip_vs_tcp_init``: TCP's protocol data for a new instance (default timeouts in jiffies, the normal state
    table).
    """
    return ProtoData(
        PROTOCOL, NAME, STATE_NAMES, [t * hz for t in DEFAULT_TIMEOUTS_S], hz, state_table=TCP_STATES,
        pp=ip_vs_protocol_tcp,
    )


def timeout_change(pd: ProtoData, secure_tcp_on: bool) -> None:
    """``tcp_timeout_change``: switch tables when the defence level changes."""
    pd.state_table = TCP_STATES_DOS if secure_tcp_on else TCP_STATES


def state_idx(flags: int) -> int:
    """Row within a direction for TCP header flags; -1 when none is set."""
    if flags & TCP_RST:
        return IDX_RST
    if flags & TCP_SYN:
        return IDX_SYN
    if flags & TCP_FIN:
        return IDX_FIN
    if flags & TCP_ACK:
        return IDX_ACK
    return -1


#: state_idx() for every value of the TCP flags byte, looked up per packet.
FLAG_IDX = tuple(state_idx(f) for f in range(256))


def next_state(table, direction: int, flags: int, state: int) -> int:
    """The pure transition function of the table (no side effects)."""
    idx = FLAG_IDX[flags & 0xFF]
    if idx < 0:
        return CLOSE
    return table[direction + idx][state]


def set_state(cp: Connection, pd: ProtoData, direction: int, flags: int) -> None:
    """``set_tcp_state``: move ``cp`` and keep its dest's counters right.

    ``direction`` is INPUT or OUTPUT; INPUT becomes INPUT_ONLY while the
    connection has seen no reply, and the first reply clears NOOUTPUT.
    """
    if cp.flags & IP_VS_CONN_F_NOOUTPUT:
        if direction == OUTPUT:
            cp.flags &= ~IP_VS_CONN_F_NOOUTPUT
        else:
            direction = INPUT_ONLY
    idx = FLAG_IDX[flags & 0xFF]
    new_state = CLOSE if idx < 0 else pd.state_table[direction + idx][cp.state]
    if new_state != cp.state:
        dest = cp.dest
        if dest is not None:
            if not cp.flags & IP_VS_CONN_F_INACTIVE and new_state not in ACTIVE_STATES:
                dest.activeconns -= 1
                dest.inactconns += 1
                cp.flags |= IP_VS_CONN_F_INACTIVE
            elif cp.flags & IP_VS_CONN_F_INACTIVE and new_state in ACTIVE_STATES:
                dest.activeconns += 1
                dest.inactconns -= 1
                cp.flags &= ~IP_VS_CONN_F_INACTIVE
        cp.state = new_state
        if new_state == ESTABLISHED:
            control_assure_ct(cp)
    cp.timeout = pd.timeout_table[new_state]


def may_schedule(flags: int, sloppy_tcp: int) -> bool:
    """``tcp_conn_schedule``'s gate: SYN (or sloppy non-RST) creates a conn."""
    if flags & TCP_RST:
        return False
    return bool(flags & TCP_SYN) or bool(sloppy_tcp)


def conn_listen(cp: Connection, pd: ProtoData) -> None:
    """``ip_vs_tcp_conn_listen``: an expected (FTP data) connection waits."""
    cp.state = LISTEN
    cp.timeout = pd.timeout_table[LISTEN]


class TCPProtocol(IPVSProtocol):
    """``ip_vs_protocol_tcp``: TCP's operations for the packet path."""

    protocol = IPPROTO_TCP
    name = NAME
    csum_offset = 16

    def init_netns(self, hz: int) -> ProtoData:
        """``init_netns``: :func:`init_netns` (``__ip_vs_tcp_init``)."""
        return init_netns(hz)

    def header_ok(self, buf: bytearray, l4: int, end: int) -> bool:
        """A TCP header with a sane data offset inside the packet."""
        doff = buf[l4 + 12] >> 4 if end - l4 >= 20 else 0
        return doff >= 5 and l4 + (doff << 2) <= end

    def is_new_conn(self, buf: bytearray, l4: int) -> bool:
        """``is_new_conn``: a SYN."""
        return bool(buf[l4 + 13] & TCP_SYN)

    def is_new_conn_expected(self, cp: Connection, conn_reuse_mode: int) -> bool:
        """``is_new_conn_expected``: TIME_WAIT or CLOSE, or (conn_reuse_mode
        bit 2) a FIN_WAIT connection that never saw a reply."""
        return (
            cp.state == TIME_WAIT
            or cp.state == CLOSE
            or (bool(conn_reuse_mode & 2) and cp.state == FIN_WAIT and bool(cp.flags & IP_VS_CONN_F_NOOUTPUT))
        )

    def is_reset(self, buf: bytearray, l4: int) -> bool:
        """``is_tcp_reset``."""
        return bool(buf[l4 + 13] & TCP_RST)

    def conn_schedule(self, director, pd: ProtoData, buf: bytearray, h: IPHeader, key: bytes, now: int):
        """``tcp_conn_schedule``: only a SYN (or, with sloppy_tcp, anything
        but a RST) may create a connection; no ACK test, so active FTP's
        SYN+ACK schedules too.  The rest is the shared body."""
        if not may_schedule(buf[h.l4 + 13], director.ipvs.sysctl.sloppy_tcp):
            return NF_ACCEPT, None
        return super().conn_schedule(director, pd, buf, h, key, now)

    def state_transition(self, cp: Connection, direction: int, buf: bytearray, l4: int, pd: ProtoData) -> None:
        """``tcp_state_transition``: ``set_tcp_state`` with the packet's flags."""
        set_state(cp, pd, OUTPUT if direction == IP_VS_DIR_OUTPUT else INPUT, buf[l4 + 13])

    def timeout_change(self, pd: ProtoData, flags: int) -> None:
        """``tcp_timeout_change``: the secure_tcp state table while ``flags``."""
        timeout_change(pd, bool(flags))


#: TCP's ``struct ip_vs_protocol``.
ip_vs_protocol_tcp = TCPProtocol()
