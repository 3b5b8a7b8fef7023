"""IPv4 fragment reassembly before the core, and fragmentation after it.

The kernel's IPVS never sees a fragment: ``nf_defrag_ipv4`` reassembles
in ``PRE_ROUTING`` (``net/ipv4/ip_fragment.c``) and the output path splits
the rewritten datagram again, no larger than the largest fragment that
arrived (``IPCB(skb)->frag_max_size``), so the director does not change
the sender's fragment sizes.  This module does both for the driver:

* :class:`Reassembler` keys queues by (saddr, daddr, id, protocol) like
  ``ipq``; a queue lives 30 s (``ipfrag_time``); all queues together may
  hold 4 MiB (``ipfrag_high_thresh``), past which new fragments are
  dropped; overlapping fragments drop the whole queue (RFC 5722's rule,
  which Linux applies to IPv4 too since 4.19), exact duplicates are
  ignored; a datagram may not exceed 65535 bytes.
* :class:`FragQueues` is the part both families share, as the kernel's
  ``inet_fragment.c`` is: the queue table, its memory bound, the insertion
  with its overlap and duplicate rules, expiry (:mod:`ipvs.driver.frag6`
  builds IPv6's reassembler on it).
* :func:`fragment` splits an IP packet for a given size limit.

Differences: no ICMP "fragment reassembly time exceeded" is sent on
timeout (the kernel does not send it for defragmentation done on behalf
of netfilter either); IP options are copied into every fragment.
"""

from __future__ import annotations

import struct

import attrs

from ipvs.packet import IP_DF, IP_MF, IP_OFFSET, ip_send_check

FRAG_TIME_S = 30
HIGH_THRESH = 4 << 20
IP_MAX = 65535

_H = struct.Struct("!H")


@attrs.define(slots=True, eq=False)
class FragQueue:
    """The fragments of one datagram being reassembled (``struct ipq``): the first fragment's headers, the payload
    pieces by offset, and when the queue expires.
    """
    expires: int
    head: bytes | None = None  # vnet + Ethernet + IP header of the first fragment
    parts: dict = attrs.field(factory=dict)  # offset -> payload bytes
    total: int = -1  # payload length once the last fragment arrived
    meat: int = 0
    max_size: int = 0  # largest fragment (IP total length) seen


@attrs.define(slots=True)
class FragStats:
    """Reassembly counters: fragments seen, datagrams rebuilt, and why others were dropped."""
    fragments: int = 0
    reassembled: int = 0
    timeouts: int = 0
    overlaps: int = 0
    mem_drops: int = 0
    too_big: int = 0
    bad: int = 0


class FragQueues:
    """The fragment queues of one family (``struct fqdir``) and the insertion
    both families share (``inet_frag_queue_insert`` in
    ``net/ipv4/inet_fragment.c``): overlaps kill the queue, exact duplicates
    are ignored, a second last fragment or one past the end is an overlap.
    A family's reassembler parses its headers and calls :meth:`_insert`, sets
    the queue's head from the first fragment, then :meth:`_complete`."""

    queue_class: type[FragQueue] = FragQueue

    def __init__(self, hz: int, high_thresh: int, frag_time_s: int) -> None:
        self.hz = hz
        self.high_thresh = high_thresh
        self.timeout = frag_time_s * hz
        self.queues: dict[bytes, FragQueue] = {}
        self.mem = 0
        self.stats = FragStats()

    def _insert(self, key: bytes, off: int, plen: int, more: bool, payload: bytes, size: int,
                now: int) -> FragQueue | None:
        """File one fragment (``payload`` at ``off``; ``size`` its whole
        length on the wire) in the queue of ``key``, made if new; the queue,
        or None when the fragment was dropped or was a duplicate."""
        q = self.queues.get(key)
        if q is None:
            if self.mem + plen > self.high_thresh:
                self.stats.mem_drops += 1
                return None
            q = self.queues[key] = self.queue_class(now + self.timeout)
        if not more:
            if q.total >= 0 and q.total != off + plen:
                self._kill(key, q, overlap=True)
                return None
            q.total = off + plen
        for o, p in q.parts.items():
            if o < off + plen and off < o + len(p):
                if o == off and len(p) == plen:
                    return None  # exact duplicate
                self._kill(key, q, overlap=True)
                return None
        if q.total >= 0 and off + plen > q.total:
            self._kill(key, q, overlap=True)
            return None
        q.parts[off] = payload
        q.meat += plen
        self.mem += plen
        q.max_size = max(q.max_size, size)
        return q

    def _complete(self, key: bytes, q: FragQueue) -> bytes | None:
        """The reassembled payload once every byte and the first fragment
        arrived (the queue leaves the table), else None."""
        if q.total < 0 or q.meat != q.total or q.head is None:
            return None
        del self.queues[key]
        self.mem -= q.meat
        self.stats.reassembled += 1
        return b"".join(q.parts[o] for o in sorted(q.parts))

    def _kill(self, key: bytes, q: FragQueue, overlap: bool = False) -> None:
        self.stats.overlaps += overlap
        self.mem -= q.meat
        del self.queues[key]

    def expire(self, now: int) -> int:
        """Drop the queues whose time has run out; returns how many."""
        dead = [k for k, q in self.queues.items() if q.expires <= now]
        for k in dead:
            self._kill(k, self.queues[k])
        self.stats.timeouts += len(dead)
        return len(dead)


