"""The control message schema: IPVS generic netlink as JSON-compatible dicts.

Mirrors the generic-netlink half of ``net/netfilter/ipvs/ip_vs_ctl.c``
(``ip_vs_genl_set_cmd``, ``ip_vs_genl_get_cmd``, the dump functions and
``ip_vs_genl_parse_service`` / ``ip_vs_genl_parse_dest``) and the command and
attribute names of ``include/uapi/linux/ip_vs.h``.  The kernel speaks
netlink attributes; PyIPVS carries the same commands and attributes as
plain dicts (JSON on the daemon's Unix socket), so every field keeps the
kernel's name, meaning and unit.

:func:`dispatch` is the single server-side entry point.  It is pure: it
reads and changes one :class:`ipvs.netns.NetnsIPVS` and returns a reply
dict; it never raises and never does I/O.

.. rubric:: Requests

A request is a dict::

    {"version": 1, "cmd": "NEW_SERVICE", "service": {...}, "dest": {...},
     "daemon": {...}, "timeout_tcp": 900, "timeout_tcp_fin": 120,
     "timeout_udp": 300, "name": "...", "value": 1, "seq": 7}

``version`` must be :data:`SCHEMA_VERSION` and ``cmd`` one of
:data:`COMMANDS`; ``seq`` (optional, any integer) is echoed in the reply,
like ``nlmsg_seq``.  Which of the other keys a command reads is given in
the table below; a key a command does not read is still validated, and an
unknown key anywhere is an ``EINVAL`` reply.  Another ``version`` is
refused with ``EPROTONOSUPPORT`` and an unknown ``cmd`` with
``EOPNOTSUPP`` (what generic netlink answers for a command it lacks).

=============== ============================= =====================================
cmd             reads                         reply (besides ``ok``)
=============== ============================= =====================================
NEW_SERVICE     service (full)                —
SET_SERVICE     service (full)                —
DEL_SERVICE     service (identity)            —
GET_SERVICE     service (identity) optional,  ``service`` or, without one,
                stats (optional)              ``services`` (kernel dump order)
NEW_DEST        service, dest (full)          —
SET_DEST        service, dest (full)          —
DEL_DEST        service, dest (identity)      —
GET_DEST        service (identity), stats     ``dests`` (list order: newest first;
                                              empty if no such service)
NEW_DAEMON      daemon (state, mcast_ifn,     —
                sync_id, ...)
DEL_DAEMON      daemon (state)                —
GET_DAEMON      —                             ``daemons``
SET_CONFIG      timeout_tcp, timeout_tcp_fin, —
                timeout_udp (each optional)
GET_CONFIG      —                             ``timeout_tcp``, ``timeout_tcp_fin``,
                                              ``timeout_udp``
GET_INFO        —                             ``info``: ``version``, ``conn_tab_size``;
                                              ``extensions``
ZERO            service (optional)            —
FLUSH           —                             —
GET_PROC        name                          ``text``
GET_COUNTERS    —                             ``counters``: the core's drops and
                                              defenses; the daemon adds
                                              ``driver`` and ``loop``
GET_SYSCTL      name (optional)               ``value``, or ``sysctls`` (all)
SET_SYSCTL      name, value                   —
BATCH           requests                      ``replies`` (one per request)
NEW_MARK        mark (a rule)                 —
DEL_MARK        mark (a rule)                 —
GET_MARK        —                             ``marks`` (rules, in evaluation order)
FLUSH_MARK      —                             —
=============== ============================= =====================================

``SET_INFO`` exists in the kernel only as the reply to ``GET_INFO``;
sending it gives ``EINVAL``.  ``GET_PROC``, ``GET_SYSCTL``,
``SET_SYSCTL`` and ``GET_COUNTERS`` are PyIPVS extensions: the text of
``/proc/net/<name>`` (one of :data:`ipvs.procfs.PROC_NAMES`), the
``net.ipv4.vs.*`` settings (:class:`ipvs.ip_vs.Sysctls`), and the
counters the kernel has no file for (:func:`core_counters`: packets the
core dropped, by :class:`ipvs.packet.Drop` reason, and the state of the
defenses), which ``ipvs-counters`` prints.  The ``*_MARK``
commands are PyIPVS's stand-in for iptables' MARK target, which the
kernel's fwmark services depend on: a ``mark`` is an object with the
fields of :class:`ipvs.fwmark.MarkRule` (``mark``, ``af``, ``protocol``,
``saddr``, ``daddr``, ``dport_lo``, ``dport_hi``; EEXIST for a duplicate,
ENOENT to delete a missing one, ENOSPC past the table's bound).

.. rubric:: Bulk work: BATCH, ``stats``, and how a client finds them

The kernel's commands carry one object each; a restore of 10,000
services with 10 destinations each is 110,000 of them, and a listing
asks for the destinations of every service.  Three PyIPVS extensions,
announced in the ``GET_INFO`` reply as ``"extensions": ["BATCH",
"stats"]`` (a top-level key next to ``info``; a director without it has
none of them), make that cheap without changing any kernel command:

``BATCH``
    ``{"version": 1, "cmd": "BATCH", "requests": [req, req, ...]}``: at
    most :data:`MAX_BATCH` ordinary requests (each a complete request
    with its own ``version``, ``cmd`` and optional ``seq``), run in order
    as if sent one by one; the reply's ``replies`` holds each one's reply
    in the same order, so one failing command fails alone (as with
    ``ipvsadm -R``, which goes on after a kernel error).  A BATCH inside
    a BATCH gets ``EINVAL`` in its place.  The batch as a whole fails only
    if ``requests`` is missing or not such a list (``EINVAL``); the frame
    limit (``MAX_REQUEST`` bytes) applies to the whole batch.
    ``ipvsadm -R`` sends its lines in batches of 1000 and keeps at most
    two unanswered while it parses on; ``-L`` and ``-S`` ask for the
    destinations of 1000 services per batch of ``GET_DEST``.
``stats``
    A request key (``true``/``false``, default ``true``) read by
    ``GET_SERVICE`` and ``GET_DEST``: ``false`` leaves ``stats`` and
    ``stats64`` out of the reply, for listings that do not print
    counters (``-L`` without ``--stats``/``--rate``, ``-S``).
``extensions``
    The announcement itself; clients send the extensions only to a
    director that lists them.

Destination commands read only the service's identity (``af`` and
``fwmark``, or ``protocol``, ``addr`` and ``port``), as the kernel does;
``ipvsadm`` sends no more for them, and leaves out ``tun_type``,
``tun_port`` and ``tun_flags`` when they are 0.

Checking speed.  For each key order a client sends (a restore sends the
same few shapes 100,000 times), :func:`validate` generates once a
straight-line check that accepts only what the field-by-field check
accepts; anything else, errors included, goes through the field-by-field
check, which words the error.

.. rubric:: Service attributes (``IPVS_SVC_ATTR_*``)

==============  ===========================================================
af              u16: 2 (AF_INET) or 10 (AF_INET6); required
protocol        u16: 6, 17 or 132; with addr and port, or instead fwmark
addr            text address of family ``af``
port            u16, host order
fwmark          u32, non-zero: a firewall-mark service
sched_name      scheduler name, at most 15 characters (full entries)
pe_name         persistence engine name, at most 15 characters
flags           ``{"flags": u32, "mask": u32}``: bits of ``flags`` under
                ``mask`` replace the service's (full entries)
timeout         u32 persistence timeout in **seconds** (full entries)
netmask         u32: IPv4 mask as an integer (``0xFFFFFF00`` is
                255.255.255.0) or the IPv6 prefix length (full entries)
stats, stats64  replies only: ``conns inpkts outpkts inbytes outbytes cps
                inpps outpps inbps outbps``; ``stats`` is the 32-bit view
                (counts and rates truncated to u32, as the kernel's
                ``ip_vs_genl_fill_stats`` does), ``stats64`` the full one.
                Counters are since the last zero; rates per second.
==============  ===========================================================

A full entry (NEW/SET_SERVICE) needs ``sched_name``, ``flags``, ``timeout``
and ``netmask``; a missing one is ``EINVAL``, as in the kernel.

.. rubric:: Destination attributes (``IPVS_DEST_ATTR_*``)

==============  ===========================================================
addr, port      text address and u16 port; required
addr_family     u16; defaults to the service's family
fwd_method      u32: 0 masq, 1 local, 2 tunnel, 3 route (only the low
                three bits count); full entries
weight          u32 (read as the kernel's ``int``: 2^31 and above are
                negative, hence ``ERANGE``); full entries
u_threshold     u32 upper connection threshold (kernel: U_THRESH); full
l_threshold     u32 lower connection threshold (kernel: L_THRESH); full
tun_type        u8: 0 ipip, 1 gue, 2 gre
tun_port        u16 (GUE only, required there)
tun_flags       u16: 0 nocsum, 1 csum, 2 remcsum
active_conns    replies only, like ``inact_conns``, ``persist_conns``,
                ``stats`` and ``stats64``
==============  ===========================================================

The threshold keys are spelt out (``u_threshold`` for the kernel's
``IPVS_DEST_ATTR_U_THRESH``) because that is the name the rest of PyIPVS and
``struct ip_vs_dest`` use.

.. rubric:: Daemon attributes (``IPVS_DAEMON_ATTR_*``)

``state`` (u32: 1 master, 2 backup), ``mcast_ifn`` (at most 15
characters), ``sync_id`` (u32), ``sync_maxlen`` (u16), ``mcast_group``
(IPv4 text), ``mcast_group6`` (IPv6 text), ``mcast_port`` (u16),
``mcast_ttl`` (u8).  PyIPVS records the sync daemon settings (so
``ipvsadm --daemon`` shows them) but sends no sync messages yet.

.. rubric:: Replies

Success: ``{"version": 1, "ok": true, ...}``; failure::

    {"version": 1, "ok": false, "errno": 3, "error": "ESRCH",
     "message": "no such service"}

``errno`` is what the kernel returns for the same request (``ESRCH``,
``EEXIST``, ``ENOENT``, ``EINVAL``, ``ERANGE`` ...), so a client prints the
same messages as ipvsadm does.

.. rubric:: Differences from the kernel, and why

* Addresses are text, not 16 raw bytes: the family is checked against
  ``af`` instead of being implied by how many bytes are read.
* Validation is strict where netlink is lenient: wrong types, out-of-range
  integers and unknown keys are rejected with ``EINVAL`` rather than being
  truncated or ignored, because a JSON client has no attribute policy to
  keep it honest.
* A dump is one reply holding a list, not a series of multipart messages.
"""

