"""Rules files: Debian's ``/etc/ipvsadm.rules`` and ipvsd's state file.

No kernel file corresponds to this module.  The kernel keeps its rules in
memory and loses them at reboot; distributions save them with
``ipvsadm -S -n`` into a file and feed it back with ``ipvsadm -R``.
Debian's ``ipvsadm`` service does it with ``/etc/ipvsadm.rules``, a file
that starts with comment lines, which its init script strips
(``grep -v "^#"``) before ``ipvsadm -R`` sees them: ``ipvsadm -R``
itself has no comments and fails on them.  This module is that script's
part, used by ``ipvsd`` for ``--rules``, ``--save`` and its state file:

* :func:`read`: a file's rule lines and its comment lines; a missing file
  is an empty rule set (a fresh install has none);
* :func:`restore`: the rule lines through ``ipvsadm -R``'s parser;
* :func:`dump`: the rules as ``ipvsadm -S -n`` prints them;
* :func:`write`: a rules file replaced atomically (temporary file,
  ``fsync``, ``rename``, ``fsync`` of the directory), keeping the comment
  lines the old file started with, so a Debian header survives a save.

The rule lines themselves are ``ipvsadm``'s: :mod:`ipvs.cli.ipvsadm`
parses and prints them, byte-compatible with ipvsadm 1.31.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from typing import Any, NamedTuple, TextIO

from ipvs.cli import ipvsadm


class RulesText(NamedTuple):
    """A rules file split the way Debian's init script reads it."""

    #: The comment (and blank) lines before the first rule.
    header: list[str]
    #: The lines ``ipvsadm -R`` gets (comments and blank lines left out).
    rules: list[str]
    #: False when there was no file (an empty rule set).
    exists: bool = True


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


def restore(rules: Iterable[str], transport: Any, stderr: TextIO) -> int:
    """Apply rule lines as ``ipvsadm -R`` does; returns its exit status
    (0: every line applied; errors are written to ``stderr`` and the
    other lines still apply, as with ``ipvsadm -R``)."""
    return ipvsadm.restore(rules, transport, stderr)


def flush(transport: Any, stderr: TextIO) -> int:
    """``ipvsadm -C``."""
    return ipvsadm.main(["-C"], transport=transport, stdout=io.StringIO(), stderr=stderr)


def dump(transport: Any) -> str:
    """The rules as ``ipvsadm -S -n`` prints them; raises ``OSError`` if
    the director could not list them (nothing must then be written)."""
    out, err = io.StringIO(), io.StringIO()
    rc = ipvsadm.main(["-S", "-n"], transport=transport, stdout=out, stderr=err)
    if rc != 0:
        raise OSError(f"ipvsadm -S failed: {err.getvalue().strip() or f'exit {rc}'}")
    return out.getvalue()


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
