"""ipvs/ctl.py: the control plane's errno results and ipvsadm-visible
quirks (ip_vs_ctl.c): dest order, the dest trash, scheduler swap, flush,
zero, timeouts, the settings, the service lookup fallbacks and the
/proc walk order."""

import errno

import pytest

from ipvs import ctl, ip_vs, uapi
from ipvs.conn import ConnTable
from ipvs.ip_vs import ConnParam
from ipvs.netns import NetnsIPVS
from ipvs.uapi import (
    IP_VS_CONN_F_DROUTE,
    IP_VS_CONN_F_INACTIVE,
    IP_VS_CONN_F_MASQ,
    IP_VS_CONN_F_NOOUTPUT,
    IP_VS_DEST_F_AVAILABLE,
    IP_VS_DEST_F_OVERLOAD,
)
from tests.conftest import HZ, A, estimator_period

VIP = A("203.0.113.5")


def su(port=80, proto=6, sched="wlc", fwmark=0, addr=VIP, **kw):
    return ctl.ServiceUser(addr=b"\0\0\0\0" if fwmark else addr, port=0 if fwmark else port, protocol=proto,
                           sched_name=sched, fwmark=fwmark, **kw)


def du(n=2, port=80, weight=1, fwd=IP_VS_CONN_F_MASQ, **kw):
    return ctl.DestUser(addr=A(f"172.16.0.{n}"), port=port, weight=weight, conn_flags=fwd, **kw)


def err(fn, *args):
    with pytest.raises(ctl.IPVSError) as e:
        fn(*args)
    return e.value.errno


@pytest.fixture
def ipvs():
    return NetnsIPVS()


# ---------------------------------------------------------------- errnos


def test_service_errnos(ipvs):
    ctl.add_service(ipvs, su())
    assert err(ctl.add_service, ipvs, su()) == errno.EEXIST
    assert err(ctl.add_service, ipvs, su(port=81, sched="nosuch")) == errno.ENOENT
    assert err(ctl.add_service, ipvs, su(port=81, proto=47)) == errno.EFAULT
    assert err(ctl.edit_service, ipvs, su(port=81)) == errno.ESRCH
    assert err(ctl.edit_service, ipvs, su(sched="nosuch")) == errno.ENOENT
    assert err(ctl.del_service, ipvs, su(port=81)) == errno.ESRCH
    assert err(ctl.zero, ipvs, su(port=81)) == errno.ESRCH
    ctl.del_service(ipvs, su())
    assert err(ctl.del_service, ipvs, su()) == errno.ESRCH


def test_dest_errnos(ipvs):
    assert err(ctl.add_dest, ipvs, su(), du()) == errno.ESRCH
    ctl.add_service(ipvs, su())
    ctl.add_dest(ipvs, su(), du())
    assert err(ctl.add_dest, ipvs, su(), du()) == errno.EEXIST
    assert err(ctl.add_dest, ipvs, su(), du(3, weight=-1)) == errno.ERANGE
    assert err(ctl.add_dest, ipvs, su(), du(3, u_threshold=5, l_threshold=6)) == errno.ERANGE
    # The kernel's check includes u = 0 with l > 0.
    assert err(ctl.add_dest, ipvs, su(), du(3, u_threshold=0, l_threshold=1)) == errno.ERANGE
    assert err(ctl.edit_dest, ipvs, su(), du(3)) == errno.ENOENT
    assert err(ctl.edit_dest, ipvs, su(port=81), du()) == errno.ESRCH
    assert err(ctl.edit_dest, ipvs, su(), du(weight=-1)) == errno.ERANGE
    assert err(ctl.del_dest, ipvs, su(), 2, A("172.16.0.3"), 80) == errno.ENOENT
    assert err(ctl.del_dest, ipvs, su(port=81), 2, A("172.16.0.2"), 80) == errno.ESRCH
    bad = ctl.DestUser(addr=A("224.0.0.1"), port=80, conn_flags=IP_VS_CONN_F_MASQ)
    assert err(ctl.add_dest, ipvs, su(), bad) == errno.EINVAL


def test_timeouts_and_their_errno(ipvs):
    assert ctl.get_timeouts(ipvs) == (900, 120, 300)
    ctl.set_timeouts(ipvs, 0, 30, 0)  # 0 leaves a value unchanged
    assert ctl.get_timeouts(ipvs) == (900, 30, 300)
    ctl.set_timeouts(ipvs, 1000, 0, 5)
    assert ctl.get_timeouts(ipvs) == (1000, 30, 5)
    assert ipvs.proto_data[6].timeout_table[1] == 1000 * HZ  # ESTABLISHED, in jiffies
    assert ipvs.proto_data[6].timeout_table[4] == 30 * HZ  # FIN_WAIT only
    assert ipvs.proto_data[6].timeout_table[5] == 120 * HZ  # TIME_WAIT untouched
    assert err(ctl.set_timeouts, ipvs, -1, 0, 0) == errno.EINVAL
    assert ctl.get_timeouts(ipvs) == (1000, 30, 5)


