"""The JIT's warm-up (ipvs/driver/warm.py): its connections go through a
director of its own and leave the real one as it was; the driver runs it
only in turns without frames; on PyPy it leaves nothing for the data path
to compile."""

from __future__ import annotations

import ast
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from ipvs import ctl
from ipvs.driver import afpacket
from ipvs.driver.ring import RingSocket
from ipvs.driver.warm import CLIENT, FRAMES_PER_CONN, MAC_CLIENT, MAC_OUTER, SYN, VIP, MemoryKernel, WarmUp, tcp_frame

from .helpers import Rig

ROOT = Path(__file__).resolve().parents[2]


def _rig():
    """A driver on fake rings with the lab's rules, its neighbours known and one connection open."""
    rig = Rig()
    rig.learn()
    rig.out_ring.take()
    rig.in_ring.take()
    return rig


def _host() -> WarmUp:
    """A driver on memory rings (as one on a NIC is), its neighbours known, its first turn over."""
    host = WarmUp(_rig().drv, budget=0)
    host.drv.on_idle(host.now)
    return host


def _state(rig) -> tuple:
    ipvs = rig.lab.d.ipvs
    return (sorted(ipvs.svc_table), len(ipvs.conn_tab), dict(rig.drv.counts), dict(rig.drv.drops),
            [(d.addr, d.activeconns, d.inactconns, d.stats.conns) for s in ipvs.svc_table.values()
             for d in s.destinations])


def test_the_warm_up_runs_its_connections_apart_and_leaves_the_real_director_as_it_was():
    rig = _rig()
    before = _state(rig)
    warm = WarmUp(rig.drv, budget=30, conns_per_round=16, target=80)
    rounds = 0
    while not warm.step():
        rounds += 1
    assert (rounds + 1, warm.conns, warm.failed) == (5, 80, False)
    assert warm.kernels == {} and warm.drv is None  # dropped when done
    assert _state(rig) == before
    assert rig.out_ring.sent == [] and rig.in_ring.sent == []


def test_each_round_counts_every_frame_its_driver_sent():
    warm = WarmUp(_rig().drv, budget=30)
    sent = warm.sent()
    warm.step()
    assert warm.sent() - sent == FRAMES_PER_CONN * warm.conns_per_round
    assert warm.d.ipvs.conn_tab and not warm.drv.drops
    warm.finish()


def test_a_warm_up_whose_frames_are_lost_stops_with_a_warning(caplog):
    warm = WarmUp(_rig().drv, budget=30)
    # Its service loses its real servers: the SYNs find none to go to.
    svc = next(iter(warm.d.ipvs.svc_table.values()))
    su = ctl.ServiceUser(addr=svc.addr, port=svc.port, sched_name="rr")
    for d in list(svc.destinations):
        ctl.del_dest(warm.d.ipvs, su, d.af, d.addr, d.port)
    with caplog.at_level(logging.WARNING, logger="ipvs.driver"):
        assert warm.step()
    assert warm.failed and warm.kernels == {}
    assert "JIT warm-up stopped" in caplog.text


def test_the_budget_ends_the_warm_up():
    warm = WarmUp(_rig().drv, budget=1e-9)
    assert warm.step() and not warm.failed and warm.conns == warm.conns_per_round


def test_the_driver_runs_the_warm_up_only_in_turns_without_frames():
    host = _host()
    drv = host.drv
    drv.warm = warm = WarmUp(drv, budget=30)
    assert drv.poll_timeout() == 0.0  # the loop does not sleep while it runs
    host.kernels["outer"].fill([tcp_frame(CLIENT, 40000, VIP, 80, SYN, b"", MAC_OUTER, MAC_CLIENT)])
    drv.on_readable(host.outer.ring.fileno(), host.now)
    drv.on_idle(host.now)
    assert warm.conns == 0 and drv.counts["ipvs"] == 1  # a turn with a frame: no round
    drv.on_idle(host.now)
    assert warm.conns == warm.conns_per_round
    warm.target = 2 * warm.conns_per_round  # the next round is the last
    drv.on_idle(host.now)
    assert drv.warm is None and warm.kernels == {}
    assert drv.poll_timeout() > 0
    host.finish()


def test_real_traffic_that_comes_first_ends_the_warm_up(caplog, monkeypatch):
    host = _host()
    drv = host.drv
    monkeypatch.setattr(drv, "WARM_UP_YIELDS_AT", 3)
    drv.warm = warm = WarmUp(drv, budget=30)
    syns = [tcp_frame(CLIENT, 40000 + i, VIP, 80, SYN, b"", MAC_OUTER, MAC_CLIENT) for i in range(3)]
    host.kernels["outer"].fill(syns[:2])
    drv.on_readable(host.outer.ring.fileno(), host.now)
    drv.on_idle(host.now)
    drv.on_idle(host.now)
    assert drv.warm is warm and warm.conns == warm.conns_per_round  # two real frames: it goes on
    host.kernels["outer"].fill(syns[2:])
    drv.on_readable(host.outer.ring.fileno(), host.now)
    with caplog.at_level(logging.INFO, logger="ipvs.driver"):
        drv.on_idle(host.now)
    assert drv.warm is None and warm.kernels == {} and warm.conns == warm.conns_per_round
    assert "(stopped: 3 real frames came meanwhile)" in caplog.text
    host.finish()


