"""Maglev hashing scheduling.

Mirrors ``net/netfilter/ipvs/ip_vs_mh.c`` (kernel 6.1), the consistent
hashing of the Maglev paper (section 3.4).

Table: ``M = 4093`` slots (``primes[CONFIG_IP_VS_MH_TAB_INDEX - 8]`` with
the default index 12).  Each destination, in list order, gets a preference
order of the slots: it starts at ``offset = h(hash1, addr, port) % M`` and
steps by ``skip = h(hash2, addr, port) % (M - 1) + 1``.  Population walks
the list round and round; a destination takes its next free preferred slot
``turns`` times in a row before the next one's turn, until all M slots are
full.  ``turns`` is ``(last_weight / gcd) >> rshift`` (at least 1 for a
non-zero last_weight), where gcd is over the positive ``last_weight`` and
``rshift = max(0, fls(max_last_weight / gcd) - 6)`` keeps the turns small.
``last_weight`` is the latest non-zero weight, so quiescing a destination
(weight 0) keeps its slots: lookups landing there fail, or fall back.
The table is rebuilt on add, delete and update; with no positive
last_weight it is emptied; with more destinations than slots the rebuild
is refused (-EINVAL in the kernel) and the old table stays.

Lookup: slot ``h(hash1, src, port) % M`` where port is the source port with
``mh-port`` (``IP_VS_SVC_F_SCHED2``, TCP/UDP/SCTP only), else 0; the
destination address/port for an ``inverse`` (ICMP-embedded) header.  A
destination of weight <= 0 or overloaded is unavailable: None, or with
``mh-fallback`` (``IP_VS_SVC_F_SCHED1``) try ``roffset = (offset + slot)
% M`` for offset 0..M-1 through ``h(hash1, src, port, roffset) % M``,
stopping at an empty slot.

Hash: ``h(key, addr, port, offset) = hsiphash(u32(offset + port +
ntohl(addr_fold)), key)``.  On 64-bit kernels ``hsiphash`` of 4 bytes is
SipHash-1-3 with the two key words as 64-bit values, the u32 read
little-endian into the final block ``b = (4 << 56) | v``, and the result
the low 32 bits of ``v0 ^ v1 ^ v2 ^ v3`` (``lib/siphash.c``,
``hsiphash_1u32`` with ``HSIPROUND = SIPROUND``).  The keys are fixed:
``hash1 = (2654435761, 2654435761)``, ``hash2 = (2654446892, 2654446892)``.
A 32-bit kernel would use HalfSipHash and give different tables.  The
table size, hash and population order are confirmed by the recorded
``sched_mh`` kernel golden (Debian 6.1, x86_64).

Differences from the kernel, for speed only (results are identical): the
table rebuild is deferred to the next lookup, so a burst of changes costs
one rebuild; the SipHash initial state of each key is computed once; each
destination's (offset, skip) is cached by (addr, port); and lookups
memoise the slot of recently seen keys in a bounded dict (cleared when
full).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ipvs.ip_vs import addr_fold
from ipvs.sched import IPHdr, Scheduler, register_scheduler, scheduler_err
from ipvs.uapi import (
    IP_VS_DEST_F_OVERLOAD,
    IP_VS_SVC_F_SCHED_MH_FALLBACK,
    IP_VS_SVC_F_SCHED_MH_PORT,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
)

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.ip_vs import Dest, Service

#: The table sizes CONFIG_IP_VS_MH_TAB_INDEX (8..17) selects.
MH_PRIMES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)
#: CONFIG_IP_VS_MH_TAB_INDEX default.
MH_TAB_INDEX = 12
MH_TAB_BITS = MH_TAB_INDEX // 2
MH_TAB_SIZE = MH_PRIMES[MH_TAB_INDEX - 8]

#: ``generate_hash_secret``: the fixed keys, each word a 64-bit value.
HASH1 = (2654435761, 2654435761)
HASH2 = (2654446892, 2654446892)

#: Bound of the per-instance memo of lookup slots.
_MEMO_MAX = 1 << 16

_M64 = 0xFFFFFFFFFFFFFFFF
_PORT_PROTOS = frozenset((IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP))


def _key_state(key: tuple[int, int]) -> tuple[int, int, int, int]:
    """SipHash's ``PREAMBLE``: the initial v0..v3 for a key."""
    k0, k1 = key
    return (
        0x736F6D6570736575 ^ k0,
        0x646F72616E646F6D ^ k1,
        0x6C7967656E657261 ^ k0,
        0x7465646279746573 ^ k1,
    )


