"""The data path on real NICs: AF_PACKET rings feeding :class:`ipvs.core.Director`.

This is what the kernel's netfilter hooks, IP routing, ARP and output
path do around ``ip_vs_core.c``; here they are the daemon's data-path
plug-in (``tools/ipvsd --outer IF --inner IF``).  One or two interfaces:

* **outer**: where clients come from.  The driver answers ARP for the VIPs
  (every service address in ``ipvs.svc_table``) and for its outer address,
  which is also the masquerading address.
* **inner**: the real servers' network.  The driver answers ARP for the
  inner address, the real servers' default gateway (172.16.0.1 in the lab).
* or one interface (``--interface``) playing both parts.

Two ways to sit on a NIC:

* ``--mode spare``: the NIC has no kernel addresses; the driver is the
  host there.  It answers ARP, replies to pings to its addresses and sends
  TCP resets and ICMP port unreachables for closed ports, as the kernel
  would.  An nftables ingress drop (:func:`ipvs.driver.nft.install_spare`)
  keeps the kernel's own stacks off the NIC.
* ``--mode shared``: the kernel keeps its addresses (and everything not
  stolen); early nftables drop rules (:mod:`ipvs.driver.nft`) keep it off
  the services, the masquerading ports and the traffic the driver routes.

For each received IPv4 frame: fragments are reassembled
(:mod:`ipvs.driver.frag`), then the core decides.  ``NF_STOLEN``: the
rewritten packet is routed by its destination and sent, refragmented if it
was reassembled; a direct-routed one (``-g``) is routed by the real
server's address instead and keeps its VIP, a tunnelled one (``-i``)
already carries the real server in its outer header
(:attr:`ipvs.core.Director.xmit_to`).  ``NF_ACCEPT``: the packet is not IPVS traffic, so the
driver does what the host would: masquerade the real servers' own
connections (:mod:`ipvs.driver.masq`) and undo it for the answers, deliver
to itself, route it if ``--forward`` says so, or drop it (counted, like a
host with ``ip_forward=0``).  ICMP errors the core queues in
``ipvs.outbox`` are routed and sent the same way.

A next hop that never answers ARP (:mod:`ipvs.driver.neigh`) gets each
frame that was waiting for it answered with an ICMP host unreachable, as
``arp_error_report`` -> ``ipv4_link_failure`` -> ``__icmp_send`` does: the
error quotes the packet as it was about to leave (for IPVS traffic: after
the DNAT, client -> real server), comes from the director's address on
the route back to the sender (``__icmp_send`` leaves the source to the
route lookup for a forwarded packet), then passes the core's LOCAL_OUT
step (:meth:`ipvs.core.Director.local_out`, ``ip_vs_local_reply4``), which
makes it about VIP:vport from the VIP and counts it in the real server's
outgoing stats.  No error about an ICMP error, a non-first fragment, or
to a source that is not unicast; one that would reach the director
itself is only counted (``host_unreach_local``).

ICMP errors the director generates are rate limited per destination as
``icmpv4_xrlim_allow`` does (:class:`ipvs.driver.icmplimit.IcmpRateLimit`:
the kernel's token bucket, ``icmp_ratelimit`` 1000 ms, burst 6,
``icmp_ratemask`` 0x1818, frag-needed exempt), after the host-wide
bucket of ``icmp_global_allow`` that both families share
(:class:`ipvs.driver.icmplimit.GlobalCredit`, 1000 a second, burst 50);
the refused ones are counted in ``drop_icmp_ratelimit``, those the global
bucket refused also in ``icmp_ratelimit_global`` (ICMPv6:
:mod:`ipvs.driver.ip6`).

Offloads stay on: frames carry a ``virtio_net_hdr`` (:mod:`ipvs.driver.ring`),
GSO super-frames are handled whole and the core is told when a checksum is
partial.  ``--strict-checksums`` turns TX checksumming and TSO off on the
director's interfaces for the run, so every checksum the driver emits is
computed in software and a wrong one is caught by the receivers.

IPv6 frames go to :mod:`ipvs.driver.ip6` (neighbour discovery, routes,
local answers) on the ports that have an IPv6 address.

Differences from the kernel, and why: 802.1Q-tagged frames are dropped (use a VLAN
device); routes are the connected networks plus ``--route`` entries, not
the kernel's FIB; the global ICMP limit (``icmp_msgs_per_sec`` 1000,
burst 50, whose credit is taken at random) is not modelled, only the
per-destination one.  A real server at one of the director's own
addresses (the kernel's local node, delivered to the host's sockets) is
not served: its packets are dropped, counted and explained once
(:meth:`AFPacketDriver.to_self`), as the driver has no way into the
host's stack and back.  Under backlog (a client-side RX ring a quarter
full) TCP connection attempts wait per source and are served round robin
after the other frames (:mod:`ipvs.driver.synguard`): the kernel's
softirq keeps up with a SYN flood, a Python loop does not, and the
overflowing ring would otherwise drop every flow's frames alike.
"""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from ipvs.driver import bpf, nft
from ipvs.driver.frag import Reassembler, fragment
from ipvs.driver.gso import segment_tcp
from ipvs.driver.icmplimit import NR_ICMP_TYPES, GlobalCredit, IcmpRateLimit
from ipvs.driver.ip6 import IPv6Path, parse_net6
from ipvs.driver.masq import PORT_MASQ_BEGIN, PORT_MASQ_END, Masq
from ipvs.driver.neigh import (
    ARPOP_REPLY,
    ARPOP_REQUEST,
    BROADCAST,
    ZERO_MAC,
    NeighTable,
    arp_frame,
    parse_arp,
)
from ipvs.driver.ring import (
    DIRECT_MIN,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VNET,
    VNET_HDR_LEN,
    RingSocket,
)
from ipvs.driver.synguard import SynGuard

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.driver.warm import WarmUp
from ipvs.ip_vs import NF_ACCEPT, NF_DROP, NF_STOLEN
from ipvs.packet import (
    ICMP_DEST_UNREACH,
    ICMP_ECHO,
    ICMP_ECHOREPLY,
    ICMP_EXC_TTL,
    ICMP_FRAG_NEEDED,
    ICMP_PORT_UNREACH,
    ICMP_TIME_EXCEEDED,
    IP_DF,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    Drop,
    IPHeader,
    csum_words,
    icmp_checksum,
    ip_send_check,
    l4_csum_full,
    parse,
)
from ipvs.proto.icmp import build_error
from ipvs.uapi import IP_VS_CONN_F_FWD_MASK, IP_VS_CONN_F_TUNNEL, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP
from ipvs.xmit import tunnel_encap, tunnel_overhead

log = logging.getLogger("ipvs.driver")

#: Offset of the IP header in a frame buffer: vnet header + Ethernet.
L3 = VNET_HDR_LEN + 14
ETH_IP = b"\x08\x00"
ICMP_HOST_UNREACH = 1
ICMP_PROT_UNREACH = 2
#: ICMP types that are errors (``icmp_pointers[type].error``): destination
#: unreachable, source quench, redirect, time exceeded, parameter problem.
ICMP_ERROR_TYPES = frozenset((3, 4, 5, 11, 12))

_I = struct.Struct("!I")
_H = struct.Struct("!H")
#: Destination MAC, source MAC, EtherType, written in one call (slice
#: assignment of ``bytes`` would copy each into a temporary bytearray).
_ETH_HDR = struct.Struct("6s6s2s")
#: ``--busy-poll``'s default, in microseconds: off.  50 moved a bulk
#: transfer 18% faster in the lab one day (its next super-frame often comes
#: within it) but cost keep-alive requests 6%; on the same kind of machine
#: the next day it cost both, bulk 17% (docs/lab.md).
BUSY_POLL_US = 0
SIOCGIFHWADDR = 0x8927
SIOCGIFMTU = 0x8921


