"""The shared data model: what the kernel declares in ``include/net/ip_vs.h``.

Every layer of PyIPVS works on these objects, so they live below all of
them: the control plane (:mod:`ipvs.ctl`) creates services and
destinations, the schedulers (:mod:`ipvs.sched`) pick among destinations,
the connection table (:mod:`ipvs.conn`) binds connections to them, the
packet path (:mod:`ipvs.core`) returns the verdicts named here.

* :class:`Service` and :class:`Dest` (``struct ip_vs_service``, ``struct
  ip_vs_dest``), and :class:`Sysctls`, the ``sysctl_*`` fields of ``struct
  netns_ipvs`` (the instance itself, :class:`ipvs.netns.NetnsIPVS`, owns a
  connection table and protocol data and so sits above this module);
* :class:`ConnParam` (``struct ip_vs_conn_param``): what a connection or
  template lookup is made of;
* :class:`ProtoData` (``struct ip_vs_proto_data``): one protocol's
  timeouts and state table in one instance;
* :class:`IPVSError`: the errno a command returns;
* the netfilter verdicts (``include/uapi/linux/netfilter.h``), ``HZ``, the
  FTP ports the core and the control plane both test, and the address
  helpers (``ip_vs_addr_fold`` and friends).

Nothing here imports another PyIPVS module except :mod:`ipvs.uapi` (the
constants) and :mod:`ipvs.est` (``struct ip_vs_stats``, embedded in every
service and destination).
"""

from __future__ import annotations

import errno
import ipaddress
from typing import TYPE_CHECKING, ClassVar

import attrs

from ipvs.est import Stats
from ipvs.packet import Drop, IPHeader, l4_csum_ok, port_bytes
from ipvs.uapi import (
    AF_INET,
    AF_INET6,
    IP_VS_CONN_F_FWD_MASK,
    IP_VS_CONN_F_INACTIVE,
    IP_VS_CONN_F_TEMPLATE,
    IP_VS_DEST_F_AVAILABLE,
    IP_VS_SVC_F_PERSISTENT,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
)

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.netns import NetnsIPVS
    from ipvs.pe import PersistenceEngine
    from ipvs.sched import Scheduler

#: Netfilter verdicts (``NF_DROP``, ``NF_ACCEPT``, ``NF_STOLEN``): what the
#: packet path returns.  NF_STOLEN means rewritten in place: route it by its
#: IP destination and send it.
NF_DROP = 0
NF_ACCEPT = 1
NF_STOLEN = 2

#: Debian's kernel runs at HZ=250 (jiffies a second): the default of every
#: instance; /proc shows persistence timeouts in jiffies.
HZ = 250

#: Template states (``enum { IP_VS_CTPL_S_NONE, IP_VS_CTPL_S_ASSURED }``):
#: a persistence template becomes ASSURED once a connection under it is
#: established (TCP) or has seen a reply (UDP).
IP_VS_CTPL_S_NONE = 0
IP_VS_CTPL_S_ASSURED = 1

#: Packet directions (``enum { IP_VS_DIR_INPUT = 0, IP_VS_DIR_OUTPUT, ...}``):
#: client to server, and the server's replies.
IP_VS_DIR_INPUT = 0
IP_VS_DIR_OUTPUT = 1

#: ``FTPPORT`` / ``FTPDATA``: the control and active-data ports of FTP,
#: which persistence and service lookup treat specially.
FTPPORT = 21
FTPDATA = 20

#: Connection-table size bits (CONFIG_IP_VS_TAB_BITS) and its clamp.
IP_VS_CONN_TAB_BITS_DEFAULT = 12
IP_VS_CONN_TAB_BITS_MIN = 8
IP_VS_CONN_TAB_BITS_MAX = 20
#: Service hash table: 256 buckets each for (proto, addr, port) and fwmark.
IP_VS_SVC_TAB_BITS = 8
IP_VS_SVC_TAB_MASK = (1 << IP_VS_SVC_TAB_BITS) - 1

#: Protocol names as ipvsadm and /proc print them.
PROTO_NAMES = {IPPROTO_TCP: "TCP", IPPROTO_UDP: "UDP", IPPROTO_SCTP: "SCTP", 0: "IP"}


class IPVSError(Exception):
    """A control command failed; ``errno`` is what the kernel would return."""

    def __init__(self, err: int, detail: str = "") -> None:
        super().__init__(err, detail or errno.errorcode.get(err, str(err)))
        self.errno = err
        self.detail = detail



