"""One NIC as a memory-mapped AF_PACKET socket: TPACKET_V2 RX and TX rings.

This is the driver's only contact with a network device, the counterpart
of the kernel's netfilter hooks seeing an skb.  The facts it relies on
were measured on Debian 12 with kernel 6.18 (see ``docs/lab.md``):

* ``PACKET_VNET_HDR`` is on, so the NIC's offloads stay on: GSO frames of
  up to 64 KB arrive whole with a 10-byte ``virtio_net_hdr`` in front of
  the Ethernet header, and leave the same way (the kernel segments and
  checksums them on transmit).  Frames here always carry those 10 bytes
  first: a frame buffer is ``vnet header | Ethernet | IP ...``.
* TPACKET_V2, not V3: V3's block-retire timer adds milliseconds of latency
  at low packet rates.
* ``PACKET_IGNORE_OUTGOING``: a socket bound to ETH_P_ALL otherwise
  receives its own transmissions.
* ``PACKET_LOSS``: a TX slot the kernel cannot send is skipped instead of
  wedging the ring; frames the device would drop (oversized non-GSO
  frames) must never be queued at all, the caller checks the MTU.
* ``SO_RCVBUFFORCE``: the default receive buffer holds three super-frames.
* A classic BPF filter (:mod:`ipvs.driver.bpf`) is attached before the
  socket is bound, so only what the director handles reaches Python.

* Frames of :data:`DIRECT_MIN` bytes or more (GSO super-frames) leave
  through a second socket without rings on the same interface, after the
  slots queued before them: the kernel copies such a frame once from
  Python's buffer, where the TX ring costs a copy into the slot and a
  second one in the kernel (an skb built from ring pages is copied again,
  ``skb_copy_ubufs``, when veth passes it to another namespace).  perf
  under iperf3: memcpy fell from 36% to 17% of the daemon's samples.

* RX slots are 2048 bytes (512 per 1 MiB block, 8192 in the default 16
  blocks): a SYN flood fills slots of 69904 bytes, 240 of them, in a
  millisecond, and the kernel then drops frames of every flow while the
  daemon waits for a CPU.  A frame larger than a slot (a GSO super-frame)
  is put whole on the socket's receive queue by the kernel
  (``PACKET_COPY_THRESH``), with a truncated copy marked
  ``TP_STATUS_COPY`` in its slot to keep the order: :meth:`RingSocket.rx`
  reads it from there with ``recv``.
* TX slots are 69904 bytes (15 per 1 MiB block): 42 + 65549 for the
  largest frame when :data:`DIRECT_MIN` is 0.
* A TX slot's frame of up to :data:`LINEAR_MAX` bytes has its vnet
  header's ``hdr_len`` set to the whole frame: ``tpacket_snd`` copies
  that many bytes into the skb's linear part and maps the rest of the
  slot as page fragments, which the kernel copies again into fresh pages
  when veth passes the frame to another namespace (``skb_copy_ubufs``)
  and the receiver's TCP then pulls its headers out of
  (``__pskb_pull_tail``).  A linear skb costs one copy of a small frame
  instead.  perf of the daemon under ab in the lab (PyPy): skb_copy_ubufs
  fell from 3.9% of its samples to 0.9%, ``__pskb_pull_tail`` (1.9%)
  and the page allocations (1.8%) left the profile.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import socket
import struct
import sys

import attrs

SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_COPY_THRESH = 7
PACKET_VERSION = 10
PACKET_TX_RING = 13
PACKET_LOSS = 14
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
TPACKET_V2 = 1
SO_ATTACH_FILTER = 26
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
ETH_P_ALL = 0x0003

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 0x1
TP_STATUS_COPY = 0x2
TP_STATUS_LOSING = 0x4
TP_STATUS_CSUMNOTREADY = 0x8
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_AVAILABLE = 0
TP_STATUS_SEND_REQUEST = 0x1
TP_STATUS_WRONG_FORMAT = 0x4

#: ``struct virtio_net_hdr`` (host byte order) and its flag/GSO values.
VNET_HDR_LEN = 10
VNET = struct.Struct("=BBHHHH")
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_TCPV6 = 4

#: TPACKET_ALIGN(sizeof(struct tpacket2_hdr)): where TX data starts in a slot.
TPACKET2_HDRLEN = 32
FRAME_SIZE = 69904
#: RX slots: 512 per 1 MiB block, room for any frame of a 1500-byte MTU
#: (76 + 1514 bytes); larger ones (GSO) come through the socket's queue.
RX_FRAME_SIZE = 2048
BLOCK_SIZE = 1 << 20
#: Largest Ethernet frame the rings must carry: IPv4 tot_len 65535 + 14.
MAX_FRAME = 65549
#: Frames (vnet header included) from this size on bypass the TX ring (default).
DIRECT_MIN = 8192
#: TX slot frames (vnet header included) up to this size are sent as one
#: linear skb (``hdr_len`` = the frame): any frame of a 1500-byte MTU.
LINEAR_MAX = 2048

log = logging.getLogger("ipvs.driver")

_U32 = struct.Struct("=I")
_RXHDR = struct.Struct("=IIIHH")  # status, len, snaplen, mac, net
_TXHDR = struct.Struct("=III")  # status, len, snaplen
_U16 = struct.Struct("=H")
#: Where ``hdr_len`` is in the vnet header (``struct virtio_net_hdr``).
VNET_HDR_LEN_AT = 2
_TREQ = struct.Struct("=IIII")  # block_size, block_nr, frame_size, frame_nr
_STATS = struct.Struct("=II")  # tp_packets, tp_drops


def _libc_send():
    """``send(fd, buf, n, flags)``: libc's send(2) on a pointer into ``buf``
    itself, through cffi, on PyPy (which ships cffi); None elsewhere.

    PyPy's ``socket.send`` copies a bytearray (or a memoryview of one) into
    a string of its own before the system call: for a 64 KB GSO frame
    (socketpair, PyPy 7.3.11) 6.7 us against 4.4 us this way, and perf of
    ipvsd under iperf3 showed that copy loop at 9% of its samples.
    CPython's ``send`` uses the buffer in place (and has no cffi here).
    """
    if sys.implementation.name != "pypy":
        return None
    try:
        import cffi
    except ImportError:
        return None
    ffi = cffi.FFI()
    ffi.cdef("ssize_t send(int, const void *, size_t, int);")
    libc = ffi.dlopen(None)

    def send(fd: int, buf: bytearray, n: int, flags: int) -> int:
        """Send ``buf[:n]`` on descriptor ``fd``; the bytes sent, or OSError as ``socket.send`` raises it."""
        if not 0 <= n <= len(buf):
            raise ValueError("n must be within the buffer")
        sent = libc.send(fd, ffi.from_buffer(buf), n, flags)
        if sent < 0:
            err = ffi.errno
            raise OSError(err, os.strerror(err))
        return sent

    return send


#: See :func:`_libc_send` (None: ``socket.send``).
LIBC_SEND = _libc_send()


class LentFrame(bytearray):
    """A ring's receive buffer for frames larger than an RX slot, lent to
    the frame handler for one frame and reused for the next large one.

    A fresh 64 KB ``bytearray`` for each GSO super-frame cost more than
    its copy: PyPy allocates a buffer that large outside its nursery and
    counts it towards the next major collection, so a bulk transfer ran a
    full-heap collection every few hundred frames.  The handler sees it as
    any frame (its length is the frame's); one that keeps a frame past its
    return (a neighbour's queue, the SYN guard) keeps :func:`kept` of it.
    """

    __slots__ = ()


def kept(buf: bytearray) -> bytearray:
    """The frame *buf* in a form its receiver may keep after handling it:
    a copy of a ring's :class:`LentFrame`, any other frame itself."""
    return bytearray(buf) if type(buf) is LentFrame else buf


@attrs.define(slots=True)
class RingStats:
    """What one ring socket counted (``rx_*`` from the RX ring, ``tx_*`` TX)."""

    rx_frames: int = 0
    rx_truncated: int = 0
    rx_vlan: int = 0
    rx_kernel_drops: int = 0
    rx_errors: int = 0
    rx_copied: int = 0
    rx_early_drops: int = 0
    tx_frames: int = 0
    tx_direct: int = 0
    tx_ring_full: int = 0
    tx_too_big: int = 0
    tx_errors: int = 0


class RingSocket:
    """An AF_PACKET socket on one interface with RX and TX rings.

    ``rx(handler, batch)`` hands each received frame to ``handler(buf)``
    as a ``bytearray`` that starts with the vnet header (a new one, or for
    a frame larger than a slot the ring's :class:`LentFrame`);
    ``queue(buf, n)`` copies the first ``n`` bytes of such a buffer into
    the next free TX slot and ``flush()`` asks the kernel to send every
    queued slot with one system call.
    """

    #: The receive buffer of frames larger than a slot (made on first use).
    lent: LentFrame | None = None

    def __init__(self, ifname: str, blocks: int = 16, bpf: bytes | None = None,
                 rcvbuf: int = 32 << 20, tx_batch: int = 64, direct_min: int = DIRECT_MIN,
                 rx_frame_size: int = RX_FRAME_SIZE) -> None:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        mm = None
        try:
            sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            sock.setsockopt(SOL_PACKET, PACKET_LOSS, 1)
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
                sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, rcvbuf)
            except PermissionError:  # without CAP_NET_ADMIN: capped at rmem_max
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if rx_frame_size < FRAME_SIZE:
                sock.setsockopt(SOL_PACKET, PACKET_COPY_THRESH, 1)
            if bpf is not None:
                self.attach(sock, bpf)
            rx_per_block = BLOCK_SIZE // rx_frame_size
            per_block = BLOCK_SIZE // FRAME_SIZE
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, _TREQ.pack(BLOCK_SIZE, blocks, rx_frame_size,
                                                                   rx_per_block * blocks))
            sock.setsockopt(SOL_PACKET, PACKET_TX_RING, _TREQ.pack(BLOCK_SIZE, blocks, FRAME_SIZE,
                                                                   per_block * blocks))
            mm = mmap.mmap(sock.fileno(), 2 * BLOCK_SIZE * blocks, mmap.MAP_SHARED,
                           mmap.PROT_READ | mmap.PROT_WRITE)
            sock.bind((ifname, ETH_P_ALL))
        except BaseException:
            if mm is not None:
                mm.close()
            sock.close()
            raise
        #: A second socket, without rings, for large frames (see :meth:`queue`).
        try:
            direct = self._direct_socket(ifname) if direct_min else None
        except BaseException:
            mm.close()
            sock.close()
            raise
        self._setup(ifname, sock, direct, mm, blocks, rx_frame_size, tx_batch, direct_min)

    @classmethod
    def in_memory(cls, ifname: str, sock: socket.socket, blocks: int = 1, tx_batch: int = 64,
                  direct_min: int = DIRECT_MIN, rx_frame_size: int = RX_FRAME_SIZE) -> RingSocket:
        """A ring socket whose rings are an anonymous map and whose system
        calls (``send`` to flush, ``recv_into`` for frames larger than a
        slot, the direct socket's ``send``) go to ``sock``: the same class,
        built by the same assignments as one on a NIC, so that code the JIT
        compiled for one serves the other.  Whoever holds it plays the
        kernel's part (:mod:`ipvs.driver.warm`)."""
        ring = cls.__new__(cls)
        mm = mmap.mmap(-1, 2 * BLOCK_SIZE * blocks)
        ring._setup(ifname, sock, sock if direct_min else None, mm, blocks, rx_frame_size, tx_batch, direct_min)
        return ring

    def _setup(self, ifname: str, sock: socket.socket, direct: socket.socket | None, mm: mmap.mmap, blocks: int,
               rx_frame_size: int, tx_batch: int, direct_min: int) -> None:
        """Every attribute, in one order for every ring (PyPy lays out
        instances with the same attributes set in the same order alike)."""
        rx_per_block = BLOCK_SIZE // rx_frame_size
        per_block = BLOCK_SIZE // FRAME_SIZE
        self.ifname = ifname
        self.stats = RingStats()
        self.nslots = rx_per_block * blocks
        self.ring_bytes = BLOCK_SIZE * blocks
        self.mm = mm
        self.direct = direct
        self.sock = sock
        self.rx_slots = [(i // rx_per_block) * BLOCK_SIZE + (i % rx_per_block) * rx_frame_size
                         for i in range(self.nslots)]
        self.tx_slots = [self.ring_bytes + (i // per_block) * BLOCK_SIZE + (i % per_block) * FRAME_SIZE
                         for i in range(per_block * blocks)]
        #: ``early(mm, l2, snaplen) -> bool``: a frame it says True for is
        #: dropped in its slot, without a copy (the SYN guard's full queues).
        self.early = None
        self.rx_head = 0
        self.tx_head = 0
        self.tx_pending = 0
        #: Largest ``n`` for :meth:`queue`: the slot minus its header.
        self.tx_max = FRAME_SIZE - TPACKET2_HDRLEN
        #: Queued frames that trigger a ``send`` before the batch ends.
        self.tx_batch = tx_batch
        #: Frames (vnet header included) from this size on go through :attr:`direct`.
        self.direct_min = direct_min

    @staticmethod
    def attach(sock: socket.socket, prog: bytes) -> None:
        """SO_ATTACH_FILTER a classic BPF program (``struct sock_fprog``)."""
        import ctypes

        n = len(prog) // 8
        buf = ctypes.create_string_buffer(prog, len(prog))
        fprog = struct.pack("HL", n, ctypes.addressof(buf))
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)

    def set_filter(self, prog: bytes) -> None:
        """Replace the socket filter (atomically, in the kernel)."""
        self.attach(self.sock, prog)

    def fileno(self) -> int:
        """The packet socket's descriptor, for polling."""
        return self.sock.fileno()

    def rx(self, handler, batch: int = 256) -> int:
        """Drain up to ``batch`` received frames; returns how many were seen."""
        mm, slots = self.mm, self.rx_slots
        head, nslots, unpack, release = self.rx_head, self.nslots, _RXHDR.unpack_from, _U32.pack_into
        early = self.early
        n = bad = 0
        while n < batch:
            off = slots[head]
            status, length, snaplen, mac, _net = unpack(mm, off)
            if not status & TP_STATUS_USER:
                break
            n += 1
            frame = None
            if snaplen < length or mac < VNET_HDR_LEN or status & TP_STATUS_VLAN_VALID:
                if status & TP_STATUS_COPY:
                    # Larger than a slot: the whole frame is next in the
                    # socket's queue (taken even if it is then discarded).
                    frame = self._rx_copied(length)
                if frame is None or status & TP_STATUS_VLAN_VALID:
                    # Truncated, or the NIC stripped an 802.1Q tag (the director
                    # runs on untagged ports; a VLAN device is the way to use a tag).
                    self._rx_odd(not status & TP_STATUS_VLAN_VALID)
                    bad += 1
                    frame = None
            elif early is not None and early(mm, off + mac, snaplen):
                self.stats.rx_early_drops += 1
            else:
                # (mm's slice, not mv's: on PyPy a third less time for a small frame)
                frame = bytearray(mm[off + mac - VNET_HDR_LEN : off + mac + snaplen])
            if frame is not None:
                try:
                    handler(frame)
                except Exception:
                    # A bug must cost one frame, not the director: count it,
                    # log the first, go on with the ring.
                    self.stats.rx_errors += 1
                    if self.stats.rx_errors == 1:
                        log.exception("frame handler failed on %s (counted in rx_errors)", self.ifname)
            release(mm, off, TP_STATUS_KERNEL)
            head += 1
            if head == nslots:
                head = 0
        self.rx_head = head
        self.stats.rx_frames += n - bad
        return n

    def holds(self, k: int) -> bool:
        """Whether at least ``k`` received frames (1..nslots) wait in the RX ring.

        The kernel fills the slots in order from the one after its last
        and drops a frame when that slot is still ours, so the waiting
        frames are the slots from :attr:`rx_head` on: one status read.
        """
        return bool(self.mm[self.rx_slots[(self.rx_head + k - 1) % self.nslots]] & TP_STATUS_USER)

    def _rx_copied(self, length: int) -> bytearray | None:
        """The frame the kernel queued on the socket for a ``TP_STATUS_COPY`` slot (vnet header first), or None.

        ``length`` is the slot's ``tp_len``, the whole frame's.  It is
        received into :attr:`lent` (one copy, no new buffer) and lent
        with its length cut to the frame's; one that fills less than half
        of that buffer is copied out instead, since shortening a buffer
        by more than half makes both runtimes reallocate it.
        """
        full = MAX_FRAME + VNET_HDR_LEN
        buf = self.lent
        if buf is None:
            buf = self.lent = LentFrame(full)
        elif len(buf) != full:
            # Back to its size after the last frame (or what a handler made
            # of it): bytes past a frame's end are stale, never shown.
            if len(buf) < full:
                buf += bytes(full - len(buf))
            else:
                del buf[full:]
        try:
            # Into a memoryview of it: given the bytearray itself, PyPy
            # receives into a buffer of its own and copies that over (1.4 of
            # 5.4 us for 64 KB).  Released before the buffer is cut below.
            with memoryview(buf) as view:
                n = self.sock.recv_into(view, min(length, MAX_FRAME) + VNET_HDR_LEN, socket.MSG_DONTWAIT)
        except OSError:
            return None  # not queued (the receive buffer was full): counted as truncated
        self.stats.rx_copied += 1
        if n < full >> 1:
            return buf[:n]  # (a slice of it is a plain bytearray, a copy)
        if n < full:
            del buf[n:]
        return buf

    def _rx_odd(self, truncated: bool) -> None:
        if truncated:
            self.stats.rx_truncated += 1
        else:
            self.stats.rx_vlan += 1

    def queue(self, buf: bytearray, n: int) -> bool:
        """Copy ``buf[:n]`` (vnet header + frame) into the next TX slot.

        A frame of :data:`DIRECT_MIN` bytes or more (a GSO super-frame) is
        sent at once through :attr:`direct` instead, after the slots
        queued before it (so frames leave in order): the kernel copies it
        from ``buf`` into a plain socket buffer, where the ring path would
        cost a copy into the slot here and another one in the kernel (a
        frame built from ring pages is copied again when it crosses into
        another network namespace or is queued on a device).
        """
        direct = self.direct
        if n >= self.direct_min and direct is not None:
            return self._send_direct(direct, buf, n)
        if n > self.tx_max:
            self.stats.tx_too_big += 1
            return False
        mm = self.mm
        off = self.tx_slots[self.tx_head]
        # Every TX status value lives in the low byte (little-endian u32):
        # 0 is AVAILABLE.
        if mm[off]:
            self.flush()
            if mm[off]:
                self.stats.tx_ring_full += 1
                return False
        data = off + TPACKET2_HDRLEN
        # seek + write: on PyPy a third of a slice assignment's time for a
        # small frame (whose slice assignment also takes bytes only).
        mm.seek(data)
        mm.write(buf if n == len(buf) else memoryview(buf)[:n])
        if n <= LINEAR_MAX:
            # The whole frame into the skb's head (see the module docstring).
            _U16.pack_into(mm, data + VNET_HDR_LEN_AT, n - VNET_HDR_LEN)
        # Status, length and snap length in one write: the kernel looks at
        # the TX ring only inside our own send() (flush), never meanwhile.
        _TXHDR.pack_into(mm, off, TP_STATUS_SEND_REQUEST, n, n)
        head = self.tx_head + 1
        self.tx_head = 0 if head == len(self.tx_slots) else head
        self.tx_pending += 1
        if self.tx_pending >= self.tx_batch:
            self.flush()
        return True

    def _send_direct(self, direct: socket.socket, buf: bytearray, n: int) -> bool:
        if n > MAX_FRAME + VNET_HDR_LEN:
            self.stats.tx_too_big += 1
            return False
        self.flush()
        try:
            if LIBC_SEND is not None and isinstance(direct, socket.socket):
                LIBC_SEND(direct.fileno(), buf, n, socket.MSG_DONTWAIT)
            else:
                with memoryview(buf) as view:
                    direct.send(view if n == len(buf) else view[:n], socket.MSG_DONTWAIT)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.ENOBUFS):
                self.stats.tx_ring_full += 1
            else:
                self.stats.tx_errors += 1
            return False
        self.stats.tx_frames += 1
        self.stats.tx_direct += 1
        return True

    @staticmethod
    def _direct_socket(ifname: str) -> socket.socket | None:
        """A TX-only socket (protocol 0: it receives nothing) with the vnet header."""
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 8 << 20)
            except PermissionError:
                pass
            s.bind((ifname, 0))
        except BaseException:
            s.close()
            raise
        return s

    def flush(self) -> None:
        """Hand every queued TX slot to the kernel (one ``send``)."""
        if not self.tx_pending:
            return
        self.stats.tx_frames += self.tx_pending
        self.tx_pending = 0
        try:
            self.sock.send(b"", socket.MSG_DONTWAIT)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ENOBUFS):
                self.stats.tx_errors += 1

    def kernel_drops(self) -> int:
        """PACKET_STATISTICS drops since the last call (the kernel resets them)."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size)
        drops = _STATS.unpack(raw)[1]
        self.stats.rx_kernel_drops += drops
        return drops

    def close(self) -> None:
        """Send what is queued, then unmap the rings and close the sockets (idempotent)."""
        if self.sock.fileno() < 0:
            return
        self.flush()
        if self.direct is not None:
            self.direct.close()
        self.mm.close()
        self.sock.close()

