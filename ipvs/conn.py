"""Connections, the connection table and their expiry.

Mirrors ``net/netfilter/ipvs/ip_vs_conn.c`` (kernel 6.1) and ``struct
ip_vs_conn`` from ``include/net/ip_vs.h``.

Keys.  The kernel hashes a connection once by (proto, caddr, cport) and
compares the other fields on lookup.  Here a connection sits in two dicts
whose keys are packed bytes laid out exactly like the address and port
fields of the packets that will look them up, so the packet path builds a
key with one slice of the header:

* ``in_key``  = proto | caddr | vaddr | cport | vport   (client -> VIP)
* ``out_key`` = proto | daddr | caddr | dport | cport   (real server -> client)

Address length (4 or 16) makes the family part of every key.  Python
hashes bytes with its per-process random SipHash key, so crafted addresses
cannot aim at one bucket (the kernel uses jhash with a random seed for the
same reason).  Persistence templates live in a dict of their own, which
is the effect of the kernel's TEMPLATE and cport==0 checks in one table.

Expiry.  No timer per connection: a connection stores ``expires`` (in
jiffies) and is filed in a timer wheel slot.  Restarting the timer on every
packet only writes ``expires``; the wheel re-files a connection lazily when
its slot comes due, and files it earlier at once when a state change makes
its timeout shorter.  ``expire(now)`` does the kernel's ``ip_vs_conn_expire``
for everything due.

Bounded.  ``max_conns`` caps the table (the kernel is bounded by memory and
its defence modes); a full table refuses new connections, counted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from ipvs.uapi import (
    IP_VS_CONN_F_HASHED,
    IP_VS_CONN_F_INACTIVE,
    IP_VS_CONN_F_NO_CPORT,
    IP_VS_CONN_F_ONE_PACKET,
    IP_VS_CONN_F_SYNC,
    IP_VS_CONN_F_TEMPLATE,
    IP_VS_DEST_F_OVERLOAD,
    IPPROTO_UDP,
)

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.ctl import Dest, Service

#: A connection that still controls others is re-armed with this timeout.
EXPIRE_LATER_S = 60
#: Initial timeout of a new connection before its first state transition.
CONN_NEW_TIMEOUT_S = 3
#: Default bound on the number of connections (templates included).
DEFAULT_MAX_CONNS = 1 << 22

_PORT0 = b"\0\0"


def in_key(protocol: int, caddr: bytes, vaddr: bytes, cport: int, vport: int) -> bytes:
    return bytes((protocol,)) + caddr + vaddr + cport.to_bytes(2, "big") + vport.to_bytes(2, "big")


def out_key(protocol: int, daddr: bytes, caddr: bytes, dport: int, cport: int) -> bytes:
    return bytes((protocol,)) + daddr + caddr + dport.to_bytes(2, "big") + cport.to_bytes(2, "big")


@attrs.define(slots=True, eq=False, repr=False)
class Connection:
    """One entry of the connection table (``struct ip_vs_conn``).

    Addresses are packed bytes, ports ints, ``timeout`` and ``expires`` in
    jiffies.  ``control`` is the connection controlling this one (an FTP
    control connection or a persistence template) and ``n_control`` how
    many this one controls.  ``in_seq``/``out_seq`` are the application
    helper's ``[init_seq, delta, previous_delta]`` lists, None until used.
    """

    af: int
    protocol: int
    caddr: bytes
    cport: int
    vaddr: bytes
    vport: int
    daddr: bytes
    dport: int
    flags: int = 0
    fwmark: int = 0
    state: int = 0
    old_state: int = 0
    timeout: int = 0
    expires: int = 0
    wheel_at: int = -1
    dest: Dest | None = None
    control: Connection | None = None
    n_control: int = 0
    in_pkts: int = 0
    # (addr_delta << 16) | port_delta of the DNAT rewrite (packet.nat_delta).
    nat_delta: int = 0
    in_key: bytes = b""
    out_key: bytes = b""
    app: object = None
    app_data: object = None
    in_seq: list | None = None
    out_seq: list | None = None

    def __repr__(self) -> str:
        from ipvs.ctl import format_addr

        return (
            f"<Connection {self.protocol} {format_addr(self.af, self.caddr)}:{self.cport} -> "
            f"{format_addr(self.af, self.vaddr)}:{self.vport} -> "
            f"{format_addr(self.af, self.daddr)}:{self.dport} state={self.state} flags={self.flags:#x}>"
        )

    @property
    def fwd(self) -> int:
        return self.flags & 7


@attrs.define(slots=True, eq=False)
class ConnTable:
    """The connection table of one instance, with its timer wheel.

    ``hz`` converts the kernel's second-valued constants to jiffies.
    ``on_expire`` lets the instance hook app unbinding and sync.
    """

    hz: int
    max_conns: int = DEFAULT_MAX_CONNS
    tab_bits: int = 12
    in_table: dict[bytes, Connection] = attrs.field(factory=dict)
    out_table: dict[bytes, Connection] = attrs.field(factory=dict)
    templates: dict[bytes, Connection] = attrs.field(factory=dict)
    # Unhashed connections still alive (one-packet ones in flight, and
    # invalidated templates): kept so their counters unwind on expiry.
    wheel: dict[int, list[Connection]] = attrs.field(factory=dict)
    wheel_now: int = 0
    count: int = 0
    no_cport_count: int = 0
    refused: int = 0

    # ---------------------------------------------------------------- sizes

    @property
    def size(self) -> int:
        """The "size=" of the version header: 2^conn_tab_bits."""
        return 1 << self.tab_bits

    def __len__(self) -> int:
        return self.count

    def all(self) -> list[Connection]:
        """Every hashed connection and template (order is not meaningful)."""
        return list(self.in_table.values()) + list(self.templates.values())

    # -------------------------------------------------------------- hashing

    def hash(self, cp: Connection, key: bytes | None = None) -> None:
        """``ip_vs_conn_hash``: file ``cp`` under its keys.

        ``key``, when given, is the in-key already sliced from the packet
        that created the connection (it must equal what :func:`in_key` makes).
        """
        if cp.flags & IP_VS_CONN_F_TEMPLATE:
            cp.in_key = in_key(cp.protocol, cp.caddr, cp.vaddr, cp.cport, cp.vport)
            self.templates[cp.in_key] = cp
        else:
            cp.in_key = key if key is not None else in_key(cp.protocol, cp.caddr, cp.vaddr, cp.cport, cp.vport)
            cp.out_key = out_key(cp.protocol, cp.daddr, cp.caddr, cp.dport, cp.cport)
            self.in_table[cp.in_key] = cp
            self.out_table[cp.out_key] = cp
        cp.flags |= IP_VS_CONN_F_HASHED

    def unhash(self, cp: Connection) -> None:
        """``ip_vs_conn_unhash``: remove ``cp``'s keys if they still name it."""
        if not cp.flags & IP_VS_CONN_F_HASHED:
            return
        if cp.flags & IP_VS_CONN_F_TEMPLATE:
            if self.templates.get(cp.in_key) is cp:
                del self.templates[cp.in_key]
        else:
            if self.in_table.get(cp.in_key) is cp:
                del self.in_table[cp.in_key]
            if self.out_table.get(cp.out_key) is cp:
                del self.out_table[cp.out_key]
        cp.flags &= ~IP_VS_CONN_F_HASHED

    # -------------------------------------------------------------- lookups

    def in_get(self, protocol: int, saddr: bytes, daddr: bytes, sport: int, dport: int) -> Connection | None:
        """``ip_vs_conn_in_get`` with the NO_CPORT retry."""
        cp = self.in_table.get(in_key(protocol, saddr, daddr, sport, dport))
        if cp is None and self.no_cport_count:
            cp = self.in_table.get(in_key(protocol, saddr, daddr, 0, dport))
            if cp is not None and not cp.flags & IP_VS_CONN_F_NO_CPORT:
                cp = None
        return cp

    def out_get(self, protocol: int, saddr: bytes, daddr: bytes, sport: int, dport: int) -> Connection | None:
        """``ip_vs_conn_out_get`` for a reply from ``saddr:sport``."""
        return self.out_table.get(out_key(protocol, saddr, daddr, sport, dport))

    def ct_in_get(self, protocol: int, caddr: bytes, vaddr: bytes, cport: int, vport: int) -> Connection | None:
        """``ip_vs_ct_in_get``: a persistence template."""
        return self.templates.get(in_key(protocol, caddr, vaddr, cport, vport))

    # ---------------------------------------------------------- create/bind

    def new(
        self,
        af: int,
        protocol: int,
        caddr: bytes,
        cport: int,
        vaddr: bytes,
        vport: int,
        daddr: bytes,
        dport: int,
        flags: int,
        dest: Dest | None,
        fwmark: int = 0,
        in_key: bytes | None = None,
    ) -> Connection | None:
        """``ip_vs_conn_new``: create, bind to ``dest`` and hash a connection.

        Returns None when the table is full (counted in ``refused``).
        """
        if self.count >= self.max_conns:
            self.refused += 1
            return None
        cp = Connection(
            af, protocol, caddr, cport, vaddr, vport, daddr, dport,
            flags, fwmark, 0, 0, CONN_NEW_TIMEOUT_S * self.hz,
        )
        if flags & IP_VS_CONN_F_NO_CPORT:
            self.no_cport_count += 1
        if dest is not None:
            self.bind_dest(cp, dest)
        self.count += 1
        if not cp.flags & IP_VS_CONN_F_ONE_PACKET:
            self.hash(cp, in_key)
        return cp

    @staticmethod
    def bind_dest(cp: Connection, dest: Dest) -> None:
        """``ip_vs_bind_dest``: take the dest's flags and count the connection."""
        conn_flags = dest.conn_flags
        if cp.protocol != IPPROTO_UDP:
            conn_flags &= ~IP_VS_CONN_F_ONE_PACKET
        if cp.flags & IP_VS_CONN_F_SYNC and not cp.flags & IP_VS_CONN_F_TEMPLATE:
            # A synced conn keeps the INACTIVE bit it arrived with.
            conn_flags &= ~IP_VS_CONN_F_INACTIVE
        cp.flags |= conn_flags
        cp.dest = dest
        dest.refcnt += 1
        if not cp.flags & IP_VS_CONN_F_TEMPLATE:
            if cp.flags & IP_VS_CONN_F_INACTIVE:
                dest.inactconns += 1
            else:
                dest.activeconns += 1
        else:
            dest.persistconns += 1
        if dest.u_threshold and dest.activeconns + dest.inactconns >= dest.u_threshold:
            dest.flags |= IP_VS_DEST_F_OVERLOAD

    @staticmethod
    def unbind_dest(cp: Connection) -> None:
        """``ip_vs_unbind_dest``: uncount and maybe lift the dest's overload."""
        dest = cp.dest
        if dest is None:
            return
        if not cp.flags & IP_VS_CONN_F_TEMPLATE:
            if cp.flags & IP_VS_CONN_F_INACTIVE:
                dest.inactconns -= 1
            else:
                dest.activeconns -= 1
        else:
            dest.persistconns -= 1
        total = dest.activeconns + dest.inactconns
        if dest.l_threshold:
            if total < dest.l_threshold:
                dest.flags &= ~IP_VS_DEST_F_OVERLOAD
        elif dest.u_threshold:
            if total * 4 < dest.u_threshold * 3:
                dest.flags &= ~IP_VS_DEST_F_OVERLOAD
        else:
            dest.flags &= ~IP_VS_DEST_F_OVERLOAD
        dest.refcnt -= 1
        cp.dest = None

    def fill_cport(self, cp: Connection, cport: int) -> None:
        """``ip_vs_conn_fill_cport``: the client port of an expected conn is now known."""
        self.unhash(cp)
        if cp.flags & IP_VS_CONN_F_NO_CPORT:
            self.no_cport_count -= 1
            cp.flags &= ~IP_VS_CONN_F_NO_CPORT
            cp.cport = cport
        self.hash(cp)

    @staticmethod
    def control_add(cp: Connection, ctl: Connection) -> None:
        """``ip_vs_control_add``: ``ctl`` controls ``cp``."""
        cp.control = ctl
        ctl.n_control += 1

    @staticmethod
    def control_del(cp: Connection) -> None:
        ctl = cp.control
        if ctl is not None:
            ctl.n_control -= 1
            cp.control = None

    # --------------------------------------------------------------- timers

    def put(self, cp: Connection, now: int) -> None:
        """``ip_vs_conn_put``: (re)start the timer at ``now + cp.timeout``."""
        exp = now + cp.timeout
        cp.expires = exp
        if cp.wheel_at < 0 or exp < cp.wheel_at:
            self._file(cp, exp)

    def _file(self, cp: Connection, at: int) -> None:
        if at <= self.wheel_now:
            at = self.wheel_now + 1
        slot = self.wheel.get(at)
        if slot is None:
            self.wheel[at] = [cp]
        else:
            slot.append(cp)
        cp.wheel_at = at

    def expire_now(self, cp: Connection, now: int) -> None:
        """``ip_vs_conn_expire_now``: fire the timer at the next expiry run."""
        cp.timeout = 0
        cp.expires = now
        self._file(cp, now)

    def next_timer(self) -> int | None:
        """The earliest jiffy at which :meth:`expire` has work, or None."""
        return min(self.wheel) if self.wheel else None

    def due(self, now: int) -> list[Connection]:
        """Pop every connection whose slot is due by ``now``; re-file the
        ones whose timer was pushed later, return the ones to expire."""
        wheel = self.wheel
        out: list[Connection] = []
        if not wheel:
            self.wheel_now = max(self.wheel_now, now)
            return out
        start = self.wheel_now + 1
        if now - start > len(wheel):
            slots = sorted(k for k in wheel if k <= now)
        else:
            slots = [k for k in range(start, now + 1) if k in wheel]
        self.wheel_now = max(self.wheel_now, now)
        for at in slots:
            for cp in wheel.pop(at):
                if cp.wheel_at != at:
                    continue  # a stale filing: the conn is filed elsewhere
                if cp.expires > now:
                    self._file(cp, cp.expires)
                else:
                    cp.wheel_at = -1
                    out.append(cp)
        return out

    def release(self, cp: Connection) -> None:
        """Unhash and unbind a connection that is gone for good."""
        self.unhash(cp)
        self.control_del(cp)
        self.unbind_dest(cp)
        if cp.flags & IP_VS_CONN_F_NO_CPORT:
            self.no_cport_count -= 1
        self.count -= 1

    # ------------------------------------------------------ control plane

    def unbind_service(self, svc: Service) -> None:
        """Nothing to do: connections keep their dest (now in the trash) and
        expire on their own, as in the kernel."""

    def expire_dest_conns(self, dest: Dest, now: int) -> None:
        """``ip_vs_expire_nodest_conn_flush``: expire every conn of ``dest``."""
        for cp in self.all():
            if cp.dest is dest:
                self.expire_now(cp, now)

    def flush(self, now: int) -> None:
        """``ip_vs_conn_flush``: expire everything at the next run."""
        for cp in self.all():
            self.expire_now(cp, now)