# --------------------------------------------------------------------------
# Addresses


def parse_addr(af: int, text: str) -> bytes:
    """Packed network-order bytes of an address string of family ``af``."""
    ip = ipaddress.ip_address(text)
    if (af == AF_INET) != (ip.version == 4):
        raise ValueError(f"{text} is not an address of family {af}")
    return ip.packed


def format_addr(af: int, addr: bytes) -> str:
    """The address as ipvsadm prints it with -n (IPv6 compressed)."""
    if af == AF_INET6:
        return str(ipaddress.IPv6Address(addr))
    return str(ipaddress.IPv4Address(addr))


def addr_fold(addr: bytes) -> int:
    """``ip_vs_addr_fold``-style u32: the IPv4 address, or the XOR of the
    four IPv6 words, in host order."""
    if len(addr) == 4:
        return int.from_bytes(addr, "big")
    v = 0
    for i in range(0, 16, 4):
        v ^= int.from_bytes(addr[i : i + 4], "big")
    return v


def addr_prefix(addr: bytes, netmask: int) -> bytes:
    """A persistent service's client network: the IPv4 address masked by
    ``netmask`` (a host-order mask), or the IPv6 one cut to ``netmask``
    leading bits (``ipv6_addr_prefix``), as ``ip_vs_sched_persist`` keys
    its templates."""
    if len(addr) == 4:
        return (int.from_bytes(addr, "big") & netmask).to_bytes(4, "big")
    bits = max(0, min(netmask, 128))
    keep = ((1 << bits) - 1) << (128 - bits)
    return (int.from_bytes(addr, "big") & keep).to_bytes(16, "big")


def fwmark_addr(af: int, fwmark: int) -> bytes:
    """The virtual address of a fwmark template (``union nf_inet_addr`` with
    ``.ip = htonl(fwmark)``): the mark in the first four bytes, zeros after
    them for IPv6."""
    return fwmark.to_bytes(4, "big") + (bytes(12) if af == AF_INET6 else b"")


def svc_key(protocol: int, addr: bytes, port: int) -> bytes:
    """Key of the (proto, addr, port) service table.

    The address length (4 or 16) carries the family, so the same bytes can
    be sliced straight out of a packet header on the fast path.
    """
    return bytes((protocol,)) + addr + port_bytes(port)


def svc_hashkey(protocol: int, addr: bytes, port: int) -> int:
    """The kernel's ``ip_vs_svc_hashkey`` bucket (netns pointer taken as 0)."""
    return (protocol ^ addr_fold(addr) ^ (port >> IP_VS_SVC_TAB_BITS) ^ port) & IP_VS_SVC_TAB_MASK


def fwm_hashkey(fwmark: int) -> int:
    """``ip_vs_svc_fwm_hashkey``: the service table bucket of a firewall mark."""
    return fwmark & IP_VS_SVC_TAB_MASK



# --------------------------------------------------------------------------
# Settings


def _range(lo: int, hi: int):
    def check(inst, attribute, value):
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ValueError(f"{attribute.name} must be an integer in [{lo}, {hi}]")

    return check


INT_MAX = 2**31 - 1


