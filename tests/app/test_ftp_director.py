"""FTP control sessions through the whole packet path (``Director.process``)
with the helper loaded: passive and active mode, real server on port 21
and on a mapped port."""

from __future__ import annotations

import pytest

from ipvs import ctl
from ipvs.app import ftp
from ipvs.core import NF_STOLEN, Director
from ipvs.netns import NetnsIPVS
from ipvs.packet import l4_csum_ok, parse
from ipvs.proto import tcp
from ipvs.uapi import IP_VS_CONN_F_NO_CPORT, IPPROTO_TCP
from tests.app.util import CIP, MASQ, RS, VIP, A, fields, packet

C0, S0 = 1_000_000, 0xFFFFFF80  # the server's numbers wrap during the session


class Session:
    """One director with VIP:21 -> RS:``rs_port`` and a client control
    connection from CIP:40000, driven through :meth:`Director.process`."""

    def __init__(self, rs_port: int = 21, load_ftp: bool = True) -> None:
        ipvs = NetnsIPVS()
        su = ctl.ServiceUser(addr=VIP, port=21, sched_name="rr")
        ctl.add_service(ipvs, su)
        self.dest = ctl.add_dest(ipvs, su, ctl.DestUser(addr=RS, port=rs_port, conn_flags=MASQ))
        self.ftp = ftp.register(ipvs) if load_ftp else None
        self.d = Director(ipvs)
        self.ipvs = ipvs
        self.rs_port = rs_port
        self.now = 1000
        self.cseq, self.sseq = C0, S0  # next byte each side sends, in its own numbering
        self.cview = S0  # next server byte as the client sees the stream

    def run(self, buf: bytearray) -> bytearray:
        self.now += 1
        assert self.d.process(buf, 0, self.now) == NF_STOLEN
        h = parse(buf, 0)
        assert l4_csum_ok(buf, h), "TCP checksum after NAT"
        from scapy.layers.inet import IP

        ref = IP(bytes(buf))
        del ref.chksum
        assert IP(bytes(ref)).chksum == IP(bytes(buf)).chksum, "IP header checksum"
        assert h.end == len(buf)
        return buf

    def client(self, payload: bytes = b"", flags: str = "PA", sport: int = 40000, dport: int = 21, **kw) -> bytearray:
        b = self.run(packet(CIP, VIP, sport, dport, kw.get("seq", self.cseq), kw.get("ack", self.cview), payload,
                            flags))
        if sport == 40000:
            self.cseq = (self.cseq + len(payload) + (1 if "S" in flags else 0)) & 0xFFFFFFFF
        return b

    def server(self, payload: bytes = b"", flags: str = "PA", sport: int | None = None, dport: int = 40000,
               **kw) -> bytearray:
        b = self.run(packet(RS, CIP, sport or self.rs_port, dport, kw.get("seq", self.sseq), kw.get("ack", self.cseq),
                            payload, flags))
        if sport is None:
            self.sseq = (self.sseq + len(payload) + (1 if "S" in flags else 0)) & 0xFFFFFFFF
            self.cview = (fields(b)[0] + len(fields(b)[2]) + (1 if "S" in flags else 0)) & 0xFFFFFFFF
        return b

    def handshake(self):
        self.client(flags="S", ack=0)
        self.sseq = (S0 - 1) & 0xFFFFFFFF
        self.server(flags="SA")
        self.client(flags="A")
        cp = self.ipvs.conn_tab.in_get(IPPROTO_TCP, CIP, VIP, 40000, 21)
        assert cp.state == tcp.ESTABLISHED and (cp.app is not None) == (self.ftp is not None)
        return cp


def addrs(buf: bytearray) -> tuple[bytes, int, bytes, int]:
    h = parse(buf, 0)
    return (bytes(buf[12:16]), int.from_bytes(buf[h.l4 : h.l4 + 2], "big"), bytes(buf[16:20]),
            int.from_bytes(buf[h.l4 + 2 : h.l4 + 4], "big"))


@pytest.mark.parametrize("rs_port", [21, 2121])
def test_passive_mode(rs_port):
    s = Session(rs_port)
    cp = s.handshake()
    s.server(b"220 ready\r\n")
    b = s.client(b"PASV\r\n")
    assert addrs(b) == (CIP, 40000, RS, rs_port) and fields(b)[2] == b"PASV\r\n"

    reply = b"227 Entering Passive Mode (172,16,0,2,117,48).\r\n"
    seq_before = s.sseq
    b = s.server(reply)
    assert addrs(b) == (VIP, 21, CIP, 40000)
    assert fields(b)[2] == b"227 Entering Passive Mode (203,0,113,5,117,48).\r\n"
    assert fields(b)[0] == seq_before  # the rewritten segment itself keeps its seq

    # later server data is shifted by the one extra byte, client acks back
    b = s.server(b"150 ok\r\n")
    assert fields(b)[0] == (s.sseq - 8 + 1) & 0xFFFFFFFF
    b = s.client(b"", flags="A")
    assert fields(b)[1] == s.sseq  # the server sees its own numbering again

    # the client's data connection to VIP:30000 meets the NO_CPORT entry
    assert s.ipvs.conn_tab.no_cport_count == 1
    b = s.client(flags="S", sport=51000, dport=30000, seq=5, ack=0)
    assert addrs(b) == (CIP, 51000, RS, 30000)
    n = s.ipvs.conn_tab.in_get(IPPROTO_TCP, CIP, VIP, 51000, 30000)
    assert n.cport == 51000 and not n.flags & IP_VS_CONN_F_NO_CPORT and n.control is cp
    assert s.ipvs.conn_tab.no_cport_count == 0
    b = s.server(flags="SA", sport=30000, dport=51000, seq=77, ack=6)
    assert addrs(b) == (VIP, 30000, CIP, 51000)
    assert s.ftp.stats["pasv"] == 1 and s.ftp.stats["pasv_reply"] == 1


