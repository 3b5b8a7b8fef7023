"""Source hashing scheduling.

Mirrors ``net/netfilter/ipvs/ip_vs_sh.c`` (kernel 6.1).

Table: 256 buckets.  The destination list is walked round and round and
each destination takes ``weight`` consecutive buckets (at least one: the
cursor moves on when ``++count >= weight``, so weight 0 still takes one).
Rebuilt on add, delete and update.

Key: the source address (the destination address for an ICMP-embedded,
``inverse`` header) plus, with the ``sh-port`` flag (``IP_VS_SVC_F_SCHED2``)
and TCP/UDP/SCTP, the source port (the destination port when inverse);
otherwise port 0.  Bucket = ``(offset + hash_32(port + ntohl(addr_fold),
8)) & 255`` with offset 0 for the first try.  The 6.1 ``hash_32`` form
is confirmed by the kernel goldens ``sched_order`` and ``sched_sh``.

A destination of weight <= 0 or overloaded is unavailable (the AVAILABLE
flag is not checked).  Without ``sh-fallback`` (``IP_VS_SVC_F_SCHED1``)
that means no destination; with it, offsets 0..255 are tried in turn
(``roffset = (offset + ihash) % 256``), stopping at an empty bucket.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ipvs.ip_vs import addr_fold
from ipvs.sched import IPHdr, Scheduler, hash_32, register_scheduler, scheduler_err
from ipvs.uapi import (
    IP_VS_DEST_F_OVERLOAD,
    IP_VS_SVC_F_SCHED_SH_FALLBACK,
    IP_VS_SVC_F_SCHED_SH_PORT,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
)

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.ip_vs import Dest, Service

#: CONFIG_IP_VS_SH_TAB_BITS default.
SH_TAB_BITS = 8
SH_TAB_SIZE = 1 << SH_TAB_BITS
SH_TAB_MASK = SH_TAB_SIZE - 1

_PORT_PROTOS = frozenset((IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP))


def sh_hashkey(addr: bytes, port: int, offset: int) -> int:
    """``ip_vs_sh_hashkey``: the bucket for ``addr``/``port`` at ``offset``."""
    return (offset + hash_32(port + addr_fold(addr), SH_TAB_BITS)) & SH_TAB_MASK


def is_unavailable(dest: Dest) -> bool:
    """``is_unavailable``: weight 0 or below, or overloaded (AVAILABLE is not checked)."""
    return dest.weight <= 0 or bool(dest.flags & IP_VS_DEST_F_OVERLOAD)


@register_scheduler
class SourceHashing(Scheduler):
    """``ip_vs_sh_scheduler``."""

    name = "sh"

    def __init__(self, svc: Service) -> None:
        super().__init__(svc)
        self.buckets: list[Dest | None] = [None] * SH_TAB_SIZE
        self._reassign()

    def _reassign(self) -> None:
        """``ip_vs_sh_reassign``: ``weight`` buckets per destination, in turn."""
        dests = self.svc.destinations
        if not dests:
            self.buckets = [None] * SH_TAB_SIZE
            return
        buckets: list[Dest | None] = []
        i = count = 0
        n = len(dests)
        while len(buckets) < SH_TAB_SIZE:
            d = dests[i]
            buckets.append(d)
            count += 1
            if count >= d.weight:
                i = (i + 1) % n
                count = 0
        self.buckets = buckets

    def add_dest(self, dest: Dest) -> None:
        """``ip_vs_sh_dest_changed``: rebuild the bucket table (each destination takes ``weight`` buckets)."""
        self._reassign()

    def del_dest(self, dest: Dest) -> None:
        """``ip_vs_sh_dest_changed``: rebuild the bucket table."""
        self._reassign()

    def upd_dest(self, dest: Dest) -> None:
        """``ip_vs_sh_dest_changed``: rebuild the bucket table (a weight was edited)."""
        self._reassign()

    def done_service(self) -> None:
        """``ip_vs_sh_done_svc``: empty the bucket table."""
        self.buckets = [None] * SH_TAB_SIZE

    def get(self, addr: bytes, port: int) -> Dest | None:
        """``ip_vs_sh_get``: the destination of the key's bucket, if usable."""
        dest = self.buckets[sh_hashkey(addr, port, 0)]
        return None if dest is None or is_unavailable(dest) else dest

    def get_fallback(self, addr: bytes, port: int) -> Dest | None:
        """``ip_vs_sh_get_fallback``: as :meth:`get`, but an unusable
        destination sends the walk round the table from the key's bucket,
        so the same client keeps landing on the same fallback server."""
        ihash = sh_hashkey(addr, port, 0)
        dest = self.buckets[ihash]
        if dest is None:
            return None
        if not is_unavailable(dest):
            return dest
        for offset in range(SH_TAB_SIZE):
            roffset = (offset + ihash) % SH_TAB_SIZE
            dest = self.buckets[sh_hashkey(addr, port, roffset)]
            if dest is None:
                break
            if not is_unavailable(dest):
                return dest
        return None

    def schedule(self, iph: IPHdr, now: int) -> Dest | None:
        """``ip_vs_sh_schedule``: the destination of the bucket the source address (and port, with the ``sh-port``
        flag) hashes to; with ``sh-fallback``, the key is rehashed with growing offsets until a usable server (or an
        empty bucket).
        """
        flags = self.svc.flags
        if iph.inverse:
            addr, port = iph.daddr, iph.dport
        else:
            addr, port = iph.saddr, iph.sport
        if not (flags & IP_VS_SVC_F_SCHED_SH_PORT and iph.protocol in _PORT_PROTOS):
            port = 0
        if flags & IP_VS_SVC_F_SCHED_SH_FALLBACK:
            dest = self.get_fallback(addr, port)
        else:
            dest = self.get(addr, port)
        if dest is None:
            scheduler_err(self.svc, "no destination available")
        return dest
