"""The SIP persistence engine: templates keyed by the SIP Call-ID.

Mirrors ``net/netfilter/ipvs/ip_vs_pe_sip.c`` (kernel 6.1) and the part of
``net/netfilter/nf_conntrack_sip.c`` it relies on: ``ct_sip_get_header``
for the ``Call-ID`` header (compact form ``i``) with ``callid_len``,
``sip_skip_whitespace`` and ``sip_follow_continuation``.

With ``ipvsadm -A -u VIP:5060 -p --pe sip``, every new UDP connection of
the service reads the Call-ID of its first datagram, and the persistence
template is looked up by (client network, VIP, port, Call-ID): the
messages of one call stick to one real server while the calls of one
client may spread over several.  A datagram of a new connection without
a usable Call-ID is dropped (``fill_param`` fails, ``ip_vs_sched_persist``
answers ``ignored = -1``, ``ip_vs_in`` drops without an ICMP error).

A real server may also start a request itself (an INVITE or BYE towards
a client): :meth:`SipPE.conn_out` (``ip_vs_sip_conn_out``) gives such a UDP
datagram a connection through :meth:`ipvs.core.Director.new_conn_out`, so it leaves
from VIP:vport and the client's answers reach the same server, and, for a
persistent service, a template keyed by the datagram's Call-ID that points
at that server (an older template of that client and Call-ID naming
another server is invalidated).  A server's datagram without a usable
Call-ID gets nothing and goes on unchanged (``ip_vs_out`` continues with
``nat_icmp_send``).

The header search reproduces the kernel's, quirks included, because the
point is to pick the same Call-ID the kernel picks:

* Headers are found only after a line break (CR, LF or CRLF), never on
  the first line; lines starting with a space or tab are continuations.
* The long name ``Call-ID`` matches case-insensitively as a prefix (no
  check of the next character); the compact ``i`` must be followed by a
  non-letter (letters as the kernel's Latin-1 ``ctype`` table has them).
* Between the name and the colon, and after the colon, spaces and folded
  line breaks are skipped (a tab only at the start of a continuation
  line).  After a fold the kernel's loop also steps over the first
  character of the continuation line, so ``"Call-ID:\\r\\n abc"`` yields
  ``bc``.
* A header name not followed by a colon ends the search: a later
  ``Call-ID`` is not looked at.
* The value is a "word" (``word_len``), optionally ``@`` and a second
  word; an ``@`` with nothing after it is no value.  A header with no
  value makes the search resume further on; because the kernel adds the
  header's absolute offset to its running start offset, a resumed search
  may skip ahead of the next header.
* The Call-ID must be at most 255 bytes (``IP_VS_PEDATA_MAXLEN``) and be
  followed by CR or LF within the datagram.

Bytes are read from the UDP payload as far as the IP total length goes
(the kernel's ``skb->len``), whatever the UDP length field says.
"""

from __future__ import annotations

import errno
import re
from typing import TYPE_CHECKING

from ipvs.ip_vs import ConnParam
from ipvs.packet import IPHeader
from ipvs.pe import IP_VS_PEDATA_MAXLEN, PersistenceEngine, register_pe
from ipvs.uapi import IP_VS_CONN_F_TEMPLATE, IPPROTO_UDP

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.conn import Connection
    from ipvs.core import Director
    from ipvs.ip_vs import Dest, Service

__all__ = ["SipPE", "get_callid", "get_header"]

_CR, _LF, _SP, _HT = 13, 10, 32, 9
_COLON, _AT = 58, 64

