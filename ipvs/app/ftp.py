"""The FTP helper: expected data connections and the PASV/EPSV rewrite.

Mirrors ``net/netfilter/ipvs/ip_vs_ftp.c`` (kernel 6.1).

FTP carries addresses inside the control connection, so a director doing
NAT must read them:

* Client to server (:meth:`FTPApp.pkt_in`): ``PASV`` and ``EPSV`` anywhere
  in the segment only note that a passive reply is due.  ``PORT h1,..,p2``
  and ``EPRT |af|addr|port|`` at the start of the segment announce where
  the client listens; the helper creates the expected *active* data
  connection: client ``addr:port``, virtual ``VIP:vport-1``, real server
  ``daddr:dport-1`` (the server's data port is one below its control
  port), controlled by the control connection and in TCP state LISTEN.
  The command itself is not rewritten.
* Server to client (:meth:`FTPApp.pkt_out`), only after PASV/EPSV:
  ``227 ... (h1,h2,h3,h4,p1,p2)`` and ``229 ... (|||port|)``.  The helper
  creates the expected *passive* data connection, whose client port is
  not known yet (``IP_VS_CONN_F_NO_CPORT``): client ``caddr:0``, virtual
  ``VIP:port``, real server ``addr:port``; the client's data SYN finds it
  by the core's cport-0 retry.  The 227 reply is rewritten to carry the
  VIP with the same port, the 229 reply to ``|||port|``.

Both directions act only while the control connection is ESTABLISHED.

The parser follows the kernel byte for byte, including what it tolerates
and refuses: commands are matched case-insensitively; a line split over
two segments or missing its terminator is not recognised; the six PORT and
227 numbers are taken modulo 256 and empty fields count as 0; the address
in PORT or a 227 reply is not checked against the connection.  Each such
case, and each refusal, is counted in :attr:`FTPApp.stats`; nothing
raises.  Refused or unrecognised input leaves the packet untouched and
accepted, exactly as the kernel does.

Differences from the kernel, and why:

* No conntrack.  Kernel 6.1 rewrites the reply through
  ``nf_nat_mangle_tcp_packet`` and conntrack's seqadj shifts later
  sequence numbers, while the helper reports a size change of zero to
  ``ip_vs_app``.  PyIPVS rewrites the payload itself and reports the size
  change, so ``ip_vs_app``'s own ``in_seq``/``out_seq`` machinery
  (:mod:`ipvs.app`) does the shifting.  The ``IP_VS_CONN_F_NFCT`` flag is
  still set on control and data connections, as the kernel sets it.
* The kernel drops a reply it cannot mangle only when there is no
  conntrack entry or the packet cannot grow; the latter (a packet beyond
  65535 bytes) is the only drop left here.
* IPv6: ``EPRT |2|...|`` and ``EPSV`` work on IPv6 connections as in the
  kernel; the IPv6 data path of the core is still to come.
"""

from __future__ import annotations

import collections
import errno
from typing import TYPE_CHECKING

from ipvs.app import NF_MANGLED, App, mangle_payload, register_app, unregister_app
from ipvs.ip_vs import NF_ACCEPT, NF_DROP, ConnParam, IPVSError
from ipvs.proto import tcp
from ipvs.uapi import AF_INET, AF_INET6, IP_VS_CONN_F_NFCT, IP_VS_CONN_F_NO_CPORT, IPPROTO_TCP

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.conn import Connection
    from ipvs.netns import NetnsIPVS
    from ipvs.packet import IPHeader

#: The module parameter ``ports``'s default.
DEFAULT_PORTS = (21,)

SERVER_STRING_PASV = b"227 "
CLIENT_STRING_PORT = b"PORT"
SERVER_STRING_EPSV = b"229 "
CLIENT_STRING_EPRT = b"EPRT"

# cp.app_data values (the kernel's IP_VS_FTP_* enum; None is ACTIVE too).
IP_VS_FTP_ACTIVE = 0
IP_VS_FTP_PORT = 0
IP_VS_FTP_PASV = 1
IP_VS_FTP_EPRT = 2
IP_VS_FTP_EPSV = 3

