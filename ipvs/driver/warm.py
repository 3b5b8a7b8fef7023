"""The JIT's warm-up: synthetic connections through a director of its own.

No kernel counterpart.  The kernel's data path is compiled before it
runs; ipvsd's, on PyPy, is compiled by the JIT while it runs, from the
first frames on.  Without a warm-up, a fresh ipvsd in the lab served its
first thousand connections at a quarter to a half of its steady rate
(1.5-2.1k a second against 4.2-7.0k), and reached 90% of that rate 0.8
to 3.5 seconds after its first packet (``bench/lab.py --only warm``, six
runs, 7 Dec 2026).

So, after its start, in the turns where nothing else waits, ipvsd runs
short TCP connections, the exchange of ``ab`` (SYN, SYN-ACK, ACK, request,
reply, a FIN each way, the last ACK), through a second
:class:`~ipvs.driver.afpacket.AFPacketDriver` and
:class:`~ipvs.core.Director` of its own, on rings in memory
(:meth:`~ipvs.driver.ring.RingSocket.in_memory`, the same class laid
out alike): the loops the JIT compiles for those rings are the ones the
NIC's rings then run.  :class:`WarmUp` plays the kernel's part: it fills
the RX slots, frees the TX slots the driver filled and drains what its
``send`` calls wrote.

It is honest in that it shares nothing but code.  Its director, service,
connections, counters, neighbours and addresses (documentation ones,
never on a wire) are its own; nothing of it reaches the service table,
the connection table, the statistics, a NIC or the nftables tables; it
is dropped when done.  Each frame it gives must leave as the real data
path would send it, and its driver must drop none: otherwise it stops
with a warning, since a warm-up that exercised a drop path would compile
the wrong code.

Differences from running cold, and why:

* The first real frames find compiled loops and functions.  The JIT
  still specialises on what it sees: a path the warm-up does not take
  (IPv6, DR, tunnels, the FTP helper, a scheduler other than ``rr``)
  compiles when real traffic takes it, as before.
* It costs CPU time after the start: :data:`CONNS` connections took 1.3
  to 2.7 seconds of it here, at most ``--warm-up`` seconds (5 by
  default on PyPy), spent only in turns with nothing else to do; a frame
  or a control request that comes meanwhile waits for one round (16
  connections) at most.  Real traffic that comes first compiles the data
  path itself: after 10,000 real frames the warm-up stops.  It raised a PyPy process's resident size by 16
  MiB at its peak and left 7 MiB of it (compiled code among it).

With it, in three interleaved rounds of the same bench, the first
thousand connections ran at 3.3-4.6k a second against 1.6-2.1k without,
and ipvsd was at 90% of its steady rate 0.44-0.55 s after its first
packet against 0.77-3.53 s; the loads after it (short connections,
keep-alive requests, bulk) were no slower.
"""

from __future__ import annotations

import logging
import socket
import struct
import time

from ipvs import ctl, uapi
from ipvs.core import Director
from ipvs.driver.afpacket import AFPacketDriver, Port
from ipvs.driver.neigh import ARPOP_REQUEST, arp_frame
from ipvs.driver.ring import (
    RX_FRAME_SIZE,
    TP_STATUS_CSUMNOTREADY,
    TP_STATUS_KERNEL,
    TP_STATUS_USER,
    VNET_HDR_LEN,
    RingSocket,
)
from ipvs.packet import ip_send_check

log = logging.getLogger("ipvs.driver")

#: Where the frame starts in an RX slot: TPACKET_V2's header padded to 16
#: bytes, the sockaddr_ll and the vnet header (``tp_mac`` is 76).
RX_MAC = 66 + VNET_HDR_LEN
_RXHDR = struct.Struct("=IIIHH")

OUTER, GATEWAY = bytes((198, 51, 100, 1)), bytes((172, 16, 0, 1))
CLIENT, VIP = bytes((198, 51, 100, 2)), bytes((203, 0, 113, 5))
SERVERS = ((bytes((172, 16, 0, 2)), 80), (bytes((172, 16, 0, 3)), 8000))
MAC_OUTER, MAC_INNER = bytes.fromhex("02000000000a"), bytes.fromhex("02000000000b")
MAC_CLIENT = bytes.fromhex("02000000c001")
MAC_SERVERS = (bytes.fromhex("02000000a001"), bytes.fromhex("02000000a002"))

#: TCP flags of the exchange, in order, and which side sends each.
SYN, ACK, PSH_ACK, FIN_ACK, SYN_ACK = 0x02, 0x10, 0x18, 0x11, 0x12
EXCHANGE = (("server", SYN_ACK, 0), ("client", ACK, 0), ("client", PSH_ACK, 80), ("server", PSH_ACK, 240),
            ("client", FIN_ACK, 0), ("server", FIN_ACK, 0), ("client", ACK, 0))
