"""The persistence engine registry and interface (``ipvs.pe``)."""

from __future__ import annotations

import errno
import sys

import pytest

from ipvs import ctl, pe
from ipvs.conn import ConnTable
from ipvs.ip_vs import ConnParam
from ipvs.packet import parse
from ipvs.pe import PersistenceEngine, available_pes, pe_get, pe_lookup, register_pe, unregister_pe
from ipvs.uapi import IP_VS_CONN_F_TEMPLATE
from tests.conftest import A


class Tagged(PersistenceEngine):
    """A test engine: the key is the first payload byte after the UDP header."""

    name = "tagged"

    def fill_param(self, p, buf, h):
        off = h.l4 + 8
        if off >= h.end:
            return -errno.EINVAL
        p.pe_data = bytes(buf[off : off + 1])
        return 0

    def ct_match(self, p, ct):
        return ct.caddr == p.caddr and ct.vport == p.vport and ct.pe_data == p.pe_data

    def show_pe_data(self, cp):
        return cp.pe_data.hex()


@pytest.fixture
def tagged():
    engine = register_pe(Tagged())
    yield engine
    unregister_pe(engine)


def test_sip_loads_on_demand():
    assert pe_get("sip").name == "sip"
    assert pe_lookup("sip") is pe_get("sip")
    assert available_pes() == ["sip"]


@pytest.mark.parametrize("name", ["", "nosuch", "__init__", "SIP", "sip ", "../sip", "os.path", "a" * 40])
def test_unknown_names_load_nothing(name):
    before = set(sys.modules)
    assert pe_get(name) is None
    assert not {m for m in set(sys.modules) - before if m.startswith("ipvs.pe.") and m != "ipvs.pe.sip"}


def test_register_twice_is_einval(tagged):
    assert pe_get("tagged") is tagged
    with pytest.raises(ctl.IPVSError) as e:
        register_pe(Tagged())
    assert e.value.errno == errno.EINVAL
    with pytest.raises(ctl.IPVSError):
        register_pe(PersistenceEngine())  # no name


def test_unregister_only_removes_that_engine(tagged):
    unregister_pe(Tagged())  # another instance of the name: nothing happens
    assert pe_lookup("tagged") is tagged


def test_base_class_hooks_are_the_kernels_null_pointers():
    e = PersistenceEngine()
    p = ConnParam(2, 17, A("198.51.100.2"), 0, A("203.0.113.5"), 5060)
    buf = bytearray(b"\x45\0\0\x28" + bytes(36))
    assert e.fill_param(p, buf, parse(buf, 0)) == 0 and p.pe_data is None
    assert e.ct_match is None and e.conn_out is None
    assert e.hashkey_raw(p) == b""


def test_service_pe_follows_the_name(tagged):
    from ipvs.netns import NetnsIPVS

    ipvs = NetnsIPVS()
    su = ctl.ServiceUser(addr=A("203.0.113.5"), port=5060, protocol=17, sched_name="rr", pe_name="tagged")
    svc = ctl.add_service(ipvs, su)
    assert pe.service_pe(svc) is tagged
    su.pe_name = ""
    ctl.edit_service(ipvs, su)
    assert pe.service_pe(svc) is None


def test_engine_templates_in_the_connection_table(tagged):
    tab = ConnTable(hz=250)
    cli, vip = A("198.51.100.2"), A("203.0.113.5")
    t1 = tab.new(ConnParam(2, 17, cli, 0, vip, 5060, tagged, b"a"), A("172.16.0.2"), 5060, IP_VS_CONN_F_TEMPLATE, None)
    t2 = tab.new(ConnParam(2, 17, cli, 0, vip, 5060, tagged, b"b"), A("172.16.0.3"), 5060, IP_VS_CONN_F_TEMPLATE, None)
    plain = tab.new(ConnParam(2, 17, cli, 0, vip, 5060), A("172.16.0.3"), 5060, IP_VS_CONN_F_TEMPLATE, None)
    assert (t1.pe, t1.pe_data, plain.pe, plain.pe_data) == (tagged, b"a", None, None)

    def lookup(data, caddr=cli, vport=5060):
        return tab.pe_ct_in_get(ConnParam(2, 17, caddr, 0, vip, vport, tagged, data))

    assert lookup(b"a") is t1 and lookup(b"b") is t2
    assert lookup(b"c") is None
    assert lookup(b"a", caddr=A("198.51.100.3")) is None
    assert lookup(b"a", vport=5061) is None
    # The plain lookup sees only the plain template, and the other way round.
    assert tab.ct_in_get(17, cli, vip, 0, 5060) is plain
    assert len(tab.all()) == 3
    # A non-template connection never keeps an engine.
    cp = tab.new(ConnParam(2, 17, cli, 1234, vip, 5060, tagged, b"a"), A("172.16.0.2"), 5060, 0, None)
    assert cp.pe is None and cp.ext is None
    # Unhash/rehash under a changed vport (what an invalidation does) keeps
    # the template filed, but no longer matched.
    tab.unhash(t1)
    t1.vport = 0xFFFF
    tab.hash(t1)
    assert lookup(b"a") is None
    t1b = tab.new(ConnParam(2, 17, cli, 0, vip, 5060, tagged, b"a"), A("172.16.0.3"), 5060, IP_VS_CONN_F_TEMPLATE, None)
    assert lookup(b"a") is t1b
    tab.unhash(t1b)
    assert lookup(b"a") is None and t1 in tab.all()
    tab.unhash(t1)
    assert t1 not in tab.all()


def test_engine_template_walks_older_entries_of_its_key(tagged):
    # Two templates filed under one key: the newer one does not match, the
    # older one does (as the kernel's chain walk finds it).
    tab = ConnTable(hz=250)
    cli, vip = A("198.51.100.2"), A("203.0.113.5")
    old = tab.new(ConnParam(2, 17, cli, 0, vip, 5060, tagged, b"a"), A("172.16.0.2"), 5060, IP_VS_CONN_F_TEMPLATE, None)
    new = tab.new(ConnParam(2, 17, cli, 0, vip, 5061, tagged, b"a"), A("172.16.0.3"), 5061, IP_VS_CONN_F_TEMPLATE, None)
    p = ConnParam(2, 17, cli, 0, vip, 5060, tagged, b"a")
    assert tab.pe_ct_in_get(p) is old
    p.vport = 5061
    assert tab.pe_ct_in_get(p) is new


def test_conn_memory_unchanged_for_plain_connections():
    # pe/pe_data live in PEExt, the ConnExt of engine templates only: neither
    # a connection nor the ConnExt of a controlled/FTP connection grows.
    from ipvs.conn import Connection, ConnExt, PEExt

    assert not {"pe", "pe_data"} & set(Connection.__slots__)
    assert not {"pe", "pe_data"} & set(ConnExt.__slots__)
    assert {"pe", "pe_data"} <= set(PEExt.__slots__)
    tab = ConnTable(hz=250)
    cp = tab.new(ConnParam(2, 17, A("198.51.100.2"), 1, A("203.0.113.5"), 5060), A("172.16.0.2"), 5060, 0, None, fwmark=3)
    assert type(cp.ext) is ConnExt and cp.pe is None and cp.pe_data is None
    cp.pe_data = None  # writing the default keeps the small ext
    assert type(cp.ext) is ConnExt
    # Writing an engine field upgrades the ext and keeps what it held.
    cp.n_control = 2
    cp.pe_data = b"k"
    assert type(cp.ext) is PEExt and (cp.fwmark, cp.n_control, cp.pe_data) == (3, 2, b"k")