from __future__ import annotations

import errno
import functools
import logging
import socket
import weakref
from collections.abc import Callable, Collection, Iterator
from typing import TYPE_CHECKING, Any

from ipvs import ctl, ip_vs, procfs, uapi
from ipvs.ctl import DestUser, ServiceUser
from ipvs.ip_vs import IPVSError
from ipvs.packet import Drop
from ipvs.uapi import AF_INET, AF_INET6

if TYPE_CHECKING:  # pragma: no cover
    from ipvs.netns import NetnsIPVS

log = logging.getLogger("ipvs.netlink")

#: Version of this schema; a request with another version is refused.
SCHEMA_VERSION = 1

#: The kernel's commands (``enum IPVS_CMD_*``) plus the PyIPVS extensions.
COMMANDS = uapi.IPVS_COMMANDS + (
    "GET_PROC", "GET_SYSCTL", "SET_SYSCTL", "BATCH", "NEW_MARK", "DEL_MARK", "GET_MARK", "FLUSH_MARK",
    "GET_COUNTERS",
)

#: Schema extensions this side understands, announced in the GET_INFO reply
#: (``extensions``) so a client can tell an older director that lacks them.
EXTENSIONS = ("BATCH", "stats")

#: Commands that change what the daemon's state file keeps (the rules
#: ``ipvsadm -S`` writes, the ``--set`` timeouts, the settings): the daemon
#: writes its state file after one of them succeeds.
CHANGING = frozenset(("NEW_SERVICE", "SET_SERVICE", "DEL_SERVICE", "NEW_DEST", "SET_DEST", "DEL_DEST", "FLUSH",
                      "SET_CONFIG", "SET_SYSCTL"))

