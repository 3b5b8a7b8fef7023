"""ipvsadm 1.31, byte for byte, over the PyIPVS control schema.

Mirrors ``ipvsadm.c``, ``config_stream.c`` and the parts of
``libipvs/libipvs.c`` that shape what the user sees (ipvsadm 1.31,
2019/12/24), with popt 1.19's option scanning.  The kernel calls become
:mod:`ipvs.netlink` requests sent through a transport: the daemon's Unix
socket (``ipvs.client.Client``) by default, or any object with
``call(request) -> reply`` (:class:`ipvs.netlink.LocalTransport` in tests).

What is reproduced on purpose, quirks included:

* popt: the first option must be the command; short options cluster
  (``-Ln``); an option argument may be glued (``-t10.0.0.1:80``), follow
  ``=`` or be the next word even if it starts with ``-``, except for the
  optional argument of ``-p``; non-options are collected and rejected
  later as "unexpected argument".
* every ``fail()`` message with exit status 2, popt errors and the "Try"
  line with 255, kernel errors through the ``ipvs_strerror`` table with
  255, listing failures with 1; ``fail()`` inside ``-R`` ends the whole
  restore, as ``exit()`` does in C.
* ``-E`` and ``-e`` send every field, so what is not given is reset (wlc,
  not persistent, weight 1, direct routing).
* sorting uses the C comparators' wrapping ``int`` differences and glibc's
  merge sort, so 1.0.0.0 lists after 200.0.0.0 exactly as ipvsadm does.
* libipvs reads a destination's 64-bit counters through its 32-bit parser,
  so ``--stats``/``--rate`` show destination packet and connection counts
  modulo 2**32 (bytes are full width); services are not affected.
* ``-R``'s tokenizer: spaces, tabs and CRs separate words, a word
  ``ipvsadm`` is dropped, ``#`` starts no comment, and a last line that
  ends in blanks without a newline is lost.

The rules format itself, ``-S``'s lines and ``-R``'s words, is
:mod:`ipvs.rules`'s, shared with ``ipvsd`` and ``ipvs-replay``.

Differences, and why: there is no kernel module to load, so a missing
daemon gives "Can't initialize ipvs" naming ``ipvsd`` (exit 2); ``-h`` and
``-v`` work without a daemon; ``--socket PATH`` (or ``IPVS_SOCKET``)
chooses the daemon; ``-c`` reads ``/proc/net/ip_vs_conn`` from the
daemon (GET_PROC) instead of the local file.

Speed, without changing what the user sees: ``-R`` sends its commands in
``BATCH`` requests (see :mod:`ipvs.netlink`) while it parses on, and
plain saved-rule lines skip the popt emulation (:meth:`Ipvsadm.fast_command`);
listings fetch destinations in batches, without counters unless shown,
and sort with Python's sort when the comparators cannot wrap
(:func:`sort_services`).  Destination commands send only the service's
identity, which is all the kernel reads of it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gc
import os
import re
import socket
import sys

from ipvs import uapi
from ipvs.uapi import AF_INET, AF_INET6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP

# The names below serve annotations only (postponed by the __future__
# import): importing typing would cost every ipvsadm call 2 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any, NoReturn, TextIO

    #: An entry of ipvsadm's popt table: (long name, short name, argument, value).
    OptionEntry = tuple[str | None, str | None, int, int]

PROG = "ipvsadm"
IPVSADM_VERSION = "v1.31 2019/12/24"
SCHEDULERS = "rr|wrr|lc|wlc|lblc|lblcr|dh|sh|sed|nq|fo|ovf|mh"
PE_LIST = "sip"
DEF_SCHED = "wlc"
DEF_TUNNEL_TYPE = "ipip"
DEF_MCAST_IFN = "eth0"
CONN_PROC_FILE = "/proc/net/ip_vs_conn"
MAX_TIMEOUT = 86400 * 31
IPVS_SVC_PERSISTENT_TIMEOUT = 6 * 60
INT_MAX = 2**31 - 1
MINIMUM_IPVS_VERSION = (1 << 16) + (1 << 8) + 4

# Option values: the character codes popt returns for short options.
K_6 = 54  # '6'
K_A = 65  # 'A'
K_C = 67  # 'C'
K_D = 68  # 'D'
K_E = 69  # 'E'
K_I = 73  # 'I'
K_L = 76  # 'L'
K_M = 77  # 'M'
K_R = 82  # 'R'
K_S = 83  # 'S'
K_X = 88  # 'X'
K_Z = 90  # 'Z'
K_a = 97  # 'a'
K_b = 98  # 'b'
K_c = 99  # 'c'
K_d = 100  # 'd'
K_e = 101  # 'e'
K_f = 102  # 'f'
K_g = 103  # 'g'
K_h = 104  # 'h'
K_i = 105  # 'i'
K_l = 108  # 'l'
K_m = 109  # 'm'
K_n = 110  # 'n'
K_o = 111  # 'o'
K_p = 112  # 'p'
K_r = 114  # 'r'
K_s = 115  # 's'
K_t = 116  # 't'
K_u = 117  # 'u'
K_v = 118  # 'v'
K_w = 119  # 'w'
K_x = 120  # 'x'
K_y = 121  # 'y'

# Commands, numbered as ipvsadm numbers them (CMD_NONE + n).
CMD_NONE, CMD_ADD, CMD_EDIT, CMD_DEL, CMD_FLUSH, CMD_LIST, CMD_ADDDEST, CMD_DELDEST = range(8)
CMD_EDITDEST, CMD_TIMEOUT, CMD_STARTDAEMON, CMD_STOPDAEMON, CMD_RESTORE, CMD_SAVE, CMD_ZERO = range(8, 15)

CMDNAMES = (
    "add-service", "edit-service", "delete-service", "flush", "list", "add-server", "delete-server",
    "edit-server", "set", "start-daemon", "stop-daemon", "restore", "save", "zero",
)

OPTNAMES = (
    "numeric", "connection", "service-address", "scheduler", "persistent", "netmask", "real-server",
    "forwarding-method", "weight", "u-threshold", "l-threshold", "mcast-interface", "timeout", "daemon",
    "stats", "rate", "thresholds", "persistent-conn", "nosort", "syncid", "exact", "ops", "pe",
    "sched-flags", "mcast-group", "mcast-port", "mcast-ttl", "sync-maxlen", "tun-info", "tun-type",
    "tun-port", "tun-nocsum", "tun-csum", "tun-remcsum",
)
(OPTC_NUMERIC, OPTC_CONNECTION, OPTC_SERVICE, OPTC_SCHEDULER, OPTC_PERSISTENT, OPTC_NETMASK, OPTC_SERVER,
 OPTC_FORWARD, OPTC_WEIGHT, OPTC_UTHRESHOLD, OPTC_LTHRESHOLD, OPTC_MCAST, OPTC_TIMEOUT, OPTC_DAEMON,
 OPTC_STATS, OPTC_RATE, OPTC_THRESHOLDS, OPTC_PERSISTENTCONN, OPTC_NOSORT, OPTC_SYNCID, OPTC_EXACT,
 OPTC_ONEPACKET, OPTC_PERSISTENCE_ENGINE, OPTC_SCHED_FLAGS, OPTC_MCAST_GROUP, OPTC_MCAST_PORT,
 OPTC_MCAST_TTL, OPTC_SYNC_MAXLEN, OPTC_TUN_INFO, OPTC_TUN_TYPE, OPTC_TUN_PORT, OPTC_TUN_NOCSUM,
 OPTC_TUN_CSUM, OPTC_TUN_REMCSUM) = range(34)


def _opt(c: int) -> int:
    return 1 << c


# Legal combinations of commands and options: '+' compulsory, 'x' illegal,
# '1' at most one of these, ' ' optional.  Columns follow OPTNAMES.
COMMANDS_V_OPTIONS = (
    "xx+   xxxxxxxxxxxxxxx   xxxxxxxxxx",  # add-service
    "xx+   xxxxxxxxxxxxxxx   xxxxxxxxxx",  # edit-service
    "xx+xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",  # delete-service
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",  # flush
    " 11xxxxxxxxx11       xxxxxxx xxxxx",  # list
    "xx+xxx+    xxxxxxxxxxxxxxxxxx     ",  # add-server
    "xx+xxx+xxxxxxxxxxxxxxxxxxxxxxxxxxx",  # delete-server
    "xx+xxx+    xxxxxxxxxxxxxxxxxx     ",  # edit-server
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",  # set
    "xxxxxxxxxxx xxxxxxx xxxx    xxxxxx",  # start-daemon
    "xxxxxxxxxxxxxxxxxxx xxxxxxxxxxxxxx",  # stop-daemon
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",  # restore
    " xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",  # save
    "xx xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",  # zero
)


def _masks(row: str) -> tuple[int, int, int]:
    """A row of the legality table as bit masks of its ``+``, ``x`` and ``1`` columns."""
    plus, x, one = (sum(1 << j for j, ch in enumerate(row) if ch == k) for k in "+x1")
    return plus, x, one


_OPT_MASKS = [_masks(row) for row in COMMANDS_V_OPTIONS]
_TUN_OPTS = sum(1 << c for c in (OPTC_TUN_TYPE, OPTC_TUN_PORT, OPTC_TUN_NOCSUM, OPTC_TUN_CSUM, OPTC_TUN_REMCSUM))

TUNNAMES = ("ipip", "gue", "gre")
TUNFLAGS = ("-c", "+c", "r+c")
TUNOPTS = (OPTC_TUN_PORT, OPTC_TUN_NOCSUM, OPTC_TUN_CSUM, OPTC_TUN_REMCSUM)
TUNNEL_TYPES_V_OPTIONS = ("xxxx", "+111", "x11x")  # ipip, gue, gre

FMT_NUMERIC, FMT_RULE, FMT_STATS, FMT_RATE = 0x1, 0x2, 0x4, 0x8
FMT_THRESHOLDS, FMT_PERSISTENTCONN, FMT_NOSORT, FMT_EXACT, FMT_TUN_INFO = 0x10, 0x20, 0x40, 0x80, 0x100

SERVICE_NONE, SERVICE_ADDR, SERVICE_PORT = 0, 1, 2

# popt option tags above the ASCII range, in ipvsadm's order.
(TAG_SET, TAG_START_DAEMON, TAG_STOP_DAEMON, TAG_MCAST_INTERFACE, TAG_TIMEOUT, TAG_DAEMON, TAG_STATS,
 TAG_RATE, TAG_THRESHOLDS, TAG_PERSISTENTCONN, TAG_SORT, TAG_NO_SORT, TAG_PERSISTENCE_ENGINE,
 TAG_SCTP_SERVICE, TAG_MCAST_GROUP, TAG_MCAST_PORT, TAG_MCAST_TTL, TAG_SYNC_MAXLEN, TAG_TUN_INFO,
 TAG_TUN_TYPE, TAG_TUN_PORT, TAG_TUN_NOCSUM, TAG_TUN_CSUM, TAG_TUN_REMCSUM) = range(128, 152)

ARG_NONE, ARG_STRING, ARG_OPTIONAL = 0, 1, 2

#: (long name, short name, argument, value): ipvsadm's popt table.
OPTIONS_TABLE = (
    ("add-service", "A", ARG_NONE, K_A),
    ("edit-service", "E", ARG_NONE, K_E),
    ("delete-service", "D", ARG_NONE, K_D),
    ("clear", "C", ARG_NONE, K_C),
    ("list", "L", ARG_NONE, K_L),
    ("list", "l", ARG_NONE, K_l),
    ("zero", "Z", ARG_NONE, K_Z),
    ("add-server", "a", ARG_NONE, K_a),
    ("edit-server", "e", ARG_NONE, K_e),
    ("delete-server", "d", ARG_NONE, K_d),
    ("set", "", ARG_NONE, TAG_SET),
    ("help", "h", ARG_NONE, K_h),
    ("version", "v", ARG_NONE, K_v),
    ("restore", "R", ARG_NONE, K_R),
    ("save", "S", ARG_NONE, K_S),
    ("start-daemon", "", ARG_STRING, TAG_START_DAEMON),
    ("stop-daemon", "", ARG_STRING, TAG_STOP_DAEMON),
    ("tcp-service", "t", ARG_STRING, K_t),
    ("udp-service", "u", ARG_STRING, K_u),
    ("sctp-service", "", ARG_STRING, TAG_SCTP_SERVICE),
    ("fwmark-service", "f", ARG_STRING, K_f),
    ("scheduler", "s", ARG_STRING, K_s),
    ("persistent", "p", ARG_OPTIONAL, K_p),
    ("netmask", "M", ARG_STRING, K_M),
    ("real-server", "r", ARG_STRING, K_r),
    ("masquerading", "m", ARG_NONE, K_m),
    ("ipip", "i", ARG_NONE, K_i),
    ("gatewaying", "g", ARG_NONE, K_g),
    ("weight", "w", ARG_STRING, K_w),
    ("u-threshold", "x", ARG_STRING, K_x),
    ("l-threshold", "y", ARG_STRING, K_y),
    ("numeric", "n", ARG_NONE, K_n),
    ("connection", "c", ARG_NONE, K_c),
    ("mcast-interface", "", ARG_STRING, TAG_MCAST_INTERFACE),
    ("syncid", "", ARG_STRING, K_I),
    ("timeout", "", ARG_NONE, TAG_TIMEOUT),
    ("daemon", "", ARG_NONE, TAG_DAEMON),
    ("stats", "", ARG_NONE, TAG_STATS),
    ("rate", "", ARG_NONE, TAG_RATE),
    ("thresholds", "", ARG_NONE, TAG_THRESHOLDS),
    ("persistent-conn", "", ARG_NONE, TAG_PERSISTENTCONN),
    ("nosort", "", ARG_NONE, TAG_NO_SORT),
    ("sort", "", ARG_NONE, TAG_SORT),
    ("exact", "X", ARG_NONE, K_X),
    ("ipv6", "6", ARG_NONE, K_6),
    ("ops", "o", ARG_NONE, K_o),
    ("pe", "", ARG_STRING, TAG_PERSISTENCE_ENGINE),
    ("sched-flags", "b", ARG_STRING, K_b),
    ("mcast-group", "", ARG_STRING, TAG_MCAST_GROUP),
    ("mcast-port", "", ARG_STRING, TAG_MCAST_PORT),
    ("mcast-ttl", "", ARG_STRING, TAG_MCAST_TTL),
    ("sync-maxlen", "", ARG_STRING, TAG_SYNC_MAXLEN),
    ("tun-info", "", ARG_NONE, TAG_TUN_INFO),
    ("tun-type", "", ARG_STRING, TAG_TUN_TYPE),
    ("tun-port", "", ARG_STRING, TAG_TUN_PORT),
    ("tun-nocsum", "", ARG_NONE, TAG_TUN_NOCSUM),
    ("tun-csum", "", ARG_NONE, TAG_TUN_CSUM),
    ("tun-remcsum", "", ARG_NONE, TAG_TUN_REMCSUM),
)

# popt finds the first table entry with a name; "list" appears twice (-L, -l).
_LONG_OPTS: dict[str, OptionEntry] = {}
_SHORT_OPTS: dict[str, OptionEntry] = {}
for _o in OPTIONS_TABLE:
    _LONG_OPTS.setdefault(_o[0], _o)
    if _o[1]:
        _SHORT_OPTS.setdefault(_o[1], _o)

POPT_ERROR_NOARG, POPT_ERROR_BADOPT, POPT_ERROR_UNWANTEDARG = -10, -11, -12
_POPT_MESSAGES = {
    POPT_ERROR_NOARG: "missing argument",
    POPT_ERROR_BADOPT: "unknown option",
    POPT_ERROR_UNWANTEDARG: "option does not take an argument",
}

# ipvs_strerror: (function, errno) -> message; function None matches any.
_STRERROR_TABLE = (
    ("add_service", errno.EEXIST, "Service already exists"),
    ("add_service", errno.ENOENT, "Scheduler or persistence engine not found"),
    ("update_service", errno.ESRCH, "No such service"),
    ("update_service", errno.ENOENT, "Scheduler or persistence engine not found"),
    ("del_service", errno.ESRCH, "No such service"),
    ("zero_service", errno.ESRCH, "No such service"),
    ("add_dest", errno.ESRCH, "Service not defined"),
    ("add_dest", errno.EEXIST, "Destination already exists"),
    ("update_dest", errno.ESRCH, "Service not defined"),
    ("update_dest", errno.ENOENT, "No such destination"),
    ("del_dest", errno.ESRCH, "Service not defined"),
    ("del_dest", errno.ENOENT, "No such destination"),
    ("start_daemon", errno.EEXIST, "Daemon has already run"),
    ("stop_daemon", errno.ESRCH, "No daemon is running"),
    ("get_services", errno.ESRCH, "No such service"),
    ("get_dests", errno.ESRCH, "No such service"),
    ("get_service", errno.ESRCH, "No such service"),
    (None, errno.EPERM, "Permission denied (you must be root)"),
    (None, errno.EINVAL, "Invalid operation.  Possibly wrong module version, address not unicast, ..."),
    (None, errno.ENOPROTOOPT, "Protocol not available"),
    (None, errno.ENOMEM, "Memory allocation problem"),
    (None, errno.EOPNOTSUPP, "Operation not supported with IPv6"),
    (None, errno.EAFNOSUPPORT, "Operation not supported with specified address family"),
    (None, errno.EMSGSIZE, "Module is wrong version"),
)


def ipvs_strerror(func: str | None, err: int) -> str:
    """libipvs's message for ``err`` after a call of ``func``."""
    for f, e, message in _STRERROR_TABLE:
        if (f is None or f == func) and e == err:
            return message
    return os.strerror(err)


