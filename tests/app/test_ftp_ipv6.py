"""The FTP helper over IPv6 through the whole packet path
(``Director.process``): EPSV and EPRT |2| as ip_vs_ftp.c handles them on
an IPv6 service, every packet carrying a hop-by-hop header, so the TCP
header is at 48, not 40 (the kernel's July 2026 fix "ipvs: fix more
places with wrong ipv6 transport offsets" made app_tcp_pkt_in/out read
the descriptor's offset, as :mod:`ipvs.app` does).  PASV and PORT are
IPv4 only, as in the kernel."""

from __future__ import annotations

import ipaddress
import struct

from scapy.layers.inet import TCP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.packet import Raw

from ipvs import ctl, uapi
from ipvs.app import ftp
from ipvs.core import NF_ACCEPT, NF_STOLEN, Director
from ipvs.netns import NetnsIPVS
from ipvs.packet import parse
from ipvs.proto import tcp
from tests.conftest import inet_csum


def A(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


VIP, CIP, RS = "2001:db8:0:5::5", "2001:db8:0:1::2", "2001:db8:0:2::3"


def pkt(src, dst, sport, dport, seq, ack, payload=b"", flags="PA") -> bytearray:
    p = IPv6(src=src, dst=dst) / IPv6ExtHdrHopByHop() / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack)
    if payload:
        p = p / Raw(payload)
    return bytearray(bytes(p))


def tcp_ok(buf: bytearray) -> bool:
    h = parse(buf, 0)
    seg = bytes(buf[h.l4 : h.end])
    return inet_csum(bytes(buf[8:40]) + struct.pack("!IxxxB", len(seg), 6) + seg) == 0


def view(buf: bytearray):
    p = IPv6(bytes(buf))
    return p.src, p[TCP].sport, p.dst, p[TCP].dport, bytes(p[TCP].payload)


class Session6:
    def __init__(self) -> None:
        ipvs = NetnsIPVS()
        su = ctl.ServiceUser(af=uapi.AF_INET6, addr=A(VIP), port=21, sched_name="rr", netmask=128)
        ctl.add_service(ipvs, su)
        ctl.add_dest(ipvs, su, ctl.DestUser(af=uapi.AF_INET6, addr=A(RS), port=21,
                                            conn_flags=uapi.IP_VS_CONN_F_MASQ))
        ftp.register(ipvs)
        self.ipvs, self.d, self.now = ipvs, Director(ipvs), 1000
        self.cseq, self.sseq = 1000, 5000

    def send(self, buf: bytearray, want: int = NF_STOLEN) -> bytearray:
        self.now += 1
        assert self.d.process(buf, 0, self.now) == want
        assert tcp_ok(buf)
        return buf

    def control(self):
        self.send(pkt(CIP, VIP, 40000, 21, self.cseq, 0, flags="S"))
        self.cseq += 1
        self.send(pkt(RS, CIP, 21, 40000, self.sseq, self.cseq, flags="SA"))
        self.sseq += 1
        self.send(pkt(CIP, VIP, 40000, 21, self.cseq, self.sseq, flags="A"))
        cp = self.ipvs.conn_tab.in_get(uapi.IPPROTO_TCP, A(CIP), A(VIP), 40000, 21)
        assert cp.state == tcp.ESTABLISHED and cp.app is not None
        return cp

    def client(self, line: bytes) -> bytearray:
        b = self.send(pkt(CIP, VIP, 40000, 21, self.cseq, self.sseq, line))
        self.cseq += len(line)
        return b

    def server(self, line: bytes) -> bytearray:
        b = self.send(pkt(RS, CIP, 21, 40000, self.sseq, self.cseq, line))
        self.sseq += len(line)
        return b


def test_epsv_over_ipv6_expects_the_passive_data_connection():
    s = Session6()
    s.control()
    s.client(b"EPSV\r\n")
    out = s.server(b"229 Entering Extended Passive Mode (|||50001|)\r\n")
    src, sport, dst, _dport, payload = view(out)
    assert (src, sport, dst) == (VIP, 21, CIP)
    assert payload == b"229 Entering Extended Passive Mode (|||50001|)\r\n"
    # The expected connection: client port unknown yet, VIP:50001 -> RS:50001.
    data = pkt(CIP, VIP, 41000, 50001, 1, 0, flags="S")
    s.send(data)
    src, sport, dst, dport, _ = view(data)
    assert (src, sport, dst, dport) == (CIP, 41000, RS, 50001)
    dcp = s.ipvs.conn_tab.in_get(uapi.IPPROTO_TCP, A(CIP), A(VIP), 41000, 50001)
    assert dcp is not None and dcp.control is not None and not dcp.flags & uapi.IP_VS_CONN_F_NO_CPORT


def test_eprt_2_over_ipv6_expects_the_active_data_connection_from_port_20():
    s = Session6()
    s.control()
    s.client(f"EPRT |2|{CIP}|50002|\r\n".encode())
    # The real server connects from its port 20 to the client's port.
    syn = pkt(RS, CIP, 20, 50002, 7, 0, flags="S")
    s.send(syn)
    assert view(syn)[:4] == (VIP, 20, CIP, 50002)
    dcp = s.ipvs.conn_tab.in_get(uapi.IPPROTO_TCP, A(CIP), A(VIP), 50002, 20)
    assert dcp is not None and dcp.dport == 20 and dcp.daddr == A(RS)


def test_pasv_and_eprt_1_are_not_for_an_ipv6_connection():
    s = Session6()
    s.control()
    s.client(b"EPRT |1|198.51.100.2|50003|\r\n")
    assert s.ipvs.conn_tab.in_get(uapi.IPPROTO_TCP, A(CIP), A(VIP), 50003, 20) is None
    s.client(b"PASV\r\n")
    out = s.server(b"227 Entering Passive Mode (172,16,0,3,195,83)\r\n")
    assert view(out)[4] == b"227 Entering Passive Mode (172,16,0,3,195,83)\r\n"  # untouched
    probe = pkt(CIP, VIP, 41001, 50003, 1, 0, flags="S")
    s.send(probe, want=NF_ACCEPT)  # nothing expected there: not IPVS's
