"""The tutorial's outputs are what the lab does now.

docs/tutorial/capture.py re-runs every step of docs/tutorial/index.md on a
fresh lab and writes the transcripts the page includes.  The lab test runs
it into a temporary directory and compares with the committed files after
``capture.normalise`` (ports, sequence numbers, times, counters that
legitimately vary; the list and the reasons are in the script).  The other
tests check the normalisation itself and that the page includes every file.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.docs.conftest import DOCS, load

capture = load(os.path.join("tutorial", "capture.py"), "tutorial_capture")
OUTPUT = os.path.join(DOCS, "tutorial", "output")


def committed() -> dict[str, str]:
    out = {}
    for name in sorted(os.listdir(OUTPUT)):
        with open(os.path.join(OUTPUT, name)) as f:
            out[name[:-4]] = f.read()
    return out


def test_the_page_includes_every_captured_file_and_no_other():
    with open(os.path.join(DOCS, "tutorial", "index.md")) as f:
        page = f.read()
    included = set(re.findall(r"\{literalinclude\} output/([\w-]+)\.txt", page))
    assert included == set(committed())


def test_normalise_hides_what_varies_and_keeps_what_matters():
    a = ("TCP 01:55  TIME_WAIT   198.51.100.2:49000 203.0.113.5:80     172.16.0.3:8000\n"
         "IP 198.51.100.2.49000 > 203.0.113.5.80: Flags [S], seq 433446468, win 64240, "
         "options [mss 1460,sackOK,TS val 1 ecr 0,nop,wscale 10], length 0\n"
         "  -> 172.16.0.2:80                Masq    1      0          2         \n")
    b = ("TCP 01:58  TIME_WAIT   198.51.100.2:51234 203.0.113.5:80     172.16.0.3:8000\n"
         "IP 198.51.100.2.51234 > 203.0.113.5.80: Flags [S], seq 99, win 501, "
         "options [mss 1460,sackOK,TS val 7 ecr 0,nop,wscale 10], length 0\n"
         "  -> 172.16.0.2:80                Masq    1      1          0         \n")
    assert capture.normalise(a) == capture.normalise(b)
    # A different real server, state or weight is a real difference.
    for changed in (a.replace("172.16.0.3:8000", "172.16.0.2:80"), a.replace("TIME_WAIT", "FIN_WAIT "),
                    a.replace("Masq    1", "Masq    2")):
        assert capture.normalise(changed) != capture.normalise(a)


def test_committed_outputs_are_real_runs():
    """Each transcript holds the commands and answers the page explains."""
    files = committed()
    assert "server=rs" in files["scheduling"] and files["scheduling"].count("server=") == 6
    assert "227 Entering passive mode (203,0,113,5," in files["ftp"]
    assert "IP 198.51.100.1 > 198.51.100.2: ICMP echo request" in files["masquerading"]
    rows = files["packets-table"].splitlines()[1:]
    assert [r.split()[-2:] for r in rows][0][1] == "203.0.113.5:80"
    assert rows[3].split()[-2].startswith("203.0.113.5:80")


def _lab_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the tutorial's capture needs root (network namespaces)"
    for tool in ("ip", "tcpdump", "curl"):
        if shutil.which(tool) is None:
            return f"the tutorial's capture needs {tool} (tools/bootstrap installs it)"
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "ip netns is not usable here"
    return None


@pytest.mark.lab
@pytest.mark.slow
def test_tutorial_outputs_match_a_fresh_lab_run(tmp_path):
    reason = _lab_skip_reason()
    if sys.implementation.name == "pypy":
        reason = "the capture drives the same tools under either runtime: the CPython run covers it"
    if reason:
        pytest.skip(reason)
    # Its own namespaces: <prefix>-tut-client, ... (never the lab tests' ones).
    prefix = os.environ.get("IPVS_LAB_PREFIX", "ipvs") + "-tut"
    env = dict(os.environ, IPVS_LAB_PREFIX=prefix, IPVS_LAB_STATE=f"/run/{prefix}-lab")
    script = os.path.join(DOCS, "tutorial", "capture.py")
    r = subprocess.run([sys.executable, script, "--out", str(tmp_path)], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    old = committed()
    new = {name[:-4]: (tmp_path / name).read_text() for name in os.listdir(tmp_path)}
    assert set(new) == set(old)
    for name in sorted(old):
        a, b = capture.normalise(old[name]), capture.normalise(new[name])
        diff = "".join(difflib.unified_diff(a.splitlines(True), b.splitlines(True), f"committed/{name}", f"now/{name}"))
        assert a == b, f"the tutorial's {name}.txt drifted (rerun docs/tutorial/capture.py):\n{diff}"
