"""ipvs/driver/nft.py: the rules of both families' tables, the owner
tables go with ipvsd, br_netfilter is refused, the ip6 table keeps
neighbour discovery and ping for the kernel while it drops the traffic
the driver takes, and spare mode's netdev table hides a NIC's frames from
the kernel but not from the packet tap.

The nftables tests run in network namespaces of their own (named with
``$IPVS_LAB_PREFIX``) and delete them when done.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from ipvs.driver import nft

ROOT = Path(__file__).resolve().parents[2]


def _rules(script: str) -> list[str]:
    """The rule lines of a table's ``pre`` chain, in order."""
    body = script.split("policy accept;\n", 1)[1]
    return [line.strip() for line in body.splitlines() if line.strip() not in ("}", "")]


def test_the_ip_table_rules():
    script = nft.table_script("ip", ["br-in"], ("198.51.100.1", 50000, 50100))
    assert script.startswith("table ip pyipvs {\n  flags owner;\n  set vips { type ipv4_addr; }\n")
    assert "type filter hook prerouting priority -500; policy accept;" in script
    assert _rules(script) == [
        "ip daddr @vips meta l4proto { tcp, udp, sctp } drop",
        "ip daddr @vips ip frag-off & 0x1fff != 0 ip protocol != icmp drop",
        "ip daddr 198.51.100.1 meta l4proto { tcp, udp } th dport 50000-50100 drop",
        'iifname "br-in" fib daddr type != { local, broadcast, multicast } drop',
    ]
    bare = nft.table_script("ip", [], None, owner=False)
    assert "flags owner" not in bare and "th dport" not in bare and "iifname" not in bare


def test_the_ip6_table_mirrors_the_ip_table_and_never_drops_neighbour_discovery():
    script = nft.table_script("ip6", ["br-in", "eth2"])
    assert script.startswith("table ip6 pyipvs {\n  flags owner;\n  set vips { type ipv6_addr; }\n")
    assert "type filter hook prerouting priority -500; policy accept;" in script
    rules = _rules(script)
    # Neighbour discovery first: accepted before any drop can see it.
    assert rules[0] == ("icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, "
                        "nd-neighbor-advert, nd-redirect } accept")
    assert rules[1:] == [
        "ip6 daddr @vips meta l4proto { tcp, udp, sctp } drop",
        # Large pings to a VIP (the kernel answers them) still reassemble.
        "ip6 daddr @vips frag frag-off != 0 frag nexthdr != ipv6-icmp drop",
        'iifname "br-in" fib daddr type != { local, anycast, multicast } drop',
        'iifname "eth2" fib daddr type != { local, anycast, multicast } drop',
    ]
    assert not any("icmp" in r and r.endswith("drop") and "!= ipv6-icmp" not in r for r in rules)
    assert "flags owner" not in nft.table_script("ip6", [], owner=False)
    with pytest.raises(ValueError, match="IPv4 only"):
        nft.table_script("ip6", [], ("2001:db8::1", 1, 2))
    with pytest.raises(ValueError):
        nft.table_script("inet", [])


def test_the_sets_follow_the_services_by_family():
    v4, v6, v6b = (ipaddress.ip_address(a).packed for a in ("203.0.113.5", "2001:db8:0:5::5", "2001:db8::6"))
    svcs = {(v4, 6, 80), (v4, 17, 7), (v6, 6, 80), (v6b, 132, 9), (ipaddress.ip_address("2001:db8::7").packed, 1, 0)}
    assert nft.sets_script(svcs).splitlines() == [
        "flush set ip pyipvs vips",
        "add element ip pyipvs vips { 203.0.113.5 }",
        "flush set ip6 pyipvs vips",
        "add element ip6 pyipvs vips { 2001:db8::6, 2001:db8:0:5::5 }",
    ]
    # Only the installed tables; an empty set is flushed and left empty.
    assert nft.sets_script({(v6, 6, 80)}, ("ip",)).splitlines() == ["flush set ip pyipvs vips"]


def _netns(tag: str) -> str:
    return f"{os.environ.get('IPVS_LAB_PREFIX', 'pyipvs')}-{tag}-{uuid.uuid4().hex[:6]}"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nft") is None,
                    reason="needs root, iproute2 and nft")
