"""Protocol registry and per-instance protocol data.

Mirrors ``net/netfilter/ipvs/ip_vs_proto.c``: the list of IPVS protocols
(TCP and UDP here; SCTP, AH and ESP come later), ``struct
ip_vs_proto_data`` with its per-instance copy of the timeout table, and
``ip_vs_state_name``.

ICMP is not an IPVS protocol in the kernel either: ``ipvs/proto/icmp.py``
only holds helpers for ICMP errors that relate to a connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from ipvs.uapi import IP_VS_CONN_F_TEMPLATE, IPPROTO_IP

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.conn import Connection


@attrs.define(slots=True, eq=False)
class ProtoData:
    """``struct ip_vs_proto_data``: one protocol's settings in one instance.

    ``timeout_table`` is indexed by state number and holds jiffies.
    """

    protocol: int
    name: str
    state_names: tuple[str, ...]
    timeout_table: list[int]
    hz: int
    # TCP only: the state table in use (normal or secure_tcp's).
    state_table: tuple | None = None
    appcnt: int = 0

    def timeout_seconds(self, state_name: str) -> int:
        return self.timeout_table[self.state_names.index(state_name)] // self.hz

    def set_timeout(self, state_name: str, seconds: int) -> None:
        self.timeout_table[self.state_names.index(state_name)] = seconds * self.hz

    def timeouts_seconds_for_admin(self) -> tuple[int, int]:
        """(ESTABLISHED, FIN_WAIT) seconds: what ``--timeout`` shows for TCP."""
        return (self.timeout_seconds("ESTABLISHED"), self.timeout_seconds("FIN_WAIT"))


def make_proto_data(hz: int) -> dict[int, ProtoData]:
    """Fresh per-instance protocol data (``ip_vs_protocol_net_init``)."""
    from ipvs.proto import tcp, udp

    return {p.PROTOCOL: p.init_netns(hz) for p in (tcp, udp)}


def state_name(cp: Connection, pd: ProtoData | None) -> str:
    """``ip_vs_state_name``: the name ``-Lc`` and ``/proc`` print."""
    if cp.flags & IP_VS_CONN_F_TEMPLATE:
        return "ASSURED" if cp.state else "NONE"
    if pd is None:
        return "NONE" if cp.protocol == IPPROTO_IP else "ERR!"
    names = pd.state_names
    return names[cp.state] if 0 <= cp.state < len(names) else "ERR!"
