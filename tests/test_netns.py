"""ipvs/netns.py: one instance's state (struct netns_ipvs) and its defaults."""

from ipvs import ctl
from ipvs.ip_vs import Sysctls
from ipvs.netns import HZ, NetnsIPVS
from tests.conftest import A


def test_defaults():
    ipvs = NetnsIPVS()
    assert ipvs.hz == HZ == 250
    assert isinstance(ipvs.sysctl, Sysctls) and ipvs.sysctl.conn_reuse_mode == 1
    assert ipvs.conn_tab.size == 4096 and len(ipvs.conn_tab) == 0
    assert sorted(ipvs.proto_data) == [6, 17]
    assert ipvs.proto_data_get(6).name == "TCP" and ipvs.proto_data_get(132) is None
    assert ipvs.tot_stats in ipvs.est.stats
    assert not ipvs.enable and ipvs.outbox == [] and sum(ipvs.drops.values()) == 0


def test_table_size_follows_the_setting():
    assert NetnsIPVS(sysctl=Sysctls(conn_tab_bits=16)).conn_tab.size == 1 << 16


def test_hz_scales_timeouts():
    ipvs = NetnsIPVS(hz=100)
    assert ipvs.proto_data[6].timeout_table[1] == 900 * 100
    assert ipvs.conn_tab.hz == 100


def test_instances_are_independent():
    a, b = NetnsIPVS(), NetnsIPVS()
    su = ctl.ServiceUser(addr=A("203.0.113.5"), port=80)
    ctl.add_service(a, su)
    assert a.enable and not b.enable
    assert ctl.service_find(b, 2, 6, A("203.0.113.5"), 80) is None
    ctl.set_timeouts(a, 10, 0, 0)
    assert ctl.get_timeouts(b) == (900, 120, 300)
    a.sysctl.set("sloppy_tcp", 1)
    assert b.sysctl.sloppy_tcp == 0
    ctl.add_service(b, su)  # no EEXIST: separate tables
