"""pyproject.toml: ``pip install`` of the checkout gives working commands.

A fresh virtualenv in the test's temporary directory, the package built
from a copy of the checkout with this environment's setuptools (offline:
``--no-deps --no-build-isolation``; the dependencies come from this
environment's site-packages through a .pth file), then the installed
console scripts run from another directory, so nothing is imported from
the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("ipvsadm", "ipvsd", "ippfvsadm", "ipvs-sysctl", "ipvs-mark", "ipvs-replay")


def _setuptools_ok() -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= 77


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    if not _setuptools_ok():
        pytest.skip("needs setuptools >= 77 in this environment (the test extra has it)")
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src"
    src.mkdir()
    for name in os.listdir(ROOT):
        # docs/ holds the man pages the package installs (data-files).
        if name in ("pyproject.toml", "README.md", "LICENSE", "docs") or (
                name.startswith("ipvs") and (ROOT / name / "__init__.py").exists()):
            (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(
                ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__", "_build")}
                                            if (ROOT / name).is_dir() else {}))
    # The data files pyproject.toml installs (the man pages).
    for page in ("docs/man/ipvsadm.8", "docs/man/ipvsd.8", "docs/ippfvsadm.8"):
        if (ROOT / page).exists():
            (src / page).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / page, src / page)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    # This environment's packages (pip, setuptools, attrs, prometheus_client)
    # after the venv's own: a plain path entry, so their .pth files (an
    # editable install of the checkout among them) are not processed.
    Path(purelib, "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                        str(src)], capture_output=True, text=True, timeout=300, cwd=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    return venv


@pytest.mark.slow
def test_every_command_is_installed(installed):
    for cmd in COMMANDS:
        assert (installed / "bin" / cmd).exists(), cmd


@pytest.mark.slow
def test_installed_ipvsadm_and_ipvsd_answer_help(installed, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "IPVS_SOCKET")}
    r = subprocess.run([str(installed / "bin" / "ipvsadm"), "--help"], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ipvsadm v1.31 2019/12/24")
    r = subprocess.run([str(installed / "bin" / "ipvsd"), "--help"], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "usage: ipvsd" in r.stdout and "--rules FILE" in r.stdout


@pytest.mark.slow
def test_installed_ipvsd_starts_pypy_with_the_4m_nursery(installed, tmp_path):
    """The console script behaves as tools/ipvsd: on PyPy (this test's
    PyPy pass builds a PyPy virtualenv) it restarts itself once with
    PYPY_GC_NURSERY=4M, which PyPy reads only at start; on CPython nothing."""
    from tests.test_daemon import runtime_log_line

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "IPVS_SOCKET", "PYPY_GC_NURSERY")}
    line = runtime_log_line([str(installed / "bin" / "ipvsd")], tmp_path, env)
    if sys.implementation.name == "pypy":
        assert line.endswith(", GC nursery 4M, JIT trace_limit 10000)"), line
    else:
        assert line.startswith("ipvsd: INFO running on CPython ") and "nursery" not in line, line


@pytest.mark.slow
def test_the_package_is_imported_from_the_venv_not_the_checkout(installed, tmp_path):
    r = subprocess.run([str(installed / "bin" / "python"), "-c", "import ipvs; print(ipvs.__file__)"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith(str(installed)), r.stdout


@pytest.mark.slow
def test_man_pages_are_installed(installed):
    for page in ("ipvsadm.8", "ipvsd.8"):
        assert (installed / "share" / "man" / "man8" / page).exists(), page


@pytest.mark.slow
def test_installed_ipvsd_writes_its_unit(installed, tmp_path):
    """The unit ships as package data; ExecStart is the installed command."""
    r = subprocess.run([str(installed / "bin" / "ipvsd"), "--install-unit", "-"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"\nExecStart={installed / 'bin' / 'ipvsd'} --foreground " in r.stdout


def test_scapy_is_no_run_time_dependency():
    """Nothing in ipvs/ imports scapy at module level; the one use (pcapng
    in ipvs-replay) imports it when it needs it and says how to get it."""
    import ast

    users = set()
    for path in (ROOT / "ipvs").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "scapy" for n in names), path
        if any(isinstance(n, ast.ImportFrom) and (n.module or "").startswith("scapy") for n in ast.walk(tree)):
            users.add(path.relative_to(ROOT).as_posix())
    assert users == {"ipvs/cli/ipvs_replay.py"}
    from importlib.metadata import PackageNotFoundError, requires

    try:
        reqs = requires("pyipvs") or []
    except PackageNotFoundError:
        pytest.skip("pyipvs is not installed (tools/bootstrap installs it editable)")
    run_time = [r for r in reqs if "extra ==" not in r]
    assert not any(r.lower().startswith("scapy") for r in run_time), run_time
    assert any(r.lower().startswith("scapy") and 'extra == "pcap"' in r for r in reqs), reqs
