"""The mark classification table (ipvs/fwmark.py)."""

import errno
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipvs.fwmark import MarkError, MarkRule, MarkTable, rule_from_dict
from ipvs.uapi import AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP


def A(t):
    return ipaddress.ip_address(t).packed


def test_prefix_protocol_and_port_matching():
    t = MarkTable()
    t.add(MarkRule(1, daddr="203.0.113.16/29"))
    t.add(MarkRule(2, protocol=IPPROTO_TCP, daddr="203.0.113.5/32", dport_lo=80, dport_hi=89))
    t.add(MarkRule(3, saddr="198.51.100.128/25", daddr="203.0.113.5"))
    c = t.classify
    assert c(AF_INET, IPPROTO_TCP, A("198.51.100.2"), A("203.0.113.20"), 22) == 1
    assert c(AF_INET, IPPROTO_TCP, A("198.51.100.2"), A("203.0.113.24"), 22) == 0
    assert c(AF_INET, IPPROTO_TCP, A("198.51.100.2"), A("203.0.113.5"), 85) == 2
    assert c(AF_INET, IPPROTO_UDP, A("198.51.100.2"), A("203.0.113.5"), 85) == 0
    assert c(AF_INET, IPPROTO_TCP, A("198.51.100.2"), A("203.0.113.5"), 90) == 0
    # Like the non-terminating MARK target: the last matching rule decides.
    assert c(AF_INET, IPPROTO_TCP, A("198.51.100.200"), A("203.0.113.5"), 85) == 3
    assert c(AF_INET6, IPPROTO_TCP, A("2001:db8::1"), A("2001:db8::2"), 80) == 0


def test_ipv6_rules():
    t = MarkTable()
    t.add(MarkRule(7, af=AF_INET6, daddr="2001:db8:5::/48"))
    assert t.classify(AF_INET6, IPPROTO_UDP, A("2001:db8::1"), A("2001:db8:5:1::9"), 53) == 7
    assert t.classify(AF_INET6, IPPROTO_UDP, A("2001:db8::1"), A("2001:db8:6::9"), 53) == 0
    assert t.classify(AF_INET, IPPROTO_UDP, A("192.0.2.1"), A("192.0.2.2"), 53) == 0


@pytest.mark.parametrize("rule, err", [
    (MarkRule(0), errno.EINVAL),
    (MarkRule(2**32), errno.EINVAL),
    (MarkRule(1, protocol=99), errno.EINVAL),
    (MarkRule(1, dport_lo=90, dport_hi=80, protocol=IPPROTO_TCP), errno.EINVAL),
    (MarkRule(1, dport_lo=80, dport_hi=80), errno.EINVAL),  # ports need a protocol
    (MarkRule(1, daddr="2001:db8::/32"), errno.EINVAL),  # family mismatch
    (MarkRule(1, daddr="not-an-address"), errno.EINVAL),
    (MarkRule(1, af=99), errno.EAFNOSUPPORT),
])
def test_bad_rules_are_refused(rule, err):
    t = MarkTable()
    with pytest.raises(MarkError) as e:
        t.add(rule)
    assert e.value.errno == err and len(t) == 0


def test_add_delete_flush_and_duplicates():
    t = MarkTable()
    r = MarkRule(1, daddr="203.0.113.0/24")
    t.add(r)
    with pytest.raises(MarkError) as e:
        t.add(MarkRule(1, daddr="203.0.113.0/24"))
    assert e.value.errno == errno.EEXIST
    t.delete(r)
    with pytest.raises(MarkError) as e:
        t.delete(r)
    assert e.value.errno == errno.ENOENT
    t.add(r)
    t.flush()
    assert len(t) == 0 and t.classify(AF_INET, 6, A("1.1.1.1"), A("203.0.113.1"), 80) == 0


def test_rule_text_and_dict_round_trip():
    r = MarkRule(5, protocol=IPPROTO_UDP, saddr="198.51.100.0/24", daddr="203.0.113.5/32", dport_lo=53, dport_hi=54)
    assert r.text() == "-p udp -s 198.51.100.0/24 -d 203.0.113.5/32 --dport 53:54 --set-mark 5"
    assert rule_from_dict(r.as_dict()) == r
    with pytest.raises(MarkError):
        rule_from_dict({"mark": 1, "bogus": 2})


@given(st.integers(0, 32), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_prefix_match_equals_ipaddress(plen, net, addr):
    netw = ipaddress.ip_network((net, plen), strict=False)
    t = MarkTable()
    t.add(MarkRule(9, daddr=str(netw)))
    a = addr.to_bytes(4, "big")
    want = 9 if ipaddress.ip_address(a) in netw else 0
    assert t.classify(AF_INET, IPPROTO_TCP, A("192.0.2.1"), a, 80) == want
