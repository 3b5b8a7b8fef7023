"""Rules files: ``ipvsadm -S``'s lines, ``ipvsadm -R``'s words, Debian's
``/etc/ipvsadm.rules`` and ipvsd's state file.

No kernel file corresponds to this module: the kernel keeps its rules in
memory and loses them at reboot.  ipvsadm 1.31 saves them as command lines
(``ipvsadm -S``, ``ipvsadm.c``'s ``print_service_entry`` with
``FMT_RULE``) and reads them back as words (``ipvsadm -R``,
``config_stream.c``); distributions keep them in a file between the two.
This module is that format, for every user of it:

* :func:`service_line`, :func:`dest_line`: the ``-A`` and ``-a`` lines
  ``ipvsadm -S`` prints, byte for byte as ipvsadm 1.31 (the caller, which
  knows how names resolve, gives the service and server as text);
* :func:`config_stream_read`: the words of each line, as ``ipvsadm -R``
  splits them (its quirks included: no comments, ``ipvsadm`` dropped);
* Debian's ``ipvsadm`` service keeps ``/etc/ipvsadm.rules``, a file that
  starts with comment lines, which its init script strips
  (``grep -v "^#"``) before ``ipvsadm -R`` sees them; ``ipvsadm -R``
  itself has no comments and fails on them.  :func:`parse` and
  :func:`read` are that script's part (``ipvsd --rules``, its state file,
  ``ipvs-replay``): a file's comment lines and its rule lines, a missing
  file being an empty rule set;
* :func:`write`: a rules file replaced atomically (temporary file,
  ``fsync``, ``rename``, ``fsync`` of the directory), keeping the comment
  lines the old file started with, so a Debian header survives a save.

Applying the lines is ``ipvsadm -R``'s own work (:func:`ipvs.cli.ipvsadm.restore`,
:func:`ipvs.cli.ipvsadm.save`), so this module imports nothing of the
command line tools; they import it, when they read or write rules.  It
imports only the standard library and :mod:`ipvs.uapi` (``ipvsadm`` starts
in milliseconds and keeps it so).
"""

from __future__ import annotations

import os
import re
import socket

from ipvs import uapi
from ipvs.uapi import AF_INET, AF_INET6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP

# Annotations only: importing typing costs an ipvsadm run milliseconds.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable


class RulesText:
    """A rules file split the way Debian's init script reads it."""

    __slots__ = ("header", "rules", "exists")

    def __init__(self, header: list[str], rules: list[str], exists: bool = True) -> None:
        #: The comment (and blank) lines before the first rule.
        self.header = header
        #: The lines ``ipvsadm -R`` gets (comments and blank lines left out).
        self.rules = rules
        #: False when there was no file (an empty rule set).
        self.exists = exists

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RulesText):
            return NotImplemented
        return (self.header, self.rules, self.exists) == (other.header, other.rules, other.exists)

    def __repr__(self) -> str:
        return f"RulesText(header={self.header!r}, rules={self.rules!r}, exists={self.exists!r})"


def is_comment(line: str) -> bool:
    """A comment line: ``#`` after optional blanks (Debian's script drops
    only lines starting with ``#``; blanks before it are forgiven)."""
    return line.lstrip(" \t").startswith("#")


def parse(text: str) -> RulesText:
    """Split a rules file into its leading comments and its rule lines."""
    header: list[str] = []
    rules: list[str] = []
    for line in text.splitlines():
        if is_comment(line) or not line.strip():
            if not rules and (header or line.strip()):
                header.append(line)
            continue
        rules.append(line)
    while header and not header[-1].strip():
        header.pop()
    return RulesText(header, rules)


def read(path: str) -> RulesText:
    """The rules file at ``path``; a missing file is an empty rule set.

    Bytes that are not UTF-8 are read as surrogate escapes, so the parser
    reports the line instead of the reader failing on the file.
    """
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return parse(f.read())
    except FileNotFoundError:
        return RulesText([], [], exists=False)


def write(path: str, text: str, header: list[str] | None = None) -> None:
    """Replace ``path`` with ``text`` atomically: a reader sees the old
    file or the new one, and a crash leaves one of them whole.

    ``header`` (comment lines) goes first; None keeps the comment lines
    the existing file starts with.  The file's mode is kept (0600 for a
    new one: rules name the real servers).
    """
    if header is None:
        header = read(path).header
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o600
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    body = "".join(line + "\n" for line in header) + text
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# ------------------------------------------------------------ ipvsadm -R


def config_stream_read(text: str) -> Iterable[list[str]]:
    """``config_stream_read`` applied line after line: the words of each line.

    Words are separated by spaces, tabs and CRs; a word ``ipvsadm`` is
    dropped.  The C function reads with ``fscanf`` and gives up (returns
    NULL) when it meets the end of input while skipping blanks, so a last
    line without a newline that ends in two or more blanks is lost; one
    blank is swallowed with the word before it.
    """
    lines = text.split("\n")
    last = lines.pop()  # the text after the last newline ("" if it ends with one)
    if text.isascii() and _OTHER_SPACE.search(text) is None:
        # str.split() then splits exactly at spaces, tabs and CRs, faster.
        for line in lines:
            words = line.split()
            yield [w for w in words if w != "ipvsadm"] if "ipvsadm" in words else words
    else:
        for line in lines:
            yield [w for w in _WORD.findall(line) if w != "ipvsadm"]
    words = [w for w in _WORD.findall(last) if w != "ipvsadm"]
    if words and len(last) - len(last.rstrip(" \t\r")) < 2:
        yield words