# ------------------------------------------------------------ destinations


def test_new_dests_go_to_the_head(ipvs):
    ctl.add_service(ipvs, su())
    for n in (2, 3, 4):
        ctl.add_dest(ipvs, su(), du(n))
    svc = ctl.service_find(ipvs, 2, 6, VIP, 80)
    assert [d.addr[3] for d in svc.destinations] == [4, 3, 2]
    assert svc.num_dests == 3


def test_dest_conn_flags(ipvs):
    ctl.add_service(ipvs, su())
    m = ctl.add_dest(ipvs, su(), du(2))
    r = ctl.add_dest(ipvs, su(), du(3, fwd=IP_VS_CONN_F_DROUTE))
    assert m.conn_flags == IP_VS_CONN_F_MASQ | IP_VS_CONN_F_INACTIVE
    assert r.conn_flags == IP_VS_CONN_F_DROUTE | IP_VS_CONN_F_INACTIVE | IP_VS_CONN_F_NOOUTPUT
    # Only MASQ real servers are known to ip_vs_out / nat_icmp_send.
    assert ctl.has_real_service(ipvs, 2, 6, m.addr, 80)
    assert not ctl.has_real_service(ipvs, 2, 6, r.addr, 80)
    assert not ctl.has_real_service(ipvs, 2, 17, m.addr, 80)
    ctl.del_dest(ipvs, su(), 2, m.addr, 80)
    assert not ctl.has_real_service(ipvs, 2, 6, m.addr, 80)


def test_fwmark_real_server_is_known_for_any_protocol(ipvs):
    # ip_vs_has_real_service: "dest->protocol == protocol || dest->vfwmark".
    ctl.add_service(ipvs, su(fwmark=7))
    d = ctl.add_dest(ipvs, su(fwmark=7), du(5))
    assert ctl.has_real_service(ipvs, 2, 6, d.addr, 80)
    assert ctl.has_real_service(ipvs, 2, 17, d.addr, 80)
    assert not ctl.has_real_service(ipvs, 2, 17, d.addr, 81)


def test_trash_revival_keeps_stats_and_counters(ipvs):
    ctl.add_service(ipvs, su())
    d = ctl.add_dest(ipvs, su(), du(2))
    ctl.add_dest(ipvs, su(), du(3))
    tab = ConnTable(HZ)
    cp = tab.new(ConnParam(2, 6, A("198.51.100.2"), 1000, VIP, 80), d.addr, 80, 0, d)
    d.stats.inpkts, d.stats.conns = 7, 1
    ctl.del_dest(ipvs, su(), 2, d.addr, 80)
    svc = ctl.service_find(ipvs, 2, 6, VIP, 80)
    assert d not in svc.destinations and not d.flags & IP_VS_DEST_F_AVAILABLE
    again = ctl.add_dest(ipvs, su(), du(2, weight=5))
    assert again is d
    assert d.flags & IP_VS_DEST_F_AVAILABLE
    assert (d.stats.inpkts, d.stats.conns, d.inactconns) == (7, 1, 1)
    assert d.weight == 5
    assert svc.destinations[0] is d  # revived at the head like a new one
    tab.release(cp)
    assert d.inactconns == 0


def test_trash_is_per_service(ipvs):
    ctl.add_service(ipvs, su())
    ctl.add_service(ipvs, su(port=8080))
    d = ctl.add_dest(ipvs, su(), du(2))
    ctl.del_dest(ipvs, su(), 2, d.addr, 80)
    other = ctl.add_dest(ipvs, su(port=8080), du(2))
    assert other is not d