#: Frames a connection takes: the SYN and the exchange.
FRAMES_PER_CONN = 1 + len(EXCHANGE)
#: Client ports: one pass, so that no connection is ever reused.
FIRST_PORT, LAST_PORT = 20000, 60000
#: Connections the warm-up makes (unless its CPU time runs out first): the
#: JIT compiles after a count of runs, not of seconds, and the rate of the
#: warm-up's own connections stopped rising at 20,000-25,000 of them
#: (``bench/driver.py --warm-up``, PyPy 7.3.11, 7 Dec 2026).
CONNS = 25000


def tcp_frame(src: bytes, sport: int, dst: bytes, dport: int, flags: int, payload: bytes, dmac: bytes,
              smac: bytes, seq: int = 1000, ack: int = 0, gso_size: int = 0) -> bytes:
    """A frame as veth hands one over with offloads on: the vnet header
    (checksum to be completed: the TCP checksum holds the pseudo-header's
    sum only), Ethernet, IPv4, TCP; a TCPv4 GSO super-frame when
    ``gso_size`` is given."""
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 1, 0x4000, 64, socket.IPPROTO_TCP,
                               0, src, dst))
    ip_send_check(ip, 0)
    pseudo = sum(struct.unpack("!4H", src + dst)) + socket.IPPROTO_TCP + 20 + len(payload)
    pseudo = (pseudo & 0xFFFF) + (pseudo >> 16)
    th = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 64240, pseudo & 0xFFFF, 0)
    gso = (1, 66, gso_size) if gso_size else (0, 0, 0)  # VIRTIO_NET_HDR_GSO_TCPV4, hdr_len, gso_size
    vnet = struct.pack("=BBHHHH", 1, *gso, 34, 16)  # NEEDS_CSUM at the TCP header's offset 16
    return vnet + dmac + smac + b"\x08\x00" + bytes(ip) + th + payload


class MemoryKernel:
    """The kernel's part for one in-memory ring: RX slots filled, TX slots
    freed, and the datagrams its ``send`` calls wrote drained (the empty
    ones of ``flush``, the frames of its direct socket)."""

    def __init__(self, name: str, tx_batch: int = 64) -> None:
        self.sock, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in (self.sock, self.peer):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.peer.setblocking(False)
        # Four blocks: 60 TX slots, more than a round of the warm-up fills
        # before this kernel frees them.
        self.ring = RingSocket.in_memory(name, self.sock, blocks=4, tx_batch=tx_batch)
        self.fill_at = 0
        #: Frames the driver sent: TX slots, and datagrams of its direct socket.
        self.sent = 0
        self._drain = bytearray(1 << 17)

    def fill(self, frames: list[bytes]) -> None:
        """Frames (vnet header first, each fitting a slot) into the next RX slots, as the kernel does."""
        ring, mm = self.ring, self.ring.mm
        for f in frames:
            off = ring.rx_slots[self.fill_at]
            n = len(f) - VNET_HDR_LEN
            if RX_MAC + n > RX_FRAME_SIZE:
                raise ValueError(f"a frame of {n} bytes does not fit an RX slot")
            mm[off + RX_MAC - VNET_HDR_LEN : off + RX_MAC + n] = f
            _RXHDR.pack_into(mm, off, TP_STATUS_USER | TP_STATUS_CSUMNOTREADY, n, n, RX_MAC, RX_MAC + 14)
            self.fill_at = (self.fill_at + 1) % ring.nslots

    def complete(self) -> None:
        """Every queued TX slot sent and freed; the socket's datagrams read."""
        mm = self.ring.mm
        for off in self.ring.tx_slots:
            if mm[off]:
                mm[off] = TP_STATUS_KERNEL
                self.sent += 1
        while True:
            try:
                n = self.peer.recv_into(self._drain)
            except BlockingIOError:
                return
            if n:  # flush's send(b"") is a wake-up, not a frame
                self.sent += 1

    def close(self) -> None:
        """Unmap the ring and close both ends of the socket pair."""
        self.ring.mm.close()
        self.sock.close()
        self.peer.close()


