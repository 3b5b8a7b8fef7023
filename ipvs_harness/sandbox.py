"""Scenario scripts run where they cannot touch this host's /etc.

A scenario is written for the throw-away VM, where it runs as root and may
edit ``/etc`` (``echo "172.16.0.3 rs2.example.test" >> /etc/hosts`` so that
``ipvsadm -r rs2.example.test:80`` resolves).  The offline backend's
recording stub and the namespace lab run the same script on this host, so
they run it in a private mount namespace (``unshare --mount``) whose
``/etc`` is an overlay on the host's: every write lands in a directory of
the run's own, and ``/etc/hosts`` starts as the guest's (Debian's base
file, ``localhost`` only), so names resolve as in the VM.  :func:`hosts`
reads the scenario's ``/etc/hosts`` back afterwards for the offline
resolver.
"""

from __future__ import annotations

import os
import shlex
import subprocess

#: The guest's /etc/hosts (debootstrap's base file in the VM image).
GUEST_HOSTS = "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\n" \
              "ff02::2\t\tip6-allrouters\n"
#: The exit status of the wrapper when the private /etc cannot be made.
NO_SANDBOX = 97


def wrap(argv: list[str], workdir: str) -> list[str]:
    """``argv`` run in a new mount namespace with a private ``/etc``
    (changes under ``workdir/etc-upper``).  Needs root or unprivileged user
    namespaces (then ``--map-root-user``)."""
    upper, work = os.path.join(workdir, "etc-upper"), os.path.join(workdir, "etc-work")
    os.makedirs(upper, exist_ok=True)
    os.makedirs(work, exist_ok=True)
    with open(os.path.join(upper, "hosts"), "w") as f:
        f.write(GUEST_HOSTS)
    script = (f"mount -t overlay pyipvs-etc -o lowerdir=/etc,upperdir={shlex.quote(upper)},"
              f"workdir={shlex.quote(work)} /etc || exit {NO_SANDBOX}; exec " + shlex.join(argv))
    user = [] if os.geteuid() == 0 else ["--map-root-user"]
    return ["unshare", "--mount", "--propagation", "private", *user, "--", "bash", "-c", script]


def check(proc: subprocess.CompletedProcess | subprocess.Popen) -> None:
    """Refuse loudly when the private /etc could not be made (the script did not run)."""
    if proc.returncode == NO_SANDBOX:
        raise RuntimeError("cannot give the scenario a private /etc (unshare --mount and an overlay on /etc "
                           "are needed); not running it on this host's /etc")


def parse_hosts(text: str) -> list[tuple[str, list[str]]]:
    """(address, names) of an /etc/hosts text, in file order."""
    out = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2:
            out.append((fields[0], fields[1:]))
    return out


def hosts(workdir: str) -> list[tuple[str, list[str]]]:
    """(address, names) of the scenario's /etc/hosts as the script left it."""
    path = os.path.join(workdir, "etc-upper", "hosts")
    with open(path if os.path.exists(path) else os.devnull) as f:
        return parse_hosts(f.read())
