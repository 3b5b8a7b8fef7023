"""The ``/proc`` views of an instance, byte for byte as kernel 6.1 prints them.

Mirrors the ``seq_file`` show functions of the kernel:

* ``/proc/net/ip_vs`` and ``/proc/net/ip_vs_stats`` /
  ``ip_vs_stats_percpu`` (``ip_vs_info_seq_show``, ``ip_vs_stats_show``,
  ``ip_vs_stats_percpu_show`` in ``net/netfilter/ipvs/ip_vs_ctl.c``);
* ``/proc/net/ip_vs_conn`` and ``ip_vs_conn_sync``
  (``ip_vs_conn_seq_show``, ``ip_vs_conn_sync_seq_show`` in
  ``ip_vs_conn.c``);
* ``/proc/net/ip_vs_app`` (``ip_vs_app_seq_show`` in ``ip_vs_app.c``);
* ``/proc/sys/net/ipv4/vs/*`` (the ``vs_vars`` table of ``ip_vs_ctl.c``),
  via :func:`render_sysctl`.

Everything is a pure function of the instance and ``now`` (jiffies), so
the daemon can serve the views over its socket, write them into a
directory for ``node_exporter --path.procfs``, and tests can compare them
with the recorded kernel files.

Where PyIPVS differs from the kernel, and why:

* Services come in the kernel's hash-bucket order
  (:func:`ipvs.ctl.services_sorted_by_bucket`, with the per-netns pointer
  taken as zero); destinations newest first, as the kernel lists them.
* Connections come in :meth:`ipvs.conn.ConnTable.all` order.  The kernel's
  order is that of a table hashed with a per-boot random seed, so no two
  boots agree either.
* Counters are not per CPU (the core runs in one thread):
  ``ip_vs_stats_percpu`` prints one row per CPU of this machine
  (``os.cpu_count()``, or ``ncpu=``) with all traffic on CPU 0.  Like the
  kernel's, those rows are the live counters, not adjusted by ``ipvsadm
  -Z``, while its ``~`` total is what ``ip_vs_stats`` shows: the
  estimator's snapshot less the ``-Z`` zero point (``ip_vs_copy_stats``).
* Sysctls PyIPVS does not act on (the connection-sync ones) are printed
  with the kernel's defaults and cannot be changed; see
  :data:`INERT_SYSCTLS`.  ``lblc_expiration`` and ``lblcr_expiration``
  appear once their scheduler module is loaded, as in Debian's modular
  kernel: once a service has used the scheduler
  (:attr:`ipvs.netns.NetnsIPVS.sched_modules`), or once the setting has
  been written through the control plane (where the kernel needs a
  ``modprobe`` first).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ipvs import uapi
from ipvs.ctl import MODULE_SYSCTLS, services_sorted_by_bucket
from ipvs.proto import state_name
from ipvs.uapi import (
    AF_INET6,
    IP_VS_CONN_F_DROUTE,
    IP_VS_CONN_F_FWD_MASK,
    IP_VS_CONN_F_LOCALNODE,
    IP_VS_CONN_F_SYNC,
    IP_VS_CONN_F_TUNNEL,
    IP_VS_SVC_F_ONEPACKET,
    IP_VS_SVC_F_PERSISTENT,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_IP,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
)

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.netns import NetnsIPVS

#: The views :func:`render` knows, as file names under ``/proc/net``.
PROC_NAMES = ("ip_vs", "ip_vs_conn", "ip_vs_conn_sync", "ip_vs_stats", "ip_vs_stats_percpu", "ip_vs_app")

#: Settings the kernel has but PyIPVS does not act on (connection sync is
#: not implemented), with the kernel's defaults, printed as the kernel
#: prints them.  ``sync_qlen_max`` defaults to a share of free memory in the
#: kernel; the value here is the one of the VM the goldens were recorded on.
INERT_SYSCTLS: dict[str, str] = {
    "sync_persist_mode": "0",
    "sync_ports": "1",
    "sync_qlen_max": "15191",
    "sync_refresh_period": "0",
    "sync_retries": "0",
    "sync_sock_size": "0",
    "sync_threshold": "3\t50",
    "sync_version": "1",
}

#: Settings of :class:`ipvs.ip_vs.Sysctls` that are not sysctls (module
#: parameters fixed at start).
NOT_SYSCTLS = frozenset({"conn_tab_bits"})

_PROTO_NAMES = {
    IPPROTO_IP: "IP",
    IPPROTO_TCP: "TCP",
    IPPROTO_UDP: "UDP",
    IPPROTO_SCTP: "SCTP",
    IPPROTO_ICMP: "ICMP",
    IPPROTO_ICMPV6: "ICMPv6",
}


def proto_name(protocol: int) -> str:
    """``ip_vs_proto_name``: "TCP", "UDP", ... or "IP_<n>" for others."""
    name = _PROTO_NAMES.get(protocol)
    return name if name is not None else f"IP_{protocol}"


def fwd_name(conn_flags: int) -> str:
    """``ip_vs_fwd_name``: anything not Local/Tunnel/Route prints as Masq."""
    fwd = conn_flags & IP_VS_CONN_F_FWD_MASK
    if fwd == IP_VS_CONN_F_LOCALNODE:
        return "Local"
    if fwd == IP_VS_CONN_F_TUNNEL:
        return "Tunnel"
    if fwd == IP_VS_CONN_F_DROUTE:
        return "Route"
    return "Masq"


def pi6(addr: bytes) -> str:
    """The kernel's ``%pI6``: eight groups of four lowercase hex digits."""
    return ":".join(addr[i : i + 2].hex() for i in range(0, 16, 2))