def test_trash_expiry_waits_for_refs_and_idle_period(ipvs):
    """ip_vs_dest_trash_expire: referenced dests stay; an unreferenced one is
    stamped idle at a run and freed at a run >= 120 s after the stamp."""
    ctl.add_service(ipvs, su())
    d = ctl.add_dest(ipvs, su(), du(2))
    d.refcnt = 1  # a connection still points at it
    ipvs.now = 0
    ctl.del_dest(ipvs, su(), 2, d.addr, 80)
    assert ipvs.dest_trash_timer == 60 * HZ  # armed by the first trashed dest
    ctl.dest_trash_expire(ipvs, 1000 * HZ)
    assert d in ipvs.dest_trash.values() and d.idle_start == 0
    d.refcnt = 0
    ctl.dest_trash_expire(ipvs, 1060 * HZ)  # stamps idle_start
    assert d in ipvs.dest_trash.values() and d.idle_start == 1060 * HZ
    ctl.dest_trash_expire(ipvs, 1060 * HZ + 119 * HZ)
    assert d in ipvs.dest_trash.values()
    ctl.dest_trash_expire(ipvs, 1060 * HZ + 120 * HZ)
    assert d not in ipvs.dest_trash.values()
    assert ipvs.dest_trash_timer is None  # nothing left: the timer stops
    assert ctl.add_dest(ipvs, su(), du(2)) is not d


def test_edit_dest_thresholds_and_overload(ipvs):
    """New thresholds re-check the flag against the connections held, as
    the kernel did in tests/kernel/goldens/thresholds_edit (port: case)."""
    ctl.add_service(ipvs, su())
    d = ctl.add_dest(ipvs, su(), du(2, u_threshold=1))

    def edit(conns, u, l=0, overloaded=True):
        d.activeconns, d.inactconns = conns, 0
        d.flags = (d.flags | IP_VS_DEST_F_OVERLOAD) if overloaded else (d.flags & ~IP_VS_DEST_F_OVERLOAD)
        ctl.edit_dest(ipvs, su(), du(2, u_threshold=u, l_threshold=l))
        return bool(d.flags & IP_VS_DEST_F_OVERLOAD)

    assert edit(1, 3, 1)                      # 81: raised, conns between -y and -x: still overloaded
    assert not edit(1, 4, 2)                  # 82: raised, conns below -y: lifted
    assert not edit(2, 3)                     # 83: raised without -y, conns below 3/4 of -x
    assert edit(3, 4)                         # raised without -y, conns at 3/4 of -x: kept
    assert edit(3, 2, overloaded=False)       # 85: set below the conns: overloaded at once
    assert not edit(2, 3, 1, overloaded=False)  # 86: conns between: not overloaded either
    assert not edit(1, 0)                     # 87: -x 0 lifts it
    assert edit(3, 2)                         # 88: lowered, conns above
    d.u_threshold, d.l_threshold = 2, 1
    assert edit(2, 2, 1)                      # 89: the same thresholds leave the flag alone
    assert not edit(0, 2, 1, overloaded=False)


def test_last_weight_keeps_the_latest_non_zero(ipvs):
    ctl.add_service(ipvs, su())
    d = ctl.add_dest(ipvs, su(), du(2, weight=3))
    ctl.edit_dest(ipvs, su(), du(2, weight=0))
    assert (d.weight, d.last_weight) == (0, 3)
    ctl.edit_dest(ipvs, su(), du(2, weight=4))
    assert d.last_weight == 4


# ---------------------------------------------------------------- services


def test_edit_service_swaps_the_scheduler_only_when_named_differently(ipvs):
    svc = ctl.add_service(ipvs, su(sched="rr"))
    for n in (2, 3):
        ctl.add_dest(ipvs, su(), du(n))
    first = svc.scheduler
    ctl.edit_service(ipvs, su(sched="rr"))
    assert svc.scheduler is first
    ctl.edit_service(ipvs, su(sched="wrr"))
    assert svc.scheduler is not first and svc.scheduler.name == "wrr"
    from ipvs.sched import IPHdr

    iph = IPHdr(2, 6, A("198.51.100.2"), VIP, 1000, 80)
    assert svc.scheduler.schedule(iph, 0) in svc.destinations


def test_edit_service_takes_every_field_from_user_space(ipvs):
    svc = ctl.add_service(ipvs, su(flags=uapi.IP_VS_SVC_F_PERSISTENT, timeout=300, netmask=0xFFFFFF00))
    assert svc.timeout == 300 * HZ
    ctl.edit_service(ipvs, su())
    # ipvsadm -E without -p: persistence is gone, timeout and netmask reset.
    assert not svc.flags & uapi.IP_VS_SVC_F_PERSISTENT
    assert svc.flags & uapi.IP_VS_SVC_F_HASHED
    assert svc.timeout == 0 and svc.netmask == 0xFFFFFFFF