class _Exit(Exception):
    """``exit(code)`` from deep inside, as the C code calls it."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


# --------------------------------------------------------------------------
# C library behaviour the parsing depends on


_CSPACE = " \t\n\v\f\r"
_STRTOL = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")


def _strtol(s: str) -> tuple[int | None, str, bool]:
    """(value, rest, overflowed) like ``strtol(s, &end, 10)``; value None if no digits."""
    m = _STRTOL.match(s)
    if not m:
        return None, s, False
    v = int(m.group(1))
    if not -(2**63) <= v < 2**63:
        return (2**63 - 1 if v > 0 else -(2**63)), s[m.end():], True
    return v, s[m.end():], False


def string_to_number(s: str, lo: int, hi: int) -> int:
    """ipvsadm's ``string_to_number``: the whole string, in range, or -1."""
    if s.isascii() and s.isdigit() and len(s) < 19:
        n = int(s)  # the common case, without the regular expression
        return n if lo <= n <= hi else -1
    v, rest, overflow = _strtol(s)
    if v is not None and rest == "" and not overflow and lo <= v <= hi:
        return v
    return -1


def _atoi(s: str) -> int:
    v, _rest, _ = _strtol(s)
    if v is None:
        return 0
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def str_is_digit(s: str) -> bool:
    """True for digits only, and for the empty string (as the C loop finds no non-digit)."""
    return not s or (s.isascii() and s.isdigit())


def _inet_aton(s: str) -> bytes | None:
    try:
        return socket.inet_aton(s)
    except (OSError, ValueError, UnicodeError):
        return None


def _inet_pton(af: int, s: str) -> bytes | None:
    try:
        return socket.inet_pton(af, s)
    except (OSError, ValueError, UnicodeError):
        return None


def _inet_ntop(af: int, packed: bytes) -> str:
    return socket.inet_ntop(af, packed)


def _int32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


class Resolver:
    """Name lookups ipvsadm makes through the C library.

    Swap it for a fake in tests; every method returns None when the
    lookup fails, as the C functions return NULL or -1.
    """

    def host_to_addr(self, name: str) -> bytes | None:
        """``gethostbyname``: the first IPv4 address of a host name."""
        # glibc answers all-numeric names itself without asking DNS.
        if not name or all(c in "0123456789." for c in name) or "\0" in name:
            return None
        try:
            return socket.inet_aton(socket.gethostbyname(name))
        except (OSError, UnicodeError, ValueError):
            return None

    def addr_to_host(self, af: int, packed: bytes) -> str | None:
        """``gethostbyaddr``: the canonical name of an address."""
        try:
            return socket.gethostbyaddr(_inet_ntop(af, packed))[0]
        except (OSError, UnicodeError, ValueError):
            return None

    def service_to_port(self, name: str, proto: str) -> int | None:
        """The port of a service name in ``/etc/services`` for ``proto``, or None."""
        try:
            return socket.getservbyname(name, proto)
        except (OSError, UnicodeError, ValueError, OverflowError):
            return None

    def port_to_service(self, port: int, proto: str) -> str | None:
        """The ``/etc/services`` name of ``port`` for ``proto``, or None."""
        try:
            return socket.getservbyport(port, proto)
        except (OSError, UnicodeError, ValueError, OverflowError):
            return None


_PROTO_SERV = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp", IPPROTO_SCTP: "sctp"}


# --------------------------------------------------------------------------
# popt


class Popt:
    """popt 1.19's ``poptGetNextOpt`` over ipvsadm's option table."""

    def __init__(self, args: list[str]) -> None:
        self.args = args
        self.next = 0
        self.next_char: str | None = None
        self.leftovers: list[str] = []
        self.next_leftover = 0
        self.rest_leftover = False

    @staticmethod
    def _find_long(name: str) -> OptionEntry | None:
        return _LONG_OPTS.get(name)

    @staticmethod
    def _find_short(c: str) -> OptionEntry | None:
        return _SHORT_OPTS.get(c)

    def next_opt(self) -> tuple[int, str | None]:
        """(value, argument); value -1 at the end, or a POPT_ERROR_* code."""
        while True:
            long_arg: str | None = None
            opt: OptionEntry | None = None
            if self.next_char is None:
                if self.next >= len(self.args):
                    return -1, None
                orig = self.args[self.next]
                self.next += 1
                if self.rest_leftover or not orig.startswith("-") or orig == "-":
                    self.leftovers.append(orig)
                    continue
                if orig == "--":
                    self.rest_leftover = True
                    continue
                s = orig[1:]
                one_dash = not s.startswith("-")
                if not one_dash:
                    s = s[1:]
                name, eq, rest = s.partition("=")
                if eq:
                    long_arg = rest
                if not one_dash:
                    opt = self._find_long(name)
                    if opt is None:
                        return POPT_ERROR_BADOPT, None
                else:
                    # No ipvsadm option is a one-dash long option: a cluster of short ones.
                    self.next_char = orig[1:]
                    long_arg = None
            if self.next_char is not None:
                c = self.next_char[0]
                remainder = self.next_char[1:]
                self.next_char = None
                opt = self._find_short(c)
                if opt is None:
                    return POPT_ERROR_BADOPT, None
                if remainder:
                    self.next_char = remainder
            if opt is None:  # not reached: a long option was found, or a short one just now
                return POPT_ERROR_BADOPT, None
            _long, _short, argtype, val = opt
            arg = None
            if argtype == ARG_NONE:
                if long_arg is not None or (self.next_char is not None and self.next_char[0] == "="):
                    return POPT_ERROR_UNWANTEDARG, None
            elif long_arg is not None:
                arg = long_arg
            elif self.next_char is not None:
                arg = self.next_char[1:] if self.next_char[0] == "=" else self.next_char
                self.next_char = None
            elif self.next >= len(self.args):
                if argtype != ARG_OPTIONAL:
                    return POPT_ERROR_NOARG, None
            elif argtype == ARG_OPTIONAL and self.args[self.next].startswith("-"):
                arg = None
            else:
                arg = self.args[self.next]
                self.next += 1
            return val, arg

    def bad_option(self) -> str:
        """``poptBadOption``: the last word taken from argv."""
        return self.args[self.next - 1] if self.next > 0 else PROG

    def get_arg(self) -> str | None:
        """``poptGetArg``: the next word that was not an option, or None."""
        if self.next_leftover < len(self.leftovers):
            self.next_leftover += 1
            return self.leftovers[self.next_leftover - 1]
        return None


# --------------------------------------------------------------------------
# The command being built (struct ipvs_command_entry)


class SvcSpec:
    """``ipvs_service_t`` as ipvsadm fills it; netmask is host order."""

    __slots__ = ("af", "protocol", "addr", "port", "fwmark", "sched_name", "flags", "timeout", "netmask", "pe_name")

    def __init__(self, af: int = 0, protocol: int = 0, addr: bytes = bytes(16), port: int = 0, fwmark: int = 0,
                 sched_name: str = "", flags: int = 0, timeout: int = 0, netmask: int = 0xFFFFFFFF,
                 pe_name: str = "") -> None:
        self.af, self.protocol, self.addr, self.port, self.fwmark = af, protocol, addr, port, fwmark
        self.sched_name, self.flags, self.timeout, self.netmask, self.pe_name = (
            sched_name, flags, timeout, netmask, pe_name)

    def packed(self) -> bytes:
        """The address as the kernel packs it: 4 bytes for IPv4, 16 for IPv6."""
        return self.addr[:4] if self.af == AF_INET else self.addr


class DestSpec:
    """A real server as a command gives it (``ipvs_dest_t``): address, port, forwarding method, weight,
    thresholds, tunnel settings (direct routing, weight 1 unless told)."""

    __slots__ = ("af", "addr", "port", "conn_flags", "weight", "u_threshold", "l_threshold", "tun_type",
                 "tun_port", "tun_flags")

    def __init__(self) -> None:
        self.af, self.addr, self.port = 0, bytes(16), 0
        self.conn_flags, self.weight = uapi.IP_VS_CONN_F_DROUTE, 1
        self.u_threshold = self.l_threshold = 0
        self.tun_type = self.tun_port = self.tun_flags = 0


class DaemonSpec:
    """The sync daemon options of ``--start-daemon``/``--stop-daemon`` (``ipvs_daemon_t``)."""

    __slots__ = ("state", "mcast_ifn", "syncid", "sync_maxlen", "mcast_af", "mcast_group", "mcast_port",
                 "mcast_ttl")

    def __init__(self) -> None:
        self.state = self.syncid = self.sync_maxlen = self.mcast_af = self.mcast_port = self.mcast_ttl = 0
        self.mcast_ifn = self.mcast_group = ""


class CommandEntry:
    """``struct ipvs_command_entry``, built once per command line."""

    __slots__ = ("cmd", "svc", "dest", "timeout", "daemon")

    def __init__(self) -> None:
        self.cmd = CMD_NONE
        self.svc = SvcSpec()
        self.dest = DestSpec()
        self.timeout: tuple[int, int, int] = (0, 0, 0)
        self.daemon = DaemonSpec()


# --------------------------------------------------------------------------
# Entries as the listing code sees them (ipvs_service_entry_t etc.)
#
# Plain classes rather than attrs: importing attrs alone costs more than a
# whole ``ipvsadm -Ln``, and this module is all the client imports.


class ServiceEntry:
    """A service as a listing receives it (``ipvs_service_entry_t``), counters included."""

    __slots__ = ("af", "protocol", "addr", "port", "fwmark", "sched_name", "pe_name", "flags", "timeout",
                 "netmask", "stats")

    def __init__(self, af: int, protocol: int, addr: bytes, port: int, fwmark: int, sched_name: str,
                 pe_name: str, flags: int, timeout: int, netmask: int, stats: tuple[int, ...]) -> None:
        self.af, self.protocol = af, protocol
        self.addr = addr  # 16 bytes, IPv4 in the first four
        self.port, self.fwmark, self.sched_name, self.pe_name = port, fwmark, sched_name, pe_name
        self.flags, self.timeout, self.netmask, self.stats = flags, timeout, netmask, stats


