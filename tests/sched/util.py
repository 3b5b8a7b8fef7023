"""Helpers for the scheduler tests: services built through the control
plane exactly as ipvsadm would, and the kernel's connection accounting."""

from __future__ import annotations

import ipaddress

from ipvs import ctl
from ipvs.netns import NetnsIPVS
from ipvs.sched import IPHdr
from ipvs.uapi import AF_INET, IP_VS_CONN_F_MASQ, IPPROTO_TCP

VIP = ipaddress.ip_address("203.0.113.5").packed


def rs(n: int) -> bytes:
    """Address of real server ``rsN`` in the golden scenarios: 172.16.0.(N+1)."""
    return ipaddress.ip_address(f"172.16.0.{n + 1}").packed


def name_of(dest) -> str | None:
    """``rsN`` for a dest at 172.16.0.(N+1), as the goldens print it."""
    if dest is None:
        return None
    return f"rs{dest.addr[3] - 1}"


class Lab:
    """One instance with one TCP service on 203.0.113.5:``vport``."""

    def __init__(self, sched: str, vport: int = 80, flags: int = 0, netmask: int = 0xFFFFFFFF) -> None:
        self.ipvs = NetnsIPVS()
        self.su = ctl.ServiceUser(
            af=AF_INET, protocol=IPPROTO_TCP, addr=VIP, port=vport, sched_name=sched, flags=flags, netmask=netmask
        )
        self.svc = ctl.add_service(self.ipvs, self.su)

    @property
    def sched(self):
        return self.svc.scheduler

    def add(self, n: int, weight: int = 1, port: int = 80, u: int = 0, lo: int = 0):
        """``ipvsadm -a -t VIP:vport -r rsN:port -m -w weight -x u -y lo``."""
        du = ctl.DestUser(
            addr=rs(n), port=port, weight=weight, conn_flags=IP_VS_CONN_F_MASQ, u_threshold=u, l_threshold=lo
        )
        return ctl.add_dest(self.ipvs, self.su, du)

    def edit(self, n: int, weight: int = 1, port: int = 80, u: int = 0, lo: int = 0):
        du = ctl.DestUser(
            addr=rs(n), port=port, weight=weight, conn_flags=IP_VS_CONN_F_MASQ, u_threshold=u, l_threshold=lo
        )
        return ctl.edit_dest(self.ipvs, self.su, du)

    def delete(self, n: int, port: int = 80) -> None:
        ctl.del_dest(self.ipvs, self.su, AF_INET, rs(n), port)

    def dest(self, n: int, port: int = 80):
        return ctl.find_dest(self.svc, AF_INET, rs(n), port)

    def pick(self, src: str = "198.51.100.2", sport: int = 40000, now: int = 0, dst: bytes = VIP, dport: int = 80):
        iph = IPHdr(AF_INET, IPPROTO_TCP, ipaddress.ip_address(src).packed, dst, sport, dport)
        return self.sched.schedule(iph, now)

    def run(self, count: int, inactive: bool = True, **kw) -> list[str | None]:
        """Schedule ``count`` sequential short connections.

        Each one ends in TIME_WAIT before the next arrives, so the kernel
        counts it in the chosen dest's ``inactconns`` (``inactive=True``);
        with ``inactive=False`` it is held open (``activeconns``).
        """
        out = []
        for _ in range(count):
            d = self.pick(**kw)
            if d is not None:
                if inactive:
                    d.inactconns += 1
                else:
                    d.activeconns += 1
            out.append(name_of(d))
        return out


def golden_lab(sched: str, weights: list[int]) -> Lab:
    """rs1..rsN added in that order with the given weights (``ipvs_rules``)."""
    lab = Lab(sched)
    for i, w in enumerate(weights, 1):
        lab.add(i, weight=w)
    return lab
