"""Application helpers: registry, binding and TCP sequence adjustment.

Mirrors ``net/netfilter/ipvs/ip_vs_app.c`` (kernel 6.1) together with the
app hooks of ``ip_vs_proto_tcp.c`` (``tcp_register_app``,
``tcp_app_conn_bind``).

An *application* (:class:`App`, the kernel's ``struct ip_vs_app``) is a
payload helper such as FTP.  It serves one protocol on a set of ports;
each (protocol, port) it serves is an *incarnation* (:class:`Incarnation`)
filed in ``ipvs.apps[(protocol, port)]``, which is what
``/proc/net/ip_vs_app`` lists.  A new MASQ connection whose virtual port
has an incarnation is bound to it (:func:`bind_conn`), and from then on
every packet of that connection passes through :func:`pkt_in` (client to
server) or :func:`pkt_out` (server to client) before the core rewrites
its addresses.

Sequence adjustment.  When a helper changes the payload length, the TCP
sequence numbers of everything the sender sends afterwards, and the
acknowledgements coming back, must be shifted by the accumulated size
change.  Each connection keeps two records, ``in_seq`` (client to server
stream) and ``out_seq`` (server to client stream), each
``[init_seq, delta, previous_delta]``: ``init_seq`` is the original
sequence number of the latest resized segment, ``delta`` the total size
change up to and including it, ``previous_delta`` the total before it
(used for retransmissions of earlier data).  The flags
``IP_VS_CONN_F_IN_SEQ`` / ``IP_VS_CONN_F_OUT_SEQ`` say a record is in use.

Differences from the kernel, and why:

* PyIPVS has no conntrack.  Kernel 6.1's ``ip_vs_ftp`` rewrites payloads
  through ``nf_nat_mangle_tcp_packet`` and lets conntrack's seqadj shift
  the sequence numbers, always reporting a size change of zero to this
  module.  Here helpers rewrite the payload themselves
  (:func:`mangle_payload`) and report the size change, so the generic
  ``ip_vs_seq`` records below keep the offsets.  Sequence numbers are
  shifted alike by both; for acknowledgements and SACK blocks a helper
  chooses whose rule applies (:attr:`App.seqadj`): ``ip_vs_app``'s
  (``vs_fix_ack_seq``, no SACK) or conntrack's (``nf_ct_seq_adjust`` and
  ``nf_ct_sack_adjust``), which is what 6.1's FTP connections get.
* The kernel hooks return 0 (drop) or 1 (accept).  :func:`pkt_in` and
  :func:`pkt_out` add 2 for "payload or sequence numbers changed", so the
  core recomputes the L4 checksum in full instead of updating it
  incrementally (the kernel's snat/dnat handlers make the same choice
  from the payload-mangled state).
* Module reference counts become :class:`ipvs.ctl.IPVSError` ``EBUSY``
  when an application with bound connections is unregistered.
"""

from __future__ import annotations

import errno
import struct
from typing import TYPE_CHECKING

import attrs

from ipvs.ip_vs import NF_ACCEPT, NF_DROP, IPVSError
from ipvs.packet import csum_replace
from ipvs.uapi import (
    AF_INET,
    IP_VS_CONN_F_FWD_MASK,
    IP_VS_CONN_F_IN_SEQ,
    IP_VS_CONN_F_MASQ,
    IP_VS_CONN_F_OUT_SEQ,
    IPPROTO_TCP,
)

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.conn import Connection
    from ipvs.netns import NetnsIPVS
    from ipvs.packet import IPHeader

#: Most ports one application may serve (IP_VS_APP_MAX_PORTS).
IP_VS_APP_MAX_PORTS = 8

#: Verdicts of :func:`pkt_in` / :func:`pkt_out` and of the helpers' hooks.
NF_MANGLED = 2

_I = struct.Struct("!I")
_H = struct.Struct("!H")


