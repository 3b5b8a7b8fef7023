"""The SIP engine's Call-ID search (``ipvs.pe.sip``) and its engine hooks.

Expected Call-IDs are written out by hand from the rules of
``ct_sip_get_header`` / ``get_callid`` (kernel 6.1), including the quirks
the module docstring lists.  A literal, pointer-by-pointer transcription
of those C functions (``_model_*`` below, independent of the module's
regex-driven line scan) is the oracle of the property tests.
"""

from __future__ import annotations

import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP

from ipvs.ip_vs import ConnParam
from ipvs.packet import parse
from ipvs.pe import pe_get
from ipvs.pe.sip import SIP, get_callid, get_header
from ipvs.uapi import IP_VS_CONN_F_TEMPLATE
from tests.conftest import A

REQ = b"INVITE sip:bob@203.0.113.5 SIP/2.0\r\n"


def callid(payload: bytes) -> bytes | None:
    r = get_callid(payload)
    return None if r is None else payload[r[0] : r[0] + r[1]]


# --------------------------------------------------------------------------
# Finding the header


@pytest.mark.parametrize(
    ("payload", "want"),
    [
        (REQ + b"Call-ID: a84b4c76e66710@pc33.atlanta.com\r\n\r\n", b"a84b4c76e66710@pc33.atlanta.com"),
        (REQ + b"Via: x\r\nCall-ID: abc\r\nCSeq: 1 INVITE\r\n", b"abc"),
        # compact form, any case, with or without blanks around the colon
        (REQ + b"i: f81d4fae-7dec-11d0-a765-00a0c91e6bf6@foo.bar.com\r\n",
         b"f81d4fae-7dec-11d0-a765-00a0c91e6bf6@foo.bar.com"),
        (REQ + b"I:abc\r\n", b"abc"),
        (REQ + b"cALL-iD   :   abc\r\n", b"abc"),
        (REQ + b"CALL-ID:abc\n", b"abc"),
        # line ends: LF only and CR only (RFC 2543) count as well as CRLF
        (b"INVITE x SIP/2.0\nCall-ID: lf\n", b"lf"),
        (b"INVITE x SIP/2.0\rCall-ID: cr\r", b"cr"),
        # the first Call-ID header wins
        (REQ + b"Call-ID: one\r\ni: two\r\n", b"one"),
        # word characters, and word@word
        (REQ + b"Call-ID: !\"%()*+,-./:<>?[\\]_`{}~@x\r\n", b"!\"%()*+,-./:<>?[\\]_`{}~@x"),
        # Latin-1 letters are letters to the kernel's ctype, so word characters
        (REQ + b"Call-ID: \xe9t\xe9\xff\xc0\r\n", b"\xe9t\xe9\xff\xc0"),
        # a Call-ID header that is no header: a later one is used
        (REQ + b"Call-ID:\tabc\r\nCall-ID: def\r\n", b"def"),
        # the compact name must be followed by a non-letter
        (REQ + b"ix: no\r\nid: no\r\ni\xe9: no\r\nCall-ID: yes\r\n", b"yes"),
        # a continuation line is not a header even if it looks like one
        (REQ + b"Subject: x\r\n Call-ID: no\r\n\tCall-ID: no\r\ni: yes\r\n", b"yes"),
        # an empty line (the body follows) does not stop the search
        (REQ + b"CSeq: 1\r\n\r\nCall-ID: body\r\n", b"body"),
    ],
)
def test_callid_found(payload, want):
    assert callid(payload) == want


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        REQ,
        REQ + b"\r\n",
        # the first line is never a header line
        b"Call-ID: first-line\r\n",
        # no line end after the value: SIP headers always end with one
        REQ + b"Call-ID: abc",
        # a value followed by anything but CR/LF
        REQ + b"Call-ID: abc def\r\n",
        REQ + b"Call-ID: abc;tag=1\r\n",
        REQ + b"Call-ID: a\xd7b\r\n",  # 0xd7 (multiplication sign) is punctuation
        # "@" must be followed by a word
        REQ + b"Call-ID: abc@\r\n",
        REQ + b"Call-ID: abc@ x\r\n",
        # no value at all
        REQ + b"Call-ID:\r\n",
        REQ + b"Call-ID: \r\n\r\n",
        REQ + b"Call-ID:",
        REQ + b"i",
        # a tab is not skipped after the colon (only at a continuation's start)
        REQ + b"Call-ID:\tabc\r\n",
        # the name must be followed (after blanks) by a colon: else the whole
        # search stops there, later headers included
        REQ + b"Call-IDs: abc\r\nCall-ID: def\r\n",
        REQ + b"i-x: abc\r\ni: def\r\n",
        REQ + b"Call-ID abc\r\nCall-ID: def\r\n",
    ],
)
def test_no_callid(payload):
    assert callid(payload) is None