#: Most requests one BATCH may carry (its frame is limited in bytes anyway).
MAX_BATCH = 65536

STATS_KEYS = ("conns", "inpkts", "outpkts", "inbytes", "outbytes", "cps", "inpps", "outpps", "inbps", "outbps")

_U8, _U16, _U32 = 0xFF, 0xFFFF, 0xFFFFFFFF
_STR15 = uapi.IP_VS_SCHEDNAME_MAXLEN - 1


class SchemaError(Exception):
    """A request does not fit the schema; becomes an error reply."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err
        self.message = message


# --------------------------------------------------------------------------
# Field validation


_UINT_LIMITS: dict[Callable, int] = {}

# Every check takes (where, key, value): the field's name for the error
# message ("service.port") is only put together when the value is bad.


def _uint(maximum: int) -> Callable[[str, str, Any], int]:
    def check(where: str, key: str, v: Any) -> int:
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= maximum:
            raise SchemaError(errno.EINVAL, f"{where}.{key} must be an integer in [0, {maximum}]")
        return v

    _UINT_LIMITS[check] = maximum
    return check


_TEXT_LIMITS: dict[Callable, int] = {}


def _text(maxlen: int) -> Callable[[str, str, Any], str]:
    def check(where: str, key: str, v: Any) -> str:
        if not isinstance(v, str) or len(v) > maxlen or "\0" in v or not _is_unicode(v):
            raise SchemaError(errno.EINVAL, f"{where}.{key} must be a string of at most {maxlen} characters")
        return v

    _TEXT_LIMITS[check] = maxlen
    return check


def _is_unicode(text: str) -> bool:
    """No lone surrogate (JSON's ``"\\udc80"``): a name kept in the tables
    is sent back in replies, and a reply must encode as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@functools.lru_cache(maxsize=4096)
def _pton(text: str) -> tuple[int, bytes] | None:
    """(family, packed) of an address in the C library's strict syntax, or None.

    Cached: a restore names the same few addresses again and again (every
    destination line repeats its service's), and a failed IPv6 attempt at
    an IPv4 address costs more than the lookup.
    """
    for af in (AF_INET, AF_INET6):
        try:
            return af, socket.inet_pton(af, text)
        except (OSError, ValueError, UnicodeError):
            continue
    return None


def _addr_text(where: str, key: str, v: Any) -> str:
    if not isinstance(v, str) or len(v) > 64:
        raise SchemaError(errno.EINVAL, f"{where}.{key} must be an address string")
    if _pton(v) is None:
        raise SchemaError(errno.EINVAL, f"{where}.{key}: {v!r} is not an IP address")
    return v


def _flags(where: str, key: str, v: Any) -> dict:
    if not isinstance(v, dict):
        raise SchemaError(errno.EINVAL, f"{where}.{key} must be an object {{flags, mask}}")
    return _check_fields(f"{where}.{key}", v, _FLAGS_FIELDS, required=("flags", "mask"))


_FLAGS_FIELDS = {"flags": _uint(_U32), "mask": _uint(_U32)}


def _reply_only(where: str, key: str, v: Any) -> None:
    raise SchemaError(errno.EINVAL, f"{where}.{key} is only sent in replies")


def _bool(where: str, key: str, v: Any) -> bool:
    if type(v) is not bool:
        raise SchemaError(errno.EINVAL, f"{where}.{key} must be true or false")
    return v


_SERVICE_FIELDS: dict[str, Callable[[str, str, Any], Any]] = {
    "af": _uint(_U16),
    "protocol": _uint(_U16),
    "addr": _addr_text,
    "port": _uint(_U16),
    "fwmark": _uint(_U32),
    "sched_name": _text(_STR15),
    "pe_name": _text(_STR15),
    "flags": _flags,
    "timeout": _uint(_U32),
    "netmask": _uint(_U32),
    "stats": _reply_only,
    "stats64": _reply_only,
}

_DEST_FIELDS: dict[str, Callable[[str, str, Any], Any]] = {
    "addr": _addr_text,
    "port": _uint(_U16),
    "addr_family": _uint(_U16),
    "fwd_method": _uint(_U32),
    "weight": _uint(_U32),
    "u_threshold": _uint(_U32),
    "l_threshold": _uint(_U32),
    "tun_type": _uint(_U8),
    "tun_port": _uint(_U16),
    "tun_flags": _uint(_U16),
    "active_conns": _reply_only,
    "inact_conns": _reply_only,
    "persist_conns": _reply_only,
    "stats": _reply_only,
    "stats64": _reply_only,
}

_DAEMON_FIELDS: dict[str, Callable[[str, str, Any], Any]] = {
    "state": _uint(_U32),
    "mcast_ifn": _text(uapi.IP_VS_IFNAME_MAXLEN - 1),
    "sync_id": _uint(_U32),
    "sync_maxlen": _uint(_U16),
    "mcast_group": _addr_text,
    "mcast_group6": _addr_text,
    "mcast_port": _uint(_U16),
    "mcast_ttl": _uint(_U8),
}


_NESTED: dict[Callable, dict] = {}


def _nested(fields: dict) -> Callable[[str, str, Any], dict]:
    def check(where: str, key: str, v: Any) -> dict:
        if not isinstance(v, dict):
            raise SchemaError(errno.EINVAL, f"{where}.{key} must be an object")
        return _check_fields(f"{where}.{key}", v, fields)

    _NESTED[check] = fields
    return check


def _any_int(where: str, key: str, v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not -(2**63) <= v < 2**63:
        raise SchemaError(errno.EINVAL, f"{where}.{key} must be a 64-bit integer")
    return v


def _sysctl_name(where: str, key: str, v: Any) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= 64 or not _is_unicode(v):
        raise SchemaError(errno.EINVAL, f"{where}.{key} must be a short string")
    return v


def _mark_rule(where: str, key: str, v: Any) -> dict:
    """A firewall-mark rule (:class:`ipvs.fwmark.MarkRule` fields)."""
    from ipvs.fwmark import MarkError, rule_from_dict

    if not isinstance(v, dict):
        raise SchemaError(errno.EINVAL, f"{where}.{key} must be an object")
    try:
        rule_from_dict(v)
    except MarkError as e:
        raise SchemaError(e.errno or errno.EINVAL, f"{where}.{key}: {e}") from None
    return v


def _requests(where: str, key: str, v: Any) -> list:
    # Only the list itself: each element is checked as a request of its own
    # when the batch runs, so one bad element fails alone.
    if type(v) is not list or len(v) > MAX_BATCH:
        raise SchemaError(errno.EINVAL, f"{where}.{key} must be a list of at most {MAX_BATCH} requests")
    return v


_REQUEST_FIELDS: dict[str, Callable[[str, str, Any], Any]] = {
    "version": _uint(_U32),
    "cmd": _text(32),
    "seq": _any_int,
    "service": _nested(_SERVICE_FIELDS),
    "dest": _nested(_DEST_FIELDS),
    "daemon": _nested(_DAEMON_FIELDS),
    "timeout_tcp": _uint(_U32),
    "timeout_tcp_fin": _uint(_U32),
    "timeout_udp": _uint(_U32),
    "name": _sysctl_name,
    "value": _any_int,
    "stats": _bool,
    "requests": _requests,
    "mark": _mark_rule,
}


def _limits(fields: dict) -> dict[str, int]:
    return {k: _UINT_LIMITS[c] for k, c in fields.items() if c in _UINT_LIMITS}


#: Per field table, the unsigned-integer fields and their maximum: a plain
#: in-range integer (most of what a request holds) is checked without a call.
_LIMITS: dict[int, dict[str, int]] = {
    id(f): _limits(f) for f in (_FLAGS_FIELDS, _SERVICE_FIELDS, _DEST_FIELDS, _DAEMON_FIELDS, _REQUEST_FIELDS)
}


def _check_fields(where: str, d: dict, fields: dict, required: tuple[str, ...] = ()) -> dict:
    limits = _LIMITS.get(id(fields))
    if limits is None:
        limits = _LIMITS[id(fields)] = _limits(fields)
    get = limits.get
    for key, value in d.items():
        if type(value) is int and 0 <= value <= get(key, -1):
            continue
        check = fields.get(key) if isinstance(key, str) else None
        if check is None:
            raise SchemaError(errno.EINVAL, f"unknown key {key!r} in {where}")
        check(where, key, value)
    for key in required:
        if key not in d:
            raise SchemaError(errno.EINVAL, f"{where}.{key} is required")
    return d


# Compiled checks.  A client sends the same few shapes of request again and
# again (a restore: 100,000 NEW_DESTs with the same keys in the same order),
# so for each field table and key order a straight-line function is
# generated once that says whether such a dict is certainly valid, with no
# loop, no call per field and no message built.  It only ever answers
# True for what _check_fields accepts; on False (anything unusual, or an
# error) _check_fields runs and raises the precise error.  Only names
# from the tables (never a client's key) go into the generated source.

#: Compiled checks per (field table, key order); at most _COMPILED_MAX shapes.
_COMPILED: dict[tuple[int, tuple], Callable[[dict], bool]] = {}
_COMPILED_MAX = 512


def _never(d: dict) -> bool:
    return False


def _condition(check: Callable, env: dict, i: int) -> str | None:
    """The generated test of one field's value ``v``, or None (no fast form)."""
    if check in _UINT_LIMITS:
        return f"type(v) is int and 0 <= v <= {_UINT_LIMITS[check]}"
    if check in _TEXT_LIMITS:
        return (f"type(v) is str and len(v) <= {_TEXT_LIMITS[check]} and '\\0' not in v"
                " and (v.isascii() or _is_unicode(v))")
    if check is _addr_text:
        return "type(v) is str and len(v) <= 64 and _pton(v) is not None"
    if check in _NESTED:
        env[f"table{i}"] = _NESTED[check]
        return f"type(v) is dict and _fast_valid(table{i}, v)"
    if check is _flags:
        return "type(v) is dict and _fast_valid(_FLAGS_FIELDS, v, ('flags', 'mask'))"
    if check is _bool:
        return "type(v) is bool"
    if check is _any_int:
        return "type(v) is int and -(2**63) <= v < 2**63"
    if check is _requests:
        return f"type(v) is list and len(v) <= {MAX_BATCH}"
    return None


def _compile(fields: dict, keys: tuple, required: tuple[str, ...]) -> Callable[[dict], bool]:
    if any(k not in keys for k in required):
        return _never
    env: dict[str, Any] = {"_pton": _pton, "_fast_valid": _fast_valid, "_FLAGS_FIELDS": _FLAGS_FIELDS,
                           "_is_unicode": _is_unicode}
    body = []
    for i, key in enumerate(keys):
        check = fields.get(key) if type(key) is str else None
        cond = _condition(check, env, i) if check is not None else None
        if cond is None:
            return _never  # an unknown or unusual key: the generic check
        body.append(f"    v = d[{key!r}]\n    if not ({cond}):\n        return False\n")
    exec("def valid(d):\n" + "".join(body) + "    return True\n", env)  # noqa: S102 (names from the tables only)
    return env["valid"]


def _fast_valid(fields: dict, d: dict, required: tuple[str, ...] = ()) -> bool:
    """True if ``d`` certainly passes ``_check_fields(.., d, fields, required)``."""
    keys = tuple(d)
    valid = _COMPILED.get((id(fields), keys))
    if valid is None:
        valid = _compile(fields, keys, required)
        if len(_COMPILED) < _COMPILED_MAX:
            _COMPILED[(id(fields), keys)] = valid
    return valid(d)


_COMMAND_SET = frozenset(COMMANDS)


def validate(req: Any) -> dict:
    """Check a request against the schema; raise :class:`SchemaError`."""
    if not isinstance(req, dict):
        raise SchemaError(errno.EINVAL, "a request must be an object")
    if not _fast_valid(_REQUEST_FIELDS, req, ("version", "cmd")):
        _check_fields("request", req, _REQUEST_FIELDS, required=("version", "cmd"))
    if req["version"] != SCHEMA_VERSION:
        raise SchemaError(errno.EPROTONOSUPPORT, f"schema version {req['version']} is not {SCHEMA_VERSION}")
    if req["cmd"] not in _COMMAND_SET:
        raise SchemaError(errno.EOPNOTSUPP, f"unknown command {req['cmd']!r}")
    return req


# --------------------------------------------------------------------------
# Attributes -> control-plane arguments (ip_vs_genl_parse_service/_dest)


def _packed(af: int, text: str, where: str) -> bytes:
    parsed = _pton(text)
    if parsed is None or parsed[0] != af:
        raise SchemaError(errno.EINVAL, f"{where} {text!r} is not of address family {af}")
    return parsed[1]


def _ntop(af: int, packed: bytes) -> str:
    return socket.inet_ntop(AF_INET6 if af == AF_INET6 else AF_INET, packed)


def _parse_service(ipvs: NetnsIPVS, attrs: dict | None, full: bool) -> tuple[ServiceUser, ctl.Service | None]:
    """``ip_vs_genl_parse_service``: the user view and the existing service."""
    if attrs is None:
        raise SchemaError(errno.EINVAL, "a service is required")
    if "af" not in attrs or ("fwmark" not in attrs
                             and ("protocol" not in attrs or "addr" not in attrs or "port" not in attrs)):
        raise SchemaError(errno.EINVAL, "service needs af and either fwmark or protocol, addr and port")
    af = attrs["af"]
    if af != AF_INET and af != AF_INET6:
        raise IPVSError(errno.EAFNOSUPPORT, f"address family {af}")
    fwmark = attrs.get("fwmark")
    if fwmark is not None:
        # As the kernel: a present fwmark attribute wins, even 0 (which then
        # makes an ordinary TCP 0.0.0.0:0 service, as ip_vs_add_service does).
        protocol, addr, port = uapi.IPPROTO_TCP, bytes(4 if af == AF_INET else 16), 0
        if fwmark:
            svc = ctl.fwm_service_find(ipvs, af, fwmark)
        else:
            svc = ctl.service_find(ipvs, af, protocol, addr, port)
    else:
        fwmark = 0
        protocol, port = attrs["protocol"], attrs["port"]
        addr = _packed(af, attrs["addr"], "service.addr")
        svc = ctl.service_find(ipvs, af, protocol, addr, port)
    if not full:
        return ServiceUser(af=af, protocol=protocol, addr=addr, port=port, fwmark=fwmark), svc
    if "sched_name" not in attrs or "flags" not in attrs or "timeout" not in attrs or "netmask" not in attrs:
        missing = [k for k in ("sched_name", "flags", "timeout", "netmask") if k not in attrs]
        raise SchemaError(errno.EINVAL, f"a full service needs {', '.join(missing)}")
    flags = svc.flags if svc is not None else 0
    f = attrs["flags"]
    mask = f["mask"]
    return ServiceUser(af=af, protocol=protocol, addr=addr, port=port, fwmark=fwmark,
                       flags=(flags & ~mask) | (f["flags"] & mask), sched_name=attrs["sched_name"],
                       pe_name=attrs.get("pe_name", ""), timeout=attrs["timeout"], netmask=attrs["netmask"]), svc


def _int32(v: int) -> int:
    """A u32 read into a C ``int``, as the kernel stores weights."""
    return v - (1 << 32) if v & 0x80000000 else v


def _parse_dest(attrs: dict | None, svc: ctl.Service, full: bool) -> DestUser:
    """``ip_vs_genl_parse_dest`` plus the family checks of ``ip_vs_genl_set_cmd``."""
    if attrs is None or "addr" not in attrs or "port" not in attrs:
        raise SchemaError(errno.EINVAL, "a destination needs addr and port")
    get = attrs.get
    af = get("addr_family") or svc.af
    if af != AF_INET and af != AF_INET6:
        raise IPVSError(errno.EAFNOSUPPORT, f"address family {af}")
    addr = _packed(af, attrs["addr"], "dest.addr")
    if not full:
        return DestUser(addr=addr, port=attrs["port"], af=af)
    if "fwd_method" not in attrs or "weight" not in attrs or "u_threshold" not in attrs or "l_threshold" not in attrs:
        missing = [k for k in ("fwd_method", "weight", "u_threshold", "l_threshold") if k not in attrs]
        raise SchemaError(errno.EINVAL, f"a full destination needs {', '.join(missing)}")
    weight = attrs["weight"]
    return DestUser(addr=addr, port=attrs["port"], af=af, conn_flags=attrs["fwd_method"] & uapi.IP_VS_CONN_F_FWD_MASK,
                    weight=weight - (1 << 32) if weight & 0x80000000 else weight,
                    u_threshold=attrs["u_threshold"], l_threshold=attrs["l_threshold"],
                    tun_type=get("tun_type", 0), tun_port=get("tun_port", 0), tun_flags=get("tun_flags", 0))


# --------------------------------------------------------------------------
# Control-plane objects -> attributes (ip_vs_genl_fill_*)


_U32_UNLESS_BYTES = tuple(-1 if k.endswith("bytes") else _U32 for k in STATS_KEYS)


def _stats(stats, wide: bool) -> dict:
    values = stats.counters() + stats.rates()
    if wide:
        return dict(zip(STATS_KEYS, values, strict=True))
    # The 32-bit attributes: bytes stay u64 (IPVS_STATS_ATTR_*BYTES), the rest are u32.
    return dict(zip(STATS_KEYS, map(int.__and__, values, _U32_UNLESS_BYTES), strict=True))


def service_attrs(ipvs: NetnsIPVS, svc: ctl.Service, stats: bool = True) -> dict:
    """``ip_vs_genl_fill_service``: one service as reply attributes.

    ``stats=False`` leaves out ``stats`` and ``stats64`` (the ``stats``
    request key, a PyIPVS extension).
    """
    d: dict[str, Any] = {"af": svc.af}
    if svc.fwmark:
        d["fwmark"] = svc.fwmark
    else:
        d["protocol"] = svc.protocol
        d["addr"] = _ntop(svc.af, svc.addr)
        d["port"] = svc.port
    d["sched_name"] = svc.sched_name
    if svc.pe_name:
        d["pe_name"] = svc.pe_name
    d["flags"] = {"flags": svc.flags, "mask": _U32}
    d["timeout"] = svc.timeout // ipvs.hz
    d["netmask"] = svc.netmask
    if stats:
        d["stats"] = _stats(svc.stats, wide=False)
        d["stats64"] = _stats(svc.stats, wide=True)
    return d


def dest_attrs(dest: ctl.Dest, stats: bool = True) -> dict:
    """``ip_vs_genl_fill_dest``: one destination as reply attributes
    (``stats=False``: without ``stats`` and ``stats64``)."""
    d = {
        "addr": _ntop(dest.af, dest.addr),
        "port": dest.port,
        "fwd_method": dest.conn_flags & uapi.IP_VS_CONN_F_FWD_MASK,
        "weight": dest.weight,
        "tun_type": dest.tun_type,
        "tun_port": dest.tun_port,
        "tun_flags": dest.tun_flags,
        "u_threshold": dest.u_threshold,
        "l_threshold": dest.l_threshold,
        "active_conns": dest.activeconns,
        "inact_conns": dest.inactconns,
        "persist_conns": dest.persistconns,
        "addr_family": dest.af,
    }
    if stats:
        d["stats"] = _stats(dest.stats, wide=False)
        d["stats64"] = _stats(dest.stats, wide=True)
    return d


# --------------------------------------------------------------------------
# Sync daemon settings: the kernel keeps them in struct netns_ipvs; NetnsIPVS
# has no slot for them yet, so they live here, keyed by instance.

_SYNC: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _sync_state(ipvs: NetnsIPVS) -> dict[int, dict]:
    return _SYNC.setdefault(ipvs, {})


# --------------------------------------------------------------------------
# Command handlers: each returns the reply's extra keys.


def _new_service(ipvs, req, now, **_):
    u, svc = _parse_service(ipvs, req.get("service"), full=True)
    if svc is not None:
        raise IPVSError(errno.EEXIST, "service already exists")
    ctl.add_service(ipvs, u)
    return {}


def _existing(ipvs, req, full: bool) -> tuple[ServiceUser, ctl.Service]:
    u, svc = _parse_service(ipvs, req.get("service"), full=full)
    if svc is None:
        # "Unless we're adding a new service, the service must already exist."
        raise IPVSError(errno.ESRCH, "no such service")
    return u, svc


def _set_service(ipvs, req, now, **_):
    u, _svc = _existing(ipvs, req, full=True)
    ctl.edit_service(ipvs, u)
    return {}


def _del_service(ipvs, req, now, **_):
    u, _svc = _existing(ipvs, req, full=False)
    ctl.del_service(ipvs, u)
    return {}


def _get_service(ipvs, req, now, **_):
    stats = req.get("stats", True)
    if "service" not in req:
        return {"services": [service_attrs(ipvs, s, stats) for s in ctl.services_sorted_by_bucket(ipvs)]}
    _u, svc = _existing(ipvs, req, full=False)
    return {"service": service_attrs(ipvs, svc, stats)}


def _dest_cmd(ipvs, req, full: bool) -> tuple[ServiceUser, ctl.Service, DestUser]:
    su, svc = _existing(ipvs, req, full=False)
    du = _parse_dest(req.get("dest"), svc, full=full)
    if full and du.af != svc.af:
        if _sync_state(ipvs):
            # The sync protocol cannot carry a connection of two families.
            raise IPVSError(errno.EINVAL, "a destination of another family with a sync daemon running")
        if du.conn_flags != uapi.IP_VS_CONN_F_TUNNEL:
            raise IPVSError(errno.EINVAL, "a destination of another family must be tunnelled")
    if full and du.tun_type == uapi.IP_VS_CONN_F_TUNNEL_TYPE_GUE and du.tun_port == 0:
        raise IPVSError(errno.EINVAL, "GUE tunnel port is zero")
    return su, svc, du


def _new_dest(ipvs, req, now, **_):
    su, _svc, du = _dest_cmd(ipvs, req, full=True)
    ctl.add_dest(ipvs, su, du)
    return {}


def _set_dest(ipvs, req, now, **_):
    su, _svc, du = _dest_cmd(ipvs, req, full=True)
    ctl.edit_dest(ipvs, su, du)
    return {}


def _del_dest(ipvs, req, now, **_):
    su, _svc, du = _dest_cmd(ipvs, req, full=False)
    ctl.del_dest(ipvs, su, du.af, du.addr, du.port)
    return {}


def _get_dest(ipvs, req, now, **_):
    try:
        _u, svc = _parse_service(ipvs, req.get("service"), full=False)
    except (SchemaError, IPVSError):
        # ip_vs_genl_dump_dests answers a bad or missing service with an empty dump.
        svc = None
    if svc is None:
        return {"dests": []}
    stats = req.get("stats", True)
    return {"dests": [dest_attrs(d, stats) for d in svc.destinations]}


def _new_daemon(ipvs, req, now, interfaces: Collection[str] | None = None, **_):
    d = req.get("daemon")
    if d is None or not all(k in d for k in ("state", "mcast_ifn", "sync_id")):
        raise SchemaError(errno.EINVAL, "daemon needs state, mcast_ifn and sync_id")
    state = d["state"]
    if state not in (uapi.IP_VS_STATE_MASTER, uapi.IP_VS_STATE_BACKUP):
        raise IPVSError(errno.EINVAL, f"bad daemon state {state}")
    running = _sync_state(ipvs)
    if any(dest.af != svc.af for svc in (*ipvs.svc_table.values(), *ipvs.fwm_table.values())
           for dest in svc.destinations):
        # ipvs->mixed_address_family_dests: the sync protocol cannot carry
        # a connection of two families.
        raise IPVSError(errno.EINVAL, "a service has a destination of another family")
    # start_sync_thread looks the interface up before it checks for a running thread.
    if interfaces is not None and d["mcast_ifn"] not in interfaces:
        raise IPVSError(errno.ENODEV, f"no interface {d['mcast_ifn']!r}")
    if state in running:
        raise IPVSError(errno.EEXIST, "daemon already running")
    for key, af, family in (("mcast_group", AF_INET, "IPv4"), ("mcast_group6", AF_INET6, "IPv6")):
        if key in d:
            packed = _pton(d[key])
            if packed is None or packed[0] != af:
                raise SchemaError(errno.EINVAL, f"{key} must be {family}")
    # The kernel's defaults for what the request leaves out (ip_vs_sync.c).
    # sync_maxlen is clamped to what fits a 1500-byte MTU after IP and UDP headers.
    room = 1500 - (48 if "mcast_group6" in d else 28)
    maxlen = min(max(d.get("sync_maxlen") or room, 1024 if state == uapi.IP_VS_STATE_BACKUP else 1), room)
    entry = {"state": state, "mcast_ifn": d["mcast_ifn"], "sync_id": d["sync_id"] & 0xFF,
             "sync_maxlen": maxlen, "mcast_port": d.get("mcast_port") or 8848,
             "mcast_ttl": d.get("mcast_ttl") or 1}
    if "mcast_group6" in d:
        entry["mcast_group6"] = d["mcast_group6"]
    else:
        entry["mcast_group"] = d.get("mcast_group", "224.0.0.81")
    running[state] = entry
    return {}


def _del_daemon(ipvs, req, now, **_):
    d = req.get("daemon")
    if d is None or "state" not in d:
        raise SchemaError(errno.EINVAL, "daemon needs state")
    running = _sync_state(ipvs)
    if running.pop(d["state"], None) is None:
        raise IPVSError(errno.ESRCH, "no daemon is running")
    return {}


def _get_daemon(ipvs, req, now, **_):
    running = _sync_state(ipvs)
    return {"daemons": [dict(running[s]) for s in (uapi.IP_VS_STATE_MASTER, uapi.IP_VS_STATE_BACKUP) if s in running]}


def _set_config(ipvs, req, now, **_):
    ctl.set_timeouts(ipvs, req.get("timeout_tcp", 0), req.get("timeout_tcp_fin", 0), req.get("timeout_udp", 0))
    return {}


def _get_config(ipvs, req, now, **_):
    tcp, fin, udp = ctl.get_timeouts(ipvs)
    return {"timeout_tcp": tcp, "timeout_tcp_fin": fin, "timeout_udp": udp}


def _get_info(ipvs, req, now, **_):
    return {"info": {"version": uapi.IP_VS_VERSION_CODE, "conn_tab_size": ipvs.conn_tab.size},
            "extensions": list(EXTENSIONS)}


def core_counters(ipvs: NetnsIPVS) -> dict[str, int]:
    """What the core counted that no kernel file shows: each
    :class:`ipvs.packet.Drop` reason (``drop_<reason>``, zeros included),
    the connection table (entries, cap, ``ip_vs_random_dropentry``'s
    drops, and its passes at the cap: ``make_room``), and the defenses' state as ``update_defense_level`` last set
    it (memory left in pages, -1 with no budget; ``ip_vs_todrop``'s rate,
    0 when off; whether entries are dropped; whether TCP uses the defense
    state table)."""
    drops = ipvs.drops
    out = {f"drop_{r.name.lower()}": drops.get(r, 0) for r in Drop}
    tab = ipvs.conn_tab
    out["conn_count"] = tab.count
    out["conn_max"] = tab.max_conns
    out["conn_dropentry"] = tab.dropped
    out["conn_room_passes"] = tab.room_passes
    out["defense_availmem"] = -1 if ipvs.availmem is None else ipvs.availmem
    out["defense_amemthresh"] = ipvs.sysctl.amemthresh
    out["defense_drop_rate"] = ipvs.drop_rate
    out["defense_dropentry"] = int(ipvs.dropentry)
    out["defense_secure_tcp"] = int(ipvs.old_secure_tcp > 1)
    return out


def _get_counters(ipvs, req, now, **_):
    return {"counters": core_counters(ipvs)}


def _set_info(ipvs, req, now, **_):
    raise SchemaError(errno.EINVAL, "SET_INFO is only a reply")


def _zero(ipvs, req, now, **_):
    if "service" not in req:
        ctl.zero(ipvs)
        return {}
    u, _svc = _existing(ipvs, req, full=False)
    ctl.zero(ipvs, u)
    return {}


def _flush(ipvs, req, now, **_):
    ctl.flush(ipvs)
    return {}


def _get_proc(ipvs, req, now, **_):
    name = req.get("name")
    if name not in procfs.PROC_NAMES:
        raise IPVSError(errno.ENOENT, f"no /proc/net view {name!r}")
    return {"text": procfs.render(ipvs, name, now)}


def _mark_cmd(ipvs, req, now, **_):
    """NEW_MARK / DEL_MARK / GET_MARK / FLUSH_MARK: the fwmark rule table
    (a PyIPVS extension standing in for iptables MARK, see ipvs.fwmark)."""
    from ipvs.fwmark import MarkError, rule_from_dict

    cmd = req["cmd"]
    try:
        if cmd == "GET_MARK":
            return {"marks": [r.as_dict() for r in ipvs.marks.rules]}
        if cmd == "FLUSH_MARK":
            ipvs.marks.flush()
            return {}
        if "mark" not in req:
            raise SchemaError(errno.EINVAL, f"{cmd} needs a mark rule")
        rule = rule_from_dict(req["mark"])
        (ipvs.marks.add if cmd == "NEW_MARK" else ipvs.marks.delete)(rule)
    except MarkError as e:
        raise IPVSError(e.errno, str(e)) from None
    return {}


def _get_sysctl(ipvs, req, now, **_):
    # A scheduler module's own settings exist once the module is loaded,
    # as the kernel's /proc/sys/net/ipv4/vs/ shows (procfs.sysctl_values).
    names = [n for n in ip_vs.Sysctls.names()
             if n not in ctl.MODULE_SYSCTLS or ctl.MODULE_SYSCTLS[n] in ipvs.sched_modules]
    if "name" not in req:
        return {"sysctls": {n: getattr(ipvs.sysctl, n) for n in names}}
    if req["name"] not in names:
        raise IPVSError(errno.ENOENT, f"no setting {req['name']!r}")
    return {"value": getattr(ipvs.sysctl, req["name"])}


def _set_sysctl(ipvs, req, now, **_):
    if "name" not in req or "value" not in req:
        raise SchemaError(errno.EINVAL, "SET_SYSCTL needs name and value")
    ipvs.sysctl.set(req["name"], req["value"])
    if req["name"] in ctl.MODULE_SYSCTLS:
        # Writing a scheduler module's setting stands for modprobe + sysctl -w.
        ipvs.sched_modules.add(ctl.MODULE_SYSCTLS[req["name"]])
    if req["name"] == "run_estimation":
        ipvs.est.enabled = bool(req["value"])
    if req["name"] in ("drop_entry", "drop_packet", "secure_tcp"):
        ctl.update_defense_level(ipvs)  # proc_do_defense_mode: the new level applies at once
    return {}


def batch_steps(ipvs: NetnsIPVS, req: dict, now: int, interfaces: Collection[str] | None = None) -> Iterator[dict]:
    """The replies of a (validated) BATCH, one request at a time: the
    daemon runs a long batch a slice per turn of its loop."""
    for inner in req["requests"]:
        if isinstance(inner, dict) and inner.get("cmd") == "BATCH":
            seq = inner.get("seq")
            yield error_reply(errno.EINVAL, "a BATCH cannot hold a BATCH", seq if isinstance(seq, int) else None)
        else:
            yield dispatch(ipvs, inner, now, interfaces=interfaces)


def _batch(ipvs, req, now, interfaces=None, **_):
    if "requests" not in req:
        raise SchemaError(errno.EINVAL, "BATCH needs requests")
    return {"replies": list(batch_steps(ipvs, req, now, interfaces))}


_HANDLERS: dict[str, Callable[..., dict]] = {
    "NEW_SERVICE": _new_service,
    "SET_SERVICE": _set_service,
    "DEL_SERVICE": _del_service,
    "GET_SERVICE": _get_service,
    "NEW_DEST": _new_dest,
    "SET_DEST": _set_dest,
    "DEL_DEST": _del_dest,
    "GET_DEST": _get_dest,
    "NEW_DAEMON": _new_daemon,
    "DEL_DAEMON": _del_daemon,
    "GET_DAEMON": _get_daemon,
    "SET_CONFIG": _set_config,
    "GET_CONFIG": _get_config,
    "SET_INFO": _set_info,
    "GET_INFO": _get_info,
    "ZERO": _zero,
    "FLUSH": _flush,
    "GET_PROC": _get_proc,
    "GET_SYSCTL": _get_sysctl,
    "SET_SYSCTL": _set_sysctl,
    "NEW_MARK": _mark_cmd,
    "DEL_MARK": _mark_cmd,
    "GET_MARK": _mark_cmd,
    "FLUSH_MARK": _mark_cmd,
    "GET_COUNTERS": _get_counters,
    "BATCH": _batch,
}


# --------------------------------------------------------------------------
# Entry point


def error_reply(err: int, message: str, seq: Any = None) -> dict:
    """An error reply carrying the kernel errno and its symbolic name."""
    reply = {
        "version": SCHEMA_VERSION,
        "ok": False,
        "errno": err,
        "error": errno.errorcode.get(err, f"E{err}"),
        "message": message,
    }
    if seq is not None:
        reply["seq"] = seq
    return reply


def dispatch(ipvs: NetnsIPVS, req: Any, now: int, *, interfaces: Collection[str] | None = None) -> dict:
    """Run one request against ``ipvs`` and return the reply; never raises.

    ``now`` is the current time in jiffies (for ``/proc`` expiry times).
    ``interfaces``, when given, are the names a sync daemon may bind to
    (NEW_DAEMON answers ``ENODEV`` for others, like the kernel).
    """
    seq = req.get("seq") if isinstance(req, dict) and isinstance(req.get("seq"), int) else None
    try:
        validate(req)
        extra = _HANDLERS[req["cmd"]](ipvs, req, now, interfaces=interfaces)
    except SchemaError as e:
        return error_reply(e.errno, e.message, seq)
    except IPVSError as e:
        return error_reply(e.errno, e.detail or errno.errorcode.get(e.errno, str(e.errno)), seq)
    except Exception as e:  # a bug must not take the control socket down
        log.exception("control request failed: %r", req)
        return error_reply(errno.EIO, f"internal error: {type(e).__name__}: {e}", seq)
    reply = {"version": SCHEMA_VERSION, "ok": True, **extra}
    if seq is not None:
        reply["seq"] = seq
    return reply


class LocalTransport:
    """A transport that runs :func:`dispatch` in-process.

    For tests and for checking a configuration without a daemon: anything
    with a ``call(req) -> reply`` method is a transport, the daemon's Unix
    socket client (``ipvs.client.Client``) being the other one.
    """

    def __init__(self, ipvs: NetnsIPVS, clock: Callable[[], int] = lambda: 0,
                 interfaces: Collection[str] | None = None) -> None:
        self.ipvs = ipvs
        self.clock = clock
        self.interfaces = interfaces

    def call(self, req: dict) -> dict:
        """Dispatch one request to the instance in this process; returns the reply."""
        return dispatch(self.ipvs, req, self.clock(), interfaces=self.interfaces)
