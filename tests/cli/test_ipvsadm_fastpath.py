"""ipvs/cli/ipvsadm.py: the restore fast path, BATCH restores and the fast sorts.

The fast path (``Ipvsadm.fast_command``) must never change what ipvsadm
does: for every line it takes, the full popt emulation must queue the
very same request (compared as JSON text, so key order counts too) and
print nothing; for whole rules files, ``-R`` with and without it must give
the same output, exit status, requests and table.  The sorts must give
what glibc's merge sort gives with ipvsadm's wrapping comparators.
"""

from __future__ import annotations

import io
import json
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipvs.cli import ipvsadm
from ipvs.cli.ipvsadm import (
    DestEntry,
    Ipvsadm,
    ServiceEntry,
    _Exit,
    cmp_dests,
    cmp_services,
    config_stream_read,
    glibc_qsort,
    sort_dests,
    sort_services,
)
from ipvs.netlink import LocalTransport, dispatch
from ipvs.netns import NetnsIPVS
from ipvs.uapi import AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP

from .test_ipvsadm import NoDNS


class Recording(LocalTransport):
    """A LocalTransport that keeps every command it runs (inside BATCHes too)."""

    def __init__(self, ipvs, batch: bool = True) -> None:
        super().__init__(ipvs)
        self.batch = batch
        self.seen: list[str] = []

    def call(self, req):
        if req.get("cmd") == "BATCH":
            self.seen.extend(json.dumps(r) for r in req["requests"])
        elif req.get("cmd") != "GET_INFO":
            self.seen.append(json.dumps(req))
        reply = super().call(req)
        if req.get("cmd") == "GET_INFO" and not self.batch:
            reply.pop("extensions", None)  # an older director
        return reply


def tool(transport, stdin: str = "") -> tuple[Ipvsadm, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return Ipvsadm(lambda: transport, out, err, io.StringIO(stdin), NoDNS()), out, err


def full_path(tokens: list[str]) -> tuple[list[tuple], str, int | None]:
    """What the popt emulation does with one -R line: (queued, stderr, exit code)."""
    t, _out, err = tool(LocalTransport(NetnsIPVS()))
    t.batching = True
    code = None
    try:
        t.process_options(tokens, True)
    except _Exit as e:
        code = e.code
    queued = list(t._queue)
    return queued, err.getvalue(), code


# Words close to what the fast path takes, and the ways a line can go wrong.
_ADDR = st.sampled_from([
    "203.0.113.5:80", "203.0.113.5", "203.0.113.5:0", "172.16.0.2:8080", "10.0.0.1:65535", "10.0.0.1:65536",
    "010.0.0.1:80", "10.0.0.1:080", "256.0.0.1:80", "10.1:80", "10.0.0.1:http", "[2001:db8::1]:80",
    "2001:db8::1", "1234", "0.0.0.0:80", "255.255.255.255:80", "224.0.0.1:80", "10.0.0.1:", ":80",
    "10.0.0.1:99999999999999999999", "-s",
])
_NUM = st.sampled_from(["0", "1", "7", "65535", "2147483647", "2147483648", "-1", "+5", " 5", "x", "00",
                        "99999999999999999999", "86400", "2678400", "2678401", ""])
_FIXED = st.sampled_from(["-m", "-g", "-i", "-p", "-o", "-n", "-6", "-6", "--tun-csum", "ipvsadm", "extra",
                          "-mw", "-t", "-r", "-w", "-s", "--weight=3", "-A", "-a"])


def _pairs(opts):
    return st.lists(st.one_of(
        st.tuples(st.sampled_from(opts), _ADDR).map(list),
        st.tuples(st.sampled_from(["-w", "-x", "-y", "-f", "-p", "-M"]), _NUM).map(list),
        st.tuples(st.just("-s"), st.sampled_from(["wlc", "rr", "sh", "nosuch", "-p", "a" * 20])).map(list),
        _FIXED.map(lambda w: [w]),
    ), max_size=7).map(lambda groups: [w for g in groups for w in g])


_LINE = st.tuples(st.sampled_from(["-A", "-E", "-a", "-e", "-d", "-D", "-L"]),
                  _pairs(["-t", "-u", "-r", "-f"])).map(lambda t: [t[0], *t[1]])

# Lines of the shapes ipvsadm -S writes: these must take the fast path.
_OCTET = st.integers(1, 254).map(str)
_IP = st.tuples(_OCTET, _OCTET, _OCTET, _OCTET).map(".".join)
_SAVED_SERVICE = st.tuples(st.sampled_from(["-A", "-E"]), st.sampled_from(["-t", "-u"]), _IP,
                           st.integers(1, 65535), st.sampled_from(["wlc", "rr", "wrr", "lc", "sh", "mh"]),
                           st.sampled_from([[], ["-p"], ["-p", "600"]])).map(
    lambda t: [t[0], t[1], f"{t[2]}:{t[3]}", "-s", t[4], *t[5]])
_SAVED_DEST = st.tuples(st.sampled_from(["-a", "-e"]), st.sampled_from(["-t", "-u"]), _IP, st.integers(1, 65535),
                        _IP, st.integers(0, 65535), st.sampled_from(["-m", "-g", "-i"]),
                        st.integers(0, 2**31 - 1), st.sampled_from([[], ["-x", "10", "-y", "5"]])).map(
    lambda t: [t[0], t[1], f"{t[2]}:{t[3]}", "-r", f"{t[4]}:{t[5]}", t[6], "-w", str(t[7]), *t[8]])
_SAVED_FWM = st.tuples(st.integers(1, 2**31 - 1), _IP, st.integers(0, 65535)).map(
    lambda t: [["-A", "-f", str(t[0]), "-s", "rr"], ["-a", "-f", str(t[0]), "-r", f"{t[1]}:{t[2]}", "-g", "-w", "1"]])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_LINE)
