"""ipvs/app/__init__.py: registry, binding and the ip_vs_seq adjustment."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipvs import app
from ipvs.app import ftp
from ipvs.ip_vs import IPVSError
from ipvs.packet import parse
from ipvs.uapi import IP_VS_CONN_F_DROUTE, IP_VS_CONN_F_IN_SEQ, IP_VS_CONN_F_NFCT, IP_VS_CONN_F_OUT_SEQ, IPPROTO_TCP
from tests.app.util import FTPLab, app_in, app_out, c2s, fields, recompute_and_check, s2c

# ---------------------------------------------------------------- registry


def test_register_fills_incarnations_and_appcnt():
    lab = FTPLab(ftp_ports=(21, 0, 2121))
    ipvs = lab.ipvs
    assert sorted(ipvs.apps) == [(IPPROTO_TCP, 21), (IPPROTO_TCP, 2121)]
    inc = ipvs.apps[(IPPROTO_TCP, 2121)]
    assert (inc.name, inc.protocol, inc.port, inc.usecnt) == ("ftp", IPPROTO_TCP, 2121, 0)
    assert ipvs.proto_data[IPPROTO_TCP].appcnt == 2
    # /proc/net/ip_vs_app order: incarnations are added at the list head
    assert [i.port for i in app.incarnations(ipvs)] == [2121, 21]


def test_register_twice_is_eexist_and_leaves_one():
    lab = FTPLab()
    with pytest.raises(IPVSError) as e:
        ftp.register(lab.ipvs, ports=(2121,))
    assert e.value.errno == errno.EEXIST
    assert list(lab.ipvs.apps) == [(IPPROTO_TCP, 21)]


def test_port_taken_by_other_app_is_eexist_and_unwinds():
    class Other(app.App):
        name = "other"

    lab = FTPLab()
    with pytest.raises(IPVSError) as e:
        app.register_app(lab.ipvs, Other(), (8021, 21))
    assert e.value.errno == errno.EEXIST
    assert list(lab.ipvs.apps) == [(IPPROTO_TCP, 21)]
    assert lab.ipvs.proto_data[IPPROTO_TCP].appcnt == 1


@pytest.mark.parametrize("ports", [tuple(range(1, 10)), (70000,), (-1,)])
def test_bad_port_lists_are_einval(ports):
    lab = FTPLab(ftp_ports=None)
    with pytest.raises(IPVSError) as e:
        ftp.register(lab.ipvs, ports=ports)
    assert e.value.errno == errno.EINVAL
    assert lab.ipvs.apps == {}


def test_eight_ports_allowed():
    lab = FTPLab(ftp_ports=tuple(range(21, 29)))
    assert len(lab.ipvs.apps) == 8


def test_not_loaded_by_default():
    lab = FTPLab(ftp_ports=None)
    cp = lab.control()
    assert cp.app is None and lab.ipvs.apps == {}


def test_bind_unbind_counts_and_unregister_busy():
    lab = FTPLab()
    cp = lab.control()
    inc = lab.ipvs.apps[(IPPROTO_TCP, 21)]
    assert cp.app is inc and inc.usecnt == 1
    assert cp.flags & IP_VS_CONN_F_NFCT  # ip_vs_ftp_init_conn
    with pytest.raises(IPVSError) as e:
        ftp.unregister(lab.ipvs)
    assert e.value.errno == errno.EBUSY
    app.unbind_conn(lab.ipvs, cp)
    assert cp.app is None and inc.usecnt == 0
    ftp.unregister(lab.ipvs)
    assert lab.ipvs.apps == {} and lab.ipvs.proto_data[IPPROTO_TCP].appcnt == 0
    with pytest.raises(IPVSError) as e:
        ftp.unregister(lab.ipvs)
    assert e.value.errno == errno.ENOENT


def test_bind_needs_masq_and_matching_vport():
    dr = FTPLab(conn_flags=IP_VS_CONN_F_DROUTE)
    assert dr.control().app is None
    other = FTPLab(vport=80, rs_port=80)
    assert other.control().app is None
    mapped = FTPLab(vport=2121, rs_port=21, ftp_ports=(21, 2121))
    assert mapped.control().app.port == 2121


# ------------------------------------------------------- seq primitives


def test_after_wraps():
    assert app.after(1, 0)
    assert not app.after(0, 1)
    assert not app.after(5, 5)
    assert app.after(3, 0xFFFFFFF0)
    assert not app.after(0xFFFFFFF0, 3)


def test_fix_seq_and_ack_use_delta_after_init_seq():
    v = [1000, 5, 2]
    assert app.fix_seq(v, 1001) == 1006
    assert app.fix_seq(v, 1000) == 1002  # the resized segment itself: previous_delta
    assert app.fix_seq(v, 900) == 902
    # acks count what the peer received: compared with init_seq + delta
    assert app.fix_ack_seq(v, 1006) == 1001
    assert app.fix_ack_seq(v, 1005) == 1003
    assert app.fix_ack_seq([0xFFFFFFFE, 4, 0], 3) == 0xFFFFFFFF
    assert app.fix_seq([0, 0, 0], 77) == 77


def test_seq_update_only_moves_forward():
    lab = FTPLab()
    cp = lab.control()
    app.seq_update(cp, "out_seq", IP_VS_CONN_F_OUT_SEQ, 1000, 3)
    assert cp.out_seq == [1000, 3, 0] and cp.flags & IP_VS_CONN_F_OUT_SEQ
    app.seq_update(cp, "out_seq", IP_VS_CONN_F_OUT_SEQ, 1000, 3)  # retransmission
    assert cp.out_seq == [1000, 3, 0]
    app.seq_update(cp, "out_seq", IP_VS_CONN_F_OUT_SEQ, 900, 7)  # older data
    assert cp.out_seq == [1000, 3, 0]
    app.seq_update(cp, "out_seq", IP_VS_CONN_F_OUT_SEQ, 2000, -5)
    assert cp.out_seq == [2000, -2, 3]
    assert not cp.flags & IP_VS_CONN_F_IN_SEQ


def test_mangle_payload_updates_total_length():
    lab = FTPLab()
    cp = lab.control()
    buf = s2c(cp, 1, 1, b"abcdef")
    n = len(buf)
    start = n - 4
    assert app.mangle_payload(buf, parse(buf, 0), start, start + 2, b"XYZW") == 2
    assert bytes(buf[-8:]) == b"abXYZWef"
    assert int.from_bytes(buf[2:4], "big") == n + 2
    recompute_and_check(buf)
    # would exceed 65535 bytes: refused, untouched
    before = bytes(buf)
    assert app.mangle_payload(buf, parse(buf, 0), start, start, b"x" * 70000) is None
    assert bytes(buf) == before


# ------------------------------- both directions with a resizing test app


class Shrink(app.App):
    """Test helper: inbound b"HELLO" becomes b"HI", outbound b"BYE" becomes
    b"GOODBYE", so both sequence records are exercised."""

    name = "shrink"

    def _swap(self, buf, h, old, new):
        i = bytes(buf[: h.end]).find(old, h.l4 + 20)
        if i < 0:
            return app.NF_ACCEPT, 0
        return app.NF_MANGLED, app.mangle_payload(buf, h, i, i + len(old), new)

    def pkt_in(self, ipvs, cp, buf, h, now):
        return self._swap(buf, h, b"HELLO", b"HI")

    def pkt_out(self, ipvs, cp, buf, h, now):
        return self._swap(buf, h, b"BYE", b"GOODBYE")


def test_both_directions_adjust_seq_and_ack():
    lab = FTPLab(ftp_ports=None)
    app.register_app(lab.ipvs, Shrink(), (21,))
    cp = lab.control()
    ipvs = lab.ipvs
    c, s = 5000, 0xFFFFFFF0  # the server's numbers wrap during the test

    b = c2s(cp, c, s, b"HELLO\r\n")  # 7 bytes become 4
    assert app_in(ipvs, cp, b, 0, 0) == app.NF_MANGLED
    assert fields(b) == (c, s, b"HI\r\n")
    recompute_and_check(b)
    assert cp.in_seq == [c, -3, 0]

    # the server acks the 4 bytes it got; the client must see 7 acked
    b = s2c(cp, s, c + 4, b"BYE\r\n")  # 5 bytes become 9
    assert app_out(ipvs, cp, b, 0, 0) == app.NF_MANGLED
    assert fields(b) == (s, c + 7, b"GOODBYE\r\n")
    recompute_and_check(b)

    # next client segment: seq shifted by -3, ack of 9 bytes mapped to 5
    b = c2s(cp, c + 7, (s + 9) & 0xFFFFFFFF, b"NOOP\r\n")
    assert app_in(ipvs, cp, b, 0, 0) == app.NF_MANGLED
    assert fields(b) == (c + 4, (s + 5) & 0xFFFFFFFF, b"NOOP\r\n")

    # next server segment: seq +4, ack maps the client's 13 bytes to 10 received
    b = s2c(cp, (s + 5) & 0xFFFFFFFF, c + 10, b"200 ok\r\n")
    assert app_out(ipvs, cp, b, 0, 0) == app.NF_MANGLED
    assert fields(b) == ((s + 9) & 0xFFFFFFFF, c + 13, b"200 ok\r\n")

    # a retransmission of the first client segment: same rewrite, old offset
    b = c2s(cp, c, s, b"HELLO\r\n")
    assert app_in(ipvs, cp, b, 0, 0) == app.NF_MANGLED
    assert fields(b)[0] == c
    assert cp.in_seq == [c, -3, 0]


def test_unbound_connection_untouched():
    lab = FTPLab(ftp_ports=None)
    cp = lab.control()
    b = c2s(cp, 1, 2, b"PORT 1,2,3,4,5,6\r\n")
    before = bytes(b)
    assert app_in(lab.ipvs, cp, b, 0, 0) == app.NF_ACCEPT
    assert app_out(lab.ipvs, cp, b, 0, 0) == app.NF_ACCEPT
    assert bytes(b) == before


@settings(max_examples=150, deadline=None)
@given(
    isn=st.integers(0, 0xFFFFFFFF),
    segs=st.lists(st.tuples(st.booleans(), st.integers(0, 40)), min_size=1, max_size=12),
)
def test_translated_stream_stays_contiguous(isn, segs):
    """Whatever mix of resized and plain segments the client sends, the
    server sees one contiguous stream and its acks map back exactly onto
    the client's original segment boundaries."""
    lab = FTPLab(ftp_ports=None)
    app.register_app(lab.ipvs, Shrink(), (21,))
    cp = lab.control()
    orig = isn
    seen = isn  # where the server's view of the stream stands
    for resize, pad in segs:
        payload = (b"HELLO" if resize else b"") + b"x" * pad + b"\r\n"
        b = c2s(cp, orig, 1, payload)
        app_in(lab.ipvs, cp, b, 0, 0)
        seq, _ack, data = fields(b)
        assert seq == seen
        assert data == payload.replace(b"HELLO", b"HI")
        seen = (seen + len(data)) & 0xFFFFFFFF
        orig = (orig + len(payload)) & 0xFFFFFFFF
        r = s2c(cp, 1, seen)
        app_out(lab.ipvs, cp, r, 0, 0)
        assert fields(r)[1] == orig


