"""The offline backend's reading of a scenario (ipvs_harness/diff/offline.py,
ipvs_harness/sandbox.py): !sh lines, raw MARK rules, host names, run-time
values, and a script that edits /etc without touching this host's."""

from __future__ import annotations

import os

import pytest

from ipvs_harness import sandbox
from ipvs_harness.diff.offline import GuestResolver, _cmd_key, _iptables_mark, _sh_commands, extract_events


def test_sh_commands_split_at_unquoted_separators_only():
    line = 'ipvsadm -Ln > "$OUT/a;b.txt"; ipvsadm -Lnc>x && echo \'q;r\' || echo "x\\";y"'
    assert _sh_commands(line) == ['ipvsadm -Ln > "$OUT/a;b.txt"', "ipvsadm -Lnc>x", "echo 'q;r'", 'echo "x\\";y"']
    # The guest stamps each command as bash prints it (re-spaced).
    assert _cmd_key("ipvsadm -Lnc>x") == _cmd_key("ipvsadm  -Lnc >x")


def test_raw_mangle_mark_rules_become_mark_rules():
    argv = "iptables -t mangle -A PREROUTING -d 203.0.113.0/24 -p tcp --dport 80 -j MARK --set-mark 5".split()
    assert _iptables_mark(argv) == ["-A", "-d", "203.0.113.0/24", "-p", "tcp", "--dport", "80", "--set-mark", "5"]
    # A match PyIPVS's mark rules lack: not silently half-applied.
    assert _iptables_mark("iptables -t mangle -A PREROUTING -i eth0 -j MARK --set-mark 5".split()) is None
    assert _iptables_mark("iptables -A INPUT -j DROP".split()) is None


def test_guest_resolver_answers_from_the_scenarios_hosts():
    r = GuestResolver([("127.0.0.1", ["localhost"]), ("172.16.0.3", ["rs2.example.test", "rs2"]),
                       ("::1", ["localhost"]), ("172.16.0.3", ["other"])])
    assert r.host_to_addr("rs2") == bytes([172, 16, 0, 3]) and r.host_to_addr("other") == bytes([172, 16, 0, 3])
    assert r.addr_to_host(2, bytes([172, 16, 0, 3])) == "rs2.example.test"
    assert r.host_to_addr("example.org") is None
    assert GuestResolver().host_to_addr("localhost") == bytes([127, 0, 0, 1])


@pytest.mark.skipif(os.geteuid() != 0, reason="a private /etc needs root here")
def test_scenario_edits_a_private_etc_and_values_come_from_the_golden(tmp_path):
    before = open("/etc/hosts").read()
    golden = tmp_path / "golden"
    golden.mkdir()
    (golden / "value-t.txt").write_text("1234\n")
    scen = tmp_path / "s.sh"
    scen.write_text('. "$LIB/oracle.sh"\necho "172.16.0.3 rs2.example.test" >> /etc/hosts\n'
                    'T=$(value t date +%s)\nipvsadm -A -t 203.0.113.5:$T\n')
    hosts: list = []
    events = extract_events(str(scen), hosts=hosts, golden=str(golden))
    assert open("/etc/hosts").read() == before
    assert ("172.16.0.3", ["rs2.example.test"]) in hosts and hosts[0] == ("127.0.0.1", ["localhost"])
    assert ("ipvsadm", ["-A", "-t", "203.0.113.5:1234"], []) in events


@pytest.mark.skipif(os.geteuid() != 0, reason="a private /etc needs root here")
def test_records_keep_their_lines_while_a_background_helper_records_too(tmp_path):
    """A helper a scenario starts with ``&`` (ftp.py's server) appends its
    own records to the same file; one that landed between ``ipvs_rules``
    and its lines took them as its own, and the scenario ran without its
    rules (the CI of 7 Dec 2026, under load, twice: bash's printf writes a
    block line by line).  The stub writes a record and its lines in one
    write(2).  Records of 300 lines: with one write per line the helper's
    records land among them in every run."""
    rules = [f"-A -t 203.0.113.5:{port} -s rr" for port in range(1000, 1300)]
    body = "\n".join(rules)
    scen = tmp_path / "s.sh"
    scen.write_text('. "$LIB/oracle.sh"\n'
                    '(for i in $(seq 3000); do printf "ftp_server\\n" >> "$DIFF_EVENTS"; done) &\n'
                    + f"for i in $(seq 20); do ipvs_rules <<'EOF'\n{body}\nEOF\ndone\nwait\n")
    events = extract_events(str(scen))
    assert [e.stdin for e in events if e.kind == "ipvs_rules"] == [rules] * 20
    assert all(not e.stdin for e in events if e.kind == "ftp_server")
    assert sum(e.kind == "ftp_server" for e in events) == 3000


def test_sandbox_refuses_loudly_when_it_cannot_isolate():
    class P:
        returncode = sandbox.NO_SANDBOX

    with pytest.raises(RuntimeError, match="private /etc"):
        sandbox.check(P())