class DestEntry:
    """A real server as a listing receives it (``ipvs_dest_entry_t``), counters included."""

    __slots__ = ("af", "addr", "port", "conn_flags", "weight", "u_threshold", "l_threshold", "activeconns",
                 "inactconns", "persistconns", "tun_type", "tun_port", "tun_flags", "stats")

    def __init__(self, af: int, addr: bytes, port: int, conn_flags: int, weight: int, u_threshold: int,
                 l_threshold: int, activeconns: int, inactconns: int, persistconns: int, tun_type: int,
                 tun_port: int, tun_flags: int, stats: tuple[int, ...]) -> None:
        self.af, self.addr, self.port, self.conn_flags, self.weight = af, addr, port, conn_flags, weight
        self.u_threshold, self.l_threshold = u_threshold, l_threshold
        self.activeconns, self.inactconns, self.persistconns = activeconns, inactconns, persistconns
        self.tun_type, self.tun_port, self.tun_flags, self.stats = tun_type, tun_port, tun_flags, stats


def _addr16(af: int, text: str) -> bytes:
    return _addr16_of(text)


@functools.lru_cache(maxsize=16384)
def _addr16_of(text: str) -> bytes:
    # Cached: a listing names the same real servers under many services.
    packed = _inet_pton(AF_INET, text) or _inet_pton(AF_INET6, text)
    if packed is None:
        raise ValueError(f"not an address: {text!r}")
    return packed + bytes(16 - len(packed))


_STATS = ("conns", "inpkts", "outpkts", "inbytes", "outbytes", "cps", "inpps", "outpps", "inbps", "outbps")
_NO_STATS = (0,) * len(_STATS)
# libipvs parses IPVS_DEST_ATTR_STATS64 with its 32-bit reader: every u64
# counter but the byte counts is read as its low 32 bits.
_DEST_STATS_MASKS = tuple(-1 if k.endswith("bytes") else 0xFFFFFFFF for k in _STATS)


def _service_entry(d: dict) -> ServiceEntry:
    af = d.get("af", AF_INET)
    st = d.get("stats64") or d.get("stats") or {}
    flags = d.get("flags", {"flags": 0, "mask": 0})
    return ServiceEntry(
        af=af,
        protocol=d.get("protocol", 0),
        addr=_addr16(af, d["addr"]) if "addr" in d else bytes(16),
        port=d.get("port", 0),
        fwmark=d.get("fwmark", 0),
        sched_name=d.get("sched_name", "")[:15],
        pe_name=d.get("pe_name", ""),
        flags=flags["flags"] & flags["mask"],
        timeout=d.get("timeout", 0),
        netmask=d.get("netmask", 0),
        stats=tuple(st.get(k, 0) for k in _STATS) if st else _NO_STATS,
    )


def _dest_entry(d: dict, svc_af: int) -> DestEntry:
    get = d.get
    af = get("addr_family") or svc_af
    st = get("stats64") or get("stats")
    if st:
        stats = tuple(map(int.__and__, (st.get(k, 0) for k in _STATS), _DEST_STATS_MASKS))
    else:
        stats = _NO_STATS
    weight = get("weight", 0)
    # Positional, in the field order of DestEntry (af, addr, port, conn_flags,
    # weight, u/l_threshold, active/inact/persistconns, tun_*, stats).
    return DestEntry(af, _addr16_of(d["addr"]), d["port"], get("fwd_method", 0),
                     weight if type(weight) is int and 0 <= weight < 0x80000000 else _int32(weight),
                     get("u_threshold", 0), get("l_threshold", 0), get("active_conns", 0), get("inact_conns", 0),
                     get("persist_conns", 0), get("tun_type", 0), get("tun_port", 0), get("tun_flags", 0), stats)


# --------------------------------------------------------------------------
# Sorting: the C comparators and glibc's merge sort


def _wrap(a: int, b: int) -> int:
    """``(int)(a - b)`` for unsigned 32-bit a and b."""
    return _int32(a - b)


_WORDS4 = __import__("struct").Struct("!4I")


def _words(addr: bytes) -> tuple[int, ...]:
    return _WORDS4.unpack(addr)


def cmp_services(s1: ServiceEntry, s2: ServiceEntry) -> int:
    """``ipvs_cmp_services``."""
    r = _wrap(s1.fwmark, s2.fwmark)
    if r:
        return r
    r = s1.af - s2.af
    if r:
        return r
    r = s1.protocol - s2.protocol
    if r:
        return r
    return _cmp_addr_port(s1, s2)


def cmp_dests(d1: DestEntry, d2: DestEntry) -> int:
    """``ipvs_cmp_dests`` (the first entry's family decides the width)."""
    return _cmp_addr_port(d1, d2)


def _cmp_addr_port(e1, e2) -> int:
    """The address then port comparison both ipvsadm comparators end with:
    32-bit words compared with C's wrapping int difference (the first
    entry's family decides how many words), then the ports."""
    r = 0
    if e1.af == AF_INET6:
        for a, b in zip(_words(e1.addr), _words(e2.addr), strict=True):
            r = _wrap(a, b)
            if r:
                break
    else:
        r = _wrap(_words(e1.addr)[0], _words(e2.addr)[0])
    if r:
        return r
    return e1.port - e2.port


def glibc_qsort(items: list, cmp: Callable[[Any, Any], int]) -> list:
    """glibc 2.36 ``qsort``: a top-down merge sort (``msort_with_tmp``).

    The comparators wrap, so they are not a total order and the result
    depends on the algorithm; this is the one Debian's ipvsadm runs.
    """
    n = len(items)
    if n <= 1:
        return list(items)
    n1 = n // 2
    left = glibc_qsort(items[:n1], cmp)
    right = glibc_qsort(items[n1:], cmp)
    out = []
    i = j = 0
    while i < len(left) and j < len(right):
        if cmp(left[i], right[j]) <= 0:
            out.append(left[i])
            i += 1
        else:
            out.append(right[j])
            j += 1
    out.extend(left[i:])
    out.extend(right[j:])
    return out


_SPAN = 1 << 31


def _agrees(columns: Iterable[Iterable[int]]) -> bool:
    """True if every wrapping ``(int)(a - b)`` of two values of the same
    column has the sign of the true difference: each column spans less
    than 2**31."""
    return all(max(c) - min(c) < _SPAN for c in columns)


def sort_services(items: list[ServiceEntry]) -> list[ServiceEntry]:
    """What ``glibc_qsort(items, cmp_services)`` gives, found faster when it can be.

    When the wrapping differences of ``ipvs_cmp_services`` agree with the
    true ones for every pair (no column of fwmarks or address words spans
    2**31 or more), the comparator is a total order on these entries and
    any stable sort gives what the merge sort gives, so Python's sort runs
    on the same keys.  Otherwise the order depends on the algorithm, and
    the merge sort itself runs.
    """
    if len(items) <= 1:
        return list(items)
    # An IPv4 entry is compared on its first word only.
    words = [_WORDS4.unpack(s.addr) if s.af == AF_INET6 else _WORDS4.unpack(s.addr)[:1] + (0, 0, 0) for s in items]
    if not _agrees([*zip(*words, strict=True), [s.fwmark for s in items]]):
        return glibc_qsort(items, cmp_services)
    keys = [(s.fwmark, s.af, s.protocol, *w, s.port) for s, w in zip(items, words, strict=True)]
    return [items[i] for i in sorted(range(len(items)), key=keys.__getitem__)]


#: Lists up to this long are sorted by the merge sort itself (see sort_dests).
_SHORT_LIST = 3


def sort_dests(items: list[DestEntry]) -> list[DestEntry]:
    """What ``glibc_qsort(items, cmp_dests)`` gives (see :func:`sort_services`);
    destinations of mixed families always take the merge sort, as the
    comparator then reads the first entry's family.  So do short lists
    (most services have a few real servers): there the merge sort's two or
    three comparisons cost less than proving the shortcut exact."""
    if len(items) <= _SHORT_LIST:
        return glibc_qsort(items, cmp_dests)
    af = items[0].af
    if any(d.af != af for d in items):
        return glibc_qsort(items, cmp_dests)
    words = [_WORDS4.unpack(d.addr) for d in items]
    if af != AF_INET6:
        words = [w[:1] for w in words]
    if not _agrees(zip(*words, strict=True)):
        return glibc_qsort(items, cmp_dests)
    keys = [(*w, d.port) for d, w in zip(items, words, strict=True)]
    return [items[i] for i in sorted(range(len(items)), key=keys.__getitem__)]


# --------------------------------------------------------------------------
# The tool


def _largenum(i: int, fmt: int) -> str:
    """``print_largenum``."""
    if fmt & FMT_EXACT:
        width = 9 if len(str(i)) <= 8 else len(str(i)) + 1
        return f"{i:>{width}}"
    if i < 100000000:
        return f"{i:9d}"
    if i < 1000000000:
        return f"{i // 1000:8d}K"
    if i < 100000000000:
        return f"{i // 1000000:8d}M"
    if i < 100000000000000:
        return f"{i // 1000000000:8d}G"
    return f"{i // 1000000000000:8d}T"


_FWD_NAMES = {0: "Masq", 1: "Local", 2: "Tunnel", 3: "Route"}
_PROTO_NAMES = {IPPROTO_TCP: "TCP", IPPROTO_UDP: "UDP", IPPROTO_SCTP: "SCTP"}


def _req(cmd: str, **fields: Any) -> dict:
    return {"version": 1, "cmd": cmd, **fields}


#: Commands per BATCH request (a batch of the largest commands ipvsadm
#: sends stays well under the daemon's 1 MiB request limit; a bigger one
#: would be split).
_BATCH_SIZE = 1000
#: Batches sent and not yet answered while -R goes on parsing.
_MAX_INFLIGHT = 2


def _c_str(s: str | None) -> str:
    """How printf's %s shows a NULL pointer."""
    return "(null)" if s is None else s