def _hex4(addr: bytes) -> str:
    return f"{int.from_bytes(addr, 'big'):08X}"


def _bswap32(v: int) -> int:
    return int.from_bytes((v & 0xFFFFFFFF).to_bytes(4, "little"), "big")


# --------------------------------------------------------------- ip_vs


def _render_ip_vs(ipvs: NetnsIPVS) -> str:
    out = [
        f"IP Virtual Server version {uapi.version_string()} (size={ipvs.conn_tab.size})\n",
        "Prot LocalAddress:Port Scheduler Flags\n",
        "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n",
    ]
    for svc in services_sorted_by_bucket(ipvs):
        ops = "ops " if svc.flags & IP_VS_SVC_F_ONEPACKET else ""
        if svc.fwmark:
            line = f"FWM  {svc.fwmark:08X} {svc.sched_name} {ops}"
        elif svc.af == AF_INET6:
            # The kernel's IPv6 format has no "ops" field.
            line = f"{proto_name(svc.protocol)}  [{pi6(svc.addr)}]:{svc.port:04X} {svc.sched_name} "
        else:
            line = f"{proto_name(svc.protocol)}  {_hex4(svc.addr)}:{svc.port:04X} {svc.sched_name} {ops} "
        if svc.flags & IP_VS_SVC_F_PERSISTENT:
            # The kernel prints the timeout in jiffies and ntohl(netmask):
            # an IPv4 mask reads as expected, but an IPv6 prefix length is
            # a host-order integer and comes out byte-swapped (128 ->
            # 80000000).
            mask = _bswap32(svc.netmask) if svc.af == AF_INET6 else svc.netmask
            line += f"persistent {svc.timeout} {mask & 0xFFFFFFFF:08X}\n"
        else:
            line += "\n"
        out.append(line)
        for d in svc.destinations:
            addr = f"[{pi6(d.addr)}]" if d.af == AF_INET6 else _hex4(d.addr)
            out.append(
                f"  -> {addr}:{d.port:04X}      {fwd_name(d.conn_flags):<7} {d.weight:<6d} "
                f"{d.activeconns:<10d} {d.inactconns:<10d}\n"
            )
    return "".join(out)


# ---------------------------------------------------------- ip_vs_conn


