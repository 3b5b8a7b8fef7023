"""ipvsd under systemd: readiness notification and the unit file.

No kernel file: the kernel's IPVS needs no service manager.  Debian runs
``ipvsadm -R`` from its ipvsadm service at boot; PyIPVS's director is a
process, so it is a service itself (``ipvs/ipvsd.service``, installed
with the package).

* :func:`notify` is ``sd_notify(3)`` in a few lines: one datagram to the
  Unix socket named by ``$NOTIFY_SOCKET`` (an abstract name when it starts
  with ``@``).  Outside systemd the variable is unset and nothing is sent.
  ipvsd sends ``READY=1`` once its rules are restored and its control
  socket serves (``Type=notify`` makes ``systemctl start`` wait for that,
  so units ordered after ipvsd find a director that answers), and
  ``STOPPING=1`` when it begins to stop.
* :func:`install_unit` (``ipvsd --install-unit [PATH]``) writes the unit
  with the absolute path of the ipvsd command that runs it.  The unit
  ships as package data rather than as a data file because where the
  command lands (a virtualenv, /usr/local, pipx) is known only at run
  time, and systemd wants the absolute path; a data file would also land
  under the installation's prefix, where systemd does not look.
"""

from __future__ import annotations

import os
import socket
import sys

#: Where ``--install-unit`` writes by default.
UNIT_PATH = "/etc/systemd/system/ipvsd.service"


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd; False when not
    started by systemd or when the socket refuses (never raises)."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr or addr[0] not in "/@":
        return False
    if addr[0] == "@":
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(state.encode())
    except OSError:
        return False
    return True


def unit_text(ipvsd: str) -> str:
    """The unit with ``ipvsd`` (an absolute path) as its command."""
    if not os.path.isabs(ipvsd):
        raise ValueError(f"the ipvsd command must be an absolute path, not {ipvsd!r}")
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "ipvsd.service")) as f:
        return f.read().replace("@IPVSD@", ipvsd)


def ipvsd_command() -> str:
    """The absolute path of the ipvsd command running now (the console
    script or tools/ipvsd), as the unit's ExecStart."""
    return os.path.abspath(sys.argv[0])


def install_unit(path: str | None = None, ipvsd: str | None = None) -> int:
    """Write the unit into ``path`` (default :data:`UNIT_PATH`; ``-`` for
    stdout); returns an exit status."""
    text = unit_text(ipvsd or ipvsd_command())
    if path == "-":
        sys.stdout.write(text)
        return 0
    path = path or UNIT_PATH
    if os.path.isdir(path):
        path = os.path.join(path, "ipvsd.service")
    try:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        print(f"ipvsd: cannot write {path}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"ipvsd: wrote {path}; now: systemctl daemon-reload && systemctl enable --now ipvsd", file=sys.stderr)
    return 0