class App:
    """An application helper (``struct ip_vs_app``).

    Subclasses set :attr:`name` and :attr:`protocol` and override the
    hooks they need.  ``pkt_in``/``pkt_out`` get the connection, the
    packet (``buf`` and its descriptor ``h``, the kernel's ``ip_vs_iphdr``)
    and ``now``, and return
    ``(verdict, diff)``: the verdict is :data:`NF_DROP`, :data:`NF_ACCEPT`
    or :data:`NF_MANGLED`, ``diff`` the payload size change in bytes.
    One object serves one instance (the kernel copies the app per netns),
    so helpers may keep per-instance counters on it.
    """

    name: str = "app"
    protocol: int = IPPROTO_TCP
    #: Whose sequence adjustment the kernel applies to this helper's
    #: connections: "ip_vs_app" (``vs_fix_seq``/``vs_fix_ack_seq``) or
    #: "conntrack" (``nf_ct_seq_adjust``: the acknowledgement rule differs
    #: and SACK blocks are adjusted too).  Kernel 6.1's ip_vs_ftp mangles
    #: through conntrack (``nf_nat_mangle_tcp_packet``).
    seqadj: str = "ip_vs_app"

    def init_conn(self, ipvs: NetnsIPVS, cp: Connection) -> None:
        """A connection was just bound to this application."""

    def done_conn(self, ipvs: NetnsIPVS, cp: Connection) -> None:
        """A bound connection is going away."""

    def pkt_in(self, ipvs: NetnsIPVS, cp: Connection, buf: bytearray, h: IPHeader, now: int) -> tuple[int, int]:
        """Client-to-server packet; default: accept unchanged."""
        return NF_ACCEPT, 0

    def pkt_out(self, ipvs: NetnsIPVS, cp: Connection, buf: bytearray, h: IPHeader, now: int) -> tuple[int, int]:
        """Server-to-client packet; default: accept unchanged."""
        return NF_ACCEPT, 0


@attrs.define(slots=True, eq=False)
class Incarnation:
    """One (protocol, port) an application serves in one instance.

    ``usecnt`` counts the connections bound to it; ``/proc/net/ip_vs_app``
    prints ``protocol``, ``port``, ``usecnt`` and ``name``.
    """

    app: App
    protocol: int
    port: int
    usecnt: int = 0
    #: Registration order, for the kernel's listing order (newest first).
    seq: int = 0

    @property
    def name(self) -> str:
        """The helper's name (``ftp``), as ``/proc/net/ip_vs_app`` lists it."""
        return self.app.name


# --------------------------------------------------------------------------
# Registry


def _apps_of(ipvs: NetnsIPVS, app: App) -> list[Incarnation]:
    return [inc for inc in ipvs.apps.values() if inc.app is app]


def register_app(ipvs: NetnsIPVS, app: App, ports) -> list[Incarnation]:
    """``register_ip_vs_app`` plus ``register_ip_vs_app_inc`` per port.

    Port 0 entries are skipped, as the kernel skips unset module parameter
    slots.  Raises :class:`IPVSError`: ``EEXIST`` when an application of
    the same name is registered or a port is already served (nothing stays
    registered then, as ``__ip_vs_ftp_init`` unwinds), ``EINVAL`` for more
    than :data:`IP_VS_APP_MAX_PORTS` ports or a port outside 0..65535,
    ``EPROTONOSUPPORT`` for a protocol without app support.
    """
    ports = tuple(ports)
    if len(ports) > IP_VS_APP_MAX_PORTS:
        raise IPVSError(errno.EINVAL, f"at most {IP_VS_APP_MAX_PORTS} ports")
    for port in ports:
        if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
            raise IPVSError(errno.EINVAL, f"bad port {port!r}")
    pd = ipvs.proto_data_get(app.protocol)
    if pd is None:
        raise IPVSError(errno.EPROTONOSUPPORT)
    for inc in ipvs.apps.values():
        if inc.app.name == app.name:
            raise IPVSError(errno.EEXIST, f"application {app.name} already registered")
    added: list[Incarnation] = []
    for port in ports:
        if not port:
            continue
        key = (app.protocol, port)
        if key in ipvs.apps:
            for inc in added:
                del ipvs.apps[(inc.protocol, inc.port)]
                pd.appcnt -= 1
            raise IPVSError(errno.EEXIST, f"port {port} already served by {ipvs.apps[key].name}")
        seq = max((i.seq for i in ipvs.apps.values()), default=0) + 1
        inc = Incarnation(app, app.protocol, port, 0, seq)
        ipvs.apps[key] = inc
        pd.appcnt += 1
        added.append(inc)
    return added


def unregister_app(ipvs: NetnsIPVS, app: App) -> None:
    """``unregister_ip_vs_app``: drop every incarnation of ``app``.

    ``EBUSY`` while connections are still bound (the kernel's module
    reference count would refuse the unload), ``ENOENT`` if it is not
    registered.
    """
    incs = _apps_of(ipvs, app)
    if not incs:
        raise IPVSError(errno.ENOENT)
    if any(inc.usecnt for inc in incs):
        raise IPVSError(errno.EBUSY, f"{app.name} still in use")
    pd = ipvs.proto_data_get(app.protocol)
    for inc in incs:
        del ipvs.apps[(inc.protocol, inc.port)]
        if pd is not None:
            pd.appcnt -= 1