def if_info(name: str) -> tuple[bytes, int]:
    """(MAC address, MTU) of an interface, by ioctl."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        req = struct.pack("16s24x", name.encode())
        mac = fcntl.ioctl(s, SIOCGIFHWADDR, req)[18:24]
        mtu = struct.unpack_from("i", fcntl.ioctl(s, SIOCGIFMTU, req), 16)[0]
    finally:
        s.close()
    return bytes(mac), mtu


def _net(text: str) -> tuple[int, int, int]:
    """'a.b.c.d/p' -> (address, mask, prefix length) as host-order ints."""
    iface = ipaddress.IPv4Interface(text)
    return int(iface.ip), int(iface.network.netmask), iface.network.prefixlen


def _not_attached(buf: bytearray) -> None:
    """A port no driver handles yet: what it receives is not looked at."""


class Port:
    """One interface of the director: its ring, addresses and neighbours."""

    def __init__(self, name: str, role: str, addr: int, mask: int, hz: int,
                 mac: bytes | None = None, mtu: int = 1500, ring=None) -> None:
        self.name = name
        self.role = role  # "outer", "inner" or "both"
        self.addr = addr
        self.addr_b = _I.pack(addr)
        self.mask = mask
        self.net = addr & mask
        self.mac = mac or ZERO_MAC
        self.mtu = mtu
        self.ring = ring
        #: The per-frame function the driver attaches (AFPacketDriver._make_rx).
        self.rx_handler: Callable[[bytearray], None] = _not_attached
        self.neigh = NeighTable(hz)
        self.arp_for: set[int] = {addr}
        #: IPv6 (empty: the port does not take part); the IPv6 path uses
        #: the neighbour table and fills in the targets it answers.
        self.addr6 = b""
        self.plen6 = 0
        self.neigh6 = NeighTable(hz)
        self.nd_for: set[bytes] = set()

    def set_addr6(self, text: str) -> None:
        """Give the port an IPv6 address ('2001:db8::1/64')."""
        self.addr6, self.plen6 = parse_net6(text)

    def queue(self, buf: bytearray, n: int) -> bool:
        """Queue ``buf[:n]`` on this port's TX ring; False when the ring has no free slot (the frame is dropped and
        counted by the caller).
        """
        return self.ring.queue(buf, n)

    def flush(self) -> None:
        """Hand the queued TX slots to the kernel (one ``send``)."""
        self.ring.flush()


class AFPacketDriver:
    """The daemon's data-path plug-in (see :mod:`ipvs.daemon`).

    Built by :func:`from_args` on real interfaces; tests build it with
    ports whose ``ring`` is any object with ``queue(buf, n)`` and
    ``flush()`` and feed frames to :meth:`rx_frame`.
    """

    def __init__(self, director, ports: list[Port], mode: str = "spare",
                 masq_nets: list[tuple[int, int]] | None = None,
                 masq_ports: tuple[int, int] = (PORT_MASQ_BEGIN, PORT_MASQ_END),
                 routes: list[tuple[int, int, int]] | None = None,
                 forward: bool = False, batch: int = 256, syn_guard: bool = True,
                 routes6: list[tuple[bytes, int, bytes]] | None = None, busy_poll_us: int = BUSY_POLL_US) -> None:
        self.d = director
        self.ipvs = director.ipvs
        self.hz = self.ipvs.hz
        # The core's ICMP errors about forwarded packets come from the
        # director's own address on the route back (as icmp_send picks it).
        director.own_address = self._own_address
        self.ports = ports
        self.mode = mode
        self.batch = batch
        #: Seconds :meth:`spin` watches the rings before the loop sleeps.
        self.busy_poll = max(0, busy_poll_us) / 1e6
        #: Whether frames came in since the last :meth:`spin`.
        self._received = False
        #: Whether frames came in since the last :meth:`on_idle`.
        self._busy = False
        #: The JIT's warm-up (:mod:`ipvs.driver.warm`) while it runs, and
        #: the real frames received meanwhile.
        self.warm: WarmUp | None = None
        self.frames_while_warming = 0
        self.forward = forward
        self.outer = next(p for p in ports if p.role in ("outer", "both"))
        self.inner = [p for p in ports if p.role in ("inner", "both")]
        self.inner_mtu = min((p.mtu for p in self.inner), default=None)
        self.by_fd = {p.ring.fileno(): p for p in ports if hasattr(p.ring, "fileno")}
        self.now = 0
        self.drops: Counter = Counter()
        self.counts: Counter = Counter()
        self.frags = Reassembler(self.hz)
        #: icmp_global: one bucket for the errors of both families.
        self.icmp_global = GlobalCredit(self.hz)
        self.icmp_limit = IcmpRateLimit(self.hz, global_credit=self.icmp_global)
        self.guard = SynGuard(self.hz)
        self.syn_guard = syn_guard
        self.masq = None
        if masq_nets:
            self.masq = Masq(masq_nets, self.outer.addr, self.hz, ports=masq_ports)
        # Routes: connected networks of the ports, then the configured ones.
        self.routes: list[tuple[int, int, int, Port, int]] = []
        for p in ports:
            self.routes.append((p.net, p.mask, bin(p.mask).count("1"), p, 0))
        for net, mask, gw in routes or ():
            gp = self._connected(gw)
            if gp is None:
                raise ValueError(f"gateway {ipaddress.IPv4Address(gw)} is on no interface's network")
            self.routes.append((net & mask, mask, bin(mask).count("1"), gp, gw))
        self.routes.sort(key=lambda r: -r[2])
        self.route_cache: dict[int, tuple[Port, int] | None] = {}
        self.svc_keys: tuple = (frozenset(), frozenset(), ())
        self.vips: set[int] = set()
        #: The ports' own addresses: a next hop among them is a real server
        #: on the director itself (IPv6: :attr:`IPv6Path.own_nh`).
        self.own_addrs = frozenset(p.addr for p in ports)
        #: Addresses that are the director's own: its ports' always, the VIPs too in spare mode.
        self.local: set[int] = set(self.own_addrs)
        self._warned_self: set[int] = set()
        self._next_tick = 0
        #: daddr -> (ring, Ethernet header, MTU, the ring's queue method).
        self.dst_cache: dict[int, tuple] = {}
        #: The IPv6 path, when a port has an IPv6 address.
        self.v6 = IPv6Path(self, routes6) if any(p.addr6 for p in ports) else None
        for p in ports:
            p.rx_handler = self._make_rx(p)
            if p.role != "inner" and hasattr(p.ring, "early"):
                p.ring.early = self._make_early()
        #: Commands that undo what from_args changed on the interfaces (offloads).
        self._undo: list[list[str]] = []
        #: Shared mode: the nft table is in place, so VIPs are kept in its set.
        self._nft_ready = False
        #: Spare mode: the netdev table hides the NICs' frames from the kernel.
        self.kernel_off = False
        self.sync_services(force=True)

    # ------------------------------------------------------------ plug-in API

    def mapped_bytes(self) -> int:
        """Bytes of the rings the kernel mapped into this process (for the daemon's memory budget)."""
        return sum(len(p.ring.mm) for p in self.ports if hasattr(p.ring, "mm"))

    def fds(self) -> list[int]:
        """The descriptors the daemon's loop polls for this driver (one per ring socket)."""
        return list(self.by_fd)

    #: Queued connection attempts handed to the core per drain and per
    #: idle turn while the SYN guard has some (:mod:`ipvs.driver.synguard`).
    GUARD_SERVE = 32

    def on_readable(self, fd: int, now: int) -> None:
        """Drain one interface's RX ring (one batch), then send what it produced.

        A client-side ring a quarter full engages the SYN guard
        (:mod:`ipvs.driver.synguard`): connection attempts then wait per
        source while the other frames go through, and a few are served
        after each drain.
        """
        p = self.by_fd.get(fd)
        if p is None:
            return
        self.now = now
        ring = p.ring
        guard = self.guard
        if self.syn_guard and p.role != "inner" and ring.holds(max(1, ring.nslots >> 2)):
            guard.engage(now)
        n = ring.rx(p.rx_handler, self.batch)
        if n:
            self._received = self._busy = True
            if self.warm is not None:
                self.frames_while_warming += n
        if guard.turns:
            guard.serve(self.GUARD_SERVE)
        self._after_batch()

    def spin(self) -> bool:
        """Busy polling before the loop sleeps: True as soon as a frame waits.

        After a turn that received frames, the RX rings' next slots are
        watched for up to ``--busy-poll`` microseconds, as the kernel's
        ``busy_poll`` has a socket's poll spin on its device queue.  A
        frame that comes meanwhile is handled without a sleep and a
        wake-up; and the wake-up is not only the daemon's cost: the
        kernel runs it in the sender's context (``sock_def_readable``
        from the packet socket's ``tpacket_rcv``), where on a VM it costs
        an interprocessor interrupt.  Under a bulk transfer, a loop that
        never slept took about 200 ms a GB off iperf3's sender
        (docs/lab.md).  A turn without frames never spins, so an idle
        director sleeps.  Off by default: when frames come close together
        anyway (keep-alive requests), a frame caught at once is a turn of
        its own and its own ``send``, where a sleep would have let several
        share one.
        """
        if not self._received or not self.busy_poll:
            return False
        self._received = False
        rings = [p.ring for p in self.ports]
        end = time.monotonic() + self.busy_poll
        while True:
            for ring in rings:
                if ring.holds(1):
                    self.counts["busy_poll_hits"] += 1
                    return True
            if time.monotonic() >= end:
                self.counts["busy_poll_misses"] += 1
                return False

    def poll_timeout(self) -> float | None:
        """Seconds until :meth:`on_idle` has neighbour or expiry work (0 while
        SYNs wait in the guard, or while the warm-up runs)."""
        if self.guard.turns or self.warm is not None:
            return 0.0
        wait = 1.0
        for p in self.ports:
            t = p.neigh.next_event(self.now)
            if t is not None:
                wait = min(wait, max(0.0, (t - self.now) / self.hz))
        if self.v6 is not None:
            t = self.v6.next_event(self.now)
            if t is not None:
                wait = min(wait, max(0.0, (t - self.now) / self.hz))
        return wait

    def on_idle(self, now: int) -> None:
        """Neighbour retransmissions and probes, expiry, filter updates, TX flush."""
        self.now = now
        if self.guard.turns:
            self.guard.serve(self.GUARD_SERVE)
        self.sync_services()
        if now >= self._next_tick:
            self._next_tick = now + max(1, self.hz // 10)
            for p in self.ports:
                requests, unresolved = p.neigh.tick(now)
                for ip, mac in requests:
                    self._arp_request(p, ip, mac)
                for buf, _n in unresolved:
                    self._host_unreach(buf)
                if p.neigh.changed:
                    p.neigh.changed = False
                    self.dst_cache.clear()
            if self.v6 is not None:
                self.v6.tick(now)
            self.frags.expire(now)
            if self.icmp_limit.peers:
                self.icmp_limit.expire(now)
            if self.masq is not None:
                self.masq.expire(now)
        self._after_batch()
        if self.warm is not None:
            if self.frames_while_warming >= self.WARM_UP_YIELDS_AT:
                self.warm.finish(f"{self.frames_while_warming} real frames came meanwhile")
                self.warm = None
            elif not self._busy:
                self._warm_step(self.warm)
        self._busy = False

    #: Real frames after which the warm-up stops: traffic that came first
    #: compiles the data path itself, and the warm-up's rounds in the turns
    #: between its frames would only take CPU time from it.
    WARM_UP_YIELDS_AT = 10000

    def _warm_step(self, warm: WarmUp) -> None:
        """A round of the JIT's warm-up, in a turn that received no frame."""
        try:
            done = warm.step()
        except Exception:
            log.exception("JIT warm-up failed; going on without it")
            warm.failed = True
            warm.finish()
            done = True
        if done:
            self.warm = None

    def close(self) -> None:
        """Close the sockets and remove everything installed on the machine."""
        try:
            log.info("data path counters: %s", " ".join(f"{k}={v}" for k, v in sorted(self.counters().items())))
        except OSError:
            pass
        for p in self.ports:
            if hasattr(p.ring, "close"):
                p.ring.close()
        if self.mode == "shared":
            nft.remove()
        elif self.kernel_off:
            nft.remove(("netdev",))
        for undo in self._undo:
            _run_undo(undo)
        self._undo = []

    # ------------------------------------------------------------ services

    def sync_services(self, force: bool = False) -> None:
        """Follow the service table: VIPs to answer ARP for, filters, nft sets."""
        ipvs = self.ipvs
        # Three sets side by side, never one set copied from another: on PyPy
        # 7.3.11 a set made from a dict or list whose keys go from none to
        # bytes or ints and back, then copied in the same trace (``|``,
        # ``-``, ``.copy()``), crashes the JIT's code (a segfault, reading
        # the empty strategy's storage as a dict: PyPy issue 5245's family).
        # Every service flushed after some 2000 idle turns did that here.
        keys = (frozenset(ipvs.svc_table), frozenset(ipvs.fwm_table), tuple(ipvs.marks.rules))
        if keys == self.svc_keys and not force:
            return
        self.svc_keys = keys
        svcs = {(s.addr, s.protocol, s.port) for s in ipvs.svc_table.values()
                if s.af == socket.AF_INET and not s.fwmark}
        svcs6 = {(s.addr, s.protocol, s.port) for s in ipvs.svc_table.values()
                 if s.af == socket.AF_INET6 and not s.fwmark}
        fw_vips = self.fwmark_vips()
        fw_vips6 = self.fwmark_vips(socket.AF_INET6)
        vips = {_I.unpack(a)[0] for a in fw_vips} | {_I.unpack(a)[0] for a, _, _ in svcs}
        if self.outer.ring is not None:
            # Gratuitous ARP for each new VIP, so neighbours that knew it at
            # another MAC (a director that failed over) learn ours at once.
            for vip in sorted(vips - self.vips):
                f = arp_frame(ARPOP_REQUEST, self.outer.mac, vip, ZERO_MAC, vip, BROADCAST)
                self.outer.queue(f, len(f))
                self.counts["garp"] += 1
        self.vips = vips
        self.outer.arp_for = {self.outer.addr} | self.vips
        if self.mode == "spare":
            self.local = self.vips | self.own_addrs
        if self.v6 is not None:
            self.v6.sync_services(fw_vips6)
        for p in self.ports:
            ring = p.ring
            if hasattr(ring, "set_filter"):
                ring.set_filter(self.filter_for(p))
        if self.mode == "shared" and self._nft_ready:
            try:
                # fwmark VIPs join the drop set like any VIP (it is by address).
                nft.sync_services(svcs | svcs6 | {(a, socket.IPPROTO_TCP, 0) for a in fw_vips | fw_vips6})
            except (OSError, RuntimeError) as e:
                # The kernel then also answers the new services: loud, not fatal.
                log.error("updating the nftables service set failed: %s", e)
                self.drops["nft_sync_failed"] += 1

    #: The most addresses of one mark rule's prefix taken as VIPs (a /24, or an IPv6 /120).
    FWMARK_VIP_MAX_ADDRS = 256

    def fwmark_vips(self, af: int = socket.AF_INET) -> set[bytes]:
        """The addresses of fwmark services of family ``af`` (packed): every
        address of a mark rule's destination prefix whose mark has a
        fwmark service of that family.

        For the kernel these VIPs are addresses configured on the director
        and marked by iptables; here the mark rules (ipvs.fwmark) name them.
        Prefixes of more than 256 addresses are not expanded (a director
        does not answer ARP or neighbour solicitations for a whole
        network): use narrower rules for those.
        """
        ipvs = self.ipvs
        marks = {m for (f, m) in ipvs.fwm_table if f == af}
        out: set[bytes] = set()
        for r in ipvs.marks.rules:
            if r.af != af or r.mark not in marks or r.daddr is None:
                continue
            net = ipaddress.ip_network(r.daddr)
            if net.num_addresses <= self.FWMARK_VIP_MAX_ADDRS:
                out.update(a.packed for a in net)
        return out

    def filter_for(self, p: Port) -> bytes:
        """The BPF program for port ``p`` (see :mod:`ipvs.driver.bpf`)."""
        daddrs: set[int] = set()
        src_nets: list[tuple[int, int]] = []
        exclude: set[int] = set()
        masq = None
        if p.role in ("outer", "both"):
            daddrs |= self.vips
            if self.mode == "spare":
                daddrs.add(p.addr)
            elif self.masq is not None:
                masq = (p.addr, self.masq.lo, self.masq.hi)
        if p.role in ("inner", "both"):
            if self.mode == "spare":
                daddrs.add(p.addr)
            else:
                exclude = self.vips | self.own_addrs
            src_nets.append((p.net, p.mask))
            if self.masq is not None:
                src_nets += self.masq.nets
        ipv6 = bool(p.addr6)
        if self.forward:
            return bpf.build(all_ipv4=True, ipv6=ipv6)
        return bpf.build(daddrs, src_nets, exclude, masq, ipv6=ipv6)

    # ------------------------------------------------------------ receive

    def rx_frame(self, p: Port, buf: bytearray) -> None:
        """Handle one received frame (vnet header first) from port ``p``."""
        p.rx_handler(buf)

    def _make_rx(self, p: Port):
        """The per-frame function for port ``p``: the fast path, inlined.

        A plain IPv4 packet (no options, not a fragment) whose rewritten
        destination is in the destination cache is handled without leaving
        this function; everything else takes the general path.
        """
        d = self.d
        process = d.process
        drops = self.drops
        counts = self.counts
        dst_cache = self.dst_cache
        mac = p.mac
        unpack = _I.unpack_from
        min_mtu = min(q.mtu for q in self.ports)
        guard = self.guard
        guarded = p.role != "inner"

        def rx(buf: bytearray) -> None:
            if len(buf) < L3 + 20:
                self._short(p, buf)
                return
            if buf[22] != 8 or buf[23]:
                if buf[22:24] == b"\x08\x06":
                    self._arp_in(p, buf)
                elif buf[22:24] == b"\x86\xdd" and self.v6 is not None:
                    self.v6.rx(p, buf)
                else:
                    drops["not_ipv4"] += 1
                return
            if buf[L3] != 0x45 or buf[L3 + 6] & 0x3F or buf[L3 + 7]:
                self._ip_in(p, buf)  # options, fragments, garbage
                return
            # A connection attempt (TCP SYN without ACK, FIN, RST) from the
            # clients' side waits its source's turn while the guard is on.
            if guarded and guard.until and buf[L3 + 9] == IPPROTO_TCP and len(buf) >= L3 + 34 and \
                    buf[L3 + 33] & 0x17 == TCP_SYN and guard.engaged(self.now):
                guard.defer(unpack(buf, L3 + 12)[0], ipv4, buf)
                return
            ipv4(buf)

        def ipv4(buf: bytearray) -> None:
            """A plain IPv4 packet (no options, not a fragment)."""
            if buf[10:16] != mac and not buf[10] & 1:
                drops["otherhost"] += 1
                return
            if int.from_bytes(buf[L3 : L3 + 20], "big") % 0xFFFF:
                drops["ip_csum"] += 1  # a valid header sums to 0xFFFF (== 0 mod 0xFFFF)
                return
            if buf[1]:  # GSO: its segments fit the MTU by construction
                d.mtu = None
            else:
                if (buf[L3 + 2] << 8 | buf[L3 + 3]) > min_mtu and self._too_big(p, buf):
                    return
                d.mtu = self.inner_mtu
            verdict = process(buf, L3, self.now, buf[0] & 1 == 1)
            if verdict == NF_STOLEN:
                counts["ipvs"] += 1
                if d.xmit_to is not None:
                    self.fwd_out(buf, 0)  # DR or TUN
                    return
                # The core may have changed the length (application helpers).
                tot = buf[L3 + 2] << 8 | buf[L3 + 3]
                e = dst_cache.get(unpack(buf, L3 + 16)[0])
                if e is None or (tot > e[2] and not buf[1]):
                    self.route_out(buf, L3, 0)
                    return
                buf[10:24] = e[1]
                if not e[3](buf, L3 + tot):
                    drops["tx"] += 1
            elif verdict == NF_ACCEPT:
                self._not_ipvs(p, buf, 0)
            else:
                drops["ipvs_drop"] += 1

        return rx

    def _make_early(self):
        """The ring's ``early(mm, l2, snaplen)`` test for a client-side port: True for a TCP connection attempt
        whose source already has its share of SYNs waiting in the guard (dropped in the slot, never copied)."""
        guard = self.guard
        unpack = _I.unpack_from

        def early(mm, l2: int, snaplen: int) -> bool:
            if not guard.turns or snaplen < 48:
                return False  # no SYN waits, so no queue is full
            if mm[l2 + 12] != 8 or mm[l2 + 13] or mm[l2 + 14] != 0x45 or mm[l2 + 23] != IPPROTO_TCP or \
                    mm[l2 + 47] & 0x17 != TCP_SYN or mm[l2 + 20] & 0x3F or mm[l2 + 21]:
                return False
            return guard.full(unpack(mm, l2 + 26)[0])

        return early

    def _too_big(self, p: Port, buf: bytearray) -> bool:
        """``ip_forward``'s MTU check for what comes from the real servers' side.

        The kernel checks before the FORWARD hook where IPVS rewrites
        replies, so the error quotes the packet as the real server sent it
        and goes back to it.  (Towards the real servers the core checks,
        with ``Director.mtu``.)  True: the packet was answered and dropped.
        """
        if p.role == "outer":
            return False
        r = self.route(_I.unpack_from(buf, L3 + 16)[0])
        tot = buf[L3 + 2] << 8 | buf[L3 + 3]
        if r is None or tot <= r[0].mtu or not buf[L3 + 6] & 0x40:
            return False  # fits, or may be fragmented on the way out
        self._icmp_error(buf, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, p.addr_b, r[0].mtu)
        self.drops["frag_needed"] += 1
        return True

    def _short(self, p: Port, buf: bytearray) -> None:
        if len(buf) < L3:
            self.drops["runt"] += 1
        elif buf[22:24] == b"\x08\x06":
            self._arp_in(p, buf)
        else:
            self.drops["bad_ip" if buf[22:24] == ETH_IP else "not_ipv4"] += 1

    def _ip_in(self, p: Port, buf: bytearray) -> None:
        n = len(buf)
        if n < L3 + 20 or buf[L3] >> 4 != 4:
            self.drops["bad_ip"] += 1
            return
        if buf[10:16] != p.mac and not buf[10] & 1:
            self.drops["otherhost"] += 1
            return
        ihl = (buf[L3] & 0x0F) << 2
        if ihl < 20 or n < L3 + ihl or csum_words(buf[L3 : L3 + ihl]) != 0xFFFF:
            self.drops["ip_csum"] += 1
            return
        maxfrag = 0
        if buf[L3 + 6] & 0x3F or buf[L3 + 7]:
            got = self.frags.add(buf, L3, self.now)
            if got is None:
                return
            buf, maxfrag = got
        gso = buf[1]
        d = self.d
        d.mtu = None if gso else self.inner_mtu
        verdict = d.process(buf, L3, self.now, bool(buf[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM))
        if verdict == NF_STOLEN:
            self.counts["ipvs"] += 1
            if d.xmit_to is not None:
                self.fwd_out(buf, maxfrag)
            else:
                self.route_out(buf, L3, maxfrag)
        elif verdict == NF_ACCEPT:
            self._not_ipvs(p, buf, maxfrag)
        else:
            self.drops["ipvs_drop"] += 1

    def _not_ipvs(self, p: Port, buf: bytearray, maxfrag: int) -> None:
        """What the host does with a packet IPVS did not take."""
        daddr = _I.unpack_from(buf, L3 + 16)[0]
        partial = bool(buf[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM)
        masq = self.masq
        if masq is not None and daddr == masq.maddr:
            if masq.in_(buf, L3, partial, self.now):
                if self._forward_ttl(p, buf):
                    self.counts["masq_in"] += 1
                    self.route_out(buf, L3, maxfrag)
                return
        if daddr in self.local or (daddr & 0xFF) == 0xFF and self._is_bcast(daddr):
            if self.mode == "spare":
                self._local_in(p, buf)
            return
        if self.mode == "shared":
            if daddr in self.vips:
                # The nftables rules hide TCP/UDP to a VIP from the kernel:
                # answer closed ports in its place.  ICMP (a ping) is the
                # kernel's, which holds the VIP: never forwarded as well.
                if buf[L3 + 9] != IPPROTO_ICMP:
                    self._local_in(p, buf)
                return
        saddr = _I.unpack_from(buf, L3 + 12)[0]
        if masq is not None and masq.matches(saddr) and p.role != "outer":
            if not self._forward_ttl(p, buf):
                return
            if masq.out(buf, L3, partial, self.now):
                self.counts["masq_out"] += 1
                self.route_out(buf, L3, maxfrag)
            else:
                self.drops["masq"] += 1
            return
        if self.forward:
            if self._forward_ttl(p, buf):
                self.counts["forwarded"] += 1
                self.route_out(buf, L3, maxfrag)
            return
        self.drops["not_forwarded"] += 1

    def _is_bcast(self, daddr: int) -> bool:
        return any(daddr == (p.net | (~p.mask & 0xFFFFFFFF)) for p in self.ports)

    def _forward_ttl(self, p: Port, buf: bytearray) -> bool:
        """``ip_forward``'s TTL step: time exceeded at TTL <= 1, else decrement."""
        if buf[L3 + 8] <= 1:
            self._icmp_error(buf, ICMP_TIME_EXCEEDED, ICMP_EXC_TTL, p.addr_b)
            self.drops["ttl"] += 1
            return False
        buf[L3 + 8] -= 1
        check = _H.unpack_from(buf, L3 + 10)[0] + 0x0100
        _H.pack_into(buf, L3 + 10, (check + (check >> 16)) & 0xFFFF)
        return True

    def _may_answer(self, buf: bytearray, end: int) -> bool:
        """``__icmp_send``'s refusals, for every error the driver makes: none
        about a fragment other than the first, none to a source that is not
        unicast, none about an ICMP error or a type it does not know
        (RFC 1122 3.2.2)."""
        if (buf[L3 + 6] & 0x1F) or buf[L3 + 7]:
            return False  # "only reply to fragment 0"
        saddr = _I.unpack_from(buf, L3 + 12)[0]
        if not saddr or saddr >= 0xE0000000 or self._is_bcast(saddr):
            return False
        ihl = (buf[L3] & 15) << 2
        if buf[L3 + 9] != IPPROTO_ICMP or end - L3 <= ihl:
            return True
        t = buf[L3 + ihl]
        return not (t > NR_ICMP_TYPES or t in ICMP_ERROR_TYPES)

    def _icmp_error(self, buf: bytearray, icmp_type: int, code: int, src: bytes, info: int = 0) -> None:
        end = L3 + (buf[L3 + 2] << 8 | buf[L3 + 3])
        if self._may_answer(buf, end):
            self.ipvs.outbox.append(build_error(buf, L3, end, icmp_type, code, src, info=info))

    def _host_unreach(self, buf: bytearray) -> None:
        """``ipv4_link_failure`` for a frame whose next hop did not resolve.

        The error goes back to the packet's sender from the director's
        address on that route, through the core's LOCAL_OUT step, which
        rewrites errors about IPVS traffic so they come from the VIP and
        quote VIP:vport.  It is routed like any other packet (the sender's
        own next hop may still need resolving).
        """
        counts = self.counts
        if len(buf) < L3 + 20 or buf[L3] >> 4 != 4:
            return
        end = min(len(buf), L3 + (buf[L3 + 2] << 8 | buf[L3 + 3]))
        if not self._may_answer(buf, end):
            counts["host_unreach_not_sent"] += 1
            return
        saddr = _I.unpack_from(buf, L3 + 12)[0]
        if not self.icmp_limit.allow(saddr, ICMP_DEST_UNREACH, ICMP_HOST_UNREACH, self.now):
            self.drops["icmp_ratelimit"] += 1
            return
        err = bytearray(L3) + build_error(buf, L3, end, ICMP_DEST_UNREACH, ICMP_HOST_UNREACH,
                                          self._src_for(buf, L3))
        verdict = self.d.local_out(err, L3, self.now)
        if verdict == NF_DROP:
            self.drops["host_unreach_ipvs"] += 1
            return
        daddr = _I.unpack_from(err, L3 + 16)[0]
        if verdict != NF_STOLEN and (daddr in self.local or daddr in self.vips):
            # For the director itself: the kernel delivers it to its own
            # stack, where nothing waits for it.
            counts["host_unreach_local"] += 1
            return
        counts["host_unreach"] += 1
        if verdict == NF_STOLEN and self.d.xmit_to is not None:
            self.fwd_out(err, 0)  # an error about a DR/TUN connection, passed on to its real server
        else:
            self.route_out(err, L3)

    def _local_in(self, p: Port, buf: bytearray) -> None:
        """Spare mode: the director's own addresses answer like a host's."""
        h = parse(buf, L3)
        if not isinstance(h, IPHeader):
            return
        proto = h.protocol
        end = h.end
        dst = bytes(buf[L3 + 16 : L3 + 20])
        if proto == IPPROTO_ICMP:
            if end - h.l4 >= 8 and buf[h.l4] == ICMP_ECHO:
                out = bytearray(buf[L3:end])
                out[12:16], out[16:20] = buf[L3 + 16 : L3 + 20], buf[L3 + 12 : L3 + 16]
                out[8] = 64
                ip_send_check(out, 0)
                l4 = h.l4 - L3
                out[l4] = ICMP_ECHOREPLY
                _H.pack_into(out, l4 + 2, icmp_checksum(out, l4, len(out)))
                self.counts["echo_reply"] += 1
                self.ipvs.outbox.append(out)
            return
        if dst[3] == 0xFF and self._is_bcast(_I.unpack(dst)[0]):
            return
        if proto == IPPROTO_UDP:
            self._icmp_error(buf, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, dst)
        elif proto == IPPROTO_TCP:
            self._tcp_reset(buf, h)
        else:
            self._icmp_error(buf, ICMP_DEST_UNREACH, ICMP_PROT_UNREACH, dst)

    def _tcp_reset(self, buf: bytearray, h) -> None:
        """``tcp_v4_send_reset`` for a segment to a closed port."""
        l4 = h.l4
        if h.end - l4 < 20:
            return
        flags = buf[l4 + 13]
        if flags & TCP_RST:
            return
        sport, dport, seq, ack = struct.unpack_from("!HHII", buf, l4)
        doff = (buf[l4 + 12] >> 4) << 2
        out = bytearray(40)
        struct.pack_into("!BBHHHBBH4s4s", out, 0, 0x45, 0, 40, 0, IP_DF, 64, IPPROTO_TCP, 0,
                         bytes(buf[L3 + 16 : L3 + 20]), bytes(buf[L3 + 12 : L3 + 16]))
        if flags & TCP_ACK:
            struct.pack_into("!HHIIBBH", out, 20, dport, sport, ack, 0, 5 << 4, TCP_RST, 0)
        else:
            seglen = h.end - l4 - doff + bool(flags & TCP_SYN) + bool(flags & TCP_FIN)
            struct.pack_into("!HHIIBBH", out, 20, dport, sport, 0, (seq + seglen) & 0xFFFFFFFF, 5 << 4,
                             TCP_RST | TCP_ACK, 0)
        ip_send_check(out, 0)
        rst = parse(out, 0)
        assert isinstance(rst, IPHeader)  # built above: a whole IPv4 TCP segment
        l4_csum_full(out, rst)
        self.counts["tcp_reset"] += 1
        self.ipvs.outbox.append(out)

    # ------------------------------------------------------------ ARP

    def _arp_in(self, p: Port, buf: bytearray) -> None:
        a = parse_arp(buf, L3)
        if a is None:
            self.drops["bad_arp"] += 1
            return
        op, sha, spa, _tha, tpa = a
        if sha == p.mac:
            return
        ours = tpa in p.arp_for
        if spa == 0:
            # Duplicate address detection (RFC 5227 probe): say the address
            # is taken, as the kernel does; nothing to learn from it.
            if op == ARPOP_REQUEST and ours:
                self.counts["arp_reply"] += 1
                f = arp_frame(ARPOP_REPLY, p.mac, tpa, sha, 0, sha)
                p.queue(f, len(f))
            return
        on_link = spa & p.mask == p.net
        if on_link:
            for qbuf, n in p.neigh.confirm(spa, sha, self.now, create=ours and op == ARPOP_REQUEST):
                self._send(p, qbuf, n, sha)
            if p.neigh.changed:
                p.neigh.changed = False
                self.dst_cache.clear()
        if op == ARPOP_REQUEST and ours:
            self.counts["arp_reply"] += 1
            f = arp_frame(ARPOP_REPLY, p.mac, tpa, sha, spa, sha)
            p.queue(f, len(f))

    def _arp_request(self, p: Port, ip: int, mac: bytes | None) -> None:
        f = arp_frame(ARPOP_REQUEST, p.mac, p.addr, ZERO_MAC, ip, mac or BROADCAST)
        p.queue(f, len(f))

    # ------------------------------------------------------------ transmit

    def route(self, daddr: int) -> tuple[Port, int] | None:
        """(port, next hop) for ``daddr``: longest prefix match, cached."""
        try:
            return self.route_cache[daddr]
        except KeyError:
            pass
        r = None
        for net, mask, _plen, port, gw in self.routes:
            if daddr & mask == net:
                r = (port, gw or daddr)
                break
        if len(self.route_cache) > 65536:
            self.route_cache.clear()
        self.route_cache[daddr] = r
        return r

    def _connected(self, ip: int) -> Port | None:
        for p in self.ports:
            if ip & p.mask == p.net:
                return p
        return None

    def fwd_out(self, buf: bytearray, maxfrag: int) -> None:
        """Send a packet the core direct-routed or tunnelled
        (:attr:`ipvs.core.Director.xmit_to`): to the real server; either
        family (the IPv6 path of :mod:`ipvs.driver.ip6` comes here too).

        DR: the packet still says VIP; it is routed as if to the real
        server and leaves with that neighbour's MAC (the kernel's route to
        ``cp->daddr`` with ``IP_VS_RT_MODE_KNOWN_NH``).  TUN: the outer
        header says the real server, in its family, which may not be the
        packet's (a mixed-family tunnel); the checksums are final (the core
        completed the inner one), so the frame no longer asks for one.  A
        GSO super-frame cannot be tunnelled through a packet socket
        (``virtio_net_hdr`` has no tunnel segmentation types): its inner
        packet is cut into segments here (:mod:`ipvs.driver.gso`) and each
        is wrapped as the core wraps (:func:`ipvs.xmit.tunnel_encap`).
        """
        d = self.d
        cp = d.xmit_to
        d.xmit_to = None
        if cp.flags & IP_VS_CONN_F_FWD_MASK == IP_VS_CONN_F_TUNNEL:
            if buf[1]:
                self._tunnel_gso(buf, cp)
                return
            buf[0] &= ~VIRTIO_NET_HDR_F_NEEDS_CSUM
            self.counts["tunnelled"] += 1
            self._out_any(buf, maxfrag)
        elif len(cp.daddr) == 16:
            if self.v6 is not None:  # (it is: only its IPv6 path sees IPv6 packets)
                self.counts["direct_routed6"] += 1
                self.v6.route_out(buf, L3, maxfrag, via=cp.daddr)
        else:
            self.counts["direct_routed"] += 1
            self.route_out(buf, L3, maxfrag, via=_I.unpack(cp.daddr)[0], ignore_df=True)

    def _out_any(self, buf: bytearray, maxfrag: int = 0) -> None:
        """Route a tunnelled packet by its outer header's family (the
        IPVS transmitters' ``ignore_df``: IPv4 may be fragmented)."""
        if buf[L3] >> 4 == 6:
            if self.v6 is None:
                self.drops["ipv6_off"] += 1
                return
            self.v6.route_out(buf, L3, maxfrag, ignore_df=True)
        else:
            self.route_out(buf, L3, maxfrag, ignore_df=True)

    def _tunnel_gso(self, buf: bytearray, cp) -> None:
        """A tunnelled TCP GSO super-frame (IPv4 or IPv6 inside): unwrap,
        cut, wrap each segment."""
        dest = cp.dest
        gso = buf[1] & 0x7F
        if gso not in (VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6) or dest is None:
            self.drops["tun_gso"] += 1  # (UDP fragmentation offload: not sent by Linux hosts)
            return
        gso_size = VNET.unpack_from(buf, 0)[3]
        # The core wrapped it as a partial (offloaded) TCP packet.
        daddr = cp.daddr
        del buf[L3 : L3 + tunnel_overhead(dest.tun_type, dest.tun_flags, True, len(daddr) == 16)]
        segs = segment_tcp(buf, L3, gso_size)
        if not segs:
            self.drops["tun_gso"] += 1
            return
        saddr = self._own_address(daddr) or (self.inner[0].addr_b if len(daddr) == 4 else bytes(16))
        pp = self.ipvs.proto_data[IPPROTO_TCP].pp
        for seg in segs:
            h = parse(seg, L3)
            if not isinstance(h, IPHeader):  # (cannot be: segment_tcp built it)
                continue
            tunnel_encap(self.ipvs, cp, pp, seg, h, False, saddr)
            self._out_any(seg)
        self.counts["tunnelled"] += len(segs)
        self.counts["tun_gso_segmented"] += 1

    def route_out(self, buf: bytearray, l3: int, maxfrag: int = 0, via: int | None = None,
                  ignore_df: bool = False) -> None:
        """Route the IP packet at ``buf[l3:]`` (after vnet+Ethernet) and send it.

        ``via``: route it as if its destination were this address (direct
        routing: the packet keeps the VIP).  ``ignore_df``: the kernel's
        "avoid icmp_send in ip_fragment" hack of the IPVS transmitters
        (``skb->ignore_df``): a DF packet too big for the link (only a GSO
        segment can be: the core checked the others) is fragmented, its
        fragments without DF, instead of answered.
        """
        daddr = _I.unpack_from(buf, l3 + 16)[0] if via is None else via
        r = self.route(daddr)
        if r is None:
            self.drops["no_route"] += 1
            return
        port, nh = r
        tot = buf[l3 + 2] << 8 | buf[l3 + 3]
        limit = port.mtu
        if maxfrag and maxfrag < limit:
            limit = maxfrag
        if tot > limit and not buf[1]:
            if ignore_df:
                buf[l3 + 6] &= ~0x40  # (fragment() recomputes each fragment's checksum)
            elif buf[l3 + 6] & 0x40 and not maxfrag:
                # DF and too big: the core checked the path towards the real
                # servers; this is the other direction (or a routed packet).
                self._icmp_error(buf, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, self._src_for(buf, l3), port.mtu)
                self.drops["frag_needed"] += 1
                return
            for f in fragment(buf, l3, limit):
                self._send(port, f, len(f), port.neigh.mac.get(nh), nh)
            self.counts["fragmented"] += 1
            return
        mac = port.neigh.mac.get(nh)
        if mac is not None and not maxfrag:
            if len(self.dst_cache) >= 65536:
                self.dst_cache.clear()
            # The Ethernet header as a bytearray: slice-assigning bytes into
            # the frame would copy them into a temporary bytearray first.
            self.dst_cache[daddr] = (port.ring, bytearray(mac + port.mac + ETH_IP), port.mtu, port.ring.queue)
        self._send(port, buf, l3 + tot, mac, nh)

    def _own_address(self, dst: bytes) -> bytes | None:
        if len(dst) == 16:
            return self.v6.own_address(dst) if self.v6 is not None else None
        r = self.route(int.from_bytes(dst, "big")) if len(dst) == 4 else None
        return r[0].addr_b if r else None

    def _src_for(self, buf: bytearray, l3: int) -> bytes:
        r = self.route(_I.unpack_from(buf, l3 + 12)[0])
        return r[0].addr_b if r else self.outer.addr_b

    def _send(self, port: Port, buf: bytearray, n: int, mac: bytes | None, nh: int = 0) -> None:
        if mac is None:
            if nh in self.own_addrs:
                self.to_self(nh, 4)
                return
            if port.neigh.enqueue(nh, buf, n, self.now):
                self._arp_request(port, nh, None)
            return
        _ETH_HDR.pack_into(buf, 10, mac, port.mac, ETH_IP)
        if not port.queue(buf, n):
            self.drops["tx"] += 1

    def to_self(self, nh: int, version: int) -> None:
        """A packet whose next hop is one of the director's own addresses:
        what IPVS sends there is for a real server that is the director
        itself (the kernel's local node: ``__ip_vs_get_out_rt`` finds a
        local route and the transmitter returns NF_ACCEPT, handing the
        packet, DNATed for NAT, to the host's own sockets).  The driver
        has no way into the host's stack with the connection's replies
        coming back through IPVS, so it drops the packet, counted in
        ``drop_local_real_server``, and says why once per address
        instead of resolving its own address on the wire."""
        self.drops["local_real_server"] += 1
        if nh not in self._warned_self:
            self._warned_self.add(nh)
            addr = ipaddress.IPv4Address(nh) if version == 4 else ipaddress.IPv6Address(nh)
            log.warning("real server %s is this director's own address: PyIPVS does not deliver to a real "
                        "server on the director itself (the kernel's local node); its packets are dropped "
                        "(drop_local_real_server)", addr)

    def _after_batch(self) -> None:
        box = self.ipvs.outbox
        while box:
            pkt = box.pop(0)
            if pkt[0] >> 4 == 6:
                if self.v6 is not None:
                    self.v6.send_own(pkt)
                else:
                    self.drops["ipv6_off"] += 1
                continue
            if pkt[9] == IPPROTO_ICMP and len(pkt) >= 28:
                icmp = (pkt[0] & 15) << 2
                if not self.icmp_limit.allow(_I.unpack_from(pkt, 16)[0], pkt[icmp], pkt[icmp + 1], self.now):
                    self.drops["icmp_ratelimit"] += 1
                    continue
            self.counts["icmp_out"] += 1
            self.route_out(bytearray(L3) + pkt, L3)
        for p in self.ports:
            p.flush()

    def counters(self) -> dict:
        """Everything counted, for logs and tests."""
        out = {f"drop_{k}": v for k, v in self.drops.items()}
        out.update(self.counts)
        for p in self.ports:
            rs = getattr(p.ring, "stats", None)
            if hasattr(p.ring, "kernel_drops") and p.ring.sock.fileno() >= 0:
                p.ring.kernel_drops()
            if rs is not None:
                for k in ("rx_frames", "rx_copied", "rx_truncated", "rx_vlan", "rx_kernel_drops", "rx_errors",
                          "tx_frames", "tx_direct", "tx_ring_full", "tx_too_big", "tx_errors"):
                    out[f"{p.name}_{k}"] = getattr(rs, k)
            ns = p.neigh.stats
            out[f"{p.name}_neigh_failed"] = ns.failed
            out[f"{p.name}_neigh_queue_drops"] = ns.queue_drops
            out[f"{p.name}_neigh_unresolved"] = ns.unresolved
            if p.addr6:
                out[f"{p.name}_neigh6_failed"] = p.neigh6.stats.failed
                out[f"{p.name}_neigh6_unresolved"] = p.neigh6.stats.unresolved
        out["icmp_ratelimit_global"] = self.icmp_global.refused
        for k in ("fragments", "reassembled", "timeouts", "overlaps", "mem_drops"):
            out[f"frag_{k}"] = getattr(self.frags.stats, k)
            if self.v6 is not None:
                out[f"frag6_{k}"] = getattr(self.v6.frags.stats, k)
        if self.masq is not None:
            for k in ("created", "expired", "out_packets", "in_packets", "no_port", "table_full"):
                out[f"masq_{k}"] = getattr(self.masq.stats, k)
        # The core's own drops (ipvs.packet.Drop) and the table's defenses,
        # so that one line of the log says where packets went.
        for reason, n in self.ipvs.drops.items():
            out[f"core_drop_{Drop(reason).name.lower()}"] = n
        tab = self.ipvs.conn_tab
        out["conn_count"] = tab.count
        out["conn_max"] = tab.max_conns
        out["conn_dropentry"] = tab.dropped
        out["conn_room_passes"] = tab.room_passes
        gs = self.guard.stats
        out["syn_guard_engaged"] = gs.engaged
        out["syn_deferred"] = gs.deferred
        out["syn_served"] = gs.served
        out["drop_syn_full"] = gs.dropped_full
        out["drop_syn_sources"] = gs.dropped_sources
        out["syn_guard_errors"] = gs.errors
        out["syn_waiting"] = self.guard.waiting()
        return out


# ---------------------------------------------------------------- options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The AF_PACKET options of ``tools/ipvsd``."""
    g = parser.add_argument_group("AF_PACKET data path")
    g.add_argument("--outer", metavar="IF", help="interface facing the clients (VIPs answered here)")
    g.add_argument("--outer-addr", metavar="ADDR/LEN",
                   help="the director's address on the outer network (ARP source, masquerading address)")
    g.add_argument("--inner", metavar="IF", help="interface facing the real servers")
    g.add_argument("--inner-addr", metavar="ADDR/LEN", help="the real servers' gateway address, e.g. 172.16.0.1/24")
    g.add_argument("--interface", metavar="IF", help="one interface for both sides (with --addr)")
    g.add_argument("--addr", metavar="ADDR/LEN", help="the director's address with --interface")
    g.add_argument("--mode", choices=("spare", "shared"), default="spare",
                   help="spare: the NICs have no kernel addresses; shared: the kernel keeps them and "
                        "nftables drop rules keep it off the stolen traffic (default spare)")
    g.add_argument("--route", action="append", default=[], metavar="NET/LEN,GATEWAY",
                   help="an extra route, e.g. 0.0.0.0/0,198.51.100.254 (repeatable)")
    g.add_argument("--outer-addr6", metavar="ADDR6/LEN", help="the director's IPv6 address on the outer network "
                   "(IPv6 services are answered on the outer side; shared mode adds the ip6 nftables table)")
    g.add_argument("--inner-addr6", metavar="ADDR6/LEN", help="the real servers' IPv6 gateway address")
    g.add_argument("--addr6", metavar="ADDR6/LEN", help="the director's IPv6 address with --interface")
    g.add_argument("--route6", action="append", default=[], metavar="NET6/LEN,GATEWAY6",
                   help="an extra IPv6 route, e.g. ::/0,2001:db8:0:1::fe (repeatable)")
    g.add_argument("--masquerade", action="append", default=[], metavar="SUBNET",
                   help="masquerade outbound connections from SUBNET (repeatable), like "
                        "'ipchains -A forward -j MASQ -s SUBNET'")
    g.add_argument("--masq-ports", default=f"{PORT_MASQ_BEGIN}-{PORT_MASQ_END}", metavar="LO-HI",
                   help="masquerading port range (default %(default)s)")
    g.add_argument("--forward", action="store_true",
                   help="route transit traffic that is neither IPVS nor masqueraded (ip_forward=1)")
    g.add_argument("--strict-checksums", action="store_true",
                   help="turn TX checksum offload and TSO off on the director's interfaces for the run")
    g.add_argument("--ring-blocks", type=int, default=16, metavar="N",
                   help="1 MiB blocks per RX ring (512 slots of 2 KiB each) and per TX ring (15 slots each), "
                        "default %(default)s")
    g.add_argument("--batch", type=int, default=256, metavar="N", help="frames per ring drain (default %(default)s)")
    g.add_argument("--no-syn-guard", action="store_true",
                   help="never queue connection attempts per source under backlog (see docs/ipvsd.md, "
                        "'Under a SYN flood'); for comparisons")
    g.add_argument("--direct-min", type=int, default=DIRECT_MIN, metavar="BYTES",
                   help="send frames of BYTES or more (GSO super-frames) through a plain socket instead of "
                        "the TX ring; 0: always the ring (default %(default)s)")
    g.add_argument("--busy-poll", type=int, default=BUSY_POLL_US, metavar="US",
                   help="after a turn with frames, watch the rings for up to US microseconds before "
                        "sleeping (e.g. 50: faster bulk transfers where waking the daemon costs its senders much, "
                        "more CPU); 0: sleep at once "
                        "(default %(default)s)")
    g.add_argument("--warm-up", type=float, default=os.environ.get("IPVSD_WARM_UP"), metavar="SECONDS",
                   help="after the start, in turns with nothing else to do, run synthetic connections "
                        "through a director of its own so that PyPy's JIT compiles the data path before real "
                        "traffic needs it, for at most SECONDS of CPU time; 0: off "
                        f"(default: $IPVSD_WARM_UP, else {WARM_UP_PYPY_S:g}; on PyPy only)")
    g.add_argument("--tx-batch", type=int, default=64, metavar="N",
                   help="send as soon as N frames are queued on a port, before the batch ends "
                        "(default %(default)s)")


#: ``--warm-up``'s default on PyPy, in seconds of CPU time (see
#: :mod:`ipvs.driver.warm`): its connections took 1.3-2.4 s here, up to
#: twice that while the machine ran at half speed.
WARM_UP_PYPY_S = 5.0


def warm_up_budget(option: float | None) -> float:
    """The warm-up's CPU seconds on PyPy: the option's, else
    :data:`WARM_UP_PYPY_S`; none elsewhere, whatever the option (CPython
    has no JIT to warm)."""
    if sys.implementation.name != "pypy":
        return 0.0
    return WARM_UP_PYPY_S if option is None else max(0.0, min(option, 30.0))


#: Where ``--strict-checksums`` notes how to restore each interface, so
#: a start after a SIGKILL can put the offloads back first.
STATE_DIR = "/run/pyipvs"


def _undo_path(ifname: str) -> str:
    ns = os.stat("/proc/self/ns/net").st_ino
    return os.path.join(STATE_DIR, f"offloads-{ns}-{ifname}.json")


def _run_undo(cmd: list[str]) -> None:
    subprocess.run(cmd, capture_output=True)
    try:
        os.unlink(_undo_path(cmd[2]))
    except OSError:
        pass


def restore_leftover_offloads() -> None:
    """Undo the offload changes of an earlier daemon in this namespace that was killed."""
    if not os.path.isdir(STATE_DIR):
        return
    prefix = f"offloads-{os.stat('/proc/self/ns/net').st_ino}-"
    for name in os.listdir(STATE_DIR):
        if name.startswith(prefix):
            path = os.path.join(STATE_DIR, name)
            try:
                with open(path) as f:
                    cmd = json.load(f)
                subprocess.run(cmd, capture_output=True)
            except (OSError, ValueError):
                pass
            try:
                os.unlink(path)
            except OSError:
                pass


def _ethtool_off(ifname: str) -> list[str]:
    """``ethtool -K IF tx off tso off``; returns the command that restores the old state."""
    ethtool = shutil.which("ethtool")
    if ethtool is None:
        raise RuntimeError("--strict-checksums needs ethtool")
    cur = subprocess.run([ethtool, "-k", ifname], capture_output=True, text=True, check=True).stdout
    state = {}
    for line in cur.splitlines():
        key, _, val = line.partition(":")
        state[key.strip()] = val.split()[0] if val.split() else "off"
    undo = [ethtool, "-K", ifname, "tx", state.get("tx-checksumming", "on"),
            "tso", state.get("tcp-segmentation-offload", "on")]
    os.makedirs(STATE_DIR, exist_ok=True)
    with open(_undo_path(ifname), "w") as f:
        json.dump(undo, f)
    subprocess.run([ethtool, "-K", ifname, "tx", "off", "tso", "off"], capture_output=True, check=True)
    return undo


def from_args(args: argparse.Namespace, director) -> AFPacketDriver | None:
    """Build the driver from ``tools/ipvsd``'s options; None without interfaces."""
    hz = director.ipvs.hz
    specs: list[tuple[str, str, str]] = []
    v6 = {}
    if getattr(args, "interface", None):
        if not args.addr:
            raise SystemExit("--interface needs --addr ADDR/LEN")
        specs.append((args.interface, "both", args.addr))
        if getattr(args, "addr6", None):
            v6[args.interface] = args.addr6
    elif getattr(args, "outer", None):
        if not args.outer_addr:
            raise SystemExit("--outer needs --outer-addr ADDR/LEN")
        specs.append((args.outer, "outer", args.outer_addr))
        if getattr(args, "outer_addr6", None):
            v6[args.outer] = args.outer_addr6
        if getattr(args, "inner_addr6", None) and args.inner:
            v6[args.inner] = args.inner_addr6
        if args.inner:
            if not args.inner_addr:
                raise SystemExit("--inner needs --inner-addr ADDR/LEN")
            specs.append((args.inner, "inner", args.inner_addr))
    else:
        return None
    if len(specs) == 1 and specs[0][1] == "outer":
        specs[0] = (specs[0][0], "both", specs[0][2])
    routes6 = []
    for r in getattr(args, "route6", None) or ():
        net, _, gw = r.partition(",")
        n6 = ipaddress.IPv6Network(net, strict=False)
        routes6.append((n6.network_address.packed, n6.prefixlen, ipaddress.IPv6Address(gw).packed))
    routes = []
    for r in args.route:
        net, _, gw = r.partition(",")
        n = ipaddress.IPv4Network(net, strict=False)
        routes.append((int(n.network_address), int(n.netmask), int(ipaddress.IPv4Address(gw))))
    masq_nets = []
    for m in args.masquerade:
        n = ipaddress.IPv4Network(m, strict=False)
        masq_nets.append((int(n.network_address), int(n.netmask)))
    lo, _, hi = args.masq_ports.partition("-")
    undo = []
    ports: list[Port] = []
    restore_leftover_offloads()
    try:
        if args.strict_checksums:
            for name, _role, _a in specs:
                undo.append(_ethtool_off(name))
        if args.mode == "shared":
            inner_ifs = [name for name, role, _ in specs if role != "outer"]
            masq = None
            if masq_nets:
                masq = (str(ipaddress.IPv4Interface(specs[0][2]).ip), int(lo), int(hi))
            if len(specs) == 1:
                inner_ifs = []
            # The ip6 table only where IPv6 is configured, its inner rule on
            # the inner interfaces that have an IPv6 address.
            inner_ifs6 = [name for name in inner_ifs if name in v6] if v6 else None
            nft.install(inner_ifs, masq, ifaces=[name for name, _r, _a in specs], inner_ifs6=inner_ifs6)
        for name, role, a in specs:
            addr, mask, _plen = _net(a)
            mac, mtu = if_info(name)
            ring = RingSocket(name, blocks=args.ring_blocks, bpf=bpf.build(),
                              tx_batch=max(1, getattr(args, "tx_batch", 64)),
                              direct_min=max(0, getattr(args, "direct_min", DIRECT_MIN)))
            ports.append(Port(name, role, addr, mask, hz, mac, mtu, ring))
            if name in v6:
                ports[-1].set_addr6(v6[name])
        drv = AFPacketDriver(director, ports, args.mode, masq_nets, (int(lo), int(hi)), routes,
                             args.forward, args.batch, not getattr(args, "no_syn_guard", False), routes6,
                             busy_poll_us=getattr(args, "busy_poll", BUSY_POLL_US))
        drv._undo = undo
        drv._nft_ready = args.mode == "shared"
        budget = warm_up_budget(getattr(args, "warm_up", None))
        if budget > 0:
            from ipvs.driver.warm import WarmUp  # (it builds a driver of this module's)

            drv.warm = WarmUp(drv, budget)
        drv.sync_services(force=True)
        if args.mode == "spare":
            # After the rings are bound: the drop is behind their taps.
            drv.kernel_off = nft.install_spare([name for name, _r, _a in specs])
    except BaseException:
        for p in ports:
            p.ring.close()
        if args.mode == "shared":
            nft.remove()
        for u in undo:
            _run_undo(u)
        raise
    log.info("AF_PACKET data path on %s (%s mode)%s", ", ".join(f"{n} ({r})" for n, r, _ in specs), args.mode,
             f"; IPv6 on {', '.join(v6)}" if v6 else "")
    return drv
