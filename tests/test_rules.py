"""ipvs/rules.py: ipvsadm -S's lines, -R's words, Debian's rules file (comments), atomic writes, missing files."""

from __future__ import annotations

import io
import os

import pytest

from ipvs import rules, uapi
from ipvs.cli import ipvsadm
from ipvs.netlink import LocalTransport
from ipvs.netns import NetnsIPVS
from ipvs.uapi import AF_INET, AF_INET6, IPPROTO_UDP

DEBIAN = "# ipvsadm.rules\n#\n\n# saved by the service\n-A -t 203.0.113.5:80 -s wlc\n  # a note\n\n" \
         "-a -t 203.0.113.5:80 -r 172.16.0.2:80 -m -w 1\n"


def test_parse_splits_header_comments_and_rules():
    text = rules.parse(DEBIAN)
    assert text.header == ["# ipvsadm.rules", "#", "", "# saved by the service"]
    assert text.rules == ["-A -t 203.0.113.5:80 -s wlc", "-a -t 203.0.113.5:80 -r 172.16.0.2:80 -m -w 1"]


def test_a_missing_file_is_an_empty_rule_set(tmp_path):
    text = rules.read(str(tmp_path / "none"))
    assert text == rules.RulesText([], [], exists=False)


def test_restore_then_save_round_trips(tmp_path):
    """A Debian file's rule lines through ipvsadm -R, and back as ipvsadm -S -n prints them."""
    ipvs = NetnsIPVS()
    tr = LocalTransport(ipvs)
    err = io.StringIO()
    assert ipvsadm.restore(rules.parse(DEBIAN).rules, tr, err) == 0, err.getvalue()
    assert ipvsadm.save(tr) == "-A -t 203.0.113.5:80 -s wlc\n-a -t 203.0.113.5:80 -r 172.16.0.2:80 -m -w 1\n"


def test_ipvsadm_r_has_no_comments():
    """ipvsadm -R itself fails on a comment line, as 1.31 does: only a rules
    file's reader (rules.parse, Debian's init script) drops them."""
    tr = LocalTransport(NetnsIPVS())
    err = io.StringIO()
    rc = ipvsadm.main(["-R"], transport=tr, stdin=io.StringIO(DEBIAN), stdout=io.StringIO(), stderr=err)
    assert rc != 0 and err.getvalue()
    assert [w for w in rules.config_stream_read("# a\nipvsadm -C \n")] == [["#", "a"], ["-C"]]


@pytest.mark.parametrize("fields, line", [
    (dict(flags=0, timeout=0, af=AF_INET, netmask=0xFFFFFFFF, pe_name=""), "-A -t 1.2.3.4:80 -s rr"),
    (dict(flags=uapi.IP_VS_SVC_F_PERSISTENT, timeout=300, af=AF_INET, netmask=0xFFFFFF00, pe_name="sip"),
     "-A -t 1.2.3.4:80 -s rr -p 300 -M 255.255.255.0 --pe sip"),
    (dict(flags=uapi.IP_VS_SVC_F_PERSISTENT, timeout=60, af=AF_INET6, netmask=64, pe_name=""),
     "-A -t 1.2.3.4:80 -s rr -p 60 -M 64"),
    (dict(flags=uapi.IP_VS_SVC_F_ONEPACKET | uapi.IP_VS_SVC_F_SCHED1 | uapi.IP_VS_SVC_F_SCHED3, timeout=0, af=AF_INET,
          netmask=0xFFFFFFFF, pe_name=""), "-A -t 1.2.3.4:80 -s rr -o -b flag-1,flag-3"),
])
def test_service_line(fields, line):
    assert rules.service_line("-t 1.2.3.4:80", "rr", **fields) == line


def test_service_option_and_sched_flags():
    assert rules.service_option(IPPROTO_UDP, 0, AF_INET, "1.2.3.4:53") == "-u 1.2.3.4:53"
    assert rules.service_option(99, 0, AF_INET, "1.2.3.4:53") == "--xxx-service 1.2.3.4:53"
    assert rules.service_option(0, 0xFFFFFFFF, AF_INET6, "") == "-f -1 -6"  # ipvsadm's %d of a u32
    flags = uapi.IP_VS_SVC_F_SCHED_SH_FALLBACK | uapi.IP_VS_SVC_F_SCHED_SH_PORT
    assert rules.sched_flags_text("sh", flags) == "sh-fallback,sh-port"
    assert rules.sched_flags_text("mh", uapi.IP_VS_SVC_F_SCHED_MH_PORT) == "mh-port"


@pytest.mark.parametrize("fwd, tun, line", [
    (uapi.IP_VS_CONN_F_MASQ, (0, 0, 0), "-m -w 2"),
    (uapi.IP_VS_CONN_F_LOCALNODE, (0, 0, 0), "-g -w 2"),
    (uapi.IP_VS_CONN_F_DROUTE, (0, 0, 0), "-g -w 2"),
    (uapi.IP_VS_CONN_F_TUNNEL, (uapi.IP_VS_CONN_F_TUNNEL_TYPE_IPIP, 0, 0), "-i -w 2 --tun-type ipip"),
    (uapi.IP_VS_CONN_F_TUNNEL, (uapi.IP_VS_CONN_F_TUNNEL_TYPE_GUE, 6080, 1), "-i -w 2 --tun-type gue --tun-port 6080 --tun-csum"),
    (uapi.IP_VS_CONN_F_TUNNEL, (uapi.IP_VS_CONN_F_TUNNEL_TYPE_GRE, 0, 2), "-i -w 2 --tun-type gre --tun-remcsum"),
    (uapi.IP_VS_CONN_F_TUNNEL, (uapi.IP_VS_CONN_F_TUNNEL_TYPE_GRE, 0, 7), "-i -w 2 --tun-type gre (null)"),
])
def test_dest_line(fwd, tun, line):
    assert rules.dest_line("-t 1.2.3.4:80", "10.0.0.2:80", fwd, 2, *tun) == f"-a -t 1.2.3.4:80 -r 10.0.0.2:80 {line}"


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
