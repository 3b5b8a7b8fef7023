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

* TCP, UDP and SCTP to a VIP (the ``vips`` set, which the driver keeps
  in step with the service table), whatever the port: besides the
  services themselves, connections the FTP helper expects (passive data
  ports) arrive on ports no rule could know in advance, and the kernel
  would reset them.  The kernel keeps the VIP for everything else (ping);
  the driver answers closed ports on a VIP as the host would;
* non-first fragments to a VIP (their protocol header is in the first);
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
        "  set vips { type ipv4_addr; }",
        "  chain pre {",
        "    type filter hook prerouting priority -500; policy accept;",
        "    ip daddr @vips meta l4proto { tcp, udp, sctp } drop",
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
    """Make the ``vips`` set hold exactly the addresses of these services."""
    vips = sorted({str(ipaddress.IPv4Address(addr)) for addr, proto, _port in svcs
                   if proto in PROTO and len(addr) == 4})
    cmds = [f"flush set ip {TABLE} vips"]
    if vips:
        cmds.append(f"add element ip {TABLE} vips {{ {', '.join(vips)} }}")
    _run("\n".join(cmds) + "\n")