_WORD = re.compile(r"[^ \t\r]+")
#: ASCII characters other than space, tab, CR and LF that str.split() splits at.
_OTHER_SPACE = re.compile(r"[\x0b\x0c\x1c-\x1f]")


# ------------------------------------------------------------ ipvsadm -S

#: The service option of a protocol in a rule (``--xxx-service`` for none known).
_PROTO_OPTIONS = {IPPROTO_TCP: "-t", IPPROTO_UDP: "-u", IPPROTO_SCTP: "--sctp-service"}
#: The forwarding switch of a real server's rule; Local (1) saves as ``-g``, as in ipvsadm.
_FWD_SWITCH = {uapi.IP_VS_CONN_F_MASQ: "-m", uapi.IP_VS_CONN_F_LOCALNODE: "-g",
               uapi.IP_VS_CONN_F_TUNNEL: "-i", uapi.IP_VS_CONN_F_DROUTE: "-g"}
#: ``--tun-*`` checksum options by the destination's tunnel flags (0, 1, 2).
TUN_FLAGS_OPTS = ("--tun-nocsum", "--tun-csum", "--tun-remcsum")


def _int32(v: int) -> int:
    """A u32 as C's signed 32-bit ``int``: how ipvsadm's ``%d`` prints it."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def service_option(protocol: int, fwmark: int, af: int, vname: str) -> str:
    """How a rule names its service: ``-t VNAME``, ``-u VNAME``,
    ``--sctp-service VNAME``, or ``-f MARK`` (``-f MARK -6`` for IPv6);
    ``vname`` is the address and port as the caller prints them."""
    if fwmark:
        mark = _int32(fwmark)
        return f"-f {mark} -6" if af == AF_INET6 else f"-f {mark}"
    return f"{_PROTO_OPTIONS.get(protocol, '--xxx-service')} {vname}"


def sched_flags_text(sched_name: str, flags: int) -> str:
    """The scheduler flags of a service as ipvsadm names them
    (``sh-fallback,sh-port``, ``flag-1``...): ``-b`` in a rule, and in
    parentheses in a listing."""
    pairs: tuple[tuple[int, str], ...]
    if sched_name == "sh":
        pairs = ((uapi.IP_VS_SVC_F_SCHED_SH_FALLBACK, "sh-fallback"), (uapi.IP_VS_SVC_F_SCHED_SH_PORT, "sh-port"))
    elif sched_name == "mh":
        pairs = ((uapi.IP_VS_SVC_F_SCHED_MH_FALLBACK, "mh-fallback"), (uapi.IP_VS_SVC_F_SCHED_MH_PORT, "mh-port"))
    else:
        pairs = ((uapi.IP_VS_SVC_F_SCHED1, "flag-1"), (uapi.IP_VS_SVC_F_SCHED2, "flag-2"),
                 (uapi.IP_VS_SVC_F_SCHED3, "flag-3"))
    return ",".join(name for bit, name in pairs if flags & bit)


def netmask_text(af: int, netmask: int) -> str | None:
    """A persistent service's netmask as ipvsadm prints it (a dotted mask
    for IPv4, a prefix length for IPv6), None for a full mask (not printed)."""
    if af == AF_INET6:
        return None if netmask == 128 else str(_int32(netmask))
    if af != AF_INET or netmask == 0xFFFFFFFF:
        return None
    return socket.inet_ntop(AF_INET, (netmask & 0xFFFFFFFF).to_bytes(4, "big"))


def service_line(svc: str, sched_name: str, flags: int, timeout: int, af: int, netmask: int, pe_name: str) -> str:
    """The ``-A`` line of a service (``svc``: :func:`service_option`'s text)."""
    line = f"-A {svc} -s {sched_name}"
    if flags & uapi.IP_VS_SVC_F_PERSISTENT:
        line += f" -p {timeout}"
        mask = netmask_text(af, netmask)
        if mask is not None:
            line += f" -M {mask}"
    if pe_name:
        line += f" --pe {pe_name}"
    if flags & uapi.IP_VS_SVC_F_ONEPACKET:
        line += " -o"
    if flags & uapi.IP_VS_SVC_F_SCHED_MASK:
        line += " -b " + sched_flags_text(sched_name, flags)
    return line


def dest_line(svc: str, dname: str, conn_flags: int, weight: int, tun_type: int = 0, tun_port: int = 0,
              tun_flags: int = 0) -> str:
    """The ``-a`` line of a real server (``dname``: its address and port as
    the caller prints them), with the tunnel options of a tunnel."""
    fwd = conn_flags & uapi.IP_VS_CONN_F_FWD_MASK
    switch = _FWD_SWITCH.get(fwd, "(null)")  # printf's %s of ipvsadm's NULL
    base = f"-a {svc} -r {dname} {switch} -w {weight}"
    if fwd != uapi.IP_VS_CONN_F_TUNNEL:
        return base
    flag = TUN_FLAGS_OPTS[tun_flags] if tun_flags < len(TUN_FLAGS_OPTS) else "(null)"
    if tun_type == uapi.IP_VS_CONN_F_TUNNEL_TYPE_GRE:
        return f"{base} --tun-type gre {flag}"
    if tun_type == uapi.IP_VS_CONN_F_TUNNEL_TYPE_GUE:
        return f"{base} --tun-type gue --tun-port {tun_port} {flag}"
    if tun_type == uapi.IP_VS_CONN_F_TUNNEL_TYPE_IPIP:
        return f"{base} --tun-type ipip"
    return base
