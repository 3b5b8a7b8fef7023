"""Offline replay: a pcap of frames arriving at the director, through the core.

This is the driver for ``tools/ipvs-replay``: instead of a NIC, frames come
from capture records and the pcap clock drives the core's jiffies.  Every
frame the director would transmit (rewritten packets and generated ICMP
errors) is returned with the timestamp of the frame that caused it.
Ethernet addresses are not routed here: a transmitted frame gets the
director's MAC (the input frame's destination) as source and a zero
destination; comparisons are meant at L3/L4.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ipvs.core import NF_STOLEN, Director
from ipvs.driver.pcap import LINKTYPE_ETHERNET, Record, l3_offset

_ZERO_MAC = bytes(6)


def jiffies(ts: float, hz: int) -> int:
    """The core's tick count for a capture timestamp."""
    return int(ts * hz)


def replay(
    director: Director, records: Iterable[Record], trace: Callable[[str], None] | None = None
) -> list[tuple[float, bytes]]:
    """Run ``records`` through ``director``; return the transmitted frames."""
    out: list[tuple[float, bytes]] = []
    hz = director.ipvs.hz
    director.trace = trace
    for rec in records:
        now = jiffies(rec.ts, hz)
        director.run_timers(now)
        where = l3_offset(rec.data, rec.linktype)
        if where is None:
            if trace is not None:
                trace(f"{rec.ts:.6f} not IP: ignored")
            continue
        l3, _etype = where
        buf = bytearray(rec.data)
        if trace is not None:
            trace(f"{rec.ts:.6f} {describe(buf, l3)}")
        verdict = director.process(buf, l3, now)
        if verdict == NF_STOLEN:
            tot = (buf[l3 + 2] << 8) | buf[l3 + 3]
            frame = buf[: l3 + tot]
            if rec.linktype == LINKTYPE_ETHERNET:
                frame[6:12] = frame[0:6]
                frame[0:6] = _ZERO_MAC
            out.append((rec.ts, bytes(frame)))
            if trace is not None:
                trace(f"    sent {describe(frame, l3)}")
        elif trace is not None:
            trace(f"    verdict {'DROP' if verdict == 0 else 'ACCEPT (not for IPVS)'}")
        for pkt in director.ipvs.outbox:
            eth = _ZERO_MAC + (rec.data[0:6] if rec.linktype == LINKTYPE_ETHERNET else _ZERO_MAC) + b"\x08\x00"
            out.append((rec.ts, eth + bytes(pkt)))
            if trace is not None:
                trace(f"    generated {describe(pkt, 0)}")
        director.ipvs.outbox.clear()
    return out


def describe(buf: bytes | bytearray, l3: int) -> str:
    """A one-line tcpdump-like summary of the IPv4 packet at ``l3``."""
    if len(buf) < l3 + 20 or buf[l3] >> 4 != 4:
        return f"non-IPv4 packet ({len(buf) - l3} bytes)"
    ihl = (buf[l3] & 15) * 4
    proto = buf[l3 + 9]
    src = ".".join(str(b) for b in buf[l3 + 12 : l3 + 16])
    dst = ".".join(str(b) for b in buf[l3 + 16 : l3 + 20])
    l4 = l3 + ihl
    ttl = buf[l3 + 8]
    if proto in (6, 17) and len(buf) >= l4 + 4:
        sp = (buf[l4] << 8) | buf[l4 + 1]
        dp = (buf[l4 + 2] << 8) | buf[l4 + 3]
        extra = ""
        if proto == 6 and len(buf) >= l4 + 14:
            fl = buf[l4 + 13]
            extra = " [" + "".join(c for c, bit in zip("FSRPA", (1, 2, 4, 8, 16), strict=True) if fl & bit) + "]"
        name = "TCP" if proto == 6 else "UDP"
        return f"{name} {src}:{sp} > {dst}:{dp}{extra} ttl {ttl}"
    if proto == 1 and len(buf) >= l4 + 2:
        return f"ICMP {src} > {dst} type {buf[l4]} code {buf[l4 + 1]} ttl {ttl}"
    return f"proto {proto} {src} > {dst} ttl {ttl}"