def test_counters_of_special_services(ipvs):
    ctl.add_service(ipvs, su(port=21))
    ctl.add_service(ipvs, su(port=0))
    ctl.add_service(ipvs, su(fwmark=21))
    assert (ipvs.ftpsvc_counter, ipvs.nullsvc_counter) == (1, 1)
    ctl.del_service(ipvs, su(port=21))
    ctl.del_service(ipvs, su(port=0))
    assert (ipvs.ftpsvc_counter, ipvs.nullsvc_counter) == (0, 0)


def test_flush_removes_everything_and_trashes_dests(ipvs):
    for p in (80, 443):
        ctl.add_service(ipvs, su(port=p))
        ctl.add_dest(ipvs, su(port=p), du(2, port=p))
    ctl.add_service(ipvs, su(fwmark=7))
    ctl.flush(ipvs)
    assert ipvs.svc_table == {} and ipvs.fwm_table == {} and list(ipvs.svc_order) == []
    assert len(ipvs.dest_trash) == 2
    assert all(not d.flags & IP_VS_DEST_F_AVAILABLE for d in ipvs.dest_trash.values())
    assert ipvs.rs_table == {}
    ctl.add_service(ipvs, su())  # and the names are free again


def test_service_lookup_fallbacks(ipvs):
    web = ctl.add_service(ipvs, su())
    assert ctl.service_get(ipvs, 2, 0, 6, VIP, 80) is web
    assert ctl.service_get(ipvs, 2, 0, 6, VIP, 2000) is None
    ftp = ctl.add_service(ipvs, su(port=21))
    for port, want in ((20, ftp), (1024, ftp), (2000, ftp), (1023, None), (443, None)):
        assert ctl.service_get(ipvs, 2, 0, 6, VIP, port) is want, port
    assert ctl.service_get(ipvs, 2, 0, 17, VIP, 2000) is None  # FTP data is TCP only
    zero = ctl.add_service(ipvs, su(port=0, proto=17))
    assert ctl.service_get(ipvs, 2, 0, 17, VIP, 9999) is zero
    assert ctl.service_get(ipvs, 2, 0, 6, VIP, 80) is web  # exact beats port zero
    fwm = ctl.add_service(ipvs, su(fwmark=5))
    assert ctl.service_get(ipvs, 2, 5, 6, VIP, 80) is fwm  # fwmark first
    assert ctl.service_get(ipvs, 2, 6, 6, VIP, 80) is web


def _bucket(proto, addr, port):
    # The kernel's ip_vs_svc_hashkey with the netns term taken as 0.
    a = int.from_bytes(addr, "big")
    return (proto ^ a ^ (port >> 8) ^ port) & 255


def test_services_sorted_by_bucket(ipvs):
    specs = [(6, A("203.0.113.5"), 80), (17, A("203.0.113.5"), 53), (6, A("203.0.113.9"), 0),
             (6, A("203.0.113.9"), 257), (6, A("203.0.113.9"), 514), (6, A("203.0.113.200"), 443)]
    for proto, addr, port in specs:
        ctl.add_service(ipvs, su(port=port, proto=proto, addr=addr))
    ctl.add_service(ipvs, su(fwmark=300))
    ctl.add_service(ipvs, su(fwmark=2))
    got = ctl.services_sorted_by_bucket(ipvs)
    normal = [(s.protocol, s.addr, s.port) for s in got if not s.fwmark]
    seq = {spec: i for i, spec in enumerate(specs)}
    # By bucket, and inside a bucket the most recently added first.
    assert normal == sorted(specs, key=lambda s: (_bucket(*s), -seq[s]))
    assert len({_bucket(*s) for s in specs[2:5]}) == 1  # three share a bucket
    assert [s.fwmark for s in got if s.fwmark] == [2, 300]  # 300 & 255 = 44


# -------------------------------------------------------------- zero, sysctls


def test_zero_one_service_or_everything(ipvs):
    a = ctl.add_service(ipvs, su())
    b = ctl.add_service(ipvs, su(port=81))
    da = ctl.add_dest(ipvs, su(), du(2))
    db = ctl.add_dest(ipvs, su(port=81), du(3))
    for st in (da.stats, db.stats):
        st.conns, st.inpkts, st.outpkts, st.inbytes, st.outbytes = 1, 2, 3, 4, 5
    estimator_period(ipvs)
    assert ipvs.tot_stats.counters() == (2, 4, 6, 8, 10)
    ctl.zero(ipvs, su())
    assert a.stats.counters() == da.stats.counters() == (0, 0, 0, 0, 0)
    assert a.stats.rates() == da.stats.rates() == (0, 0, 0, 0, 0)
    assert a.stats.raw() == (1, 2, 3, 4, 5)  # the per-CPU view keeps counting from creation
    assert b.stats.counters() == db.stats.counters() == (1, 2, 3, 4, 5)
    assert b.stats.rates() != (0, 0, 0, 0, 0)
    assert ipvs.tot_stats.counters() == (2, 4, 6, 8, 10)
    da.stats.conns += 1
    estimator_period(ipvs)
    assert a.stats.counters()[0] == da.stats.counters()[0] == 1
    ctl.zero(ipvs)
    assert b.stats.counters() == ipvs.tot_stats.counters() == (0, 0, 0, 0, 0)