class Ipvsadm:
    """One run of ipvsadm: its streams, transport and the kernel info."""

    def __init__(self, transport_factory: Callable[[], Any], stdout: TextIO, stderr: TextIO, stdin: TextIO,
                 resolver: Resolver | None = None) -> None:
        self._factory = transport_factory
        #: The director: any object with ``call(request) -> reply`` (and
        #: ``submit``/``receive`` to pipeline), set by :meth:`init`.
        self._transport: Any = None
        self.out = stdout
        self.err = stderr
        self.stdin = stdin
        self.resolver = resolver or Resolver()
        self.info: tuple[int, int] | None = None
        #: Schema extensions the director announced (GET_INFO ``extensions``).
        self.extensions: frozenset[str] = frozenset()
        self.func: str | None = "init"  # libipvs's ipvs_func, for ipvs_strerror
        # During -R, changing commands are queued and sent in BATCH requests
        # (or pipelined, to a director without BATCH): a round trip per line
        # would dominate a large restore.  On a socket, a full batch is sent
        # at once and its replies read later (at most _MAX_INFLIGHT batches
        # ahead), so the daemon runs one batch while this side parses the
        # next.  Anything that shows output (an error, a listing) first
        # reports every queued command, so the order of what the user sees
        # is the order of the lines.
        self.batching = False
        self._queue: list[tuple[str | None, dict]] = []
        self._inflight: list[list[tuple[str | None, dict]]] = []
        self._last_queued = False
        self._last_failed = False
        #: The restore fast path (:meth:`fast_command`); tests turn it off to
        #: compare with the full popt emulation.
        self.fast = True
        self._fast_addrs: dict[str, tuple[str, int] | None] = {}

    # ------------------------------------------------------------ plumbing

    def fail(self, code: int, msg: str) -> NoReturn:
        """``fail()``: print ``msg`` and leave with ``code``."""
        self.error(msg + "\n")
        raise _Exit(code)

    def tryhelp_exit(self, code: int) -> NoReturn:
        """``tryhelp_exit()``: print the ``Try `ipvsadm -h' ...`` line and leave with ``code``."""
        self.error(f"Try `{PROG} -h' or '{PROG} --help' for more information.\n")
        raise _Exit(code)

    def init(self) -> tuple[int, int]:
        """``ipvs_init``: reach the director and read its version and table size (returned)."""
        if self.info is not None:
            return self.info
        try:
            self._transport = self._factory()
            reply = self._transport.call({"version": 1, "cmd": "GET_INFO"})
            if not reply.get("ok"):
                raise OSError(reply.get("errno", errno.EIO), reply.get("message", ""))
            info = reply["info"]
            version, size = int(info["version"]), int(info["conn_tab_size"])
        except (OSError, ImportError, KeyError, TypeError, ValueError, AttributeError) as e:
            reason = os.strerror(e.errno) if isinstance(e, OSError) and e.errno else str(e) or type(e).__name__
            self.fail(2, f"Can't initialize ipvs: {reason}\n"
                         "Are you sure that the IP Virtual Server daemon (ipvsd) is running "
                         "in this network namespace?")
        ext = reply.get("extensions")
        if isinstance(ext, list):
            self.extensions = frozenset(e for e in ext if isinstance(e, str))
        if version < MINIMUM_IPVS_VERSION:
            v = version
            self.err.write("Warning: IPVS version mismatch: \n"
                           f"  Kernel compiled with IPVS version {v >> 16}.{(v >> 8) & 0xFF}.{v & 0xFF}\n"
                           "  ipvsadm v1.31  requires minimum IPVS version 1.1.4\n\n")
        self.info = (version, size)
        return self.info

    def error(self, text: str) -> None:
        """Write to stderr after the queued commands have reported."""
        self.flush()
        self.err.write(text)

    def call(self, cmd: str, **fields: Any) -> dict:
        """Send one request; transport failures come back as error replies."""
        self.init()
        self.flush()
        return self._call_many([{"version": 1, "cmd": cmd, **fields}])[0]

    def _call_many(self, reqs: list[dict]) -> list[dict]:
        try:
            many = getattr(self._transport, "call_many", None)
            replies = many(reqs) if many is not None and len(reqs) > 1 else [self._transport.call(r) for r in reqs]
        except OSError as e:
            return [{"ok": False, "errno": e.errno or errno.EIO}] * len(reqs)
        return [r if isinstance(r, dict) else {"ok": False, "errno": errno.EIO} for r in replies]

    # Batches.  A BATCH reply holds one reply per command; a director that
    # did not announce BATCH gets the commands one by one (pipelined).

    def _can_submit(self) -> bool:
        t = self._transport
        return "BATCH" in self.extensions and hasattr(t, "submit") and hasattr(t, "receive")

    def _submit(self, reqs: list[dict]) -> list[int]:
        """Send ``reqs`` as BATCH requests without waiting; returns the sizes
        of the batches sent (a batch over the frame limit is split)."""
        try:
            self._transport.submit(_req("BATCH", requests=reqs))
            return [len(reqs)]
        except OSError as e:
            if e.errno != errno.EMSGSIZE or len(reqs) < 2:
                raise
        half = len(reqs) // 2
        return self._submit(reqs[:half]) + self._submit(reqs[half:])

    def _batch_replies(self, reply: Any, n: int) -> list[dict]:
        """The per-command replies of one BATCH reply."""
        if isinstance(reply, dict) and not reply.get("ok") and "replies" not in reply:
            # The batch as a whole was refused: every command fails with its errno.
            return [{"ok": False, "errno": reply.get("errno", errno.EIO)}] * n
        replies = reply["replies"]
        if not isinstance(replies, list) or len(replies) != n:
            raise ValueError("a BATCH reply does not hold one reply per request")
        return [r if isinstance(r, dict) else {"ok": False, "errno": errno.EIO} for r in replies]

    def _call_batch(self, reqs: list[dict]) -> list[dict]:
        """Run ``reqs`` now, in BATCH requests if the director has them."""
        if "BATCH" not in self.extensions or len(reqs) < 2:
            return self._call_many(reqs)
        out: list[dict] = []
        try:
            if self._can_submit():
                sizes = self._submit(reqs)
                for n in sizes:
                    out += self._batch_replies(self._transport.receive(), n)
            else:
                for i in range(0, len(reqs), _BATCH_SIZE):
                    chunk = reqs[i : i + _BATCH_SIZE]
                    out += self._batch_replies(self._transport.call(_req("BATCH", requests=chunk)), len(chunk))
        except OSError as e:
            return out + [{"ok": False, "errno": e.errno or errno.EIO}] * (len(reqs) - len(out))
        return out

    def queue(self, func: str | None, req: dict) -> None:
        """Queue a request for the next batch sent to the director (``-R`` and batched listings); ``func`` names the
        libipvs call its error message is for.
        """
        self.init()
        self._queue.append((func, req))
        self._last_queued = True
        if len(self._queue) >= _BATCH_SIZE:
            self._send_queue()

    def _send_queue(self) -> None:
        """Send the queued commands: in the background on a socket, else now."""
        queue, self._queue = self._queue, []
        if not queue:
            return
        if not self._can_submit():
            self._report(queue, self._call_batch([req for _func, req in queue]))
            return
        try:
            sizes = self._submit([req for _func, req in queue])
        except OSError as e:
            self._drain()
            self._report(queue, [{"ok": False, "errno": e.errno or errno.EIO}] * len(queue))
            return
        for n in sizes:
            self._inflight.append(queue[:n])
            queue = queue[n:]
        while len(self._inflight) > _MAX_INFLIGHT:
            self._collect()

    def _collect(self) -> None:
        """Read and report the replies of the oldest batch in flight."""
        batch = self._inflight.pop(0)
        try:
            replies = self._batch_replies(self._transport.receive(), len(batch))
        except OSError as e:
            # The connection is gone: this batch and the ones after it failed.
            failed = {"ok": False, "errno": e.errno or errno.EIO}
            rest, self._inflight = self._inflight, []
            self._report(batch, [failed] * len(batch))
            for b in rest:
                self._report(b, [failed] * len(b))
            return
        self._report(batch, replies)

    def _drain(self) -> None:
        while self._inflight:
            self._collect()

    def _report(self, queue: list[tuple[str | None, dict]], replies: list[dict]) -> None:
        """Print the errors of answered commands, in order (to stderr directly:
        :meth:`error` would flush again in the middle of this batch)."""
        for (func, _req), reply in zip(queue, replies, strict=True):
            if func is not None:
                self.func = func
            self._last_failed = failed = not reply.get("ok")
            if failed:
                self.err.write(ipvs_strerror(self.func, int(reply.get("errno", errno.EIO))) + "\n")

    def flush(self) -> bool:
        """Send the queued commands and report their errors; True if the
        last command reported failed."""
        if not self._queue and not self._inflight:
            return self._last_failed
        self._send_queue()
        self._drain()
        return self._last_failed

    # ---------------------------------------------------------- addresses

    def parse_service(self, buf: str | None, svc: SvcSpec) -> int:
        """``parse_service``: fill address (and port) from host[:port]."""
        if buf is None or str_is_digit(buf):
            return SERVICE_NONE
        portp: str | None = None
        if buf.startswith("["):
            buf = buf[1:]
            close = buf.find("]")
            if close < 0:
                return SERVICE_NONE
            after = buf[close + 1 :]
            buf = buf[:close]
            if not after.startswith(":"):
                return SERVICE_NONE
            portp = after[1:]
        # An IPv6 address has at least two colons; skipping the attempt
        # otherwise saves a failed conversion for every IPv4 address.
        a6 = _inet_pton(AF_INET6, buf) if buf.count(":") >= 2 else None
        if a6 is not None:
            svc.addr = a6
            svc.af = AF_INET6
            svc.netmask = 128
        else:
            colon = buf.rfind(":")
            if colon >= 0:
                portp = buf[colon + 1 :]
                buf = buf[:colon]
            else:
                # Without a colon here, a bracketed IPv4 address drops its port.
                portp = None
            a4 = _inet_aton(buf)
            if a4 is None:
                a4 = self.resolver.host_to_addr(buf)
            if a4 is None:
                return SERVICE_NONE
            svc.addr = a4 + bytes(12)
            svc.af = AF_INET
        result = SERVICE_ADDR
        if portp is not None:
            result |= SERVICE_PORT
            portn = string_to_number(portp, 0, 65535)
            if portn == -1:
                proto = _PROTO_SERV.get(svc.protocol)
                found = self.resolver.service_to_port(portp, proto) if proto else None
                if found is None:
                    return SERVICE_NONE
                portn = found
            svc.port = portn
        return result

    def parse_netmask(self, buf: str) -> int | None:
        """``parse_netmask``: a dotted mask or host name as a 32-bit number, or None."""
        a = _inet_aton(buf)
        if a is None:
            a = self.resolver.host_to_addr(buf)
        return None if a is None else int.from_bytes(a, "big")

    def addr_to_anyname(self, af: int, packed: bytes) -> str:
        """The host name of an address, or its numeric form when it has none."""
        name = self.resolver.addr_to_host(af, packed)
        return name if name is not None else _inet_ntop(af, packed)

    def port_to_anyname(self, port: int, proto: int) -> str:
        """The service name of a port for the protocol, or the number."""
        p = _PROTO_SERV.get(proto)
        name = self.resolver.port_to_service(port, p) if p else None
        return name if name is not None else str(port)

    def addrport_to_anyname(self, af: int, addr16: bytes, port: int, proto: int, fmt: int) -> str:
        """``addrport_to_anyname``: ``host:port`` as listings print it, numeric with ``-n``, IPv6 in brackets."""
        packed = addr16[:4] if af == AF_INET else addr16[:16]
        lb, rb = ("", "") if af == AF_INET else ("[", "]")
        if fmt & FMT_NUMERIC:
            s = f"{lb}{_inet_ntop(af if af == AF_INET else AF_INET6, packed)}{rb}:{port}"
        else:
            host = self.addr_to_anyname(af if af == AF_INET else AF_INET6, packed)
            s = f"{lb}{host}{rb}:{self.port_to_anyname(port, proto)}"
        return s[:59]  # snprintf into a 60-byte buffer

    # ------------------------------------------------------------- parsing

    def parse_options(self, args: list[str], ce: CommandEntry) -> tuple[int, int, int]:
        """``parse_options``: (status, options, format); status -1 on a popt error."""
        options = 0
        fmt = 0
        sched_flags_arg = ""
        popt = Popt(args)

        def set_option(optc: int) -> None:
            nonlocal options
            bit = 1 << optc
            if options & bit:
                self.fail(2, f"multiple '{OPTNAMES[optc]}' options specified")
            options |= bit

        def set_command(newcmd: int) -> None:
            if ce.cmd != CMD_NONE:
                self.fail(2, "multiple commands specified")
            ce.cmd = newcmd

        c, optarg = popt.next_opt()
        if c < 0:
            self.tryhelp_exit(-1)
        if c in _FIRST_OPTION_COMMANDS:
            set_command(_FIRST_OPTION_COMMANDS[c])
        elif c in (TAG_START_DAEMON, TAG_STOP_DAEMON):
            set_command(CMD_STARTDAEMON if c == TAG_START_DAEMON else CMD_STOPDAEMON)
            if optarg == "master":
                ce.daemon.state = uapi.IP_VS_STATE_MASTER
            elif optarg == "backup":
                ce.daemon.state = uapi.IP_VS_STATE_BACKUP
            elif c == TAG_START_DAEMON:
                self.fail(2, "illegal start-daemon parameter specified")
            else:
                self.fail(2, "illegal start_daemon specified")
        elif c == K_h:
            self.usage_exit(0)
        elif c == K_v:
            self.out.write(self.version_line())
            raise _Exit(0)
        else:
            self.tryhelp_exit(-1)

        while True:
            c, optarg = popt.next_opt()
            if c < 0:
                break
            # popt gives an option that takes an argument its word (or fails
            # above); only -p's is optional, None when left out.
            arg = "" if optarg is None else optarg
            if c in (K_t, K_u, TAG_SCTP_SERVICE):
                set_option(OPTC_SERVICE)
                ce.svc.protocol = {K_t: IPPROTO_TCP, K_u: IPPROTO_UDP}.get(c, IPPROTO_SCTP)
                if not self.parse_service(optarg, ce.svc) & SERVICE_ADDR:
                    self.fail(2, "illegal virtual server address[:port] specified")
            elif c == K_f:
                set_option(OPTC_SERVICE)
                ce.svc.af = AF_INET
                ce.svc.protocol = IPPROTO_TCP
                ce.svc.fwmark = self.parse_fwmark(arg)
            elif c == K_s:
                set_option(OPTC_SCHEDULER)
                ce.svc.sched_name = arg[: uapi.IP_VS_SCHEDNAME_MAXLEN - 1]
            elif c == K_p:
                set_option(OPTC_PERSISTENT)
                ce.svc.flags |= uapi.IP_VS_SVC_F_PERSISTENT
                ce.svc.timeout = self.parse_timeout(optarg, 1, MAX_TIMEOUT)
            elif c == K_M:
                set_option(OPTC_NETMASK)
                if ce.svc.af != AF_INET6:
                    mask = self.parse_netmask(arg)
                    if mask is None:
                        self.fail(2, "illegal virtual server persistent mask specified")
                    ce.svc.netmask = mask
                else:
                    ce.svc.netmask = _atoi(arg)
                    if not 1 <= ce.svc.netmask <= 128:
                        self.fail(2, "illegal ipv6 netmask specified")
            elif c == K_r:
                set_option(OPTC_SERVER)
                # parse into a copy of the service, so -r inherits its protocol and port
                t = SvcSpec(af=ce.svc.af, protocol=ce.svc.protocol, addr=ce.svc.addr, port=ce.svc.port)
                parse = self.parse_service(optarg, t)
                ce.dest.af, ce.dest.addr, ce.dest.port = t.af, t.addr, t.port
                if not parse & SERVICE_ADDR:
                    self.fail(2, "illegal real server address[:port] specified")
                if parse == SERVICE_ADDR:
                    ce.dest.port = ce.svc.port
            elif c in (K_i, K_g, K_m):
                set_option(OPTC_FORWARD)
                ce.dest.conn_flags = {K_i: uapi.IP_VS_CONN_F_TUNNEL, K_g: uapi.IP_VS_CONN_F_DROUTE,
                                      K_m: uapi.IP_VS_CONN_F_MASQ}[c]
            elif c == K_w:
                set_option(OPTC_WEIGHT)
                # Debian's 1.31 build takes any weight the kernel does (0..INT_MAX),
                # not upstream's 0..65535: the recorded transcript accepts 70000.
                ce.dest.weight = string_to_number(arg, 0, INT_MAX)
                if ce.dest.weight == -1:
                    self.fail(2, "illegal weight specified")
            elif c == K_x:
                set_option(OPTC_UTHRESHOLD)
                ce.dest.u_threshold = string_to_number(arg, 0, INT_MAX)
                if ce.dest.u_threshold == -1:
                    self.fail(2, "illegal u_threshold specified")
            elif c == K_y:
                set_option(OPTC_LTHRESHOLD)
                ce.dest.l_threshold = string_to_number(arg, 0, INT_MAX)
                if ce.dest.l_threshold == -1:
                    self.fail(2, "illegal l_threshold specified")
            elif c == K_c:
                set_option(OPTC_CONNECTION)
            elif c == K_n:
                set_option(OPTC_NUMERIC)
                fmt |= FMT_NUMERIC
            elif c == TAG_MCAST_INTERFACE:
                set_option(OPTC_MCAST)
                ce.daemon.mcast_ifn = arg[: uapi.IP_VS_IFNAME_MAXLEN - 1]
            elif c == K_I:
                set_option(OPTC_SYNCID)
                ce.daemon.syncid = string_to_number(arg, 0, 255)
                if ce.daemon.syncid == -1:
                    self.fail(2, "illegal syncid specified")
            elif c in _SIMPLE_FLAGS:
                optc, flag = _SIMPLE_FLAGS[c]
                set_option(optc)
                fmt |= flag
            elif c == TAG_SORT:
                pass  # sorting is the default; kept for compatibility
            elif c == K_6:
                if ce.svc.fwmark:
                    ce.svc.af = AF_INET6
                    ce.svc.netmask = 128
                else:
                    self.fail(2, "-6 used before -f\n")
            elif c == K_o:
                set_option(OPTC_ONEPACKET)
                ce.svc.flags |= uapi.IP_VS_SVC_F_ONEPACKET
            elif c == TAG_PERSISTENCE_ENGINE:
                set_option(OPTC_PERSISTENCE_ENGINE)
                ce.svc.pe_name = arg[: uapi.IP_VS_PENAME_MAXLEN]
            elif c == K_b:
                set_option(OPTC_SCHED_FLAGS)
                sched_flags_arg = arg[:127]
            elif c == TAG_MCAST_GROUP:
                set_option(OPTC_MCAST_GROUP)
                self.parse_mcast_group(arg, ce.daemon)
            elif c == TAG_MCAST_PORT:
                set_option(OPTC_MCAST_PORT)
                ce.daemon.mcast_port = string_to_number(arg, 1, 65535)
                if ce.daemon.mcast_port == -1:
                    self.fail(2, "illegal mcast-port specified")
            elif c == TAG_MCAST_TTL:
                set_option(OPTC_MCAST_TTL)
                ce.daemon.mcast_ttl = string_to_number(arg, 1, 255)
                if ce.daemon.mcast_ttl == -1:
                    self.fail(2, "illegal mcast-ttl specified")
            elif c == TAG_SYNC_MAXLEN:
                set_option(OPTC_SYNC_MAXLEN)
                ce.daemon.sync_maxlen = string_to_number(arg, 1, 65535 - 20 - 8)
                if ce.daemon.sync_maxlen == -1:
                    self.fail(2, "illegal sync-maxlen specified")
            elif c == TAG_TUN_TYPE:
                set_option(OPTC_TUN_TYPE)
                if optarg not in TUNNAMES:
                    self.fail(2, "illegal tunnel type specified")
                ce.dest.tun_type = TUNNAMES.index(optarg)
            elif c == TAG_TUN_PORT:
                set_option(OPTC_TUN_PORT)
                ce.dest.tun_port = string_to_number(arg, 1, 65535)
                if ce.dest.tun_port == -1:
                    self.fail(2, "illegal tunnel port specified")
            elif c == TAG_TUN_NOCSUM:
                set_option(OPTC_TUN_NOCSUM)
            elif c == TAG_TUN_CSUM:
                set_option(OPTC_TUN_CSUM)
                ce.dest.tun_flags |= uapi.IP_VS_TUNNEL_ENCAP_FLAG_CSUM
            elif c == TAG_TUN_REMCSUM:
                set_option(OPTC_TUN_REMCSUM)
                ce.dest.tun_flags |= uapi.IP_VS_TUNNEL_ENCAP_FLAG_REMCSUM
            else:
                self.fail(2, f"invalid option `{popt.bad_option()}'")

        if c < -1:
            self.error(f"{popt.bad_option()}: {_POPT_MESSAGES.get(c, 'unknown error')}\n")
            return -1, options, fmt

        if ce.cmd == CMD_TIMEOUT:
            a0 = popt.get_arg()
            a1 = popt.get_arg() if a0 is not None else None
            a2 = popt.get_arg() if a1 is not None else None
            if a2 is None:
                self.fail(2, "--set option requires 3 timeout values")
            ce.timeout = (self.parse_timeout(a0, 0, MAX_TIMEOUT), self.parse_timeout(a1, 0, MAX_TIMEOUT),
                          self.parse_timeout(a2, 0, MAX_TIMEOUT))

        extra = popt.get_arg()
        if extra is not None:
            self.fail(2, f"unexpected argument {extra}")

        if sched_flags_arg:
            ce.svc.flags &= ~uapi.IP_VS_SVC_F_SCHED_MASK
            ce.svc.flags |= self.parse_sched_flags(ce.svc.sched_name, sched_flags_arg)
        return 0, options, fmt

    def parse_timeout(self, buf: str | None, lo: int, hi: int) -> int:
        """``parse_timeout``: the ``-p`` timeout in ``lo..hi`` (the 360 s default when none is given); a bad value
        fails with status 2.
        """
        if buf is None:
            return IPVS_SVC_PERSISTENT_TIMEOUT
        i = string_to_number(buf, lo, hi)
        if i == -1:
            self.fail(2, f"invalid timeout value `{buf}' specified")
        return i

    def parse_fwmark(self, buf: str) -> int:
        """A firewall mark, 1..2^32-1 as ``strtol`` reads it; anything else fails with status 2."""
        v, rest, overflow = _strtol(buf)
        if v is None or rest != "" or overflow or v <= 0 or v > 0xFFFFFFFF:
            self.fail(2, f"invalid fwmark value `{buf}' specified")
        return v

    def parse_mcast_group(self, arg: str, d: DaemonSpec) -> None:
        """``--mcast-group``: a multicast IPv4 or IPv6 group into ``d``; anything else fails with status 2."""
        if ":" in arg:
            a = _inet_pton(AF_INET6, arg)
            if a is None or a[0] != 0xFF:
                self.fail(2, f"invalid IPv6 mcast-group `{arg}'")
            d.mcast_af = AF_INET6
            d.mcast_group = _inet_ntop(AF_INET6, a)
        else:
            a = _inet_pton(AF_INET, arg)
            if a is None or (a[0] & 0xF0) != 0xE0:
                self.fail(2, f"invalid IPv4 mcast-group `{arg}'")
            d.mcast_af = AF_INET
            d.mcast_group = _inet_ntop(AF_INET, a)

    def parse_sched_flags(self, sched: str, arg: str) -> int:
        """``parse_sched_flags``: the ``-b`` flags of the scheduler as ``IP_VS_SVC_F_SCHED*`` bits."""
        sched = sched or DEF_SCHED
        tokens = [t for t in arg.split(",") if t]
        if not tokens:
            # strtok finds no flag and ipvsadm passes NULL to strcmp: it dies
            # of SIGSEGV, which a subprocess return code shows as -11.
            raise _Exit(-11)
        flags = 0
        for flag in tokens:
            if flag == "flag-1":
                flags |= uapi.IP_VS_SVC_F_SCHED1
            elif flag == "flag-2":
                flags |= uapi.IP_VS_SVC_F_SCHED2
            elif flag == "flag-3":
                flags |= uapi.IP_VS_SVC_F_SCHED3
            elif flag in ("sh-fallback", "sh-port", "mh-fallback", "mh-port"):
                flags |= uapi.IP_VS_SVC_F_SCHED1 if flag.endswith("fallback") else uapi.IP_VS_SVC_F_SCHED2
                if sched != flag[:2]:
                    self.fail(2, f"incompatible scheduler flag `{flag}'")
            else:
                self.fail(2, f"invalid scheduler flag `{flag}'")
        return flags

    def generic_opt_check(self, command: int, options: int) -> None:
        """``generic_opt_check``: the options given are legal for the command (``commands_v_options``); the first
        complaint fails with status 2.
        """
        required, illegal, exclusive = _OPT_MASKS[command - 1]
        if (not options & illegal and required & ~options == 0
                and (options & exclusive) & ((options & exclusive) - 1) == 0):
            return  # nothing to complain about: skip the walk that finds the first complaint
        self._legality_walk(COMMANDS_V_OPTIONS[command - 1], range(len(COMMANDS_V_OPTIONS[command - 1])),
                            options, f"'{CMDNAMES[command - 1]}' command")

    def tunnel_opt_check(self, tun_type: int, options: int) -> None:
        """``tunnel_opt_check``: the tunnel options given are legal for the tunnel type."""
        self._legality_walk(TUNNEL_TYPES_V_OPTIONS[tun_type], TUNOPTS, options,
                            f"'{TUNNAMES[tun_type]}' tunnel type")

    def _legality_walk(self, row, optidx, options: int, subject: str) -> None:
        """The walk of ipvsadm's generic_opt_check / tunnel_opt_check: for
        each option of a legality row ('+' required, 'x' illegal, '1' at most
        one of the '1's), fail with ipvsadm's message for the first problem."""
        last = 0
        count = 0
        for legal, k in zip(row, optidx, strict=True):
            if not options & _opt(k):
                if legal == "+":
                    self.fail(2, f"You need to supply the '{OPTNAMES[k]}' option for the {subject}")
            else:
                if legal == "x":
                    self.fail(2, f"Illegal '{OPTNAMES[k]}' option with the {subject}")
                if legal == "1":
                    count += 1
                    if count == 1:
                        last = k
                        continue
                    self.fail(2, f"The option '{OPTNAMES[k]}' conflicts with the '{OPTNAMES[last]}' option "
                                 f"in the {subject}")

    # ------------------------------------------------------------ running

    def process_options(self, args: list[str], reading_stdin: bool) -> int:
        """``process_options``: parse one command line, check it and run it; the result as ipvsadm returns it."""
        ce = CommandEntry()
        status, options, fmt = self.parse_options(args, ce)
        if status:
            return -1
        self.generic_opt_check(ce.cmd, options)

        if ce.cmd in (CMD_ADD, CMD_EDIT):
            if not ce.svc.fwmark and not ce.svc.port and not ce.svc.flags & uapi.IP_VS_SVC_F_PERSISTENT:
                self.fail(2, "Zero port specified for non-persistent service")
            if ce.svc.flags & uapi.IP_VS_SVC_F_ONEPACKET and not ce.svc.fwmark and ce.svc.protocol != IPPROTO_UDP:
                self.fail(2, "One-Packet Scheduling is only for UDP virtual services")
            if not ce.svc.sched_name:
                ce.svc.sched_name = DEF_SCHED

        if ce.cmd == CMD_STARTDAEMON and not ce.daemon.mcast_ifn:
            ce.daemon.mcast_ifn = DEF_MCAST_IFN

        fwd = ce.dest.conn_flags & uapi.IP_VS_CONN_F_FWD_MASK
        if ce.cmd in (CMD_ADDDEST, CMD_EDITDEST):
            if not ce.svc.fwmark and fwd in (uapi.IP_VS_CONN_F_TUNNEL, uapi.IP_VS_CONN_F_DROUTE):
                ce.dest.port = ce.svc.port
            if ce.dest.af != ce.svc.af and fwd != uapi.IP_VS_CONN_F_TUNNEL:
                self.fail(2, "Different address family is allowed only for tunneling servers")
            if options & _TUN_OPTS and fwd != uapi.IP_VS_CONN_F_TUNNEL:
                self.fail(2, "Tunnel options conflict with forward method")
            if options & _TUN_OPTS or ce.dest.tun_type:
                # (ipip without tunnel options can have nothing to complain about)
                self.tunnel_opt_check(ce.dest.tun_type, options)

        if ce.cmd == CMD_LIST:
            o = options
            if ((o & (_opt(OPTC_CONNECTION) | _opt(OPTC_TIMEOUT) | _opt(OPTC_DAEMON))
                 and o & (_opt(OPTC_STATS) | _opt(OPTC_RATE) | _opt(OPTC_THRESHOLDS)))
                    or (o & (_opt(OPTC_TIMEOUT) | _opt(OPTC_DAEMON)) and o & _opt(OPTC_PERSISTENTCONN))):
                self.fail(2, "options conflicts in the list command")
            if o & _opt(OPTC_CONNECTION):
                self.list_conn(fmt)
            elif o & _opt(OPTC_SERVICE):
                self.list_service(ce.svc, fmt)
            elif o & _opt(OPTC_TIMEOUT):
                self.list_timeout()
            elif o & _opt(OPTC_DAEMON):
                self.list_daemon()
            else:
                self.list_all(fmt)
            return 0
        if ce.cmd == CMD_RESTORE:
            return self.restore_table(reading_stdin)
        if ce.cmd == CMD_SAVE:
            self.list_all(fmt | FMT_RULE)
            return 0

        func, req = self.kernel_command(ce)
        if self.batching:
            self.queue(func, req)
            return 0
        self.init()
        self.flush()
        reply = self._call_many([req])[0]
        if func is not None:
            self.func = func
        if not reply.get("ok"):
            self.error(ipvs_strerror(self.func, int(reply.get("errno", errno.EIO))) + "\n")
            return -1
        return 0

    def _svc_attrs(self, svc: SvcSpec, full: bool = True) -> dict:
        """``ipvs_nl_fill_service_attr``."""
        d: dict[str, Any] = {"af": svc.af}
        if svc.fwmark:
            d["fwmark"] = svc.fwmark
        else:
            d["protocol"] = svc.protocol
            d["addr"] = _inet_ntop(AF_INET6 if svc.af == AF_INET6 else AF_INET, svc.packed())
            d["port"] = svc.port
        if full:
            d["sched_name"] = svc.sched_name
            if svc.pe_name:
                d["pe_name"] = svc.pe_name
            d["flags"] = {"flags": svc.flags & 0xFFFFFFFF, "mask": 0xFFFFFFFF}
            d["timeout"] = svc.timeout
            d["netmask"] = svc.netmask & 0xFFFFFFFF
        return d

    @staticmethod
    def _dest_attrs(dest: DestSpec) -> dict:
        """``ipvs_nl_fill_dest_attr``; the tunnel attributes only when set
        (the schema reads a missing one as 0, and a restore sends 100,000 of
        these)."""
        af = AF_INET6 if dest.af == AF_INET6 else AF_INET
        d = {
            "addr_family": dest.af,
            "addr": _inet_ntop(af, dest.addr[:4] if af == AF_INET else dest.addr),
            "port": dest.port,
            "fwd_method": dest.conn_flags & uapi.IP_VS_CONN_F_FWD_MASK,
            "weight": dest.weight,
            "u_threshold": dest.u_threshold,
            "l_threshold": dest.l_threshold,
        }
        if dest.tun_type:
            d["tun_type"] = dest.tun_type
        if dest.tun_port:
            d["tun_port"] = dest.tun_port
        if dest.tun_flags:
            d["tun_flags"] = dest.tun_flags
        return d

    def kernel_command(self, ce: CommandEntry) -> tuple[str | None, dict]:
        """The libipvs call for a changing command: (its name, the request)."""
        cmd = ce.cmd
        if cmd == CMD_FLUSH:
            return None, _req("FLUSH")
        if cmd in (CMD_ADD, CMD_EDIT, CMD_DEL):
            name, func = {CMD_ADD: ("NEW_SERVICE", "add_service"), CMD_EDIT: ("SET_SERVICE", "update_service"),
                          CMD_DEL: ("DEL_SERVICE", "del_service")}[cmd]
            return func, _req(name, service=self._svc_attrs(ce.svc))
        if cmd == CMD_ZERO:
            s = ce.svc
            if s.fwmark or any(s.addr) or s.port:
                return "zero_service", _req("ZERO", service=self._svc_attrs(s))
            return "zero_service", _req("ZERO")
        if cmd in (CMD_ADDDEST, CMD_EDITDEST, CMD_DELDEST):
            name, func = {CMD_ADDDEST: ("NEW_DEST", "add_dest"), CMD_EDITDEST: ("SET_DEST", "update_dest"),
                          CMD_DELDEST: ("DEL_DEST", "del_dest")}[cmd]
            # Only the service's identity: libipvs sends every service
            # attribute, but ip_vs_genl_parse_service reads no more for a
            # destination command, and a restore sends this 10 times per service.
            return func, _req(name, service=self._svc_attrs(ce.svc, full=False), dest=self._dest_attrs(ce.dest))
        if cmd == CMD_TIMEOUT:
            tcp, fin, udp = ce.timeout
            return "set_timeout", _req("SET_CONFIG", timeout_tcp=tcp, timeout_tcp_fin=fin, timeout_udp=udp)
        d = ce.daemon
        if cmd == CMD_STARTDAEMON:
            attrs_: dict[str, Any] = {"state": d.state, "mcast_ifn": d.mcast_ifn, "sync_id": d.syncid}
            if d.sync_maxlen:
                attrs_["sync_maxlen"] = d.sync_maxlen
            if d.mcast_port:
                attrs_["mcast_port"] = d.mcast_port
            if d.mcast_ttl:
                attrs_["mcast_ttl"] = d.mcast_ttl
            if d.mcast_af == AF_INET6:
                attrs_["mcast_group6"] = d.mcast_group
            elif d.mcast_af == AF_INET:
                attrs_["mcast_group"] = d.mcast_group
            return "start_daemon", _req("NEW_DAEMON", daemon=attrs_)
        return "stop_daemon", _req("DEL_DAEMON", daemon={"state": d.state, "mcast_ifn": d.mcast_ifn,
                                                                "sync_id": d.syncid})

    # ------------------------------------------------------------ fast path

    def fast_command(self, tokens: list[str]) -> tuple[str | None, dict] | None:
        """The request of a plain -A/-E/-a/-e line, without the popt emulation.

        Saved rules are almost all of the form ``-A -t VIP:PORT -s SCHED
        [-p [T]]`` and ``-a -t VIP:PORT -r RIP:PORT -g|-i|-m -w W [-x U] [-y
        L]``.  For such a line, with each option a word of its own (no
        clusters, no long names), numeric IPv4 addresses and ports, in-range
        numbers and a legal combination, this returns what
        :meth:`process_options` would queue, ``(libipvs function,
        request)``.  For anything else (including every line that is an
        error) it returns None and the line goes through the full
        emulation, which prints ipvsadm's messages.  A hypothesis test
        checks that both ways give the same requests and output.
        """
        cmd = _FAST_COMMANDS.get(tokens[0])
        if cmd is None:
            return None
        allowed = _FAST_SERVICE_OPTS if cmd <= CMD_EDIT else _FAST_DEST_OPTS
        seen = 0
        protocol = fwmark = port = flags = timeout = 0
        vaddr: str | None = None
        raddr: str | None = None
        rport = 0
        fwd = uapi.IP_VS_CONN_F_DROUTE
        sched = ""
        weight = 1
        u_thresh = l_thresh = 0
        i = 1
        n = len(tokens)
        while i < n:
            opt = tokens[i]
            bit = allowed.get(opt)
            if bit is None or seen & bit:
                return None  # unusual, or "multiple ... options specified"
            seen |= bit
            i += 1
            if bit == _FWD_BIT:
                fwd = _FAST_FWD[opt]
                continue
            if opt == "-p":
                flags |= uapi.IP_VS_SVC_F_PERSISTENT
                if i < n and not tokens[i].startswith("-"):
                    timeout = _fast_number(tokens[i], 1, MAX_TIMEOUT)
                    if timeout < 0:
                        return None
                    i += 1
                else:
                    timeout = IPVS_SVC_PERSISTENT_TIMEOUT
                continue
            if i >= n:
                return None  # popt: missing argument
            arg = tokens[i]
            i += 1
            if opt == "-t" or opt == "-u":
                parsed = self._fast_addr(arg)
                if parsed is None:
                    return None
                vaddr, p = parsed
                protocol = IPPROTO_TCP if opt == "-t" else IPPROTO_UDP
                if p >= 0:
                    port = p
            elif opt == "-r":
                parsed = self._fast_addr(arg)
                if parsed is None:
                    return None
                raddr, p = parsed
                # parse_service into a copy of the service: without a port
                # of its own, -r takes the service's port as it is so far.
                rport = p if p >= 0 else port
            elif opt == "-f":
                fwmark = _fast_number(arg, 1, 0xFFFFFFFF)
                if fwmark < 0:
                    return None
                protocol = IPPROTO_TCP
            elif opt == "-s":
                sched = arg[: uapi.IP_VS_SCHEDNAME_MAXLEN - 1]
            else:  # -w, -x, -y
                v = _fast_number(arg, 0, INT_MAX)
                if v < 0:
                    return None
                if opt == "-w":
                    weight = v
                elif opt == "-x":
                    u_thresh = v
                else:
                    l_thresh = v
        if not seen & _SERVICE_BIT:
            return None  # "You need to supply the 'service-address' option ..."
        svc: dict[str, Any] = {"af": AF_INET}
        if fwmark:
            svc["fwmark"] = fwmark
        else:
            svc["protocol"] = protocol
            svc["addr"] = vaddr
            svc["port"] = port
        if cmd <= CMD_EDIT:
            if not fwmark and not port and not flags:
                return None  # "Zero port specified for non-persistent service"
            svc["sched_name"] = sched or DEF_SCHED
            svc["flags"] = {"flags": flags, "mask": 0xFFFFFFFF}
            svc["timeout"] = timeout
            svc["netmask"] = 0xFFFFFFFF
            if cmd == CMD_ADD:
                return "add_service", {"version": 1, "cmd": "NEW_SERVICE", "service": svc}
            return "update_service", {"version": 1, "cmd": "SET_SERVICE", "service": svc}
        if raddr is None:
            return None  # "You need to supply the 'real-server' option ..."
        if not fwmark and fwd != uapi.IP_VS_CONN_F_MASQ:
            rport = port  # direct routing and tunnels keep the service's port
        dest = {"addr_family": AF_INET, "addr": raddr, "port": rport, "fwd_method": fwd, "weight": weight,
                "u_threshold": u_thresh, "l_threshold": l_thresh}
        if cmd == CMD_ADDDEST:
            return "add_dest", {"version": 1, "cmd": "NEW_DEST", "service": svc, "dest": dest}
        return "update_dest", {"version": 1, "cmd": "SET_DEST", "service": svc, "dest": dest}

    def _fast_addr(self, arg: str) -> tuple[str, int] | None:
        """``parse_service`` of a numeric ``a.b.c.d[:port]``: (address as
        inet_ntop writes it, port or -1), or None for anything else."""
        try:
            return self._fast_addrs[arg]
        except KeyError:
            pass
        parsed = None
        m = _FAST_ADDR.fullmatch(arg)
        if m is not None:
            packed = _inet_aton(m.group(1))
            p = m.group(2)
            port = -1 if p is None else int(p)
            if packed is not None and port <= 65535:
                parsed = (_inet_ntop(AF_INET, packed), port)
        if len(self._fast_addrs) >= 65536:
            self._fast_addrs.clear()
        self._fast_addrs[arg] = parsed
        return parsed

    # ------------------------------------------------------------ restore

    def restore_table(self, reading_stdin: bool) -> int:
        """``restore_table`` (``-R``): run each line of standard input as a command, in batches; the status of the last
        line.
        """
        from ipvs import rules  # here, not at the top: only -R reads rules

        if reading_stdin:
            self.tryhelp_exit(-1)
        result = 0
        self.batching = True
        try:
            fast = self.fast_command if self.fast else _no_fast_command
            for tokens in rules.config_stream_read(self.stdin.read()):
                if tokens:
                    self._last_queued = False
                    cmd = fast(tokens)
                    if cmd is not None:
                        self.queue(*cmd)
                        result = 0
                    else:
                        result = self.process_options(tokens, True)
        finally:
            # also when a line fails: its message must come after the earlier lines' errors
            last_failed = self.flush()
            self.batching = False
        if self._last_queued:
            result = -1 if last_failed else 0
        return result

    # ------------------------------------------------------------ listing

    def get_services(self, stats: bool = True) -> list[ServiceEntry]:
        """The service dump; ``stats=False`` asks a director that has the
        ``stats`` extension to leave the counters out (nothing shows them)."""
        if stats or "stats" not in self.extensions:
            reply = self.call("GET_SERVICE")
        else:
            reply = self.call("GET_SERVICE", stats=False)
        if not reply.get("ok"):
            self.error(ipvs_strerror(self.func, int(reply.get("errno", errno.EIO))) + "\n")
            raise _Exit(1)
        return [_service_entry(s) for s in reply.get("services", [])]

    def get_dests(self, se: ServiceEntry) -> list[DestEntry]:
        """``ipvs_get_dests``: the real servers of one service."""
        self.func = "get_dests"
        return self._dests_from(self.call("GET_DEST", service=self._dest_query(se)), se)

    def _dests_from(self, reply: dict, se: ServiceEntry) -> list[DestEntry]:
        if not reply.get("ok"):
            self.error(ipvs_strerror(self.func, int(reply.get("errno", errno.EIO))) + "\n")
            raise _Exit(1)
        return [_dest_entry(d, se.af) for d in reply.get("dests", [])]

    @staticmethod
    def _dest_query(se: ServiceEntry) -> dict:
        ident: dict[str, Any] = {"af": se.af}
        if se.fwmark:
            ident["fwmark"] = se.fwmark
        else:
            ident["protocol"] = se.protocol
            af = AF_INET6 if se.af == AF_INET6 else AF_INET
            ident["addr"] = _inet_ntop(af, se.addr[:4] if af == AF_INET else se.addr)
            ident["port"] = se.port
        return ident

    def print_title(self, fmt: int) -> None:
        """``print_title``: the header lines of a listing for the chosen format."""
        w = self.out.write
        if fmt & FMT_STATS:
            w(f"{'Prot LocalAddress:Port':<33} {'Conns':>8} {'InPkts':>8} {'OutPkts':>8} {'InBytes':>8} "
              f"{'OutBytes':>8}\n  -> RemoteAddress:Port\n")
        elif fmt & FMT_RATE:
            w(f"{'Prot LocalAddress:Port':<33} {'CPS':>8} {'InPPS':>8} {'OutPPS':>8} {'InBPS':>8} "
              f"{'OutBPS':>8}\n  -> RemoteAddress:Port\n")
        elif fmt & FMT_THRESHOLDS:
            w(f"{'Prot LocalAddress:Port':<33} {'Uthreshold':<10} {'Lthreshold':<10} {'ActiveConn':<10} "
              f"{'InActConn':<10}\n  -> RemoteAddress:Port\n")
        elif fmt & FMT_PERSISTENTCONN:
            w(f"{'Prot LocalAddress:Port':<33} {'Weight':<9} {'PersistConn':<11} {'ActiveConn':<10} "
              f"{'InActConn':<10}\n  -> RemoteAddress:Port\n")
        elif fmt & FMT_TUN_INFO:
            w("Prot LocalAddress:Port Scheduler Flags\n"
              "  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn\n")
        elif not fmt & FMT_RULE:
            w("Prot LocalAddress:Port Scheduler Flags\n"
              "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n")

    def print_service_entry(self, se: ServiceEntry, fmt: int, dests: list[DestEntry] | None = None) -> None:
        """``print_service_entry``: one service and its real servers, in the listing's or ``-S``'s format
        (``-S``'s lines are :mod:`ipvs.rules`'s)."""
        from ipvs import rules  # here, not at the top: a plain listing is ipvsadm's common case

        if dests is None:
            dests = self.get_dests(se)
        w = self.out.write
        if se.fwmark:
            vname = ""
        else:
            vname = self.addrport_to_anyname(se.af, se.addr, se.port, se.protocol, fmt)
        if fmt & FMT_RULE:
            svc_name = rules.service_option(se.protocol, se.fwmark, se.af, vname)
        elif se.fwmark:
            mark = _int32(se.fwmark)
            svc_name = f"FWM  {mark} IPv6" if se.af == AF_INET6 else f"FWM  {mark}"
        else:
            svc_name = f"{_PROTO_NAMES.get(se.protocol, '?'):<4} {vname}"
            if se.af != AF_INET6:
                svc_name = svc_name[:33]
        if fmt & FMT_RULE:
            line = rules.service_line(svc_name, se.sched_name, se.flags, se.timeout, se.af, se.netmask, se.pe_name)
        elif fmt & (FMT_STATS | FMT_RATE):
            values = se.stats[:5] if fmt & FMT_STATS else se.stats[5:]
            line = f"{svc_name:<33}" + "".join(_largenum(v, fmt) for v in values)
        else:
            line = f"{svc_name} {se.sched_name}"
            if se.flags & uapi.IP_VS_SVC_F_SCHED_MASK:
                line += f" ({rules.sched_flags_text(se.sched_name, se.flags)})"
            if se.flags & uapi.IP_VS_SVC_F_PERSISTENT:
                line += f" persistent {se.timeout}"
                mask = rules.netmask_text(se.af, se.netmask)
                if mask is not None:
                    line += f" mask {mask}"
                if se.pe_name:
                    line += f" pe {se.pe_name}"
            if se.flags & uapi.IP_VS_SVC_F_ONEPACKET:
                line += " ops"
        w(line + "\n")

        if not fmt & FMT_NOSORT:
            dests = sort_dests(dests)
        numeric = fmt & FMT_NUMERIC
        for e in dests:
            fwd = e.conn_flags & uapi.IP_VS_CONN_F_FWD_MASK
            if numeric and e.af == AF_INET:
                # What addrport_to_anyname gives, at most 21 characters.
                dname = f"{_inet_ntop(AF_INET, e.addr[:4])}:{e.port}"
            else:
                dname = self.addrport_to_anyname(e.af, e.addr, e.port, se.protocol, fmt)
                if not fmt & FMT_RULE and e.af != AF_INET6:
                    dname = dname[:28]
            if fmt & FMT_RULE:
                w(rules.dest_line(svc_name, dname, e.conn_flags, e.weight, e.tun_type, e.tun_port, e.tun_flags)
                  + "\n")
            elif fmt & FMT_STATS:
                w(f"  -> {dname:<28}" + "".join(_largenum(v, fmt) for v in e.stats[:5]) + "\n")
            elif fmt & FMT_RATE:
                cps, inpps, outpps, inbps, outbps = e.stats[5:]
                w(f"  -> {dname:<28} {cps:8d} {inpps:8d} {outpps:8d}" + _largenum(inbps, fmt)
                  + _largenum(outbps, fmt) + "\n")
            elif fmt & FMT_THRESHOLDS:
                w(f"  -> {dname:<28} {e.u_threshold:<10d} {e.l_threshold:<10d} {e.activeconns:<10d} "
                  f"{e.inactconns:<10d}\n")
            elif fmt & FMT_PERSISTENTCONN:
                w(f"  -> {dname:<28} {e.weight:<9d} {e.persistconns:<11d} {e.activeconns:<10d} "
                  f"{e.inactconns:<10d}\n")
            elif fmt & FMT_TUN_INFO:
                ti = self.tun_info(e) or "n/a"
                w(f"  -> {dname:<28} {_c_str(_FWD_NAMES.get(fwd)):<7} {ti:<13} {e.weight:<6d} "
                  f"{e.activeconns:<10d} {e.inactconns:<10d}\n")
            else:
                w(f"  -> {dname:<28} {_c_str(_FWD_NAMES.get(fwd)):<7} {e.weight:<6d} {e.activeconns:<10d} "
                  f"{e.inactconns:<10d}\n")

    @staticmethod
    def tun_info(e: DestEntry) -> str | None:
        """``fwd_tun_info`` (None where ipvsadm prints n/a)."""
        if e.conn_flags & uapi.IP_VS_CONN_F_FWD_MASK != uapi.IP_VS_CONN_F_TUNNEL:
            return None
        flag = TUNFLAGS[e.tun_flags] if e.tun_flags < len(TUNFLAGS) else "(null)"
        if e.tun_type == uapi.IP_VS_CONN_F_TUNNEL_TYPE_IPIP:
            return "ipip"
        if e.tun_type == uapi.IP_VS_CONN_F_TUNNEL_TYPE_GUE:
            return f"gue:{e.tun_port}:{flag}"[:15]
        if e.tun_type == uapi.IP_VS_CONN_F_TUNNEL_TYPE_GRE:
            return f"gre:{flag}"[:15]
        return None

    def list_service(self, svc: SvcSpec, fmt: int) -> None:
        """``list_service``: ``-L`` of one service (status 1 when there is no such service)."""
        self.func = "get_service"
        reply = self.call("GET_SERVICE", service=self._svc_attrs(svc, full=False))
        if not reply.get("ok"):
            self.error(ipvs_strerror(self.func, int(reply.get("errno", errno.EIO))) + "\n")
            raise _Exit(1)
        entry = _service_entry(reply["service"])
        self.print_title(fmt)
        self.print_service_entry(entry, fmt)

    def list_all(self, fmt: int) -> None:
        """``list_all``: ``-L`` and ``-S`` of every service, sorted as ipvsadm sorts them."""
        v, size = self.init()
        if not fmt & FMT_RULE:
            self.out.write(f"IP Virtual Server version {v >> 16}.{(v >> 8) & 0xFF}.{v & 0xFF} (size={size})\n")
        stats = bool(fmt & (FMT_STATS | FMT_RATE))
        services = self.get_services(stats)
        if not fmt & FMT_NOSORT:
            services = sort_services(services)
        self.print_title(fmt)
        # Every service's destinations are asked for at once: in BATCH
        # requests (or pipelined), in chunks so a huge table is not held
        # twice in memory.
        self.func = "get_dests"
        extra = {} if stats or "stats" not in self.extensions else {"stats": False}
        for chunk, replies in self._dest_chunks(services, extra):
            for se, reply in zip(chunk, replies, strict=True):
                self.print_service_entry(se, fmt, self._dests_from(reply, se))

    def _dest_chunks(self, services: list[ServiceEntry], extra: dict):
        """(services, their GET_DEST replies), chunk after chunk; on a socket
        the next chunk is asked for before this one is printed."""
        chunks = [services[i : i + _BATCH_SIZE] for i in range(0, len(services), _BATCH_SIZE)]
        reqs = ([_req("GET_DEST", service=self._dest_query(se), **extra) for se in chunk] for chunk in chunks)
        if not self._can_submit():
            for chunk in chunks:
                yield chunk, self._call_batch(next(reqs))
            return
        pending: list[tuple[list[ServiceEntry], list[int]]] = []
        try:
            for chunk in chunks:
                pending.append((chunk, self._submit(next(reqs))))
                if len(pending) > 1:
                    yield self._receive_chunk(*pending.pop(0))
            while pending:
                yield self._receive_chunk(*pending.pop(0))
        except OSError as e:
            failed = {"ok": False, "errno": e.errno or errno.EIO}
            yield (pending[0][0] if pending else services[:1]), [failed] * (len(pending[0][0]) if pending else 1)

    def _receive_chunk(self, chunk: list[ServiceEntry], sizes: list[int]) -> tuple[list[ServiceEntry], list[dict]]:
        replies: list[dict] = []
        for n in sizes:
            replies += self._batch_replies(self._transport.receive(), n)
        return chunk, replies

    def list_timeout(self) -> None:
        """``list_timeout``: the ``Timeout (tcp tcpfin udp)`` line."""
        reply = self.call("GET_CONFIG")
        if not reply.get("ok"):
            raise _Exit(1)
        self.out.write(f"Timeout (tcp tcpfin udp): {_int32(reply.get('timeout_tcp', 0))} "
                       f"{_int32(reply.get('timeout_tcp_fin', 0))} {_int32(reply.get('timeout_udp', 0))}\n")

    def list_daemon(self) -> None:
        """``list_daemon``: the sync daemons' states."""
        reply = self.call("GET_DAEMON")
        if not reply.get("ok"):
            raise _Exit(1)
        for d in reply.get("daemons", [])[:2]:
            state = d.get("state", 0)
            if state & uapi.IP_VS_STATE_MASTER:
                kind = "master"
            elif state & uapi.IP_VS_STATE_BACKUP:
                kind = "backup"
            else:
                continue
            line = f"{kind} sync daemon (mcast={d.get('mcast_ifn', '')[:15]}, syncid={d.get('sync_id', 0)}"
            if d.get("sync_maxlen"):
                line += f", maxlen={d['sync_maxlen']}"
            if d.get("mcast_group"):
                line += f", group={d['mcast_group']}"
            elif d.get("mcast_group6"):
                line += f", group={d['mcast_group6']}"
            if d.get("mcast_port"):
                line += f", port={d['mcast_port']}"
            if d.get("mcast_ttl"):
                line += f", ttl={d['mcast_ttl']}"
            self.out.write(line + ")\n")

    def list_conn(self, fmt: int) -> None:
        """``list_conn``: ``-Lc``, the director's ``/proc/net/ip_vs_conn`` reprinted line by line."""
        reply = self.call("GET_PROC", name="ip_vs_conn")
        if not reply.get("ok") or not isinstance(reply.get("text"), str):
            self.error(f"cannot open file {CONN_PROC_FILE}\n")
            raise _Exit(1)
        lines = reply["text"].splitlines(keepends=True)
        if not lines:
            self.error(f"unexpected input from {CONN_PROC_FILE}\n")
            raise _Exit(1)
        self.out.write("IPVS connection entries\n")
        if fmt & FMT_PERSISTENTCONN:
            self.out.write(f"pro expire {'state':<11} {'source':<18} {'virtual':<18} {'destination':<18} "
                           f"{'pe name':<16} pe_data\n")
        else:
            self.out.write(f"pro expire {'state':<11} {'source':<18} {'virtual':<18} destination\n")
        for line in lines[1:]:
            self.print_conn(line, fmt)

    def print_conn(self, buf: str, fmt: int) -> None:
        """``print_conn``: one line of ``/proc/net/ip_vs_conn`` as ``-Lc`` prints it."""
        n, v = _scan_conn(buf)
        if n == -1:
            raise _Exit(1)
        protocol, temp1, cport, temp2, vport, temp3, dport, state, expires, pe_name, pe_data = v
        proto = {"TCP": IPPROTO_TCP, "UDP": IPPROTO_UDP, "SCTP": IPPROTO_SCTP}.get(protocol, 0)
        af = AF_INET
        c6 = _inet_pton(AF_INET6, temp1) if temp1 is not None else None
        if c6 is not None:
            af = AF_INET6
            caddr = c6
            vaddr = (_inet_pton(AF_INET6, temp2) if temp2 else None) or bytes(16)
        else:
            caddr = _addr_from_proc(temp1)
            vaddr = _addr_from_proc(temp2)
        daf = AF_INET
        d6 = _inet_pton(AF_INET6, temp3) if temp3 is not None else None
        if d6 is not None:
            daf = AF_INET6
            daddr = d6
        else:
            daddr = _addr_from_proc(temp3)
        cname = self.addrport_to_anyname(af, caddr, cport, proto, fmt)
        vname = self.addrport_to_anyname(af, vaddr, vport, proto, fmt)
        dname = self.addrport_to_anyname(daf, daddr, dport, proto, fmt)
        expires &= 0xFFFFFFFF
        expire_str = f"{_int32(expires // 60):02d}:{expires % 60:02d}"
        if fmt & FMT_PERSISTENTCONN and n == 11:
            self.out.write(f"{protocol:<3} {expire_str:<6} {state:<11} {cname:<18} {vname:<18} {dname:<16} "
                           f"{pe_name:<18} {pe_data}\n")
        else:
            self.out.write(f"{_c_str(protocol):<3} {expire_str:<6} {_c_str(state):<11} {cname:<18} {vname:<18} "
                           f"{dname}\n")

    # ------------------------------------------------------------ help

    def version_line(self) -> str:
        """The first line of ``-h`` and ``-v``: ipvsadm's version and the IPVS version it was built for."""
        v = uapi.IP_VS_VERSION_CODE
        return (f"ipvsadm {IPVSADM_VERSION} (compiled with popt and IPVS "
                f"v{v >> 16}.{(v >> 8) & 0xFF}.{v & 0xFF})\n")

    def usage_exit(self, code: int) -> NoReturn:
        """``usage_exit``: the version line and the usage text, on stdout for ``-h`` (status 0), else on stderr."""
        stream = self.out if code == 0 else self.err
        stream.write(self.version_line() + usage_text(PROG))
        raise _Exit(code)


