"""Turn a kernel golden run's captures into replay input and expected output.

Shared by the core and replay tests.  A golden run (``tests/kernel/goldens/
<name>/``, or the copy under ../shared/reference/kernel-goldens/) holds the
rules (``before-ipvsadm-S-n.txt``), a capture on the client's interface and
one on the real servers' bridge, and the kernel's listings after traffic.
"""

from __future__ import annotations

import io
import ipaddress
import os
import re
from typing import NamedTuple

from ipvs.driver import pcap
from ipvs_harness import GOLDENS, ROOT

SHARED = os.environ.get("PYIPVS_SHARED", os.path.join(ROOT, "..", "..", "shared"))
SHARED_GOLDENS = os.path.join(SHARED, "reference", "kernel-goldens")
LOCAL_GOLDENS = GOLDENS
INNER = ipaddress.ip_network("172.16.0.0/24")
DIRECTOR_INNER = ipaddress.ip_address("172.16.0.1").packed
#: The director's address on the real servers' side of the IPv6 lab.
DIRECTOR_INNER6 = ipaddress.ip_address("2001:db8:2::1").packed


def golden_dir(name: str) -> str | None:
    """The committed golden directory, falling back to ../shared's copy."""
    for base in (LOCAL_GOLDENS, SHARED_GOLDENS):
        d = os.path.join(base, name)
        if os.path.isdir(d):
            return d
    return None


#: Scenario lines that change the director while traffic runs (rules,
#: settings, marks, held connections, helper modules): a plain capture
#: replay cannot place them in time, so such runs are compared by the tests
#: that model their steps (tests/sched/test_goldens.py, the tcp_states and
#: udp_icmp tests in tests/core/test_core.py, tests/kernel/test_differential.py).
MID_RUN = re.compile(r"^\s*(step |!sh|!hold|!release|!rst|!sleep|sh ipvsadm|.*modprobe|mark |fwd_method_run)", re.M)


def traffic_goldens() -> list[str]:
    """Golden runs with both captures and a rules dump whose scenario does
    not change the director while its traffic runs."""
    names = set()
    for base in (LOCAL_GOLDENS, SHARED_GOLDENS):
        if os.path.isdir(base):
            for n in os.listdir(base):
                d = os.path.join(base, n)
                if not all(os.path.exists(os.path.join(d, f)) for f in
                           ("client-side.pcap", "server-side.pcap", "before-ipvsadm-S-n.txt", "scenario.sh")):
                    continue
                with open(os.path.join(d, "scenario.sh")) as f:
                    if MID_RUN.search(f.read()):
                        continue
                names.add(n)
    return sorted(names)


class Quoted(NamedTuple):
    """The TCP/UDP packet an ICMP error quotes."""

    proto: int
    saddr: bytes
    daddr: bytes
    sport: int
    dport: int


class Frame(NamedTuple):
    """An IPv4 TCP/UDP frame of a capture, or an ICMP error quoting one
    (then ``quoted`` holds the packet it is about; ports and flags are 0)."""

    l3: int  # offset of the IP header in the captured frame
    proto: int
    saddr: bytes
    daddr: bytes
    sport: int
    dport: int
    flags: int  # TCP flags (0 for UDP)
    quoted: Quoted | None
    #: For a VS/TUN frame the director sent a real server: the offset of
    #: the outer (tunnel) IP header; ``l3`` and the fields above are then
    #: the inner packet's.  -1 for every other frame.
    outer: int = -1


#: The IP protocols of VS/TUN's tunnel types (IPIP, GRE; GUE is UDP).
_IPPROTO_IPIP, _IPPROTO_GRE, _IPPROTO_UDP = 4, 47, 17
#: GRE header flags: checksum, key, sequence number present (RFC 2890).
_GRE_C, _GRE_K, _GRE_S = 0x80, 0x20, 0x10


def _tunnel_inner(d: bytes, l3: int) -> int | None:
    """The offset of the inner IPv4 header of a tunnel packet the director
    built (outer source: its address on the real servers' side), or None.

    IPIP carries the inner header right after the outer one; GRE after its
    4-byte header and the optional checksum, key and sequence words; GUE
    (UDP) after the UDP header and a version-0 GUE header whose protocol
    is IPIP (its length field counts the option words).
    """
    if d[l3 + 12:l3 + 16] != DIRECTOR_INNER:
        return None
    proto = d[l3 + 9]
    l4 = l3 + (d[l3] & 15) * 4
    if proto == _IPPROTO_IPIP:
        inner = l4
    elif proto == _IPPROTO_GRE and len(d) >= l4 + 4 and d[l4 + 2:l4 + 4] == b"\x08\x00":
        flags = d[l4]
        inner = l4 + 4 + 4 * (bool(flags & _GRE_C) + bool(flags & _GRE_K) + bool(flags & _GRE_S))
    elif proto == _IPPROTO_UDP and len(d) >= l4 + 12 and d[l4 + 8] >> 6 == 0 and d[l4 + 9] == _IPPROTO_IPIP:
        inner = l4 + 8 + 4 + (d[l4 + 8] & 0x1F) * 4
    else:
        return None
    return inner if len(d) >= inner + 20 and d[inner] >> 4 == 4 else None


