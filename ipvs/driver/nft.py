"""Shared mode: early nftables drop rules so the kernel ignores what we steal.

When the director's NIC keeps its kernel addresses (the VIP among them),
the kernel would answer the stolen traffic too: a SYN to VIP:80 reaches
its TCP stack, which resets it, and real servers' replies get forwarded
or dropped by the kernel's router.  Packet taps (AF_PACKET) run before
netfilter, so a drop in ``prerouting`` at priority -500 (before
connection tracking's -400 and defragmentation) hides these packets from
the kernel without hiding them from the driver.

Everything lives in one table, ``ip pyipvs``: created at start, deleted on
exit, and deleted first by any later start, so a daemon killed with
SIGKILL leaves nothing behind once it runs again (``ipvs-lab down``
deletes it too).  The rules drop:

* packets to a service (address, protocol, port) from the ``svcs`` set,
  which the driver keeps in step with the service table;
* non-first fragments to a VIP (their ports are unknown before
  reassembly; the driver reassembles them);
* TCP/UDP to the masquerading address and port range;
* from the inner interfaces, packets not addressed to the kernel itself
  (the replies and masqueraded traffic the driver routes).

There is no kernel IPVS counterpart: in the kernel, IPVS *is* the hook.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess

TABLE = "pyipvs"
PROTO = {6: "tcp", 17: "udp", 132: "sctp"}


def _run(script: str) -> None:
    nft = shutil.which("nft")
    if nft is None:
        raise RuntimeError("shared mode needs nft (Debian package nftables)")
    r = subprocess.run([nft, "-f", "-"], input=script, text=True, capture_output=True)
    if r.returncode != 0:
        raise RuntimeError(f"nft failed: {r.stderr.strip()}")


def remove() -> None:
    """Delete the table if it exists (at exit, and left over from a SIGKILL)."""
    nft = shutil.which("nft")
    if nft is None:
        return
    subprocess.run([nft, "delete", "table", "ip", TABLE], capture_output=True)


def install(inner_ifs: list[str], masq: tuple[str, int, int] | None) -> None:
    """Create the table with an empty service set (removing any old one)."""
    remove()
    lines = [
        f"table ip {TABLE} {{",
        "  set svcs { type ipv4_addr . inet_proto . inet_service; }",
        "  set vips { type ipv4_addr; }",
        "  chain pre {",
        "    type filter hook prerouting priority -500; policy accept;",
        "    ip daddr . meta l4proto . th dport @svcs drop",
        "    ip daddr @vips ip frag-off & 0x1fff != 0 drop",
    ]
    if masq is not None:
        addr, lo, hi = masq
        lines.append(f"    ip daddr {addr} meta l4proto {{ tcp, udp }} th dport {lo}-{hi} drop")
    for ifname in inner_ifs:
        lines.append(f'    iifname "{ifname}" fib daddr type != {{ local, broadcast, multicast }} drop')
    lines += ["  }", "}"]
    _run("\n".join(lines) + "\n")


def sync_services(svcs: set[tuple[bytes, int, int]]) -> None:
    """Make the ``svcs`` and ``vips`` sets hold exactly these services."""
    cmds = [f"flush set ip {TABLE} svcs", f"flush set ip {TABLE} vips"]
    elems = []
    vips = set()
    for addr, proto, port in sorted(svcs):
        if proto not in PROTO or len(addr) != 4:
            continue
        a = str(ipaddress.IPv4Address(addr))
        elems.append(f"{a} . {PROTO[proto]} . {port}")
        vips.add(a)
    if elems:
        cmds.append(f"add element ip {TABLE} svcs {{ {', '.join(elems)} }}")
        cmds.append(f"add element ip {TABLE} vips {{ {', '.join(sorted(vips))} }}")
    _run("\n".join(cmds) + "\n")
