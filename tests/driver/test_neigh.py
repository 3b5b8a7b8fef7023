"""The neighbour cache: resolution, retransmissions, failure and what it hands back."""

from __future__ import annotations

from ipvs.driver.neigh import MAX_PROBES, QUEUE_FRAMES, NeighTable

HZ = 250
IP = 0xAC100005


def _fail(t: NeighTable, start: int) -> tuple[list, list]:
    """Tick once a second from ``start`` until the entry fails; (requests, frames)."""
    requests = []
    for s in range(1, MAX_PROBES + 1):
        req, failed = t.tick(start + s * HZ)
        requests += req
        if failed:
            return requests, failed
    return requests, []


def test_failed_entry_hands_back_its_frames_oldest_first():
    t = NeighTable(HZ)
    frames = [(bytearray([i]), 1) for i in range(3)]
    assert t.enqueue(IP, frames[0][0], 1, 0) is True  # the first frame sends the request
    assert t.enqueue(IP, frames[1][0], 1, 10) is False
    assert t.enqueue(IP, frames[2][0], 1, 20) is False
    requests, failed = _fail(t, 0)
    assert requests == [(IP, None)] * (MAX_PROBES - 1)  # broadcast retransmissions
    assert failed == frames
    assert IP not in t.entries and IP not in t.mac
    assert (t.stats.failed, t.stats.unresolved, t.stats.queue_drops) == (1, 3, 0)
    assert t.stats.probes_sent == MAX_PROBES


def test_frame_after_a_failure_starts_a_new_resolution():
    t = NeighTable(HZ)
    t.enqueue(IP, bytearray(b"a"), 1, 0)
    _fail(t, 0)
    assert t.enqueue(IP, bytearray(b"b"), 1, 5 * HZ) is True
    requests, failed = _fail(t, 5 * HZ)
    assert len(requests) == MAX_PROBES - 1 and failed == [(bytearray(b"b"), 1)]
    assert t.stats.failed == 2 and t.stats.unresolved == 2


def test_full_queue_drops_the_oldest_and_an_answer_releases_the_rest():
    t = NeighTable(HZ)
    for i in range(QUEUE_FRAMES + 2):
        t.enqueue(IP, bytearray([i]), 1, 0)
    assert t.stats.queue_drops == 2
    waiting = t.confirm(IP, b"\x02" * 6, 1, create=False)
    assert [b[0] for b, _ in waiting] == list(range(2, QUEUE_FRAMES + 2))
    assert t.tick(10 * HZ) == ([], [])
    assert t.stats.unresolved == 0 and t.stats.failed == 0