@pytest.mark.parametrize("rs_port", [21, 2121])
def test_active_mode(rs_port):
    s = Session(rs_port)
    cp = s.handshake()
    b = s.client(b"PORT 198,51,100,2,195,80\r\n")
    assert fields(b)[2] == b"PORT 198,51,100,2,195,80\r\n"  # not rewritten
    s.server(b"200 PORT command successful.\r\n")
    # the server opens the data connection from its data port (control port - 1)
    b = s.server(flags="S", sport=rs_port - 1, dport=50000, seq=900, ack=0)
    assert addrs(b) == (VIP, 20, CIP, 50000)
    n = s.ipvs.conn_tab.out_get(IPPROTO_TCP, RS, CIP, rs_port - 1, 50000)
    assert n.control is cp and (n.vport, n.dport) == (20, rs_port - 1)
    b = s.client(flags="SA", sport=50000, dport=20, seq=3, ack=901)
    assert addrs(b) == (CIP, 50000, RS, rs_port - 1)
    assert s.ftp.stats["port"] == 1


def test_epsv_through_director():
    s = Session()
    s.handshake()
    s.client(b"EPSV\r\n")
    b = s.server(b"229 Entering Extended Passive Mode (|||6446|)\r\n")
    assert fields(b)[2] == b"229 Entering Extended Passive Mode (|||6446|)\r\n"
    b = s.client(flags="S", sport=52000, dport=6446, seq=5, ack=0)
    assert addrs(b) == (CIP, 52000, RS, 6446)


def test_without_helper_the_reply_leaks_the_real_server():
    """The helper is opt-in: without it the 227 reply keeps the real
    server's address and no data connection is expected."""
    s = Session(load_ftp=False)
    s.handshake()
    s.client(b"PASV\r\n")
    b = s.server(b"227 Entering Passive Mode (172,16,0,2,117,48).\r\n")
    assert b"(172,16,0,2,117,48)" in fields(b)[2]
    assert len(s.ipvs.conn_tab) == 1


def test_everything_expires_and_unbinds():
    s = Session()
    s.handshake()
    s.client(b"PASV\r\n")
    s.server(b"227 Entering Passive Mode (172,16,0,2,117,48).\r\n")
    s.client(b"PORT 198,51,100,2,195,80\r\n")
    assert len(s.ipvs.conn_tab) == 3
    inc = s.ipvs.apps[(IPPROTO_TCP, 21)]
    assert inc.usecnt == 1
    for step in range(1, 8):  # the control conn outlives its data conns
        s.d.run_timers(s.now + step * 1000 * s.ipvs.hz)
    assert len(s.ipvs.conn_tab) == 0 and inc.usecnt == 0
    assert (s.dest.activeconns, s.dest.inactconns) == (0, 0)
    ftp.unregister(s.ipvs)
    assert s.ipvs.apps == {}


def test_addresses_in_lab_ranges():
    assert A("198.51.100.2") == CIP


def test_offloaded_partial_checksums_are_not_verified():
    """With offloads on, every TCP frame carries a partial checksum (the
    uncomplemented pseudo-header sum).  tcp_csum_check accepts those, so the
    helper-bound control connection must pass them, and leave the field
    partial (fixed up for the new addresses) for the NIC to complete."""
    from ipvs.packet import fold, pseudo_sum

    s = Session()

    def partial(buf: bytearray) -> bytearray:
        h = parse(buf, 0)
        p = fold(pseudo_sum(bytes(buf[12:16]), bytes(buf[16:20]), IPPROTO_TCP, h.end - h.l4))
        buf[h.l4 + 16 : h.l4 + 18] = p.to_bytes(2, "big")
        return buf

    syn = partial(packet(CIP, VIP, 40000, 21, C0, 0, b"", "S"))
    assert s.d.process(syn, 0, 1001, csum_partial=True) == NF_STOLEN
    synack = partial(packet(RS, CIP, 21, 40000, S0, C0 + 1, b"", "SA"))
    assert s.d.process(synack, 0, 1002, csum_partial=True) == NF_STOLEN
    h = parse(synack, 0)
    want = fold(pseudo_sum(bytes(synack[12:16]), bytes(synack[16:20]), IPPROTO_TCP, h.end - h.l4))
    assert int.from_bytes(synack[h.l4 + 16 : h.l4 + 18], "big") == want
    assert sum(s.ipvs.drops.values()) == 0
