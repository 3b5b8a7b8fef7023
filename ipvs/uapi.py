"""Constants of the IPVS user-space interface.

Mirrors ``include/uapi/linux/ip_vs.h`` (kernel 6.1): version code, service,
destination and connection flags, forwarding methods, the sockopt numbers and
the generic-netlink command and attribute names.  Only facts live here; the
behaviour that uses them is in the modules named after the kernel files.
"""

from __future__ import annotations

import socket

IP_VS_VERSION_CODE = 0x010201
IP_VS_SCHEDNAME_MAXLEN = 16
IP_VS_PENAME_MAXLEN = 16
IP_VS_IFNAME_MAXLEN = 16


def version_string(code: int = IP_VS_VERSION_CODE) -> str:
    """Return the dotted version the kernel prints ("1.2.1")."""
    return f"{(code >> 16) & 0xFF}.{(code >> 8) & 0xFF}.{code & 0xFF}"


# Address families and protocols, as the kernel numbers them.
AF_INET = socket.AF_INET  # 2
AF_INET6 = socket.AF_INET6  # 10
IPPROTO_IP = 0
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
IPPROTO_SCTP = 132

# Virtual service flags (ip_vs_service.flags).
IP_VS_SVC_F_PERSISTENT = 0x0001
IP_VS_SVC_F_HASHED = 0x0002
IP_VS_SVC_F_ONEPACKET = 0x0004
IP_VS_SVC_F_SCHED1 = 0x0008
IP_VS_SVC_F_SCHED2 = 0x0010
IP_VS_SVC_F_SCHED3 = 0x0020
IP_VS_SVC_F_SCHED_SH_FALLBACK = IP_VS_SVC_F_SCHED1
IP_VS_SVC_F_SCHED_SH_PORT = IP_VS_SVC_F_SCHED2
IP_VS_SVC_F_SCHED_MH_FALLBACK = IP_VS_SVC_F_SCHED1
IP_VS_SVC_F_SCHED_MH_PORT = IP_VS_SVC_F_SCHED2
IP_VS_SVC_F_SCHED_MASK = IP_VS_SVC_F_SCHED1 | IP_VS_SVC_F_SCHED2 | IP_VS_SVC_F_SCHED3

# Destination flags (ip_vs_dest.flags).
IP_VS_DEST_F_AVAILABLE = 0x0001
IP_VS_DEST_F_OVERLOAD = 0x0002

# Sync daemon states.
IP_VS_STATE_NONE = 0
IP_VS_STATE_MASTER = 1
IP_VS_STATE_BACKUP = 2

# Connection flags (ip_vs_conn.flags).  The low three bits are the
# forwarding method, which the same constants also name for destinations.
IP_VS_CONN_F_FWD_MASK = 0x0007
IP_VS_CONN_F_MASQ = 0x0000
IP_VS_CONN_F_LOCALNODE = 0x0001
IP_VS_CONN_F_TUNNEL = 0x0002
IP_VS_CONN_F_DROUTE = 0x0003
IP_VS_CONN_F_BYPASS = 0x0004
IP_VS_CONN_F_SYNC = 0x0020
IP_VS_CONN_F_HASHED = 0x0040
IP_VS_CONN_F_NOOUTPUT = 0x0080
IP_VS_CONN_F_INACTIVE = 0x0100
IP_VS_CONN_F_OUT_SEQ = 0x0200
IP_VS_CONN_F_IN_SEQ = 0x0400
IP_VS_CONN_F_SEQ_MASK = 0x0600
IP_VS_CONN_F_NO_CPORT = 0x0800
IP_VS_CONN_F_TEMPLATE = 0x1000
IP_VS_CONN_F_ONE_PACKET = 0x2000
IP_VS_CONN_F_NFCT = 1 << 16
# Flags a destination may carry in from user space.
IP_VS_CONN_F_DEST_MASK = IP_VS_CONN_F_FWD_MASK | IP_VS_CONN_F_ONE_PACKET | IP_VS_CONN_F_NFCT
IP_VS_CONN_F_BACKUP_MASK = (
    IP_VS_CONN_F_FWD_MASK
    | IP_VS_CONN_F_NOOUTPUT
    | IP_VS_CONN_F_INACTIVE
    | IP_VS_CONN_F_SEQ_MASK
    | IP_VS_CONN_F_NO_CPORT
    | IP_VS_CONN_F_TEMPLATE
)
IP_VS_CONN_F_BACKUP_UPD_MASK = IP_VS_CONN_F_INACTIVE | IP_VS_CONN_F_SEQ_MASK

