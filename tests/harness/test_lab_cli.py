"""ipvs-lab's command line (ipvs_harness/lab.py): help for every command,
the internal ones hidden, the lock, and the live connection count."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ipvs_harness import ROOT

LAB = os.path.join(ROOT, "tools", "ipvs-lab")


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, LAB, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_usage_hides_the_internal_commands_and_every_command_has_help():
    out = _run("--help").stdout
    assert "_serve" not in out and "_ftp" not in out
    for cmd in ("up", "demo", "run", "status", "down"):
        assert f"    {cmd} " in out, cmd
        sub = _run(cmd, "--help")
        assert sub.returncode == 0 and f"usage: ipvs-lab {cmd}" in sub.stdout
        assert len(sub.stdout.split("\n\n")) >= 3, f"{cmd} --help has no description"


@pytest.mark.skipif(os.geteuid() != 0, reason="the lock lives in /run")
def test_a_second_run_on_the_same_lab_is_refused_with_the_holders_pid():
    prefix = f"harnlock{os.getpid()}"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); import ipvs_harness.lab as l; "
         "l.lock(); print('locked', flush=True); time.sleep(30)", ROOT],
        env={**os.environ, "IPVS_LAB_PREFIX": prefix}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = _run("down", env={"IPVS_LAB_PREFIX": prefix})
        assert r.returncode != 0 and f"pid {holder.pid}" in r.stderr and "in use" in r.stderr
    finally:
        holder.kill()
        holder.wait()
        os.unlink(f"/run/{prefix}-lab.lock")


def test_the_connection_count_reads_the_live_per_cpu_rows(tmp_path, monkeypatch):
    import ipvs_harness.lab as lab

    (tmp_path / "proc" / "net").mkdir(parents=True)
    (tmp_path / "proc" / "net" / "ip_vs_stats_percpu").write_text(
        "       Total Incoming Outgoing         Incoming         Outgoing\n"
        "CPU    Conns  Packets  Packets            Bytes            Bytes\n"
        "  0     1F40     9C40     7530           2DC6C0           5B8D80\n"
        "  1        2        4        4              100              100\n"
        "  ~      BB8     1770     1388            10000            10000\n\n"
        "     Conns/s   Pkts/s   Pkts/s          Bytes/s          Bytes/s\n"
        "         3E8      7D0      5DC            1F400            1F400\n")
    monkeypatch.setattr(lab, "STATE", str(tmp_path))
    # The per-CPU rows (8000 + 2), not the estimator's snapshot (~: 3000).
    assert lab.conn_count() == 8002


def test_run_gives_up_on_a_hung_command():
    """A command that never ends raises instead of hanging its caller."""
    import ipvs_harness.lab as lab

    with pytest.raises(subprocess.TimeoutExpired):
        lab.run("sleep", "30", timeout=0.2)
    assert lab.run("true").returncode == 0  # the default timeout leaves quick commands alone
    assert lab.RUN_TIMEOUT is not None
