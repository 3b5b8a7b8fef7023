"""A real server's tunnel endpoint in user space, for the lab's VS/TUN variants.

The kernels the lab runs on may have no tunnel drivers (no ``ipip``,
``gre`` or ``fou`` modules: ``tunl0`` cannot be made), but ``/dev/net/tun``
works.  So a real server of a tunnelling service runs this process: it
creates a tun device holding the VIP (``--dev vip0 --addr VIP/32``) and
takes the director's tunnel packets off its own address:

* IPIP (``--ipip``): a raw socket of protocol 4 gets each packet whole;
  the outer IPv4 header goes, the inner packet is written to the tun device;
* GRE (``--gre``): a raw socket of protocol 47; the GRE header (RFC 2784,
  with the key and sequence fields of RFC 2890 skipped) must carry IPv4
  (0x0800), and with its C bit the GRE checksum must verify;
* GUE (``--gue-port PORT``): a UDP socket on that port (the kernel verifies
  the UDP checksum when there is one); the GUE header (version 0, data
  message, ``proto_ctype`` 4) and its options go, and the remote checksum
  offload option, when present, is applied: the inner checksum, left as the
  pseudo-header sum, is completed from its start to the end of the packet
  (``skb_remcsum_process``).

The sockets also keep the real server's kernel quiet: a protocol with a raw
socket gets no "protocol unreachable", a bound UDP port no "port
unreachable".  The kernel then delivers the inner packets as if they had
come in on ``vip0``; the real server answers the client directly (its
replies leave by its routes, not through this process).

``SIGTERM`` ends it (the tun device goes with its descriptor); it prints
its counters then.  Each wait is bounded (0.5 s per select); bad packets
are counted, never raised.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import select
import signal
import socket
import struct
import subprocess
import sys
from collections import Counter

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IPPROTO_IPIP = 4
IPPROTO_GRE = 47
GRE_CSUM, GRE_KEY, GRE_SEQ = 0x8000, 0x2000, 0x1000
GUE_FLAG_PRIV = 0x0001
GUE_PFLAG_REMCSUM = 0x80000000
ETH_P_IP = 0x0800


def ones_sum(data: bytes) -> int:
    """Folded ones'-complement sum of ``data`` as 16-bit words (0xFFFF for -0)."""
    if len(data) & 1:
        data += b"\0"
    v = int.from_bytes(data, "big")
    if not v:
        return 0
    return v % 0xFFFF or 0xFFFF


def strip_ip(pkt: bytes) -> bytes | None:
    """The payload of an IPv4 packet as a raw socket hands it over (header included)."""
    if len(pkt) < 20 or pkt[0] >> 4 != 4:
        return None
    ihl = (pkt[0] & 15) * 4
    tot = int.from_bytes(pkt[2:4], "big")
    if ihl < 20 or tot < ihl or tot > len(pkt):
        return None
    return pkt[ihl:tot]


def gre_payload(gre: bytes, counts: Counter) -> bytes | None:
    """RFC 2784/2890: the IPv4 payload of a GRE packet, or None (counted)."""
    if len(gre) < 4:
        counts["bad_gre"] += 1
        return None
    flags, proto = struct.unpack_from("!HH", gre)
    if flags & 0x0007 or proto != ETH_P_IP:
        counts["bad_gre"] += 1
        return None
    off = 4
    if flags & GRE_CSUM:
        if ones_sum(gre) != 0xFFFF:
            counts["bad_gre_csum"] += 1
            return None
        off += 4
    off += 4 * bool(flags & GRE_KEY) + 4 * bool(flags & GRE_SEQ)
    return gre[off:] if len(gre) > off else None


def gue_payload(gue: bytes, counts: Counter) -> bytes | None:
    """The inner packet of a GUE (version 0) data message, remote checksum applied."""
    if len(gue) < 4:
        counts["bad_gue"] += 1
        return None
    b0, proto, flags = struct.unpack_from("!BBH", gue)
    if b0 >> 6 != 0 or b0 & 0x20 or proto != IPPROTO_IPIP:
        counts["bad_gue"] += 1  # another version, a control message, not IPv4
        return None
    hlen = 4 + (b0 & 0x1F) * 4
    if len(gue) < hlen + 20:
        counts["bad_gue"] += 1
        return None
    inner = bytearray(gue[hlen:])
    if flags & GUE_FLAG_PRIV and hlen >= 8:
        (pflags,) = struct.unpack_from("!I", gue, 4)
        if pflags & GUE_PFLAG_REMCSUM:
            if hlen < 12:
                counts["bad_gue"] += 1
                return None
            start, offset = struct.unpack_from("!HH", gue, 8)
            if not start < offset <= len(inner) - 2:
                counts["bad_gue"] += 1
                return None
            # The field holds the pseudo-header sum: the sum from start to
            # the end, complemented, is the finished checksum.
            c = ~ones_sum(bytes(inner[start:])) & 0xFFFF
            inner[offset : offset + 2] = c.to_bytes(2, "big")
            counts["remcsum"] += 1
    return bytes(inner)


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="decap", description="A lab real server's IPIP/GUE/GRE decapsulator.")
    p.add_argument("--dev", default="vip0", help="the tun device to create (default %(default)s)")
    p.add_argument("--addr", required=True, help="the VIP with its prefix, e.g. 203.0.113.5/32")
    p.add_argument("--ipip", action="store_true")
    p.add_argument("--gre", action="store_true")
    p.add_argument("--gue-port", type=int, default=0)
    args = p.parse_args(argv)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    tun = open_tun(args.dev)
    socks: dict[int, tuple[socket.socket, str]] = {}
    counts: Counter = Counter()
    try:
        subprocess.run(["ip", "addr", "add", args.addr, "dev", args.dev], check=True)
        subprocess.run(["ip", "link", "set", args.dev, "up"], check=True)
        if args.ipip:
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_IPIP)
            socks[s.fileno()] = (s, "ipip")
        if args.gre:
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_GRE)
            socks[s.fileno()] = (s, "gre")
        if args.gue_port:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("0.0.0.0", args.gue_port))
            socks[s.fileno()] = (s, "gue")
        for s, _kind in socks.values():
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        print("ready", flush=True)
        while not stop:
            try:
                ready, _, _ = select.select(list(socks), [], [], 0.5)
            except InterruptedError:
                continue
            for fd in ready:
                s, kind = socks[fd]
                for _ in range(64):
                    try:
                        data = s.recv(65535, socket.MSG_DONTWAIT)
                    except (BlockingIOError, InterruptedError):
                        break
                    if kind == "gue":
                        inner = gue_payload(data, counts)
                    else:
                        payload = strip_ip(data)
                        if payload is None:
                            counts["bad_ip"] += 1
                            continue
                        inner = payload if kind == "ipip" else gre_payload(payload, counts)
                    if inner is None:
                        continue
                    if len(inner) < 20 or inner[0] >> 4 != 4:
                        counts["bad_inner"] += 1
                        continue
                    try:
                        os.write(tun, inner)
                        counts[kind] += 1
                    except OSError:
                        counts["tun_write_errors"] += 1
    finally:
        for s, _kind in socks.values():
            s.close()
        os.close(tun)
        print("decap: " + " ".join(f"{k}={v}" for k, v in sorted(counts.items())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
