"""The SYN guard: per-source queues of connection attempts, served round robin."""

from __future__ import annotations

from ipvs.driver.synguard import SynGuard

HZ = 250


def test_engaged_for_the_hold_after_the_last_backlog_and_while_syns_wait():
    g = SynGuard(HZ)
    assert not g.engaged(100)
    g.engage(100)
    g.engage(110)
    assert g.stats.engaged == 1  # one guarded period, extended
    assert g.engaged(110 + g.hold - 1) and not g.engaged(110 + g.hold)
    g.defer(1, lambda b: None, bytearray(b"x"))
    assert g.engaged(10_000)  # something still waits
    g.serve(1)
    assert not g.engaged(10_000)


def test_sources_are_served_round_robin_whatever_one_of_them_sends():
    g = SynGuard(HZ)
    got = []
    for i in range(10):
        g.defer(7, got.append, bytearray(b"flood%d" % i))
    g.defer(9, got.append, bytearray(b"client"))
    # The flooder's queue took PER_SOURCE of its ten, the client's one waits its turn right after the first.
    assert g.stats.deferred == g.PER_SOURCE + 1 and g.stats.dropped_full == 10 - g.PER_SOURCE
    assert g.waiting() == g.PER_SOURCE + 1
    assert g.serve(2) == 2
    assert got == [bytearray(b"flood0"), bytearray(b"client")]
    assert g.serve(100) == g.PER_SOURCE - 1
    assert got[2:] == [bytearray(b"flood%d" % i) for i in range(1, g.PER_SOURCE)]
    assert not g.queues and not g.turns and g.stats.served == g.PER_SOURCE + 1


def test_full_says_whether_a_source_has_its_share_waiting_and_counts_the_drop():
    g = SynGuard(HZ)
    assert not g.full(7)
    for _ in range(g.PER_SOURCE):
        g.defer(7, lambda b: None, bytearray())
    assert g.full(7) and not g.full(8)
    assert g.stats.dropped_full == 1


def test_sources_beyond_the_limit_are_dropped_and_counted():
    g = SynGuard(HZ)
    g.MAX_SOURCES = 3
    for src in range(5):
        g.defer(src, lambda b: None, bytearray())
    assert len(g.queues) == 3 and g.stats.dropped_sources == 2


def test_a_handler_that_raises_costs_one_frame():
    g = SynGuard(HZ)
    got = []

    def bad(b):
        raise ValueError("bug")

    g.defer(1, bad, bytearray(b"a"))
    g.defer(2, got.append, bytearray(b"b"))
    assert g.serve(10) == 2
    assert got == [bytearray(b"b")] and g.stats.errors == 1


def test_a_lent_frame_waits_as_a_copy():
    # A ring's lent buffer is reused for its next large frame: the guard keeps its own copy.
    from ipvs.driver.ring import LentFrame

    g = SynGuard(HZ)
    got = []
    lent = LentFrame(b"syn")
    g.defer(1, got.append, lent)
    lent[:] = b"xxx"
    assert g.serve(1) == 1
    assert got == [bytearray(b"syn")] and got[0] is not lent
