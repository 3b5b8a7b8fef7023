"""Reading and writing classic pcap files (the offline "NIC").

A tiny reader/writer for the libpcap format (magic 0xA1B2C3D4, either byte
order, micro- or nanosecond timestamps; LINKTYPE_ETHERNET and
LINKTYPE_RAW), so replays need neither scapy nor libpcap.  Truncated or
malformed files raise :class:`PcapError` with the offset.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO, NamedTuple

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101

_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}


class PcapError(ValueError):
    """The file is not a pcap file we can read."""


class Record(NamedTuple):
    ts: float  # seconds since the epoch
    data: bytes
    linktype: int


def read(f: BinaryIO) -> Iterator[Record]:
    """Yield the records of a pcap stream."""
    head = f.read(24)
    if len(head) < 24 or head[:4] not in _MAGICS:
        raise PcapError("not a pcap file (bad magic)")
    order, unit = _MAGICS[head[:4]]
    linktype = struct.unpack(order + "I", head[20:24])[0] & 0x0FFFFFFF
    rec = struct.Struct(order + "IIII")
    off = 24
    while True:
        h = f.read(16)
        if not h:
            return
        if len(h) < 16:
            raise PcapError(f"truncated record header at offset {off}")
        sec, frac, incl, _orig = rec.unpack(h)
        if incl > 262144:
            raise PcapError(f"record of {incl} bytes at offset {off}")
        data = f.read(incl)
        if len(data) < incl:
            raise PcapError(f"truncated record at offset {off}")
        off += 16 + incl
        yield Record(sec + frac * unit, data, linktype)


def read_file(path: str) -> list[Record]:
    """Every record of the pcap file at ``path``."""
    with open(path, "rb") as f:
        return list(read(f))


def write(f: BinaryIO, records: Iterable[tuple[float, bytes]], linktype: int = LINKTYPE_ETHERNET) -> None:
    """Write (timestamp, frame) pairs as a microsecond pcap."""
    f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype))
    for ts, data in records:
        sec = int(ts)
        usec = int(round((ts - sec) * 1e6))
        if usec >= 1_000_000:
            sec, usec = sec + 1, usec - 1_000_000
        f.write(struct.pack("<IIII", sec, usec, len(data), len(data)))
        f.write(data)


def l3_offset(data: bytes | bytearray, linktype: int) -> tuple[int, int] | None:
    """(offset of the IP header, ethertype) of a frame, or None for non-IP."""
    if linktype == LINKTYPE_RAW:
        if not data:
            return None
        return 0, (0x0800 if data[0] >> 4 == 4 else 0x86DD)
    if linktype != LINKTYPE_ETHERNET or len(data) < 14:
        return None
    off, etype = 12, (data[12] << 8) | data[13]
    while etype in (0x8100, 0x88A8) and len(data) >= off + 6:
        off += 4
        etype = (data[off] << 8) | data[off + 1]
    if etype not in (0x0800, 0x86DD):
        return None
    return off + 2, etype