def test_fast_path_agrees_with_popt_emulation(tokens):
    t, _out, err = tool(LocalTransport(NetnsIPVS()))
    fast = t.fast_command(tokens)
    assert err.getvalue() == ""
    if fast is None:
        return  # the full emulation handles it, by definition the same
    queued, full_err, code = full_path(tokens)
    assert (full_err, code) == ("", None), tokens
    assert len(queued) == 1
    assert (queued[0][0], json.dumps(queued[0][1])) == (fast[0], json.dumps(fast[1])), tokens


@settings(max_examples=200, deadline=None)
@given(st.one_of(_SAVED_SERVICE, _SAVED_DEST))
def test_saved_rules_take_the_fast_path(tokens):
    t, _out, _err = tool(LocalTransport(NetnsIPVS()))
    fast = t.fast_command(tokens)
    assert fast is not None, tokens
    queued, full_err, code = full_path(tokens)
    assert (full_err, code, len(queued)) == ("", None, 1)
    assert (queued[0][0], json.dumps(queued[0][1])) == (fast[0], json.dumps(fast[1]))


def _restore(text: str, fast: bool, batch: bool):
    ipvs = NetnsIPVS()
    tr = Recording(ipvs, batch=batch)
    t, out, err = tool(tr, text)
    t.fast = fast
    try:
        rc = t.restore_table(False)
    except _Exit as e:
        rc = e.code
    saved = io.StringIO()
    ipvsadm.main(["-S", "-n"], transport=LocalTransport(ipvs), stdout=saved, stderr=io.StringIO())
    return rc, out.getvalue(), err.getvalue(), tr.seen, saved.getvalue()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_LINE, _SAVED_SERVICE, _SAVED_DEST, _SAVED_FWM.map(lambda p: p[0]),
                          _SAVED_FWM.map(lambda p: p[1])), max_size=25))
def test_restore_is_the_same_with_and_without_fast_path_and_batches(lines):
    text = "".join(" ".join(words) + "\n" for words in lines)
    reference = _restore(text, fast=False, batch=False)
    assert _restore(text, fast=True, batch=False) == reference
    batched = _restore(text, fast=False, batch=True)
    assert _restore(text, fast=True, batch=True) == batched
    # With BATCH the requests travel differently (and listings leave out
    # counters nobody prints); what the user sees and the table are the same.
    rc, out, err, _seen, saved = batched
    assert (rc, out, err, saved) == (reference[0], reference[1], reference[2], reference[4])