_FIRST_OPTION_COMMANDS = {
    K_A: CMD_ADD, K_E: CMD_EDIT, K_D: CMD_DEL, K_a: CMD_ADDDEST, K_e: CMD_EDITDEST,
    K_d: CMD_DELDEST, K_C: CMD_FLUSH, K_L: CMD_LIST, K_l: CMD_LIST, K_Z: CMD_ZERO,
    TAG_SET: CMD_TIMEOUT, K_R: CMD_RESTORE, K_S: CMD_SAVE,
}

_SIMPLE_FLAGS = {
    TAG_TIMEOUT: (OPTC_TIMEOUT, 0),
    TAG_DAEMON: (OPTC_DAEMON, 0),
    TAG_STATS: (OPTC_STATS, FMT_STATS),
    TAG_RATE: (OPTC_RATE, FMT_RATE),
    TAG_THRESHOLDS: (OPTC_THRESHOLDS, FMT_THRESHOLDS),
    TAG_PERSISTENTCONN: (OPTC_PERSISTENTCONN, FMT_PERSISTENTCONN),
    TAG_NO_SORT: (OPTC_NOSORT, FMT_NOSORT),
    K_X: (OPTC_EXACT, FMT_EXACT),
    TAG_TUN_INFO: (OPTC_TUN_INFO, FMT_TUN_INFO),
}