def test_a_warm_up_that_raises_is_dropped_and_logged(caplog):
    host = _host()
    drv = host.drv
    drv.warm = warm = WarmUp(drv, budget=30)
    warm._round = lambda: 1 / 0
    with caplog.at_level(logging.ERROR, logger="ipvs.driver"):
        drv.on_idle(host.now)
    assert drv.warm is None and warm.failed and warm.kernels == {}
    assert "JIT warm-up failed" in caplog.text
    host.finish()


@pytest.mark.parametrize("option, runtime, budget", [
    (None, "pypy", afpacket.WARM_UP_PYPY_S), (None, "cpython", 0.0), (0.5, "cpython", 0.0), (0.5, "pypy", 0.5),
    (0, "pypy", 0.0),
    (-1, "pypy", 0.0), (1e9, "pypy", 30.0),
])
def test_the_warm_up_budget(monkeypatch, option, runtime, budget):
    monkeypatch.setattr(afpacket.sys, "implementation", SimpleNamespace(name=runtime))
    assert afpacket.warm_up_budget(option) == budget


@pytest.mark.parametrize("env, args, value", [(None, [], None), ("0.5", [], 0.5), ("0.5", ["--warm-up", "3"], 3.0)])
def test_the_warm_up_option_defaults_to_its_environment_variable(monkeypatch, env, args, value):
    import argparse

    if env is None:
        monkeypatch.delenv("IPVSD_WARM_UP", raising=False)
    else:
        monkeypatch.setenv("IPVSD_WARM_UP", env)
    p = argparse.ArgumentParser()
    afpacket.add_arguments(p)
    assert p.parse_args(args).warm_up == value


_LAYOUT = """
import sys
sys.path.insert(0, sys.argv[1])
from ipvs.driver.ring import RingSocket
from ipvs.driver.warm import MemoryKernel
nic = RingSocket("lo")
mem = MemoryKernel("warm").ring
print(list(vars(nic)) == list(vars(mem)), [type(getattr(nic, a)) is type(getattr(mem, a)) for a in vars(nic)])
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="a packet socket needs root")
def test_a_ring_in_memory_is_laid_out_as_one_on_a_nic():
    """The same attributes in the same order, of the same types (PyPy's
    compiled code checks an instance's layout and its fields' types); on
    the loopback of a network namespace of the test's own."""
    out = subprocess.run(["unshare", "--net", sys.executable, "-c", _LAYOUT, str(ROOT)], capture_output=True,
                         text=True, timeout=60, check=True).stdout.split(" ", 1)
    assert out[0] == "True", out
    assert "False" not in out[1], out


def test_memory_kernel_takes_only_frames_that_fit_a_slot():
    k = MemoryKernel("warm")
    with pytest.raises(ValueError):
        k.fill([bytes(3000)])
    assert isinstance(k.ring, RingSocket)
    k.close()


_COMPILED = """
import sys
sys.path.insert(0, sys.argv[1])
import pypyjit
from ipvs.daemon import tune_jit
from ipvs.driver.warm import WarmUp
tune_jit()
phase, compiled = "warm-up", []
def hook(info):
    code = info.greenkey[0] if info.greenkey else None
    if hasattr(code, "co_filename") and "/ipvs/" in code.co_filename and info.type != "bridge":
        compiled.append((phase, info.type + " " + code.co_filename.rsplit("/ipvs/", 1)[1] + ":" + code.co_name))
pypyjit.set_compile_hook(hook)
# What the warm-up reads of the driver it warms for: ipvsd's defaults.
like = type("Like", (), {"batch": 256, "syn_guard": True, "now": 1000, "outer": type("Port", (), {"ring": None})})
if sys.argv[2] == "warm":
    warm = WarmUp(like, 60)
    while not warm.step():
        pass
phase = "traffic"
traffic = WarmUp(like, 0.5)  # another director and driver: the traffic that comes after
while not traffic.step():
    pass
print(sorted({name for p, name in compiled if p == "traffic"}))
"""


#: What the JIT compiles where each frame's path starts: the ring's
#: receive loop, and the entries of the port's handler, of the plain-IPv4
#: path and of the core.
DATA_PATH = {"loop driver/ring.py:rx", "entry bridge driver/afpacket.py:rx", "entry bridge driver/afpacket.py:ipv4",
             "entry bridge core.py:process"}


@pytest.mark.skipif(sys.implementation.name != "pypy", reason="PyPy's JIT")
def test_after_the_warm_up_another_drivers_traffic_finds_its_data_path_compiled():
    """The point of the warm-up: the code the JIT compiled for its rings
    serves any other driver's.  After it, short connections through a second
    director and driver make the JIT compile none of :data:`DATA_PATH`;
    without it, they compile the entries at least (the probe can tell; the
    loop too on a machine fast enough).  A fresh PyPy each."""
    def compiled(mode: str) -> set[str]:
        out = subprocess.run([sys.executable, "-c", _COMPILED, str(ROOT), mode], capture_output=True, text=True,
                             timeout=300, check=True).stdout.strip().splitlines()[-1]
        return set(ast.literal_eval(out))
    assert compiled("warm").isdisjoint(DATA_PATH)
    assert compiled("cold") >= {x for x in DATA_PATH if x.startswith("entry")}
