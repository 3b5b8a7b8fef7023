"""Integrity of the kernel goldens (tests/kernel/goldens), without the VM.

The goldens are what real kernel IPVS produced for tests/kernel/scenarios;
the differential tests trust them.  These checks catch a scenario edited
without re-recording (``tools/ipvs-kernel record NAME``), a golden recorded
from a dirty IPVS state, and damaged files.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GOLDENS = ROOT / "tests" / "kernel" / "goldens"
TRANSCRIPT_FIELDS = {"n", "section", "cmd", "argv", "stdin", "stdout", "stderr", "rc", "t"}


def test_goldens_match_their_scenarios() -> None:
    p = subprocess.run([sys.executable, str(ROOT / "tools" / "ipvs-kernel"), "check"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("path", sorted(GOLDENS.glob("*/transcript*.jsonl"))
                         + sorted(GOLDENS.glob("*/listings-*.jsonl"))
                         + sorted(GOLDENS.glob("*/save-restore.jsonl")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_transcripts_are_complete(path: Path) -> None:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records, "empty transcript"
    assert [r["n"] for r in records] == list(range(1, len(records) + 1))
    for r in records:
        assert set(r) == TRANSCRIPT_FIELDS
        assert r["argv"][0] == "ipvsadm"
        assert isinstance(r["rc"], int)
    # "t": the guest's realtime clock before each command, in order.
    ts = [r["t"] for r in records]
    assert all(isinstance(t, float) for t in ts) and ts == sorted(ts)


def _clock(golden: Path) -> list[tuple[float, str, str]]:
    rows = []
    for line in (golden / "clock.txt").read_text().splitlines():
        t, kind, what = line.split("\t")
        rows.append((float(t), kind, what))
    return rows


@pytest.mark.parametrize("golden", sorted(p for p in GOLDENS.iterdir() if p.is_dir()), ids=lambda p: p.name)
def test_goldens_carry_the_guest_clock(golden: Path) -> None:
    """clock.txt stamps every dumped file in execution order, on the clock
    of the pcap timestamps: each capture's frames lie between its
    capture_start and capture_stop stamps (plus capture_stop's 0.5 s sleep
    and the SIGINT)."""
    if not (golden / "clock.txt").exists():
        # A golden of transcripts only: their records carry the clock.
        assert any('"t": ' in p.read_text() for p in golden.glob("*.jsonl")), "no stamps"
        return
    rows = _clock(golden)
    assert [t for t, _, _ in rows] == sorted(t for t, _, _ in rows)
    for _t, kind, what in rows:
        if kind == "file":
            assert (golden / what).exists(), what
    starts = {what: t for t, kind, what in rows if kind == "capture_start"}
    for name, t0 in starts.items():
        stop = next((t for t, kind, _ in rows if kind == "capture_stop" and t >= t0), None)
        pcap = (golden / f"{name}.pcap").read_bytes()
        if len(pcap) <= 24:
            continue
        sec, usec = struct.unpack("<II", pcap[24:32])
        first = sec + usec / 1e6
        assert t0 <= first, f"{name}: first frame {first} before capture_start {t0}"
        assert stop is None or first <= stop + 1.0, f"{name}: first frame after capture_stop"


@pytest.mark.parametrize("path", sorted(GOLDENS.glob("*/*.pcap")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_captures_are_pcap_files(path: Path) -> None:
    data = path.read_bytes()
    magic, _major, _minor = struct.unpack("<IHH", data[:8])
    assert magic in (0xA1B2C3D4, 0xA1B23C4D), "not a little-endian pcap"
    assert len(data) > 24, "no packet captured"


def test_scheduler_orders_name_real_servers() -> None:
    orders = sorted(GOLDENS.glob("sched_*/order.txt"))
    assert len(orders) >= 13
    for path in orders:
        for line in path.read_text().splitlines():
            label, n, src, server = line.split()
            assert server == "NONE" or server.startswith("rs"), (path, line)
            assert int(n) > 0 and ":" in src
