"""ipvs/netlink.py: the control schema and dispatch()."""

from __future__ import annotations

import errno
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipvs import netlink
from ipvs.netlink import COMMANDS, SCHEMA_VERSION, LocalTransport, dispatch
from ipvs.netns import NetnsIPVS
from ipvs.uapi import AF_INET, AF_INET6, IP_VS_SVC_F_HASHED, IP_VS_SVC_F_PERSISTENT, IPPROTO_TCP, IPPROTO_UDP
from tests.conftest import estimator_period

SVC = {"af": AF_INET, "protocol": IPPROTO_TCP, "addr": "203.0.113.5", "port": 80}
FULL = {**SVC, "sched_name": "wlc", "flags": {"flags": 0, "mask": 0xFFFFFFFF}, "timeout": 0, "netmask": 0xFFFFFFFF}
DEST = {"addr": "172.16.0.2", "port": 80, "fwd_method": 0, "weight": 1, "u_threshold": 0, "l_threshold": 0}


def req(cmd, **kw):
    return {"version": SCHEMA_VERSION, "cmd": cmd, **kw}


@pytest.fixture
def ipvs():
    return NetnsIPVS()


def ok(ipvs, cmd, **kw):
    reply = dispatch(ipvs, req(cmd, **kw), 0)
    assert reply["ok"], reply
    assert reply["version"] == SCHEMA_VERSION
    return reply


def err(ipvs, cmd, **kw):
    reply = dispatch(ipvs, req(cmd, **kw), 0)
    assert reply["ok"] is False
    assert reply["error"] == errno.errorcode[reply["errno"]]
    return reply["errno"]


def test_service_lifecycle(ipvs):
    ok(ipvs, "NEW_SERVICE", service=FULL)
    assert err(ipvs, "NEW_SERVICE", service=FULL) == errno.EEXIST
    (svc,) = ok(ipvs, "GET_SERVICE")["services"]
    assert svc["addr"] == "203.0.113.5" and svc["port"] == 80 and svc["sched_name"] == "wlc"
    assert svc["flags"] == {"flags": IP_VS_SVC_F_HASHED, "mask": 0xFFFFFFFF}
    assert set(svc["stats"]) == set(netlink.STATS_KEYS) == set(svc["stats64"])
    assert ok(ipvs, "GET_SERVICE", service=SVC)["service"] == svc
    ok(ipvs, "SET_SERVICE", service={**FULL, "sched_name": "rr", "timeout": 300,
                                     "flags": {"flags": IP_VS_SVC_F_PERSISTENT, "mask": IP_VS_SVC_F_PERSISTENT}})
    svc = ok(ipvs, "GET_SERVICE", service=SVC)["service"]
    assert (svc["sched_name"], svc["timeout"]) == ("rr", 300)
    assert svc["flags"]["flags"] == IP_VS_SVC_F_HASHED | IP_VS_SVC_F_PERSISTENT
    ok(ipvs, "DEL_SERVICE", service=SVC)
    assert err(ipvs, "DEL_SERVICE", service=SVC) == errno.ESRCH
    assert err(ipvs, "GET_SERVICE", service=SVC) == errno.ESRCH
    assert err(ipvs, "SET_SERVICE", service=FULL) == errno.ESRCH


def test_flags_mask_keeps_unmasked_bits(ipvs):
    ok(ipvs, "NEW_SERVICE", service={**FULL, "flags": {"flags": IP_VS_SVC_F_PERSISTENT, "mask": 0xFFFFFFFF},
                                     "timeout": 60})
    ok(ipvs, "SET_SERVICE", service={**FULL, "timeout": 60, "flags": {"flags": 0, "mask": 0}})
    flags = ok(ipvs, "GET_SERVICE", service=SVC)["service"]["flags"]["flags"]
    assert flags & IP_VS_SVC_F_PERSISTENT