_DIGITS = frozenset(b"0123456789")


def _casecmp(data: bytes | bytearray, pos: int, pattern: bytes) -> bool:
    """``strncasecmp(data + pos, pattern, len(pattern)) == 0`` for ASCII."""
    return data[pos : pos + len(pattern)].lower() == pattern.lower()


# --------------------------------------------------------------------------
# Address parsing (in4_pton / in6_pton of net/core/utils.c)


def in4_pton(data: bytes | bytearray, pos: int, limit: int, delim: int) -> tuple[bytes | None, int]:
    """Parse a dotted quad at ``data[pos:limit]`` ended by ``delim``.

    Returns ``(address or None, end offset)`` like the kernel's
    ``in4_pton``: four non-empty decimal parts of at most 255 separated by
    dots, ended by ``delim``, a colon, a NUL byte or the end of data
    (``delim`` is tested first, so it may even be a digit or a dot).
    """
    parts: list[int] = []
    value = 0
    digits = 0
    s = pos
    while True:
        c = data[s] if s < limit else 0
        if c == delim or c == 0 or c == 0x3A or c == 0x2E:  # end of a part
            if not digits:
                return None, s
            parts.append(value)
            value = digits = 0
            if c == delim or c == 0 or c == 0x3A:
                return (bytes(parts), s) if len(parts) == 4 else (None, s)
            if len(parts) >= 4:
                return None, s
        elif 0x30 <= c <= 0x39:
            value = value * 10 + c - 0x30
            digits += 1
            if value > 255:
                return None, s
        else:
            return None, s
        s += 1


_HEX = {c: int(chr(c), 16) for c in b"0123456789abcdefABCDEF"}

# What may come next while reading an IPv6 address (the kernel's IN6PTON_*
# state bits): a hex digit, a lone colon, the second colon of "::", a colon
# that may start "::", a dot starting an embedded IPv4 tail, the end, and
# "the group read so far is not to be stored" (before a leading "::" and
# once 16 bytes are full).
_XDIGIT, _COLON_1, _COLON_2, _COLON_1_2, _DOT, _DELIM, _NULL = (1 << k for k in range(7))
_COLON = _COLON_1 | _COLON_2 | _COLON_1_2


def in6_pton(data: bytes | bytearray, pos: int, limit: int, delim: int) -> tuple[bytes | None, int]:
    """Parse an IPv6 address at ``data[pos:limit]`` ended by ``delim``.

    Same acceptance as the kernel's ``in6_pton``: groups of hex digits
    (more than four only as leading zeros), at most one ``::``, an
    optional dotted-quad tail, ended by ``delim``, NUL or the end of data.
    Returns ``(address or None, end offset)``.
    """
    out = bytearray()  # the address bytes as they are filled
    dc = -1  # length of ``out`` where "::" stood
    allowed = _COLON_1_2 | _XDIGIT | _NULL
    w = 0
    tok = pos  # start of the current group
    s = pos
    while True:
        c = data[s] if s < limit else 0
        if c == delim or c == 0:
            cls = _DELIM
        elif c == 0x3A:
            cls = _COLON
        elif c == 0x2E:
            cls = _DOT
        elif c in _HEX:
            cls = _XDIGIT
        else:
            return None, s
        if not cls & allowed:
            return None, s
        if cls & (_DELIM | _COLON):
            if not allowed & _NULL:
                out += w.to_bytes(2, "big")
            w = 0
            if cls == _DELIM:
                break
            colon = allowed & _COLON
            if colon == _COLON_2:
                dc = len(out)
                allowed = _XDIGIT | _DELIM | (_NULL if dc >= 16 else 0)
            elif colon == _COLON_1 | _COLON_1_2:
                allowed = _XDIGIT | _COLON_2
            elif colon == _COLON_1:
                allowed = _XDIGIT
            elif colon == _COLON_1_2:
                allowed = _COLON_2
            else:
                allowed = 0
            tok = s + 1
        elif cls == _DOT:
            quad, s = in4_pton(data, tok, limit, delim)
            if quad is None:
                return None, s
            out += quad
            break
        else:
            w = w << 4 | _HEX[c]
            allowed = _COLON_1 | _DELIM
            if not w & 0xF000:
                allowed |= _XDIGIT
            if dc < 0 and len(out) + 2 < 16:
                # without "::" the address must run to 8 groups
                allowed = (allowed | _COLON_1_2) & ~_DELIM
            if len(out) + 2 >= 16:
                allowed &= ~(_COLON_1 | _COLON_1_2)
        if (dc >= 0 and len(out) + 4 < 16) or len(out) + 4 == 16:
            allowed |= _DOT
        if len(out) >= 16:
            allowed &= ~(_XDIGIT | _COLON)
        s += 1
    if dc >= 0:
        return bytes(out[:dc]) + bytes(16 - len(out)) + bytes(out[dc:]), s
    return bytes(out), s