# Names of the forwarding methods as ipvsadm and /proc print them.
FWD_NAMES = {
    IP_VS_CONN_F_MASQ: "Masq",
    IP_VS_CONN_F_LOCALNODE: "Local",
    IP_VS_CONN_F_TUNNEL: "Tunnel",
    IP_VS_CONN_F_DROUTE: "Route",
}

# Tunnel types and encapsulation flags for IPIP/GUE/GRE destinations.
IP_VS_CONN_F_TUNNEL_TYPE_IPIP = 0
IP_VS_CONN_F_TUNNEL_TYPE_GUE = 1
IP_VS_CONN_F_TUNNEL_TYPE_GRE = 2
IP_VS_TUNNEL_ENCAP_FLAG_NOCSUM = 0
IP_VS_TUNNEL_ENCAP_FLAG_CSUM = 1 << 0
IP_VS_TUNNEL_ENCAP_FLAG_REMCSUM = 1 << 1

# Limits ipvsadm and the kernel enforce.
IP_VS_MAX_WEIGHT = 65535
IP_VS_DEFAULT_PERSISTENT_TIMEOUT = 360  # seconds, ipvsadm's default for -p
IP_VS_MAX_PERSISTENT_TIMEOUT = 2678400  # 31 days

# The sockopt interface (kept for reference: PyIPVS speaks the netlink
# schema over its Unix socket, but the numbers appear in ipvsadm's logic).
IP_VS_BASE_CTL = 64 + 1024 + 64
IP_VS_SO_SET_NONE = IP_VS_BASE_CTL
IP_VS_SO_SET_INSERT = IP_VS_BASE_CTL + 1
IP_VS_SO_SET_ADD = IP_VS_BASE_CTL + 2
IP_VS_SO_SET_EDIT = IP_VS_BASE_CTL + 3
IP_VS_SO_SET_DEL = IP_VS_BASE_CTL + 4
IP_VS_SO_SET_FLUSH = IP_VS_BASE_CTL + 5
IP_VS_SO_SET_LIST = IP_VS_BASE_CTL + 6
IP_VS_SO_SET_ADDDEST = IP_VS_BASE_CTL + 7
IP_VS_SO_SET_DELDEST = IP_VS_BASE_CTL + 8
IP_VS_SO_SET_EDITDEST = IP_VS_BASE_CTL + 9
IP_VS_SO_SET_TIMEOUT = IP_VS_BASE_CTL + 10
IP_VS_SO_SET_STARTDAEMON = IP_VS_BASE_CTL + 11
IP_VS_SO_SET_STOPDAEMON = IP_VS_BASE_CTL + 12
IP_VS_SO_SET_RESTORE = IP_VS_BASE_CTL + 13
IP_VS_SO_SET_SAVE = IP_VS_BASE_CTL + 14
IP_VS_SO_SET_ZERO = IP_VS_BASE_CTL + 15

# Generic netlink: family "IPVS", version 1.  Command names follow
# enum IPVS_CMD_* one to one; the control socket uses these names.
IPVS_GENL_NAME = "IPVS"
IPVS_GENL_VERSION = 1
IPVS_COMMANDS = (
    "NEW_SERVICE",
    "SET_SERVICE",
    "DEL_SERVICE",
    "GET_SERVICE",
    "NEW_DEST",
    "SET_DEST",
    "DEL_DEST",
    "GET_DEST",
    "NEW_DAEMON",
    "DEL_DAEMON",
    "GET_DAEMON",
    "SET_CONFIG",
    "GET_CONFIG",
    "SET_INFO",
    "GET_INFO",
    "ZERO",
    "FLUSH",
)