class WarmUp:
    """Short connections through a throwaway director on rings in memory,
    a round at a time, until ``target`` of them are made or ``budget``
    seconds of CPU time are spent."""

    def __init__(self, like: AFPacketDriver, budget: float, conns_per_round: int = 16, target: int = CONNS) -> None:
        self.budget = budget
        self.target = min(target, LAST_PORT - FIRST_PORT)
        self.conns_per_round = conns_per_round
        self.spent = 0.0
        self.conns = 0
        self.done = budget <= 0
        self.failed = False
        self.port = FIRST_PORT
        d = Director()
        su = ctl.ServiceUser(addr=VIP, port=80, sched_name="rr")
        ctl.add_service(d.ipvs, su)
        for addr, port in SERVERS:
            ctl.add_dest(d.ipvs, su, ctl.DestUser(addr=addr, port=port, conn_flags=uapi.IP_VS_CONN_F_MASQ))
        self.d = d
        tx_batch = like.outer.ring.tx_batch if isinstance(like.outer.ring, RingSocket) else 64
        self.kernels = {role: MemoryKernel(f"warm-{role}", tx_batch) for role in ("outer", "inner")}
        hz = d.ipvs.hz
        self.outer = Port("warm-outer", "outer", int.from_bytes(OUTER, "big"), 0xFFFFFF00, hz, MAC_OUTER, 1500,
                          self.kernels["outer"].ring)
        self.inner = Port("warm-inner", "inner", int.from_bytes(GATEWAY, "big"), 0xFFFFFF00, hz, MAC_INNER, 1500,
                          self.kernels["inner"].ring)
        # Spare mode whatever the real driver's: this one must never touch nftables.
        self.drv = AFPacketDriver(d, [self.outer, self.inner], "spare", batch=like.batch, syn_guard=like.syn_guard)
        self.now = like.now
        # The neighbours announce themselves, as the lab's hosts do with their first ARP request.
        self._give(self.outer, [bytes(VNET_HDR_LEN) + arp_frame(ARPOP_REQUEST, MAC_CLIENT, _ip(CLIENT), bytes(6),
                                                                 _ip(OUTER), b"\xff" * 6)[VNET_HDR_LEN:]])
        self._give(self.inner, [bytes(VNET_HDR_LEN) + arp_frame(ARPOP_REQUEST, mac, _ip(addr), bytes(6),
                                                                 _ip(GATEWAY), b"\xff" * 6)[VNET_HDR_LEN:]
                                for (addr, _), mac in zip(SERVERS, MAC_SERVERS)])
        self.expected = self.sent()

    def sent(self) -> int:
        """Frames its driver has sent so far, on both rings."""
        return sum(k.sent for k in self.kernels.values())

    def _give(self, port: Port, frames: list[bytes]) -> None:
        """``frames`` through ``port``'s ring as the daemon's loop takes them, a batch at a time."""
        kernel = self.kernels[port.role]
        batch = self.drv.batch
        for i in range(0, len(frames), batch):
            kernel.fill(frames[i : i + batch])
            self.drv.on_readable(port.ring.fileno(), self.now)
            for k in self.kernels.values():
                k.complete()

    def step(self) -> bool:
        """One round of connections; True when the warm-up is over."""
        if self.done:
            return True
        t0 = time.thread_time()
        try:
            self._round()
        finally:
            self.spent += time.thread_time() - t0
        if self.sent() != self.expected or self.drv.drops:
            self.failed = True
            log.warning("JIT warm-up stopped: %d of %d synthetic frames sent, drops %s", self.sent(),
                        self.expected, dict(self.drv.drops))
        if self.failed or self.spent >= self.budget or self.conns >= self.target:
            self.finish()
        return self.done

    def _round(self) -> None:
        sports = range(self.port, self.port + self.conns_per_round)
        self.port += self.conns_per_round
        self._give(self.outer, [tcp_frame(CLIENT, s, VIP, 80, SYN, b"", MAC_OUTER, MAC_CLIENT) for s in sports])
        peers = []
        for s in sports:
            cp = self.d.ipvs.conn_tab.in_find(b"\x06" + CLIENT + VIP + struct.pack("!HH", s, 80))
            if cp is None:
                self.failed = True
                return
            mac = MAC_SERVERS[[a for a, _ in SERVERS].index(cp.daddr)]
            peers.append((s, cp.daddr, cp.dport, mac))
        for side, flags, size in EXCHANGE:
            if side == "client":
                self._give(self.outer, [tcp_frame(CLIENT, s, VIP, 80, flags, b"G" * size, MAC_OUTER, MAC_CLIENT)
                                        for s, _a, _p, _m in peers])
            else:
                self._give(self.inner, [tcp_frame(a, p, CLIENT, s, flags, b"H" * size, MAC_INNER, m)
                                        for s, a, p, m in peers])
        self.conns += len(peers)
        self.expected += FRAMES_PER_CONN * len(peers)

    def finish(self, cut_short: str = "") -> None:
        """Drop the throwaway director and its rings (``cut_short``: why it stops before its end)."""
        if not self.failed:
            log.info("JIT warm-up: %d synthetic connections in %.2f s of CPU time%s", self.conns, self.spent,
                     f" (stopped: {cut_short})" if cut_short else "")
        self.done = True
        for k in self.kernels.values():
            k.close()
        self.kernels = {}
        self.drv = self.d = None  # type: ignore[assignment]


def _ip(addr: bytes) -> int:
    return int.from_bytes(addr, "big")
