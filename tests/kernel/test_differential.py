"""The differential report as tests: every recorded kernel golden against PyIPVS.

Each golden under tests/kernel/goldens/ (recorded from Debian's 6.1 kernel
by tools/ipvs-kernel) runs again on the offline backend
(ipvs_harness/diff/offline.py: the golden's own scenario.sh under a
recording stub, the kernel's captures through ipvs.core) and is compared
item by item (ipvs_harness/diff/compare.py, normalisation in
ipvs_harness/diff/normalize.py).  Every item PyIPVS reproduces must be
equal; every difference must be listed in
ipvs_harness/diff/report.py:KNOWN_DIFFERENCES with its reason, and a listed
difference that disappears fails too, so the table stays true.  Recording
artefacts (a kernel capture that ends early, state left over from the
scenario recorded before, frames the kernel reordered) excuse an item only
when the golden shows them (report.py: ARTEFACTS, evidence_of).

No VM and no namespaces; the test marked ``lab`` runs one scenario in the
namespace lab (root only).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from ipvs_harness.diff import compare, normalize, report
from ipvs_harness.diff.compare import DIFFERENT, EQUAL, MISSING, Item

NAMES = report.golden_names()
#: Traffic scenarios whose traffic the offline backend does not model yet
#: (their listings before traffic are still compared).
OFFLINE_TODO: set[str] = set()
PENDING = report.PENDING
_CACHE: dict[str, tuple[list[Item], list[str]]] = {}


def items_of(name: str) -> list[Item]:
    if name not in _CACHE:
        _CACHE[name] = report.golden_items(name)
    return _CACHE[name][0]


def notes_of(name: str) -> list[str]:
    items_of(name)
    return _CACHE[name][1]


needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="scenarios are bash scripts")


def test_goldens_present():
    assert {"nat_classic", "sched_wlc", "ipvsadm_errors"} <= set(NAMES)


@needs_bash
@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.xfail(reason=PENDING[n], strict=True)) if n in PENDING else n
     for n in NAMES],
)
def test_scenario_matches_kernel(name):
    items = items_of(name)
    unexplained = [f"{it.name}: {it.detail}" for it in items
                   if it.status == DIFFERENT and report.known_reason(it) is None]
    assert not unexplained, f"{len(unexplained)} new differences from the kernel:\n" + "\n".join(unexplained[:10])


@needs_bash
def test_known_differences_still_differ():
    items = [it for n in NAMES for it in items_of(n)]
    stale = report.stale_known(items)
    assert not stale, f"KNOWN_DIFFERENCES entries that match nothing different any more (update the table): {stale}"


@needs_bash
def test_enough_is_compared():
    """The comparison must not shrink into 'not compared': the traffic
    scenarios each compare their requests, frames and listings."""
    for name in NAMES:
        items = items_of(name)
        compared = [it for it in items if it.status in (EQUAL, DIFFERENT, report.ARTEFACT)]
        if os.path.exists(os.path.join(report.GOLDENS, name, "client-side.pcap")) and name not in OFFLINE_TODO:
            assert any(it.name.startswith("order.txt") or it.name.startswith("frames") for it in compared), name
    total = sum(1 for n in NAMES for it in items_of(n) if it.status in (EQUAL, DIFFERENT, report.ARTEFACT))
    assert total > 1500


@needs_bash
def test_offline_models_host_unreachables_of_an_absent_real_server(tmp_path):
    """sched_sh: the kernel answered the SYNs scheduled to the absent
    172.16.0.5 with host unreachables, counted as that server's out-traffic
    (24 of 88 bytes); the offline neighbour model (offline.Neighbours) must
    give the same line (the rest of the listing differs by the capture gap)."""
    report.golden_items("sched_sh", keep=str(tmp_path))

    def line(path):
        with open(path) as f:
            return next(x.split() for x in f if "172.16.0.5:80" in x)

    want = line(os.path.join(report.GOLDENS, "sched_sh", "ipvsadm-Ln-exact-stats.txt"))
    assert want[2:] == ["8", "24", "24", "1440", "2112"]
    assert line(tmp_path / "ipvsadm-Ln-exact-stats.txt") == want


def test_report_markdown_lists_every_scenario():
    rows = [(Item("a", "x.txt", EQUAL), "equal", ""), (Item("b", "y.txt", DIFFERENT, "d"), "known", "why")]
    md = report.markdown(rows, {"a": [], "b": ["a note"]})
    assert "| a | 1 | 0 | 0 | 0 | 0 |" in md and "| b | 0 | 1 | 0 | 0 | 0 |" in md
    # The committed summary has no item list and no timings; --items adds the list.
    assert "a note" not in md and "Full compare" not in md and "`x.txt`" not in md
    full = report.markdown(rows, {"a": [], "b": ["a note"]}, 1.0, items=True)
    assert "a note" in full and "`x.txt`" in full and "| `y.txt` | known | why |" in full


# --------------------------------------------------------- normalisation


LNC = """IPVS connection entries
pro expire state       source             virtual            destination
TCP 01:56  TIME_WAIT   198.51.100.2:40006 203.0.113.5:80     172.16.0.3:8000
TCP 01:55  TIME_WAIT   198.51.100.2:40002 203.0.113.5:80     172.16.0.2:80
"""


def _shift(text: str, secs: int) -> str:
    out = []
    for line in text.splitlines():
        p = line.split()
        if p and p[0] == "TCP":
            m, s = map(int, p[1].split(":"))
            t = m * 60 + s + secs
            line = line.replace(p[1], f"{t // 60:02d}:{t % 60:02d}", 1)
        out.append(line)
    return "\n".join(out) + "\n"


def test_conn_rows_sorted_and_timers_within_tolerance():
    swapped = "\n".join(LNC.splitlines()[:2] + LNC.splitlines()[3:4] + LNC.splitlines()[2:3]) + "\n"
    assert normalize.compare_conn(LNC, swapped) is None
    assert normalize.compare_conn(LNC, _shift(LNC, normalize.EXPIRE_TOLERANCE_S)) is None
    assert "timer off" in normalize.compare_conn(LNC, _shift(LNC, normalize.EXPIRE_TOLERANCE_S + 1))


def test_rows_about_to_expire_may_be_gone():
    last = "TCP 00:02  CLOSE       198.51.100.2:40009 203.0.113.5:80     172.16.0.2:80\n"
    assert normalize.compare_conn(LNC + last, LNC) is None
    late = last.replace("00:02", "00:09")
    assert normalize.compare_conn(LNC + late, LNC) is not None


def test_conn_state_and_addresses_are_not_normalised():
    assert normalize.compare_conn(LNC, LNC.replace("TIME_WAIT", "CLOSE_WAIT", 1)) is not None
    assert normalize.compare_conn(LNC, LNC.replace("172.16.0.3:8000", "172.16.0.2:8000")) is not None
    assert normalize.compare_conn(LNC, LNC + "TCP 00:10  CLOSE       198.51.100.2:40009 203.0.113.5:80     "
                                  "172.16.0.2:80\n") is not None


def test_proc_conn_expires_column():
    a = ("Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData\n"
         "TCP C6336402 9C46 CB007105 0050 AC100003 1F40 TIME_WAIT       116\n")
    assert normalize.compare_conn(a, a.replace("116", "114")) is None
    assert normalize.compare_conn(a, a.replace("116", "100")) is not None
    assert normalize.compare_conn(a, a.replace("1F40", "0050")) is not None


def test_ephemeral_ports_only_where_not_fixed():
    fixed = normalize.fixed_ports_of("# c\nhttp 1 198.51.100.2:40002 server=rs1\n")
    other = LNC.replace("40006", "51234")
    assert normalize.compare_conn(LNC, other, fixed) is None  # 40006 was never a fixed port
    assert normalize.compare_conn(LNC, LNC.replace("40002", "40003"), fixed) is not None


def test_rates_compare_layout_only_and_counters_exactly():
    rate = ("Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS\n"
            "TCP  203.0.113.5:80                      1        7        7      424      533\n")
    assert normalize.rate_shape(rate) == normalize.rate_shape(rate.replace("424", "99"))
    assert normalize.rate_shape(rate) != normalize.rate_shape(rate.replace("203.0.113.5:80", "203.0.113.5:81"))
    stats = "       Total Incoming\n   Conns  Packets\n       D       41\n\n     Conns/s   Pkts/s\n     1   7\n"
    item = compare.compare_file("s", "proc-net-ip_vs_stats.txt", stats, stats.replace("   7", "   9"), None)
    assert item.status == EQUAL
    item = compare.compare_file("s", "proc-net-ip_vs_stats.txt", stats, stats.replace("41", "40"), None)
    assert item.status == DIFFERENT


def test_order_and_transcript_items():
    ref = "http 1 198.51.100.2:40001 rs2\nhttp 2 198.51.100.2:40002 rs1\n"
    got = "http 1 198.51.100.2:40001 rs2\nhttp 2 198.51.100.2:40002 rs2\n"
    st = [it.status for it in compare.compare_order("s", ref, got)]
    assert st == [EQUAL, DIFFERENT]
    assert [it.status for it in compare.compare_order("s", ref, "")] == [MISSING, MISSING]
    rec = {"n": 1, "cmd": "ipvsadm -A", "argv": ["ipvsadm", "-A"], "stdout": "", "stderr": "x\n", "rc": 2}
    same = json.dumps(rec) + "\n"
    other = json.dumps(dict(rec, rc=255)) + "\n"
    assert compare.compare_transcript("s", "t.jsonl", same, same)[0].status == EQUAL
    assert compare.compare_transcript("s", "t.jsonl", same, other)[0].status == DIFFERENT


def test_artefacts_need_their_evidence():
    gap = Item("x", "ipvsadm-Lnc.txt", DIFFERENT, "rows differ")
    report.apply_artefacts([gap], set())
    assert gap.status == DIFFERENT
    report.apply_artefacts([gap], {"capture_gap"})
    assert gap.status == report.ARTEFACT
    other = Item("x", "before-ipvsadm-S-n.txt", DIFFERENT, "line 1")
    report.apply_artefacts([other], {"capture_gap"})
    assert other.status == DIFFERENT
    frames = Item("x", "frames to clients", DIFFERENT, "3 vs kernel 4 frames")
    report.apply_artefacts([frames], set())
    assert frames.status == DIFFERENT
    frames = Item("x", "frames to clients", DIFFERENT, "the same 4 frames, in another order from frame 2")
    report.apply_artefacts([frames], set())
    assert frames.status == report.ARTEFACT


@needs_bash
@pytest.mark.parametrize("name", NAMES)
def test_captures_are_complete(name):
    """The goldens are recorded with tcpdump --immediate-mode: no capture
    may end before the other one or lack one side of a flow (the capture
    gap that excused many items of older recordings)."""
    items_of(name)
    assert "capture_gap" not in report.evidence_of(name, notes_of(name), items_of(name)), notes_of(name)


def _golden(tmp_path, scenario: str, svc_rows: list[str], total: str):
    tmp_path.mkdir()
    (tmp_path / "scenario.sh").write_text(scenario)
    (tmp_path / "ipvsadm-Ln-exact-stats.txt").write_text(
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n"
        "  -> RemoteAddress:Port\n" + "".join(r + "\n" for r in svc_rows))
    (tmp_path / "proc-net-ip_vs_stats.txt").write_text(
        "   Total Incoming Outgoing         Incoming         Outgoing\n"
        "   Conns  Packets  Packets            Bytes            Bytes\n" + total + "\n")
    return str(tmp_path)


def test_stats_lag_evidence_from_the_services_sum(tmp_path):
    rows = ["TCP  203.0.113.5:80  36  180  180  10980  13968", "  -> 172.16.0.2:80  11  55  55  3355  4268",
            "FWM  5  4  20  20  1220  1552"]
    lagging = _golden(tmp_path / "a", "ipvs_rules\n", rows, "      30      D0      D0             3390             3FF8")
    consistent = _golden(tmp_path / "b", "ipvs_rules\n", rows, "      28      C8      C8             2FA8             3CA0")
    deleted = _golden(tmp_path / "c", "ipvsadm -D -t 203.0.113.6:80\n", rows,
                      "      30      D0      D0             3390             3FF8")
    assert report.kernel_evidence(lagging) == {"stats_lag"}
    assert report.kernel_evidence(consistent) == set()
    # A removed service's counters stay in the total: no evidence then.
    assert report.kernel_evidence(deleted) == set()


def test_guest_clock_sets_the_offline_clock(tmp_path):
    from ipvs_harness.diff.offline import GuestClock, OfflineRun

    g = tmp_path / "golden"
    g.mkdir()
    (g / "clock.txt").write_text("1000.5\tfile\tipvsadm-Lnc.txt\n1001.0\tsh\tipvsadm  -Lnc\n1003.0\tsh\tipvsadm -Lnc\n")
    (g / "t.jsonl").write_text(json.dumps({"n": 1, "argv": ["ipvsadm"], "t": 999.25}) + "\n")
    clock = GuestClock(str(g))
    assert clock.first() == 999.25
    assert clock.take("sh", "ipvsadm -Lnc") == 1001.0 and clock.take("sh", "ipvsadm -Lnc") == 1003.0
    assert clock.take("sh", "ipvsadm -Lnc") is None
    run = OfflineRun(os.devnull, str(g), str(tmp_path / "out"), "t")
    hz = run.ipvs.hz
    assert run.now == int(999.25 * hz) - 2 * hz
    run.tick(5.0)  # stamped: the fitted model does not move the clock
    assert run.now == int(999.25 * hz) - 2 * hz
    run.stamp("file", "ipvsadm-Lnc.txt")
    assert run.now == int(1000.5 * hz)
    run.horizon = int(1000.8 * hz)
    run.stamp("sh", "ipvsadm -Lnc")
    assert run.now == int(1000.8 * hz)  # not past the next captured frame
    # Without stamps the fitted model is the fallback.
    empty = tmp_path / "unstamped"
    empty.mkdir()
    old = OfflineRun(os.devnull, str(empty), str(tmp_path / "out2"), "u")
    old.tick(2.0)
    assert old.now == 2 * hz


def test_service_order_excuses_only_a_listing_in_another_order():
    kernel = "IP Virtual Server\nTCP  a:80 wlc\n  -> r1:80 1\nTCP  a:81 wlc\n  -> r2:81 1\n"
    swapped = "IP Virtual Server\nTCP  a:81 wlc\n  -> r2:81 1\nTCP  a:80 wlc\n  -> r1:80 1\n"
    counted = swapped.replace("r2:81 1", "r2:81 2")
    order = compare.compare_file("x", "during-ipvsadm-Ln-stats.txt", kernel, swapped, None)
    other = compare.compare_file("x", "during-ipvsadm-Ln-stats.txt", kernel, counted, None)
    report.apply_artefacts([order, other], set())
    assert order.status == report.ARTEFACT and other.status == DIFFERENT
    # --rate listings compare their shape: the same rule on the shape.
    rates = compare.compare_file("x", "ipvsadm-Ln-rate.txt", kernel, swapped, None)
    report.apply_artefacts([rates], set())
    assert rates.status == report.ARTEFACT
    # The same rule for a listing inside a transcript.
    rec = {"n": 1, "cmd": "ipvsadm -Ln", "argv": ["ipvsadm", "-Ln"], "stdout": kernel, "stderr": "", "rc": 0}
    items = compare.compare_transcript("x", "t.jsonl", json.dumps(rec), json.dumps({**rec, "stdout": swapped}))
    report.apply_artefacts(items, set())
    assert [it.status for it in items] == [report.ARTEFACT]


def test_known_differences_match_by_pattern(monkeypatch):
    monkeypatch.setitem(report.KNOWN_DIFFERENCES, ("sched_rr", r"ipvsadm-Ln\.txt"), "[pyipvs] an example")
    monkeypatch.setitem(report.KNOWN_DIFFERENCES, ("*", r"(.*-)?sysctl-x\.txt"), "[pyipvs] another")
    assert report.known_reason(Item("sched_rr", "ipvsadm-Ln.txt", DIFFERENT)) == "[pyipvs] an example"
    assert report.known_reason(Item("sched_wlc", "ipvsadm-Ln.txt", DIFFERENT)) is None
    assert report.known_reason(Item("sched_wlc", "before-sysctl-x.txt", DIFFERENT)) == "[pyipvs] another"
    assert report.known_reason(Item("sched_rr", "sysctl-net.ipv4.vs.txt", DIFFERENT)) is None
    assert report.known_reason(Item("sched_rr", "proc-net-ip_vs_stats_percpu.txt", DIFFERENT)) is None
    assert report.known_reason(Item("sched_rr", "order.txt: rr 1 198.51.100.2:40001", DIFFERENT)) is None


# ---------------------------------------------------------------- lab


@pytest.mark.lab
@pytest.mark.slow
def test_lab_runs_a_golden_scenario_unchanged(tmp_path):
    """nat_classic, unchanged, on ipvsd in a namespace lab: the requests
    reach the kernel's servers and the listings match the golden."""
    from ipvs_harness.diff import lab

    why = lab.available()
    if why:
        pytest.skip(why)
    g = os.path.join(report.GOLDENS, "nat_classic")
    rc = lab.run_lab(os.path.join(g, "scenario.sh"), str(tmp_path), timeout=180)
    assert rc == 0, open(tmp_path / "scenario.log").read()[-2000:]
    items = compare.compare_dirs("nat_classic", g, str(tmp_path), skip=lab.CANNOT,
                                 tolerance=normalize.LIVE_EXPIRE_TOLERANCE_S)
    by = {it.name: it for it in items}
    assert all(it.status == EQUAL for it in items if it.name.startswith("order.txt"))
    # (Not /proc/net/ip_vs: its service order follows a per-boot hash, see KNOWN_DIFFERENCES.)
    for name in ("before-ipvsadm-Ln.txt", "before-ipvsadm-S-n.txt", "ipvsadm-Lnc.txt", "requests.txt",
                 "rs1-80.log", "rs2-8000.log"):
        assert by[name].status == EQUAL, by[name]


