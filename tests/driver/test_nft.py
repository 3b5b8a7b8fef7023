"""ipvs/driver/nft.py: the owner table goes with ipvsd, br_netfilter is refused.

The nftables tests run in a network namespace of their own (named with
``$IPVS_LAB_PREFIX``) and delete it when done.
"""

from __future__ import annotations

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
    and blackholed the VIP.  The table is owned by ipvsd's netlink socket."""
    if not _libnftables():
        pytest.skip("libnftables is not installed")
    ns = f"{os.environ.get('IPVS_LAB_PREFIX', 'pyipvs')}-nft-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        code = textwrap.dedent("""
            import os, signal, subprocess, sys
            from ipvs.driver import nft
            nft.install(["veth-in"], ("198.51.100.1", 50000, 50100), ifaces=["veth-out", "veth-in"])
            nft.sync_services({(bytes([203, 0, 113, 5]), 6, 80)})
            listing = subprocess.run(["nft", "list", "table", "ip", "pyipvs"], capture_output=True, text=True)
            sys.stdout.write(listing.stdout)
            sys.stdout.flush()
            # Nobody else may delete it while its owner lives.
            other = subprocess.run(["nft", "delete", "table", "ip", "pyipvs"], capture_output=True, text=True)
            sys.stdout.write("other delete: %d\\n" % other.returncode)
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        """)
        p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == -9, p.stderr
        assert "flags owner" in p.stdout and "203.0.113.5" in p.stdout, p.stdout
        assert "other delete: 1" in p.stdout
        tables = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"], capture_output=True,
                                text=True, timeout=30)
        assert "pyipvs" not in tables.stdout
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
