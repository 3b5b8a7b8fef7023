"""UDP: one state, its timeout, and the NAT handlers.

Mirrors ``net/netfilter/ipvs/ip_vs_proto_udp.c``; :data:`ip_vs_protocol_udp`
is its ``struct ip_vs_protocol``.  Every UDP datagram to a service may
create a connection (``udp_conn_schedule`` is the shared body of
:meth:`ipvs.ip_vs.IPVSProtocol.conn_schedule`); a connection has the
single state "UDP" (300 s).  The NAT handlers (in :mod:`ipvs.xmit`, shared with
TCP) rewrite the port and update the checksum incrementally, except that a
datagram carrying no checksum (0) gets a full one computed, and a computed
0 is sent as 0xFFFF, as the kernel does.
"""

from __future__ import annotations

from ipvs.ip_vs import IP_VS_DIR_OUTPUT, IPVSProtocol, ProtoData, control_assure_ct
from ipvs.uapi import IPPROTO_UDP

PROTOCOL = IPPROTO_UDP
NAME = "UDP"
IP_VS_UDP_S_NORMAL = 0
STATE_NAMES = ("UDP",)
DEFAULT_TIMEOUTS_S = (5 * 60,)


def init_netns(hz: int) -> ProtoData:
    """``__udp_init``: UDP's protocol data for a new instance (its one NORMAL state and timeout)."""
    return ProtoData(PROTOCOL, NAME, STATE_NAMES, [t * hz for t in DEFAULT_TIMEOUTS_S], hz, pp=ip_vs_protocol_udp)


def state_transition(cp, pd: ProtoData, direction: int) -> None:
    """``udp_state_transition``: refresh the single state's timeout; a
    reply (``IP_VS_DIR_OUTPUT``) assures the controlling template."""
    cp.timeout = pd.timeout_table[IP_VS_UDP_S_NORMAL]
    if direction == IP_VS_DIR_OUTPUT:
        control_assure_ct(cp)


class UDPProtocol(IPVSProtocol):
    """``ip_vs_protocol_udp``: UDP's operations for the packet path."""

    protocol = IPPROTO_UDP
    name = NAME
    csum_offset = 6
    csum_zero_is_none = True
    one_packet = True
    conn_out = True

    def init_netns(self, hz: int) -> ProtoData:
        """``init_netns``: :func:`init_netns` (``__udp_init``)."""
        return init_netns(hz)

    def header_ok(self, buf: bytearray, l4: int, end: int) -> bool:
        """A whole 8-byte UDP header inside the packet."""
        return end - l4 >= 8

    def state_transition(self, cp, direction: int, buf: bytearray, l4: int, pd: ProtoData) -> None:
        """``udp_state_transition``: :func:`state_transition`."""
        state_transition(cp, pd, direction)


#: UDP's ``struct ip_vs_protocol``.
ip_vs_protocol_udp = UDPProtocol()