def test_an_ipvsadm_listing_reads_at_the_end_of_its_run(tmp_path):
    """dump_ipvs's ipvsadm listings take the clock of the next stamp (the
    process had exited), /proc snapshots their own (read right away)."""
    from ipvs_harness.diff.offline import GuestClock, OfflineRun

    g = tmp_path / "golden"
    g.mkdir()
    (g / "clock.txt").write_text("1000.0\tfile\ta.txt\n1000.06\tfile\tb.txt\n1003.0\tfile\tc.txt\n")
    clock = GuestClock(str(g))
    assert clock.next_after(1000.0) == 1000.06 and clock.next_after(1003.0) is None
    run = OfflineRun(os.devnull, str(g), str(tmp_path / "out"), "t")
    hz = run.ipvs.hz
    run.stamp("file", "a.txt", at_exit=True)
    assert run.now == int(1000.06 * hz)
    # The next stamp is too far for the end of one ipvsadm: its own then.
    run.stamp("file", "b.txt", at_exit=True)
    assert run.now == int(1000.06 * hz)


def test_stats_lag_is_no_excuse_where_the_estimator_was_traced(tmp_path):
    rows = ["TCP  203.0.113.5:80  36  180  180  10980  13968"]
    g = _golden(tmp_path / "a", "ipvs_rules\n", rows, "      30      D0      D0             3390             3FF8")
    assert report.kernel_evidence(g) == {"stats_lag"}
    (tmp_path / "a" / "est-trace.txt").write_text("# tracer: nop\n")
    # Offline the traced runs reproduce the lag; a live PyIPVS has its own phase.
    assert report.kernel_evidence(g) == set()
    assert report.kernel_evidence(g, offline=False) == {"stats_lag"}