# --------------------------------------------------------------------------
# The command parser (ip_vs_ftp_get_addrport)


def get_addrport(
    data: bytes | bytearray,
    pos: int,
    limit: int,
    pattern: bytes,
    skip: int,
    ext: bool,
    mode: int,
    af: int,
    addr: bytes | None = None,
) -> tuple[int, bytes | None, int, int, int]:
    """Find ``pattern`` at ``data[pos:]`` and parse the address and port
    that follow (``ip_vs_ftp_get_addrport``).

    ``skip`` is the byte leading the numbers (" " for commands, "(" for
    replies; for the old format a digit may start them directly), ``ext``
    selects the RFC 2428 ``<d>af<d>addr<d>port<d>`` format, where an EPSV
    reply may leave af and address empty (then ``addr`` is kept).

    Returns ``(result, addr, port, start, end)``: result 1 on success with
    ``data[start:end]`` the address text, 0 when the pattern is absent,
    -1 when it is present but the rest is incomplete or malformed.
    """
    plen = len(pattern)
    if limit - pos < plen:
        # A prefix of the pattern: the command may continue in the next segment.
        return (-1 if _casecmp(data, pos, pattern[: limit - pos]) else 0), None, 0, 0, 0
    if not _casecmp(data, pos, pattern):
        return 0, None, 0, 0, 0
    s = pos + plen
    if skip:
        found = False
        while True:
            if s == limit:
                return -1, None, 0, 0, 0
            c = data[s]
            if not found:
                if not ext and c in _DIGITS:
                    break
                if c == skip:
                    found = True
            elif c != skip:
                break
            s += 1
    if not ext:
        p = [0] * 6
        i = 0
        d = s
        while True:
            if d == limit:
                return -1, None, 0, 0, 0
            c = data[d]
            if c in _DIGITS:
                # unsigned char arithmetic: a number above 255 wraps
                p[i] = (p[i] * 10 + c - 0x30) & 0xFF
            elif c == 0x2C and i < 5:  # ','
                i += 1
            else:
                break
            d += 1
        if i != 5:
            return -1, None, 0, 0, 0
        return 1, bytes(p[:4]), p[4] << 8 | p[5], s, d
    if s == limit:
        return -1, None, 0, 0, 0
    start = s
    edelim = data[s]
    s += 1
    if edelim < 33 or edelim > 126 or s == limit:
        return -1, None, 0, 0, 0
    if data[s] == edelim:
        # af and address left out: only an EPSV reply may do that
        if mode != IP_VS_FTP_EPSV:
            return -1, None, 0, 0, 0
        s += 1
        if s == limit or data[s] != edelim:
            return -1, None, 0, 0, 0
        s += 1
    else:
        if data[s] != (0x32 if af == AF_INET6 else 0x31):  # '2' / '1'
            return -1, None, 0, 0, 0
        s += 1
        if s == limit or data[s] != edelim:
            return -1, None, 0, 0, 0
        s += 1
        if s == limit:
            return -1, None, 0, 0, 0
        addr, s = (in6_pton if af == AF_INET6 else in4_pton)(data, s, limit, edelim)
        if addr is None or s == limit or data[s] != edelim:
            return -1, None, 0, 0, 0
        s += 1
    hport = 0
    while True:
        if s == limit:
            return -1, None, 0, 0, 0
        c = data[s]
        if c not in _DIGITS:
            break
        hport = (hport * 10 + c - 0x30) & 0xFFFF  # __u16 arithmetic
        s += 1
    if not hport or data[s] != edelim:
        return -1, None, 0, 0, 0
    return 1, addr, hport, start, s + 1