def test_folded_value_loses_its_first_character():
    # sip_skip_whitespace's loop steps once more after following a fold: the
    # first character of the continuation line is passed over.
    assert callid(REQ + b"Call-ID:\r\n  abc@host\r\n") == b"bc@host"
    assert callid(REQ + b"Call-ID:\n\tabc\n") == b"bc"
    # a fold before the colon eats the colon itself
    assert callid(REQ + b"Call-ID\r\n :abc\r\nCall-ID: def\r\n") is None
    # blanks after the fold, then the value
    assert callid(REQ + b"Call-ID: \r\n \t xyz\r\n") == b"yz"
    # a line break that is not a fold ends the header: no value
    assert callid(REQ + b"Call-ID:\r\nabc\r\n") is None


def test_length_bound_is_255():
    ok = b"a" * 255
    assert callid(REQ + b"Call-ID: " + ok + b"\r\n") == ok
    assert callid(REQ + b"Call-ID: " + ok + b"a\r\n") is None
    assert callid(REQ + b"i: " + b"x" * 200 + b"@" + b"y" * 54 + b"\r\n") == b"x" * 200 + b"@" + b"y" * 54
    assert callid(REQ + b"i: " + b"x" * 200 + b"@" + b"y" * 55 + b"\r\n") is None


def test_resumed_search_skips_by_the_absolute_offset():
    # After a header without a value, get_callid adds that header's offset
    # (counted from the payload start) to its running start offset.
    first = REQ + b"Call-ID:\tx\r\n"
    m1 = get_header(first, 0, len(first))
    assert m1[0] == -1
    assert m1[1] == len(REQ) + len(b"Call-ID:")
    # One empty header: the next search starts at its value, and finds the good one.
    assert callid(first + b"Call-ID: good\r\n") == b"good"
    # Two empty headers: the second search starts at m1 + m2, past a good
    # header placed right behind them; one placed further on is found.
    two = first + b"Call-ID:\ty\r\n"
    m2 = get_header(two, m1[1], len(two))
    assert m2[0] == -1
    skipped = two + b"Call-ID: good\r\n"
    assert m1[1] + m2[1] > len(two) + len(b"Call-ID: ")
    assert callid(skipped) is None
    pad = b"X-Pad: " + b"p" * (m1[1] + m2[1]) + b"\r\n"
    assert callid(two + pad + b"Call-ID: good\r\n") == b"good"


def test_get_header_reports_value_offset():
    payload = REQ + b"i:  abc\r\n"
    ret, off, n = get_header(payload, 0, len(payload))
    assert (ret, payload[off : off + n]) == (1, b"abc")
    assert get_header(REQ, 0, len(REQ)) == (0, 0, 0)
    # datalen bounds the search like the end of the datagram: the value is cut off
    assert get_header(payload, 0, len(REQ) + 3) == (-1, len(REQ) + 3, 0)
    assert get_header(payload, 0, len(REQ) + 1) == (0, 0, 0)


# --------------------------------------------------------------------------
# A literal transcription of the C functions, as the oracle

CR, LF = 13, 10
_ALPHA_C = set(range(65, 91)) | set(range(97, 123)) | set(range(192, 215)) | set(range(216, 247)) | set(range(248, 256))


def _m_iswordc(c):
    if c in _ALPHA_C or 48 <= c <= 57:
        return True
    sc = c - 256 if c >= 128 else c  # a signed char
    return sc in (33, 34, 37) or 40 <= sc <= 47 or sc in (58, 60, 62, 63) or 91 <= sc <= 93 or sc in (95, 96, 123, 125, 126)


def _m_at(d, i):
    # Reading at or past the end: the C code may do so; treat as a NUL.
    return d[i] if 0 <= i < len(d) else 0