def test_sysctls_defaults_and_validation():
    s = ip_vs.Sysctls()
    assert (s.conn_reuse_mode, s.expire_nodest_conn, s.sloppy_tcp, s.snat_reroute, s.am_droprate,
            s.amemthresh, s.secure_tcp) == (1, 0, 0, 1, 10, 1024, 0)
    s.set("sloppy_tcp", 1)
    assert s.sloppy_tcp == 1
    for name, bad in (("sloppy_tcp", 2), ("secure_tcp", 4), ("drop_packet", -1), ("expire_nodest_conn", "1"),
                      ("nat_icmp_send", True)):
        with pytest.raises(ctl.IPVSError) as e:
            s.set(name, bad)
        assert e.value.errno == errno.EINVAL
    for name in ("nosuch", "conn_tab_bits"):
        with pytest.raises(ctl.IPVSError) as e:
            s.set(name, 1)
        assert e.value.errno == errno.ENOENT
    assert s.sloppy_tcp == 1


def test_format_and_parse_addresses():
    assert ip_vs.parse_addr(2, "203.0.113.5") == VIP
    assert ip_vs.format_addr(10, ip_vs.parse_addr(10, "2001:db8:0:0::1")) == "2001:db8::1"
    with pytest.raises(ValueError):
        ip_vs.parse_addr(2, "2001:db8::1")


def test_gue_tunnel_needs_a_port(ipvs):
    """ip_vs_add_dest / ip_vs_edit_dest (5.3+): a GUE tunnel with port 0
    is EINVAL, checked before the duplicate lookup."""
    ctl.add_service(ipvs, su())
    gue = dict(fwd=uapi.IP_VS_CONN_F_TUNNEL, tun_type=uapi.IP_VS_CONN_F_TUNNEL_TYPE_GUE)
    assert err(ctl.add_dest, ipvs, su(), du(2, tun_port=0, **gue)) == errno.EINVAL
    d = ctl.add_dest(ipvs, su(), du(2, tun_port=6080, **gue))
    assert d.tun_port == 6080
    assert err(ctl.add_dest, ipvs, su(), du(2, tun_port=0, **gue)) == errno.EINVAL
    assert err(ctl.edit_dest, ipvs, su(), du(2, tun_port=0, **gue)) == errno.EINVAL


def test_ipv6_real_servers_must_be_unicast_and_not_link_local(ipvs):
    """ip_vs_new_dest for AF_INET6: ipv6_addr_type must say unicast and not
    link-local (multicast, ::, fe80::/10 refused); a v4 real server under
    a v6 service only with tunnelling (ip_vs_genl_set_cmd)."""
    s6 = ctl.ServiceUser(af=10, protocol=6, addr=A("2001:db8:5::5"), port=80, sched_name="rr", netmask=128)
    ctl.add_service(ipvs, s6)
    for text in ("ff02::1", "::", "fe80::1", "febf::1"):
        bad = ctl.DestUser(af=10, addr=A(text), port=80, conn_flags=IP_VS_CONN_F_MASQ)
        assert err(ctl.add_dest, ipvs, s6, bad) == errno.EINVAL, text
    for text in ("2001:db8:2::2", "fec0::1", "::1"):
        ctl.add_dest(ipvs, s6, ctl.DestUser(af=10, addr=A(text), port=80, conn_flags=IP_VS_CONN_F_MASQ))
    v4 = ctl.DestUser(af=2, addr=A("172.16.0.2"), port=80, conn_flags=IP_VS_CONN_F_MASQ)
    assert err(ctl.add_dest, ipvs, s6, v4) == errno.EINVAL
    ctl.add_dest(ipvs, s6, ctl.DestUser(af=2, addr=A("172.16.0.2"), port=80, conn_flags=uapi.IP_VS_CONN_F_TUNNEL))
    newest = ipvs.svc_table[ip_vs.svc_key(6, A("2001:db8:5::5"), 80)].destinations[0]
    assert (newest.af, newest.addr) == (2, A("172.16.0.2"))