#: IPv6 extension headers the frame parser walks over (hop-by-hop,
#: routing, destination options): their length is in 8-byte units after
#: the first 8.
_IPV6_EXT = (0, 43, 60)
#: ICMPv6 errors that quote a packet: unreachable, packet too big, time
#: exceeded, parameter problem.
_ICMPV6_ERRORS = (1, 2, 3, 4)


def _parse_frame6(d: bytes, l3: int) -> Frame | None:
    """:func:`parse_frame` for an IPv6 packet (TCP, UDP, or an ICMPv6 error
    quoting one); neighbour discovery and the rest give None."""
    if len(d) < l3 + 40:
        return None
    proto, l4 = d[l3 + 6], l3 + 40
    while proto in _IPV6_EXT and len(d) >= l4 + 8:
        proto, l4 = d[l4], l4 + 8 + d[l4 + 1] * 8
    saddr, daddr = d[l3 + 8:l3 + 24], d[l3 + 24:l3 + 40]
    if proto in (4, 41) and saddr == DIRECTOR_INNER6 and len(d) >= l4 + 20:
        # VS/TUN over IPv6 (IPv6 or IPv4 inside): the inner packet's frame.
        inner = _parse_frame6(d, l4) if proto == 41 else _parse_frame4(d, l4)
        return inner._replace(outer=l3) if inner is not None else None
    if proto == 58:
        q = l4 + 8
        if len(d) < q + 44 or d[l4] not in _ICMPV6_ERRORS or d[q + 6] not in (6, 17):
            return None
        quoted = Quoted(d[q + 6], d[q + 8:q + 24], d[q + 24:q + 40], int.from_bytes(d[q + 40:q + 42], "big"),
                        int.from_bytes(d[q + 42:q + 44], "big"))
        return Frame(l3, 58, saddr, daddr, 0, 0, 0, quoted)
    if proto not in (6, 17) or len(d) < l4 + 4:
        return None
    flags = d[l4 + 13] if proto == 6 and len(d) > l4 + 13 else 0
    return Frame(l3, proto, saddr, daddr, int.from_bytes(d[l4:l4 + 2], "big"),
                 int.from_bytes(d[l4 + 2:l4 + 4], "big"), flags, None)


def parse_frame(r: pcap.Record) -> Frame | None:
    """The :class:`Frame` of a captured record, or None (not TCP/UDP over
    IPv4 or IPv6, nor an ICMP or ICMPv6 error quoting such a packet)."""
    w = pcap.l3_offset(r.data, r.linktype)
    if w is None:
        return None
    if w[1] == 0x86DD:
        return _parse_frame6(r.data, w[0])
    return _parse_frame4(r.data, w[0])


def _parse_frame4(d: bytes, l3: int) -> Frame | None:
    """:func:`parse_frame` for an IPv4 packet (a VS/TUN one: its inner packet)."""
    if len(d) < l3 + 20:
        return None
    outer = -1
    inner = _tunnel_inner(d, l3)
    if inner is not None:
        outer, l3 = l3, inner
    proto = d[l3 + 9]
    l4 = l3 + (d[l3] & 15) * 4
    if proto == 1:
        if len(d) < l4 + 8 + 28 or d[l4] not in (3, 11, 12):
            return None
        q = l4 + 8
        ql4 = q + (d[q] & 15) * 4
        qproto = d[q + 9]
        if qproto not in (6, 17) or len(d) < ql4 + 4:
            return None
        quoted = Quoted(qproto, d[q + 12:q + 16], d[q + 16:q + 20], int.from_bytes(d[ql4:ql4 + 2], "big"),
                        int.from_bytes(d[ql4 + 2:ql4 + 4], "big"))
        return Frame(l3, 1, d[l3 + 12:l3 + 16], d[l3 + 16:l3 + 20], 0, 0, 0, quoted, outer)
    if proto not in (6, 17):
        return None
    flags = d[l4 + 13] if proto == 6 else 0
    return Frame(l3, proto, d[l3 + 12:l3 + 16], d[l3 + 16:l3 + 20], int.from_bytes(d[l4:l4 + 2], "big"),
                 int.from_bytes(d[l4 + 2:l4 + 4], "big"), flags, None, outer)