# The restore fast path (Ipvsadm.fast_command): the plain option words it
# takes, each with the bit of the option group popt would set for it.
_SERVICE_BIT, _FWD_BIT = 1 << OPTC_SERVICE, 1 << OPTC_FORWARD
_FAST_COMMANDS = {"-A": CMD_ADD, "-E": CMD_EDIT, "-a": CMD_ADDDEST, "-e": CMD_EDITDEST}
_FAST_SERVICE_OPTS = {"-t": _SERVICE_BIT, "-u": _SERVICE_BIT, "-f": _SERVICE_BIT,
                      "-s": 1 << OPTC_SCHEDULER, "-p": 1 << OPTC_PERSISTENT}
_FAST_DEST_OPTS = {"-t": _SERVICE_BIT, "-u": _SERVICE_BIT, "-f": _SERVICE_BIT, "-r": 1 << OPTC_SERVER,
                   "-g": _FWD_BIT, "-i": _FWD_BIT, "-m": _FWD_BIT, "-w": 1 << OPTC_WEIGHT,
                   "-x": 1 << OPTC_UTHRESHOLD, "-y": 1 << OPTC_LTHRESHOLD}
_FAST_FWD = {"-g": uapi.IP_VS_CONN_F_DROUTE, "-i": uapi.IP_VS_CONN_F_TUNNEL, "-m": uapi.IP_VS_CONN_F_MASQ}
_FAST_ADDR = re.compile(r"([0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})(?::([0-9]{1,5}))?")


