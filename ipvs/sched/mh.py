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
one rebuild; each destination's (offset, skip) is cached by (addr, port).

The 64-bit words of SipHash go through :func:`add64` and :func:`rol64`.
On PyPy these are the machine's wrapping operations (``__pypy__.intop``),
so the words stay machine integers, read as signed; masking with
``2**64 - 1`` instead would keep every word at or above ``2**63`` a big
integer, which made a hash some 50 times slower there.  On CPython they
mask.  Either way the low 32 bits that ``hsiphash`` returns are the same.
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

#: Bound of the cache of destinations' (offset, skip).
_PERMS_MAX = 1 << 16

#: The table sizes CONFIG_IP_VS_MH_TAB_INDEX (8..17) selects.
MH_PRIMES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)
#: CONFIG_IP_VS_MH_TAB_INDEX default.
MH_TAB_INDEX = 12
MH_TAB_BITS = MH_TAB_INDEX // 2
MH_TAB_SIZE = MH_PRIMES[MH_TAB_INDEX - 8]

#: ``generate_hash_secret``: the fixed keys, each word a 64-bit value.
HASH1 = (2654435761, 2654435761)
HASH2 = (2654446892, 2654446892)

_PORT_PROTOS = frozenset((IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP))


# ------------------------------------------------------ lib/siphash.c

U64_MAX = 0xFFFFFFFFFFFFFFFF

#: ``SIPHASH_CONST_0..3``: "somepseudorandomlygeneratedbytes".
SIPHASH_CONST_0 = 0x736F6D6570736575
SIPHASH_CONST_1 = 0x646F72616E646F6D
SIPHASH_CONST_2 = 0x6C7967656E657261
SIPHASH_CONST_3 = 0x7465646279746573

try:
    from __pypy__ import intop
except ImportError:  # CPython
    intop = None

if intop is not None:
    add64 = intop.int_add

    def rol64(word: int, shift: int) -> int:
        """``rol64`` on a machine word (``uint_rshift`` is the logical shift)."""
        return intop.int_lshift(word, shift) | intop.uint_rshift(word, 64 - shift)

else:

    def add64(a: int, b: int) -> int:
        """``a + b`` on u64 words (see the module docstring for PyPy's)."""
        return (a + b) & U64_MAX

    def rol64(word: int, shift: int) -> int:
        """``rol64``: rotate a u64 word left."""
        return ((word << shift) & U64_MAX) | (word >> (64 - shift))


