"""RingSocket's slot handling on an anonymous memory map, with fake sockets.

The kernel's side is played by the test: it fills RX slots and reads what
the TX slots and the sockets were given.  Real rings run in tests/lab.
"""

from __future__ import annotations

import errno
import mmap
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipvs.driver import ring as R

SLOT = 16384  # above DIRECT_MIN, as the real 69904-byte slots are
NSLOTS = 8


class FakeSock:
    """Records send() calls in a shared log; can fail with an errno."""

    def __init__(self, name: str, log: list, fail: int = 0) -> None:
        self.name, self.log, self.fail = name, log, fail

    def send(self, data, flags=0) -> int:
        if self.fail:
            raise OSError(self.fail, "fake")
        self.log.append((self.name, bytes(data)))
        return len(data)


def mem_ring(tx_batch: int = 16, direct: bool = True, fail: int = 0):
    """A RingSocket over anonymous memory (what __init__ builds, without a socket)."""
    r = R.RingSocket.__new__(R.RingSocket)
    r.ifname = "test0"
    r.stats = R.RingStats()
    r.nslots = NSLOTS
    r.ring_bytes = SLOT * NSLOTS
    r.mm = mmap.mmap(-1, 2 * r.ring_bytes)
    r.rx_slots = [i * SLOT for i in range(NSLOTS)]
    r.tx_slots = [r.ring_bytes + off for off in r.rx_slots]
    r.rx_head = r.tx_head = r.tx_pending = 0
    r.tx_max = SLOT - R.TPACKET2_HDRLEN
    r.early = None
    r.tx_batch = tx_batch
    r.direct_min = R.DIRECT_MIN
    log: list = []
    r.sock = FakeSock("ring", log)
    r.direct = FakeSock("direct", log, fail) if direct else None
    return r, log


def kernel_fill(r, frame: bytes, status: int = R.TP_STATUS_USER, snaplen: int | None = None, i: int = 0) -> None:
    """Put ``frame`` (vnet header first) into RX slot ``i`` as TPACKET_V2 does (tp_mac 76)."""
    off = r.rx_slots[i]
    mac = 76
    n = len(frame) - R.VNET_HDR_LEN
    r.mm[off + mac - R.VNET_HDR_LEN : off + mac + n] = frame
    struct.pack_into("=IIIHH", r.mm, off, status, n, n if snaplen is None else snaplen, mac, mac + 14)


def as_sent(frame: bytes) -> bytes:
    """``frame`` as queue() leaves it in a TX slot: one of up to LINEAR_MAX bytes
    with its vnet header's ``hdr_len`` set to the frame after that header."""
    if len(frame) > R.LINEAR_MAX:
        return bytes(frame)
    return bytes(frame[:2]) + struct.pack("=H", len(frame) - R.VNET_HDR_LEN) + bytes(frame[4:])


def tx_slot(r, i: int) -> tuple[int, bytes]:
    off = r.tx_slots[i]
    status, n, snap = struct.unpack_from("=III", r.mm, off)
    assert n == snap
    return status, bytes(r.mm[off + R.TPACKET2_HDRLEN : off + R.TPACKET2_HDRLEN + n])


def test_rx_hands_over_vnet_header_and_frame_and_releases_slots():
    r, _ = mem_ring()
    frames = [bytes([i]) * 10 + bytes(range(60 + i)) for i in range(3)]
    for i, f in enumerate(frames):
        kernel_fill(r, f, i=i)
    got = []
    assert r.rx(lambda b: got.append(bytes(b)), 16) == 3
    assert got == frames
    assert r.stats.rx_frames == 3
    assert all(struct.unpack_from("=I", r.mm, r.rx_slots[i])[0] == R.TP_STATUS_KERNEL for i in range(3))
    assert r.rx_head == 3


def test_rx_counts_truncated_and_vlan_frames_without_handing_them_over():
    r, _ = mem_ring()
    kernel_fill(r, b"\0" * 70, snaplen=30, i=0)
    kernel_fill(r, b"\0" * 70, status=R.TP_STATUS_USER | R.TP_STATUS_VLAN_VALID, i=1)
    kernel_fill(r, b"\1" * 70, i=2)
    got = []
    assert r.rx(got.append, 16) == 3
    assert [bytes(b) for b in got] == [b"\1" * 70]
    assert (r.stats.rx_truncated, r.stats.rx_vlan, r.stats.rx_frames) == (1, 1, 1)