def test_fwmark_and_ipv6_services(ipvs):
    ok(ipvs, "NEW_SERVICE", service={"af": AF_INET6, "fwmark": 7, "sched_name": "rr", "timeout": 0,
                                     "netmask": 128, "flags": {"flags": 0, "mask": 0}})
    ok(ipvs, "NEW_SERVICE", service={**FULL, "af": AF_INET6, "addr": "2001:db8::1", "netmask": 64})
    services = ok(ipvs, "GET_SERVICE")["services"]
    assert {"fwmark": 7, "af": AF_INET6} == {k: services[-1][k] for k in ("fwmark", "af")}
    assert "addr" not in services[-1]
    assert services[0]["addr"] == "2001:db8::1" and services[0]["netmask"] == 64
    assert err(ipvs, "NEW_SERVICE", service={**FULL, "af": AF_INET6}) == errno.EINVAL  # v4 text, v6 family
    assert err(ipvs, "NEW_SERVICE", service={**FULL, "af": 3}) == errno.EAFNOSUPPORT


def test_dest_lifecycle(ipvs):
    assert err(ipvs, "NEW_DEST", service=SVC, dest=DEST) == errno.ESRCH
    ok(ipvs, "NEW_SERVICE", service=FULL)
    ok(ipvs, "NEW_DEST", service=SVC, dest=DEST)
    assert err(ipvs, "NEW_DEST", service=SVC, dest=DEST) == errno.EEXIST
    ok(ipvs, "NEW_DEST", service=SVC, dest={**DEST, "addr": "172.16.0.3", "port": 8000, "weight": 2})
    dests = ok(ipvs, "GET_DEST", service=SVC)["dests"]
    assert [(d["addr"], d["port"], d["weight"]) for d in dests] == [("172.16.0.3", 8000, 2), ("172.16.0.2", 80, 1)]
    assert dests[0]["addr_family"] == AF_INET and dests[0]["inact_conns"] == 0
    ok(ipvs, "SET_DEST", service=SVC, dest={**DEST, "weight": 5, "fwd_method": 3})
    d = [d for d in ok(ipvs, "GET_DEST", service=SVC)["dests"] if d["port"] == 80][0]
    assert (d["weight"], d["fwd_method"]) == (5, 3)
    assert err(ipvs, "SET_DEST", service=SVC, dest={**DEST, "port": 81}) == errno.ENOENT
    assert err(ipvs, "NEW_DEST", service=SVC, dest={**DEST, "port": 82, "l_threshold": 5}) == errno.ERANGE
    assert err(ipvs, "NEW_DEST", service=SVC, dest={**DEST, "port": 83, "weight": 2**31}) == errno.ERANGE
    assert err(ipvs, "NEW_DEST", service=SVC, dest={**DEST, "addr": "2001:db8::2"}) == errno.EINVAL
    assert err(ipvs, "NEW_DEST", service=SVC, dest={**DEST, "port": 84, "fwd_method": 2, "tun_type": 1}) == errno.EINVAL
    ok(ipvs, "DEL_DEST", service=SVC, dest={"addr": "172.16.0.2", "port": 80})
    assert err(ipvs, "DEL_DEST", service=SVC, dest={"addr": "172.16.0.2", "port": 80}) == errno.ENOENT
    assert err(ipvs, "NEW_DEST", service=SVC, dest={"addr": "172.16.0.9", "port": 80}) == errno.EINVAL  # not full
    # A missing service dumps no destinations, as the kernel's dump does.
    assert ok(ipvs, "GET_DEST", service={**SVC, "port": 9})["dests"] == []


def test_stats_32_bit_view(ipvs):
    ok(ipvs, "NEW_SERVICE", service=FULL)
    svc = next(iter(ipvs.svc_order))
    svc.stats.inpkts = 2**32 + 3
    svc.stats.inbytes = 2**40
    estimator_period(ipvs)
    got = ok(ipvs, "GET_SERVICE", service=SVC)["service"]
    assert got["stats"]["inpkts"] == 3 and got["stats64"]["inpkts"] == 2**32 + 3
    assert got["stats"]["inbytes"] == got["stats64"]["inbytes"] == 2**40


