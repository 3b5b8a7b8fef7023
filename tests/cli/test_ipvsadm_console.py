"""The ``ipvsadm`` command as a process: what it imports, how it ends.

ipvs/cli/ipvsadm.py's :func:`console_main` and the tools/ipvsadm launcher:
one interpreter start with the standard library only (no attrs, no core),
and ipvsadm 1.31's manners on a closed pipe and on Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.test_daemon import ThreadDaemon

ROOT = Path(__file__).resolve().parents[2]
TOOL = str(ROOT / "tools" / "ipvsadm")


def _modules_after(code: str) -> set[str]:
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); {code}; print(' '.join(sorted(sys.modules)))"
    return set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              timeout=60).stdout.split())


def test_client_imports_only_the_standard_library_and_its_own_modules():
    mods = _modules_after("import ipvs.cli.ipvsadm, ipvs.client") - _modules_after("pass")
    assert "ipvs.cli.ipvsadm" in mods
    ours = {m for m in mods if m.split(".")[0] == "ipvs"}
    assert ours == {"ipvs", "ipvs.cli", "ipvs.cli.ipvsadm", "ipvs.client", "ipvs.uapi"}
    for heavy in ("attrs", "attr", "typing", "dataclasses", "inspect", "argparse"):
        assert heavy not in mods, heavy


def test_launcher_runs_without_site_packages():
    """tools/ipvsadm under ``python -S`` (no site-packages, so no attrs):
    it must work there and not re-execute (PYIPVS_NO_VENV turns that off,
    so an import failure would show)."""
    env = {**os.environ, "PYIPVS_NO_VENV": "1"}
    p = subprocess.run([sys.executable, "-S", TOOL, "-v"], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("ipvsadm v1.31 2019/12/24")


def _closed_pipe_run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    """Run tools/ipvsadm with stdout a pipe whose reader has already gone."""
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([sys.executable, TOOL, *args], stdout=w, stderr=subprocess.PIPE, text=True, env=env,
                           timeout=60)
    finally:
        os.close(w)
    return p


def test_closed_pipe_ends_by_sigpipe_without_a_traceback(tmp_path):
    """``ipvsadm -Ln | head -1``: ipvsadm dies of SIGPIPE, silently."""
    d = ThreadDaemon(str(tmp_path / "ipvsd.sock"))
    try:
        env = {**os.environ, "IPVS_SOCKET": d.path}
        rules = "".join(f"-A -t 203.0.113.1:{1000 + i} -s rr\n" for i in range(300))
        subprocess.run([sys.executable, TOOL, "-R"], input=rules, text=True, env=env, check=True, timeout=60)
        p = _closed_pipe_run(["-Ln"], env)
    finally:
        d.stop()
    assert p.returncode == -signal.SIGPIPE
    assert p.stderr == ""


def test_closed_pipe_on_help_too():
    p = _closed_pipe_run(["-h"], dict(os.environ))
    assert p.returncode == -signal.SIGPIPE
    assert p.stderr == ""


def test_sigint_ends_by_sigint_without_a_traceback(tmp_path):
    """Ctrl-C while ``ipvsadm -R`` waits on its input."""
    # SIGINT's default action, as a terminal's shell gives it (a job run in
    # the background with & would have it ignored, and ipvsadm with it).
    p = subprocess.Popen([sys.executable, TOOL, "-R", "--socket", str(tmp_path / "none")], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        time.sleep(1.0)  # let it reach the read of stdin
        p.send_signal(signal.SIGINT)
        _out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == -signal.SIGINT
    assert "Traceback" not in err


def test_exit_statuses_as_ipvsadm(tmp_path):
    env = {**os.environ, "IPVS_SOCKET": str(tmp_path / "nobody")}
    def run(*a):
        return subprocess.run([sys.executable, TOOL, *a], capture_output=True, text=True, env=env, timeout=60)
    assert run("-Ln").returncode == 2  # no director: "Can't initialize ipvs"
    assert run("--no-such-option").returncode == 255  # popt's error
    assert run("-A", "-t", "1.2.3.4:80", "-s", "rr", "-x", "5").returncode == 2  # fail(): an option the command forbids
    assert run("-h").returncode == 0