def test_restore_batches_report_errors_in_line_order(monkeypatch):
    """Errors of batched commands come out in line order, before a later
    line's own message, across several batches (with a small batch size)."""
    monkeypatch.setattr(ipvsadm, "_BATCH_SIZE", 3)
    lines = ["-A -t 10.0.0.1:80 -s rr"]
    for i in range(10):
        lines.append(f"-a -t 10.0.0.{1 + i % 2}:80 -r 172.16.0.{2 + i}:80 -m")  # odd i: no such service
    lines += ["-A -t 10.0.0.1:80 -s rr", "-a -t 10.0.0.1:80 -r 172.16.0.2:80 -w x", "-A -t 10.0.0.9:80"]
    text = "\n".join(lines) + "\n"
    expected = ("Service not defined\n" * 5 + "Service already exists\n" + "illegal weight specified\n")
    for fast in (True, False):
        rc, out, err, _seen, saved = _restore(text, fast=fast, batch=True)
        assert (rc, out, err) == (2, "", expected)
        assert "10.0.0.9" not in saved and saved.count("-a ") == 5


def test_restore_status_is_the_last_lines():
    """-R's status is the last line's: 255 if its command failed, else 0."""
    for last, status in (("-A -t 10.0.0.1:80", 255), ("-A -t 10.0.0.2:80", 0)):
        text = f"-A -t 10.0.0.1:80\n-A -t 10.0.0.1:80\n{last}\n"
        rc, _out, err, _seen, _saved = _restore(text, fast=True, batch=True)
        assert (ipvsadm._exit_status(rc), err.count("Service already exists")) == (status, 1 + (status == 255))


# --------------------------------------------------------------------------
# Sorting


_U32 = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2**31 - 1, 2**31, 2**31 + 1, 2**32 - 1]))


def _service(fwmark, af, proto, words, port):
    addr = b"".join(w.to_bytes(4, "big") for w in words) if af == AF_INET6 else words[0].to_bytes(4, "big") + bytes(12)
    return ServiceEntry(af, proto, addr, port, fwmark, "wlc", "", 0, 0, 0, (0,) * 10)


_services = st.lists(st.builds(
    _service, st.one_of(st.just(0), _U32), st.sampled_from([AF_INET, AF_INET6]),
    st.sampled_from([IPPROTO_TCP, IPPROTO_UDP]), st.lists(_U32, min_size=4, max_size=4), st.integers(0, 65535)),
    max_size=40)


@settings(max_examples=150, deadline=None)
@given(_services)
def test_sort_services_is_glibc_merge_sort(items):
    assert sort_services(items) == glibc_qsort(items, cmp_services)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.builds(
    lambda af, words, port: DestEntry(af, b"".join(w.to_bytes(4, "big") for w in words), port, 0, 1, 0, 0, 0,
                                      0, 0, 0, 0, 0, (0,) * 10),
    st.sampled_from([AF_INET, AF_INET, AF_INET6]),
    st.lists(_U32, min_size=4, max_size=4).map(lambda w: w), st.integers(0, 65535)), max_size=30))
def test_sort_dests_is_glibc_merge_sort(items):
    assert sort_dests(items) == glibc_qsort(items, cmp_dests)


def test_sort_takes_the_merge_sort_when_the_comparator_wraps():
    """1.0.0.0 lists after 200.0.0.0 (its difference wraps): the fast sort
    must not 'fix' that."""
    a, b = (_service(0, AF_INET, IPPROTO_TCP, [w, 0, 0, 0], 80) for w in (0x01000000, 0xC8000000))
    assert sort_services([a, b]) == [b, a] == glibc_qsort([a, b], cmp_services)