def test_zero_flush_config_info(ipvs):
    ok(ipvs, "NEW_SERVICE", service=FULL)
    svc = next(iter(ipvs.svc_order))
    svc.stats.conns = 9
    estimator_period(ipvs)
    assert ok(ipvs, "GET_SERVICE", service=SVC)["service"]["stats"]["conns"] == 9
    ok(ipvs, "ZERO", service=SVC)
    assert ok(ipvs, "GET_SERVICE", service=SVC)["service"]["stats"]["conns"] == 0
    assert err(ipvs, "ZERO", service={**SVC, "port": 1}) == errno.ESRCH
    ok(ipvs, "ZERO")
    ok(ipvs, "FLUSH")
    assert ok(ipvs, "GET_SERVICE")["services"] == []
    assert {k: v for k, v in ok(ipvs, "GET_CONFIG").items() if k.startswith("timeout")} == {
        "timeout_tcp": 900, "timeout_tcp_fin": 120, "timeout_udp": 300}
    ok(ipvs, "SET_CONFIG", timeout_tcp=100, timeout_udp=0)
    assert ok(ipvs, "GET_CONFIG")["timeout_tcp"] == 100
    assert ok(ipvs, "GET_CONFIG")["timeout_udp"] == 300
    assert ok(ipvs, "GET_INFO")["info"] == {"version": 0x010201, "conn_tab_size": 4096}
    assert err(ipvs, "SET_INFO") == errno.EINVAL


def test_daemons(ipvs):
    daemon = {"state": 1, "mcast_ifn": "eth0", "sync_id": 3}
    ok(ipvs, "NEW_DAEMON", daemon=daemon)
    assert err(ipvs, "NEW_DAEMON", daemon=daemon) == errno.EEXIST
    (d,) = ok(ipvs, "GET_DAEMON")["daemons"]
    assert d == {"state": 1, "mcast_ifn": "eth0", "sync_id": 3, "sync_maxlen": 1472, "mcast_port": 8848,
                 "mcast_ttl": 1, "mcast_group": "224.0.0.81"}
    ok(ipvs, "DEL_DAEMON", daemon={"state": 1})
    assert err(ipvs, "DEL_DAEMON", daemon={"state": 1}) == errno.ESRCH
    assert dispatch(ipvs, req("NEW_DAEMON", daemon=daemon), 0, interfaces=("lo",))["errno"] == errno.ENODEV
    assert err(ipvs, "NEW_DAEMON", daemon={"state": 1}) == errno.EINVAL


def test_sysctls(ipvs):
    every = ok(ipvs, "GET_SYSCTL")["sysctls"]
    assert every["conn_reuse_mode"] == 1 and every["amemthresh"] == 1024
    ok(ipvs, "SET_SYSCTL", name="expire_nodest_conn", value=1)
    assert ok(ipvs, "GET_SYSCTL", name="expire_nodest_conn")["value"] == 1
    assert ipvs.sysctl.expire_nodest_conn == 1
    assert err(ipvs, "SET_SYSCTL", name="expire_nodest_conn", value=7) == errno.EINVAL
    assert err(ipvs, "SET_SYSCTL", name="nosuch", value=1) == errno.ENOENT
    assert err(ipvs, "SET_SYSCTL", name="conn_tab_bits", value=10) == errno.ENOENT  # fixed at start
    assert err(ipvs, "GET_SYSCTL", name="nosuch") == errno.ENOENT
    # lblc's setting exists once the scheduler is loaded (first use, or a write to it).
    assert "lblc_expiration" not in every and err(ipvs, "GET_SYSCTL", name="lblc_expiration") == errno.ENOENT
    ok(ipvs, "NEW_SERVICE", service={**FULL, "sched_name": "lblc"})
    assert "lblc_expiration" in ok(ipvs, "GET_SYSCTL")["sysctls"]
    assert "lblcr_expiration" not in ok(ipvs, "GET_SYSCTL")["sysctls"]
    ok(ipvs, "SET_SYSCTL", name="lblcr_expiration", value=60)
    assert ok(ipvs, "GET_SYSCTL", name="lblcr_expiration")["value"] == 60
    ok(ipvs, "SET_SYSCTL", name="run_estimation", value=0)
    assert ipvs.est.enabled is False


def test_get_proc(ipvs):
    text = ok(ipvs, "GET_PROC", name="ip_vs")["text"]
    assert text.startswith("IP Virtual Server version 1.2.1 (size=4096)\n")
    assert err(ipvs, "GET_PROC", name="passwd") == errno.ENOENT