def sipround(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    """``SIPROUND`` (``SIPHASH_PERMUTATION``); ``HSIPROUND`` on 64-bit."""
    v0 = add64(v0, v1)
    v1 = rol64(v1, 13)
    v1 ^= v0
    v0 = rol64(v0, 32)
    v2 = add64(v2, v3)
    v3 = rol64(v3, 16)
    v3 ^= v2
    v0 = add64(v0, v3)
    v3 = rol64(v3, 21)
    v3 ^= v0
    v2 = add64(v2, v1)
    v1 = rol64(v1, 17)
    v1 ^= v2
    v2 = rol64(v2, 32)
    return v0, v1, v2, v3


def hsiphash(data: bytes, key: tuple[int, int]) -> int:
    """``hsiphash(data, len, key)`` as a 64-bit kernel computes it.

    There ``HSIPROUND`` is ``SIPROUND``, so this is SipHash-1-3 on the two
    64-bit key words, truncated to 32 bits (``__hsiphash_aligned``).
    """
    # HPREAMBLE(len)
    v0 = SIPHASH_CONST_0 ^ key[0]
    v1 = SIPHASH_CONST_1 ^ key[1]
    v2 = SIPHASH_CONST_2 ^ key[0]
    v3 = SIPHASH_CONST_3 ^ key[1]
    b = (len(data) << 56) & U64_MAX
    end = len(data) - len(data) % 8
    for i in range(0, end, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        v0, v1, v2, v3 = sipround(v0, v1, v2, v3)
        v0 ^= m
    b |= int.from_bytes(data[end:], "little")  # the switch on the bytes left
    return _hpostamble(v0, v1, v2, v3, b)


def hsiphash_1u32(first: int, key: tuple[int, int]) -> int:
    """``hsiphash_1u32``: ``hsiphash`` of the 4 bytes of a u32 in CPU (little-endian) order."""
    # HPREAMBLE(4)
    v0 = SIPHASH_CONST_0 ^ key[0]
    v1 = SIPHASH_CONST_1 ^ key[1]
    v2 = SIPHASH_CONST_2 ^ key[0]
    v3 = SIPHASH_CONST_3 ^ key[1]
    b = 4 << 56
    b |= first & 0xFFFFFFFF
    return _hpostamble(v0, v1, v2, v3, b)


def _hpostamble(v0: int, v1: int, v2: int, v3: int, b: int) -> int:
    """``HPOSTAMBLE`` on 64-bit: one compression round on the last block,
    three finalisation rounds, the low 32 bits of the XOR of the words."""
    v3 ^= b
    v0, v1, v2, v3 = sipround(v0, v1, v2, v3)
    v0 ^= b
    v2 ^= 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = sipround(v0, v1, v2, v3)
    return (v0 ^ v1 ^ v2 ^ v3) & 0xFFFFFFFF


# ------------------------------------------------------------ ip_vs_mh.c


def mh_hashkey(addr: bytes, port: int, key: tuple[int, int], offset: int) -> int:
    """``ip_vs_mh_hashkey``: ``hsiphash`` of the u32 ``offset + port + ntohl(addr_fold)``."""
    return hsiphash_1u32(offset + port + addr_fold(addr), key)


def is_unavailable(dest: Dest) -> bool:
    """``is_unavailable``: weight 0 or below, or overloaded (AVAILABLE is not checked)."""
    return dest.weight <= 0 or bool(dest.flags & IP_VS_DEST_F_OVERLOAD)


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
            p = (mh_hashkey(d.addr, d.port, HASH1, 0) % m, mh_hashkey(d.addr, d.port, HASH2, 0) % (m - 1) + 1)
            if len(self._perms) >= _PERMS_MAX:
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
        # (skip, turns, dest) per dest in list order, and each one's next
        # slot in perms.  Only those with turns take slots; the kernel's
        # loop merely steps over the others, so they are left out.
        active: list[tuple[int, int, Dest]] = []
        perms: list[int] = []
        for d in dests:
            lw = d.last_weight
            turns = (lw // gcd) >> rshift
            if not turns:
                turns = 1 if lw else 0
            if turns:
                offset, skip = self._perm(d)
                active.append((skip, turns, d))
                perms.append(offset)
        lookup: list[Dest | None] = [None] * m
        taken = bytearray(m)
        n = 0
        while True:
            for i, (skip, turns, d) in enumerate(active):
                perm = perms[i]
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
                perms[i] = perm

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

    # ---------------------------------------------------------- lookup

    def get(self, addr: bytes, port: int) -> Dest | None:
        """``ip_vs_mh_get``: the destination of the key's slot, if usable."""
        dest = self.lookup[mh_hashkey(addr, port, HASH1, 0) % self.size]
        return None if dest is None or is_unavailable(dest) else dest

    def get_fallback(self, addr: bytes, port: int) -> Dest | None:
        """``ip_vs_mh_get_fallback``: as :meth:`get`, but an unusable
        destination sends the walk round the table from the key's slot."""
        lookup = self.lookup
        m = self.size
        ihash = mh_hashkey(addr, port, HASH1, 0) % m
        dest = lookup[ihash]
        if dest is None:
            return None
        if not is_unavailable(dest):
            return dest
        for offset in range(m):
            roffset = (offset + ihash) % m
            dest = lookup[mh_hashkey(addr, port, HASH1, roffset) % m]
            if dest is None:
                break
            if not is_unavailable(dest):
                return dest
        return None

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
        if flags & IP_VS_SVC_F_SCHED_MH_FALLBACK:
            dest = self.get_fallback(addr, port)
        else:
            dest = self.get(addr, port)
        if dest is None:
            scheduler_err(self.svc, "no destination available")
        return dest
