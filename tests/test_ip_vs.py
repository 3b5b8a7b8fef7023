"""ipvs/ip_vs.py: the address helpers the packet path keys templates with."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from ipvs.ip_vs import addr_prefix, fwmark_addr
from ipvs.uapi import AF_INET, AF_INET6


@given(st.binary(min_size=16, max_size=16), st.integers(0, 128))
def test_addr_prefix_ipv6_is_ipaddress_network(addr, plen):
    want = ipaddress.IPv6Network((int.from_bytes(addr, "big"), 128)).supernet(new_prefix=plen).network_address
    assert addr_prefix(addr, plen) == want.packed


def test_addr_prefix_ipv4_masks_with_the_host_order_mask():
    assert addr_prefix(bytes((198, 51, 100, 77)), 0xFFFFFF00) == bytes((198, 51, 100, 0))
    assert addr_prefix(bytes((198, 51, 100, 77)), 0xFFFFFFFF) == bytes((198, 51, 100, 77))


def test_addr_prefix_ipv6_common_lengths():
    a = ipaddress.IPv6Address("2001:db8:0:1:aaaa:bbbb:cccc:dddd").packed
    assert addr_prefix(a, 64) == ipaddress.IPv6Address("2001:db8:0:1::").packed
    assert addr_prefix(a, 128) == a
    assert addr_prefix(a, 0) == bytes(16)


def test_fwmark_addr_is_the_union_with_the_mark_in_front():
    assert fwmark_addr(AF_INET, 7) == b"\0\0\0\7"
    assert fwmark_addr(AF_INET6, 7) == b"\0\0\0\7" + bytes(12)