def _m_follow(d, i, limit):
    i += 1
    if i >= limit:
        return None
    if _m_at(d, i - 1) == CR and _m_at(d, i) == LF:
        i += 1
        if i >= limit:
            return None
    if _m_at(d, i) not in (32, 9):
        return None
    while i < limit:
        if _m_at(d, i) not in (32, 9):
            break
        i += 1
    return i


def _m_skip_ws(d, i, limit):
    while i < limit:
        c = _m_at(d, i)
        if c == 32:
            i += 1
            continue
        if c not in (CR, LF):
            break
        i = _m_follow(d, i, limit)
        if i is None:
            return None
        i += 1
    return i


def _m_word_len(d, i, limit):
    n = 0
    while i < limit and _m_iswordc(_m_at(d, i)):
        i += 1
        n += 1
    return n


def _m_callid_len(d, i, limit):
    n = _m_word_len(d, i, limit)
    i += n
    if not n or i == limit or _m_at(d, i) != ord("@"):
        return n
    i += 1
    n += 1
    dl = _m_word_len(d, i, limit)
    return 0 if not dl else n + dl


def _m_get_header(d, dataoff, datalen):
    limit = datalen
    i = dataoff
    while i < limit:
        if _m_at(d, i) not in (CR, LF):
            i += 1
            continue
        i += 1
        if i >= limit:
            break
        if _m_at(d, i - 1) == CR and _m_at(d, i) == LF:
            i += 1
            if i >= limit:
                break
        if _m_at(d, i) in (32, 9):
            i += 1
            continue
        if limit - i >= 7 and bytes(_m_at(d, i + k) for k in range(7)).lower() == b"call-id":
            i += 7
        elif limit - i >= 2 and _m_at(d, i) in (ord("i"), ord("I")) and _m_at(d, i + 1) not in _ALPHA_C:
            i += 1
        else:
            i += 1
            continue
        i = _m_skip_ws(d, i, limit)
        if i is None:
            break
        if _m_at(d, i) != ord(":") or i + 1 >= limit:
            break
        i += 1
        i = _m_skip_ws(d, i, limit)
        if i is None:
            break
        n = _m_callid_len(d, i, limit)
        if not n:
            return -1, i, 0
        return 1, i, n
    return 0, 0, 0


def _m_get_callid(d):
    dataoff = 0
    while True:
        ret, off, n = _m_get_header(d, dataoff, len(d))
        if ret > 0:
            break
        if ret == 0:
            return None
        dataoff += off
    if n > 255 or off + n == len(d) or _m_at(d, off + n) not in (CR, LF):
        return None
    return off, n


_SIPISH = st.lists(
    st.sampled_from([b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b"@", b"i", b"I", b"Call-ID", b"cAlL-Id", b"x",
                     b"abc", b"\xe9", b"\xd7", b";", b"i-", b"\x00"]),
    max_size=40,
).map(b"".join)


@given(st.binary(max_size=300) | _SIPISH)
def test_matches_the_literal_transcription(payload):
    assert get_callid(payload) == _m_get_callid(payload)


@given(_SIPISH, st.integers(0, 60))
def test_get_header_matches_the_transcription_from_any_offset(payload, off):
    assert get_header(payload, off, len(payload)) == _m_get_header(payload, off, len(payload))


_WORD = st.binary(min_size=1, max_size=40).map(lambda b: bytes(c for c in b if _m_iswordc(c) and c != 64)).filter(bool)
_HEADER = st.tuples(st.sampled_from([b"Via", b"From", b"To", b"CSeq", b"Max-Forwards", b"Contact"]),
                    st.binary(max_size=30).map(lambda b: bytes(c for c in b if c not in (CR, LF))))


@given(st.lists(_HEADER, max_size=6), st.lists(_HEADER, max_size=6), _WORD, st.none() | _WORD,
       st.sampled_from([b"Call-ID", b"call-id", b"CALL-ID", b"i", b"I"]), st.sampled_from([b"\r\n", b"\n", b"\r"]))
def test_callid_of_a_wellformed_message(before, after, word, domain, name, eol):
    value = word if domain is None else word + b"@" + domain
    lines = [REQ.rstrip(b"\r\n")] + [n + b": " + v for n, v in before] + [name + b": " + value]
    lines += [n + b": " + v for n, v in after]
    payload = eol.join(lines) + eol + eol + b"v=0" + eol
    assert callid(payload) == value


