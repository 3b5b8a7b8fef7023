"""ipvs/sched/__init__.py's ``ip_vs_scheduler_err`` and the ``net_ratelimit``
it logs through (10 lines per 5 s, then one "callbacks suppressed" line
when the next window opens), on the instance's jiffies."""

from __future__ import annotations

import logging

from ipvs import ctl
from ipvs.netns import NetnsIPVS
from ipvs.sched import RateLimit, scheduler_err


def test_ratelimit_lets_a_burst_through_per_interval(caplog):
    rl = RateLimit("net_ratelimit", 5, 10)
    hz = 250
    assert [rl(1000, hz) for _ in range(12)] == [True] * 10 + [False] * 2
    # Still inside the window (begin + 5 s is not yet passed).
    assert rl(1000 + 5 * hz, hz) is False
    with caplog.at_level(logging.WARNING, logger="ipvs.sched"):
        assert rl(1000 + 5 * hz + 1, hz) is True
    assert [r.getMessage() for r in caplog.records] == ["net_ratelimit: 3 callbacks suppressed"]
    assert (rl.printed, rl.missed) == (1, 0)


def test_scheduler_err_follows_the_instance_clock(caplog, monkeypatch):
    from ipvs import sched

    monkeypatch.setattr(sched, "net_ratelimit", RateLimit("net_ratelimit", 5, 10))
    ipvs = NetnsIPVS()
    su = ctl.ServiceUser(addr=b"\xcb\x00\x71\x05", port=80, sched_name="rr")
    svc = ctl.add_service(ipvs, su)
    with caplog.at_level(logging.INFO, logger="ipvs.sched"):
        ipvs.now = 1000
        for _ in range(25):
            scheduler_err(svc, "no destination available")
        ipvs.now = 1000 + 5 * ipvs.hz + 1
        scheduler_err(svc, "no destination available")
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs.count("rr: TCP 203.0.113.5:80 - no destination available") == 11
    assert "net_ratelimit: 15 callbacks suppressed" in msgs
