"""Rate limits on the ICMP errors the director makes, per destination.

Mirrors ``icmpv4_xrlim_allow`` (``net/ipv4/icmp.c``), ``icmpv6_xrlim_allow``
and ``icmpv6_mask_allow`` (``net/ipv6/icmp.c``) and the token bucket they
share, ``inet_peer_xrlim_allow`` (``net/ipv4/inetpeer.c``): tokens are
jiffies, a message costs ``timeout`` of them, a bucket holds
``XRLIM_BURST_FACTOR`` (6) messages, and a destination not seen before
starts with a full bucket.  The families differ only in which types are
limited and in the timeout:

* IPv4 (:class:`IcmpRateLimit`): the types of ``icmp_ratemask`` (0x1818:
  destination unreachable, source quench, time exceeded, parameter
  problem) except fragmentation needed; the timeout is ``icmp_ratelimit``
  (1000 ms).
* IPv6 (:class:`Icmp6RateLimit`): the types of ``icmpv6_ratemask``
  (sysctl ``net.ipv6.icmp.ratemask``, "0-1,3-127": every error type but
  Packet Too Big, so neither path MTU discovery nor the informational
  types 128-255 are ever limited); the timeout is ``icmpv6_time``
  (``net.ipv6.icmp.ratelimit``, 1000 ms) shifted right by
  ``(128 - plen) >> 5`` for the prefix length of the route to the
  destination ("give more bandwidth to wider prefixes": a /64 allows a
  message every 250 ms, a default route every 62 ms).

Before the per-destination bucket, a message of a limited type asks the
host-wide one, :class:`GlobalCredit` (``icmp_global_allow``, as in 6.1:
``icmp_msgs_per_sec`` 1000, ``icmp_msgs_burst`` 50, a message taking 0,
1 or 2 credits at random so the bucket is no clean oracle for an
attacker).  Both families share it, as they share the kernel's
``icmp_global``; it is what keeps a flood from spoofed sources, each one
new to the per-destination table, from drawing an error apiece.

Differences from the kernel, and why: a destination reached through the
loopback device (never limited by the kernel) does not arise, as the
driver delivers nothing to itself through a route; the peer table is
bounded (:attr:`PeerBuckets.MAX_PEERS`) and forgets full buckets instead
of the kernel's inet_peer garbage collection; the global bucket's random
numbers come from a :class:`random.Random` of its own, which tests seed.
"""

from __future__ import annotations

import random

from ipvs.packet import ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED

XRLIM_BURST_FACTOR = 6
#: ``net.ipv4.icmp_ratelimit`` (ms) and ``net.ipv4.icmp_ratemask`` defaults:
#: destination unreachable, source quench, time exceeded, parameter problem.
ICMP_RATELIMIT_MS = 1000
ICMP_RATEMASK = 0x1818
NR_ICMP_TYPES = 18
#: ``net.ipv6.icmp.ratelimit`` (ms) default (``icmpv6_time``, 1 * HZ).
ICMPV6_RATELIMIT_MS = 1000
ICMPV6_PKT_TOOBIG = 2
ICMPV6_ERRMSG_MAX = 127
#: ``net.ipv6.icmp.ratemask`` default "0-1,3-127" as a bit per type
#: (``bitmap_set(0, ICMPV6_ERRMSG_MAX + 1)``, then ``bitmap_clear`` of
#: Packet Too Big, in ``inet6_net_init``).
ICMPV6_RATEMASK = ((1 << (ICMPV6_ERRMSG_MAX + 1)) - 1) & ~(1 << ICMPV6_PKT_TOOBIG)


#: ``net.ipv4.icmp_msgs_per_sec`` and ``net.ipv4.icmp_msgs_burst`` defaults.
ICMP_MSGS_PER_SEC = 1000
ICMP_MSGS_BURST = 50


class GlobalCredit:
    """``icmp_global_allow`` (``net/ipv4/icmp.c``, 6.1): the host's one token
    bucket for the ICMP and ICMPv6 errors it sends, whatever their
    destination.

    Refilled at ``msgs_per_sec`` by whole credits, never in steps shorter
    than a fiftieth of a second, up to ``burst``; a message is allowed
    while any credit is left and then takes 0, 1 or 2 of them (one on
    average).  ``refused`` counts the messages it stopped (the kernel's
    ``IcmpMsgRateLimitGlobal`` counter).
    """

    def __init__(self, hz: int, msgs_per_sec: int = ICMP_MSGS_PER_SEC, burst: int = ICMP_MSGS_BURST,
                 rng: random.Random | None = None) -> None:
        self.hz = hz
        self.msgs_per_sec = msgs_per_sec
        self.burst = burst
        self.rng = rng if rng is not None else random.Random()
        self.credit = burst
        self.stamp = 0
        self.refused = 0

    def allow(self, now: int) -> bool:
        """Whether one more ICMP error may be sent at ``now`` (jiffies)."""
        incr = 0
        delta = min(now - self.stamp, self.hz)
        if delta >= self.hz // 50:
            incr = self.msgs_per_sec * delta // self.hz
            if incr:
                self.stamp = now
        credit = min(self.credit + incr, self.burst)
        ok = credit > 0
        if ok:
            credit = max(credit - self.rng.randrange(3), 0)
        else:
            self.refused += 1
        self.credit = credit
        return ok