def test_batch_dispatch_matches_single_requests():
    """The same commands one by one and in one BATCH leave the same table and replies."""
    reqs = [
        {"version": 1, "cmd": "NEW_SERVICE", "service": {"af": AF_INET, "protocol": IPPROTO_TCP, "addr": "10.0.0.1",
                                                          "port": 80, "sched_name": "rr",
                                                          "flags": {"flags": 0, "mask": 2**32 - 1},
                                                          "timeout": 0, "netmask": 2**32 - 1}},
        {"version": 1, "cmd": "NEW_DEST", "service": {"af": AF_INET, "protocol": IPPROTO_TCP, "addr": "10.0.0.1",
                                                       "port": 80},
         "dest": {"addr": "172.16.0.2", "port": 80, "fwd_method": 0, "weight": 1, "u_threshold": 0,
                  "l_threshold": 0}},
    ]
    reqs.append(reqs[1])  # EEXIST
    one, many = NetnsIPVS(), NetnsIPVS()
    singles = [dispatch(one, r, 0) for r in reqs]
    batch = dispatch(many, {"version": 1, "cmd": "BATCH", "requests": reqs}, 0)
    assert batch["ok"] and batch["replies"] == singles and [r["ok"] for r in singles] == [True, True, False]
    get = {"version": 1, "cmd": "GET_SERVICE"}
    assert dispatch(one, get, 0) == dispatch(many, get, 0)


def _config_stream_reference(text: str):
    """config_stream.c's words, the slow way: split at spaces, tabs and CRs only."""
    lines = text.split("\n")
    last = lines.pop()
    for line in lines:
        yield [w for w in re.findall(r"[^ \t\r]+", line) if w != "ipvsadm"]
    words = [w for w in re.findall(r"[^ \t\r]+", last) if w != "ipvsadm"]
    if words and len(last) - len(last.rstrip(" \t\r")) < 2:
        yield words


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["ipvsadm", "-A", "x", " ", "  ", "\t", "\r", "\n", "\x0b", "\x0c", "\x1c", "\x85",
                                 "\xa0", "\u3000", "é"]), max_size=30).map("".join))
def test_config_stream_read_splits_only_at_spaces_tabs_and_crs(text):
    assert list(config_stream_read(text)) == list(_config_stream_reference(text))


# --------------------------------------------------------------------------
# Over the real control socket: batches in flight while -R parses on


def _main(argv, stdin="", transport=None):
    out, err = io.StringIO(), io.StringIO()
    rc = ipvsadm.main(argv, transport=transport, stdout=out, stderr=err, stdin=io.StringIO(stdin), resolver=NoDNS())
    return rc, out.getvalue(), err.getvalue()


def test_restore_and_listings_over_the_socket_match_local(tmp_path, monkeypatch):
    from tests.test_daemon import ThreadDaemon

    monkeypatch.setattr(ipvsadm, "_BATCH_SIZE", 7)  # many batches, two in flight
    lines = []
    for i in range(40):
        lines.append(f"-A -t 10.0.{i % 3}.{i}:80 -s wlc")
        lines += [f"-a -t 10.0.{i % 3}.{i}:80 -r 172.16.{k}.{i % 7 + 2}:8080 -m -w {k}" for k in range(3)]
        if i % 9 == 4:
            lines += [f"-a -t 10.0.{i % 3}.{i}:81 -r 172.16.0.2 -m", f"-A -t 10.0.{i % 3}.{i}:80"]  # ESRCH, EEXIST
    lines += ["-A -f 5 -s rr -p", "-a -f 5 -r 172.16.9.9 -g -w 2", "-L -n", "-a -t 10.0.0.0:80 -r 1.2.3.4 -w z"]
    text = "\n".join(lines) + "\n"

    local = LocalTransport(NetnsIPVS())
    expected = _main(["-R"], text, local)
    assert expected[0] == 2 and expected[2].count("Service not defined") == 4  # the rules do fail, as planned
    d = ThreadDaemon(str(tmp_path / "ipvsd.sock"))
    try:
        sock = ["--socket", d.path]
        assert _main(sock + ["-R"], text) == expected
        for argv in (["-Ln"], ["-S", "-n"], ["-Ln", "--stats"], ["-Ln", "--rate", "--exact"], ["-Ln", "--nosort"],
                     ["-Ln", "--thresholds"], ["-Ln", "--persistent-conn"]):
            assert _main(sock + argv) == _main(argv, transport=local), argv
    finally:
        d.stop()