def test_nft_accepts_the_generated_tables():
    """``nft -c`` (check only) takes both tables, the masquerading rule and
    the sets' updates: the text is nft's, not just what the tests expect."""
    ns = _netns("nftc")
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        script = (nft.table_script("ip", ["br-in"], ("198.51.100.1", 50000, 50100), owner=False)
                  + nft.table_script("ip6", ["br-in"], owner=False)
                  + nft.sets_script({(ipaddress.ip_address("203.0.113.5").packed, 6, 80),
                                     (ipaddress.ip_address("2001:db8:0:5::5").packed, 6, 80)}))
        r = subprocess.run(["ip", "netns", "exec", ns, "nft", "-c", "-f", "-"], input=script, text=True,
                           capture_output=True, timeout=30)
        assert r.returncode == 0, r.stderr
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_br_netfilter_on_a_bridge_is_refused(tmp_path):
    proc = tmp_path / "bridge-nf-call-iptables"
    sys_net = tmp_path / "net"
    (sys_net / "br0" / "bridge").mkdir(parents=True)
    (sys_net / "veth0" / "brport").mkdir(parents=True)
    (sys_net / "eth0").mkdir(parents=True)
    proc.write_text("1\n")
    for ifaces in (["eth0", "br0"], ["veth0"]):
        with pytest.raises(RuntimeError, match="bridge-nf-call-iptables=0"):
            nft.check_br_netfilter(ifaces, str(proc), str(sys_net))
    nft.check_br_netfilter(["eth0"], str(proc), str(sys_net))  # a warning only
    proc.write_text("0\n")
    nft.check_br_netfilter(["br0"], str(proc), str(sys_net))
    nft.check_br_netfilter(["br0"], str(tmp_path / "absent"), str(sys_net))
    # IPv6 (the ip6 table): bridged IPv6 through the ip6 hooks is refused the same way.
    proc6 = tmp_path / "bridge-nf-call-ip6tables"
    proc6.write_text("1\n")
    with pytest.raises(RuntimeError, match="bridge-nf-call-ip6tables=0"):
        nft.check_br_netfilter(["br0"], str(proc), str(sys_net), proc6=str(proc6))
    nft.check_br_netfilter(["br0"], str(proc), str(sys_net))  # IPv4 only: not looked at
    proc6.write_text("0\n")
    nft.check_br_netfilter(["br0"], str(proc), str(sys_net), proc6=str(proc6))


def _libnftables() -> bool:
    try:
        nft.Session().close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nft") is None,
                    reason="needs root, iproute2 and nft")
def test_the_table_goes_with_a_killed_daemon():
    """Issue 13: after SIGKILL in shared mode the table's drop rules stayed
    and blackholed the VIP.  The tables (IPv4 and IPv6) are owned by
    ipvsd's netlink socket."""
    if not _libnftables():
        pytest.skip("libnftables is not installed")
    ns = _netns("nft")
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        code = textwrap.dedent("""
            import os, signal, subprocess, sys
            from ipvs.driver import nft
            nft.install(["veth-in"], ("198.51.100.1", 50000, 50100), ifaces=["veth-out", "veth-in"],
                        inner_ifs6=["veth-in"])
            nft.sync_services({(bytes([203, 0, 113, 5]), 6, 80),
                               (bytes.fromhex("20010db8000000050000000000000005"), 6, 80)})
            for family in ("ip", "ip6"):
                listing = subprocess.run(["nft", "list", "table", family, "pyipvs"], capture_output=True, text=True)
                sys.stdout.write(listing.stdout)
                # Nobody else may delete it while its owner lives.
                other = subprocess.run(["nft", "delete", "table", family, "pyipvs"], capture_output=True, text=True)
                sys.stdout.write("other delete %s: %d\\n" % (family, other.returncode))
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        """)
        p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == -9, p.stderr
        assert p.stdout.count("flags owner") == 2 and "203.0.113.5" in p.stdout, p.stdout
        assert "table ip6 pyipvs" in p.stdout and "2001:db8:0:5::5" in p.stdout, p.stdout
        assert "other delete ip: 1" in p.stdout and "other delete ip6: 1" in p.stdout
        tables = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"], capture_output=True,
                                text=True, timeout=30)
        assert tables.returncode == 0 and "pyipvs" not in tables.stdout, tables.stdout
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.mark.skipif(os.geteuid() != 0 or any(shutil.which(t) is None for t in ("ip", "nft", "ping", "curl")),
                    reason="needs root, iproute2, nft, ping and curl")
