"""ipvs/driver/pcap.py: the classic pcap reader/writer, checked against
hand-built files (both byte orders, micro/nanoseconds) and scapy."""

import io
import struct

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.utils import rdpcap, wrpcap

from ipvs.driver import pcap

FRAME = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="1.2.3.4", dst="5.6.7.8") / UDP())


def hand_built(order: str, nano: bool, records, linktype=1, snap=65535) -> bytes:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snap, linktype)
    for sec, frac, data in records:
        out += struct.pack(order + "IIII", sec, frac, len(data), len(data) + 10) + data
    return out


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_reads_both_byte_orders_and_resolutions(order, nano):
    frac = 123456789 if nano else 123456
    raw = hand_built(order, nano, [(1_700_000_000, frac, FRAME), (1_700_000_001, 0, b"\x01\x02")])
    recs = list(pcap.read(io.BytesIO(raw)))
    assert [r.data for r in recs] == [FRAME, b"\x01\x02"]
    assert recs[0].ts == pytest.approx(1_700_000_000.123456789 if nano else 1_700_000_000.123456, abs=1e-7)
    assert recs[1].ts == 1_700_000_001
    assert {r.linktype for r in recs} == {1}


def test_linktype_fcs_bits_are_masked_and_raw_is_kept():
    raw = hand_built("<", False, [(1, 0, b"\x45" + bytes(19))], linktype=0x10000000 | pcap.LINKTYPE_RAW)
    [r] = pcap.read(io.BytesIO(raw))
    assert r.linktype == pcap.LINKTYPE_RAW


def test_round_trip():
    recs = [(1_700_000_000.25, FRAME), (1_700_000_000.5000004, FRAME[:20]), (1_700_000_001.9999996, b"")]
    f = io.BytesIO()
    pcap.write(f, recs)
    f.seek(0)
    got = list(pcap.read(f))
    assert [r.data for r in got] == [d for _, d in recs]
    assert [r.ts for r in got] == [1_700_000_000.25, 1_700_000_000.5, 1_700_000_002.0]
    head = f.getvalue()[:24]
    assert struct.unpack("<IHHiIII", head) == (0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)


def test_interoperates_with_scapy(tmp_path):
    ours = tmp_path / "ours.pcap"
    with open(ours, "wb") as f:
        pcap.write(f, [(1000.5, FRAME), (1001.0, FRAME)])
    pk = rdpcap(str(ours))
    assert [bytes(p) for p in pk] == [FRAME, FRAME]
    assert float(pk[0].time) == pytest.approx(1000.5)
    theirs = tmp_path / "theirs.pcap"
    p = Ether(FRAME)
    p.time = 2000.75
    wrpcap(str(theirs), [p])
    [r] = pcap.read_file(str(theirs))
    assert r.data == FRAME and r.ts == pytest.approx(2000.75) and r.linktype == pcap.LINKTYPE_ETHERNET


@pytest.mark.parametrize("cut", [0, 10, 23])
def test_short_header_is_an_error(cut):
    raw = hand_built("<", False, [])[:cut]
    with pytest.raises(pcap.PcapError):
        list(pcap.read(io.BytesIO(raw)))


def test_bad_magic_is_an_error():
    with pytest.raises(pcap.PcapError, match="magic"):
        list(pcap.read(io.BytesIO(b"\x0a\x0d\x0d\x0a" + bytes(40))))


def test_truncated_records_are_errors_with_offsets():
    raw = hand_built("<", False, [(1, 0, FRAME), (2, 0, FRAME)])
    first_end = 24 + 16 + len(FRAME)
    with pytest.raises(pcap.PcapError, match=f"offset {first_end}"):
        list(pcap.read(io.BytesIO(raw[: first_end + 5])))  # record header cut
    with pytest.raises(pcap.PcapError, match=f"offset {first_end}"):
        list(pcap.read(io.BytesIO(raw[:-1])))  # record data cut
    # Records before the damage were delivered first.
    it = pcap.read(io.BytesIO(raw[:-1]))
    assert next(it).data == FRAME


def test_absurd_record_length_is_an_error():
    raw = hand_built("<", False, []) + struct.pack("<IIII", 0, 0, 1 << 30, 1 << 30)
    with pytest.raises(pcap.PcapError):
        list(pcap.read(io.BytesIO(raw)))


def test_header_only_file_has_no_records():
    assert list(pcap.read(io.BytesIO(hand_built(">", True, [])))) == []


def test_l3_offset():
    eth = pcap.LINKTYPE_ETHERNET
    assert pcap.l3_offset(FRAME, eth) == (14, 0x0800)
    vlan = bytes(Ether() / Dot1Q(vlan=5) / IP() / UDP())
    assert pcap.l3_offset(vlan, eth) == (18, 0x0800)
    qinq = bytes(Ether(type=0x88A8) / Dot1Q(vlan=5) / Dot1Q(vlan=6) / IP())
    assert pcap.l3_offset(qinq, eth) == (22, 0x0800)
    v6 = bytes(Ether(type=0x86DD)) + bytes(40)
    assert pcap.l3_offset(v6, eth) == (14, 0x86DD)
    assert pcap.l3_offset(bytes(Ether() / ARP()), eth) is None
    assert pcap.l3_offset(FRAME[:13], eth) is None
    assert pcap.l3_offset(bytes(IP()), pcap.LINKTYPE_RAW) == (0, 0x0800)
    assert pcap.l3_offset(b"\x60" + bytes(39), pcap.LINKTYPE_RAW) == (0, 0x86DD)
    assert pcap.l3_offset(b"", pcap.LINKTYPE_RAW) is None
    assert pcap.l3_offset(FRAME, 105) is None