def A(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def _inner(addr: bytes) -> bool:
    return ipaddress.ip_address(addr) in INNER


def _ip(r: pcap.Record):
    """(l3, proto, saddr, daddr, (sport, dport)) of an IPv4 frame.

    For an ICMP error the addresses and ports are those of the packet it
    quotes, reversed, so the error belongs to the flow it is about (the
    protocol stays ICMP)."""
    w = pcap.l3_offset(r.data, r.linktype)
    if w is None or w[1] != 0x0800:
        return None
    l3 = w[0]
    d = r.data
    inner = _tunnel_inner(d, l3)
    if inner is not None:
        l3 = inner  # a VS/TUN frame: the flow is its inner packet's
    ihl = (d[l3] & 15) * 4
    proto = d[l3 + 9]
    l4 = l3 + ihl
    if proto == 1:
        q = l4 + 8
        if len(d) < q + 24 or d[l4] not in (3, 4, 11):
            return None
        qihl = (d[q] & 15) * 4
        qp = (int.from_bytes(d[q + qihl : q + qihl + 2], "big"), int.from_bytes(d[q + qihl + 2 : q + qihl + 4], "big"))
        return l3, proto, d[q + 16 : q + 20], d[q + 12 : q + 16], (qp[1], qp[0])
    ports = (int.from_bytes(d[l4 : l4 + 2], "big"), int.from_bytes(d[l4 + 2 : l4 + 4], "big"))
    return l3, proto, d[l3 + 12 : l3 + 16], d[l3 + 16 : l3 + 20], ports


def _outer(r: pcap.Record) -> tuple[bytes, bytes]:
    """The real (outer) source and destination of a frame."""
    l3 = pcap.l3_offset(r.data, r.linktype)[0]
    return r.data[l3 + 12 : l3 + 16], r.data[l3 + 16 : l3 + 20]


def flow_of(r: pcap.Record, vips: frozenset[bytes] | set[bytes] = frozenset()):
    """(client addr, client port) of a TCP/UDP frame, or of the packet an
    ICMP error quotes, on either side: the client is the end that is
    neither a real server nor a VIP."""
    l3, proto, s, d, (sp, dp) = _ip(r)
    if _inner(s) or s in vips:
        return d, dp
    return s, sp


class Split:
    """Replay input and expected output of one golden run."""

    def __init__(self, golden: str, vips: set[bytes]):
        cli = pcap.read_file(os.path.join(golden, "client-side.pcap"))
        srv = pcap.read_file(os.path.join(golden, "server-side.pcap"))
        # (frame, outer src, outer dst) of TCP, UDP and ICMP-error frames
        ip = lambda rs: [(r, *_outer(r)) for r in rs if _ip(r) and _ip(r)[1] in (1, 6, 17)]  # noqa: E731
        cli, srv = ip(cli), ip(srv)
        to_vip = [r for r, s, d in cli if d in vips and not _inner(s)]
        to_cli = [r for r, s, d in cli if s in vips]
        # A VS/DR or VS/TUN server answers from the VIP itself, and the
        # director's frames to a DR server are addressed to the VIP (a
        # TUN frame's outer header to the server: _ip reads its inner packet).
        from_rs = [r for r, s, d in srv if ((_inner(s) and s != DIRECTOR_INNER) or s in vips) and not _inner(d)]
        to_rs = [r for r, s, d in srv if ((_inner(d) or d in vips) and not _inner(s))
                 or _tunnel_inner(r.data, pcap.l3_offset(r.data, r.linktype)[0]) is not None]
        # Their answers reach the client by plain forwarding: not IPVS output.
        bypass = {flow_of(r, vips) for r, (s, _d) in zip(from_rs, map(_outer, from_rs)) if s in vips}
        to_cli = [r for r in to_cli if flow_of(r, vips) not in bypass]
        both = {flow_of(r, vips) for r in to_vip} & {flow_of(r, vips) for r in from_rs}
        keep = lambda rs: [r for r in rs if flow_of(r, vips) in both]  # noqa: E731
        drop = lambda rs: [r for r in rs if flow_of(r, vips) not in both]  # noqa: E731
        #: Frames arriving at the director, merged by time.
        self.input = sorted(keep(to_vip) + keep(from_rs), key=lambda r: r.ts)
        #: What the kernel transmitted, towards real servers and clients.
        self.to_rs = keep(to_rs)
        self.to_cli = keep(to_cli)
        #: Server-side frames of flows one capture missed (for counters).
        self.missed_to_rs = drop(to_rs)
        self.missed_from_rs = drop(from_rs)
        self.flows = both
        self.vips = vips


def restore_rules(director, golden: str) -> set[bytes]:
    """Apply the golden's rules with ipvsadm -R; return the VIPs."""
    from ipvs.cli.ipvsadm import restore
    from ipvs.netlink import LocalTransport

    with open(os.path.join(golden, "before-ipvsadm-S-n.txt")) as f:
        text = f.read()
    err = io.StringIO()
    assert restore(text.splitlines(), LocalTransport(director.ipvs), stderr=err) == 0, err.getvalue()
    return {A(m) for m in re.findall(r"-A -[tu] ([0-9.]+):", text)}


def kernel_dest_counters(golden: str) -> dict[str, list[int]]:
    """{"svc addr:port -> dest addr:port": [conns, inpkts, outpkts, inbytes, outbytes]}
    from the kernel's ``ipvsadm -Ln --exact --stats`` after traffic."""
    out: dict[str, list[int]] = {}
    svc = None
    with open(os.path.join(golden, "ipvsadm-Ln-exact-stats.txt")) as f:
        for line in f:
            m = re.match(r"(TCP|UDP)\s+(\S+)\s+(\d+)", line)
            if m:
                svc = m.group(2)
                continue
            m = re.match(r"\s+->\s+(\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", line)
            if m and svc:
                out[f"{svc} -> {m.group(1)}"] = [int(x) for x in m.groups()[1:]]
    return out
