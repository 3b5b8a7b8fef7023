"""Helpers for the application-helper tests: a VS/NAT FTP service built
through the control plane, control connections, and real IPv4/TCP packets
built with scapy."""

from __future__ import annotations

import ipaddress

from scapy.layers.inet import IP, TCP
from scapy.packet import Raw

from ipvs import app, ctl, uapi
from ipvs.app import ftp
from ipvs.ip_vs import ConnParam
from ipvs.netns import NetnsIPVS
from ipvs.packet import ip_send_check, l4_checksum, parse
from ipvs.proto import tcp


def A(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


VIP = A("203.0.113.5")
CIP = A("198.51.100.2")
RS = A("172.16.0.2")
MASQ = uapi.IP_VS_CONN_F_MASQ


class FTPLab:
    """One instance with TCP service VIP:``vport`` -> RS:``rs_port`` (masq)
    and the FTP helper loaded on ``ftp_ports`` (None: not loaded)."""

    def __init__(self, vport: int = 21, rs_port: int = 21, ftp_ports=(21,), conn_flags: int = MASQ) -> None:
        self.ipvs = NetnsIPVS()
        self.su = ctl.ServiceUser(addr=VIP, port=vport, sched_name="rr")
        ctl.add_service(self.ipvs, self.su)
        self.dest = ctl.add_dest(self.ipvs, self.su, ctl.DestUser(addr=RS, port=rs_port, conn_flags=conn_flags))
        self.ftp = ftp.register(self.ipvs, ports=ftp_ports) if ftp_ports is not None else None

    def control(self, cport: int = 40000, established: bool = True):
        """A control connection CIP:cport -> VIP:vport -> RS, bound like the core binds it."""
        cp = self.ipvs.conn_tab.new(ConnParam(uapi.AF_INET, uapi.IPPROTO_TCP, CIP, cport, VIP, self.su.port), RS, self.dest.port, 0, self.dest)
        app.bind_conn(self.ipvs, cp)
        if established:
            cp.state = tcp.ESTABLISHED
        return cp


def app_in(ipvs, cp, buf: bytearray, l3: int, now: int) -> int:
    """``app.pkt_in`` as the core calls it: with the packet's descriptor."""
    return app.pkt_in(ipvs, cp, buf, parse(buf, l3), now)


def app_out(ipvs, cp, buf: bytearray, l3: int, now: int) -> int:
    """``app.pkt_out`` as the core calls it: with the packet's descriptor."""
    return app.pkt_out(ipvs, cp, buf, parse(buf, l3), now)


def packet(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, payload: bytes = b"",
           flags: str = "PA") -> bytearray:
    """A real IPv4/TCP packet (checksums filled in by scapy)."""
    p = IP(src=str(ipaddress.ip_address(src)), dst=str(ipaddress.ip_address(dst))) / TCP(
        sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=65535
    )
    if payload:
        p = p / Raw(payload)
    return bytearray(bytes(p))


def c2s(cp, seq: int, ack: int, payload: bytes = b"") -> bytearray:
    """Client to VIP on the control connection (as ``pkt_in`` sees it)."""
    return packet(cp.caddr, cp.vaddr, cp.cport, cp.vport, seq, ack, payload)


def s2c(cp, seq: int, ack: int, payload: bytes = b"") -> bytearray:
    """Real server to client on the control connection (as ``pkt_out`` sees it)."""
    return packet(cp.daddr, cp.caddr, cp.dport, cp.cport, seq, ack, payload)


def fields(buf: bytearray, l3: int = 0) -> tuple[int, int, bytes]:
    """(seq, ack, payload) of the TCP packet in ``buf``."""
    h = parse(buf, l3)
    l4 = h.l4
    doff = (buf[l4 + 12] >> 4) * 4
    return (
        int.from_bytes(buf[l4 + 4 : l4 + 8], "big"),
        int.from_bytes(buf[l4 + 8 : l4 + 12], "big"),
        bytes(buf[l4 + doff : h.end]),
    )


def recompute_and_check(buf: bytearray, l3: int = 0) -> IP:
    """Recompute both checksums as the core does after a payload change and
    have scapy confirm the packet is well formed; returns scapy's view."""
    h = parse(buf, l3)
    buf[h.l4 + 16 : h.l4 + 18] = l4_checksum(buf, h).to_bytes(2, "big")
    ip_send_check(buf, l3)
    pkt = IP(bytes(buf[l3 : h.end]))
    assert pkt.len == h.end - l3
    ref = IP(bytes(buf[l3 : h.end]))
    del ref.chksum
    del ref[TCP].chksum
    ref = IP(bytes(ref))
    assert (pkt.chksum, pkt[TCP].chksum) == (ref.chksum, ref[TCP].chksum)
    return pkt
