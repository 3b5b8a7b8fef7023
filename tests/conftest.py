"""Shared test helpers: packets built with scapy, an independent checksum,
and directors set up through the control plane as ipvsadm would.

Expectations in the tests come from scapy or from :func:`inet_csum` (a
plain RFC 1071 word loop written here), never from ``ipvs.packet``'s own
checksum code, so a wrong helper there cannot hide behind itself.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror

from ipvs import ctl, uapi
from ipvs.core import Director
from ipvs.netns import NetnsIPVS

# The machine is shared: no per-example deadline, modest example counts.
settings.register_profile(
    "pyipvs", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("pyipvs")

# Every ipvsd a test starts keeps its state file here, not in /var/lib/pyipvs:
# a test's rules must not come back in another test's (or a real) director.
if "IPVSD_STATE_DIR" not in os.environ:
    os.environ["IPVSD_STATE_DIR"] = tempfile.mkdtemp(prefix="pyipvs-test-state-")
    atexit.register(shutil.rmtree, os.environ["IPVSD_STATE_DIR"], True)

MASQ = uapi.IP_VS_CONN_F_MASQ
HZ = 250


def A(text: str) -> bytes:
    """Packed bytes of an IPv4/IPv6 address."""
    return ipaddress.ip_address(text).packed


def inet_csum(data: bytes) -> int:
    """RFC 1071 Internet checksum of ``data``: a word-by-word loop."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def tcp(src, sport, dst, dport, flags="S", payload=b"", ttl=64, seq=1000, ack=0, options=None) -> bytearray:
    """An IPv4/TCP packet as a bytearray (IP header at offset 0)."""
    t = TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=65535)
    if options:
        t.options = options
    return bytearray(bytes(IP(src=src, dst=dst, ttl=ttl, id=1) / t / payload))


def udp(src, sport, dst, dport, payload=b"hello", ttl=64, chksum=None) -> bytearray:
    """An IPv4/UDP datagram; ``chksum=0`` sends it without a checksum."""
    u = UDP(sport=sport, dport=dport)
    if chksum is not None:
        u.chksum = chksum
    return bytearray(bytes(IP(src=src, dst=dst, ttl=ttl, id=2) / u / payload))


def icmp_error(src, dst, quoted: bytes, type_=3, code=3, ttl=64) -> bytearray:
    """An ICMP error from ``src`` to ``dst`` quoting ``quoted`` (IP packet bytes)."""
    return bytearray(bytes(IP(src=src, dst=dst, ttl=ttl, id=3) / ICMP(type=type_, code=code) / quoted))


def checksums_valid(buf: bytes | bytearray, l3: int = 0) -> bool:
    """True when the IP header and TCP/UDP/ICMP checksums all verify.

    Uses the independent word loop; a UDP checksum of 0 counts as valid
    ("none", RFC 768) only where the caller allows it (see
    :func:`udp_csum_field`).
    """
    b = bytes(buf[l3:])
    ihl = (b[0] & 15) * 4
    tot = int.from_bytes(b[2:4], "big")
    b = b[:tot]
    if inet_csum(b[:ihl]) != 0:
        return False
    proto = b[9]
    l4 = b[ihl:]
    if proto == 1:
        return inet_csum(l4) == 0
    if proto in (6, 17):
        pseudo = b[12:20] + bytes((0, proto)) + len(l4).to_bytes(2, "big")
        if proto == 17 and l4[6:8] == b"\0\0":
            return False
        return inet_csum(pseudo + l4) == 0
    return True


def scapy_recomputed(buf: bytes | bytearray) -> tuple[bytes, bytes]:
    """(the packet, the packet with every checksum recomputed by scapy)."""
    p = IP(bytes(buf))
    del p.chksum
    for layer in (TCP, UDP, ICMP):
        if layer in p:
            del p[layer].chksum
    return bytes(buf), bytes(p)


def scapy_valid(buf: bytes | bytearray) -> bool:
    """Scapy agrees with every outer checksum of the packet."""
    got, want = scapy_recomputed(buf)
    return got == want


def quoted_ip_valid(buf: bytes | bytearray) -> bool:
    """The IP header quoted in an ICMP error has a valid checksum."""
    p = IP(bytes(buf))
    q = p[IPerror]
    raw = bytes(q)[: q.ihl * 4]
    return inet_csum(raw) == 0


def estimator_period(ipvs: NetnsIPVS) -> None:
    """Let one estimator period pass on ``ipvs`` (nothing else runs): what
    was counted so far becomes what listings show, as in 6.1."""
    ipvs.est.run(ipvs.now)  # (arms the timer if it never ran)
    ipvs.now = max(ipvs.now, ipvs.est.next_run)
    ipvs.est.run(ipvs.now)


class Lab:
    """A director with NAT services configured like ``ipvsadm -A/-a``."""

    def __init__(self, **sysctls) -> None:
        self.ipvs = NetnsIPVS()
        for k, v in sysctls.items():
            self.ipvs.sysctl.set(k, v)
        self.d = Director(self.ipvs)
        self.now = 1000

    def service(self, vip, port, proto=6, sched="wrr", flags=0, timeout=0, netmask=None, fwmark=0):
        addr = A(vip)
        af = uapi.AF_INET6 if len(addr) == 16 else uapi.AF_INET
        if netmask is None:
            netmask = 128 if af == uapi.AF_INET6 else 0xFFFFFFFF
        su = ctl.ServiceUser(
            af=af, addr=addr, port=port, protocol=proto, sched_name=sched, flags=flags, timeout=timeout,
            netmask=netmask, fwmark=fwmark,
        )
        ctl.add_service(self.ipvs, su)
        return su

    def dest(self, su, rip, port, weight=1, u=0, l=0, fwd=MASQ):
        addr = A(rip)
        af = uapi.AF_INET6 if len(addr) == 16 else uapi.AF_INET
        return ctl.add_dest(
            self.ipvs, su,
            ctl.DestUser(af=af, addr=addr, port=port, weight=weight, conn_flags=fwd, u_threshold=u, l_threshold=l),
        )

    def send(self, buf: bytearray, now: int | None = None, l3: int = 0, partial: bool = False) -> int:
        if now is not None:
            self.now = now
        return self.d.process(buf, l3, self.now, partial)

    def tick(self, now: int) -> None:
        self.now = now
        self.d.run_timers(now)

    def conns(self):
        return [c for c in self.ipvs.conn_tab.all() if not c.flags & uapi.IP_VS_CONN_F_TEMPLATE]

    def templates(self):
        return list(self.ipvs.conn_tab.templates.values())

    @property
    def tcp_states(self):
        return self.ipvs.proto_data[6].state_names


@pytest.fixture
def lab():
    return Lab()


__all__ = [
    "A", "HZ", "ICMP", "IP", "IPerror", "Lab", "MASQ", "TCP", "TCPerror", "UDP", "UDPerror", "checksums_valid",
    "estimator_period", "icmp_error", "inet_csum", "quoted_ip_valid", "scapy_recomputed", "scapy_valid", "tcp", "udp",
]