def test_rx_stops_at_batch_and_a_handler_bug_costs_one_frame():
    r, _ = mem_ring()
    for i in range(4):
        kernel_fill(r, bytes([i]) * 70, i=i)

    def handler(b):
        if b[0] == 1:
            raise ValueError("bug")

    assert r.rx(handler, 2) == 2
    assert r.stats.rx_errors == 1
    assert r.rx(handler, 16) == 2
    assert r.stats.rx_frames == 4


def test_small_frames_fill_slots_and_go_out_every_tx_batch():
    r, log = mem_ring(tx_batch=3)
    frames = [bytearray(bytes([i]) * (80 + i)) for i in range(4)]
    for f in frames[:3]:
        assert r.queue(f, len(f))
    assert log == [("ring", b"")]  # the third frame triggered the send
    assert r.queue(frames[3], len(frames[3]))
    assert [tx_slot(r, i) for i in range(4)] == [(R.TP_STATUS_SEND_REQUEST, as_sent(f)) for f in frames]
    r.flush()
    assert log == [("ring", b""), ("ring", b"")]
    assert r.stats.tx_frames == 4 and r.stats.tx_direct == 0


def test_queue_copies_only_the_first_n_bytes():
    r, _ = mem_ring()
    buf = bytearray(b"a" * 100 + b"tail")
    assert r.queue(buf, 100)
    assert tx_slot(r, 0)[1] == as_sent(b"a" * 100)
    assert buf == b"a" * 100 + b"tail"  # the caller's buffer is left as it was


@pytest.mark.parametrize("n", [14 + R.VNET_HDR_LEN, 1514 + R.VNET_HDR_LEN, R.LINEAR_MAX])
def test_a_small_frame_asks_for_a_linear_skb(n):
    """hdr_len = the whole frame: tpacket_snd copies it into the skb's head
    instead of mapping ring pages that veth would copy again."""
    r, _ = mem_ring()
    frame = bytearray(b"\x01\x00" + struct.pack("=H", 54) + bytes(range(6)) + b"f" * (n - R.VNET_HDR_LEN))
    assert r.queue(frame, n)
    status, got = tx_slot(r, 0)
    assert struct.unpack_from("=H", got, 2)[0] == n - R.VNET_HDR_LEN
    assert got[:2] + got[4:] == frame[:2] + frame[4:]  # flags, GSO fields and the frame untouched
    assert struct.unpack_from("=H", frame, 2)[0] == 54


def test_a_larger_ring_frame_keeps_its_hdr_len():
    r, _ = mem_ring()
    n = R.LINEAR_MAX + 1
    frame = bytearray(b"\x01\x01" + struct.pack("=H", 66) + bytes(6) + b"g" * (n - R.VNET_HDR_LEN))
    assert r.queue(frame, n)
    assert tx_slot(r, 0)[1] == bytes(frame)


def test_a_super_frame_leaves_through_the_direct_socket_after_what_was_queued():
    r, log = mem_ring()
    small = bytearray(b"s" * 90)
    big = bytearray(b"B" * R.DIRECT_MIN)
    assert r.queue(small, len(small))
    assert r.queue(big, len(big))
    # The queued slot was sent first, then the big frame: the order on the wire.
    assert log == [("ring", b""), ("direct", bytes(big))]
    assert r.tx_pending == 0
    assert tx_slot(r, 1)[0] == R.TP_STATUS_AVAILABLE  # no slot used for the big frame
    assert (r.stats.tx_frames, r.stats.tx_direct) == (2, 1)


def test_direct_send_failure_is_counted_not_raised():
    r, log = mem_ring(fail=errno.ENOBUFS)
    big = bytearray(R.DIRECT_MIN)
    assert not r.queue(big, len(big))
    assert r.stats.tx_ring_full == 1 and r.stats.tx_direct == 0
    r2, _ = mem_ring(fail=errno.ENETDOWN)
    assert not r2.queue(big, len(big))
    assert r2.stats.tx_errors == 1


def test_oversized_frames_are_refused():
    r, log = mem_ring()
    assert not r.queue(bytearray(R.MAX_FRAME + R.VNET_HDR_LEN + 1), R.MAX_FRAME + R.VNET_HDR_LEN + 1)
    r2, _ = mem_ring(direct=False)
    assert not r2.queue(bytearray(SLOT), SLOT)  # larger than a slot, no direct socket
    assert r.stats.tx_too_big == 1 and r2.stats.tx_too_big == 1
    assert log == []


def test_a_full_ring_is_flushed_then_counted():
    r, log = mem_ring(tx_batch=100)
    for _ in range(NSLOTS):
        assert r.queue(bytearray(64), 64)
    # The fake kernel never frees a slot: the next frame finds the ring full.
    assert not r.queue(bytearray(64), 64)
    assert log == [("ring", b"")] and r.stats.tx_ring_full == 1