@attrs.define(slots=True)
class Sysctls:
    """The ``net.ipv4.vs.*`` settings of one instance, with kernel defaults.

    Only the settings that change behaviour in PyIPVS are here; the names
    are the sysctl names so ``ipvsadm``-side tooling can map them 1:1.
    ``conn_tab_bits`` is the module parameter, fixed when the instance is
    created.  Time-valued settings are in seconds.
    """

    am_droprate: int = attrs.field(default=10, validator=_range(0, INT_MAX))
    amemthresh: int = attrs.field(default=1024, validator=_range(0, INT_MAX))
    backup_only: int = attrs.field(default=0, validator=_range(0, 1))
    cache_bypass: int = attrs.field(default=0, validator=_range(0, 1))
    conn_reuse_mode: int = attrs.field(default=1, validator=_range(0, INT_MAX))
    conntrack: int = attrs.field(default=0, validator=_range(0, 1))
    drop_entry: int = attrs.field(default=0, validator=_range(0, 3))
    drop_packet: int = attrs.field(default=0, validator=_range(0, 3))
    expire_nodest_conn: int = attrs.field(default=0, validator=_range(0, 1))
    expire_quiescent_template: int = attrs.field(default=0, validator=_range(0, 1))
    ignore_tunneled: int = attrs.field(default=0, validator=_range(0, 1))
    nat_icmp_send: int = attrs.field(default=0, validator=_range(0, 1))
    pmtu_disc: int = attrs.field(default=1, validator=_range(0, 1))
    run_estimation: int = attrs.field(default=1, validator=_range(0, 1))
    schedule_icmp: int = attrs.field(default=0, validator=_range(0, 1))
    secure_tcp: int = attrs.field(default=0, validator=_range(0, 3))
    sloppy_sctp: int = attrs.field(default=0, validator=_range(0, 1))
    sloppy_tcp: int = attrs.field(default=0, validator=_range(0, 1))
    snat_reroute: int = attrs.field(default=1, validator=_range(0, 1))
    lblc_expiration: int = attrs.field(default=24 * 60 * 60, validator=_range(0, INT_MAX))
    lblcr_expiration: int = attrs.field(default=24 * 60 * 60, validator=_range(0, INT_MAX))
    conn_tab_bits: int = attrs.field(default=IP_VS_CONN_TAB_BITS_DEFAULT, validator=_range(1, 64))

    def __attrs_post_init__(self) -> None:
        # The kernel reverts an out-of-range module parameter to the default.
        if not IP_VS_CONN_TAB_BITS_MIN <= self.conn_tab_bits <= IP_VS_CONN_TAB_BITS_MAX:
            self.conn_tab_bits = IP_VS_CONN_TAB_BITS_DEFAULT

    @classmethod
    def names(cls) -> list[str]:
        """The settings' sysctl names, in declaration order."""
        return [a.name for a in attrs.fields(cls)]

    def set(self, name: str, value: int) -> None:
        """Set one setting by its sysctl name, validating it (EINVAL)."""
        if name not in self.names() or name == "conn_tab_bits":
            raise IPVSError(errno.ENOENT, f"no setting {name!r}")
        field = attrs.fields_dict(type(self))[name]
        try:
            if field.validator is not None:
                field.validator(self, field, value)
        except ValueError as e:
            raise IPVSError(errno.EINVAL, str(e)) from None
        setattr(self, name, value)



# --------------------------------------------------------------------------
# Destinations and services


@attrs.define(slots=True, eq=False)
class Dest:
    """A real server of one virtual service (``struct ip_vs_dest``)."""

    af: int
    addr: bytes
    port: int
    weight: int = 1
    conn_flags: int = IP_VS_CONN_F_INACTIVE
    u_threshold: int = 0
    l_threshold: int = 0
    flags: int = IP_VS_DEST_F_AVAILABLE
    last_weight: int = 0
    activeconns: int = 0
    inactconns: int = 0
    persistconns: int = 0
    refcnt: int = 0  # connections bound to this dest
    stats: Stats = attrs.field(factory=Stats)
    svc: Service | None = None
    # Copies of the service identity, kept while the dest sits in the trash.
    protocol: int = 0
    vaddr: bytes = b""
    vport: int = 0
    vfwmark: int = 0
    idle_start: int = 0
    tun_type: int = 0
    tun_port: int = 0
    tun_flags: int = 0
    in_rs_table: bool = False

    @property
    def fwd(self) -> int:
        """The forwarding method (``IP_VS_CONN_F_MASQ``, ...), from the connection flags."""
        return self.conn_flags & IP_VS_CONN_F_FWD_MASK

    @property
    def available(self) -> bool:
        """Whether the destination is in its service (``IP_VS_DEST_F_AVAILABLE``) rather than in the trash."""
        return bool(self.flags & IP_VS_DEST_F_AVAILABLE)

    def __repr__(self) -> str:
        return f"<Dest {format_addr(self.af, self.addr)}:{self.port} w={self.weight}>"