@pytest.mark.parametrize("bad", [
    None, [], "x", {}, {"cmd": "FLUSH"}, {"version": 2, "cmd": "FLUSH"}, {"version": 1, "cmd": "NOPE"},
    {"version": 1, "cmd": "FLUSH", "bogus": 1}, {"version": True, "cmd": "FLUSH"},
    req("NEW_SERVICE", service={**FULL, "port": 70000}), req("NEW_SERVICE", service={**FULL, "port": "80"}),
    req("NEW_SERVICE", service={**FULL, "addr": "300.1.1.1"}), req("NEW_SERVICE", service={**FULL, "x": 1}),
    req("NEW_SERVICE", service={**FULL, "sched_name": "a" * 16}), req("NEW_SERVICE", service=SVC),
    req("NEW_SERVICE", service={**FULL, "flags": {"flags": 1}}), req("NEW_SERVICE", service={**FULL, "stats": {}}),
    req("NEW_SERVICE", service={"af": AF_INET, "port": 80}), req("SET_CONFIG", timeout_tcp=-1),
    req("GET_SERVICE", service=[]), req("NEW_SERVICE", service={**FULL, "af": 1 << 16}),
])
def test_bad_requests_get_error_replies(ipvs, bad):
    reply = dispatch(ipvs, bad, 0)
    assert reply["ok"] is False and reply["errno"] in (errno.EINVAL, errno.EPROTONOSUPPORT, errno.EOPNOTSUPP)
    json.dumps(reply)


def test_seq_is_echoed(ipvs):
    assert dispatch(ipvs, req("GET_INFO", seq=41), 0)["seq"] == 41
    assert dispatch(ipvs, req("NOPE", seq=42), 0)["seq"] == 42


def test_replies_are_json(ipvs):
    t = LocalTransport(ipvs)
    t.call(req("NEW_SERVICE", service=FULL))
    t.call(req("NEW_DEST", service=SVC, dest=DEST))
    for cmd in ("GET_SERVICE", "GET_DEST", "GET_CONFIG", "GET_INFO", "GET_DAEMON", "GET_SYSCTL"):
        reply = t.call(req(cmd, service=SVC) if cmd == "GET_DEST" else req(cmd))
        assert reply["ok"]
        assert json.loads(json.dumps(reply)) == reply