def _numbers_wrapped(data: bytes | bytearray, start: int, end: int) -> bool:
    """Did any of the six PORT/227 numbers exceed 255 (and wrap)?"""
    for f in bytes(data[start:end]).split(b","):
        f = f.lstrip(b"0")
        if len(f) > 3 or (f and int(f) > 255):
            return True
    return False


def scan_passive(data: bytes | bytearray, pos: int, limit: int, af: int) -> int | None:
    """Look for ``PASV\\r\\n`` (IPv4 only) or ``EPSV`` in ``data[pos:limit]``.

    Like the kernel's loop over every offset with at least 6 bytes left,
    the first hit decides: :data:`IP_VS_FTP_PASV`, :data:`IP_VS_FTP_EPSV`
    (``EPSV\\r`` or ``EPSV <af>\\r`` with the connection's family), or -1
    for any other ``EPSV <x>`` (``EPSV ALL``, another family, no CR), which
    ends the search.  None when nothing is found.
    """
    low = bytes(data[pos:limit]).lower()
    last = len(low) - 6  # the kernel's loop bound
    if last < 0:
        return None
    pasv = low.find(b"pasv\r\n", 0, last + 6) if af == AF_INET else -1
    i = low.find(b"epsv", 0, last + 4)
    while i >= 0 and low[i + 4] not in (0x20, 0x0D):
        i = low.find(b"epsv", i + 1, last + 4)
    if pasv >= 0 and (i < 0 or pasv < i):
        return IP_VS_FTP_PASV
    if i < 0:
        return None
    if low[i + 4] == 0x20:
        want = 0x32 if af == AF_INET6 else 0x31  # "2" / "1"
        if i > len(low) - 7 or low[i + 6] != 0x0D or low[i + 5] != want:
            return -1
    return IP_VS_FTP_EPSV


# --------------------------------------------------------------------------
# The helper