@given(st.lists(st.integers(min_value=60, max_value=R.DIRECT_MIN + 200), min_size=1, max_size=30))
def test_frames_leave_in_queue_order(sizes):
    """Whatever the mix of slot and direct frames, the kernel sees them in order."""
    r, log = mem_ring(tx_batch=5)
    sent: list[bytes] = []
    kernel_tail = 0

    def drain_slots():
        # The kernel's part of each ring send(): every SEND_REQUEST slot in order.
        nonlocal kernel_tail
        while True:
            off = r.tx_slots[kernel_tail]
            status, n, _ = struct.unpack_from("=III", r.mm, off)
            if status != R.TP_STATUS_SEND_REQUEST:
                return
            sent.append(bytes(r.mm[off + R.TPACKET2_HDRLEN : off + R.TPACKET2_HDRLEN + n]))
            struct.pack_into("=I", r.mm, off, R.TP_STATUS_AVAILABLE)
            kernel_tail = (kernel_tail + 1) % NSLOTS

    class KernelSock(FakeSock):
        def send(self, data, flags=0):
            if self.name == "ring":
                drain_slots()
            else:
                sent.append(bytes(data))
            return len(data)

    r.sock, r.direct = KernelSock("ring", log), KernelSock("direct", log)
    frames = [bytearray(i.to_bytes(2, "big") * (n // 2)) for i, n in enumerate(sizes)]
    for f in frames:
        assert r.queue(f, len(f))
    r.flush()
    assert sent == [as_sent(f) for f in frames]


@pytest.mark.parametrize("n", [R.DIRECT_MIN - 1, R.DIRECT_MIN])
def test_direct_threshold(n):
    r, log = mem_ring()
    assert r.queue(bytearray(n), n)
    assert r.stats.tx_direct == (n >= R.DIRECT_MIN)


class QueueSock(FakeSock):
    """A socket whose receive queue holds the frames the kernel copied there (``TP_STATUS_COPY``)."""

    def __init__(self, frames: list[bytes]) -> None:
        super().__init__("ring", [])
        self.frames = frames

    def recv_into(self, buf, n, flags=0) -> int:
        if not self.frames:
            raise BlockingIOError(errno.EAGAIN, "empty")
        f = self.frames.pop(0)
        buf[: len(f)] = f
        return len(f)


def test_a_frame_larger_than_its_slot_is_read_whole_from_the_socket_in_ring_order():
    r, _ = mem_ring()
    big = b"\0" * 10 + bytes(range(256)) * 40  # a GSO frame: the slot holds only its start
    r.sock = QueueSock([big])
    kernel_fill(r, b"\1" * 70, i=0)
    kernel_fill(r, big[:200], status=R.TP_STATUS_USER | R.TP_STATUS_COPY, snaplen=100, i=1)
    struct.pack_into("=I", r.mm, r.rx_slots[1] + 4, len(big) - R.VNET_HDR_LEN)  # tp_len: the whole frame
    kernel_fill(r, b"\2" * 70, i=2)
    got = []
    assert r.rx(lambda b: got.append(bytes(b)), 16) == 3
    assert got == [b"\1" * 70, big, b"\2" * 70]
    assert (r.stats.rx_copied, r.stats.rx_truncated, r.stats.rx_frames) == (1, 0, 3)


def test_a_copied_frame_missing_from_the_socket_counts_as_truncated():
    r, _ = mem_ring()
    r.sock = QueueSock([])
    kernel_fill(r, b"\0" * 70, status=R.TP_STATUS_USER | R.TP_STATUS_COPY, snaplen=30, i=0)
    got = []
    assert r.rx(got.append, 16) == 1
    assert got == [] and r.stats.rx_truncated == 1 and r.stats.rx_copied == 0


def test_early_drops_a_frame_in_its_slot_and_sees_the_frame_where_the_kernel_put_it():
    r, _ = mem_ring()
    seen = []

    def early(mm, l2, snaplen):
        seen.append((bytes(mm[l2 : l2 + snaplen]), snaplen))
        return mm[l2] == 0xEE

    r.early = early
    kernel_fill(r, b"\0" * 10 + b"\xee" * 60, i=0)
    kernel_fill(r, b"\0" * 10 + b"\x11" * 60, i=1)
    got = []
    assert r.rx(lambda b: got.append(bytes(b)), 16) == 2
    assert seen == [(b"\xee" * 60, 60), (b"\x11" * 60, 60)]
    assert got == [b"\0" * 10 + b"\x11" * 60]
    assert r.stats.rx_early_drops == 1
    assert struct.unpack_from("=I", r.mm, r.rx_slots[0])[0] == R.TP_STATUS_KERNEL


def test_holds_tells_how_deep_the_rx_ring_is_from_its_head():
    r, _ = mem_ring()
    assert not r.holds(1)
    for i in range(3):
        kernel_fill(r, b"\0" * 70, i=i)
    assert r.holds(1) and r.holds(3) and not r.holds(4)
    r.rx(lambda b: None, 2)
    assert r.holds(1) and not r.holds(2)


def _copied(r, frame: bytes, i: int) -> None:
    """``frame`` as the kernel passes one larger than a slot: its start in slot ``i``, the whole on the queue."""
    r.sock.frames.append(frame)
    kernel_fill(r, frame[:200], status=R.TP_STATUS_USER | R.TP_STATUS_COPY, snaplen=100, i=i)
    struct.pack_into("=I", r.mm, r.rx_slots[i] + 4, len(frame) - R.VNET_HDR_LEN)


def test_large_copied_frames_come_in_one_reused_buffer_cut_to_each_frame():
    r, _ = mem_ring()
    r.sock = QueueSock([])
    first = b"\0" * 10 + b"\xaa" * 60000
    second = b"\0" * 10 + b"\xbb" * 50000  # shorter: nothing of the first shows past its end
    _copied(r, first, 0)
    _copied(r, second, 1)
    got = []
    assert r.rx(lambda b: got.append((b, bytes(b))), 16) == 2
    (buf1, seen1), (buf2, seen2) = got
    assert seen1 == first and seen2 == second
    assert buf1 is buf2 is r.lent and type(buf1) is R.LentFrame
    # Grown back for the next frame, whatever the handler made of it.
    del r.lent[100:]
    third = b"\0" * 10 + b"\xcc" * (R.MAX_FRAME - 100)
    _copied(r, third, 2)
    assert r.rx(lambda b: got.append((b, bytes(b))), 16) == 1
    assert got[2][1] == third and got[2][0] is r.lent


def test_a_copied_frame_under_half_the_buffer_is_a_plain_copy():
    r, _ = mem_ring()
    r.sock = QueueSock([])
    small = b"\0" * 10 + b"\x11" * 3000
    _copied(r, small, 0)
    got = []
    assert r.rx(got.append, 16) == 1
    assert got == [bytearray(small)] and type(got[0]) is bytearray and got[0] is not r.lent


def test_kept_copies_only_a_lent_buffer():
    lent = R.LentFrame(b"abc")
    own = bytearray(b"abc")
    assert R.kept(own) is own
    k = R.kept(lent)
    assert k == lent and k is not lent and type(k) is bytearray


def test_large_frames_reach_the_sockets_as_memoryviews():
    """recv_into and the direct send get a memoryview of the frame, never
    the bytearray itself (PyPy copies a bytearray once more), and the
    view is released, so that the buffer can be cut to the next frame."""
    r, log = mem_ring()
    types = []

    class Spy(QueueSock):
        def recv_into(self, buf, n, flags=0) -> int:
            types.append(type(buf))
            return super().recv_into(buf, n, flags)

        def send(self, data, flags=0) -> int:
            types.append(type(data))
            return len(data)

    r.sock = Spy([])
    frames = [b"\0" * 10 + bytes([k]) * (60000 - k * 1000) for k in range(3)]
    for i, f in enumerate(frames):
        _copied(r, f, i)
    got = []
    r.rx(lambda b: got.append(bytes(b)), 16)  # CPython raises BufferError if a view were kept
    assert got == frames
    r.direct = Spy([])
    big = bytearray(b"d" * 30000)
    assert r.queue(big, 20000)
    assert types == [memoryview] * 4
    del big[10:]  # the sent frame's view is released too


@pytest.mark.skipif(R.LIBC_SEND is None, reason="socket.send is used on this runtime (CPython)")
def test_libc_send_sends_the_first_n_bytes_and_raises_errors_as_socket_send():
    import socket

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        buf = R.LentFrame(b"frame" + bytes(range(200)) * 300)
        assert R.LIBC_SEND(a.fileno(), buf, 50000, socket.MSG_DONTWAIT) == 50000
        assert b.recv(70000) == bytes(buf[:50000])
        with pytest.raises(ValueError):
            R.LIBC_SEND(a.fileno(), buf, len(buf) + 1, 0)
        b.close()
        with pytest.raises(OSError) as e:
            R.LIBC_SEND(a.fileno(), buf, 100, socket.MSG_DONTWAIT)
        assert e.value.errno == errno.ECONNREFUSED


def test_libc_send_is_pypy_only():
    import sys

    assert (R.LIBC_SEND is not None) == (sys.implementation.name == "pypy")
