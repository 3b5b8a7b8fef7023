"""Helpers to turn a kernel golden run's captures into replay input and
expected output (shared by the core and replay tests)."""

from __future__ import annotations

import ipaddress
import os

from ipvs.driver import pcap

SHARED = os.environ.get("PYIPVS_SHARED", os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
SHARED_GOLDENS = os.path.join(SHARED, "reference", "kernel-goldens")
LOCAL_GOLDENS = os.path.join(os.path.dirname(__file__), "kernel", "goldens")


def golden_dir(name: str) -> str | None:
    """The committed golden directory, falling back to ../shared's copy."""
    for base in (LOCAL_GOLDENS, SHARED_GOLDENS):
        d = os.path.join(base, name)
        if os.path.isdir(d):
            return d
    return None


def A(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def _addrs(r: pcap.Record):
    w = pcap.l3_offset(r.data, r.linktype)
    if w is None or w[1] != 0x0800:
        return None
    l3 = w[0]
    return l3, r.data[l3 + 12 : l3 + 16], r.data[l3 + 16 : l3 + 20]


def _flow(r: pcap.Record):
    """(client addr, client port) of a TCP/UDP frame seen on either side."""
    a = _addrs(r)
    l3, s, d = a
    ihl = (r.data[l3] & 15) * 4
    sp = int.from_bytes(r.data[l3 + ihl : l3 + ihl + 2], "big")
    dp = int.from_bytes(r.data[l3 + ihl + 2 : l3 + ihl + 4], "big")
    return (s, sp) if s[:1] == A("198.51.100.2")[:1] and s[:3] == A("198.51.100.0")[:3] else (d, dp)


def split(golden: str, vips: set[bytes], inner_prefix: bytes = A("172.16.0.0")[:3], director=A("172.16.0.1")):
    """(input records, expected to real servers, expected to clients).

    Input: client frames to a VIP (client side) and real-server frames to
    clients (server side), merged by time.  Only flows seen in both
    captures are kept (a capture may stop before the last flow).
    """
    cli = pcap.read_file(os.path.join(golden, "client-side.pcap"))
    srv = pcap.read_file(os.path.join(golden, "server-side.pcap"))
    to_vip = [r for r in cli if (a := _addrs(r)) and a[2] in vips and a[1][:3] != inner_prefix]
    from_rs = [r for r in srv if (a := _addrs(r)) and a[1][:3] == inner_prefix and a[1] != director]
    to_rs = [r for r in srv if (a := _addrs(r)) and a[2][:3] == inner_prefix and a[1][:3] != inner_prefix]
    to_cli = [r for r in cli if (a := _addrs(r)) and a[1] in vips]
    both = {_flow(r) for r in to_vip} & {_flow(r) for r in from_rs}
    keep = lambda rs: [r for r in rs if _flow(r) in both]  # noqa: E731
    inp = sorted(keep(to_vip) + keep(from_rs), key=lambda r: r.ts)
    return inp, keep(to_rs), keep(to_cli)
