"""Protocol registry and per-instance protocol data.

Mirrors ``net/netfilter/ipvs/ip_vs_proto.c``: the list of IPVS protocols
(TCP and UDP here; SCTP, AH and ESP come later), the per-instance
``struct ip_vs_proto_data`` (declared in :mod:`ipvs.ip_vs`) with its copy
of the timeout table, and ``ip_vs_state_name``.

ICMP is not an IPVS protocol in the kernel either: ``ipvs/proto/icmp.py``
only holds helpers for ICMP errors that relate to a connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ipvs.ip_vs import ProtoData
from ipvs.proto import tcp, udp
from ipvs.uapi import IP_VS_CONN_F_TEMPLATE, IPPROTO_IP

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.conn import Connection


def make_proto_data(hz: int) -> dict[int, ProtoData]:
    """Fresh per-instance protocol data (``ip_vs_protocol_net_init``)."""
    return {p.PROTOCOL: p.init_netns(hz) for p in (tcp, udp)}


def state_name(cp: Connection, pd: ProtoData | None) -> str:
    """``ip_vs_state_name``: the name ``-Lc`` and ``/proc`` print."""
    if cp.flags & IP_VS_CONN_F_TEMPLATE:
        return "ASSURED" if cp.state else "NONE"
    if pd is None:
        return "NONE" if cp.protocol == IPPROTO_IP else "ERR!"
    names = pd.state_names
    return names[cp.state] if 0 <= cp.state < len(names) else "ERR!"