def _siphash13_u32(state: tuple[int, int, int, int], value: int) -> int:
    """``hsiphash_1u32`` on a 64-bit kernel: SipHash-1-3 of one u32.

    The 4-byte message fits the final block ``b = (len << 56) | value``,
    so there is one compression round on ``b`` and three finalisation
    rounds.  SIPROUND (rotations by 13, 32, 16, 21, 17 and 32 on 64-bit
    words) is written out, without a helper call or per-round test, which
    halves the cost in CPython.
    """
    v0, v1, v2, v3 = state
    b = 0x0400000000000000 | (value & 0xFFFFFFFF)
    v3 ^= b
    v0 = (v0 + v1) & _M64
    v1 = ((v1 << 13) & _M64) | (v1 >> 51)
    v1 ^= v0
    v0 = ((v0 << 32) & _M64) | (v0 >> 32)
    v2 = (v2 + v3) & _M64
    v3 = ((v3 << 16) & _M64) | (v3 >> 48)
    v3 ^= v2
    v0 = (v0 + v3) & _M64
    v3 = ((v3 << 21) & _M64) | (v3 >> 43)
    v3 ^= v0
    v2 = (v2 + v1) & _M64
    v1 = ((v1 << 17) & _M64) | (v1 >> 47)
    v1 ^= v2
    v2 = ((v2 << 32) & _M64) | (v2 >> 32)
    v0 ^= b
    v2 ^= 0xFF
    for _ in (1, 2, 3):
        v0 = (v0 + v1) & _M64
        v1 = ((v1 << 13) & _M64) | (v1 >> 51)
        v1 ^= v0
        v0 = ((v0 << 32) & _M64) | (v0 >> 32)
        v2 = (v2 + v3) & _M64
        v3 = ((v3 << 16) & _M64) | (v3 >> 48)
        v3 ^= v2
        v0 = (v0 + v3) & _M64
        v3 = ((v3 << 21) & _M64) | (v3 >> 43)
        v3 ^= v0
        v2 = (v2 + v1) & _M64
        v1 = ((v1 << 17) & _M64) | (v1 >> 47)
        v1 ^= v2
        v2 = ((v2 << 32) & _M64) | (v2 >> 32)
    return (v0 ^ v1 ^ v2 ^ v3) & 0xFFFFFFFF


def hsiphash_u32(value: int, key: tuple[int, int]) -> int:
    """``hsiphash(&value, 4, key)`` as a 64-bit kernel computes it."""
    return _siphash13_u32(_key_state(key), value)


_STATE1 = _key_state(HASH1)
_STATE2 = _key_state(HASH2)


def mh_hashkey(state: tuple[int, int, int, int], addr: bytes, port: int, offset: int) -> int:
    """``ip_vs_mh_hashkey`` (``state`` from the key, see :data:`HASH1`)."""
    return _siphash13_u32(state, offset + port + addr_fold(addr))


def _unavailable(d: Dest) -> bool:
    return d.weight <= 0 or bool(d.flags & IP_VS_DEST_F_OVERLOAD)


