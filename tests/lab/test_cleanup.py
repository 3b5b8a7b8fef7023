"""Nothing of ipvsd stays on the machine: clean stop, and SIGKILL then
restart; in shared mode with IPv6 services, for the ip and the ip6 table."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from .conftest import ROOT, Lab, lab_mod, lab_up

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def shared_lab():
    with lab_up("shared", ipv6=True):
        yield Lab("shared", "shared", False)


def _start(strict: bool) -> int:
    cmd = lab_mod.director_cmd("shared", strict, ipv6=True)
    pid = lab_mod.start("director", lab_mod.NS_DIR, cmd, env={"PYTHONPATH": ROOT})
    lab_mod.wait_answering(pid)
    return pid


def _kill9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    assert lab_mod.gone(pid, 5), f"ipvsd {pid} outlived SIGKILL"


def _listing(family: str) -> str | None:
    """``nft list table FAMILY pyipvs`` in the director, None without the table."""
    r = subprocess.run(["ip", "netns", "exec", lab_mod.NS_DIR, "nft", "list", "table", family, "pyipvs"],
                       capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else None


def _table(lab) -> bool:
    """Both families' tables are there (and a check that neither is, when False)."""
    have = [_listing(f) is not None for f in ("ip", "ip6")]
    assert have[0] == have[1], f"one table without the other: ip {have[0]}, ip6 {have[1]}"
    return have[0]


def _tx(lab) -> str:
    out = lab.run(lab_mod.NS_DIR, "ethtool", "-k", "d_out")
    return next(line.split(":")[1].split()[0] for line in out.splitlines() if line.startswith("tx-checksumming"))


def test_sigkill_leftovers_are_cleaned_by_the_next_start(shared_lab):
    lab = shared_lab
    assert _table(lab) and _tx(lab) == "on"
    _kill9(lab_mod.read_pid("director"))
    assert not _table(lab), "the kernel removes the killed daemon's owner table with its netlink socket"
    pid = _start(strict=True)
    assert _tx(lab) == "off"
    _kill9(pid)
    assert _tx(lab) == "off"
    # Tables an older daemon made without the owner flag (nft -f) outlive
    # it: the next start deletes them before making its own.
    stale = "".join(f"table {f} pyipvs {{\n  chain stale {{ type filter hook prerouting priority -500; }}\n}}\n"
                    for f in ("ip", "ip6"))
    subprocess.run(["ip", "netns", "exec", lab_mod.NS_DIR, "nft", "-f", "-"], input=stale, text=True, check=True,
                   timeout=30)
    assert "chain stale" in _listing("ip6")
    pid = _start(strict=False)
    assert _tx(lab) == "on", "a later start restores the offloads a killed daemon turned off"
    assert _table(lab)
    for family in ("ip", "ip6"):
        rules = _listing(family)
        assert rules.count("chain pre") == 1 and "chain stale" not in rules and "flags owner" in rules, rules
    lab_mod.stop_pid(pid)
    assert not _table(lab), "a clean stop removes the table"
    ino = os.stat(f"/run/netns/{lab_mod.NS_DIR}").st_ino
    left = os.listdir("/run/pyipvs") if os.path.isdir("/run/pyipvs") else []
    assert not [f for f in left if f.startswith(f"offloads-{ino}-")]
