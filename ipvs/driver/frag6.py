"""IPv6 fragment reassembly before the core, and fragmentation after it.

The IPv6 twin of :mod:`ipvs.driver.frag`.  The kernel's IPVS sees IPv6
datagrams whole where ``nf_defrag_ipv6`` runs (``nf_conntrack_reasm.c``),
and the output path fragments the rewritten datagram again no larger than
the largest fragment that arrived (``IP6CB(skb)->frag_max_size``,
``ip6_fragment``), so the director keeps the sender's fragment sizes:

* :class:`Reassembler6` keys queues by (source, destination, fragment
  identification) like ``frag_queue``; a queue lives 60 s
  (``ip6frag_time``); all queues together may hold 4 MiB, past which new
  fragments are dropped; overlapping fragments drop the whole queue
  (RFC 5722), exact duplicates are ignored; a datagram may not exceed
  65535 bytes of payload.  The headers before the fragment header (the
  "unfragmentable part": hop-by-hop, routing) come from the first
  fragment; the fragment header itself goes, and the header before it
  names what it carried.
* :func:`fragment6` splits an IPv6 packet for a size limit: the
  unfragmentable part, a fragment header, and 8-byte multiples of the rest.

The caller picks the identification of the fragments it makes (the
kernel's ``ipv6_select_ident``).  Difference: no "fragment reassembly
time exceeded" is sent (netfilter's defragmentation sends none either).
"""

from __future__ import annotations

import struct

import attrs

from ipvs.driver.frag import FragQueue, FragQueues
from ipvs.packet import IP6_MF, IP6_OFFSET, IPV6_EXT_HDRS, NEXTHDR_AUTH, NEXTHDR_FRAGMENT

FRAG6_TIME_S = 60
HIGH_THRESH = 4 << 20
IPV6_MAXPLEN = 65535

_H = struct.Struct("!H")
_FRAG = struct.Struct("!BBHI")


def find_frag_hdr(buf: bytearray | bytes, l3: int, end: int) -> tuple[int, int] | None:
    """(offset of the fragment header, offset of the next-header byte that
    names it) of the IPv6 packet at ``l3``, or None without one."""
    prev = l3 + 6
    nexthdr = buf[prev]
    pos = l3 + 40
    while nexthdr in IPV6_EXT_HDRS:
        if pos + 8 > end:
            return None
        if nexthdr == NEXTHDR_FRAGMENT:
            return pos, prev
        hdrlen = (buf[pos + 1] + 2) << 2 if nexthdr == NEXTHDR_AUTH else (buf[pos + 1] + 1) << 3
        prev = pos
        nexthdr = buf[pos]
        pos += hdrlen
    return None


@attrs.define(slots=True, eq=False)
class FragQueue6(FragQueue):
    """The fragments of one IPv6 datagram being reassembled (``struct
    frag_queue``): ``head`` is the unfragmentable part of the first fragment
    (after the vnet and Ethernet headers), and two more fields rebuild the
    header chain without the fragment header."""

    prev: int = 0  # where in ``head`` the header before the fragment header names the next one
    nexthdr: int = 0  # what the fragment header carried


class Reassembler6(FragQueues):
    """The IPv6 fragment queues of one director (the insertion is the
    IPv4 reassembler's: :class:`ipvs.driver.frag.FragQueues`)."""

    queue_class = FragQueue6

    def __init__(self, hz: int, high_thresh: int = HIGH_THRESH, frag_time_s: int = FRAG6_TIME_S) -> None:
        super().__init__(hz, high_thresh, frag_time_s)

    def add(self, buf: bytearray, l3: int, now: int) -> tuple[bytearray, int] | None:
        """Take one fragment; returns (datagram buffer, largest fragment
        size) when it completes a datagram, else None (kept or dropped,
        counted).  The buffer keeps ``buf[:l3]`` of the first fragment in
        front, its vnet header zeroed."""
        st = self.stats
        st.fragments += 1
        end = min(len(buf), l3 + 40 + _H.unpack_from(buf, l3 + 4)[0])
        found = find_frag_hdr(buf, l3, end)
        if found is None:
            st.bad += 1
            return None
        fh, prev = found
        nexthdr, _res, fo, ident = _FRAG.unpack_from(buf, fh)
        off = fo & IP6_OFFSET
        more = bool(fo & IP6_MF)
        data = fh + 8
        plen = end - data
        unfrag = data - 8 - l3  # the IPv6 header and the headers before the fragment header
        if plen <= 0 or (more and plen & 7):
            st.bad += 1
            return None
        if unfrag - 40 + off + plen > IPV6_MAXPLEN:
            st.too_big += 1
            st.bad += 1
            return None
        key = bytes(buf[l3 + 8 : l3 + 40]) + ident.to_bytes(4, "big")
        q = self._insert(key, off, plen, more, bytes(buf[data:end]), end - l3, now)
        if q is None:
            return None
        if off == 0:
            assert isinstance(q, FragQueue6)
            q.head = bytes(buf[:fh])
            q.prev = prev
            q.nexthdr = nexthdr
        payload = self._complete(key, q)
        if payload is None:
            return None
        assert isinstance(q, FragQueue6) and q.head is not None
        out = bytearray(q.head)
        out[0:10] = bytes(10)
        out[q.prev] = q.nexthdr
        out += payload
        _H.pack_into(out, l3 + 4, len(out) - l3 - 40)
        return out, q.max_size


def fragment6(buf: bytearray, l3: int, limit: int, ident: int) -> list[bytearray]:
    """Split the IPv6 packet at ``l3`` into fragments of at most ``limit``
    bytes (``ip6_fragment``), with fragment identification ``ident``.

    The unfragmentable part is the IPv6 header with a hop-by-hop or
    routing header right after it (RFC 8200 4.5: they travel in every
    fragment); each fragment keeps ``buf[:l3]`` in front, vnet header
    zeroed.  Empty when the limit leaves no room for 8 bytes of data.
    """
    end = l3 + 40 + _H.unpack_from(buf, l3 + 4)[0]
    prev = l3 + 6
    pos = l3 + 40
    while buf[prev] in (0, 43) and pos + 8 <= end:  # hop-by-hop, routing
        prev = pos
        pos += (buf[pos + 1] + 1) << 3
    nexthdr = buf[prev]
    step = (limit - (pos - l3) - 8) & ~7
    if step <= 0:
        return []
    pre = bytearray(buf[:pos])
    pre[0:10] = bytes(10)
    pre[prev] = NEXTHDR_FRAGMENT
    out = []
    off = 0
    data = pos
    while data < end:
        chunk = buf[data : min(data + step, end)]
        more = IP6_MF if data + len(chunk) < end else 0
        f = pre + _FRAG.pack(nexthdr, 0, off | more, ident) + chunk
        _H.pack_into(f, l3 + 4, len(f) - l3 - 40)
        out.append(f)
        off += len(chunk)
        data += len(chunk)
    return out
