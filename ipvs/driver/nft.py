"""Early nftables drop rules, so the kernel ignores what the driver takes.

When the director's NIC keeps its kernel addresses (the VIP among them),
the kernel would answer the stolen traffic too: a SYN to VIP:80 reaches
its TCP stack, which resets it, and real servers' replies get forwarded
or dropped by the kernel's router.  Packet taps (AF_PACKET) run before
netfilter, so a drop in ``prerouting`` at priority -500 (before
connection tracking's -400 and defragmentation) hides these packets from
the kernel without hiding them from the driver.

Everything lives in one table per address family, ``ip pyipvs`` and,
when a port has an IPv6 address, ``ip6 pyipvs``, that only the daemon
can leave behind by accident, and the kernel removes them then: the
tables have the ``owner`` flag (Linux 5.12+, nftables 1.0+), so they
belong to the netlink socket that created them and go with that socket.
ipvsd talks to nftables through libnftables in its own process
(``ctypes``), so that socket is ipvsd's: a SIGKILL, a crash or an OOM
kill closes it and the drop rules are gone at once, and the kernel
answers the VIP again instead of dropping its traffic.  (``nft -f`` in a
child would not do: the table would go when the child exits.)  Without
libnftables the tables are made by ``nft -f`` without the flag, as
before: deleted on exit and by the next start, with a warning that a
SIGKILL leaves them.

Why two tables and not one ``inet`` table: both are made in one
transaction through the same session, so they come, are owned and go
together, and the crash safety is the same; but the IPv4 table stays
exactly what it was (its name, which older daemons' leftovers and the
operators' tools know, and its rules), the ip6 table exists only where
IPv6 is configured (an IPv4-only director never touches the IPv6 the
host routes), and no rule needs a family qualifier.

The rules drop:

* TCP, UDP and SCTP to a VIP (the ``vips`` set of each table, which the
  driver keeps in step with the service table), whatever the port:
  besides the services themselves, connections the FTP helper expects
  (passive data ports) arrive on ports no rule could know in advance,
  and the kernel would reset them.  The kernel keeps the VIP for
  everything else (ping, ICMP errors, neighbour discovery); the driver
  answers closed ports on a VIP as the host would.  (For IPv6 nftables
  finds the protocol behind the extension headers, in every fragment
  whose fragment header names it.)
* non-first fragments to a VIP (their protocol header is in the first),
  but not those of ICMP and ICMPv6, so that a large ping to a VIP, which
  the kernel answers, still reassembles;
* TCP/UDP to the masquerading address and port range (IPv4 only: the
  driver masquerades IPv4 only);
* from the inner interfaces, packets not addressed to the kernel itself
  (the replies and masqueraded traffic the driver routes): for IPv6 on
  the inner interfaces that have an IPv6 address, anything but local,
  anycast and multicast destinations (neighbour discovery, router
  solicitations and MLD go to multicast groups or the host's own
  addresses).

The ip6 table accepts the five neighbour discovery messages first, so no
later rule can ever hide them from the kernel: IPv6 does not work at all
without them.  ICMPv6 errors (Packet Too Big among them) to the host's
own addresses are never dropped: they are local, and ICMPv6 is not
among the protocols dropped to a VIP.

Spare mode (the NICs have no kernel addresses) has a table of its own,
``netdev pyipvs``: one chain per NIC on the ``ingress`` hook, policy
drop, no rules.  The ingress hook runs after the packet taps, so the
driver still sees every frame, and before the kernel's IP and IPv6
stacks, which then never see the spare NICs' traffic at all.  Without it
the kernel runs ``ip_rcv`` and a route lookup for each frame only to
drop it (with ``ip_forward=0``, which spare mode needed), or forwards an
un-NATed copy (with ``ip_forward=1``), and answers neighbour discovery
for its own IPv6 link-local addresses beside the driver.  This table is
made only as an owned one (through libnftables): a table left behind by
a killed daemon would silently cut the kernel off a NIC that an operator
gives back to it.  Where it cannot be made, spare mode runs as before,
with a warning.

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
#: The same for bridged IPv6 and the ip6 hooks.
BRIDGE_NF_CALL6 = "/proc/sys/net/bridge/bridge-nf-call-ip6tables"
#: The shared-mode tables' families, in the order they are made.
FAMILIES = ("ip", "ip6")
#: Every family a table of ours may have: spare mode's is ``netdev``.
ALL_FAMILIES = FAMILIES + ("netdev",)
#: Neighbour discovery (RFC 4861): the ip6 table accepts it before any drop.
ND_TYPES = "nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect"


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
#: The families whose table :func:`install` made (their sets follow the services).
_installed: tuple[str, ...] = ()


def _open_session() -> Session:
    """The daemon's libnftables session, made on first use (OSError
    without libnftables: each caller says what that costs it)."""
    global _session
    if _session is None:
        _session = Session()
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


def remove(families: tuple[str, ...] = ALL_FAMILIES) -> None:
    """Delete our tables of these families (at exit), and those left by an
    older daemon that made them without the owner flag.  Closing the
    session removes owned tables; a table another live daemon owns cannot
    be deleted (EPERM) and stays.  One deletion per family: a missing
    table fails its own command only."""
    global _session, _installed
    _installed = ()
    if _session is not None:
        session, _session = _session, None
        for family in families:
            try:
                session.run(f"delete table {family} {TABLE}")
            except RuntimeError:
                pass
        session.close()
        return
    nft = shutil.which("nft")
    if nft is None:
        return
    for family in families:
        subprocess.run([nft, "delete", "table", family, TABLE], capture_output=True)


def check_br_netfilter(ifaces: list[str], proc: str = BRIDGE_NF_CALL, sys_net: str = "/sys/class/net",
                       proc6: str | None = None) -> None:
    """Refuse shared mode on a bridge when ``br_netfilter`` hands bridged
    IPv4 to the ip hooks (or, with ``proc6``, the ip6 table's
    ``bridge-nf-call-ip6tables``, bridged IPv6 to the ip6 hooks): the
    table's drop rule for traffic not addressed to the host would then
    drop every real server's reply, silently.  Warn when it is loaded but
    none of ``ifaces`` is a bridge or a port."""
    for path in (proc, proc6):
        if path is not None:
            _check_bridge_call(ifaces, path, sys_net)


def _check_bridge_call(ifaces: list[str], proc: str, sys_net: str) -> None:
    try:
        with open(proc) as f:
            on = f.read().strip() == "1"
    except OSError:
        return  # br_netfilter is not loaded (or not in this namespace)
    if not on:
        return
    fix = (f"sysctl -w net.bridge.{os.path.basename(proc)}=0 (or rmmod br_netfilter), or run ipvsd in spare "
           "mode")
    bridged = [i for i in ifaces
               if any(os.path.exists(os.path.join(sys_net, i, part)) for part in ("bridge", "brport"))]
    if bridged:
        raise RuntimeError(f"br_netfilter passes bridged traffic on {', '.join(bridged)} through the ip hooks, where "
                           f"shared mode's drop rules would drop the real servers' replies: {fix}")
    log.warning("br_netfilter is loaded with bridge-nf-call-iptables=1: if these interfaces are ever bridged, "
                "shared mode drops the real servers' replies; fix: %s", fix)


def table_script(family: str, inner_ifs: list[str], masq: tuple[str, int, int] | None = None,
                 owner: bool = True) -> str:
    """The nft text of one family's table (``ip`` or ``ip6``), its ``vips``
    set empty.  ``inner_ifs``: the inner interfaces (of that family) whose
    traffic not addressed to the host is the driver's; ``masq``: the
    masquerading (address, first port, last port), IPv4 only."""
    if family == "ip":
        addr_type = "ipv4_addr"
        rules = ["ip daddr @vips meta l4proto { tcp, udp, sctp } drop",
                 "ip daddr @vips ip frag-off & 0x1fff != 0 ip protocol != icmp drop"]
        if masq is not None:
            addr, lo, hi = masq
            rules.append(f"ip daddr {addr} meta l4proto {{ tcp, udp }} th dport {lo}-{hi} drop")
        local = "local, broadcast, multicast"
    elif family == "ip6":
        if masq is not None:
            raise ValueError("the driver masquerades IPv4 only")
        addr_type = "ipv6_addr"
        rules = [f"icmpv6 type {{ {ND_TYPES} }} accept",
                 "ip6 daddr @vips meta l4proto { tcp, udp, sctp } drop",
                 "ip6 daddr @vips frag frag-off != 0 frag nexthdr != ipv6-icmp drop"]
        local = "local, anycast, multicast"
    else:
        raise ValueError(f"no table for family {family!r}")
    rules += [f'iifname "{ifname}" fib daddr type != {{ {local} }} drop' for ifname in inner_ifs]
    lines = [f"table {family} {TABLE} {{"]
    if owner:
        lines.append("  flags owner;")
    lines += [f"  set vips {{ type {addr_type}; }}",
              "  chain pre {",
              "    type filter hook prerouting priority -500; policy accept;"]
    lines += [f"    {r}" for r in rules]
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def install(inner_ifs: list[str], masq: tuple[str, int, int] | None, ifaces: list[str] | None = None,
            inner_ifs6: list[str] | None = None) -> None:
    """Create the ip table and, unless ``inner_ifs6`` is None (no port has
    an IPv6 address), the ip6 table, with empty service sets (removing
    any old ones), in one transaction.

    ``ifaces`` (every interface of the data path) are checked for
    ``br_netfilter`` first (for IPv6 too with ``inner_ifs6``).
    """
    global _installed
    check_br_netfilter(list(ifaces or inner_ifs), proc6=BRIDGE_NF_CALL6 if inner_ifs6 is not None else None)
    remove()
    session: Session | None
    try:
        session = _open_session()
    except OSError as e:
        log.warning("libnftables unavailable (%s): the nftables table is made by nft -f, and a daemon "
                    "killed with SIGKILL leaves it until the next start (apt install libnftables1)", e)
        session = None
    families = FAMILIES if inner_ifs6 is not None else ("ip",)
    script = table_script("ip", inner_ifs, masq, owner=session is not None)
    if inner_ifs6 is not None:
        script += table_script("ip6", inner_ifs6, owner=session is not None)
    _run(script)
    _installed = families


def spare_script(ifaces: list[str], owner: bool = True) -> str:
    """The nft text of spare mode's table: each NIC's ingress hook drops
    everything, after the packet taps and before the kernel's stacks."""
    for name in ifaces:
        if not name or any(ch in name for ch in '"\\ '):
            raise ValueError(f"interface name {name!r} cannot be quoted for nft")
    lines = [f"table netdev {TABLE} {{"]
    if owner:
        lines.append("  flags owner;")
    for i, name in enumerate(ifaces):
        lines += [f"  chain port{i} {{",
                  f'    type filter hook ingress device "{name}" priority -500; policy drop;',
                  "  }"]
    lines.append("}")
    return "\n".join(lines) + "\n"


