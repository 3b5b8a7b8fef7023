"""ipvs/rules.py: Debian's rules file (comments), atomic writes, missing files."""

from __future__ import annotations

import os

import pytest

from ipvs import rules
from ipvs.netlink import LocalTransport
from ipvs.netns import NetnsIPVS

DEBIAN = "# ipvsadm.rules\n#\n\n# saved by the service\n-A -t 203.0.113.5:80 -s wlc\n  # a note\n\n" \
         "-a -t 203.0.113.5:80 -r 172.16.0.2:80 -m -w 1\n"


def test_parse_splits_header_comments_and_rules():
    text = rules.parse(DEBIAN)
    assert text.header == ["# ipvsadm.rules", "#", "", "# saved by the service"]
    assert text.rules == ["-A -t 203.0.113.5:80 -s wlc", "-a -t 203.0.113.5:80 -r 172.16.0.2:80 -m -w 1"]


def test_a_missing_file_is_an_empty_rule_set(tmp_path):
    text = rules.read(str(tmp_path / "none"))
    assert text == rules.RulesText([], [], exists=False)


def test_restore_then_dump_round_trips(tmp_path):
    pytest.importorskip("ipvs.cli.ipvsadm")
    import io

    ipvs = NetnsIPVS()
    tr = LocalTransport(ipvs)
    err = io.StringIO()
    assert rules.restore(rules.parse(DEBIAN).rules, tr, err) == 0, err.getvalue()
    assert rules.dump(tr) == "-A -t 203.0.113.5:80 -s wlc\n-a -t 203.0.113.5:80 -r 172.16.0.2:80 -m -w 1\n"


def test_write_keeps_the_header_and_the_mode(tmp_path):
    path = tmp_path / "ipvsadm.rules"
    path.write_text(DEBIAN)
    path.chmod(0o640)
    rules.write(str(path), "-A -u 203.0.113.5:53 -s rr\n")
    assert path.read_text() == "# ipvsadm.rules\n#\n\n# saved by the service\n-A -u 203.0.113.5:53 -s rr\n"
    assert path.stat().st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == ["ipvsadm.rules"]  # no temporary file left


def test_a_new_file_is_private(tmp_path):
    path = tmp_path / "state"
    rules.write(str(path), "", header=["# state"])
    assert path.read_text() == "# state\n" and path.stat().st_mode & 0o777 == 0o600


def test_bytes_that_are_not_utf8_reach_the_parser(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"# \xff comment\n-A -t 203.0.113.5:80 -s \xfe\n")
    text = rules.read(str(path))
    assert text.rules == ["-A -t 203.0.113.5:80 -s \udcfe"]