def _expires_s(cp, now: int, hz: int) -> int:
    # jiffies_delta_to_msecs() clamps a timer already due to 0, then /1000.
    delta = cp.expires - now
    if delta < 0:
        delta = 0
    return (delta * 1000 // hz) // 1000


def _conn_rows(ipvs: NetnsIPVS, now: int, sync: bool) -> list[str]:
    rows = []
    hz = ipvs.hz
    pd_get = ipvs.proto_data_get
    for cp in ipvs.conn_tab.all():
        pname = proto_name(cp.protocol)
        if cp.af == AF_INET6:
            head = f"{pname:<3} {pi6(cp.caddr)} {cp.cport:04X} {pi6(cp.vaddr)} {cp.vport:04X}"
        else:
            head = f"{pname:<3} {_hex4(cp.caddr)} {cp.cport:04X} {_hex4(cp.vaddr)} {cp.vport:04X}"
        # The destination family can differ from the client side's (tunnels).
        daddr = pi6(cp.daddr) if len(cp.daddr) == 16 else _hex4(cp.daddr)
        state = state_name(cp, pd_get(cp.protocol))
        exp = _expires_s(cp, now, hz)
        if sync:
            origin = "SYNC" if cp.flags & IP_VS_CONN_F_SYNC else "LOCAL"
            rows.append(f"{head} {daddr} {cp.dport:04X} {state:<11} {origin:<6} {exp:7d}\n")
        else:
            # A persistence engine's template: " <engine> <show_pe_data>".
            pe_data = getattr(cp, "pe_data", None)
            pe_text = f" {cp.pe.name} {cp.pe.show_pe_data(cp)}" if pe_data is not None else ""
            rows.append(f"{head} {daddr} {cp.dport:04X} {state:<11} {exp:7d}{pe_text}\n")
    return rows


def _render_ip_vs_conn(ipvs: NetnsIPVS, now: int) -> str:
    title = "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData\n"
    return title + "".join(_conn_rows(ipvs, now, sync=False))


def _render_ip_vs_conn_sync(ipvs: NetnsIPVS, now: int) -> str:
    title = "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Origin Expires\n"
    return title + "".join(_conn_rows(ipvs, now, sync=True))


# --------------------------------------------------------- ip_vs_stats


def _row5(c: tuple[int, int, int, int, int]) -> str:
    return f"{c[0]:8X} {c[1]:8X} {c[2]:8X} {c[3]:16X} {c[4]:16X}"


def _render_ip_vs_stats(ipvs: NetnsIPVS) -> str:
    st = ipvs.tot_stats
    return (
        "   Total Incoming Outgoing         Incoming         Outgoing\n"
        "   Conns  Packets  Packets            Bytes            Bytes\n"
        f"{_row5(st.counters())}\n"
        "\n"
        " Conns/s   Pkts/s   Pkts/s          Bytes/s          Bytes/s\n"
        f"{_row5(st.rates())}\n"
    )


def _render_ip_vs_stats_percpu(ipvs: NetnsIPVS, ncpu: int | None) -> str:
    st = ipvs.tot_stats
    # The per-CPU rows are live counters; the "~" row is ip_vs_copy_stats's
    # view, the estimator's snapshot less the -Z zero point, as in 6.1.
    ipvs.est.push()
    raw = st.raw()
    n = ncpu if ncpu is not None else (os.cpu_count() or 1)
    out = [
        "       Total Incoming Outgoing         Incoming         Outgoing\n",
        "CPU    Conns  Packets  Packets            Bytes            Bytes\n",
    ]
    zero = (0, 0, 0, 0, 0)
    for i in range(max(n, 1)):
        out.append(f"{i:3X} {_row5(raw if i == 0 else zero)}\n")
    out.append(f"  ~ {_row5(st.counters())}\n\n")
    out.append("     Conns/s   Pkts/s   Pkts/s          Bytes/s          Bytes/s\n")
    out.append(f"    {_row5(st.rates())}\n")
    return "".join(out)


# ----------------------------------------------------------- ip_vs_app


def _render_ip_vs_app(ipvs: NetnsIPVS) -> str:
    out = ["prot port    usecnt name\n"]
    try:
        from ipvs.app import incarnations
    except ImportError:  # no application helpers in this PyIPVS
        incs = reversed(list(ipvs.apps.values()))
    else:
        # Newest app first, and within it the port registered last.
        incs = incarnations(ipvs)
    for inc in incs:
        out.append(f"{proto_name(inc.protocol):<3}  {inc.port:<7d} {inc.usecnt:<6d} {inc.name:<17}\n")
    return "".join(out)


# -------------------------------------------------------------- public


def render(ipvs: NetnsIPVS, name: str, now: int, *, ncpu: int | None = None) -> str:
    """The text of ``/proc/net/<name>`` for ``ipvs`` at jiffy ``now``.

    ``name`` is one of :data:`PROC_NAMES`; anything else raises
    :class:`KeyError`.  ``ncpu`` sets the number of per-CPU rows of
    ``ip_vs_stats_percpu`` (default: this machine's CPU count).
    """
    if name == "ip_vs":
        return _render_ip_vs(ipvs)
    if name == "ip_vs_conn":
        return _render_ip_vs_conn(ipvs, now)
    if name == "ip_vs_conn_sync":
        return _render_ip_vs_conn_sync(ipvs, now)
    if name == "ip_vs_stats":
        return _render_ip_vs_stats(ipvs)
    if name == "ip_vs_stats_percpu":
        return _render_ip_vs_stats_percpu(ipvs, ncpu)
    if name == "ip_vs_app":
        return _render_ip_vs_app(ipvs)
    raise KeyError(f"no /proc/net view named {name!r}")


def sysctl_values(ipvs: NetnsIPVS) -> dict[str, str]:
    """Every ``net.ipv4.vs`` setting as text without the newline, sorted by name."""
    values: dict[str, str] = dict(INERT_SYSCTLS)
    sc = ipvs.sysctl
    for name in type(sc).names():
        module = MODULE_SYSCTLS.get(name)
        if name in NOT_SYSCTLS or (module is not None and module not in ipvs.sched_modules):
            continue
        values[name] = str(getattr(sc, name))
    return dict(sorted(values.items()))


def render_sysctl(ipvs: NetnsIPVS) -> dict[str, str]:
    """The files of ``/proc/sys/net/ipv4/vs/``: name -> file content.

    Each content ends with the newline the kernel's ``proc_dointvec``
    prints; names are sorted as a directory listing shows them.
    """
    return {k: v + "\n" for k, v in sysctl_values(ipvs).items()}


# --------------------------------------------------------------------------
# The directory ipvsd writes (--procfs-dir): is its writer alive?

#: In a ``--procfs-dir``, the file that holds the writer's pid, locked
#: (``flock``) while the writer lives: the kernel drops the lock when the
#: process dies, however it dies, so a reader can tell stale views.
WRITER_FILE = "ipvsd.pid"


def writer_alive(root: str | os.PathLike) -> bool:
    """Whether the daemon that writes the views under ``root`` still runs
    (False once it died, even by SIGKILL: its files then stand still)."""
    import fcntl

    try:
        fd = os.open(os.path.join(root, WRITER_FILE), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