def install_spare(ifaces: list[str]) -> bool:
    """Spare mode: make the owned ``netdev`` table that keeps the kernel's
    stacks off these NICs.  Returns whether it is in place; without
    libnftables, or where the kernel refuses it (another daemon's table
    of that name, a kernel before 5.12), spare mode runs without it and a
    warning says so.  No old table is deleted first: this one is only ever
    made owned, so none outlives its daemon."""
    try:
        session = _open_session()
    except OSError as e:
        log.warning("libnftables unavailable (%s): the kernel still receives the spare NICs' frames; "
                    "keep ip_forward=0 (apt install libnftables1)", e)
        return False
    try:
        session.run(spare_script(ifaces))
    except (RuntimeError, ValueError) as e:
        log.warning("the kernel still receives the frames on %s, keep ip_forward=0 there: %s", ", ".join(ifaces), e)
        remove(())  # closes the session, which owns nothing
        return False
    log.info("the kernel's stacks no longer see the frames on %s (table netdev %s)", ", ".join(ifaces), TABLE)
    return True


def sets_script(svcs: set[tuple[bytes, int, int]], families: tuple[str, ...] = FAMILIES) -> str:
    """The nft text that makes each family's ``vips`` set hold exactly the
    addresses (4 bytes: IPv4, 16: IPv6) of these services."""
    cmds = []
    for family, size, cls in (("ip", 4, ipaddress.IPv4Address), ("ip6", 16, ipaddress.IPv6Address)):
        if family not in families:
            continue
        vips = sorted({cls(addr) for addr, proto, _port in svcs if proto in PROTO and len(addr) == size})
        cmds.append(f"flush set {family} {TABLE} vips")
        if vips:
            cmds.append(f"add element {family} {TABLE} vips {{ {', '.join(map(str, vips))} }}")
    return "\n".join(cmds) + "\n"


def sync_services(svcs: set[tuple[bytes, int, int]]) -> None:
    """Make the ``vips`` set of each installed table hold exactly the addresses of these services."""
    _run(sets_script(svcs, _installed or ("ip",)))