@register_scheduler
class MaglevHashing(Scheduler):
    """``ip_vs_mh_scheduler``."""

    name = "mh"

    def __init__(self, svc: Service, tab_size: int = MH_TAB_SIZE) -> None:
        super().__init__(svc)
        if tab_size not in MH_PRIMES:
            raise ValueError(f"mh table size must be one of {MH_PRIMES}")
        self.size = tab_size
        self._lookup: list[Dest | None] = [None] * tab_size
        self.gcd = 0
        self.rshift = 0
        self._dirty = False
        self._memo: dict[int, int] = {}
        self._perms: dict[tuple[bytes, int], tuple[int, int]] = {}
        self._dest_changed()

    # ---------------------------------------------------------- building

    @property
    def lookup(self) -> list[Dest | None]:
        """The slot table, rebuilt first if a change is pending."""
        if self._dirty:
            self._populate(self.svc.destinations)
        return self._lookup

    def _dest_changed(self) -> int:
        """``ip_vs_mh_dest_changed``: recompute gcd/rshift, rebuild.

        The rebuild itself is deferred to the next lookup: the table is a
        function of the list at rebuild time only, so a burst of changes
        (an ``ipvsadm -R`` of many destinations) costs one rebuild.
        Returns 0, or -EINVAL (-22) when there are more destinations than
        slots; the kernel then keeps the previous table.
        """
        dests = self.svc.destinations
        if len(dests) > self.size:
            if self._dirty:
                # Only an add crosses the limit: the pending table is the
                # one for the list without the new head.
                self._populate(dests[1:])
            self._gcd_rshift(dests)
            return -22
        self._gcd_rshift(dests)
        self._dirty = True
        return 0

    def _gcd_rshift(self, dests: list[Dest]) -> None:
        """``ip_vs_mh_gcd_weight`` and ``ip_vs_mh_shift_weight``."""
        lws = [d.last_weight for d in dests if d.last_weight > 0]
        self.gcd = math.gcd(*lws) if lws else 0
        self.rshift = 0
        if self.gcd >= 1:
            self.rshift = max(0, (max(lws) // self.gcd).bit_length() - MH_TAB_BITS)

    def _perm(self, d: Dest) -> tuple[int, int]:
        """(offset, skip) of a destination: they depend on addr/port only."""
        key = (d.addr, d.port)
        p = self._perms.get(key)
        if p is None:
            m = self.size
            p = (mh_hashkey(_STATE1, d.addr, d.port, 0) % m, mh_hashkey(_STATE2, d.addr, d.port, 0) % (m - 1) + 1)
            if len(self._perms) >= _MEMO_MAX:
                self._perms.clear()
            self._perms[key] = p
        return p

    def _populate(self, dests: list[Dest]) -> None:
        """``ip_vs_mh_permutate`` + ``ip_vs_mh_populate``."""
        self._dirty = False
        m = self.size
        lws = [d.last_weight for d in dests if d.last_weight > 0]
        gcd = math.gcd(*lws) if lws else 0
        if gcd < 1:
            self._lookup = [None] * m
            return
        rshift = max(0, (max(lws) // gcd).bit_length() - MH_TAB_BITS)
        # [perm, skip, turns, dest] per dest in list order.  Only those
        # with turns take slots; the kernel's loop merely steps over the
        # others, so they are left out.
        active = []
        for d in dests:
            lw = d.last_weight
            turns = (lw // gcd) >> rshift
            if not turns:
                turns = 1 if lw else 0
            if turns:
                offset, skip = self._perm(d)
                active.append([offset, skip, turns, d])
        lookup: list[Dest | None] = [None] * m
        taken = bytearray(m)
        n = 0
        while True:
            for s in active:
                perm, skip, turns, d = s
                for _ in range(turns):
                    while taken[perm]:
                        perm += skip
                        if perm >= m:
                            perm -= m
                    taken[perm] = 1
                    lookup[perm] = d
                    n += 1
                    if n == m:
                        self._lookup = lookup
                        return
                s[0] = perm

    def add_dest(self, dest: Dest) -> None:
        """``ip_vs_mh_dest_changed``: mark the lookup table for repopulation."""
        self._dest_changed()

    def del_dest(self, dest: Dest) -> None:
        """``ip_vs_mh_dest_changed``: mark the lookup table for repopulation."""
        self._dest_changed()

    def upd_dest(self, dest: Dest) -> None:
        """``ip_vs_mh_dest_changed``: mark the lookup table for repopulation (a weight was edited)."""
        self._dest_changed()

    def done_service(self) -> None:
        """``ip_vs_mh_done_svc``: empty the lookup table."""
        self._lookup = [None] * self.size
        self._dirty = False
        self._memo.clear()

    # ---------------------------------------------------------- lookup

    def _slot(self, v: int) -> int:
        memo = self._memo
        slot = memo.get(v)
        if slot is None:
            slot = _siphash13_u32(_STATE1, v) % self.size
            if len(memo) >= _MEMO_MAX:
                memo.clear()
            memo[v] = slot
        return slot

    def schedule(self, iph: IPHdr, now: int) -> Dest | None:
        """``ip_vs_mh_schedule``: the destination of the Maglev table slot the source address (and port, with
        ``mh-port``) hashes to; with ``mh-fallback``, the key is rehashed with growing offsets until a usable server
        (or an empty slot).
        """
        flags = self.svc.flags
        if iph.inverse:
            addr, port = iph.daddr, iph.dport
        else:
            addr, port = iph.saddr, iph.sport
        if not (flags & IP_VS_SVC_F_SCHED_MH_PORT and iph.protocol in _PORT_PROTOS):
            port = 0
        key = (port + (int.from_bytes(addr, "big") if len(addr) == 4 else addr_fold(addr))) & 0xFFFFFFFF
        lookup = self._lookup if not self._dirty else self.lookup
        ihash = self._memo.get(key)
        if ihash is None:
            ihash = self._slot(key)
        d = lookup[ihash]
        if d is not None and not _unavailable(d):
            return d
        if d is not None and flags & IP_VS_SVC_F_SCHED_MH_FALLBACK:
            m = self.size
            for offset in range(m):
                roffset = (offset + ihash) % m
                d = lookup[_siphash13_u32(_STATE1, roffset + key) % m]
                if d is None:
                    break
                if not _unavailable(d):
                    return d
        scheduler_err(self.svc, "no destination available")
        return None
