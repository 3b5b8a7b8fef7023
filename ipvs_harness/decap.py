"""A real server's tunnel endpoint in user space, for the lab's VS/TUN variants.

The kernels the lab runs on may have no tunnel drivers (no ``ipip``,
``gre`` or ``fou`` modules: ``tunl0`` cannot be made), but ``/dev/net/tun``
works.  So a real server of a tunnelling service runs this process: it
creates a tun device holding the VIP (``--dev vip0 --addr VIP/32``, and
``--addr VIP6/128`` for an IPv6 VIP) and takes the director's tunnel
packets off its own address, with an outer IPv4 header, and with
``--ipv6`` an outer IPv6 header too; the inner packet may be of either
family (IPv4 or IPv6 in IPv4 or IPv6, as ``ip_vs_tunnel_xmit`` and
``ip_vs_tunnel_xmit_v6`` send them):

* IPIP (``--ipip``): raw sockets of protocols 4 (IPv4 inside) and 41 (IPv6
  inside); an IPv4 one gets each packet whole and the outer header goes,
  an IPv6 one gets the payload only; the inner packet is written to the
  tun device;
* GRE (``--gre``): a raw socket of protocol 47; the GRE header (RFC 2784,
  with the key and sequence fields of RFC 2890 skipped) must carry IPv4
  (0x0800) or IPv6 (0x86DD), and with its C bit the GRE checksum must
  verify;
* GUE (``--gue-port PORT``): a UDP socket on that port (the kernel verifies
  the UDP checksum when there is one; over IPv6 the socket accepts the
  zero checksum of RFC 6935, ``UDP_NO_CHECK6_RX``, which the director
  sends without ``--tun-csum``); the GUE header (version 0, data message,
  ``proto_ctype`` 4 or 41) and its options go, and the remote checksum
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
IPPROTO_IPV6 = 41
IPPROTO_GRE = 47
#: ``include/uapi/linux/udp.h``: accept UDP/IPv6 datagrams with a zero checksum.
UDP_NO_CHECK6_RX = 102
GRE_CSUM, GRE_KEY, GRE_SEQ = 0x8000, 0x2000, 0x1000
GUE_FLAG_PRIV = 0x0001
GUE_PFLAG_REMCSUM = 0x80000000
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD


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
    """RFC 2784/2890: the IPv4 or IPv6 payload of a GRE packet, or None (counted)."""
    if len(gre) < 4:
        counts["bad_gre"] += 1
        return None
    flags, proto = struct.unpack_from("!HH", gre)
    if flags & 0x0007 or proto not in (ETH_P_IP, ETH_P_IPV6):
        counts["bad_gre"] += 1
        return None
    off = 4
    if flags & GRE_CSUM:
        if ones_sum(gre) != 0xFFFF:
            counts["bad_gre_csum"] += 1
            return None
        off += 4
    off += 4 * bool(flags & GRE_KEY) + 4 * bool(flags & GRE_SEQ)
    inner = gre[off:]
    if not inner or inner[0] >> 4 != (4 if proto == ETH_P_IP else 6):
        counts["bad_gre"] += 1  # (the protocol type says the other family)
        return None
    return inner


def gue_payload(gue: bytes, counts: Counter) -> bytes | None:
    """The inner packet of a GUE (version 0) data message, remote checksum applied."""
    if len(gue) < 4:
        counts["bad_gue"] += 1
        return None
    b0, proto, flags = struct.unpack_from("!BBH", gue)
    if b0 >> 6 != 0 or b0 & 0x20 or proto not in (IPPROTO_IPIP, IPPROTO_IPV6):
        counts["bad_gue"] += 1  # another version, a control message, not IP
        return None
    hlen = 4 + (b0 & 0x1F) * 4
    if len(gue) < hlen + 20:
        counts["bad_gue"] += 1
        return None
    inner = bytearray(gue[hlen:])
    if inner[0] >> 4 != (4 if proto == IPPROTO_IPIP else 6):
        counts["bad_gue"] += 1  # (proto_ctype says the other family)
        return None
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


def inner_ok(inner: bytes) -> bool:
    """A whole IPv4 or IPv6 header at least (the tun device takes either:
    without packet information it reads the family from the version)."""
    v = inner[0] >> 4 if inner else 0
    return (v == 4 and len(inner) >= 20) or (v == 6 and len(inner) >= 40)


def open_sockets(ipip: bool, gre: bool, gue_port: int, ipv6: bool) -> list[tuple[socket.socket, str, bool]]:
    """The sockets that take the tunnel packets: (socket, kind, outer IPv4?)."""
    out: list[tuple[socket.socket, str, bool]] = []
    families = [socket.AF_INET] + ([socket.AF_INET6] if ipv6 else [])
    try:
        for af in families:
            v4 = af == socket.AF_INET
            if ipip:
                for proto in (IPPROTO_IPIP, IPPROTO_IPV6):
                    out.append((socket.socket(af, socket.SOCK_RAW, proto), "ipip", v4))
            if gre:
                out.append((socket.socket(af, socket.SOCK_RAW, IPPROTO_GRE), "gre", v4))
            if gue_port:
                s = socket.socket(af, socket.SOCK_DGRAM)
                out.append((s, "gue", v4))
                if v4:
                    s.bind(("0.0.0.0", gue_port))
                else:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    s.setsockopt(socket.IPPROTO_UDP, UDP_NO_CHECK6_RX, 1)
                    s.bind(("::", gue_port))
    except OSError:
        for s, _kind, _v4 in out:
            s.close()
        raise
    return out


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
    p.add_argument("--addr", required=True, action="append",
                   help="the VIP with its prefix, e.g. 203.0.113.5/32 (repeatable: an IPv6 VIP too)")
    p.add_argument("--ipv6", action="store_true", help="also take tunnel packets with an outer IPv6 header")
    p.add_argument("--ipip", action="store_true")
    p.add_argument("--gre", action="store_true")
    p.add_argument("--gue-port", type=int, default=0)
    args = p.parse_args(argv)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    tun = open_tun(args.dev)
    socks: dict[int, tuple[socket.socket, str, bool]] = {}
    counts: Counter = Counter()
    try:
        if any(":" in a for a in args.addr):
            # (New devices may start with IPv6 off: the lab's default.)
            with open(f"/proc/sys/net/ipv6/conf/{args.dev}/disable_ipv6", "w") as f:
                f.write("0\n")
        for addr in args.addr:
            subprocess.run(["ip", "addr", "add", addr, "dev", args.dev] + (["nodad"] if ":" in addr else []),
                           check=True)
        subprocess.run(["ip", "link", "set", args.dev, "up"], check=True)
        for s, kind, v4 in open_sockets(args.ipip, args.gre, args.gue_port, args.ipv6):
            socks[s.fileno()] = (s, kind, v4)
        for s, _kind, _v4 in socks.values():
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        print("ready", flush=True)
        while not stop:
            try:
                ready, _, _ = select.select(list(socks), [], [], 0.5)
            except InterruptedError:
                continue
            for fd in ready:
                s, kind, v4 = socks[fd]
                for _ in range(64):
                    try:
                        data = s.recv(65535, socket.MSG_DONTWAIT)
                    except (BlockingIOError, InterruptedError):
                        break
                    if kind == "gue":
                        inner = gue_payload(data, counts)
                    else:
                        # An IPv6 raw socket hands over the payload alone.
                        payload = strip_ip(data) if v4 else data
                        if payload is None:
                            counts["bad_ip"] += 1
                            continue
                        inner = payload if kind == "ipip" else gre_payload(payload, counts)
                    if inner is None:
                        continue
                    if not inner_ok(inner):
                        counts["bad_inner"] += 1
                        continue
                    try:
                        os.write(tun, inner)
                        counts[kind if v4 else kind + "6"] += 1
                    except OSError:
                        counts["tun_write_errors"] += 1
    finally:
        for s, _kind, _v4 in socks.values():
            s.close()
        os.close(tun)
        print("decap: " + " ".join(f"{k}={v}" for k, v in sorted(counts.items())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