class Reassembler(FragQueues):
    """The IPv4 fragment queues of one director."""

    def __init__(self, hz: int, high_thresh: int = HIGH_THRESH, frag_time_s: int = FRAG_TIME_S) -> None:
        super().__init__(hz, high_thresh, frag_time_s)

    def add(self, buf: bytearray, l3: int, now: int) -> tuple[bytearray, int] | None:
        """Take one fragment; returns (datagram buffer, largest fragment size)
        when it completes a datagram, else None (kept or dropped, counted).

        The returned buffer has the same layout as ``buf`` (vnet header and
        Ethernet header of the first fragment in front) with a zeroed vnet
        header: the datagram carries full checksums.
        """
        st = self.stats
        st.fragments += 1
        ihl = (buf[l3] & 0x0F) << 2
        tot = buf[l3 + 2] << 8 | buf[l3 + 3]
        fo = _H.unpack_from(buf, l3 + 6)[0]
        off = (fo & IP_OFFSET) << 3
        more = bool(fo & IP_MF)
        plen = tot - ihl
        if ihl < 20 or plen <= 0 or (more and plen & 7) or off + plen > IP_MAX - ihl:
            st.too_big += off + plen > IP_MAX - ihl
            st.bad += 1
            return None
        key = bytes(buf[l3 + 12 : l3 + 20]) + bytes(buf[l3 + 4 : l3 + 6]) + bytes(buf[l3 + 9 : l3 + 10])
        q = self._insert(key, off, plen, more, bytes(buf[l3 + ihl : l3 + tot]), tot, now)
        if q is None:
            return None
        if off == 0:
            q.head = bytes(buf[: l3 + ihl])
        payload = self._complete(key, q)
        if payload is None:
            return None
        assert q.head is not None  # (_complete checked)
        head = bytearray(q.head)
        head[0:10] = bytes(10)
        out = head + payload
        hl = len(head) - l3
        _H.pack_into(out, l3 + 2, hl + q.total)
        _H.pack_into(out, l3 + 6, _H.unpack_from(out, l3 + 6)[0] & IP_DF)
        ip_send_check(out, l3)
        return out, q.max_size


def fragment(buf: bytearray, l3: int, limit: int) -> list[bytearray]:
    """Split the IP packet at ``l3`` into fragments of at most ``limit`` bytes.

    Each fragment keeps ``buf[:l3]`` (vnet and Ethernet headers, the vnet
    header zeroed since each fragment carries what it carries) in front.
    """
    ihl = (buf[l3] & 0x0F) << 2
    tot = buf[l3 + 2] << 8 | buf[l3 + 3]
    fo = _H.unpack_from(buf, l3 + 6)[0]
    base = (fo & IP_OFFSET) << 3
    last_mf = fo & IP_MF
    step = (limit - ihl) & ~7
    if step <= 0:
        return []
    pre = bytearray(buf[: l3 + ihl])
    pre[0:10] = bytes(10)
    out = []
    pos = l3 + ihl
    end = l3 + tot
    while pos < end:
        chunk = buf[pos : min(pos + step, end)]
        f = pre + chunk
        more = IP_MF if pos + len(chunk) < end else last_mf
        _H.pack_into(f, l3 + 2, ihl + len(chunk))
        _H.pack_into(f, l3 + 6, (fo & IP_DF) | more | ((base + pos - l3 - ihl) >> 3))
        ip_send_check(f, l3)
        out.append(f)
        pos += len(chunk)
    return out
