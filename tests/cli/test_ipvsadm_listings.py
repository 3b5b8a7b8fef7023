"""ipvsadm's listing forms against the ``listings`` transcripts recorded on kernel 6.1.

``tests/kernel/goldens/listings`` ran a rich rule set (TCP/UDP, fwmark 1
and 4294967295, persistence with masks, one-packet UDP, sh/mh flags,
thresholds, tunnels, weight 0, ports given by name, addresses that trip
ipvsadm's wrapping sort) and then every listing form three times: before
traffic (``listings-before``), after a little traffic
(``listings-after-traffic``), and around ``--set``, ``-Z`` and ``-C``
(``listings-set-zero-clear``).  Each command's stdout, stderr and exit
status is compared here.

The rules come from the scenario's own ``ipvs_rules`` block, run through
:func:`main`.  For the after-traffic state the kernel's counters are
loaded from the ``--exact --stats`` and ``--exact --rate`` answers of the
same transcript (their service sums are checked against
``/proc/net/ip_vs_stats``), and connection counts are counted from
``/proc/net/ip_vs_conn``, which also answers ``-c``.  Names are resolved
as in the recording VM: no DNS, ``127.0.0.1 localhost``, Debian's
``/etc/services``.
"""

from __future__ import annotations

import io
import json
import re
import shlex
from pathlib import Path

import pytest

from ipvs.cli.ipvsadm import Resolver, main
from ipvs.netns import NetnsIPVS
from tests.cli.test_ipvsadm import KernelView, load_traffic, walk_order

GOLD = Path(__file__).resolve().parents[1] / "kernel" / "goldens" / "listings"


class VMResolver(Resolver):
    """The recording VM's name service: /etc/hosts and netbase's /etc/services."""

    HOSTS = {b"\x7f\0\0\1": "localhost"}
    SERVICES = {("tcp", 21): "ftp", ("tcp", 53): "domain", ("udp", 53): "domain", ("tcp", 80): "http",
                ("tcp", 443): "https", ("udp", 443): "https", ("tcp", 8080): "http-alt", ("udp", 5353): "mdns"}

    def host_to_addr(self, name):
        return {v: k for k, v in self.HOSTS.items()}.get(name)

    def addr_to_host(self, af, packed):
        return self.HOSTS.get(packed)

    def service_to_port(self, name, proto):
        return {(p, n): port for (p, port), n in self.SERVICES.items()}.get((proto, name))

    def port_to_service(self, port, proto):
        return self.SERVICES.get((proto, port))


def transcript(name: str) -> list[dict]:
    path = GOLD / f"{name}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run(t, argv, stdin=""):
    out, err = io.StringIO(), io.StringIO()
    rc = main(argv, transport=t, stdout=out, stderr=err, stdin=io.StringIO(stdin), resolver=VMResolver())
    return rc, out.getvalue(), err.getvalue()