def _fast_number(s: str, lo: int, hi: int) -> int:
    """``string_to_number`` for plain digits only; -1 for anything else."""
    if s.isascii() and s.isdigit() and len(s) < 19:
        v = int(s)
        if lo <= v <= hi:
            return v
    return -1


def _no_fast_command(tokens: list[str]) -> None:
    return None


def _addr_from_proc(text: str | None) -> bytes:
    """A /proc address: dotted IPv4, or the kernel's host-order hex."""
    if text is None:
        return bytes(16)
    a4 = _inet_pton(AF_INET, text)
    if a4 is None:
        m = re.match(r"[ \t\n\v\f\r]*[+-]?(0[xX])?([0-9a-fA-F]*)", text)
        digits = m.group(2) if m else ""
        neg = m is not None and "-" in m.group(0)
        val = int(digits, 16) if digits else 0
        val = (-val if neg else val) & 0xFFFFFFFF  # strtoul result, as it lands in a u32
        a4 = val.to_bytes(4, "big")
    return a4 + bytes(12)


_HEX = re.compile(r"[+-]?(?:0[xX](?=[0-9a-fA-F]))?[0-9a-fA-F]+")
_DEC = re.compile(r"[+-]?[0-9]+")


def _scan_conn(buf: str) -> tuple[int, list]:
    """``sscanf(buf, "%s %s %hX %s %hX %s %hX %s %d %s %s")``: (count, values)."""
    kinds = "ssxsxsxsdss"
    values: list[Any] = [None, None, 0, None, 0, None, 0, None, 0, None, None]
    pos = 0
    n = 0
    for i, kind in enumerate(kinds):
        while pos < len(buf) and buf[pos] in _CSPACE:
            pos += 1
        if pos >= len(buf):
            return (n if n else -1), values
        if kind == "s":
            end = pos
            while end < len(buf) and buf[end] not in _CSPACE:
                end += 1
            values[i] = buf[pos:end]
            pos = end
        else:
            m = (_HEX if kind == "x" else _DEC).match(buf, pos)
            if not m:
                return n, values
            text = m.group(0)
            if kind == "x":
                v = int(text.replace("0x", "").replace("0X", ""), 16)
                values[i] = v & 0xFFFF
            else:
                values[i] = _int32(int(text))
            pos = m.end()
        n += 1
    return n, values


