"""Protocol registry and per-instance protocol data.

Mirrors ``net/netfilter/ipvs/ip_vs_proto.c``: the table of IPVS protocols
(:data:`PROTOCOLS`, ``ip_vs_proto_get``: TCP and UDP here; SCTP, AH and
ESP come later, each a module with its :class:`~ipvs.ip_vs.IPVSProtocol`), the per-instance
``struct ip_vs_proto_data`` (declared in :mod:`ipvs.ip_vs`) with its copy
of the timeout table, and ``ip_vs_state_name``.

ICMP is not an IPVS protocol in the kernel either: ``ipvs/proto/icmp.py``
only holds helpers for ICMP errors that relate to a connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ipvs.ip_vs import IPVSProtocol, ProtoData
from ipvs.proto import tcp, udp
from ipvs.uapi import IP_VS_CONN_F_TEMPLATE, IPPROTO_IP

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.conn import Connection


#: The registered protocols by number (``ip_vs_proto_table``).
PROTOCOLS: dict[int, IPVSProtocol] = {
    pp.protocol: pp for pp in (tcp.ip_vs_protocol_tcp, udp.ip_vs_protocol_udp)
}


def proto_get(protocol: int) -> IPVSProtocol | None:
    """``ip_vs_proto_get``: the operations of ``protocol``, or None."""
    return PROTOCOLS.get(protocol)


def make_proto_data(hz: int) -> dict[int, ProtoData]:
    """Fresh per-instance protocol data (``ip_vs_protocol_net_init``)."""
    return {protocol: pp.init_netns(hz) for protocol, pp in PROTOCOLS.items()}


def state_name(cp: Connection, pd: ProtoData | None) -> str:
    """``ip_vs_state_name``: the name ``-Lc`` and ``/proc`` print."""
    if cp.flags & IP_VS_CONN_F_TEMPLATE:
        return "ASSURED" if cp.state else "NONE"
    if pd is None:
        return "NONE" if cp.protocol == IPPROTO_IP else "ERR!"
    names = pd.state_names
    return names[cp.state] if 0 <= cp.state < len(names) else "ERR!"
