"""ipvsadm's error cases against the transcript recorded with real ipvsadm 1.31 on kernel 6.1.

``tests/kernel/goldens/ipvsadm_errors/transcript.jsonl`` holds, in order,
every command of ``tests/kernel/scenarios/ipvsadm_errors.sh`` with its
stdin, stdout, stderr and exit status, all run against one IPVS table.
Here the same commands run in the same order against one PyIPVS instance
(through :class:`LocalTransport`; the recording VM had no interface but
``lo``, so that is the only one a sync daemon may bind to) and each must
give the same three results.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from ipvs.cli.ipvsadm import main
from ipvs.netlink import LocalTransport
from ipvs.netns import NetnsIPVS

TRANSCRIPT = Path(__file__).resolve().parents[1] / "kernel" / "goldens" / "ipvsadm_errors" / "transcript.jsonl"


def _cases() -> list[dict]:
    if not TRANSCRIPT.exists():
        return []
    return [json.loads(line) for line in TRANSCRIPT.read_text().splitlines() if line.strip()]


CASES = _cases()


@pytest.fixture(scope="module")
def replay() -> dict[int, tuple[int, str, str]]:
    """Run the whole transcript once, in order, on one instance."""
    t = LocalTransport(NetnsIPVS(), interfaces=("lo",))
    results = {}
    for c in CASES:
        assert c["argv"][0] == "ipvsadm"
        out, err = io.StringIO(), io.StringIO()
        rc = main(c["argv"][1:], transport=t, stdout=out, stderr=err, stdin=io.StringIO(c["stdin"] or ""))
        results[c["n"]] = (rc, out.getvalue(), err.getvalue())
    return results


@pytest.mark.skipif(not CASES, reason="no recorded transcript")
@pytest.mark.parametrize("case", CASES, ids=[f"{c['n']}:{c['cmd'][:60]}" for c in CASES])
def test_transcript_case(case, replay):
    assert replay[case["n"]] == (case["rc"], case["stdout"], case["stderr"])


@pytest.mark.skipif(not CASES, reason="no recorded transcript")
def test_transcript_covers_the_issue_list():
    """The recorded cases include each error class the issue asks for."""
    stderr = "".join(c["stderr"] for c in CASES)
    for message in ("Service already exists", "No such service", "Service not defined",
                    "Destination already exists", "No such destination",
                    "Scheduler or persistence engine not found",
                    "illegal virtual server address[:port] specified", "illegal weight specified",
                    "You need to supply the", "Illegal 'numeric' option"):
        assert message in stderr, message


def test_a_changed_answer_is_noticed():
    """The comparison can fail: a wrong message differs from the recorded one."""
    if not CASES:
        pytest.skip("no recorded transcript")
    case = next(c for c in CASES if c["stderr"] == "Service already exists\n")
    assert (case["rc"], case["stderr"]) == (255, "Service already exists\n")
    t = LocalTransport(NetnsIPVS())
    out, err = io.StringIO(), io.StringIO()
    rc = main(case["argv"][1:], transport=t, stdout=out, stderr=err)  # empty table: no error at all
    assert (rc, out.getvalue(), err.getvalue()) != (case["rc"], case["stdout"], case["stderr"])