def rules_from_scenario() -> list[list[str]]:
    text = (GOLD / "scenario.sh").read_text()
    block = text.split("ipvs_rules <<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def fresh_table() -> KernelView:
    # The kernel's service walk order, as /proc/net/ip_vs recorded it (see KernelView).
    t = KernelView(NetnsIPVS(), walk_order((GOLD / "before-proc-net-ip_vs.txt").read_text()))
    for argv in rules_from_scenario():
        rc, out, err = run(t, argv)
        assert (rc, out, err) == (0, "", ""), argv
    return t


# --------------------------------------------------------------------------
# Loading the recorded traffic (helpers shared with test_ipvsadm.py)


def load_recorded(t: KernelView, cases: list[dict]) -> str:
    """Load counters, rates and connection counts; return the /proc conn text."""
    by_cmd = {c["cmd"]: c["stdout"] for c in cases}
    conn_text = (GOLD / "proc-net-ip_vs_conn.txt").read_text()
    load_traffic(t.ipvs, by_cmd["ipvsadm -Ln --exact --stats"], by_cmd["ipvsadm -Ln --exact --rate"], conn_text,
                 (GOLD / "proc-net-ip_vs_stats.txt").read_text())
    return conn_text


def same_but_expiry(got: str, want: str) -> bool:
    """-c listings read at another moment: equal except for expiry drift of a few seconds."""
    g, w = got.splitlines(), want.splitlines()
    if len(g) != len(w) or g[:2] != w[:2]:
        return False
    for a, b in zip(g[2:], w[2:], strict=True):
        ma, mb = (re.match(r"(\S+ +)(\d+):(\d+)( .*)", x) for x in (a, b))
        if not (ma and mb) or ma.group(1) + ma.group(4) != mb.group(1) + mb.group(4):
            return False
        ta, tb = (int(m.group(2)) * 60 + int(m.group(3)) for m in (ma, mb))
        if abs(ta - tb) > 15:
            return False
    return True


# --------------------------------------------------------------------------
# The three transcripts, replayed in order on one table


BEFORE = transcript("listings-before")
AFTER = transcript("listings-after-traffic")
SETZERO = transcript("listings-set-zero-clear")


@pytest.fixture(scope="module")
def replayed() -> dict[tuple[str, int], tuple[int, str, str]]:
    t = fresh_table()
    results = {}
    for c in BEFORE:
        results[("before", c["n"])] = run(t, c["argv"][1:], c["stdin"] or "")
    if AFTER:
        t.conn_text = load_recorded(t, AFTER)
        for c in AFTER:
            results[("after", c["n"])] = run(t, c["argv"][1:], c["stdin"] or "")
        # the connections expire before the -C: the last -Lnc of the transcript shows none
        for c in SETZERO:
            if c["argv"][1:] == ["-C"]:
                t.conn_text = (GOLD / "cleared-proc-net-ip_vs_conn.txt").read_text()
            results[("setzero", c["n"])] = run(t, c["argv"][1:], c["stdin"] or "")
    return results


def _check(result, case):
    rc, out, err = result
    if "-Lc" in case["cmd"] or "-Lnc" in case["cmd"]:
        assert (rc, err) == (case["rc"], case["stderr"])
        assert same_but_expiry(out, case["stdout"]), out
    elif "--rate" in case["cmd"] and out != case["stdout"]:
        # The estimator ticks every 2 s between the transcript's commands, and the
        # rates were loaded from one of them: the others may differ in value only.
        assert (rc, err) == (case["rc"], case["stderr"])
        numbers = re.compile(r" +\d+[KMGT]?")
        assert numbers.sub(" N", out) == numbers.sub(" N", case["stdout"])
    else:
        assert (rc, out, err) == (case["rc"], case["stdout"], case["stderr"])


@pytest.mark.skipif(not BEFORE, reason="no listings transcript")
@pytest.mark.parametrize("case", BEFORE, ids=[c["cmd"] for c in BEFORE])
def test_listing_before_traffic(case, replayed):
    _check(replayed[("before", case["n"])], case)


@pytest.mark.skipif(not AFTER, reason="no listings transcript")
@pytest.mark.parametrize("case", AFTER, ids=[c["cmd"] for c in AFTER])
def test_listing_after_traffic(case, replayed):
    _check(replayed[("after", case["n"])], case)


@pytest.mark.skipif(not SETZERO, reason="no listings transcript")
@pytest.mark.parametrize("case", SETZERO, ids=[f"{c['n']}:{c['cmd']}" for c in SETZERO])
def test_set_zero_clear(case, replayed):
    _check(replayed[("setzero", case["n"])], case)


# --------------------------------------------------------------------------
# save_restore: -S of a rich rule set, -R of what -S and -S -n wrote


_SR = GOLD.parent / "save_restore" / "save-restore.jsonl"
SAVE_RESTORE = [json.loads(line) for line in _SR.read_text().splitlines() if line.strip()] if _SR.exists() else []


@pytest.fixture(scope="module")
def save_restore_replayed() -> dict[int, tuple[int, str, str]]:
    t = KernelView(NetnsIPVS())
    return {c["n"]: run(t, c["argv"][1:], c["stdin"] or "") for c in SAVE_RESTORE}


#: A dest line's two connection columns (ActiveConn, InActConn).
_CONN_COLUMNS = re.compile(r"^(  -> \S+ +\S+ +\d+) +\d+ +\d+ *$", re.M)


@pytest.mark.skipif(not SAVE_RESTORE, reason="no save_restore transcript")
@pytest.mark.parametrize("case", SAVE_RESTORE, ids=[f"{c['n']}:{c['cmd'][:40]}" for c in SAVE_RESTORE])
def test_save_restore_transcript(case, save_restore_replayed):
    got = save_restore_replayed[case["n"]]
    expected = (case["rc"], case["stdout"], case["stderr"])
    if case["cmd"] == "ipvsadm -Ln" and got != expected:
        # The recording VM ran earlier scenarios in the same boot: the connections
        # they left were still counted on the dests this transcript revived from
        # the kernel's dest trash, which a fresh table cannot have.  All but the
        # two connection columns must match (the --pe sip service included).
        def mask(text):
            return _CONN_COLUMNS.sub(r"\1 N N", text)

        assert (got[0], mask(got[1]), got[2]) == (expected[0], mask(expected[1]), expected[2])
        return
    assert got == expected


# --------------------------------------------------------------------------
# During traffic: three connections held open (ESTABLISHED, so active)


@pytest.mark.skipif(not (GOLD / "during-proc-net-ip_vs_conn.txt").exists(), reason="no during-traffic dump")
@pytest.mark.parametrize("form", ["Ln", "Ln-persistent-conn", "Lnc"])
def test_during_traffic_connection_counts(form):
    """Active and inactive counts, counted from the table the kernel showed while connections were held."""
    from tests.cli.test_ipvsadm import _conns_by_service, _expire_close

    t = fresh_table()
    t.conn_text = (GOLD / "during-proc-net-ip_vs_conn.txt").read_text()
    conns = [ln.split() for ln in t.conn_text.splitlines()[1:] if ln.strip()]
    for svc, mine in _conns_by_service(t.ipvs, conns).items():
        for dest in svc.destinations:
            here = [f for f in mine if f[5] == dest.addr.hex().upper()
                    and (dest.port == 0 or int(f[6], 16) == dest.port)]
            dest.activeconns = sum(1 for f in here if f[0] == "TCP" and f[7] == "ESTABLISHED")
            dest.inactconns = len(here) - dest.activeconns
    argv = {"Ln": ["-Ln"], "Ln-persistent-conn": ["-Ln", "--persistent-conn"], "Lnc": ["-Lnc"]}[form]
    rc, out, err = run(t, argv)
    expected = (GOLD / f"during-ipvsadm-{form}.txt").read_text()
    assert (rc, err) == (0, "")
    if form == "Lnc":
        out, expected = _expire_close(out, expected)
    assert out == expected
