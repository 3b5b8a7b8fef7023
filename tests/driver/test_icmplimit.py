"""ipvs/driver/icmplimit.py: the per-destination token buckets of
``icmpv4_xrlim_allow`` and ``icmpv6_xrlim_allow``."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ipvs.driver.icmplimit import ICMPV6_RATEMASK, Icmp6RateLimit, IcmpRateLimit

HZ = 250
A6 = bytes.fromhex("20010db8000000000000000000000002")


def assert_six_deep(allow, slow_allow, timeout, gaps, each=lambda: None):
    """Messages at the gaps through ``allow(t)``: never more than 6 plus one
    per ``timeout`` elapsed in any span.  Through ``slow_allow(t)`` (a fresh
    limiter), at the gaps each lengthened by ``timeout``: every one passes.
    ``each()`` runs after every message of the first series."""
    t, allowed = 0, []
    for g in gaps:
        t += g
        if allow(t):
            allowed.append(t)
        each()
    for i in range(len(allowed)):
        for j in range(i, len(allowed)):
            assert j - i + 1 <= 6 + (allowed[j] - allowed[i]) // timeout
    t = 0
    for g in gaps:
        t += timeout + g
        assert slow_allow(t)


@given(st.lists(st.integers(0, 3 * HZ), min_size=1, max_size=40))
def test_icmp_rate_limit_is_a_six_deep_one_per_second_bucket(gaps):
    """Per destination: never more than 6 messages plus one per second
    elapsed in any span, and a message a second or slower always passes."""
    lim, slow = IcmpRateLimit(HZ), IcmpRateLimit(HZ)
    assert_six_deep(lambda t: lim.allow(1, 3, 3, t), lambda t: slow.allow(2, 11, 0, t), HZ, gaps)


def test_icmp_rate_limit_forgets_refilled_destinations_and_stays_bounded():
    lim = IcmpRateLimit(HZ)
    lim.MAX_PEERS = 4
    for a in range(4):
        assert lim.allow(a, 3, 1, 0) and lim.allow(a, 3, 1, 0)
    lim.expire(HZ)
    assert len(lim.peers) == 4  # two messages each, one second: not refilled yet
    assert lim.allow(9, 3, 1, 7 * HZ)  # full: the refilled ones make room
    assert set(lim.peers) == {9}
    for a in range(10, 14):
        lim.allow(a, 3, 1, 7 * HZ)
    assert len(lim.peers) <= 4


def test_the_icmpv6_ratemask_default_is_0_1_and_3_to_127():
    """net.ipv6.icmp.ratemask "0-1,3-127": every error type but Packet Too
    Big; no informational type (128-255)."""
    assert [t for t in range(256) if ICMPV6_RATEMASK >> t & 1] == [0, 1] + list(range(3, 128))


def test_icmpv6_timeout_is_shifted_by_the_routes_prefix_length():
    """tmo >>= (128 - plen) >> 5: 1000 ms for a host route, halved from /96
    down, a quarter for /64, a sixteenth for the default route."""
    lim = Icmp6RateLimit(1000)
    assert [lim.timeout(p) for p in (128, 127, 97, 96, 65, 64, 33, 32, 1, 0)] == \
        [1000, 1000, 1000, 500, 500, 250, 250, 125, 125, 62]
    assert Icmp6RateLimit(HZ).timeout(64) == HZ >> 2


def test_icmpv6_errors_to_one_destination_burst_six_then_one_per_timeout():
    lim = Icmp6RateLimit(HZ)
    tmo = lim.timeout(64)
    got = [lim.allow(A6, 1, 64, 0) for _ in range(10)]
    assert got == [True] * 6 + [False] * 4
    assert not lim.allow(A6, 3, 64, tmo - 1)  # any type of the mask draws on the same bucket
    assert lim.allow(A6, 1, 64, tmo) and not lim.allow(A6, 1, 64, tmo)
    assert lim.allow(bytes(15) + b"\x09", 1, 64, 0)  # another destination has its own bucket
    # A host route costs four times as much: after 3 tmo, still nothing.
    assert not lim.allow(A6, 1, 128, 4 * tmo)


def test_packet_too_big_and_informational_icmpv6_are_never_limited():
    lim = Icmp6RateLimit(HZ)
    for _ in range(6):
        assert lim.allow(A6, 4, 64, 0)  # parameter problem: empties the bucket
    assert not lim.allow(A6, 1, 64, 0)
    assert all(lim.allow(A6, t, 64, 0) for t in (2, 128, 129, 135, 255, 300) for _ in range(10))


@given(st.lists(st.integers(0, HZ // 2), min_size=1, max_size=40), st.sampled_from([0, 32, 64, 96, 128]))
def test_icmpv6_bucket_is_six_timeouts_deep_for_any_prefix(gaps, plen):
    """For a route of any prefix: never more than 6 messages plus one per
    timeout elapsed in any span; one a timeout or slower always passes."""
    lim, slow = Icmp6RateLimit(HZ), Icmp6RateLimit(HZ)

    def tokens_never_negative() -> None:
        assert lim.peers[A6][0] >= 0

    assert_six_deep(lambda t: lim.allow(A6, 1, plen, t), lambda t: slow.allow(A6, 3, plen, t), lim.timeout(plen),
                    gaps, tokens_never_negative)


@given(st.lists(st.integers(0, HZ // 5), min_size=1, max_size=200), st.integers(0, 2**32))
def test_global_credit_allows_about_the_rate_plus_the_burst(gaps, seed):
    """icmp_global_allow: over any span, at most the burst plus the refill
    (each message takes 0-2 credits, so up to three times that many may
    pass when the draws are zeros, never more); with nothing but refused
    messages for a second the bucket is full again."""
    import random

    from ipvs.driver.icmplimit import GlobalCredit

    g = GlobalCredit(HZ, msgs_per_sec=100, burst=5, rng=random.Random(seed))
    t, allowed = 0, []
    for gap in gaps:
        t += gap
        if g.allow(t):
            allowed.append(t)
    assert allowed, "a full bucket lets the first message through"
    assert len(allowed) + g.refused == len(gaps)
    # Credits taken: at least 0 per message, at most 2; credits ever given:
    # the burst plus 100 a second of the span (whole steps of >= HZ/50).
    span = allowed[-1] - allowed[0]
    assert len(allowed) <= 3 * (5 + 100 * span // HZ) + 1


def test_global_credit_stops_a_flood_of_new_destinations_and_refills():
    import random

    from ipvs.driver.icmplimit import GlobalCredit

    g = GlobalCredit(HZ, rng=random.Random(1))
    lim = IcmpRateLimit(HZ, global_credit=g)
    lim6 = Icmp6RateLimit(HZ, global_credit=g)
    # Port unreachables to 10,000 distinct sources in one jiffy: each new
    # source has a full bucket of its own, so only the global one stops them.
    # (Each message takes 0-2 of the 50 credits: at least 25 pass.)
    sent = sum(lim.allow(a, 3, 3, 0) for a in range(10_000))
    assert 25 <= sent <= 150 and g.refused == 10_000 - sent
    # The families share the bucket: an IPv6 error is refused now too ...
    assert not lim6.allow(A6, 1, 64, 0)
    # ... but Packet Too Big and frag-needed are never limited.
    assert lim6.allow(A6, 2, 64, 0) and lim.allow(1, 3, 4, 0)
    # After a second the bucket holds its burst again (1000/s, capped at 50).
    sent = sum(lim.allow(20_000 + a, 3, 3, HZ) for a in range(1_000))
    assert 25 <= sent <= 150
