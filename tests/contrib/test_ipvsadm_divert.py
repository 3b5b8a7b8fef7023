"""contrib/ipvsadm-divert on a scratch tree (dpkg-divert --root): never the host's /sbin.

The tree looks like a merged-/usr Debian system with Debian's ipvsadm
installed (a stand-in binary at /usr/sbin/ipvsadm, reached as /sbin/ipvsadm).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "contrib" / "ipvsadm-divert")
IPVSADM = str(ROOT / "tools" / "ipvsadm")

pytestmark = pytest.mark.skipif(shutil.which("dpkg-divert") is None, reason="needs dpkg-divert (Debian)")


@pytest.fixture
def tree(tmp_path) -> Path:
    (tmp_path / "usr" / "sbin").mkdir(parents=True)
    (tmp_path / "var" / "lib" / "dpkg" / "info").mkdir(parents=True)
    (tmp_path / "var" / "lib" / "dpkg" / "status").write_text("")
    (tmp_path / "sbin").symlink_to("usr/sbin")
    debian = tmp_path / "usr" / "sbin" / "ipvsadm"
    debian.write_text("#!/bin/sh\necho debian-ipvsadm\n")
    debian.chmod(0o755)
    return tmp_path


def divert(tree: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT, "--root", str(tree), *args], capture_output=True, text=True, timeout=60)


def diversions(tree: Path) -> str:
    return subprocess.run(["dpkg-divert", "--root", str(tree), "--list"], capture_output=True, text=True,
                          check=True, timeout=60).stdout


def test_install_runs_pyipvs_by_both_paths_and_keeps_debians(tree):
    r = divert(tree, "install", IPVSADM)
    assert r.returncode == 0, r.stderr
    for path in ("sbin/ipvsadm", "usr/sbin/ipvsadm"):
        p = subprocess.run([sys.executable, str(tree / path), "-v"], capture_output=True, text=True, timeout=60)
        assert p.stdout.startswith("ipvsadm v1.31"), (path, p.stderr)
    kept = tree / "sbin" / "ipvsadm.debian"
    assert subprocess.run([str(kept)], capture_output=True, text=True).stdout == "debian-ipvsadm\n"
    assert "diversion of /sbin/ipvsadm to /sbin/ipvsadm.debian by pyipvs" in diversions(tree)
    # Again: nothing changes, nothing fails.
    assert divert(tree, "install", IPVSADM).returncode == 0
    assert os.readlink(tree / "sbin" / "ipvsadm") == IPVSADM


def test_remove_puts_debians_back(tree):
    assert divert(tree, "install", IPVSADM).returncode == 0
    r = divert(tree, "remove")
    assert r.returncode == 0, r.stderr
    p = tree / "usr" / "sbin" / "ipvsadm"
    assert not p.is_symlink()
    assert subprocess.run([str(p)], capture_output=True, text=True).stdout == "debian-ipvsadm\n"
    assert not (tree / "usr" / "sbin" / "ipvsadm.debian").exists()
    assert "pyipvs" not in diversions(tree)


def test_install_without_debians_package(tree):
    (tree / "usr" / "sbin" / "ipvsadm").unlink()
    assert divert(tree, "install", IPVSADM).returncode == 0
    assert os.readlink(tree / "usr" / "sbin" / "ipvsadm") == IPVSADM
    assert divert(tree, "remove").returncode == 0
    assert not (tree / "usr" / "sbin" / "ipvsadm").exists()


def test_install_refuses_a_missing_command(tree):
    r = divert(tree, "install", str(tree / "nothing-here"))
    assert r.returncode == 2
    assert "pyipvs" not in diversions(tree)