@attrs.define(slots=True, eq=False)
class Service:
    """A virtual service (``struct ip_vs_service``).

    ``timeout`` is the persistence timeout in jiffies and ``netmask`` the
    IPv4 mask as a host-order integer or the IPv6 prefix length, as the
    kernel stores them.  ``destinations`` is newest first.
    """

    af: int
    protocol: int
    addr: bytes
    port: int
    fwmark: int = 0
    flags: int = 0
    timeout: int = 0
    netmask: int = 0xFFFFFFFF
    destinations: list[Dest] = attrs.field(factory=list)
    stats: Stats = attrs.field(factory=Stats)
    scheduler: Scheduler | None = None
    pe_name: str = ""

    @property
    def num_dests(self) -> int:
        """How many real servers the service has."""
        return len(self.destinations)

    @property
    def persistent(self) -> bool:
        """Whether the service is persistent (``-p``)."""
        return bool(self.flags & IP_VS_SVC_F_PERSISTENT)

    @property
    def sched_name(self) -> str:
        """The scheduler's name, or ``""`` without one."""
        return self.scheduler.name if self.scheduler else ""

    def key(self) -> bytes | tuple[int, int]:
        """The key of the service tables: ``(af, fwmark)`` for a fwmark service, else protocol, address and port as
        bytes.
        """
        return (self.af, self.fwmark) if self.fwmark else svc_key(self.protocol, self.addr, self.port)

    def hash_bucket(self) -> int:
        """The bucket the kernel's service hash table puts this service in (``ip_vs_svc_hashkey``,
        ``ip_vs_svc_fwm_hashkey``), which orders ``/proc/net/ip_vs``.
        """
        if self.fwmark:
            return fwm_hashkey(self.fwmark)
        return svc_hashkey(self.protocol, self.addr, self.port)

    def __repr__(self) -> str:
        if self.fwmark:
            return f"<Service FWM {self.fwmark}>"
        name = PROTO_NAMES.get(self.protocol, str(self.protocol))
        return f"<Service {name} {format_addr(self.af, self.addr)}:{self.port} {self.sched_name}>"


@attrs.define(slots=True)
class IPHdr:
    """What a scheduler and the packet path look at in a packet (``struct ip_vs_iphdr``).

    Addresses are packed network-order bytes (4 or 16 long); ports are ints.
    ``inverse`` is set when the header came from inside an ICMP error, so
    source and destination are swapped relative to the connection.
    A slotted class, not a NamedTuple, for the reason
    :class:`ipvs.packet.IPHeader` gives (field reads are calls on PyPy).
    """

    af: int
    protocol: int
    saddr: bytes
    daddr: bytes
    sport: int
    dport: int
    inverse: bool = False


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
    state_table: tuple = ()
    appcnt: int = 0
    #: The protocol's operations (``pd->pp``): every protocol has them.
    pp: IPVSProtocol = attrs.field(kw_only=True)

    def timeout_seconds(self, state_name: str) -> int:
        """The timeout of the state named ``state_name``, in seconds."""
        return self.timeout_table[self.state_names.index(state_name)] // self.hz

    def set_timeout(self, state_name: str, seconds: int) -> None:
        """Set the timeout of the state named ``state_name`` (seconds; stored in jiffies)."""
        self.timeout_table[self.state_names.index(state_name)] = seconds * self.hz

    def timeouts_seconds_for_admin(self) -> tuple[int, int]:
        """(ESTABLISHED, FIN_WAIT) seconds: what ``--timeout`` shows for TCP."""
        return (self.timeout_seconds("ESTABLISHED"), self.timeout_seconds("FIN_WAIT"))