class PeerBuckets:
    """``inet_peer_xrlim_allow`` (in ``net/ipv4/inetpeer.c``) over a bounded table of destinations.

    At most :attr:`MAX_PEERS` destinations are remembered (about the
    kernel's ``inet_peer_threshold``): a full bucket is the same as no
    bucket, so those go first, then all (a flood of distinct destinations
    then gets its first messages through, as after the kernel's garbage
    collection).
    """

    MAX_PEERS = 65536

    def __init__(self, hz: int, global_credit: GlobalCredit | None = None) -> None:
        self.hz = hz
        #: destination -> [tokens, jiffies of the last message, bucket size]
        self.peers: dict = {}
        self.next_gc = 0
        #: The host-wide bucket asked first (``icmpv4_global_allow``,
        #: ``icmpv6_global_allow``); None: none.
        self.global_credit = global_credit

    def limited(self, daddr, timeout: int, now: int) -> bool:
        """A message of a limited type to ``daddr``: whether the host-wide
        bucket, then ``daddr``'s, lets it go (``__icmp_send``'s order)."""
        g = self.global_credit
        if g is not None and not g.allow(now):
            return False
        return self.take(daddr, timeout, now)

    def take(self, daddr, timeout: int, now: int) -> bool:
        """One message of cost ``timeout`` jiffies to ``daddr`` at ``now``: whether its bucket has the tokens."""
        cap = XRLIM_BURST_FACTOR * timeout
        p = self.peers.get(daddr)
        if p is None:
            if len(self.peers) >= self.MAX_PEERS:
                self.next_gc = 0
                self.expire(now)
                if len(self.peers) >= self.MAX_PEERS:
                    self.peers.clear()
            # inet_getpeer: rate_last 60 s back, so the first refill fills it.
            p = self.peers[daddr] = [cap, now, cap]
        tokens = p[0]
        if now != p[1]:
            # Refilled (and capped) only when time has passed, as the kernel
            # does: the cap is the one of this message's timeout.
            tokens = min(tokens + now - p[1], cap)
            p[1] = now
        p[2] = cap
        ok = tokens >= timeout
        if ok:
            tokens -= timeout
        p[0] = tokens
        return ok

    def expire(self, now: int) -> None:
        """Forget the peers whose bucket has refilled: a new one starts full
        anyway (the kernel's inet_peer garbage collection, simplified).
        At most once a second."""
        if now < self.next_gc:
            return
        self.next_gc = now + self.hz
        for daddr in [a for a, p in self.peers.items() if p[0] + now - p[1] >= p[2]]:
            del self.peers[daddr]


def msecs_to_jiffies(ms: int, hz: int) -> int:
    """``msecs_to_jiffies`` at ``hz`` ticks a second, rounded down (the kernel rounds a part of a jiffy up:
    the same for the 1000 ms defaults)."""
    return ms * hz // 1000


class IcmpRateLimit(PeerBuckets):
    """``icmpv4_xrlim_allow``: the IPv4 errors of ``icmp_ratemask`` but
    fragmentation needed, ``icmp_ratelimit`` apart per destination."""

    def __init__(self, hz: int, ratelimit_ms: int = ICMP_RATELIMIT_MS, ratemask: int = ICMP_RATEMASK,
                 global_credit: GlobalCredit | None = None) -> None:
        super().__init__(hz, global_credit)
        self.cost = msecs_to_jiffies(ratelimit_ms, hz)
        self.mask = ratemask

    def allow(self, daddr: int, icmp_type: int, code: int, now: int) -> bool:
        """Whether an ICMP message of this type and code may go to ``daddr`` now."""
        if icmp_type > NR_ICMP_TYPES or not (1 << icmp_type) & self.mask or \
                (icmp_type == ICMP_DEST_UNREACH and code == ICMP_FRAG_NEEDED):
            return True
        return self.limited(daddr, self.cost, now)


class Icmp6RateLimit(PeerBuckets):
    """``icmpv6_xrlim_allow`` (in ``net/ipv6/icmp.c``): the ICMPv6 types of ``icmpv6_ratemask``
    (``icmpv6_mask_allow``), ``icmpv6_time`` apart per destination, less
    for a wider route prefix.

    ``plen`` is the prefix length of the route PyIPVS picks for the
    destination (the longest match among the ports' connected prefixes and
    the ``--route6`` entries, :meth:`ipvs.driver.ip6.IPv6Path.route`).  The
    kernel shifts by the ``rt6i_dst.plen`` of the route ``ip6_route_output``
    returns: the matching FIB entry's prefix, or 128 for a cached clone
    (a PMTU exception or a redirect), which PyIPVS never makes.
    """

    def __init__(self, hz: int, ratelimit_ms: int = ICMPV6_RATELIMIT_MS, ratemask: int = ICMPV6_RATEMASK,
                 global_credit: GlobalCredit | None = None) -> None:
        super().__init__(hz, global_credit)
        self.time = msecs_to_jiffies(ratelimit_ms, hz)
        self.mask = ratemask

    def timeout(self, plen: int) -> int:
        """The timeout ``icmpv6_xrlim_allow`` uses for a route of prefix length ``plen``: "give more bandwidth to
        wider prefixes"."""
        return self.time >> ((128 - plen) >> 5) if plen < 128 else self.time

    def allow(self, daddr: bytes, icmp_type: int, plen: int, now: int) -> bool:
        """Whether an ICMPv6 message of this type may go to ``daddr``, reached by a route of prefix ``plen``, now."""
        if icmp_type > 255 or not (self.mask >> icmp_type) & 1:  # icmpv6_mask_allow
            return True
        return self.limited(daddr, self.timeout(plen), now)
