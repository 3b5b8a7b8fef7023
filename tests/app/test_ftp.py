"""ipvs/app/ftp.py: the parser, the expected data connections, the rewrite
and its sequence adjustment, on real IPv4/TCP packets."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from ipvs import app
from ipvs.app import ftp
from ipvs.ip_vs import ConnParam
from ipvs.packet import IPHeader, parse
from ipvs.proto import tcp
from ipvs.uapi import (
    AF_INET,
    AF_INET6,
    IP_VS_CONN_F_INACTIVE,
    IP_VS_CONN_F_NFCT,
    IP_VS_CONN_F_NO_CPORT,
    IP_VS_CONN_F_OUT_SEQ,
    IPPROTO_TCP,
)
from tests.app.util import CIP, RS, VIP, A, FTPLab, app_in, app_out, c2s, fields, packet, recompute_and_check, s2c

HZ = 250
PORT_ = dict(pattern=b"PORT", skip=0x20, ext=False, mode=ftp.IP_VS_FTP_PORT)
PASV_ = dict(pattern=b"227 ", skip=0x28, ext=False, mode=ftp.IP_VS_FTP_PASV)
EPRT_ = dict(pattern=b"EPRT", skip=0x20, ext=True, mode=ftp.IP_VS_FTP_EPRT)
EPSV_ = dict(pattern=b"229 ", skip=0x28, ext=True, mode=ftp.IP_VS_FTP_EPSV)


def parse_(data: bytes, kind: dict, af: int = AF_INET, addr: bytes | None = None):
    return ftp.get_addrport(data, 0, len(data), kind["pattern"], kind["skip"], kind["ext"], kind["mode"], af, addr)


# ------------------------------------------------------------------ parser


@pytest.mark.parametrize(
    "line, addr, port, text",
    [
        (b"PORT 198,51,100,2,195,80\r\n", "198.51.100.2", 50000, b"198,51,100,2,195,80"),
        (b"port  198,51,100,2,0,21\r\n", "198.51.100.2", 21, b"198,51,100,2,0,21"),
        (b"PORT198,51,100,2,1,1\r\n", "198.51.100.2", 257, b"198,51,100,2,1,1"),  # a digit ends the skip
        (b"PORTx 1,2,3,4,5,6\r\n", "1.2.3.4", 0x506, b"1,2,3,4,5,6"),  # anything before the space is skipped
        (b"PORT 300,2,3,4,5,6\r\n", "44.2.3.4", 0x506, b"300,2,3,4,5,6"),  # unsigned char wraps
        (b"PORT 1,,3,4,5,\r\n", "1.0.3.4", 0x500, b"1,,3,4,5,"),  # empty fields are zeros
        (b"PORT 1,2,3,4,5,6,7\r\n", "1.2.3.4", 0x506, b"1,2,3,4,5,6"),  # a 7th number ends it
    ],
)
def test_port_parse(line, addr, port, text):
    res, a, p, start, end = parse_(line, PORT_)
    assert (res, a, p, line[start:end]) == (1, A(addr), port, text)


@pytest.mark.parametrize(
    "line, res",
    [
        (b"PORT 1,2,3,4,5\r\n", -1),  # five numbers
        (b"PORT 1,2,3,4,5,6", -1),  # no terminator: split line
        (b"POR", -1),  # partial match
        (b"PORT", -1),
        (b"PORT (1,2,3,4,5,6)\r\n", -1),  # "(" after the space is not skipped
        (b"PASS secret\r\n", 0),
        (b"", -1),  # an empty prefix compares equal, as strncasecmp(.., 0) does
    ],
)
def test_port_refused(line, res):
    assert parse_(line, PORT_)[0] == res


@pytest.mark.parametrize(
    "line, text",
    [
        (b"227 Entering Passive Mode (172,16,0,2,117,48).\r\n", b"172,16,0,2,117,48"),
        (b"227 Entering Passive Mode ((172,16,0,2,117,48)\r\n", b"172,16,0,2,117,48"),
        (b"227 =172,16,0,2,117,48\r\n", b"172,16,0,2,117,48"),
    ],
)
def test_227_parse(line, text):
    res, a, p, start, end = parse_(line, PASV_)
    assert (res, a, p, line[start:end]) == (1, RS, 30000, text)


@pytest.mark.parametrize(
    "line, af, addr, port, text",
    [
        (b"EPRT |1|198.51.100.2|50000|\r\n", AF_INET, "198.51.100.2", 50000, b"|1|198.51.100.2|50000|"),
        (b"eprt  !1!198.51.100.2!50000!\r\n", AF_INET, "198.51.100.2", 50000, b"!1!198.51.100.2!50000!"),
        (b"EPRT |1|198.51.100.2|65557|\r\n", AF_INET, "198.51.100.2", 21, b"|1|198.51.100.2|65557|"),  # u16
        (b"EPRT |1|010.1.1.1|9|\r\n", AF_INET, "10.1.1.1", 9, b"|1|010.1.1.1|9|"),  # in4_pton takes leading zeros
        (b"EPRT |2|2001:db8::2|50000|\r\n", AF_INET6, "2001:db8::2", 50000, b"|2|2001:db8::2|50000|"),
        (b"EPRT |2|::ffff:1.2.3.4|7|\r\n", AF_INET6, "::ffff:1.2.3.4", 7, b"|2|::ffff:1.2.3.4|7|"),
    ],
)
def test_eprt_parse(line, af, addr, port, text):
    res, a, p, start, end = parse_(line, EPRT_, af)
    assert (res, a, p, line[start:end]) == (1, A(addr), port, text)


@pytest.mark.parametrize(
    "line, af",
    [
        (b"EPRT |2|198.51.100.2|50000|\r\n", AF_INET),  # other family
        (b"EPRT |1|2001:db8::2|50000|\r\n", AF_INET6),
        (b"EPRT |1|198.51.100.2|0|\r\n", AF_INET),  # port 0
        (b"EPRT |1|198.51.100.2|65536|\r\n", AF_INET),  # wraps to 0
        (b"EPRT |1|198.51.100.256|5|\r\n", AF_INET),
        (b"EPRT |1|198.51.100|5|\r\n", AF_INET),
        (b"EPRT |1|198.51.100.2|50000\r\n", AF_INET),  # no closing delimiter
        (b"EPRT ||||50000|\r\n", AF_INET),  # empty af: only an EPSV reply may
        (b"EPRT \x7f1\x7f1.2.3.4\x7f5\x7f\r\n", AF_INET),  # delimiter outside 33..126
        (b"EPRT |1|1.2.3.4|5|", AF_INET),  # fine: terminator is the delimiter
    ],
)
def test_eprt_refused(line, af):
    res = parse_(line, EPRT_, af)[0]
    assert res == (1 if line.endswith(b"|") else -1)


def test_229_parse():
    line = b"229 Entering Extended Passive Mode (|||6446|)\r\n"
    res, a, p, start, end = parse_(line, EPSV_, addr=RS)
    assert (res, a, p, line[start:end]) == (1, RS, 6446, b"|||6446|")
    line = b"229 Entering Extended Passive Mode (|1|172.16.0.3|6446|)\r\n"
    res, a, p, start, end = parse_(line, EPSV_, addr=RS)
    assert (res, a, p, line[start:end]) == (1, A("172.16.0.3"), 6446, b"|1|172.16.0.3|6446|")
    assert parse_(b"229 (||1|6446|)\r\n", EPSV_, addr=RS)[0] == -1
    assert parse_(b"229 6446\r\n", EPSV_, addr=RS)[0] == -1  # "(" required in the extended format


@pytest.mark.parametrize(
    "data, af, want",
    [
        (b"PASV\r\n", AF_INET, ftp.IP_VS_FTP_PASV),
        (b"NOOP\r\npasv\r\n", AF_INET, ftp.IP_VS_FTP_PASV),  # anywhere in the segment
        (b"PASV\r\n", AF_INET6, None),  # PASV is IPv4 only
        (b"PASV\n", AF_INET, None),
        (b"EPSV\r\n", AF_INET, ftp.IP_VS_FTP_EPSV),
        (b"EPSV 1\r\n", AF_INET, ftp.IP_VS_FTP_EPSV),
        (b"EPSV 2\r\n", AF_INET6, ftp.IP_VS_FTP_EPSV),
        (b"EPSV 2\r\n", AF_INET, -1),
        (b"EPSV ALL\r\nPASV\r\n", AF_INET, -1),  # the first hit decides
        (b"EPSVX\r\nPASV\r\n", AF_INET, ftp.IP_VS_FTP_PASV),
        (b"EPSV\r", AF_INET, None),  # needs 6 bytes from the match on
    ],
)
def test_scan_passive(data, af, want):
    assert ftp.scan_passive(data, 0, len(data), af) == want


# ------------------------------------------------------- address parsers


def ref_in4(text: bytes):
    m = re.fullmatch(rb"(\d+)\.(\d+)\.(\d+)\.(\d+)", text)
    if not m or any(int(x) > 255 for x in m.groups()):
        return None
    return bytes(int(x) for x in m.groups())


@settings(max_examples=300, deadline=None)
@given(st.text("0123456789.:a|", max_size=20))
def test_in4_pton_matches_reference(s):
    data = s.encode()
    got, end = ftp.in4_pton(data, 0, len(data), ord("|"))
    head = re.split(rb"[|:]", data)[0]
    assert got == ref_in4(head)
    if got is not None:
        assert end == len(head)


def _normalise6(text: str) -> str:
    """The kernel also takes groups with extra leading zeros and v4 parts
    with leading zeros; ipaddress does not."""
    parts = text.split(":")
    out = []
    for i, part in enumerate(parts):
        if i == len(parts) - 1 and "." in part:
            out.append(".".join(str(int(o)) if o.isdigit() else o for o in part.split(".")))
        else:
            out.append(part.lstrip("0")[-4:] if len(part) > 4 and set(part[:-4]) == {"0"} else part)
    return ":".join(out)


@settings(max_examples=500, deadline=None)
@given(st.text("0123456789abcdefABCDEF:.", max_size=46))
def test_in6_pton_matches_ipaddress(s):
    data = s.encode() + b"|"
    got, end = ftp.in6_pton(data, 0, len(data), ord("|"))
    try:
        ref = ipaddress.IPv6Address(s).packed
    except ValueError:
        ref = None
    if ref is not None:
        assert got == ref
    if got is not None:
        assert end == len(s)
        assert ipaddress.IPv6Address(_normalise6(s)).packed == got


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=16, max_size=16))
def test_in6_pton_reads_every_format(raw):
    a = ipaddress.IPv6Address(raw)
    forms = [a.compressed, a.exploded, ":".join(a.exploded.split(":")[:6]) + ":" + str(ipaddress.IPv4Address(raw[12:]))]
    for f in forms:
        data = f.encode() + b"!"
        assert ftp.in6_pton(data, 0, len(data), ord("!")) == (raw, len(f))


# --------------------------------------------------------------- pkt_in


def test_port_creates_expected_active_data_connection():
    lab = FTPLab()
    cp = lab.control()
    b = c2s(cp, 100, 200, b"PORT 198,51,100,2,195,80\r\n")
    before = bytes(b)
    assert app_in(lab.ipvs, cp, b, 0, 1000) == app.NF_ACCEPT
    assert bytes(b) == before  # PORT is never rewritten
    n = lab.ipvs.conn_tab.in_get(IPPROTO_TCP, CIP, VIP, 50000, 20)
    assert n is not None and n is not cp
    assert (n.caddr, n.cport, n.vaddr, n.vport, n.daddr, n.dport) == (CIP, 50000, VIP, 20, RS, 20)
    assert n.flags & IP_VS_CONN_F_NFCT and not n.flags & IP_VS_CONN_F_NO_CPORT
    assert n.state == tcp.LISTEN and n.timeout == 120 * HZ and n.expires == 1000 + 120 * HZ
    assert n.control is cp and cp.n_control == 1
    assert n.flags & IP_VS_CONN_F_INACTIVE and lab.dest.inactconns == 2
    # the server's SYN from port 20 finds it on the out side
    assert lab.ipvs.conn_tab.out_get(IPPROTO_TCP, RS, CIP, 20, 50000) is n
    assert cp.app_data == ftp.IP_VS_FTP_ACTIVE
    assert lab.ftp.stats["port"] == 1 and lab.ftp.stats["data_conn"] == 1
    # a retransmitted PORT reuses the entry
    b = c2s(cp, 100, 200, b"PORT 198,51,100,2,195,80\r\n")
    app_in(lab.ipvs, cp, b, 0, 2000)
    assert cp.n_control == 1 and len(lab.ipvs.conn_tab) == 2
    assert n.expires == 2000 + 120 * HZ


def test_port_mapped_real_server_port():
    lab = FTPLab(rs_port=2121)
    cp = lab.control()
    app_in(lab.ipvs, cp, c2s(cp, 1, 1, b"EPRT |1|198.51.100.2|50000|\r\n"), 0, 0)
    n = lab.ipvs.conn_tab.in_get(IPPROTO_TCP, CIP, VIP, 50000, 20)
    assert (n.daddr, n.dport) == (RS, 2120)
    assert lab.ftp.stats["eprt"] == 1


def test_port_for_foreign_address_is_taken_and_counted():
    lab = FTPLab()
    cp = lab.control()
    app_in(lab.ipvs, cp, c2s(cp, 1, 1, b"PORT 192,0,2,99,4,0\r\n"), 0, 0)
    assert lab.ipvs.conn_tab.in_get(IPPROTO_TCP, A("192.0.2.99"), VIP, 1024, 20) is not None
    assert lab.ftp.stats["foreign_addr"] == 1


@pytest.mark.parametrize(
    "payloads, counter",
    [
        ([b"PORT 198,51,100", b",2,195,80\r\n"], "partial"),  # split over two segments
        ([b"PORT 198,51,100,2,195\r\n"], "malformed"),
        ([b"NOOP\r\nPORT 198,51,100,2,195,80\r\n"], None),  # PORT only at the segment start
        ([b"PO"], "partial"),
    ],
)
def test_port_not_taken(payloads, counter):
    lab = FTPLab()
    cp = lab.control()
    for p in payloads:
        b = c2s(cp, 1, 1, p)
        before = bytes(b)
        assert app_in(lab.ipvs, cp, b, 0, 0) == app.NF_ACCEPT
        assert bytes(b) == before
    assert len(lab.ipvs.conn_tab) == 1
    if counter:
        assert lab.ftp.stats[counter] >= 1


def test_only_established_sessions():
    lab = FTPLab()
    cp = lab.control(established=False)
    cp.state = tcp.SYN_RECV
    app_in(lab.ipvs, cp, c2s(cp, 1, 1, b"PORT 198,51,100,2,195,80\r\n"), 0, 0)
    app_in(lab.ipvs, cp, c2s(cp, 1, 1, b"PASV\r\n"), 0, 0)
    assert len(lab.ipvs.conn_tab) == 1 and cp.app_data is None


def test_table_full_drops_the_command():
    lab = FTPLab()
    cp = lab.control()
    lab.ipvs.conn_tab.max_conns = 1
    assert app_in(lab.ipvs, cp, c2s(cp, 1, 1, b"PORT 198,51,100,2,195,80\r\n"), 0, 0) == app.NF_DROP
    assert lab.ftp.stats["drop_table_full"] == 1


def test_payload_bounded_by_ip_length_not_frame():
    """Ethernet padding after the IP packet is not payload."""
    lab = FTPLab()
    cp = lab.control()
    b = c2s(cp, 1, 1, b"PORT 198,51,100,2,195,80")
    b += b"\r\n" + bytes(8)
    assert app_in(lab.ipvs, cp, b, 0, 0) == app.NF_ACCEPT
    assert len(lab.ipvs.conn_tab) == 1


def test_bad_data_offset_is_ignored():
    lab = FTPLab()
    cp = lab.control()
    b = c2s(cp, 1, 1, b"PORT 198,51,100,2,195,80\r\n")
    b[32] = 0x40  # doff 4 < 5
    assert app_in(lab.ipvs, cp, b, 0, 0) == app.NF_ACCEPT
    assert len(lab.ipvs.conn_tab) == 1 and lab.ftp.stats["no_payload"] == 1


# -------------------------------------------------------------- pkt_out

REPLY = b"227 Entering Passive Mode (172,16,0,2,117,48).\r\n"
REWRITTEN = b"227 Entering Passive Mode (203,0,113,5,117,48).\r\n"


def test_pasv_reply_rewritten_to_vip_with_seq_adjustment():
    lab = FTPLab()
    cp = lab.control()
    ipvs = lab.ipvs
    c, s = 1000, 7000
    assert app_in(ipvs, cp, c2s(cp, c, s, b"PASV\r\n"), 0, 10) == app.NF_ACCEPT
    assert cp.app_data == ftp.IP_VS_FTP_PASV
    b = s2c(cp, s, c + 6, REPLY)
    assert app_out(ipvs, cp, b, 0, 10) == app.NF_MANGLED
    assert fields(b) == (s, c + 6, REWRITTEN)
    pkt = recompute_and_check(b)
    assert bytes(pkt[TCP].payload) == REWRITTEN
    assert cp.out_seq == [s, 1, 0] and cp.flags & IP_VS_CONN_F_OUT_SEQ
    assert cp.app_data == ftp.IP_VS_FTP_ACTIVE
    # the expected passive data connection: client port unknown
    n = ipvs.conn_tab.in_get(IPPROTO_TCP, CIP, VIP, 51000, 30000)
    assert n is not None and n.flags & IP_VS_CONN_F_NO_CPORT and n.cport == 0
    assert (n.caddr, n.vaddr, n.vport, n.daddr, n.dport) == (CIP, VIP, 30000, RS, 30000)
    assert n.state == tcp.LISTEN and n.control is cp
    assert ipvs.conn_tab.no_cport_count == 1

    # segments after the reply move by +1; the client's acks move back
    nxt = s + len(REPLY)
    b = s2c(cp, nxt, c + 6, b"150 Here comes the directory listing.\r\n")
    assert app_out(ipvs, cp, b, 0, 11) == app.NF_MANGLED
    assert fields(b)[0] == nxt + 1
    recompute_and_check(b)
    b = c2s(cp, c + 6, nxt + 1, b"")
    assert app_in(ipvs, cp, b, 0, 11) == app.NF_MANGLED
    assert fields(b)[1] == nxt
    # an ack of data before the reply is left alone (previous_delta 0)
    b = c2s(cp, c + 6, s, b"")
    assert app_in(ipvs, cp, b, 0, 11) == app.NF_ACCEPT
    # a retransmitted reply: rewritten again, same seq, record unchanged
    b = s2c(cp, s, c + 6, REPLY)
    cp.app_data = ftp.IP_VS_FTP_PASV
    assert app_out(ipvs, cp, b, 0, 12) == app.NF_MANGLED
    assert fields(b) == (s, c + 6, REWRITTEN)
    assert cp.out_seq == [s, 1, 0] and len(ipvs.conn_tab) == 2


def test_several_rewrites_accumulate_delta():
    lab = FTPLab()
    cp = lab.control()
    ipvs = lab.ipvs
    c, s = 10, 0xFFFFFF00  # wraps
    seen = s
    orig = s
    for reply, grow in [
        (b"227 Entering Passive Mode (172,16,0,2,117,48).\r\n", 1),
        (b"227 Entering Passive Mode (1,2,3,4,117,49).\r\n", 4),  # a foreign address, counted
        (b"227 Entering Passive Mode (203,0,113,5,117,50).\r\n", 0),
    ]:
        app_in(ipvs, cp, c2s(cp, c, orig, b"PASV\r\n"), 0, 0)
        c += 6
        b = s2c(cp, orig, c, reply)
        assert app_out(ipvs, cp, b, 0, 0) == app.NF_MANGLED
        seq, _, data = fields(b)
        assert seq == seen and len(data) == len(reply) + grow
        assert b"(203,0,113,5,117," in data
        orig = (orig + len(reply)) & 0xFFFFFFFF
        seen = (seen + len(data)) & 0xFFFFFFFF
        ack = c2s(cp, c, seen)
        app_in(ipvs, cp, ack, 0, 0)
        assert fields(ack)[1] == orig
    assert cp.out_seq[1:] == [5, 1]  # the last rewrite kept its length: no update
    # 1.2.3.4 and the VIP itself are not the real server
    assert lab.ftp.stats["foreign_addr"] == 2 and lab.ftp.stats["pasv_reply"] == 3
    # the foreign-address reply made a data connection to that address
    assert ipvs.conn_tab.out_get(IPPROTO_TCP, A("1.2.3.4"), CIP, 30001, 0) is not None


def test_227_without_pasv_untouched():
    lab = FTPLab()
    cp = lab.control()
    b = s2c(cp, 1, 1, REPLY)
    before = bytes(b)
    assert app_out(lab.ipvs, cp, b, 0, 0) == app.NF_ACCEPT
    assert bytes(b) == before and len(lab.ipvs.conn_tab) == 1


def test_reply_split_or_malformed_untouched_and_pasv_kept():
    lab = FTPLab()
    cp = lab.control()
    app_in(lab.ipvs, cp, c2s(cp, 1, 1, b"PASV\r\n"), 0, 0)
    for part in (b"227 Entering Passive Mode (172,16,0", b"227 Entering Passive Mode (172,16,0,2,117)\r\n"):
        b = s2c(cp, 1, 7, part)
        before = bytes(b)
        assert app_out(lab.ipvs, cp, b, 0, 0) == app.NF_ACCEPT
        assert bytes(b) == before
    assert cp.app_data == ftp.IP_VS_FTP_PASV
    assert lab.ftp.stats["partial"] == 1 and lab.ftp.stats["malformed"] == 1


def test_epsv_reply_creates_no_cport_entry():
    lab = FTPLab()
    cp = lab.control()
    app_in(lab.ipvs, cp, c2s(cp, 1, 1, b"EPSV\r\n"), 0, 0)
    assert cp.app_data == ftp.IP_VS_FTP_EPSV
    reply = b"229 Entering Extended Passive Mode (|||6446|)\r\n"
    b = s2c(cp, 1, 7, reply)
    assert app_out(lab.ipvs, cp, b, 0, 0) == app.NF_MANGLED
    assert fields(b)[2] == reply  # same text, same length
    assert cp.out_seq is None  # nothing resized
    n = lab.ipvs.conn_tab.in_get(IPPROTO_TCP, CIP, VIP, 40001, 6446)
    assert n.flags & IP_VS_CONN_F_NO_CPORT and (n.daddr, n.dport) == (RS, 6446)
    assert lab.ftp.stats["epsv_reply"] == 1


def test_epsv_reply_with_address_is_shortened():
    lab = FTPLab()
    cp = lab.control()
    app_in(lab.ipvs, cp, c2s(cp, 1, 1, b"EPSV 1\r\n"), 0, 0)
    reply = b"229 Entering Extended Passive Mode (|1|172.16.0.3|6446|)\r\n"
    b = s2c(cp, 500, 9, reply)
    assert app_out(lab.ipvs, cp, b, 0, 0) == app.NF_MANGLED
    assert fields(b)[2] == b"229 Entering Extended Passive Mode (|||6446|)\r\n"
    recompute_and_check(b)
    assert cp.out_seq == [500, -11, 0]
    n = lab.ipvs.conn_tab.in_get(IPPROTO_TCP, CIP, VIP, 40001, 6446)
    assert n.daddr == A("172.16.0.3")


@pytest.mark.parametrize("cmd", [b"EPSV ALL\r\n", b"EPSV 2\r\n"])
def test_epsv_variants_the_kernel_ignores(cmd):
    lab = FTPLab()
    cp = lab.control()
    app_in(lab.ipvs, cp, c2s(cp, 1, 1, cmd), 0, 0)
    assert cp.app_data is None and lab.ftp.stats["epsv_unsupported"] == 1


def test_reply_that_cannot_grow_is_dropped():
    lab = FTPLab()
    cp = lab.control()
    app_in(lab.ipvs, cp, c2s(cp, 1, 1, b"PASV\r\n"), 0, 0)
    big = REPLY + b"x" * (65535 - 40 - len(REPLY))
    b = s2c(cp, 1, 7, big)
    assert len(b) == 65535
    assert app_out(lab.ipvs, cp, b, 0, 0) == app.NF_DROP
    assert lab.ftp.stats["drop_too_big"] == 1


def test_works_behind_ethernet_and_tcp_options():
    lab = FTPLab()
    cp = lab.control()
    app_in(lab.ipvs, cp, c2s(cp, 1, 1, b"PASV\r\n"), 0, 0)
    p = Ether() / IP(src="172.16.0.2", dst="198.51.100.2") / TCP(
        sport=21, dport=40000, flags="PA", seq=9, ack=7, options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]
    ) / Raw(REPLY)
    b = bytearray(bytes(p))
    assert app_out(lab.ipvs, cp, b, 14, 0) == app.NF_MANGLED
    assert fields(b, 14)[2] == REWRITTEN
    recompute_and_check(b, 14)


# ------------------------------------------------------------ robustness

TOKENS = [
    b"PORT ", b"EPRT ", b"PASV\r\n", b"EPSV", b" 1", b" ALL", b"227 ", b"229 ", b"(", b")", b"|", b"|1|", b"|2|",
    b",", b".", b":", b"1", b"25", b"256", b"65536", b"0", b"\r\n", b"\r", b" ", b"\x00", b"\xff", b"a",
]


C6, V6, R6 = A("2001:db8:1::2"), A("2001:db8:2::5"), A("2001:db8:3::2")


def v6_control(lab: FTPLab):
    """An IPv6 control connection bound to the helper (the core's IPv6 path
    comes later; the helper's IPv6 parsing is the kernel's already)."""
    cp = lab.ipvs.conn_tab.new(ConnParam(AF_INET6, IPPROTO_TCP, C6, 40000, V6, 21), R6, 21, 0, None)
    app.bind_conn(lab.ipvs, cp)
    cp.state = tcp.ESTABLISHED
    return cp


def v6_packet(cp, inbound: bool, payload: bytes, seq: int = 1, ack: int = 1) -> bytearray:
    from scapy.layers.inet6 import IPv6

    if inbound:
        p = IPv6(src="2001:db8:1::2", dst="2001:db8:2::5") / TCP(sport=40000, dport=21, flags="PA", seq=seq, ack=ack)
    else:
        p = IPv6(src="2001:db8:3::2", dst="2001:db8:1::2") / TCP(sport=21, dport=40000, flags="PA", seq=seq, ack=ack)
    return bytearray(bytes(p / Raw(payload)) if payload else bytes(p))


def test_ipv6_eprt_and_epsv():
    lab = FTPLab()
    cp = v6_control(lab)
    assert cp.app is not None
    app_in(lab.ipvs, cp, v6_packet(cp, True, b"EPRT |2|2001:db8:1::2|50000|\r\n"), 0, 0)
    n = lab.ipvs.conn_tab.in_get(IPPROTO_TCP, C6, V6, 50000, 20)
    assert n is not None and (n.daddr, n.dport) == (R6, 20)
    app_in(lab.ipvs, cp, v6_packet(cp, True, b"PASV\r\n"), 0, 0)  # IPv4 only
    assert cp.app_data == ftp.IP_VS_FTP_ACTIVE
    app_in(lab.ipvs, cp, v6_packet(cp, True, b"EPSV 2\r\n"), 0, 0)
    assert cp.app_data == ftp.IP_VS_FTP_EPSV
    reply = b"229 Extended Passive (|2|2001:db8:3::2|6446|)\r\n"
    b = v6_packet(cp, False, reply, seq=100)
    assert app_out(lab.ipvs, cp, b, 0, 0) == app.NF_MANGLED
    from scapy.layers.inet6 import IPv6

    pkt = IPv6(bytes(b))
    assert bytes(pkt[TCP].payload) == b"229 Extended Passive (|||6446|)\r\n"
    assert pkt.plen == len(b) - 40
    assert cp.out_seq == [100, -14, 0]
    n = lab.ipvs.conn_tab.in_get(IPPROTO_TCP, C6, V6, 40001, 6446)
    assert n.flags & IP_VS_CONN_F_NO_CPORT and n.daddr == R6


@settings(max_examples=400, deadline=None)
@given(
    payload=st.one_of(st.binary(max_size=300), st.lists(st.sampled_from(TOKENS), max_size=40).map(b"".join)),
    mode=st.sampled_from([None, 0, 1, 2, 3]),
    inbound=st.booleans(),
    af6=st.booleans(),
)
def test_random_control_bytes_never_raise(payload, mode, inbound, af6):
    lab = FTPLab()
    if af6:
        cp = v6_control(lab)
        b = v6_packet(cp, inbound, payload)
    else:
        cp = lab.control()
        b = (c2s if inbound else s2c)(cp, 1, 1, payload)
    cp.app_data = mode
    before = bytes(b)
    ret = (app_in if inbound else app_out)(lab.ipvs, cp, b, 0, 0)
    assert ret in (app.NF_DROP, app.NF_ACCEPT, app.NF_MANGLED)
    if ret == app.NF_ACCEPT:
        assert bytes(b) == before
    if ret == app.NF_MANGLED and not af6:
        assert int.from_bytes(b[2:4], "big") == len(b)
        recompute_and_check(b)
    if ret == app.NF_MANGLED and af6:
        assert int.from_bytes(b[4:6], "big") == len(b) - 40
    if inbound:
        assert bytes(b) == before  # commands are never rewritten


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=80), kind=st.sampled_from([PORT_, PASV_, EPRT_, EPSV_]), af6=st.booleans())
def test_parser_total(data, kind, af6):
    res, addr, port, start, end = parse_(data, kind, AF_INET6 if af6 else AF_INET, RS)
    assert res in (-1, 0, 1)
    if res == 1:
        assert 0 <= start <= end <= len(data) and 0 <= port <= 0xFFFF
        assert len(addr) in (4, 16)


def test_truncated_tcp_header_is_refused():
    """The core checks the TCP header before a helper runs; called with a
    packet whose IP header holds only 10 bytes of TCP, the helper still
    refuses it without raising."""
    lab = FTPLab()
    cp = lab.control()
    b = c2s(cp, 1, 1, b"PASV\r\n")[:30]
    b[2:4] = (30).to_bytes(2, "big")
    assert app_in(lab.ipvs, cp, b, 0, 0) == app.NF_DROP
    assert app_out(lab.ipvs, cp, b, 0, 0) == app.NF_DROP


def test_packet_helper_builds_real_tcp():
    b = packet(CIP, VIP, 1, 21, 5, 6, b"x")
    assert fields(b) == (5, 6, b"x")


@settings(max_examples=300, deadline=None)
@given(
    head=st.sampled_from([b"", b"\x45", b"\x46", b"\x60", b"\x41"]),
    body=st.binary(max_size=120),
    mode=st.sampled_from([None, 1, 3]),
    inbound=st.booleans(),
)
def test_random_packet_bytes_never_raise(head, body, mode, inbound):
    """Whatever an IP packet the core parsed holds (any header length,
    any transport bytes), the hooks return a verdict."""
    lab = FTPLab()
    cp = lab.control()
    cp.app_data = mode
    b = bytearray(head + body)
    # The length fields made to agree with the buffer, as parse demands.
    if head[:1] in (b"\x45", b"\x46") and len(b) >= 24:
        b[2:4] = len(b).to_bytes(2, "big")
    elif head == b"\x60" and len(b) >= 40:
        b[4:6] = (len(b) - 40).to_bytes(2, "big")
    if type(parse(b, 0)) is not IPHeader:
        return  # the core drops it: the helper never sees it
    assert (app_in if inbound else app_out)(lab.ipvs, cp, b, 0, 0) in (0, 1, 2)