@given(st.binary(max_size=2000))
def test_never_raises_and_result_is_sane(payload):
    r = get_callid(payload)
    if r is not None:
        off, n = r
        assert 1 <= n <= 255
        assert payload[off + n] in (CR, LF)
        assert payload[off : off + n].count(b"@") <= 1


def test_oversized_payloads():
    big = REQ + b"X: " + b"y" * 70000 + b"\r\nCall-ID: late\r\n"
    assert callid(big) == b"late"
    assert callid(b"\r\n" * 40000) is None
    assert callid(b"\r\nCall-ID:\t" * 5000) is None


# --------------------------------------------------------------------------
# The engine's hooks


def frame(payload, proto="udp"):
    ip = IP(src="198.51.100.2", dst="203.0.113.5")
    l4 = UDP(sport=5060, dport=5060) if proto == "udp" else TCP(sport=5060, dport=5060, flags="S")
    return bytearray(bytes(ip / l4 / payload))


def param():
    return ConnParam(2, 17, A("198.51.100.2"), 0, A("203.0.113.5"), 5060, SIP)


def test_registered_as_sip():
    assert pe_get("sip") is SIP
    assert SIP.name == "sip"


def test_fill_param_sets_pe_data():
    p = param()
    buf = frame(REQ + b"Call-ID: c1@h\r\n")
    assert SIP.fill_param(p, buf, parse(buf, 0)) == 0
    assert p.pe_data == b"c1@h"


def test_fill_param_reads_up_to_the_ip_total_length():
    # Bytes after the IP packet (Ethernet padding) are not payload; the
    # UDP length field is not looked at.
    body = REQ + b"Call-ID: c1\r\n"
    buf = frame(body) + bytearray(b"garbage")
    p = param()
    assert SIP.fill_param(p, buf, parse(buf, 0)) == 0 and p.pe_data == b"c1"
    buf = frame(REQ + b"Call-ID: c1")  # the terminator would only be in the padding
    buf += b"\r\n"
    assert SIP.fill_param(param(), buf, parse(buf, 0)) == -errno.EINVAL
    buf = frame(body)
    buf[24:26] = (8).to_bytes(2, "big")  # UDP length claims no payload
    p = param()
    assert SIP.fill_param(p, buf, parse(buf, 0)) == 0 and p.pe_data == b"c1"


@pytest.mark.parametrize(
    "buf",
    [
        frame(REQ + b"no call id\r\n"),
        frame(REQ + b"Call-ID: c1\r\n", proto="tcp"),
        bytearray(bytes(IP(src="198.51.100.2", dst="203.0.113.5") / ICMP() / (REQ + b"Call-ID: c1\r\n"))),
        frame(b""),  # no payload at all
    ],
)
def test_fill_param_fails_without_a_callid(buf):
    # (Truncated or non-IP buffers never get here: the core's parse
    # drops them before any engine runs.)
    p = param()
    assert SIP.fill_param(p, buf, parse(buf, 0)) == -errno.EINVAL
    assert p.pe_data is None


@given(st.binary(max_size=200), st.booleans())
def test_fill_param_never_raises(data, request_line):
    buf = frame((REQ if request_line else b"") + data)
    p = param()
    assert SIP.fill_param(p, buf, parse(buf, 0)) in (0, -errno.EINVAL)


class FakeTemplate:
    def __init__(self, **kw):
        self.__dict__.update(af=2, caddr=A("198.51.100.2"), vaddr=A("203.0.113.5"), vport=5060,
                             flags=IP_VS_CONN_F_TEMPLATE, protocol=17, pe_data=b"c1")
        self.__dict__.update(kw)


def test_ct_match_compares_every_field():
    p = param()
    p.pe_data = b"c1"
    assert SIP.ct_match(p, FakeTemplate())
    for change in [dict(af=10), dict(caddr=A("198.51.100.3")), dict(vaddr=A("203.0.113.6")), dict(vport=5061),
                   dict(flags=0), dict(protocol=6), dict(pe_data=None), dict(pe_data=b"c2"), dict(pe_data=b"c1x")]:
        assert not SIP.ct_match(p, FakeTemplate(**change)), change


def test_hashkey_and_show():
    p = param()
    p.pe_data = b"abc@\xe9"
    assert SIP.hashkey_raw(p) == b"abc@\xe9"
    assert SIP.show_pe_data(FakeTemplate(pe_data=b"abc@\xe9")) == "abc@\xe9"
