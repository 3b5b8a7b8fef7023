"""The lab's process helpers (ipvs_harness/lab.py): when a process counts
as ended, and waiting for an ipvsd to answer, without a lab."""

from __future__ import annotations

import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from ipvs_harness import lab


@pytest.fixture
def child():
    """A child that sleeps until the test kills it; killed and reaped at the end."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield p
    p.kill()
    p.wait(10)


def _exit_unreaped(p: subprocess.Popen) -> None:
    """Kill ``p`` and wait for it to exit, leaving its zombie unreaped."""
    p.kill()
    deadline = time.monotonic() + 10
    # (os.waitid's WNOWAIT would say it, but PyPy 3.9 has no os.waitid.)
    while _state(p.pid) != "Z":
        assert time.monotonic() < deadline, f"{p.pid} did not exit"
        time.sleep(0.01)


def _state(pid: int) -> str:
    """The process's state letter in /proc (Z: a zombie)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]


def test_an_exited_child_is_gone_although_its_zombie_answers_kill_0(child):
    _exit_unreaped(child)
    assert lab.gone(child.pid, 5)
    assert not lab.alive(child.pid)


def test_a_running_child_is_not_gone_and_the_wait_ends_at_the_timeout(child):
    t = time.monotonic()
    assert not lab.gone(child.pid, 0.3)
    assert 0.3 <= time.monotonic() - t < 3
    assert lab.alive(child.pid)


def _tool(answers: list[int]):
    """An ``ipvsadm`` that fails until its answers run out, then succeeds."""
    calls = []

    def run(*args: str, check: bool = True):
        calls.append(args)
        return SimpleNamespace(returncode=answers.pop(0) if answers else 0)
    return run, calls


def test_the_wait_ends_when_ipvsadm_answers(child):
    tool, calls = _tool([1, 1])
    lab.wait_answering(child.pid, tool, lambda: "log", timeout=10)
    assert calls == [("-Ln",)] * 3


def test_a_daemon_that_exits_ends_the_wait_with_its_log(child):
    tool, calls = _tool([1] * 1000)
    _exit_unreaped(child)
    with pytest.raises(RuntimeError, match=r"\(exited\):\nthe daemon's last words"):
        lab.wait_answering(child.pid, tool, lambda: "the daemon's last words", timeout=30)
    assert len(calls) == 1


def test_a_daemon_that_never_answers_ends_the_wait_at_the_timeout(child):
    tool, _calls = _tool([1] * 1000)
    t = time.monotonic()
    with pytest.raises(RuntimeError, match="no answer to ipvsadm -Ln"):
        lab.wait_answering(child.pid, tool, lambda: "", timeout=0.3)
    assert time.monotonic() - t < 5
