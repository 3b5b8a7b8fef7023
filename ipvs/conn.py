"""Connections, the connection table and their expiry.

Mirrors ``net/netfilter/ipvs/ip_vs_conn.c`` (kernel 6.1) and ``struct
ip_vs_conn`` from ``include/net/ip_vs.h``.

Keys.  As in the kernel, a connection is hashed once, by its client side
(``ip_vs_conn_hashkey_conn``: proto, caddr, cport), in one table (a dict,
:attr:`ConnTable.table`), and a lookup compares the other fields: the in
lookup (``ip_vs_conn_in_get``, client -> VIP) hashes the packet's source,
the out lookup (``ip_vs_conn_out_get``, real server -> client) the
reply's destination.  Keys are packed bytes laid out like the packet
fields they come from; the packet path slices one key per packet,

* ``in_key`` = proto | caddr | vaddr | cport | vport   (client -> VIP),

and the connection keeps its own ``in_key`` (which holds five of the
struct's address fields, see :class:`Connection`), so the in lookup's
comparison is one bytes comparison; the table's key is the in key's
client half (:func:`hashkey`).  A reply's key is laid out the same way
(proto | saddr | daddr | sport | dport, see :func:`out_key`); it matches
a NAT connection whose ``daddr:dport`` is the reply's source, and a DR or
TUN connection whose ``vaddr:vport`` is (its real server answers from the
VIP itself, and ``ip_vs_conn_out_get`` (5.10+, "inspect reply packets from
DR/TUN real servers") finds it by that source when the director happens
to see the reply).

Address length (4 or 16) makes the family part of every key.  Python
hashes bytes with its per-process random SipHash key, so crafted addresses
cannot aim at one bucket (the kernel uses jhash with a random seed for the
same reason).  Persistence templates live in a dict of their own, which
is the effect of the kernel's TEMPLATE and cport==0 checks in one table.

Differences, and why.  Until December 2026 a connection sat in two dicts,
under its in key and under an out key (proto | daddr | caddr | dport |
cport) that it also kept, so both lookups were one exact dict hit.  The
second entry cost a new connection more than all the rest of the table
work: on PyPy, ``bench/core.py``'s new connections went from 0.63M/s to
1.1M/s when the out insert was simply left out (an experiment: replies
then went unmatched), and a connection held four objects for its keys
(two bytes objects and their strings).  Hashed once, as the kernel does,
a connection costs one dict entry, its in key and the table's shorter
client key; ``daddr`` is the real server's address object (shared with
the dest) and ``dport`` an int, real fields again as in ``struct
ip_vs_conn``.  The lookups compare one or two fields more per packet.
Measured on PyPy 7.3.11, 7 interleaved runs each (medians, min-max; a
shared 2-core machine, load 3.5): new connections 688k/s (654-781k) ->
1088k/s (1042-1139k), established 5.73M (5.57-5.95) -> 6.21M (6.03-6.31)
pkt/s; at 1M connections 329 -> 293 bytes per connection (3 runs).

Expiry.  No timer per connection: a connection stores ``expires`` (in
jiffies) and is filed in a timer wheel slot.  Restarting the timer on every
packet only writes ``expires``; the wheel re-files a connection lazily when
its slot comes due, and files it earlier at once when a state change makes
its timeout shorter.  :meth:`ConnTable.expire` runs the kernel's
``ip_vs_conn_expire`` (:meth:`ConnTable.conn_expire`) for everything due;
the table's ``on_expire`` hook lets the director release what a
connection holds outside the table (its application helper,
``ip_vs_unbind_app``) before it goes.

Bounded.  ``max_conns`` caps the table (the kernel is bounded by memory and
its defence modes); a full table refuses new connections, counted.  When
``drop_entry`` is on (any level), a full table first makes room as memory
running out would: :meth:`ConnTable.random_dropentry` at once, not at the
next second (see :meth:`ConnTable.make_room`).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from ipvs import app
from ipvs.ip_vs import ConnParam, format_addr
from ipvs.packet import nat_delta, port_bytes
from ipvs.proto import PROTOCOLS
from ipvs.proto import tcp as _tcp
from ipvs.uapi import (
    IP_VS_CONN_F_FWD_MASK,
    IP_VS_CONN_F_HASHED,
    IP_VS_CONN_F_INACTIVE,
    IP_VS_CONN_F_MASQ,
    IP_VS_CONN_F_NO_CPORT,
    IP_VS_CONN_F_ONE_PACKET,
    IP_VS_CONN_F_SYNC,
    IP_VS_CONN_F_TEMPLATE,
    IP_VS_DEST_F_OVERLOAD,
    IPPROTO_TCP,
)

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.ip_vs import Dest, Service
    from ipvs.netns import NetnsIPVS
    from ipvs.pe import PersistenceEngine

#: A connection that still controls others is re-armed with this timeout.
EXPIRE_LATER_S = 60
#: Initial timeout of a new connection before its first state transition.
CONN_NEW_TIMEOUT_S = 3
#: Default bound on the number of connections (templates included).
DEFAULT_MAX_CONNS = 1 << 22

_PORT0 = b"\0\0"


def in_key(protocol: int, caddr: bytes, vaddr: bytes, cport: int, vport: int) -> bytes:
    """The key of the connection table's in lookup (``ip_vs_conn_in_get``): protocol, client address, virtual address,
    client port, virtual port, as bytes.
    """
    return bytes((protocol,)) + caddr + vaddr + port_bytes(cport) + port_bytes(vport)


def hashkey(key: bytes) -> bytes:
    """``ip_vs_conn_hashkey_conn``: the key of :attr:`ConnTable.table` for
    in key ``key`` (a connection's own, or a packet's), proto | caddr |
    cport, its client half."""
    return key[: 1 + ((len(key) - 5) >> 1)] + key[-4:-2]


def out_key(protocol: int, daddr: bytes, caddr: bytes, dport: int, cport: int) -> bytes:
    """The key of the out lookup (``ip_vs_conn_out_get``), for replies: protocol, real server's address, client
    address, real server's port, client port, as bytes (a reply's proto | saddr | daddr | sport | dport).
    """
    return bytes((protocol,)) + daddr + caddr + port_bytes(dport) + port_bytes(cport)


def out_lookup_key(cp: Connection) -> bytes:
    """The out key of the replies that belong to ``cp`` (:func:`out_matches`
    as one key): from ``daddr:dport`` for NAT, from ``vaddr:vport`` for the
    other methods."""
    if cp.flags & IP_VS_CONN_F_FWD_MASK == IP_VS_CONN_F_MASQ:
        return out_key(cp.protocol, cp.daddr, cp.caddr, cp.dport, cp.cport)
    k = cp.in_key
    n = (len(k) - 5) >> 1
    return k[:1] + k[1 + n : 1 + 2 * n] + k[1 : 1 + n] + k[-2:] + k[-4:-2]


def out_matches(cp: Connection, key: bytes) -> bool:
    """Whether the reply of out key ``key`` (whose client half matched
    ``cp``'s) belongs to ``cp``: it comes from the real server's
    ``daddr:dport`` for NAT, from ``vaddr:vport`` for the other methods
    (``ip_vs_conn_out_get``'s comparisons)."""
    n = (len(key) - 5) >> 1
    if cp.flags & IP_VS_CONN_F_FWD_MASK == IP_VS_CONN_F_MASQ:
        return cp.dport == (key[-4] << 8) | key[-3] and cp.daddr == key[1 : 1 + n]
    k = cp.in_key
    return k[-2:] == key[-4:-2] and k[1 + n : 1 + 2 * n] == key[1 : 1 + n]


@attrs.define(slots=True, eq=False)
class ConnExt:
    """The fields of a connection that most connections never use.

    Kept out of :class:`Connection` so a plain connection stays small.
    """

    fwmark: int = 0
    control: Connection | None = None
    n_control: int = 0
    app: object = None
    app_data: object = None
    in_seq: list | None = None
    out_seq: list | None = None
    old_state: int = 0


@attrs.define(slots=True, eq=False)
class PEExt(ConnExt):
    """The :class:`ConnExt` of a persistence engine's template (:mod:`ipvs.pe`):
    the engine and its key.  A subclass, so other connections do not pay
    for the two fields."""

    pe: PersistenceEngine | None = None
    pe_data: bytes | None = None


def _ext_field(name: str, doc: str) -> property:
    def get(self):
        ext = self.ext
        return getattr(ext, name) if ext is not None else _EXT_DEFAULTS[name]

    def set_(self, value):
        ext = self.ext
        if ext is None:
            if value == _EXT_DEFAULTS[name]:
                return
            ext = self.ext = ConnExt()
        setattr(ext, name, value)

    return property(get, set_, doc=doc)


_EXT_DEFAULTS = {a.name: a.default for a in attrs.fields(ConnExt)}


def _pe_field(name: str, doc: str) -> property:
    def get(self):
        return getattr(self.ext, name, None)

    def set_(self, value):
        ext = self.ext
        if not isinstance(ext, PEExt):
            if value is None:
                return
            new = PEExt()
            if ext is not None:
                for a in attrs.fields(ConnExt):
                    setattr(new, a.name, getattr(ext, a.name))
            ext = self.ext = new
        setattr(ext, name, value)

    return property(get, set_, doc=doc)


@attrs.define(slots=True, eq=False, repr=False, init=False)
class Connection:
    """One entry of the connection table (``struct ip_vs_conn``).

    The client and virtual address fields of the kernel's struct (``caddr
    cport vaddr vport protocol af``) are properties read out of the in key,
    which holds exactly those bytes: storing them twice would double the
    memory of the table (a design goal is a few hundred bytes per
    connection).  ``daddr`` (shared with the dest's ``addr`` where the
    connection comes from one) and ``dport`` are fields of their own.
    Addresses are packed bytes, ports ints, ``timeout`` and
    ``expires`` in jiffies.  ``control`` is the connection controlling this
    one (an FTP control connection or a persistence template) and
    ``n_control`` how many this one controls; ``in_seq``/``out_seq`` are the
    application helper's ``[init_seq, delta, previous_delta]``.  Those
    rarely used fields live in :class:`ConnExt`, created on first write.

    Change ``cport``/``vport`` only while the connection is not hashed
    (the in key is rebuilt).

    On PyPy an instance keeps its object fields inline (up to five; a
    sixth would add an array) and its int fields unboxed in one array.
    """

    in_key: bytes
    daddr: bytes
    dport: int
    flags: int
    state: int
    timeout: int
    expires: int
    wheel_at: int
    dest: Dest | None
    # (addr_delta << 16) | port_delta of the DNAT rewrite (packet.nat_delta).
    nat_delta: int
    # Packets from the client side (ip_vs_in counts them; todrop_entry reads them).
    in_pkts: int
    ext: ConnExt | None

    def __init__(
        self, af: int, protocol: int, caddr: bytes, cport: int, vaddr: bytes, vport: int,
        daddr: bytes, dport: int, flags: int = 0, fwmark: int = 0, state: int = 0,
        old_state: int = 0, timeout: int = 0, key: bytes | None = None,
    ) -> None:
        if key is None:
            key = in_key(protocol, caddr, vaddr, cport, vport)
        self.in_key = key
        self.daddr = daddr
        self.dport = dport
        self.flags = flags
        self.state = state
        self.timeout = timeout
        self.expires = 0
        self.wheel_at = -1
        self.dest = None
        self.nat_delta = 0
        self.in_pkts = 0
        self.ext = None
        if fwmark or old_state:
            self.ext = ConnExt(fwmark=fwmark, old_state=old_state)

    # Address fields, read from the keys.
    @property
    def af(self) -> int:
        """The address family, from the length of the in key (AF_INET or AF_INET6)."""
        return 2 if len(self.in_key) == 13 else 10

    @property
    def protocol(self) -> int:
        """The IP protocol number (the first byte of both keys)."""
        return self.in_key[0]

    @property
    def alen(self) -> int:
        """The length of one address in the keys: 4 or 16."""
        return (len(self.in_key) - 5) >> 1

    @property
    def caddr(self) -> bytes:
        """The client's address."""
        return self.in_key[1 : 1 + self.alen]

    @property
    def vaddr(self) -> bytes:
        """The virtual address (the service's)."""
        n = self.alen
        return self.in_key[1 + n : 1 + 2 * n]

    @property
    def daf(self) -> int:
        """The real server's address family (``cp->daf``), from the length
        of ``daddr``: the connection's own but for a tunnel to the other
        family."""
        return 10 if len(self.daddr) == 16 else 2

    @property
    def cport(self) -> int:
        """The client's port; setting it re-keys the connection."""
        k = self.in_key
        return (k[-4] << 8) | k[-3]

    @cport.setter
    def cport(self, value: int) -> None:
        self._rekey(cport=value)

    @property
    def vport(self) -> int:
        """The virtual port; setting it re-keys the connection."""
        k = self.in_key
        return (k[-2] << 8) | k[-1]

    @vport.setter
    def vport(self, value: int) -> None:
        self._rekey(vport=value)

    def _rekey(self, cport: int | None = None, vport: int | None = None) -> None:
        c = self.cport if cport is None else cport
        v = self.vport if vport is None else vport
        self.in_key = in_key(self.protocol, self.caddr, self.vaddr, c, v)

    fwmark = _ext_field("fwmark", "The firewall mark of the service (fwmark services).")
    control = _ext_field("control", "The connection controlling this one.")
    n_control = _ext_field("n_control", "How many connections this one controls.")
    app = _ext_field("app", "The bound application helper incarnation.")
    app_data = _ext_field("app_data", "The application helper's per-connection state.")
    in_seq = _ext_field("in_seq", "[init_seq, delta, previous_delta] of the client's direction.")
    out_seq = _ext_field("out_seq", "[init_seq, delta, previous_delta] of the server's direction.")
    old_state = _ext_field("old_state", "The state before the last change (for sync).")
    pe = _pe_field("pe", "The persistence engine of a template (:mod:`ipvs.pe`), or None.")
    pe_data = _pe_field("pe_data", "The engine's key of a template (SIP: the Call-ID), or None.")

    def __repr__(self) -> str:
        return (
            f"<Connection {self.protocol} {format_addr(self.af, self.caddr)}:{self.cport} -> "
            f"{format_addr(self.af, self.vaddr)}:{self.vport} -> "
            f"{format_addr(self.daf, self.daddr)}:{self.dport} state={self.state} flags={self.flags:#x}>"
        )

    @property
    def fwd(self) -> int:
        """The forwarding method (``IP_VS_CONN_F_MASQ``, ...), from the flags."""
        return self.flags & IP_VS_CONN_F_FWD_MASK


@attrs.define(slots=True, eq=False)
class ConnTable:
    """The connection table of one instance, with its timer wheel.

    ``hz`` converts the kernel's second-valued constants to jiffies.
    ``on_expire(cp)``, when set, is called for each connection
    :meth:`conn_expire` frees, before it is unhashed (the director unbinds
    its application helper there, and traces).
    """

    hz: int
    max_conns: int = DEFAULT_MAX_CONNS
    tab_bits: int = 12
    # ip_vs_conn_tab: every connection but templates, by :func:`hashkey`.
    table: dict[bytes, Connection] = attrs.field(factory=dict)
    # Keyed by in-key, or by a tuple for a persistence engine's template (:meth:`_tmpl_key`).
    templates: dict[bytes | tuple, Connection] = attrs.field(factory=dict)
    # Unhashed connections still alive (one-packet ones in flight, and
    # invalidated templates): kept so their counters unwind on expiry.
    wheel: dict[int, list[Connection]] = attrs.field(factory=dict)
    # The wheel's slot times as a heap: the next timer in O(1), due slots in order.
    slot_times: list[int] = attrs.field(factory=list)
    wheel_now: int = 0
    count: int = 0
    no_cport_count: int = 0
    refused: int = 0
    # ip_vs_random_dropentry: entries dropped, and todrop_entry's countdowns.
    dropped: int = 0
    todrop_counter: list = attrs.field(factory=lambda: [0] * 9)
    # make_room: the passes run at the cap, and the jiffy before which none runs again.
    room_passes: int = 0
    room_at: int = 0
    # NAT checksum deltas by (vaddr, daddr, vport, dport): one int object
    # shared by every connection with the same rewrite.
    deltas: dict = attrs.field(factory=dict)
    # Older templates whose key a newer one took: key -> [templates], oldest first.
    shadowed: dict = attrs.field(factory=dict)
    # Older connections whose client key a newer one took: client key ->
    # {conn: the out key it is filed under}, oldest first; and the same
    # connections by their in key and by that out key, [conns] oldest first.
    older: dict = attrs.field(factory=dict)
    older_in: dict = attrs.field(factory=dict)
    older_out: dict = attrs.field(factory=dict)
    on_expire: Callable[[Connection], None] | None = None

    # ---------------------------------------------------------------- sizes

    @property
    def size(self) -> int:
        """The "size=" of the version header: 2^conn_tab_bits."""
        return 1 << self.tab_bits

    def __len__(self) -> int:
        return self.count

    def all(self) -> list[Connection]:
        """Every hashed connection and template (order is not meaningful)."""
        out = list(self.table.values()) + list(self.templates.values())
        for older in self.older.values():
            out.extend(older)
        for older in self.shadowed.values():
            out.extend(older)
        return out

    # -------------------------------------------------------------- hashing
    #
    # A key names one connection in a dict, but the kernel's hash chains
    # hold every connection of the same client address and port (to
    # other services, or through other real servers), and can hold two
    # entries with the same addresses: a SYN that reuses a TIME_WAIT
    # entry's tuple makes a new connection while the old one still waits
    # for its timer, and invalidated templates all carry vport 0xFFFF.
    # The kernel inserts at the head, so lookups find the newest; the
    # older ones live on until they expire.  Here the older ones wait
    # aside (``older``, ``shadowed``) and move back into the dict when the
    # newer one goes.
    #
    # The kernel walks its chain and compares.  Here a lookup that misses
    # the newest connection of a client key finds the older ones by their
    # own in key or out key (``older_in``, ``older_out``): one client
    # address and port may open a connection to every port of a port-0 or
    # fwmark service, and a walk of tens of thousands of them on every
    # packet would stall the data path.  (Templates are few per key: their
    # walk stays.)

    def _put_template(self, key: bytes | tuple, cp: Connection) -> None:
        table = self.templates
        old = table.get(key)
        if old is not None and old is not cp:
            self.shadowed.setdefault(key, []).append(old)
        table[key] = cp

    def _drop_template(self, key: bytes | tuple, cp: Connection) -> None:
        table = self.templates
        older = self.shadowed.get(key)
        if table.get(key) is cp:
            if older:
                table[key] = older.pop()
            else:
                del table[key]
        elif older and cp in older:
            older.remove(cp)
        if older is not None and not older:
            del self.shadowed[key]

    @staticmethod
    def _tmpl_key(cp: Connection) -> bytes | tuple:
        """A template's key: its in-key, or for a persistence engine's
        template (engine name, protocol|caddr, the engine's ``hashkey_raw``),
        the tuple :meth:`pe_ct_in_get` looks up (``ip_vs_conn_hashkey_conn``)."""
        ext = cp.ext
        if type(ext) is not PEExt or ext.pe is None or ext.pe_data is None or ext.pe.ct_match is None:
            return cp.in_key
        pe = ext.pe
        p = ConnParam(cp.af, cp.protocol, cp.caddr, cp.cport, b"", 0, pe, ext.pe_data)
        return (pe.name, cp.in_key[: 1 + cp.alen], pe.hashkey_raw(p))

    def _set_aside(self, ck: bytes, cp: Connection) -> None:
        """File ``cp`` among the older connections of client key ``ck``."""
        okey = out_lookup_key(cp)
        self.older.setdefault(ck, {})[cp] = okey
        self.older_in.setdefault(cp.in_key, []).append(cp)
        self.older_out.setdefault(okey, []).append(cp)

    def _take_back(self, ck: bytes, cp: Connection) -> None:
        """Remove ``cp`` from the older connections of client key ``ck``."""
        aside = self.older[ck]
        # (The out key it was filed under: a method or real server that
        # changed meanwhile must not lose it.)
        okey = aside.pop(cp)
        if not aside:
            del self.older[ck]
        for index, key in ((self.older_in, cp.in_key), (self.older_out, okey)):
            same = index[key]
            same.remove(cp)  # (a list of connections with one key: a reused tuple's few)
            if not same:
                del index[key]

    def hash(self, cp: Connection) -> None:
        """``ip_vs_conn_hash``: file ``cp`` under its keys (at the head)."""
        if cp.flags & IP_VS_CONN_F_TEMPLATE:
            self._put_template(self._tmpl_key(cp), cp)
        else:
            ck = hashkey(cp.in_key)
            old = self.table.get(ck)
            if old is not None and old is not cp:
                self._set_aside(ck, old)
            self.table[ck] = cp
        cp.flags |= IP_VS_CONN_F_HASHED

    def unhash(self, cp: Connection) -> None:
        """``ip_vs_conn_unhash``: remove ``cp``'s keys."""
        if not cp.flags & IP_VS_CONN_F_HASHED:
            return
        if cp.flags & IP_VS_CONN_F_TEMPLATE:
            self._drop_template(self._tmpl_key(cp), cp)
        else:
            ck = hashkey(cp.in_key)
            aside = self.older.get(ck)
            if self.table.get(ck) is cp:
                if aside:
                    newest = next(reversed(aside))
                    self._take_back(ck, newest)
                    self.table[ck] = newest
                else:
                    del self.table[ck]
            elif aside and cp in aside:
                self._take_back(ck, cp)
        cp.flags &= ~IP_VS_CONN_F_HASHED

    # -------------------------------------------------------------- lookups

    def in_find(self, key: bytes) -> Connection | None:
        """``ip_vs_conn_in_get`` by the in key of a packet (:func:`in_key`):
        the newest connection whose own in key it is."""
        # hashkey(key), written out: the call costs the established path
        # about 6% on PyPy (bench/core.py, 3 x 5 interleaved runs).
        cp = self.table.get(key[: 1 + ((len(key) - 5) >> 1)] + key[-4:-2])
        if cp is None or cp.in_key == key:
            return cp
        same = self.older_in.get(key)
        return same[-1] if same else None

    def out_find(self, key: bytes) -> Connection | None:
        """``ip_vs_conn_out_get`` by the out key of a reply (:func:`out_key`):
        the newest connection of its client address and port that the
        reply comes from (:func:`out_matches`)."""
        n = (len(key) - 5) >> 1
        ck = key[:1] + key[1 + n : 1 + 2 * n] + key[-2:]
        cp = self.table.get(ck)
        if cp is None or out_matches(cp, key):
            return cp
        same = self.older_out.get(key)
        return same[-1] if same else None

    def in_get(self, protocol: int, saddr: bytes, daddr: bytes, sport: int, dport: int) -> Connection | None:
        """``ip_vs_conn_in_get`` with the NO_CPORT retry."""
        return self.in_get_key(in_key(protocol, saddr, daddr, sport, dport))

    def in_get_key(self, key: bytes) -> Connection | None:
        """:meth:`in_get` by a packet's in key (:func:`in_key`): when no
        connection has it, the one expected with client port 0 (an FTP
        data connection whose client port is not known yet), as
        ``ip_vs_conn_in_get`` retries with ``IP_VS_CONN_F_NO_CPORT``."""
        cp = self.in_find(key)
        if cp is None and self.no_cport_count:
            cp = self.in_find(key[:-4] + b"\0\0" + key[-2:])
            if cp is not None and not cp.flags & IP_VS_CONN_F_NO_CPORT:
                cp = None
        return cp

    def out_get(self, protocol: int, saddr: bytes, daddr: bytes, sport: int, dport: int) -> Connection | None:
        """``ip_vs_conn_out_get`` for a reply from ``saddr:sport``."""
        return self.out_find(out_key(protocol, saddr, daddr, sport, dport))

    def ct_in_get(self, protocol: int, caddr: bytes, vaddr: bytes, cport: int, vport: int) -> Connection | None:
        """``ip_vs_ct_in_get``: a persistence template."""
        return self.templates.get(in_key(protocol, caddr, vaddr, cport, vport))

    def pe_ct_in_get(self, p: ConnParam) -> Connection | None:
        """``ip_vs_ct_in_get`` for a persistence engine's lookup (``p.pe_data``
        set, ``p.pe.ct_match`` present): the newest template of the same
        engine that ``ct_match`` accepts.  Older ones under the same key
        (invalidated templates) are walked as the kernel walks its chain."""
        pe = p.pe
        # Both set, as the caller promises (a check on new connections
        # only, never on the established-packet path).
        assert pe is not None and pe.ct_match is not None
        ct_match = pe.ct_match
        key = (pe.name, bytes((p.protocol,)) + p.caddr, pe.hashkey_raw(p))
        cp = self.templates.get(key)
        if cp is None:
            return None
        if cp.pe is pe and ct_match(p, cp):
            return cp
        for older in reversed(self.shadowed.get(key, ())):
            if older.pe is pe and ct_match(p, older):
                return older
        return None

    # ---------------------------------------------------------- create/bind

    def new(
        self, p: ConnParam, daddr: bytes, dport: int, flags: int, dest: Dest | None, fwmark: int = 0,
        key: bytes | None = None,
    ) -> Connection | None:
        """``ip_vs_conn_new``: create, bind to ``dest`` and hash a connection
        from client/virtual side ``p`` to the real side ``daddr:dport``.

        ``key`` may pass the in-key already sliced from the packet.  A
        template keeps the persistence engine ``p.pe`` and its ``p.pe_data``
        (other connections never carry them, as in the kernel); any other
        connection is bound to the application helper of its virtual port
        in ``p.ipvs`` (``ip_vs_bind_app``).  Returns None when the table is
        full (counted in ``refused``).
        """
        if self.count >= self.max_conns and not self.make_room(p.ipvs):
            self.refused += 1
            return None
        vaddr, vport = p.vaddr, p.vport
        # (All positional: a keyword argument to a class call costs a dict.)
        cp = Connection(
            p.af, p.protocol, p.caddr, p.cport, vaddr, vport, daddr, dport,
            flags, fwmark, 0, 0, CONN_NEW_TIMEOUT_S * self.hz, key,
        )
        if flags & IP_VS_CONN_F_NO_CPORT:
            self.no_cport_count += 1
        if p.pe is not None and flags & IP_VS_CONN_F_TEMPLATE:
            cp.pe = p.pe
            cp.pe_data = p.pe_data
        if not flags & IP_VS_CONN_F_TEMPLATE:
            dk = (vaddr, daddr, vport, dport)
            delta = self.deltas.get(dk)
            if delta is None:
                if len(self.deltas) > 4096:
                    self.deltas.clear()
                delta = self.deltas[dk] = nat_delta(vaddr, daddr, vport, dport)
            cp.nat_delta = delta
        if dest is not None:
            self.bind_dest(cp, dest)
        self.count += 1
        if not cp.flags & IP_VS_CONN_F_ONE_PACKET:
            self.hash(cp)
        ipvs = p.ipvs
        if ipvs is not None and ipvs.apps and not flags & IP_VS_CONN_F_TEMPLATE:
            app.bind_conn(ipvs, cp)
        return cp

    @staticmethod
    def bind_dest(cp: Connection, dest: Dest) -> None:
        """``ip_vs_bind_dest``: take the dest's flags and count the connection."""
        conn_flags = dest.conn_flags
        pp = PROTOCOLS.get(cp.protocol)
        if pp is None or not pp.one_packet:
            # One-packet scheduling is for the protocols that have it (UDP).
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
        """``ip_vs_control_del``: detach ``cp`` from the connection controlling it."""
        ctl = cp.control
        if ctl is not None:
            ctl.n_control -= 1
            cp.control = None

    # --------------------------------------------------------------- timers

    def conn_put(self, cp: Connection, now: int) -> None:
        """``ip_vs_conn_put``: done with ``cp`` for this packet: restart its
        timer, or expire a one-packet connection at once."""
        if cp.flags & IP_VS_CONN_F_ONE_PACKET:
            self.conn_expire(cp, now)
        else:
            self.put(cp, now)

    def put(self, cp: Connection, now: int) -> None:
        """``__ip_vs_conn_put_timer``: (re)start the timer at ``now + cp.timeout``."""
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
            heapq.heappush(self.slot_times, at)
        else:
            slot.append(cp)
        cp.wheel_at = at

    def expire_now(self, cp: Connection, now: int) -> None:
        """``ip_vs_conn_expire_now``: fire the timer at the next expiry run.

        The timeout is left alone, as in the kernel; only the flushes
        (``ip_vs_conn_del``) zero it, for conns that have a controller.
        """
        cp.expires = now
        self._file(cp, now)

    def next_timer(self) -> int | None:
        """The earliest jiffy at which :meth:`due` has work, or None."""
        return self.slot_times[0] if self.slot_times else None

    def due(self, now: int) -> list[Connection]:
        """Pop every connection whose slot is due by ``now``; re-file the
        ones whose timer was pushed later, return the ones to expire."""
        wheel = self.wheel
        times = self.slot_times
        out: list[Connection] = []
        self.wheel_now = max(self.wheel_now, now)
        slots = []
        while times and times[0] <= now:
            slots.append(heapq.heappop(times))
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

    def expire(self, now: int) -> None:
        """The connection timers: :meth:`conn_expire` each connection due by ``now``."""
        for cp in self.due(now):
            self.conn_expire(cp, now)

    def conn_expire(self, cp: Connection, now: int) -> None:
        """``ip_vs_conn_expire``: free ``cp``, or re-arm it while it controls others.

        A connection that goes with timeout 0 (``ip_vs_conn_del`` of a
        controlled one) takes its controller along when nothing else holds
        it ("drop cp->control chain too"); so does one whose controller is a
        template not yet assured.
        """
        if cp.n_control:
            cp.timeout = EXPIRE_LATER_S * self.hz
            self.put(cp, now)
            return
        ct = cp.control
        has_ref = cp.timeout == 0
        if self.on_expire is not None:
            self.on_expire(cp)
        self.release(cp)
        if ct is not None and has_ref and not ct.n_control:
            if not ct.flags & IP_VS_CONN_F_TEMPLATE or not ct.state:
                self.expire_now(ct, now)

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
                self._del(cp, now)

    def flush(self, now: int) -> None:
        """``ip_vs_conn_flush``: expire everything at the next run."""
        for cp in self.all():
            self._del(cp, now)

    # ------------------------------------------------------- defense

    def todrop_entry(self, cp: Connection, now: int) -> bool:
        """``todrop_entry`` (6.1): an entry idle for at least 60 s whose
        incoming packet count ``i`` is in 1..8 is dropped one time in ``i``
        (``todrop_rate[i] = i``; 0 packets: never).  ``in_pkts`` is what
        :meth:`ipvs.core.Director._in` counted, as ``ip_vs_in`` does."""
        if now + cp.timeout < cp.expires + 60 * self.hz:
            return False
        i = cp.in_pkts
        if not 0 < i <= 8:
            return False
        counters = self.todrop_counter
        counters[i] -= 1
        if counters[i] > 0:
            return False
        counters[i] = i
        return True

    def random_dropentry(self, now: int, rand: Callable[[int], int] = random.randrange) -> int:
        """``ip_vs_random_dropentry``: look at 1/32 of the table at random
        (the kernel scans ``size >> 5`` random buckets each second; PyIPVS
        has no buckets, so it picks as many entries as those buckets hold
        on average) and drop half-open TCP entries (SYN_RECV, SYNACK),
        established or other ones that :meth:`todrop_entry` picks, and
        one-packet templates; a dropped entry takes its controller along.
        Returns how many were dropped (counted in ``dropped``)."""
        entries = self.all()
        n = (len(entries) + 31) >> 5
        dropped = 0
        for _ in range(n):
            cp = entries[rand(len(entries))]
            if cp.n_control or cp.expires <= now:
                continue  # controls others, or already on its way out
            if cp.flags & IP_VS_CONN_F_TEMPLATE:
                if not cp.flags & IP_VS_CONN_F_ONE_PACKET:
                    continue
            elif cp.protocol == IPPROTO_TCP:
                if cp.state == _tcp.ESTABLISHED:
                    if not self.todrop_entry(cp, now):
                        continue
                elif cp.state not in (_tcp.SYN_RECV, _tcp.SYNACK):
                    continue
            elif not self.todrop_entry(cp, now):
                continue
            self._del(cp, now)
            if cp.control is not None:
                self._del(cp.control, now)
            dropped += 1
        self.dropped += dropped
        return dropped

    def make_room(self, ipvs: NetnsIPVS | None) -> bool:
        """A full table with ``drop_entry`` on (levels 1-3): run
        :meth:`random_dropentry` now, and say whether a new entry fits.

        The kernel has no cap: its table grows until memory is short, and
        then ``drop_entry`` thins it every second.  PyIPVS's cap is the
        budget's room for entries, so reaching it is memory running out
        for the table; waiting for the next second (or for memory to be
        short as well) would refuse every new connection meanwhile, a
        legitimate client's as much as a flood's.  As ``nf_conntrack``'s
        ``early_drop`` evicts a connection not yet assured when its table is
        full, the half-open entries (and the idle ones ``todrop_entry``
        picks) make room for new ones.  A pass looks at 1/32 of the table,
        so it runs at most every tenth of a second, or every second after
        one that freed nothing (a table full of established connections
        then refuses new ones, as before)."""
        if ipvs is None or not ipvs.sysctl.drop_entry:
            return False
        now = self.wheel_now
        if now < self.room_at:
            return False
        self.room_passes += 1
        freed = self.random_dropentry(now)
        self.room_at = now + (max(1, self.hz // 10) if freed else self.hz)
        # The dropped entries are filed to expire at the next run of the timers (as the kernel's
        # ip_vs_conn_expire_now arms theirs); the new connection needs their places now.  Templates
        # wait for the timers as in the kernel: the packet being handled may have just found one of
        # them, and binds its new connection to it after this.
        at = now + 1
        for cp in [cp for cp in self.wheel.get(at, ())
                   if cp.wheel_at == at and cp.expires <= now and not cp.flags & IP_VS_CONN_F_TEMPLATE]:
            cp.wheel_at = -1  # its filing in the slot is now stale: due() skips it
            self.conn_expire(cp, now)
        return self.count < self.max_conns

    def _del(self, cp: Connection, now: int) -> None:
        """``ip_vs_conn_del``: expire ``cp``; a controlled conn goes with
        timeout 0 so its expiry drops the controller too ("drop cp->control
        chain too")."""
        if cp.control is not None:
            cp.timeout = 0
        self.expire_now(cp, now)