# The kernel's isalpha over 0..255 (lib/ctype.c): ASCII letters and the
# Latin-1 letters 192-214, 216-246, 248-255.
_ALPHA = bytes(
    1 if (65 <= c <= 90 or 97 <= c <= 122 or 192 <= c <= 214 or 216 <= c <= 246 or c >= 248) else 0
    for c in range(256)
)
# iswordc: alphanumerics and the SIP "word" punctuation.  The punctuation
# ranges are compared on a signed char, so no byte above 127 gets in that way.
_WORD = bytes(
    1 if (_ALPHA[c] or 48 <= c <= 57 or (c < 128 and chr(c) in "!\"%()*+,-./:<>?[\\]_`{}~")) else 0
    for c in range(256)
)
_WORD_RUN = re.compile(b"[" + b"".join(re.escape(bytes((c,))) for c in range(256) if _WORD[c]) + b"]*")
_CALL_ID = b"call-id"


def _is_callid_name(d: bytes, i: int, limit: int) -> bool:
    """Whether a Call-ID header name starts at ``d[i]``, as ct_sip_get_header
    compares it: the long name as a case-insensitive prefix, or the compact
    "i" followed by a character that is no letter (to the kernel's ctype:
    ASCII and Latin-1)."""
    if limit - i >= len(_CALL_ID) and d[i : i + len(_CALL_ID)].lower() == _CALL_ID:
        return True
    return limit - i >= 2 and d[i] | 0x20 == 0x69 and not _ALPHA[d[i + 1]]


def _next_header(d: bytes, i: int, limit: int) -> int:
    """The line scan of ``ct_sip_get_header``: where the next Call-ID name
    starts at the beginning of a line, or -1.

    A line ends with CR, LF or CRLF.  Like the C loop, the scan examines the
    character after a line end and steps past it when no name starts there,
    even when it is itself a CR or LF (which then ends no line).
    """
    while i < limit:
        c = d[i]
        i += 1
        if c != _CR and c != _LF:
            continue
        if i >= limit:
            return -1
        if c == _CR and d[i] == _LF:
            i += 1
            if i >= limit:
                return -1
        if _is_callid_name(d, i, limit):
            return i
        i += 1  # the for loop's increment: that character is passed over
    return -1


def _follow_continuation(d: bytes, i: int, limit: int) -> int:
    """``sip_follow_continuation``: ``d[i]`` is CR or LF.  Return the first
    non-blank of the continuation line, or -1 when none follows."""
    i += 1
    if i >= limit:
        return -1
    if d[i - 1] == _CR and d[i] == _LF:
        i += 1
        if i >= limit:
            return -1
    if d[i] != _SP and d[i] != _HT:
        return -1
    while i < limit and (d[i] == _SP or d[i] == _HT):
        i += 1
    return i


def _skip_whitespace(d: bytes, i: int, limit: int) -> int:
    """``sip_skip_whitespace``: -1 when a line break ends the header.

    May return ``limit`` or ``limit + 1`` (nothing left to read)."""
    while i < limit:
        c = d[i]
        if c == _SP:
            i += 1
            continue
        if c != _CR and c != _LF:
            break
        i = _follow_continuation(d, i, limit)
        if i < 0:
            return -1
        # The kernel's for-loop increment runs after the continuation too.
        i += 1
    return i


def _word_len(d: bytes, i: int, limit: int) -> int:
    """``word_len``: how many word characters start at ``d[i]``."""
    if i >= limit:
        return 0
    m = _WORD_RUN.match(d, i, limit)
    assert m is not None  # a ``[...]*`` pattern matches everywhere, if only the empty run
    return m.end() - i


def _callid_len(d: bytes, i: int, limit: int) -> int:
    """``callid_len``: ``word`` or ``word@word``; 0 for no value."""
    n = _word_len(d, i, limit)
    i += n
    if not n or i >= limit or d[i] != _AT:
        return n
    domain = _word_len(d, i + 1, limit)
    if not domain:
        return 0
    return n + 1 + domain


def get_header(d: bytes, dataoff: int, datalen: int) -> tuple[int, int, int]:
    """``ct_sip_get_header`` for the Call-ID: ``(ret, matchoff, matchlen)``.

    ``ret`` is 1 (found: the value is ``d[matchoff:matchoff + matchlen]``),
    0 (no Call-ID header) or -1 (a Call-ID header without a value; the
    search may resume after ``matchoff``).  ``d`` is the UDP payload.
    """
    limit = min(datalen, len(d))
    if dataoff < limit:
        # Continuation lines start with a blank, so they never match.
        i = _next_header(d, dataoff, limit)
        if i >= 0:
            i += 7 if d[i] | 0x20 == 0x63 else 1  # "call-id" or "i"
            return _header_value(d, i, limit)
    return 0, 0, 0