def test_conntrack_rule_adjusts_ack_and_sack_edges():
    """nf_ct_seq_adjust / nf_ct_sack_adjust (what 6.1's ip_vs_ftp gets): a
    value whose "minus offset_before" lies after the correction position is
    shifted by offset_after, else by offset_before; SACK edges alike."""
    import struct

    from ipvs.app import ct_fix_ack, ct_sack_adjust

    vseq = [1000, 3, 1]  # correction_pos, offset_after, offset_before
    assert ct_fix_ack(vseq, 1005) == 1002  # 1004 after 1000
    assert ct_fix_ack(vseq, 1001) == 1000  # 1000 is not after 1000
    assert ct_fix_ack(vseq, 900) == 899
    assert ct_fix_ack([0xFFFFFFF0, 2, 0], 0x10) == 0x0E  # across the wrap
    # A TCP header with NOP, NOP, SACK(2 blocks), data offset 10 words.
    th = bytearray(40)
    th[12] = 10 << 4
    th[20:22] = b"\x01\x01"
    th[22:24] = b"\x05\x12"
    struct.pack_into("!IIII", th, 24, 1005, 1010, 900, 950)
    assert ct_sack_adjust(th, 0, vseq)
    assert struct.unpack_from("!IIII", th, 24) == (1002, 1007, 899, 949)
    # Malformed options end the walk without raising or changing anything.
    bad = bytearray(th)
    bad[23] = 0x30  # option longer than the header
    assert not ct_sack_adjust(bad, 0, vseq)
    assert bad[24:] == th[24:]