def test_gue_source_ports_by_rank_and_checksums_still_checked():
    """Rule 7: the kernel's GUE source port is a seeded hash; only the
    pattern (one port per flow, flows apart) and a valid checksum count."""
    from scapy.layers.inet import IP, TCP, UDP

    def gue(sport, cport, chk=True):
        inner = bytes(IP(src="198.51.100.2", dst="203.0.113.5") / TCP(sport=cport, dport=80))
        u = UDP(sport=sport, dport=6080) if chk else UDP(sport=sport, dport=6080, chksum=0)
        return bytes(IP(src="172.16.0.1", dst="172.16.0.2", flags="DF") / u / (b"\x00\x04\x00\x00" + inner))

    kernel = [gue(42668, 40001), gue(42668, 40001), gue(47037, 40002)]
    ours = [gue(33000, 40001), gue(33000, 40001), gue(51000, 40002)]
    assert normalize.gue_source_ports(kernel) == normalize.gue_source_ports(ours)
    # Two flows sharing a port, or one flow changing it, still differ.
    assert normalize.gue_source_ports(kernel) != normalize.gue_source_ports([ours[0], ours[1], gue(33000, 40002)])
    assert normalize.gue_source_ports(kernel) != normalize.gue_source_ports([ours[0], gue(34000, 40001), ours[2]])
    # A wrong UDP checksum is not repaired.
    bad = bytearray(ours[2])
    bad[26] ^= 1
    assert normalize.gue_source_ports(kernel) != normalize.gue_source_ports([ours[0], ours[1], bytes(bad)])
    # Other frames pass untouched.
    plain = bytes(IP(src="172.16.0.1", dst="172.16.0.2") / UDP(sport=1, dport=53) / b"abcd")
    assert normalize.gue_source_ports([plain]) == [plain]