def config_stream_read(text: str) -> Iterable[list[str]]:
    """The words of each line as ``-R`` reads them: :func:`ipvs.rules.config_stream_read`."""
    from ipvs import rules  # here, not at the top: only -R reads rules

    return rules.config_stream_read(text)


def usage_text(program: str) -> str:
    """The usage text of ``ipvsadm -h`` (after the version line)."""
    p = program
    return (
        "Usage:\n"
        f"  {p} -A|E virtual-service [-s scheduler] [-p [timeout]] [-M netmask] [--pe persistence_engine] "
        "[-b sched-flags]\n"
        f"  {p} -D virtual-service\n"
        f"  {p} -C\n"
        f"  {p} -R\n"
        f"  {p} -S [-n]\n"
        f"  {p} -a|e virtual-service -r server-address [options]\n"
        f"  {p} -d virtual-service -r server-address\n"
        f"  {p} -L|l [virtual-service] [options]\n"
        f"  {p} -Z [virtual-service]\n"
        f"  {p} --set tcp tcpfin udp\n"
        f"  {p} --start-daemon {{master|backup}} [daemon-options]\n"
        f"  {p} --stop-daemon {{master|backup}}\n"
        f"  {p} -h\n\n"
        "Commands:\n"
        "Either long or short options are allowed.\n"
        "  --add-service     -A        add virtual service with options\n"
        "  --edit-service    -E        edit virtual service with options\n"
        "  --delete-service  -D        delete virtual service\n"
        "  --clear           -C        clear the whole table\n"
        "  --restore         -R        restore rules from stdin\n"
        "  --save            -S        save rules to stdout\n"
        "  --add-server      -a        add real server with options\n"
        "  --edit-server     -e        edit real server with options\n"
        "  --delete-server   -d        delete real server\n"
        "  --list            -L|-l     list the table\n"
        "  --zero            -Z        zero counters in a service or all services\n"
        "  --set tcp tcpfin udp        set connection timeout values\n"
        "  --start-daemon              start connection sync daemon\n"
        "  --stop-daemon               stop connection sync daemon\n"
        "  --help            -h        display this help message\n\n"
        "virtual-service:\n"
        "  --tcp-service|-t  service-address   service-address is host[:port]\n"
        "  --udp-service|-u  service-address   service-address is host[:port]\n"
        "  --sctp-service    service-address   service-address is host[:port]\n"
        "  --fwmark-service|-f fwmark          fwmark is an integer greater than zero\n"
        "\n"
        "Options:\n"
        "  --ipv6         -6                   fwmark entry uses IPv6\n"
        f"  --scheduler    -s scheduler         one of {SCHEDULERS},\n"
        f"                                      the default scheduler is {DEF_SCHED}.\n"
        f"  --pe            engine              alternate persistence engine may be {PE_LIST},\n"
        "                                      not set by default.\n"
        "  --persistent   -p [timeout]         persistent service\n"
        "  --netmask      -M netmask           persistent granularity mask\n"
        "  --real-server  -r server-address    server-address is host (and port)\n"
        "  --gatewaying   -g                   gatewaying (direct routing) (default)\n"
        "  --ipip         -i                   ipip encapsulation (tunneling)\n"
        "  --masquerading -m                   masquerading (NAT)\n"
        "  --tun-type      type                one of ipip|gue|gre,\n"
        f"                                      the default tunnel type is {DEF_TUNNEL_TYPE}.\n"
        "  --tun-port      port                tunnel destination port\n"
        "  --tun-nocsum                        tunnel encapsulation without checksum\n"
        "  --tun-csum                          tunnel encapsulation with checksum\n"
        "  --tun-remcsum                       tunnel encapsulation with remote checksum\n"
        "  --weight       -w weight            capacity of real server\n"
        "  --u-threshold  -x uthreshold        upper threshold of connections\n"
        "  --l-threshold  -y lthreshold        lower threshold of connections\n"
        "  --connection   -c                   output of current IPVS connections\n"
        "  --timeout                           output of timeout (tcp tcpfin udp)\n"
        "  --daemon                            output of daemon information\n"
        "  --stats                             output of statistics information\n"
        "  --rate                              output of rate information\n"
        "  --exact                             expand numbers (display exact values)\n"
        "  --thresholds                        output of thresholds information\n"
        "  --persistent-conn                   output of persistent connection info\n"
        "  --tun-info                          output of tunnel information\n"
        "  --nosort                            disable sorting output of service/server entries\n"
        "  --sort                              does nothing, for backwards compatibility\n"
        "  --ops          -o                   one-packet scheduling\n"
        "  --numeric      -n                   numeric output of addresses and ports\n"
        "  --sched-flags  -b flags             scheduler flags (comma-separated)\n"
        "Daemon Options:\n"
        "  --syncid sid                        syncid for connection sync (default=255)\n"
        "  --sync-maxlen length                Max sync message length (default=1472)\n"
        "  --mcast-interface interface         multicast interface for connection sync\n"
        "  --mcast-group address               IPv4/IPv6 group (default=224.0.0.81)\n"
        "  --mcast-port port                   UDP port (default=8848)\n"
        "  --mcast-ttl ttl                     Multicast TTL (default=1)\n"
    )


# --------------------------------------------------------------------------
# Entry points


def _split_socket_option(argv: list[str]) -> tuple[list[str], str | None]:
    """Take PyIPVS's ``--socket PATH`` out of argv (before any ``--``)."""
    out: list[str] = []
    path = None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            out.extend(argv[i:])
            break
        if a == "--socket" and i + 1 < len(argv):
            path = argv[i + 1]
            i += 2
            continue
        if a.startswith("--socket="):
            path = a[len("--socket="):]
            i += 1
            continue
        out.append(a)
        i += 1
    return out, path


def _default_transport(path: str | None) -> Callable[[], Any]:
    def make():
        from ipvs.client import Client

        return Client(path=path or os.environ.get("IPVS_SOCKET") or None)

    return make


def _exit_status(code: int) -> int:
    """C's ``exit(code)`` status; -11 stands for death by SIGSEGV."""
    return code if code == -11 else code & 0xFF


def main(argv: list[str], transport: Any = None, stdout: TextIO | None = None, stderr: TextIO | None = None,
         stdin: TextIO | None = None, resolver: Resolver | None = None) -> int:
    """Run ipvsadm with ``argv`` (without the program name); return the exit status.

    The status is 0..255, or -11 where ipvsadm 1.31 crashes with SIGSEGV
    (``-b ,``): the convention of :attr:`subprocess.Popen.returncode`.
    """
    argv, sock = _split_socket_option(list(argv))
    factory = (lambda: transport) if transport is not None else _default_transport(sock)
    tool = Ipvsadm(factory, stdout or sys.stdout, stderr or sys.stderr, stdin or sys.stdin, resolver)
    try:
        with _gc_paused():
            if not argv:
                tool.list_all(0)
                return 0
            return _exit_status(tool.process_options(argv, False))
    except _Exit as e:
        return _exit_status(e.code)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        # A reply that does not fit the schema (a foreign or broken daemon).
        tool.err.write(f"{PROG}: unexpected reply from the director: {type(e).__name__}: {e}\n")
        return 255


def console_main() -> int:
    """The ``ipvsadm`` command (console script and ``tools/ipvsadm``):
    :func:`main` on ``sys.argv``, ending the way ipvsadm 1.31 ends.

    ipvsadm is a C program with the default signal actions: a closed
    pipe (``ipvsadm -Ln | head -1``) or Ctrl-C ends it silently by that
    signal, and ``-b ,`` crashes it with SIGSEGV.  Python turns the first
    two into tracebacks, so they are caught here and the process dies of
    the same signal (the shell then sees the same status).
    """
    try:
        rc = main(sys.argv[1:])
        sys.stdout.flush()
    except BrokenPipeError:
        return _die_of_signal(13)  # SIGPIPE
    except KeyboardInterrupt:
        return _die_of_signal(2)  # SIGINT
    if rc < 0:
        return _die_of_signal(-rc)
    return rc


def _die_of_signal(signum: int) -> int:
    """End this process by ``signum`` with its default action, as a C
    program does; what is left in stdout's buffer is dropped if the pipe
    is gone (there is nobody to read it)."""
    import signal

    try:
        sys.stdout.flush()
    except OSError:
        pass
    # A reader that went away leaves a buffer Python would try to flush
    # again at exit: point stdout at /dev/null first.
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, sys.stdout.fileno())
    os.close(null)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    return 128 + signum  # not reached unless the signal is blocked


@contextlib.contextmanager
def _gc_paused():
    """Pause the cyclic garbage collector for one run: a listing or a restore
    makes hundreds of thousands of objects, none of them cyclic garbage,
    and each burst would set off collections that walk them all."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def restore(lines: Iterable[str], transport: Any, stderr: TextIO | None = None, stdout: TextIO | None = None,
            resolver: Resolver | None = None) -> int:
    """Apply rule lines as ``ipvsadm -R`` does; return its exit status
    (0: every line applied; errors are written to ``stderr`` and the
    other lines still apply, as with ``ipvsadm -R``).

    For ``ipvsd`` and ``ipvs-replay``, which read their rules files with
    :func:`ipvs.rules.read` (Debian's comment lines allowed).  Output of
    listing commands in the file goes to ``stdout`` (discarded by default).
    """
    import io

    text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
    tool = Ipvsadm(lambda: transport, stdout or io.StringIO(), stderr or sys.stderr, io.StringIO(text), resolver)
    try:
        with _gc_paused():
            return _exit_status(tool.restore_table(False))
    except _Exit as e:
        return _exit_status(e.code)


def save(transport: Any) -> str:
    """The rules as ``ipvsadm -S -n`` prints them, for ``ipvsd``'s
    ``--save`` and state file; raises ``OSError`` if the director could not
    list them (nothing must then be written)."""
    import io

    out, err = io.StringIO(), io.StringIO()
    rc = main(["-S", "-n"], transport=transport, stdout=out, stderr=err)
    if rc != 0:
        raise OSError(f"ipvsadm -S failed: {err.getvalue().strip() or f'exit {rc}'}")
    return out.getvalue()