def incarnations(ipvs: NetnsIPVS) -> list[Incarnation]:
    """Incarnations in the order ``/proc/net/ip_vs_app`` shows them.

    The kernel adds apps and each app's incarnations at the head of their
    lists, so the newest app comes first and, within it, the port
    registered last.
    """
    by_app: dict[int, list[Incarnation]] = {}
    for inc in ipvs.apps.values():
        by_app.setdefault(id(inc.app), []).append(inc)
    groups = sorted(by_app.values(), key=lambda g: -min(i.seq for i in g))
    return [inc for g in groups for inc in sorted(g, key=lambda i: -i.seq)]


# --------------------------------------------------------------------------
# Binding


def bind_conn(ipvs: NetnsIPVS, cp: Connection) -> int:
    """``ip_vs_bind_app`` / ``tcp_app_conn_bind``: bind a new connection.

    Only MASQ connections are bound, to the incarnation whose port is the
    connection's virtual port.  Returns 0 (the result of ``init_conn``).
    """
    if cp.app is not None or (cp.flags & IP_VS_CONN_F_FWD_MASK) != IP_VS_CONN_F_MASQ:
        return 0
    inc = ipvs.apps.get((cp.protocol, cp.vport))
    if inc is None:
        return 0
    inc.usecnt += 1
    cp.app = inc
    inc.app.init_conn(ipvs, cp)
    return 0


def unbind_conn(ipvs: NetnsIPVS, cp: Connection) -> None:
    """``ip_vs_unbind_app``: the connection expires; release its helper."""
    inc = cp.app
    if inc is None:
        return
    inc.app.done_conn(ipvs, cp)
    inc.usecnt -= 1
    cp.app = None


# --------------------------------------------------------------------------
# Sequence adjustment (all arithmetic modulo 2**32)


def after(a: int, b: int) -> bool:
    """``after(a, b)``: ``a`` is later than ``b`` in sequence space."""
    return ((b - a) & 0xFFFFFFFF) >= 0x80000000


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - 0x100000000 if v & 0x80000000 else v


def fix_seq(vseq: list, seq: int) -> int:
    """``vs_fix_seq``: the sequence number shifted by the size changes
    before it (``delta`` after the latest resized segment, else
    ``previous_delta``)."""
    init_seq, delta, previous_delta = vseq
    if not (delta or previous_delta):
        return seq
    return (seq + (delta if after(seq, init_seq) else previous_delta)) & 0xFFFFFFFF


def fix_ack_seq(vseq: list, ack: int) -> int:
    """``vs_fix_ack_seq``: map an acknowledgement back to the sender's
    original numbering; ``ack`` is compared with ``init_seq + delta``
    because it counts the bytes the peer actually received."""
    init_seq, delta, previous_delta = vseq
    if not (delta or previous_delta):
        return ack
    if after(ack, (init_seq + delta) & 0xFFFFFFFF):
        return (ack - delta) & 0xFFFFFFFF
    return (ack - previous_delta) & 0xFFFFFFFF


def ct_fix_ack(vseq: list, ack: int) -> int:
    """``nf_ct_seq_adjust``'s rule for an acknowledgement or a SACK edge
    (``vseq`` = [correction_pos, offset_after, offset_before]): the value
    less ``offset_before`` is compared with the correction position."""
    pos, off_after, off_before = vseq
    if after((ack - off_before) & 0xFFFFFFFF, pos):
        return (ack - off_after) & 0xFFFFFFFF
    return (ack - off_before) & 0xFFFFFFFF


def ct_sack_adjust(buf: bytearray, th: int, vseq: list) -> bool:
    """``nf_ct_sack_adjust``: shift the edges of every SACK block
    (TCP option 5) of the segment at ``th``; True if any changed."""
    end = th + ((buf[th + 12] >> 4) << 2)
    off = th + 20
    changed = False
    while off < end:
        kind = buf[off]
        if kind == 0:  # end of options
            break
        if kind == 1:  # no-op
            off += 1
            continue
        if off + 1 >= end:
            break
        size = buf[off + 1]
        if size < 2 or off + size > end:
            break
        if kind == 5 and size >= 10 and (size - 2) % 8 == 0:
            for edge in range(off + 2, off + size, 4):
                v = _I.unpack_from(buf, edge)[0]
                nv = ct_fix_ack(vseq, v)
                if nv != v:
                    _I.pack_into(buf, edge, nv)
                    changed = True
        off += size
    return changed


def seq_update(cp: Connection, which: str, flag: int, seq: int, diff: int) -> None:
    """``vs_seq_update``: a segment starting at original ``seq`` changed
    size by ``diff``.  Only the newest resized segment moves the record
    (a retransmission of an older one changes nothing)."""
    vseq = getattr(cp, which)
    if vseq is None:
        vseq = [0, 0, 0]
        setattr(cp, which, vseq)
    if not cp.flags & flag or after(seq, vseq[0]):
        vseq[2] = vseq[1]
        vseq[1] = _s32(vseq[1] + diff)
        vseq[0] = seq
        cp.flags |= flag