class IPVSProtocol:
    """``struct ip_vs_protocol``: what the packet path asks of a transport
    protocol.  One instance per protocol (:mod:`ipvs.proto.tcp`,
    :mod:`ipvs.proto.udp`), registered in :mod:`ipvs.proto`
    (``ip_vs_proto_get``); the instance's :class:`ProtoData` points back
    at it (``pd->pp``).

    The kernel's core keeps a few protocol tests of its own
    (``is_new_conn``, ``is_new_conn_expected``, the TCP reset test of
    ``nat_icmp_send``, the UDP-only one-packet and ``conn_out`` rules);
    here they are operations too, so the core has no per-protocol branch
    and a new protocol is a new module.
    """

    protocol: ClassVar[int] = 0
    name: ClassVar[str] = ""
    #: Offset of the checksum in the transport header (the NAT handlers).
    csum_offset: ClassVar[int] = 0
    #: Is a checksum of zero "no checksum" (UDP over IPv4)?
    csum_zero_is_none: ClassVar[bool] = False
    #: May a service schedule one-packet connections (``-o``: UDP only)?
    one_packet: ClassVar[bool] = False
    #: May a real server start connections (``conn_out``)?  The kernel
    #: tries it for UDP only: connection oriented protocols use ephemeral
    #: ports for outgoing connections.
    conn_out: ClassVar[bool] = False

    def init_netns(self, hz: int) -> ProtoData:  # pragma: no cover - abstract
        """``init_netns``: this protocol's data in a new instance."""
        raise NotImplementedError

    def header_ok(self, buf: bytearray, l4: int, end: int) -> bool:  # pragma: no cover - abstract
        """Is there a whole transport header at ``buf[l4:end]``?"""
        raise NotImplementedError

    def is_new_conn(self, buf: bytearray, l4: int) -> bool:
        """``is_new_conn``: may this packet start a connection anew?"""
        return False

    def is_new_conn_expected(self, cp, conn_reuse_mode: int) -> bool:
        """``is_new_conn_expected``: is ``cp`` over, so a new one may reuse its tuple?"""
        return False

    def is_reset(self, buf: bytearray, l4: int) -> bool:
        """Does the packet reset its connection (no ICMP answer for it)?"""
        return False

    def conn_schedule(self, director, pd: ProtoData, buf: bytearray, h: IPHeader, key: bytes, now: int):
        """``conn_schedule``: a packet without a connection.  Returns
        (verdict, None) when the packet is answered here (NF_ACCEPT: not
        for a service; NF_DROP), or (NF_ACCEPT, the new connection).

        This is the body ``tcp_conn_schedule`` and ``udp_conn_schedule``
        share: find the service, ``ip_vs_todrop``, ``ip_vs_schedule``,
        and ``ip_vs_leave`` when no real server is left.
        """
        svc, mark = director.service_find(self.protocol, key)
        if svc is None:
            return NF_ACCEPT, None
        if director.todrop():
            director.ipvs.drops[Drop.DEFENSE] += 1
            return NF_DROP, None
        l4 = h.l4
        sport = (buf[l4] << 8) | buf[l4 + 1]
        dport = (buf[l4 + 2] << 8) | buf[l4 + 3]
        # key = proto | saddr | daddr | sport | dport
        n = h.alen
        iph = IPHdr(h.af, self.protocol, key[1 : 1 + n],
                    svc.addr if svc.port == dport and not svc.fwmark else key[1 + n : 1 + 2 * n], sport, dport)
        cp, ignored = director.schedule(svc, iph, now, key, buf, h, mark)
        if cp is None:
            if ignored > 0:
                return NF_ACCEPT, None
            if ignored < 0:
                # -2: PyIPVS's split of the kernel's -1 (NF_DROP, no ICMP),
                # so a packet the persistence engine refused is counted apart.
                director.ipvs.drops[Drop.NO_PE_DATA if ignored == -2 else Drop.TABLE_FULL] += 1
                return NF_DROP, None
            return director.leave(svc, buf, h, iph), None
        return NF_ACCEPT, cp

    def state_transition(self, cp, direction: int, buf: bytearray, l4: int, pd: ProtoData) -> None:  # pragma: no cover
        """``state_transition``: the packet moves ``cp``'s state and timeout."""
        raise NotImplementedError

    def csum_check(self, buf: bytearray, h: IPHeader, partial: bool) -> bool:
        """``csum_check``: is the transport checksum right?  A partial
        (offloaded, not yet computed) checksum has nothing to verify yet."""
        return partial or l4_csum_ok(buf, h)

    def timeout_change(self, pd: ProtoData, flags: int) -> None:
        """``timeout_change``: the defence level changed (secure_tcp)."""


def control_assure_ct(cp) -> None:
    """``ip_vs_control_assure_ct``: the persistence template controlling
    ``cp`` becomes ASSURED (TCP: established; UDP: a reply seen)."""
    ct = cp.control
    if ct is not None and ct.flags & IP_VS_CONN_F_TEMPLATE:
        ct.state = IP_VS_CTPL_S_ASSURED


@attrs.define(slots=True)
class ConnParam:
    """What a connection or template lookup is made of (``struct ip_vs_conn_param``).

    Addresses are packed bytes (4 or 16 long; for a fwmark template
    ``protocol`` is ``IPPROTO_IP`` and ``vaddr`` holds the mark), ports are
    ints.  ``pe`` is the service's persistence engine and ``pe_data`` what
    its ``fill_param`` found (None: nothing, the plain template lookup
    applies).  ``ipvs`` is the instance (``p->ipvs``): a new connection is
    bound to its application helper there (None: no helpers, as in tests
    of the table alone).
    """

    af: int
    protocol: int
    caddr: bytes
    cport: int
    vaddr: bytes
    vport: int
    pe: PersistenceEngine | None = None
    pe_data: bytes | None = None
    ipvs: NetnsIPVS | None = None