def test_the_ip6_table_keeps_neighbour_discovery_and_ping_for_the_kernel():
    """The ip6 table alone (no driver), on a host between a client (outer)
    and a real server (inner), three namespaces joined by veth pairs.  The
    kernel still resolves and answers the VIP and its own addresses
    (neighbour discovery, ping, also a fragmented one, TCP to its own
    address), while TCP to the VIP and the real server's traffic through
    the host, which it forwarded before the table came, are dropped."""
    c, h, r = (_netns(f"nft6{n}") for n in "chr")
    vip = "2001:db8:0:5::5"
    for ns in (c, h, r):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "link", "add", "o0", "netns", h, "type", "veth", "peer", "name", "c0", "netns", c],
                       check=True)
        subprocess.run(["ip", "link", "add", "i0", "netns", h, "type", "veth", "peer", "name", "e0", "netns", r],
                       check=True)
        setup = {
            h: ["link set lo up", "link set o0 up", "link set i0 up", "addr add 2001:db8:0:1::1/64 dev o0 nodad",
                f"addr add {vip}/128 dev o0 nodad", "addr add 2001:db8:0:2::1/64 dev i0 nodad"],
            c: ["link set lo up", "link set c0 up", "addr add 2001:db8:0:1::2/64 dev c0 nodad",
                "route add 2001:db8:0:5::/64 dev c0", "route add 2001:db8:0:2::/64 via 2001:db8:0:1::1"],
            r: ["link set lo up", "link set e0 up", "addr add 2001:db8:0:2::2/64 dev e0 nodad",
                "route add default via 2001:db8:0:2::1"],
        }
        for ns, lines in setup.items():
            subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n", text=True, check=True)
        subprocess.run(["ip", "netns", "exec", h, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"], check=True)

        def ping(ns: str, dst: str, *opts: str) -> bool:
            # Up to 5 tries 0.2 s apart (the veths' first moments lose one):
            # success is any answer.
            return subprocess.run(["ip", "netns", "exec", ns, "ping", "-6", "-n", "-c", "5", "-i", "0.2", "-w", "3",
                                   *opts, dst], capture_output=True, timeout=30).returncode == 0

        def curl(dst: str) -> int:
            return subprocess.run(["ip", "netns", "exec", c, "curl", "-s", "-m", "2", f"http://[{dst}]:9/"],
                                  capture_output=True, timeout=30).returncode

        assert ping(r, "2001:db8:0:1::2"), "the host forwards between the real server and the client"
        assert curl(vip) == 7  # refused by the kernel
        script = (nft.table_script("ip6", ["i0"], owner=False)
                  + nft.sets_script({(ipaddress.ip_address(vip).packed, 6, 80)}, ("ip6",)))
        subprocess.run(["ip", "netns", "exec", h, "nft", "-f", "-"], input=script, text=True, check=True,
                       capture_output=True, timeout=30)
        subprocess.run(["ip", "-n", c, "neigh", "flush", "dev", "c0"], check=True)
        subprocess.run(["ip", "-n", r, "neigh", "flush", "dev", "e0"], check=True)
        assert ping(c, vip), "the kernel resolves and answers the VIP"
        assert ping(c, vip, "-s", "3000"), "a fragmented ping to the VIP reassembles"
        assert ping(c, "2001:db8:0:1::1") and ping(r, "2001:db8:0:2::1"), "the kernel's own addresses answer"
        assert curl("2001:db8:0:1::1") == 7, "TCP to the kernel's own address reaches it"
        assert curl(vip) == 28, "TCP to the VIP is dropped (a timeout, not the kernel's reset)"
        assert not ping(r, "2001:db8:0:1::2"), "the real server's traffic through the host is dropped"
    finally:
        for ns in (c, h, r):
            subprocess.run(["ip", "netns", "del", ns], check=False)


def test_the_spare_table_drops_everything_on_each_nic_at_ingress():
    script = nft.spare_script(["d_out", "br-in"])
    assert script.startswith("table netdev pyipvs {\n  flags owner;\n")
    chains = [line.strip() for line in script.splitlines() if line.strip().startswith("type ")]
    assert chains == ['type filter hook ingress device "d_out" priority -500; policy drop;',
                      'type filter hook ingress device "br-in" priority -500; policy drop;']
    assert "flags owner" not in nft.spare_script(["eth1"], owner=False)
    for bad in ("", 'a"b', "a b", "a\\b"):
        with pytest.raises(ValueError, match="cannot be quoted"):
            nft.spare_script([bad])


@pytest.mark.skipif(os.geteuid() != 0 or any(shutil.which(t) is None for t in ("ip", "nft", "ping")),
                    reason="needs root, iproute2, nft and ping")
def test_the_spare_table_hides_frames_from_the_kernel_not_from_the_tap_and_goes_with_its_daemon():
    """A host whose NIC has a kernel address (so the kernel would answer a
    ping) and a packet tap on it: with the spare table the tap still gets
    the pings, the kernel answers none, nobody else may delete the table,
    and after SIGKILL of its owner the kernel answers again."""
    if not _libnftables():
        pytest.skip("libnftables is not installed")
    c, h = _netns("sparec"), _netns("spareh")
    for ns in (c, h):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "link", "add", "h0", "netns", h, "type", "veth", "peer", "name", "c0", "netns", c],
                       check=True)
        for ns, dev, addr in ((h, "h0", "198.51.100.1/24"), (c, "c0", "198.51.100.2/24")):
            subprocess.run(["ip", "-n", ns, "-batch", "-"], text=True, check=True,
                           input=f"link set lo up\nlink set {dev} up\naddr add {addr} dev {dev}\n")

        def ping() -> bool:
            return subprocess.run(["ip", "netns", "exec", c, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "1",
                                   "198.51.100.1"], capture_output=True, timeout=30).returncode == 0

        assert ping(), "the kernel answers before the table"
        code = textwrap.dedent("""
            import os, select, signal, socket, subprocess, sys, time
            from ipvs.driver import nft
            tap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
            tap.bind(("h0", 0x0003))
            sys.stdout.write("installed %s\\n" % nft.install_spare(["h0"]))
            other = subprocess.run(["nft", "delete", "table", "netdev", "pyipvs"], capture_output=True)
            sys.stdout.write("other delete: %d\\n" % other.returncode)
            sys.stdout.write("ready\\n")
            sys.stdout.flush()
            echoes = 0
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline and echoes < 3:
                if select.select([tap], [], [], 0.2)[0]:
                    frame = tap.recv(2048)
                    # IPv4, ICMP, echo request to the host's address
                    if frame[12:14] == b"\\x08\\x00" and frame[23] == 1 and frame[34] == 8:
                        echoes += 1
            sys.stdout.write("tap saw %d echo requests\\n" % echoes)
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        """)
        p = subprocess.Popen(["ip", "netns", "exec", h, sys.executable, "-c", code], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            lines = []
            while not lines or lines[-1] != "ready":
                line = p.stdout.readline()
                assert line, p.stderr.read()
                lines.append(line.strip())
            answered = ping()
            out, err = p.communicate(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert lines[:2] == ["installed True", "other delete: 1"], (lines, err)
        assert not answered, "the kernel answered through the spare table"
        assert "tap saw 3 echo requests" in out, (out, err)
        assert p.returncode == -9, err
        tables = subprocess.run(["ip", "netns", "exec", h, "nft", "list", "tables"], capture_output=True,
                                text=True, timeout=30)
        assert "pyipvs" not in tables.stdout, tables.stdout
        assert ping(), "the kernel answers again once the table's owner is gone"
    finally:
        for ns in (c, h):
            subprocess.run(["ip", "netns", "del", ns], check=False)