def _header_value(d: bytes, i: int, limit: int) -> tuple[int, int, int]:
    """The rest of ``ct_sip_get_header`` once a name ended at ``d[i]``:
    blanks, the colon (anything else ends the whole search), blanks, the value."""
    i = _skip_whitespace(d, i, limit)
    if i < 0 or i >= limit or d[i] != _COLON:
        return 0, 0, 0
    i += 1
    if i >= limit:
        return 0, 0, 0
    i = _skip_whitespace(d, i, limit)
    if i < 0:
        return 0, 0, 0
    n = _callid_len(d, i, limit)
    if not n:
        return -1, i, 0
    return 1, i, n


def get_callid(d: bytes) -> tuple[int, int] | None:
    """``get_callid``: ``(offset, length)`` of the usable Call-ID in the
    UDP payload ``d``, or None (no Call-ID, too long, or not followed by a
    line break)."""
    datalen = len(d)
    dataoff = 0
    while True:
        ret, off, n = get_header(d, dataoff, datalen)
        if ret > 0:
            break
        if ret == 0:
            return None
        # ct_sip_get_header's offset is from the payload start; the kernel
        # adds it to the running start offset all the same.
        dataoff += off
    if n > IP_VS_PEDATA_MAXLEN:
        return None
    end = off + n
    if end == datalen:
        return None
    if d[end] != _CR and d[end] != _LF:
        return None
    return off, n


class SipPE(PersistenceEngine):
    """``ip_vs_sip_pe``: persistence by SIP Call-ID (UDP only)."""

    name = "sip"

    def fill_param(self, p: ConnParam, buf: bytearray, h: IPHeader) -> int:
        """``ip_vs_sip_fill_param``: ``p.pe_data`` = the Call-ID of the datagram."""
        if h.protocol != IPPROTO_UDP:
            return -errno.EINVAL
        end = h.end
        dataoff = h.l4 + 8
        if dataoff >= end or end > len(buf):
            return -errno.EINVAL
        data = bytes(buf[dataoff:end])
        found = get_callid(data)
        if found is None:
            return -errno.EINVAL
        off, n = found
        p.pe_data = data[off : off + n]
        return 0

    def ct_match(self, p: ConnParam, ct: Connection) -> bool:
        """``ip_vs_sip_ct_match``: same client net, VIP, port, protocol and Call-ID."""
        return (
            ct.af == p.af
            and ct.caddr == p.caddr
            and ct.vaddr == p.vaddr
            and ct.vport == p.vport
            and bool(ct.flags & IP_VS_CONN_F_TEMPLATE)
            and ct.protocol == p.protocol
            and ct.pe_data is not None
            and ct.pe_data == p.pe_data
        )

    def hashkey_raw(self, p: ConnParam, inverse: bool = False) -> bytes:
        """``ip_vs_sip_hashkey_raw``: the Call-ID itself."""
        return p.pe_data or b""

    def show_pe_data(self, cp: Connection) -> str:
        """``ip_vs_sip_show_pe_data``: the Call-ID bytes, one character each."""
        data = cp.pe_data
        return data.decode("latin-1") if data else ""

    def conn_out(
        self, director: Director, svc: Service, dest: Dest, buf: bytearray, h: IPHeader, dport: int, cport: int,
    ) -> Connection | None:
        """``ip_vs_sip_conn_out``: UDP only, through :meth:`ipvs.core.Director.new_conn_out`."""
        if h.protocol != IPPROTO_UDP:
            return None
        return director.new_conn_out(svc, dest, buf, h, dport, cport)


#: The registered engine.
SIP = register_pe(SipPE())