def test_internal_errors_become_eio(ipvs, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("bug")

    monkeypatch.setitem(netlink._HANDLERS, "FLUSH", boom)
    reply = dispatch(ipvs, req("FLUSH"), 0)
    assert reply["errno"] == errno.EIO and "bug" in reply["message"]


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=20)
    | st.sampled_from(["203.0.113.5", "2001:db8::1", "wlc", "rr", "eth0", "ip_vs"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)
_service = st.fixed_dictionaries({}, optional={
    "af": st.sampled_from([AF_INET, AF_INET6, 0, 99]), "protocol": st.sampled_from([IPPROTO_TCP, IPPROTO_UDP, 0]),
    "addr": st.sampled_from(["203.0.113.5", "2001:db8::1", "0.0.0.0", "x"]), "port": st.integers(-1, 70000),
    "fwmark": st.integers(0, 2**32), "sched_name": st.sampled_from(["wlc", "rr", "sh", "mh", "nosuch", ""]),
    "flags": st.fixed_dictionaries({"flags": st.integers(0, 255), "mask": st.integers(0, 2**32 - 1)}),
    "timeout": st.integers(0, 2**32 - 1), "netmask": st.integers(0, 2**32 - 1), "pe_name": st.just("sip"),
})
_dest = st.fixed_dictionaries({}, optional={
    "addr": st.sampled_from(["172.16.0.2", "2001:db8::2", "224.0.0.1", "255.255.255.255"]),
    "port": st.integers(0, 65535), "addr_family": st.sampled_from([0, AF_INET, AF_INET6, 7]),
    "fwd_method": st.integers(0, 8), "weight": st.integers(0, 2**32 - 1), "u_threshold": st.integers(0, 2**32 - 1),
    "l_threshold": st.integers(0, 2**32 - 1), "tun_type": st.integers(0, 3), "tun_port": st.integers(0, 65535),
    "tun_flags": st.integers(0, 3),
})
_request = st.fixed_dictionaries(
    {"version": st.just(SCHEMA_VERSION), "cmd": st.sampled_from(COMMANDS)},
    optional={"service": _service, "dest": _dest, "name": st.sampled_from(["ip_vs", "ip_vs_conn", "secure_tcp",
                                                                            "amemthresh", "nope"]),
              "value": st.integers(-5, 5000), "timeout_tcp": st.integers(0, 2**32 - 1),
              "daemon": st.fixed_dictionaries({"state": st.integers(0, 3), "mcast_ifn": st.just("eth0"),
                                               "sync_id": st.integers(0, 300)})},
)


@settings(max_examples=200, deadline=None)
@given(st.one_of(_json, _request, st.dictionaries(st.sampled_from(list(netlink._REQUEST_FIELDS)), _json)))
def test_dispatch_never_raises(request):
    ipvs = NetnsIPVS()
    reply = dispatch(ipvs, request, 0)
    assert reply["version"] == SCHEMA_VERSION and isinstance(reply["ok"], bool)
    if not reply["ok"]:
        assert reply["errno"] != errno.EIO, reply  # bad input is an error reply, never an internal failure
    json.dumps(reply)


@settings(max_examples=50, deadline=None)
@given(st.lists(_request, min_size=1, max_size=12))
def test_dispatch_sequences_keep_state_consistent(requests):
    ipvs = NetnsIPVS()
    for r in requests:
        reply = dispatch(ipvs, r, 0)
        assert reply["ok"] or reply["errno"] != errno.EIO, reply
    listed = dispatch(ipvs, req("GET_SERVICE"), 0)["services"]
    assert len(listed) == len(ipvs.svc_order)


# --------------------------------------------------------------------------
# PyIPVS extensions for bulk work: BATCH, "stats": false, GET_INFO extensions


def test_get_info_announces_the_extensions(ipvs):
    assert set(ok(ipvs, "GET_INFO")["extensions"]) >= {"BATCH", "stats"}


def test_batch_runs_each_request_in_order_with_its_own_reply(ipvs):
    reqs = [req("NEW_SERVICE", service=FULL), req("NEW_SERVICE", service=FULL, seq=5),
            req("NEW_DEST", service=SVC, dest=DEST), req("GET_DEST", service=SVC), "junk",
            req("BATCH", requests=[], seq=9), req("NOPE")]
    replies = ok(ipvs, "BATCH", requests=reqs)["replies"]
    assert [r["ok"] for r in replies] == [True, False, True, True, False, False, False]
    assert replies[1]["errno"] == errno.EEXIST and replies[1]["seq"] == 5
    assert replies[3]["dests"][0]["addr"] == "172.16.0.2"
    assert replies[4]["errno"] == errno.EINVAL
    assert replies[5]["errno"] == errno.EINVAL and replies[5]["seq"] == 9  # no batch in a batch
    assert replies[6]["errno"] == errno.EOPNOTSUPP
    json.dumps(replies)


@pytest.mark.parametrize("bad", [None, "x", {"a": 1}, list(range(netlink.MAX_BATCH + 1))])
def test_batch_needs_a_list_of_requests(ipvs, bad):
    assert err(ipvs, "BATCH", requests=bad) == errno.EINVAL
    assert err(ipvs, "BATCH") == errno.EINVAL


def test_stats_false_leaves_the_counters_out(ipvs):
    ok(ipvs, "NEW_SERVICE", service=FULL)
    ok(ipvs, "NEW_DEST", service=SVC, dest=DEST)
    full = ok(ipvs, "GET_SERVICE")["services"][0]
    lean = ok(ipvs, "GET_SERVICE", stats=False)["services"][0]
    assert "stats" in full and "stats64" in full
    assert lean == {k: v for k, v in full.items() if k not in ("stats", "stats64")}
    assert "stats64" not in ok(ipvs, "GET_SERVICE", service=SVC, stats=False)["service"]
    d_full = ok(ipvs, "GET_DEST", service=SVC)["dests"][0]
    d_lean = ok(ipvs, "GET_DEST", service=SVC, stats=False)["dests"][0]
    assert d_lean == {k: v for k, v in d_full.items() if k not in ("stats", "stats64")}
    assert err(ipvs, "GET_DEST", service=SVC, stats=1) == errno.EINVAL


@settings(max_examples=150, deadline=None)
@given(st.one_of(_request, st.dictionaries(st.sampled_from(list(netlink._REQUEST_FIELDS)), _json),
                 st.builds(lambda r: {**r, "service": {**SVC, "port": True}}, _request)))
def test_compiled_checks_answer_as_the_generic_ones(request):
    """The per-shape compiled validators never change a reply."""
    fast = dispatch(NetnsIPVS(), request, 0)
    original = netlink._fast_valid
    netlink._fast_valid = lambda fields, d, required=(): False
    try:
        generic = dispatch(NetnsIPVS(), request, 0)
    finally:
        netlink._fast_valid = original
    assert fast == generic


def test_mixed_family_destinations(ipvs):
    """ip_vs_genl_set_cmd: a destination of the other family only with
    tunnelling, and never while a sync daemon runs (its protocol has one
    family per connection), nor does a daemon start while one exists;
    deleting one is always allowed."""
    svc6 = {**FULL, "af": AF_INET6, "addr": "2001:db8:5::5", "netmask": 128}
    key6 = {k: svc6[k] for k in SVC}
    ok(ipvs, "NEW_SERVICE", service=svc6)
    v4 = {**DEST, "addr_family": AF_INET, "addr": "172.16.0.2"}
    assert err(ipvs, "NEW_DEST", service=key6, dest=v4) == errno.EINVAL  # masq
    assert err(ipvs, "NEW_DEST", service=key6, dest={**v4, "fwd_method": 3}) == errno.EINVAL  # route
    ok(ipvs, "NEW_DEST", service=key6, dest={**v4, "fwd_method": 2})
    ok(ipvs, "NEW_DEST", service=key6, dest={**DEST, "addr": "2001:db8:2::2"})
    (d4,) = [d for d in ok(ipvs, "GET_DEST", service=key6)["dests"] if d["addr_family"] == AF_INET]
    assert (d4["addr"], d4["fwd_method"]) == ("172.16.0.2", 2)
    # ip_vs_genl_new_daemon: no sync daemon while a mixed-family destination exists.
    daemon = {"state": 1, "mcast_ifn": "eth0", "sync_id": 3}
    assert err(ipvs, "NEW_DAEMON", daemon=daemon) == errno.EINVAL
    ok(ipvs, "DEL_DEST", service=key6, dest={"addr_family": AF_INET, "addr": "172.16.0.2", "port": 80})
    ok(ipvs, "NEW_DAEMON", daemon=daemon)
    assert err(ipvs, "NEW_DEST", service=key6, dest={**v4, "fwd_method": 2}) == errno.EINVAL
    assert err(ipvs, "SET_DEST", service=key6, dest={**v4, "fwd_method": 2, "weight": 3}) == errno.EINVAL
    ok(ipvs, "SET_DEST", service=key6, dest={**DEST, "addr": "2001:db8:2::2", "weight": 3})
    # Deleting is never refused for the family (none is left here: not found).
    assert err(ipvs, "DEL_DEST", service=key6, dest={"addr_family": AF_INET, "addr": "172.16.0.2",
                                                      "port": 80}) == errno.ENOENT


def test_get_counters_shows_the_cores_drops_and_defenses_while_running():
    """GET_COUNTERS (issue 13): the core's drops by reason and the defenses' state, as the core left them."""
    from ipvs.core import NF_DROP
    from ipvs.packet import Drop
    from tests.conftest import HZ
    from tests.core.test_core import web
    from tests.core.test_defense import flood

    lab = web(drop_packet=1)
    c = ok(lab.ipvs, "GET_COUNTERS")["counters"]
    assert {f"drop_{r.name.lower()}" for r in Drop} <= set(c)
    assert (c["drop_defense"], c["conn_count"], c["defense_availmem"], c["defense_drop_rate"]) == (0, 0, -1, 0)
    lab.ipvs.availmem = 768  # 1024 - 768: drop_packet drops one new connection in 4
    lab.tick(lab.now + HZ)
    verdicts = flood(lab, 8)
    c = ok(lab.ipvs, "GET_COUNTERS")["counters"]
    assert c["drop_defense"] == verdicts.count(NF_DROP) == 2
    assert (c["conn_count"], c["defense_availmem"], c["defense_amemthresh"], c["defense_drop_rate"]) == (6, 768, 1024, 4)
    assert c["conn_max"] == lab.ipvs.conn_tab.max_conns and c["defense_dropentry"] == 0
