"""Software segmentation of a TCP GSO super-packet, IPv4 or IPv6.

What ``inet_gso_segment`` / ``ipv6_gso_segment`` and ``tcp_gso_segment``
(``net/ipv4/af_inet.c``, ``net/ipv6/ip6_offload.c``,
``net/ipv4/tcp_offload.c``) do when the device cannot: the payload cut
into ``gso_size`` pieces, each with a copy of the headers (IPv6's
extension headers included), its own IP total length, ID (the first
one's plus its index) and header checksum (IPv4) or payload length
(IPv6), its sequence number, FIN and PSH only on the last segment, CWR
only on the first, and its TCP checksum computed in full.

The driver needs it for one case only: a super-frame the core tunnelled.
The kernel segments such a packet after encapsulation with its tunnel GSO
types (``SKB_GSO_IPXIP4``, ``SKB_GSO_UDP_TUNNEL``, ``SKB_GSO_GRE``); a
packet socket's ``virtio_net_hdr`` has no such types, so the driver cuts
the inner packet here and wraps each segment again
(:func:`ipvs.xmit.tunnel_encap`).  Every other GSO frame leaves whole and
the kernel below the packet socket segments it.
"""

from __future__ import annotations

import struct

from ipvs.packet import TCP_FIN, TCP_PSH, IPHeader, ip_send_check, l4_csum_full, parse
from ipvs.uapi import AF_INET6

TCP_CWR = 0x80
_I = struct.Struct("!I")
_H = struct.Struct("!H")


def segment_tcp(pkt: bytes | bytearray, l3: int, gso_size: int) -> list[bytearray]:
    """The segments of the TCP packet (IPv4 or IPv6) at ``pkt[l3:]`` (each
    a new ``bytearray`` with ``l3`` bytes of zeroed room in front, for the
    driver's headers).  An empty list: not a TCP packet to cut
    (``gso_size`` 0, a truncated header, an IPv6 fragment)."""
    h = parse(pkt, l3)
    if not isinstance(h, IPHeader) or h.protocol != 6 or gso_size <= 0 or h.end - h.l4 < 20 or h.fragoffs:
        return []
    v6 = h.af == AF_INET6
    l4, end = h.l4, h.end
    hdr = l4 + ((pkt[l4 + 12] >> 4) << 2)
    if hdr > end:
        return []
    head = bytes(pkt[l3:hdr])
    tcp_at = l4 - l3
    ip_id = 0 if v6 else _H.unpack_from(pkt, l3 + 4)[0]
    seq = _I.unpack_from(pkt, l4 + 4)[0]
    flags = pkt[l4 + 13]
    room = bytes(l3)
    out = []
    n = end - hdr
    for i, off in enumerate(range(0, max(n, 1), gso_size)):
        seg = bytearray(room + head + bytes(pkt[hdr + off : hdr + min(off + gso_size, n)]))
        if v6:
            _H.pack_into(seg, l3 + 4, len(seg) - l3 - 40)
        else:
            _H.pack_into(seg, l3 + 2, len(seg) - l3)
            _H.pack_into(seg, l3 + 4, (ip_id + i) & 0xFFFF)
        _I.pack_into(seg, l3 + tcp_at + 4, (seq + off) & 0xFFFFFFFF)
        f = flags
        if off + gso_size < n:
            f &= ~(TCP_FIN | TCP_PSH)
        if i:
            f &= ~TCP_CWR
        seg[l3 + tcp_at + 13] = f
        if not v6:
            ip_send_check(seg, l3)
        sh = parse(seg, l3)
        if isinstance(sh, IPHeader):  # (it is: the headers are the checked ones)
            l4_csum_full(seg, sh)
        out.append(seg)
    return out
