"""Network-namespace helpers for the kernel-oracle guest (runs inside the VM).

Every process start costs 0.3-0.5 s under TCG, so the harness opens sockets
in several namespaces from ONE Python process: it enters a namespace with
setns(2), creates the socket (a socket stays in the namespace it was made
in) and returns to the director's namespace.  Python 3.11 has no
``os.setns``, hence ctypes.

Command line (used by oracle.sh)::

    python3 nsutil.py txoff NS:DEV [NS:DEV ...]   turn tx checksum offload off
                                                  (empty NS: the director's)
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import socket
import struct
import subprocess
import sys

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_HOME = os.open("/proc/self/ns/net", os.O_RDONLY)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def netns(name: str | None):
    """Run the body inside network namespace NAME (None: stay at home)."""
    if not name:
        yield
        return
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(fd)
        yield
    finally:
        _setns(_HOME)
        os.close(fd)


def family_of(addr: str) -> int:
    """AF_INET6 for an IPv6 address text, else AF_INET."""
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def socket_in(ns: str | None, family=socket.AF_INET, type_=socket.SOCK_STREAM, proto=0):
    with netns(ns):
        return socket.socket(family, type_, proto)


SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x17


def tx_checksum_off(ns: str, dev: str) -> None:
    """Like ``ethtool -K DEV tx off``: captures then show final checksums."""
    with netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            val = struct.pack("II", ETHTOOL_STXCSUM, 0)
            buf = ctypes.create_string_buffer(val)
            ifr = struct.pack("16sQ", dev.encode(), ctypes.addressof(buf))
            fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifr)
        except OSError:
            subprocess.run(["ethtool", "-K", dev, "tx", "off"], check=True,
                           stdout=subprocess.DEVNULL)
        finally:
            s.close()


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "txoff":
        for item in argv[1:]:
            ns, dev = item.split(":", 1)
            tx_checksum_off(ns, dev)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