class FTPApp(App):
    """``ip_vs_ftp``: one per instance (see :func:`register`).

    :attr:`stats` counts what the helper saw, by name: ``pasv``, ``epsv``,
    ``port``, ``eprt`` (commands recognised), ``pasv_reply``,
    ``epsv_reply`` (replies rewritten), ``data_conn`` (expected data
    connections created), and the irregular cases ``partial`` (a command
    or reply cut off by the end of the segment), ``malformed`` (pattern
    present, rest refused), ``epsv_unsupported`` (``EPSV ALL`` or another
    family), ``wrapped`` (a number above 255 taken modulo 256),
    ``foreign_addr`` (an address other than the connection's own),
    ``no_payload`` (bad TCP data offset), ``drop_table_full`` and
    ``drop_too_big`` (packets dropped).
    """

    # 6.1's ip_vs_ftp rewrites through conntrack NAT, so its connections get
    # conntrack's sequence adjustment (acknowledgements and SACK blocks).
    seqadj = "conntrack"

    name = "ftp"
    protocol = IPPROTO_TCP

    def __init__(self) -> None:
        self.stats: collections.Counter = collections.Counter()

    def init_conn(self, ipvs: NetnsIPVS, cp: Connection) -> None:
        """The control connection is conntracked in the kernel; keep the flag."""
        cp.flags |= IP_VS_CONN_F_NFCT

    # ----------------------------------------------------------- helpers

    def _payload(self, buf: bytearray, h: IPHeader) -> tuple[int, int]:
        """(data, data_limit) offsets of the TCP payload, or (-1, -1)."""
        l4 = h.l4
        limit = min(h.end, len(buf))
        if limit < l4 + 20:
            return -1, -1
        doff = (buf[l4 + 12] >> 4) << 2
        if doff < 20:
            self.stats["no_payload"] += 1
            return -1, -1
        data = l4 + doff
        if data >= limit:
            return -1, -1
        return data, limit

    def _count_parse(self, result: int, data: bytes | bytearray, pos: int, limit: int, pattern: bytes) -> None:
        if result == -1:
            cut = limit - pos < len(pattern) or _no_terminator(data, pos, limit)
            self.stats["partial" if cut else "malformed"] += 1

    # -------------------------------------------------------------- hooks

    def pkt_in(self, ipvs: NetnsIPVS, cp: Connection, buf: bytearray, h: IPHeader, now: int) -> tuple[int, int]:
        """``ip_vs_ftp_in``: watch the client's commands."""
        if cp.state != tcp.ESTABLISHED:
            return NF_ACCEPT, 0
        data, limit = self._payload(buf, h)
        if data < 0:
            return NF_ACCEPT, 0
        af = cp.af
        found = scan_passive(buf, data, limit, af)
        if found is not None:
            if found == IP_VS_FTP_PASV or found == IP_VS_FTP_EPSV:
                cp.app_data = found
                self.stats["pasv" if found == IP_VS_FTP_PASV else "epsv"] += 1
            else:
                self.stats["epsv_unsupported"] += 1
            return NF_ACCEPT, 0

        res = 0
        if af == AF_INET:
            res, to, port, start, end = get_addrport(
                buf, data, limit, CLIENT_STRING_PORT, 0x20, False, IP_VS_FTP_PORT, af
            )
            self._count_parse(res, buf, data, limit, CLIENT_STRING_PORT)
            if res == 1:
                self.stats["port"] += 1
                if _numbers_wrapped(buf, start, end):
                    self.stats["wrapped"] += 1
        if res != 1:
            res, to, port, start, end = get_addrport(
                buf, data, limit, CLIENT_STRING_EPRT, 0x20, True, IP_VS_FTP_EPRT, af
            )
            self._count_parse(res, buf, data, limit, CLIENT_STRING_EPRT)
            if res != 1:
                return NF_ACCEPT, 0
            self.stats["eprt"] += 1
        # res == 1: get_addrport returns the address it parsed.  (A PORT or
        # EPRT command only, not the established-packet path.)
        assert to is not None
        if to != cp.caddr:
            self.stats["foreign_addr"] += 1

        cp.app_data = IP_VS_FTP_ACTIVE
        tab = ipvs.conn_tab
        vport = (cp.vport - 1) & 0xFFFF
        n_cp = tab.in_get(cp.protocol, to, cp.vaddr, port, vport)
        if n_cp is None:
            p = ConnParam(af, cp.protocol, to, port, cp.vaddr, vport, None, None, ipvs)
            n_cp = tab.new(p, cp.daddr, (cp.dport - 1) & 0xFFFF, IP_VS_CONN_F_NFCT, cp.dest, cp.fwmark)
            if n_cp is None:
                self.stats["drop_table_full"] += 1
                return NF_DROP, 0
            tab.control_add(n_cp, cp)
            self.stats["data_conn"] += 1
        tcp.conn_listen(n_cp, ipvs.proto_data[IPPROTO_TCP])  # (always there: make_proto_data)
        tab.put(n_cp, now)
        return NF_ACCEPT, 0

    def pkt_out(self, ipvs: NetnsIPVS, cp: Connection, buf: bytearray, h: IPHeader, now: int) -> tuple[int, int]:
        """``ip_vs_ftp_out``: rewrite the reply to PASV or EPSV."""
        if cp.state != tcp.ESTABLISHED:
            return NF_ACCEPT, 0
        mode = cp.app_data
        if mode == IP_VS_FTP_PASV:
            data, limit = self._payload(buf, h)
            if data < 0:
                return NF_ACCEPT, 0
            res, frm, port, start, end = get_addrport(
                buf, data, limit, SERVER_STRING_PASV, 0x28, False, IP_VS_FTP_PASV, cp.af
            )
            self._count_parse(res, buf, data, limit, SERVER_STRING_PASV)
            if res != 1:
                return NF_ACCEPT, 0
            if _numbers_wrapped(buf, start, end):
                self.stats["wrapped"] += 1
        elif mode == IP_VS_FTP_EPSV:
            data, limit = self._payload(buf, h)
            if data < 0:
                return NF_ACCEPT, 0
            res, frm, port, start, end = get_addrport(
                buf, data, limit, SERVER_STRING_EPSV, 0x28, True, IP_VS_FTP_EPSV, cp.af, cp.daddr
            )
            self._count_parse(res, buf, data, limit, SERVER_STRING_EPSV)
            if res != 1:
                return NF_ACCEPT, 0
        else:
            return NF_ACCEPT, 0
        # res == 1: get_addrport returns the address it parsed, or for an
        # EPSV reply without one the cp.daddr it was given.  (A PASV or EPSV
        # reply only, not the established-packet path.)
        assert frm is not None
        if frm != cp.daddr:
            self.stats["foreign_addr"] += 1

        tab = ipvs.conn_tab
        n_cp = tab.out_get(cp.protocol, frm, cp.caddr, port, 0)
        if n_cp is None:
            p = ConnParam(cp.af, cp.protocol, cp.caddr, 0, cp.vaddr, port, None, None, ipvs)
            n_cp = tab.new(p, frm, port, IP_VS_CONN_F_NO_CPORT | IP_VS_CONN_F_NFCT, cp.dest, cp.fwmark)
            if n_cp is None:
                self.stats["drop_table_full"] += 1
                return NF_DROP, 0
            tab.control_add(n_cp, cp)
            self.stats["data_conn"] += 1

        if mode == IP_VS_FTP_PASV:
            v = n_cp.vaddr
            rep = b"%d,%d,%d,%d,%d,%d" % (v[0], v[1], v[2], v[3], n_cp.vport >> 8, n_cp.vport & 0xFF)
            self.stats["pasv_reply"] += 1
        else:
            rep = b"|||%d|" % n_cp.vport
            self.stats["epsv_reply"] += 1
        diff = mangle_payload(buf, h, start, end, rep)
        cp.app_data = IP_VS_FTP_ACTIVE
        tcp.conn_listen(n_cp, ipvs.proto_data[IPPROTO_TCP])  # (always there: make_proto_data)
        tab.put(n_cp, now)
        if diff is None:
            self.stats["drop_too_big"] += 1
            return NF_DROP, 0
        return NF_MANGLED, diff


def _no_terminator(data: bytes | bytearray, pos: int, limit: int) -> bool:
    """No CR or LF after ``pos``: the line continues in a later segment."""
    chunk = bytes(data[pos:limit])
    return b"\r" not in chunk and b"\n" not in chunk


# --------------------------------------------------------------------------
# Module load / unload (per instance)


def register(ipvs: NetnsIPVS, ports=DEFAULT_PORTS) -> FTPApp:
    """Load the helper into ``ipvs`` (``modprobe ip_vs_ftp ports=...``).

    ``ports`` is the module parameter: up to 8 ports, zeros ignored.
    Raises :class:`ipvs.ctl.IPVSError` (``EEXIST`` if already loaded or a
    port is taken, ``EINVAL`` for a bad port list).
    """
    app = FTPApp()
    register_app(ipvs, app, ports)
    return app


def unregister(ipvs: NetnsIPVS) -> None:
    """Unload the helper from ``ipvs`` (``EBUSY`` while connections use it)."""
    for inc in list(ipvs.apps.values()):
        if isinstance(inc.app, FTPApp):
            unregister_app(ipvs, inc.app)
            return
    raise IPVSError(errno.ENOENT, "ftp helper not loaded")
