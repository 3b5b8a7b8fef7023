"""Shared mode: early nftables drop rules so the kernel ignores what we steal.

When the director's NIC keeps its kernel addresses (the VIP among them),
the kernel would answer the stolen traffic too: a SYN to VIP:80 reaches
its TCP stack, which resets it, and real servers' replies get forwarded
or dropped by the kernel's router.  Packet taps (AF_PACKET) run before
netfilter, so a drop in ``prerouting`` at priority -500 (before
connection tracking's -400 and defragmentation) hides these packets from
the kernel without hiding them from the driver.

Everything lives in one table, ``ip pyipvs``, that only the daemon can
leave behind by accident, and the kernel removes it then: the table has
the ``owner`` flag (Linux 5.12+, nftables 1.0+), so it belongs to the
netlink socket that created it and goes with that socket.  ipvsd talks to
nftables through libnftables in its own process (``ctypes``), so that
socket is ipvsd's: a SIGKILL, a crash or an OOM kill closes it and the
drop rules are gone at once, and the kernel answers the VIP again instead
of dropping its traffic.  (``nft -f`` in a child would not do: the table
would go when the child exits.)  Without libnftables the table is made by
``nft -f`` without the flag, as before: deleted on exit and by the next
start, with a warning that a SIGKILL leaves it.

The rules drop:

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

import ctypes
import ipaddress
import logging
import os
import shutil
import subprocess

log = logging.getLogger("ipvs.driver.nft")

TABLE = "pyipvs"
PROTO = {6: "tcp", 17: "udp", 132: "sctp"}
LIBNFTABLES = "libnftables.so.1"
#: Where ``br_netfilter`` shows whether bridged IPv4 goes through the ip hooks.
BRIDGE_NF_CALL = "/proc/sys/net/bridge/bridge-nf-call-iptables"


class Session:
    """A libnftables context: its netlink socket owns the table."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(LIBNFTABLES)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        self.lib = lib
        self.ctx = lib.nft_ctx_new(0)
        if not self.ctx:
            raise OSError("nft_ctx_new failed")
        lib.nft_ctx_buffer_error(self.ctx)
        lib.nft_ctx_buffer_output(self.ctx)

    def run(self, script: str) -> None:
        """Run an nft script through this session's socket (RuntimeError with nft's message)."""
        if self.lib.nft_run_cmd_from_buffer(self.ctx, script.encode()) != 0:
            err = self.lib.nft_ctx_get_error_buffer(self.ctx) or b""
            raise RuntimeError(f"nft failed: {err.decode(errors='replace').strip()}")

    def close(self) -> None:
        """Free the context, and with its socket every table this session owns."""
        if self.ctx:
            self.lib.nft_ctx_free(self.ctx)  # closes the socket: the owner table goes with it
            self.ctx = None


_session: Session | None = None


def _open_session() -> Session | None:
    global _session
    if _session is None:
        try:
            _session = Session()
        except OSError as e:
            log.warning("libnftables unavailable (%s): the nftables table is made by nft -f, and a daemon "
                        "killed with SIGKILL leaves it until the next start (apt install libnftables1)", e)
            return None
    return _session


def _run_nft(script: str) -> None:
    nft = shutil.which("nft")
    if nft is None:
        raise RuntimeError("shared mode needs nft (Debian package nftables)")
    r = subprocess.run([nft, "-f", "-"], input=script, text=True, capture_output=True)
    if r.returncode != 0:
        raise RuntimeError(f"nft failed: {r.stderr.strip()}")


def _run(script: str) -> None:
    if _session is not None:
        _session.run(script)
    else:
        _run_nft(script)


def remove() -> None:
    """Delete the table (at exit), and one left by an older daemon that
    made it without the owner flag.  Closing the session removes an owned
    table; a table another live daemon owns cannot be deleted (EPERM) and
    stays."""
    global _session
    if _session is not None:
        session, _session = _session, None
        try:
            session.run(f"delete table ip {TABLE}")
        except RuntimeError:
            pass
        session.close()
        return
    nft = shutil.which("nft")
    if nft is None:
        return
    subprocess.run([nft, "delete", "table", "ip", TABLE], capture_output=True)


def check_br_netfilter(ifaces: list[str], proc: str = BRIDGE_NF_CALL, sys_net: str = "/sys/class/net") -> None:
    """Refuse shared mode on a bridge when ``br_netfilter`` hands bridged
    IPv4 to the ip hooks: the table's drop rule for traffic not addressed
    to the host would then drop every real server's reply, silently.
    Warn when it is loaded but none of ``ifaces`` is a bridge or a port."""
    try:
        with open(proc) as f:
            on = f.read().strip() == "1"
    except OSError:
        return  # br_netfilter is not loaded (or not in this namespace)
    if not on:
        return
    fix = ("sysctl -w net.bridge.bridge-nf-call-iptables=0 (or rmmod br_netfilter), or run ipvsd in spare "
           "mode")
    bridged = [i for i in ifaces
               if any(os.path.exists(os.path.join(sys_net, i, part)) for part in ("bridge", "brport"))]
    if bridged:
        raise RuntimeError(f"br_netfilter passes bridged traffic on {', '.join(bridged)} through the ip hooks, where "
                           f"shared mode's drop rules would drop the real servers' replies: {fix}")
    log.warning("br_netfilter is loaded with bridge-nf-call-iptables=1: if these interfaces are ever bridged, "
                "shared mode drops the real servers' replies; fix: %s", fix)


def install(inner_ifs: list[str], masq: tuple[str, int, int] | None, ifaces: list[str] | None = None) -> None:
    """Create the table with an empty service set (removing any old one).

    ``ifaces`` (every interface of the data path) are checked for
    ``br_netfilter`` first.
    """
    check_br_netfilter(list(ifaces or inner_ifs))
    remove()
    session = _open_session()
    lines = [
        f"table ip {TABLE} {{",
        "  flags owner;" if session is not None else "",
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
