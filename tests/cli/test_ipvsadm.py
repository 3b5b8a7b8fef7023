"""ipvs/cli/ipvsadm.py against the listings recorded on kernel 6.1 with ipvsadm 1.31.

Every ``before-ipvsadm-*.txt`` of every golden scenario is reproduced by
applying that scenario's rules through :func:`main` (both from its
``before-ipvsadm-S-n.txt`` with ``-R`` and from the ``ipvsadm`` commands of
its ``scenario.sh``) on a :class:`LocalTransport`.  The after-traffic
listings are reproduced by loading the counters the kernel recorded: the
per-destination counts come from the ``--exact --stats`` listing, service
counts are their sums and must agree with ``/proc/net/ip_vs_stats``;
connection counts per destination are counted from
``/proc/net/ip_vs_conn``.  Then the rest: popt parsing, sorting, number
formatting, the ``-R`` tokenizer, name resolution, and random argv.
"""

from __future__ import annotations

import io
import re
import shlex
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipvs import ctl
from ipvs.cli import ipvsadm
from ipvs.cli.ipvsadm import (
    DestEntry,
    Popt,
    Resolver,
    ServiceEntry,
    cmp_dests,
    cmp_services,
    config_stream_read,
    glibc_qsort,
    main,
)
from ipvs.netlink import LocalTransport
from ipvs.netns import NetnsIPVS
from ipvs.uapi import AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP

ROOT = Path(__file__).resolve().parents[2]
_CANDIDATES = (ROOT / "tests" / "kernel" / "goldens", ROOT.parent / "shared" / "reference" / "kernel-goldens")


def golden_base() -> Path | None:
    for base in _CANDIDATES:
        if (base / "nat_classic" / "before-ipvsadm-Ln.txt").exists():
            return base
    return None


def listing_cases(prefix: str) -> list[tuple[str, str]]:
    base = golden_base()
    if base is None:
        return []
    out = []
    for f in sorted(base.glob(f"*/{prefix}ipvsadm-*.txt")):
        out.append((f.parent.name, f.name))
    return out


#: listing file suffix -> ipvsadm arguments that produced it (oracle.sh's dump_ipvs).
ARGS = {
    "Ln": ["-Ln"],
    "Ln-stats": ["-Ln", "--stats"],
    "Ln-rate": ["-Ln", "--rate"],
    "Ln-exact-stats": ["-Ln", "--exact", "--stats"],
    "Ln-timeout": ["-Ln", "--timeout"],
    "Ln-persistent-conn": ["-Ln", "--persistent-conn"],
    "Lnc": ["-Lnc"],
    "S-n": ["-S", "-n"],
}


def args_for(filename: str) -> list[str]:
    stem = re.sub(r"^(before-)?ipvsadm-", "", filename)[: -len(".txt")]
    return ARGS[stem]


class NoDNS(Resolver):
    """No network lookups in tests: names come from a small table."""

    def host_to_addr(self, name):
        return {"localhost": b"\x7f\0\0\1", "gw.example": b"\xcb\0\x71\x05"}.get(name)

    def addr_to_host(self, af, packed):
        return {b"\x7f\0\0\1": "localhost", b"\xcb\0\x71\x05": "vip.example"}.get(packed)

    def service_to_port(self, name, proto):
        return {"http": 80, "ftp": 21, "domain": 53}.get(name)

    def port_to_service(self, port, proto):
        return {80: "http", 21: "ftp", 53: "domain"}.get(port)


def run(transport, argv, stdin=""):
    out, err = io.StringIO(), io.StringIO()
    rc = main(argv, transport=transport, stdout=out, stderr=err, stdin=io.StringIO(stdin), resolver=NoDNS())
    return rc, out.getvalue(), err.getvalue()


def scenario_commands(base: Path, scenario: str) -> list[list[str]]:
    """The ipvsadm argument lists of scenario.sh, in order (plain lines and the ipvs_rules heredoc)."""
    cmds = []
    in_rules = False
    for line in (base / scenario / "scenario.sh").read_text().splitlines():
        s = line.strip()
        if s.startswith("ipvs_rules"):
            in_rules = True
            continue
        if in_rules:
            if s == "EOF":
                in_rules = False
            elif s:
                cmds.append(shlex.split(s))
            continue
        if s.startswith("ipvsadm "):
            cmds.append(shlex.split(s)[1:])
    return cmds


@pytest.fixture(params=["restore", "commands"])
def how(request):
    return request.param


def load_rules(base: Path, scenario: str, how: str) -> LocalTransport:
    t = LocalTransport(NetnsIPVS())
    if how == "restore":
        rc, out, err = run(t, ["-R"], (base / scenario / "before-ipvsadm-S-n.txt").read_text())
        assert (rc, out, err) == (0, "", "")
    else:
        cmds = scenario_commands(base, scenario)
        assert cmds, "scenario.sh has no ipvsadm commands"
        for argv in cmds:
            rc, out, err = run(t, argv)
            assert (rc, err) == (0, ""), argv
    return t


# --------------------------------------------------------------------------
# Before traffic