def _tcp_pkt(ipvs: NetnsIPVS, cp: Connection, buf: bytearray, h: IPHeader, now: int, inbound: bool) -> int:
    """``app_tcp_pkt_in`` / ``app_tcp_pkt_out``."""
    th = h.l4
    if h.end < th + 20:
        return NF_DROP  # (the core checked the header; a caller may not have)
    seq = _I.unpack_from(buf, th + 4)[0]
    ack = _I.unpack_from(buf, th + 8)[0]
    # Own stream: in_seq inbound, out_seq outbound; the peer's record
    # fixes the acknowledgements.
    if inbound:
        own, own_flag, peer, peer_flag = cp.in_seq, IP_VS_CONN_F_IN_SEQ, cp.out_seq, IP_VS_CONN_F_OUT_SEQ
    else:
        own, own_flag, peer, peer_flag = cp.out_seq, IP_VS_CONN_F_OUT_SEQ, cp.in_seq, IP_VS_CONN_F_IN_SEQ
    changed = False
    if cp.flags & own_flag and own is not None:
        nseq = fix_seq(own, seq)
        if nseq != seq:
            _I.pack_into(buf, th + 4, nseq)
            changed = True
    app = cp.app.app
    if cp.flags & peer_flag and peer is not None:
        if app.seqadj == "conntrack":
            # nf_ct_seq_adjust: only with the ACK flag, then the SACK blocks.
            if buf[th + 13] & 0x10:
                nack = ct_fix_ack(peer, ack)
                if nack != ack:
                    _I.pack_into(buf, th + 8, nack)
                    changed = True
                changed = ct_sack_adjust(buf, th, peer) or changed
        else:
            nack = fix_ack_seq(peer, ack)
            if nack != ack:
                _I.pack_into(buf, th + 8, nack)
                changed = True
    verdict, diff = (app.pkt_in if inbound else app.pkt_out)(ipvs, cp, buf, h, now)
    if verdict == NF_DROP:
        return NF_DROP
    if diff:
        seq_update(cp, "in_seq" if inbound else "out_seq", own_flag, seq, diff)
    return NF_MANGLED if changed or verdict == NF_MANGLED else NF_ACCEPT


def pkt_in(ipvs: NetnsIPVS, cp: Connection, buf: bytearray, h: IPHeader, now: int) -> int:
    """``ip_vs_app_pkt_in``: a client-to-server packet of ``cp``.

    Called before the core rewrites addresses.  Returns 0 to drop, 1 when
    nothing changed (checksums may be updated incrementally), 2 when the
    payload or the sequence numbers changed (recompute the L4 checksum).
    """
    if cp.app is None:
        return NF_ACCEPT
    if cp.protocol == IPPROTO_TCP:
        return _tcp_pkt(ipvs, cp, buf, h, now, True)
    return cp.app.app.pkt_in(ipvs, cp, buf, h, now)[0]


def pkt_out(ipvs: NetnsIPVS, cp: Connection, buf: bytearray, h: IPHeader, now: int) -> int:
    """``ip_vs_app_pkt_out``: a server-to-client packet of ``cp``
    (see :func:`pkt_in`)."""
    if cp.app is None:
        return NF_ACCEPT
    if cp.protocol == IPPROTO_TCP:
        return _tcp_pkt(ipvs, cp, buf, h, now, False)
    return cp.app.app.pkt_out(ipvs, cp, buf, h, now)[0]


# --------------------------------------------------------------------------
# Payload rewriting


def mangle_payload(buf: bytearray, h: IPHeader, start: int, end: int, rep: bytes) -> int | None:
    """Replace ``buf[start:end]`` (absolute offsets inside the IP packet
    ``h`` describes) with ``rep`` and fix the IP length field.

    Returns the size change, or None (buffer untouched) when the packet
    would outgrow the 16-bit length field, where the kernel's
    ``enlarge_skb`` fails as well.  The IPv4 header checksum is updated
    for the new length (RFC 1624), so it stays valid whether or not the
    caller recomputes it; the L4 checksum is left to the caller.
    """
    diff = len(rep) - (end - start)
    l3 = h.l3
    v4 = h.af == AF_INET
    if v4:
        lenoff, length = l3 + 2, _H.unpack_from(buf, l3 + 2)[0]
    else:
        lenoff, length = l3 + 4, _H.unpack_from(buf, l3 + 4)[0]
    if length + diff > 0xFFFF:
        return None
    buf[start:end] = rep
    if diff:
        _H.pack_into(buf, lenoff, length + diff)
        if v4:
            check = _H.unpack_from(buf, l3 + 10)[0]
            _H.pack_into(buf, l3 + 10, csum_replace(check, _H.pack(length), _H.pack(length + diff)))
    return diff
