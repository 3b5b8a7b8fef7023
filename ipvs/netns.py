"""One IPVS instance: everything the kernel keeps per network namespace.

Mirrors ``struct netns_ipvs`` from ``include/net/ip_vs.h``.  A PyIPVS
director owns exactly one :class:`NetnsIPVS`; the control plane
(``ipvs.ctl``) and the packet path (``ipvs.core``) both work on it.

``now`` is the latest jiffies value the instance has been given; the
instance never reads a clock.
"""

from __future__ import annotations

import collections

import attrs

from ipvs.conn import ConnTable
from ipvs.est import Estimator, Stats
from ipvs.fwmark import MarkTable
from ipvs.ip_vs import HZ, ProtoData, Sysctls
from ipvs.proto import make_proto_data


@attrs.define(slots=True, eq=False)
class NetnsIPVS:
    """Per-instance state: settings, services, connections, counters."""

    hz: int = HZ
    sysctl: Sysctls = None  # type: ignore[assignment]  # (set in __attrs_post_init__)
    svc_table: dict = attrs.field(factory=dict)  # svc_key bytes -> Service
    fwm_table: dict = attrs.field(factory=dict)  # (af, fwmark) -> Service
    svc_order: dict = attrs.field(factory=dict)  # Service -> hash sequence number
    svc_seq: int = 0
    ftpsvc_counter: int = 0
    nullsvc_counter: int = 0
    #: Services whose persistence engine has ``conn_out``: while zero, a
    #: real server's packet without a connection costs one test.
    conn_out_counter: int = 0
    #: MASQ dests by (af, addr, port), the most recently hashed first: the
    #: kernel's ``rs_table`` chains (``ip_vs_find_real_service``).
    rs_table: dict = attrs.field(factory=dict)
    dest_trash: dict = attrs.field(factory=dict)
    dest_trash_timer: int | None = None  # jiffies of the next trash run
    conn_tab: ConnTable = None  # type: ignore[assignment]
    proto_data: dict[int, ProtoData] = attrs.field(factory=dict)
    tot_stats: Stats = attrs.field(factory=Stats)
    est: Estimator = None  # type: ignore[assignment]
    apps: dict = attrs.field(factory=dict)  # (protocol, port) -> app incarnation
    #: Firewall-mark rules for fwmark services (what iptables MARK does for the kernel).
    marks: MarkTable = attrs.field(factory=MarkTable)
    enable: bool = False
    #: Scheduler modules loaded (the kernel's ``request_module("ip_vs_%s")``
    #: on a scheduler's first use, never unloaded by IPVS): a module's own
    #: sysctls (``lblc_expiration``, ``lblcr_expiration``) exist only once
    #: it is (see :func:`ipvs.procfs.sysctl_values`).
    sched_modules: set = attrs.field(factory=set)
    #: The byte of the netns address the kernel mixes into the service hash
    #: (``(size_t)ipvs >> 8``); it only decides the /proc and --nosort order.
    svc_hash_salt: int = 0
    now: int = 0
    #: Drops and not-handled packets by reason (ipvs.packet.Drop).
    drops: collections.Counter = attrs.field(factory=collections.Counter)
    #: Frames the core generated (ICMP errors): (bytearray) routed by daddr.
    outbox: list = attrs.field(factory=list)
    #: The defense state of ``update_defense_level`` (:mod:`ipvs.ctl`):
    #: memory left to PyIPVS in pages (set by the daemon from its budget;
    #: None: no budget known, never short), whether ``ip_vs_random_dropentry``
    #: runs, ``ip_vs_todrop``'s rate and countdown, and the last secure_tcp.
    availmem: int | None = None
    dropentry: bool = False
    drop_rate: int = 0
    drop_counter: int = 0
    old_secure_tcp: int = 0
    #: The jiffy of the next defense_work_handler run (every second).
    defense_at: int = 0
    #: The IDs of the tunnels' outer headers (:func:`ipvs.xmit.ip_ident`):
    #: (source, destination, protocol) -> the next ID.
    ip_idents: dict = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if self.sysctl is None:
            self.sysctl = Sysctls()
        if self.conn_tab is None:
            self.conn_tab = ConnTable(self.hz, tab_bits=self.sysctl.conn_tab_bits)
        if not self.proto_data:
            self.proto_data = make_proto_data(self.hz)
        if self.est is None:
            self.est = Estimator(self.hz)
            self.est.start(self.tot_stats)

    def proto_data_get(self, protocol: int) -> ProtoData | None:
        """``ip_vs_proto_data_get``."""
        return self.proto_data.get(protocol)