@pytest.mark.parametrize(("scenario", "filename"), listing_cases("before-"))
def test_before_traffic_listing(scenario, filename, how):
    base = golden_base()
    t = load_rules(base, scenario, how)
    rc, out, err = run(t, args_for(filename))
    assert (rc, err) == (0, "")
    assert out == (base / scenario / filename).read_text()


# --------------------------------------------------------------------------
# After traffic: load the recorded counters, then list


_NUM = r"\s+(\d+)"
_ROW = re.compile(r"^(TCP|UDP|SCTP|FWM|  ->)\s+(\S+)" + _NUM * 5 + r"\s*$")


def _rows(text: str) -> list[tuple[str, str, tuple[int, ...]]]:
    rows = []
    for line in text.splitlines():
        m = _ROW.match(line)
        if m:
            rows.append((m.group(1), m.group(2), tuple(int(m.group(i)) for i in range(3, 8))))
    return rows


def _proc_totals(text: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    lines = text.splitlines()
    return tuple(int(x, 16) for x in lines[2].split()), tuple(int(x, 16) for x in lines[5].split())


def _hostport(s: str) -> tuple[bytes, int]:
    host, _, port = s.rpartition(":")
    return ctl.parse_addr(AF_INET, host), int(port)


def load_traffic(ipvs: NetnsIPVS, base: Path, scenario: str) -> None:
    """Put the kernel's recorded counters into the instance."""
    d = base / scenario
    svc_by_key = {}
    for svc in ipvs.svc_order:
        svc_by_key[(svc.addr, svc.port)] = svc

    def rows_by_service(text):
        current = None
        table = {}
        for kind, name, nums in _rows(text):
            if kind == "  ->":
                table[current][1][_hostport(name)] = nums
            else:
                current = _hostport(name)
                table[current] = (nums, {})
        return table

    counts = rows_by_service((d / "ipvsadm-Ln-exact-stats.txt").read_text())
    rates = rows_by_service((d / "ipvsadm-Ln-rate.txt").read_text())
    total = [0] * 5
    for key, (_svc_nums, dests) in counts.items():
        svc = svc_by_key[key]
        svc_sum = [0] * 5
        for dest in svc.destinations:
            nums = dests[(dest.addr, dest.port)]
            (dest.stats.conns, dest.stats.inpkts, dest.stats.outpkts, dest.stats.inbytes,
             dest.stats.outbytes) = nums
            svc_sum = [a + b for a, b in zip(svc_sum, nums, strict=True)]
        (svc.stats.conns, svc.stats.inpkts, svc.stats.outpkts, svc.stats.inbytes, svc.stats.outbytes) = svc_sum
        total = [a + b for a, b in zip(total, svc_sum, strict=True)]
    # The derivation must agree with the kernel's own totals.
    proc_counts, proc_rates = _proc_totals((d / "proc-net-ip_vs_stats.txt").read_text())
    assert tuple(total) == proc_counts
    ipvs.tot_stats.conns, ipvs.tot_stats.inpkts, ipvs.tot_stats.outpkts = total[:3]
    ipvs.tot_stats.inbytes, ipvs.tot_stats.outbytes = total[3:]

    def set_rates(stats, r):
        # Stats.rates() rounds the scaled estimates: <<10 for counts, <<5 for bytes.
        stats.cps, stats.inpps, stats.outpps = (v << 10 for v in r[:3])
        stats.inbps, stats.outbps = (v << 5 for v in r[3:])

    rate_total = [0] * 5
    for key, (svc_r, dests) in rates.items():
        svc = svc_by_key[key]
        set_rates(svc.stats, svc_r)
        rate_total = [a + b for a, b in zip(rate_total, svc_r, strict=True)]
        for dest in svc.destinations:
            set_rates(dest.stats, dests[(dest.addr, dest.port)])
    # Rates are estimated per object, so the services only roughly add up to the total.
    assert all(abs(a - b) <= max(2, b // 10) for a, b in zip(rate_total, proc_rates, strict=True))

    # Active and inactive connections, counted from the recorded connection table.
    conn_lines = (d / "proc-net-ip_vs_conn.txt").read_text().splitlines()[1:]
    for svc in ipvs.svc_order:
        for dest in svc.destinations:
            mine = [f for f in (ln.split() for ln in conn_lines)
                    if (f[3], int(f[4], 16), f[5], int(f[6], 16))
                    == (svc.addr.hex().upper(), svc.port, dest.addr.hex().upper(), dest.port)]
            dest.activeconns = sum(1 for f in mine if f[7] == "ESTABLISHED")
            dest.inactconns = len(mine) - dest.activeconns


class RecordedProc(LocalTransport):
    """Serves /proc/net/ip_vs_conn as the kernel recorded it (for -c)."""

    def __init__(self, ipvs, conn_text):
        super().__init__(ipvs)
        self.conn_text = conn_text

    def call(self, req):
        if req.get("cmd") == "GET_PROC" and req.get("name") == "ip_vs_conn":
            return {"version": 1, "ok": True, "text": self.conn_text}
        return super().call(req)


AFTER = [(s, f) for s, f in listing_cases("") if not f.startswith("before-")]


@pytest.mark.parametrize(("scenario", "filename"), AFTER)
def test_after_traffic_listing(scenario, filename):
    base = golden_base()
    t = load_rules(base, scenario, "restore")
    load_traffic(t.ipvs, base, scenario)
    t = RecordedProc(t.ipvs, (base / scenario / "proc-net-ip_vs_conn.txt").read_text())
    rc, out, err = run(t, args_for(filename))
    assert (rc, err) == (0, "")
    expected = (base / scenario / filename).read_text()
    if filename.endswith("Lnc.txt"):
        # ipvsadm -Lnc and /proc/net/ip_vs_conn were read a moment apart: the
        # expiry column may differ by a second; everything else must not.
        out, expected = _expire_close(out, expected)
    assert out == expected


def _expire_close(got: str, want: str) -> tuple[str, str]:
    g, w = got.splitlines(keepends=True), want.splitlines(keepends=True)
    assert len(g) == len(w)
    for i, (a, b) in enumerate(zip(g, w, strict=True)):
        if i < 2:
            continue
        ma, mb = (re.match(r"(\S+ +)(\d+):(\d+)( .*)", x, re.S) for x in (a, b))
        assert ma and mb
        ta, tb = (int(m.group(2)) * 60 + int(m.group(3)) for m in (ma, mb))
        assert abs(ta - tb) <= 2
        g[i], w[i] = ma.group(1) + ma.group(4), mb.group(1) + mb.group(4)
    return "".join(g), "".join(w)


def test_after_traffic_derivation_fails_on_wrong_counts():
    """The loader's cross-check with /proc/net/ip_vs_stats is a real check."""
    base = golden_base()
    if base is None:
        pytest.skip("no goldens")
    t = load_rules(base, "nat_classic", "restore")
    load_traffic(t.ipvs, base, "nat_classic")
    svc = next(s for s in t.ipvs.svc_order if s.port == 80)
    svc.stats.inbytes += 1
    rc, out, err = run(t, ["-Ln", "--stats", "--exact"])
    assert out != (base / "nat_classic" / "ipvsadm-Ln-exact-stats.txt").read_text()


# --------------------------------------------------------------------------
# -S | -R | -S


RULES = """\
-A -t 203.0.113.5:80 -s wlc
-a -t 203.0.113.5:80 -r 172.16.0.2:80 -m -w 1
-a -t 203.0.113.5:80 -r 172.16.0.3:8000 -m -w 2
-A -u 203.0.113.5:53 -s rr -o
-a -u 203.0.113.5:53 -r 172.16.0.2:53 -g -w 0
-A -t 203.0.113.5:443 -s sh -p 600 -M 255.255.255.0 -b sh-fallback,sh-port
-a -t 203.0.113.5:443 -r 172.16.0.4:443 -i -w 3 --tun-type gue --tun-port 6080 --tun-csum
-a -t 203.0.113.5:443 -r 172.16.0.5:443 -i -w 3 --tun-type gre --tun-nocsum
-a -t 203.0.113.5:443 -r 172.16.0.6:443 -i -w 3 --tun-type ipip
-A -f 7 -s mh -p 360 -b mh-port
-a -f 7 -r 172.16.0.2:0 -g -w 1
-A -f 8 -6 -s wrr -p 360 -M 64
-a -f 8 -6 -r [2001:db8::2]:0 -g -w 5
-A -t [2001:db8::1]:80 -s lc -b flag-3
-a -t [2001:db8::1]:80 -r [2001:db8::10]:8080 -m -w 7
"""


def _save_restore_save(rules: str) -> tuple[str, str]:
    t = LocalTransport(NetnsIPVS())
    assert run(t, ["-R"], rules) == (0, "", "")
    rc, first, err = run(t, ["-S", "-n"])
    assert (rc, err) == (0, "")
    t2 = LocalTransport(NetnsIPVS())
    assert run(t2, ["-R"], first) == (0, "", "")
    rc, second, err = run(t2, ["-S", "-n"])
    assert (rc, err) == (0, "")
    return first, second


def test_save_restore_save_roundtrip():
    first, second = _save_restore_save(RULES)
    assert first == second
    # Sorted output: services by (fwmark, af, proto, addr, port), dests by address.
    lines = first.splitlines()
    assert lines[0] == "-A -t 203.0.113.5:80 -s wlc"
    assert "-A -t 203.0.113.5:443 -s sh -p 600 -M 255.255.255.0 -b sh-fallback,sh-port" in lines
    assert ("-a -t 203.0.113.5:443 -r 172.16.0.4:443 -i -w 3 --tun-type gue --tun-port 6080 --tun-csum"
            in lines)
    assert "-A -f 8 -6 -s wrr -p 360 -M 64" in lines
    assert "-a -t [2001:db8::1]:80 -r [2001:db8::10]:8080 -m -w 7" in lines
    assert lines.index("-A -f 7 -s mh -p 360 -b mh-port") > lines.index("-A -t [2001:db8::1]:80 -s lc -b flag-3")


@pytest.mark.parametrize("scenario", ["nat_classic", "sched_order"])
def test_golden_save_roundtrip(scenario):
    base = golden_base()
    if base is None:
        pytest.skip("no goldens")
    text = (base / scenario / "ipvsadm-S-n.txt").read_text()
    first, second = _save_restore_save(text)
    assert first == second == text


# --------------------------------------------------------------------------
# Listing details


def test_listing_forms():
    t = LocalTransport(NetnsIPVS())
    assert run(t, ["-R"], RULES) == (0, "", "")
    rc, out, err = run(t, ["-Ln"])
    assert rc == 0
    assert "TCP  203.0.113.5:443 sh (sh-fallback,sh-port) persistent 600 mask 255.255.255.0\n" in out
    assert "UDP  203.0.113.5:53 rr ops\n" in out
    assert "FWM  7 mh (mh-port) persistent 360\n" in out
    assert "FWM  8 IPv6 wrr persistent 360 mask 64\n" in out
    assert "  -> [2001:db8::10]:8080          Masq    7      0          0         \n" in out
    rc, out, err = run(t, ["-Ln", "--tun-info", "-t", "203.0.113.5:443"])
    assert out.splitlines() == [
        "Prot LocalAddress:Port Scheduler Flags",
        "  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn",
        "TCP  203.0.113.5:443 sh (sh-fallback,sh-port) persistent 600 mask 255.255.255.0",
        "  -> 172.16.0.4:443               Tunnel  gue:6080:+c   3      0          0         ",
        "  -> 172.16.0.5:443               Tunnel  gre:-c        3      0          0         ",
        "  -> 172.16.0.6:443               Tunnel  ipip          3      0          0         ",
    ]
    rc, out, err = run(t, ["-L", "--thresholds", "-n", "-u", "203.0.113.5:53"])
    assert out.splitlines()[0] == "Prot LocalAddress:Port" + " " * 11 + " Uthreshold Lthreshold ActiveConn InActConn "
    assert out.splitlines()[3] == "  -> 172.16.0.2:53" + " " * 15 + " 0          0          0          0         "


def test_nosort_is_kernel_order():
    t = LocalTransport(NetnsIPVS())
    rules = "".join(f"-A -t 10.0.0.{i}:80 -s rr\n-a -t 10.0.0.{i}:80 -r 172.16.0.{i}:80 -m\n"
                    f"-a -t 10.0.0.{i}:80 -r 172.16.0.{i + 10}:80 -m\n" for i in (3, 1, 2))
    assert run(t, ["-R"], rules)[0] == 0
    rc, out, _ = run(t, ["-Ln", "--nosort"])
    svcs = [ln.split()[1] for ln in out.splitlines() if ln.startswith("TCP")]
    expected = [f"{ctl.format_addr(s.af, s.addr)}:{s.port}" for s in ctl.services_sorted_by_bucket(t.ipvs)]
    assert svcs == expected
    # newest destination first
    lines = out.splitlines()
    i = lines.index("TCP  10.0.0.1:80 rr")
    assert lines[i + 1].split()[1] == "172.16.0.11:80"
    rc, out, _ = run(t, ["-Ln"])
    assert [ln.split()[1] for ln in out.splitlines() if ln.startswith("TCP")] == [
        "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]


def test_sort_wraps_like_c():
    """(int)(0x01000000 - 0xC8000000) > 0: ipvsadm lists 1.0.0.0 after 200.0.0.0."""
    t = LocalTransport(NetnsIPVS())
    assert run(t, ["-R"], "-A -t 1.0.0.1:80 -s rr\n-A -t 200.0.0.1:80 -s rr\n")[0] == 0
    rc, out, _ = run(t, ["-Sn"])
    assert [ln.split()[2] for ln in out.splitlines()] == ["200.0.0.1:80", "1.0.0.1:80"]
    # With a third address the comparator is a cycle (1 < 100 < 200 < 1) and the
    # order depends on glibc's merge: [a, b, c] sorts as merge([a], merge([b], [c])).
    entries = [_se("100.0.0.1"), _se("200.0.0.1"), _se("1.0.0.1")]
    got = [ctl.format_addr(AF_INET, e.addr[:4]) for e in glibc_qsort(entries, cmp_services)]
    assert got == ["100.0.0.1", "200.0.0.1", "1.0.0.1"]
    entries = [_se("1.0.0.1"), _se("200.0.0.1"), _se("100.0.0.1")]
    got = [ctl.format_addr(AF_INET, e.addr[:4]) for e in glibc_qsort(entries, cmp_services)]
    assert got == ["1.0.0.1", "100.0.0.1", "200.0.0.1"]


def _se(addr: str, port: int = 80, fwmark: int = 0, af: int = AF_INET, proto: int = IPPROTO_TCP) -> ServiceEntry:
    packed = ctl.parse_addr(af, addr)
    return ServiceEntry(af=af, protocol=proto, addr=packed + bytes(16 - len(packed)), port=port, fwmark=fwmark,
                        sched_name="rr", pe_name="", flags=0, timeout=0, netmask=0, stats=(0,) * 10)


def test_cmp_services_fields():
    assert cmp_services(_se("10.0.0.1"), _se("10.0.0.2")) < 0
    assert cmp_services(_se("10.0.0.1", 81), _se("10.0.0.1", 80)) > 0
    assert cmp_services(_se("10.0.0.1", proto=IPPROTO_UDP), _se("10.0.0.1")) > 0
    assert cmp_services(_se("0.0.0.0", fwmark=1), _se("10.0.0.1")) > 0
    # fwmarks wrap too: 0x80000001 - 1 is negative as an int
    assert cmp_services(_se("0.0.0.0", fwmark=0x80000001), _se("0.0.0.0", fwmark=1)) < 0
    assert cmp_services(_se("::1", af=AF_INET6), _se("10.0.0.1")) > 0
    assert cmp_services(_se("1.0.0.0"), _se("200.0.0.0")) > 0


def test_cmp_dests_and_qsort():
    def de(a, port=80):
        packed = ctl.parse_addr(AF_INET, a)
        return DestEntry(af=AF_INET, addr=packed + bytes(12), port=port, conn_flags=0, weight=1, u_threshold=0,
                         l_threshold=0, activeconns=0, inactconns=0, persistconns=0, tun_type=0, tun_port=0,
                         tun_flags=0, stats=(0,) * 10)
    ds = [de("172.16.0.3"), de("172.16.0.2", 90), de("172.16.0.2", 80)]
    assert [(ctl.format_addr(AF_INET, d.addr[:4]), d.port) for d in glibc_qsort(ds, cmp_dests)] == [
        ("172.16.0.2", 80), ("172.16.0.2", 90), ("172.16.0.3", 80)]


@given(st.lists(st.integers(0, 2**32 - 1), max_size=30))
def test_glibc_qsort_is_a_permutation_and_sorts_total_orders(xs):
    out = glibc_qsort(xs, lambda a, b: (a > b) - (a < b))
    assert out == sorted(xs)


@pytest.mark.parametrize(("n", "exact", "text"), [
    (0, False, "        0"), (99999999, False, " 99999999"), (100000000, False, "  100000K"),
    (999999999, False, "  999999K"), (1000000000, False, "    1000M"), (99999999999, False, "   99999M"),
    (100000000000, False, "     100G"), (100000000000000, False, "     100T"),
    (123456789, True, " 123456789"), (42, True, "       42"), (12345678, True, " 12345678"),
])
def test_largenum(n, exact, text):
    assert ipvsadm._largenum(n, ipvsadm.FMT_EXACT if exact else 0) == text


def test_dest_counters_read_as_32_bits_like_libipvs():
    t = LocalTransport(NetnsIPVS())
    assert run(t, ["-R"], "-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.1.1:80 -m\n")[0] == 0
    svc = next(iter(t.ipvs.svc_order))
    dest = svc.destinations[0]
    dest.stats.inpkts = 2**32 + 5
    dest.stats.inbytes = 2**33
    svc.stats.inpkts = 2**32 + 5
    rc, out, _ = run(t, ["-Ln", "--stats", "--exact"])
    lines = out.splitlines()
    assert lines[3].split()[3] == str(2**32 + 5)  # the service: full width
    assert lines[4].split()[3:6] == ["5", "0", str(2**33)]  # the dest: low 32 bits, bytes full


def test_lnc_columns_and_expire():
    text = ("Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData\n"
            "TCP C6336402 9C4C CB007105 0050 AC100003 1F40 ESTABLISHED     900\n"
            "UDP C6336402 9C4C CB007105 0035 AC100003 0035 UDP            7200\n"
            "IP  C6336402 0000 00000001 0000 AC100003 0000 NONE             61 sip abc\n"
            "TCP 2001:0db8:0000:0000:0000:0000:0000:0001 0050 2001:0db8:0000:0000:0000:0000:0000:0002 0050"
            " 2001:0db8:0000:0000:0000:0000:0000:0003 0050 SYN_RECV         59\n")
    t = RecordedProc(NetnsIPVS(), text)
    rc, out, err = run(t, ["-Lnc"])
    assert (rc, err) == (0, "")
    assert out.splitlines() == [
        "IPVS connection entries",
        "pro expire state       source             virtual            destination",
        "TCP 15:00  ESTABLISHED 198.51.100.2:40012 203.0.113.5:80     172.16.0.3:8000",
        "UDP 120:00 UDP         198.51.100.2:40012 203.0.113.5:53     172.16.0.3:53",
        "IP  01:01  NONE        198.51.100.2:0     0.0.0.1:0          172.16.0.3:0",
        "TCP 00:59  SYN_RECV    [2001:db8::1]:80   [2001:db8::2]:80   [2001:db8::3]:80",
    ]
    rc, out, err = run(t, ["-Lc", "--persistent-conn"])
    lines = out.splitlines()
    assert lines[1] == "pro expire state       source             virtual            destination        pe name          pe_data"
    assert lines[2] == "TCP 15:00  ESTABLISHED 198.51.100.2:40012 vip.example:http   172.16.0.3:8000"
    assert lines[4] == "IP  01:01  NONE        198.51.100.2:0     0.0.0.1:0          172.16.0.3:0     sip                abc"


def test_conn_listing_without_proc():
    class NoProc(LocalTransport):
        def call(self, req):
            if req["cmd"] == "GET_PROC":
                return {"version": 1, "ok": False, "errno": 2, "error": "ENOENT", "message": "x"}
            return super().call(req)
    assert run(NoProc(NetnsIPVS()), ["-Lnc"]) == (1, "", "cannot open file /proc/net/ip_vs_conn\n")


def test_name_resolution_without_n():
    t = LocalTransport(NetnsIPVS())
    assert run(t, ["-A", "-t", "gw.example:http", "-s", "rr"]) == (0, "", "")
    assert run(t, ["-a", "-t", "203.0.113.5:80", "-r", "localhost", "-m"]) == (0, "", "")
    rc, out, _ = run(t, ["-L"])
    assert "TCP  vip.example:http rr\n" in out
    assert "  -> localhost:http               Masq    1      0          0         \n" in out
    rc, out, _ = run(t, ["-S"])
    assert out == "-A -t vip.example:http -s rr\n-a -t vip.example:http -r localhost:http -m -w 1\n"


def test_long_names_truncate_like_c():
    class LongNames(NoDNS):
        def addr_to_host(self, af, packed):
            return "a-very-long-host-name-for-this-test.example.org"
    t = LocalTransport(NetnsIPVS())
    assert run(t, ["-A", "-t", "10.0.0.1:80"])[0] == 0
    assert run(t, ["-a", "-t", "10.0.0.1:80", "-r", "10.0.0.2"])[0] == 0
    out = io.StringIO()
    main(["-L"], transport=t, stdout=out, stderr=io.StringIO(), resolver=LongNames())
    lines = out.getvalue().splitlines()
    assert lines[3] == "TCP  a-very-long-host-name-for-th wlc"  # 33 characters, then the scheduler
    assert lines[4].startswith("  -> a-very-long-host-name-for-th Route   1 ")


def test_timeout_set_and_list():
    t = LocalTransport(NetnsIPVS())
    assert run(t, ["--set", "100", "0", "30"]) == (0, "", "")
    assert run(t, ["-L", "--timeout"]) == (0, "Timeout (tcp tcpfin udp): 100 120 30\n", "")


def test_daemon_listing():
    t = LocalTransport(NetnsIPVS())
    assert run(t, ["--start-daemon", "master", "--syncid", "7", "--mcast-group", "239.1.2.3"]) == (0, "", "")
    assert run(t, ["--start-daemon", "backup", "--mcast-interface", "veth0"]) == (0, "", "")
    rc, out, _ = run(t, ["-L", "--daemon"])
    assert out == ("master sync daemon (mcast=eth0, syncid=7, maxlen=1472, group=239.1.2.3, port=8848, ttl=1)\n"
                   "backup sync daemon (mcast=veth0, syncid=0, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n")
    assert run(t, ["--start-daemon", "master"]) == (255, "", "Daemon has already run\n")
    assert run(t, ["--stop-daemon", "master"]) == (0, "", "")
    assert run(t, ["--stop-daemon", "master"]) == (255, "", "No daemon is running\n")


def test_zero_resets_counters():
    t = LocalTransport(NetnsIPVS())
    assert run(t, ["-R"], "-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.1.1:80 -m\n")[0] == 0
    svc = next(iter(t.ipvs.svc_order))
    svc.stats.conns = svc.destinations[0].stats.conns = 5
    assert run(t, ["-Z", "-t", "10.0.0.1:80"]) == (0, "", "")
    rc, out, _ = run(t, ["-Ln", "--stats"])
    assert [ln.split()[2] for ln in out.splitlines()[3:]] == ["0", "0"]


# --------------------------------------------------------------------------
# Editing resets what is not given again


def test_edit_resets_defaults():
    t = LocalTransport(NetnsIPVS())
    assert run(t, ["-A", "-t", "10.0.0.1:80", "-s", "rr", "-p", "60"]) == (0, "", "")
    assert run(t, ["-E", "-t", "10.0.0.1:80"]) == (0, "", "")
    assert run(t, ["-Sn"])[1] == "-A -t 10.0.0.1:80 -s wlc\n"
    assert run(t, ["-a", "-t", "10.0.0.1:80", "-r", "10.0.1.1:8080", "-m", "-w", "5"]) == (0, "", "")
    # -e without -w resets the weight to 1
    assert run(t, ["-e", "-t", "10.0.0.1:80", "-r", "10.0.1.1:8080", "-m"]) == (0, "", "")
    assert run(t, ["-Sn"])[1].splitlines()[1] == "-a -t 10.0.0.1:80 -r 10.0.1.1:8080 -m -w 1"
    # DR forces the service port: 10.0.1.1:80 is not a destination
    assert run(t, ["-e", "-t", "10.0.0.1:80", "-r", "10.0.1.1:8080"]) == (255, "", "No such destination\n")


# --------------------------------------------------------------------------
# popt


def _all_opts(argv):
    p = Popt(argv)
    out = []
    while True:
        c, arg = p.next_opt()
        out.append((c, arg))
        if c < 0:
            return out, p


def test_popt_clusters_and_arguments():
    out, p = _all_opts(["-Ln", "-t10.0.0.1:80", "--scheduler=rr", "-p", "-s", "-x", "extra", "--", "-A"])
    assert out == [(ord("L"), None), (ord("n"), None), (ord("t"), "10.0.0.1:80"), (ord("s"), "rr"),
                   (ord("p"), None), (ord("s"), "-x"), (-1, None)]
    assert p.leftovers == ["extra", "-A"]


def test_popt_errors():
    assert _all_opts(["--bogus"])[0][-1][0] == ipvsadm.POPT_ERROR_BADOPT
    assert _all_opts(["-Lq"])[0][-1][0] == ipvsadm.POPT_ERROR_BADOPT
    assert _all_opts(["-s"])[0][-1][0] == ipvsadm.POPT_ERROR_NOARG
    assert _all_opts(["--list=x"])[0][-1][0] == ipvsadm.POPT_ERROR_UNWANTEDARG
    out, p = _all_opts(["-A", "-p", "-5"])
    assert out[1] == (ord("p"), None) and out[2][0] == ipvsadm.POPT_ERROR_BADOPT
    assert p.bad_option() == "-5"


@pytest.mark.parametrize(("argv", "expected"), [
    (["-A"], (2, "", "You need to supply the 'service-address' option for the 'add-service' command\n")),
    (["-A", "-t", "10.0.0.1"], (2, "", "Zero port specified for non-persistent service\n")),
    (["-A", "-t", "10.0.0.1:80", "-o"], (2, "", "One-Packet Scheduling is only for UDP virtual services\n")),
    (["-L", "-c", "--stats"], (2, "", "options conflicts in the list command\n")),
    (["-L", "-c", "--timeout"], (2, "", "The option 'timeout' conflicts with the 'connection' option in the "
                                        "'list' command\n")),
    (["-A", "-6", "-f", "1"], (2, "", "-6 used before -f\n\n")),
    (["-a", "-t", "10.0.0.1:80", "-r", "10.0.0.2", "-m", "--tun-type", "gue"],
     (2, "", "Tunnel options conflict with forward method\n")),
    (["-a", "-t", "10.0.0.1:80", "-r", "10.0.0.2", "-i", "--tun-type", "gue"],
     (2, "", "You need to supply the 'tun-port' option for the 'gue' tunnel type\n")),
    (["-a", "-t", "10.0.0.1:80", "-r", "[2001:db8::1]:80", "-m"],
     (2, "", "Different address family is allowed only for tunneling servers\n")),
    (["-t", "10.0.0.1:80"], (255, "", "Try `ipvsadm -h' or 'ipvsadm --help' for more information.\n")),
    (["-A", "-t", "10.0.0.1:80", "--bogus"], (255, "", "--bogus: unknown option\n")),
    (["-A", "-E"], (2, "", "invalid option `-E'\n")),
    (["-A", "-t", "10.0.0.1:80", "x"], (2, "", "unexpected argument x\n")),
    (["--set", "1", "2"], (2, "", "--set option requires 3 timeout values\n")),
    (["-A", "-t", "10.0.0.1:80", "-b", "sh-port"], (2, "", "incompatible scheduler flag `sh-port'\n")),
    (["-A", "-f", "0"], (2, "", "invalid fwmark value `0' specified\n")),
    (["-L", "-t", "10.0.0.9:80"], (1, "", "No such service\n")),
    (["-D", "-t", "10.0.0.9:80"], (255, "", "No such service\n")),
    (["-a", "-t", "10.0.0.9:80", "-r", "10.0.0.2"], (255, "", "Service not defined\n")),
    (["-A", "-t", "10.0.0.1:80", "-s", "nosuch"], (255, "", "Scheduler or persistence engine not found\n")),
    (["-A", "-t", "10.0.0.1:80", "-b", ","], (-11, "", "")),
])
def test_messages_and_exit_codes(argv, expected):
    assert run(LocalTransport(NetnsIPVS()), argv) == expected


def test_kernel_range_errors():
    """The thresholds the transcript could not reach (its service was gone): ERANGE from the kernel."""
    t = LocalTransport(NetnsIPVS())
    assert run(t, ["-A", "-t", "10.0.0.1:80"]) == (0, "", "")
    assert run(t, ["-a", "-t", "10.0.0.1:80", "-r", "10.0.0.2", "-m", "-y", "5", "-x", "0"]) == (
        255, "", "Numerical result out of range\n")
    assert run(t, ["-a", "-t", "10.0.0.1:80", "-r", "10.0.0.2", "-m", "-w", "70000"]) == (0, "", "")
    assert run(t, ["-a", "-t", "10.0.0.1:80", "-r", "224.0.0.1", "-m"]) == (
        255, "", "Invalid operation.  Possibly wrong module version, address not unicast, ...\n")


def test_help_and_version_need_no_daemon():
    def refuse():
        raise ConnectionRefusedError(111, "Connection refused")

    class Dead:
        def call(self, req):
            refuse()

    rc, out, err = run(Dead(), ["-h"])
    assert rc == 0 and out.startswith("ipvsadm v1.31 2019/12/24 (compiled with popt and IPVS v1.2.1)\nUsage:\n")
    assert run(Dead(), ["-v"]) == (0, "ipvsadm v1.31 2019/12/24 (compiled with popt and IPVS v1.2.1)\n", "")
    rc, out, err = run(Dead(), ["-Ln"])
    assert rc == 2 and err.startswith("Can't initialize ipvs: Connection refused\n") and "ipvsd" in err


def test_socket_option_is_taken_out(monkeypatch):
    seen = []

    class Fake(LocalTransport):
        pass

    def fake_client(path=None):
        seen.append(path)
        return Fake(NetnsIPVS())

    import types
    monkeypatch.setitem(__import__("sys").modules, "ipvs.client", types.SimpleNamespace(Client=fake_client))
    out, err = io.StringIO(), io.StringIO()
    assert main(["--socket", "/tmp/x.sock", "-Ln"], stdout=out, stderr=err) == 0
    assert seen == ["/tmp/x.sock"]
    monkeypatch.setenv("IPVS_SOCKET", "/tmp/env.sock")
    assert main(["-Ln"], stdout=out, stderr=err) == 0
    assert seen[-1] == "/tmp/env.sock"


# --------------------------------------------------------------------------
# -R tokenizer (config_stream.c)


@pytest.mark.parametrize(("text", "lines"), [
    ("-A -t 1.2.3.4:80\n", [["-A", "-t", "1.2.3.4:80"]]),
    ("ipvsadm -A\tipvsadm -t x\r\n", [["-A", "-t", "x"]]),
    ("\n\n-C\n", [[], [], ["-C"]]),
    ("  # comment?\n", [["#", "comment?"]]),
    ("-C", [["-C"]]),
    ("-C   ", []),  # blanks then EOF: the line is lost
    ("-C\n-Z   ", [["-C"]]),
    ("", []),
])
def test_config_stream_read(text, lines):
    assert list(config_stream_read(text)) == lines


def test_restore_continues_after_kernel_errors_and_stops_on_fail():
    t = LocalTransport(NetnsIPVS())
    rules = ("-A -t 10.0.0.1:80 -s rr\n-A -t 10.0.0.1:80 -s rr\n-A -t 10.0.0.2:80 -s rr\n"
             "-A -t 10.0.0.3:80 -w 1\n-A -t 10.0.0.4:80\n")
    rc, out, err = run(t, ["-R"], rules)
    assert (rc, err) == (2, "Service already exists\nIllegal 'weight' option with the 'add-service' command\n")
    assert run(t, ["-Sn"])[1] == "-A -t 10.0.0.1:80 -s rr\n-A -t 10.0.0.2:80 -s rr\n"
    assert ipvsadm.restore(["-A -t 10.0.0.5:80 -s rr"], t, stderr=io.StringIO()) == 0
    assert "10.0.0.5:80" in run(t, ["-Sn"])[1]


# --------------------------------------------------------------------------
# Robustness


_WORDS = st.sampled_from([
    "-A", "-E", "-D", "-C", "-R", "-S", "-a", "-e", "-d", "-L", "-l", "-Z", "-h", "-v", "--set", "-t", "-u", "-f",
    "-s", "-p", "-M", "-r", "-g", "-i", "-m", "-w", "-x", "-y", "-n", "-c", "-6", "-o", "-b", "-X", "--timeout",
    "--daemon", "--stats", "--rate", "--thresholds", "--persistent-conn", "--nosort", "--sort", "--exact",
    "--tun-info", "--tun-type", "--tun-port", "--tun-csum", "--tun-nocsum", "--tun-remcsum", "--pe",
    "--start-daemon", "--stop-daemon", "--mcast-interface", "--syncid", "--mcast-group", "--mcast-port",
    "--mcast-ttl", "--sync-maxlen", "--sctp-service", "10.0.0.1:80", "10.0.0.2", "[2001:db8::1]:80", "2001:db8::2",
    "master", "backup", "rr", "wlc", "sh", "sh-port", "flag-1", "ipip", "gue", "gre", "0", "1", "65536", "-1",
    "255.255.255.0", "64", "x", "", "--", "-", "-Ln", "-At", "--weight=3", "--list=1", "eth0", ",",
])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_WORDS, st.text(max_size=8)), max_size=8), st.text(max_size=40))
def test_random_argv_always_gives_an_exit_code(argv, stdin):
    t = LocalTransport(NetnsIPVS())
    rc, out, err = run(t, argv, stdin)
    assert isinstance(rc, int) and (0 <= rc <= 255 or rc == -11)
    if rc == 0:
        assert err == "" or "Warning" in err or err.endswith("\n")
