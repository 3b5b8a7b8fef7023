#!/usr/bin/env python3
"""Re-run the tutorial on the lab and write every output it shows.

    sudo IPVS_LAB_PREFIX=me python3 docs/tutorial/capture.py [--out DIR]

builds the lab with ``tools/ipvs-lab up --no-rules`` (namespaces named after
``IPVS_LAB_PREFIX``, default ``ipvs``), types the tutorial's commands in the
namespaces they belong to, and writes each step's transcript (``$ command``
lines, each followed by what it printed) into ``DIR/<step>.txt`` (default:
``docs/tutorial/output``, the files the tutorial includes).  The lab is
always taken down at the end.

The files keep the real output.  ``normalise()`` says what legitimately
changes from run to run; ``tests/docs/test_tutorial.py`` re-runs this
script and compares both sides after normalising, so the tutorial cannot
drift from what PyIPVS does.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TOOLS = os.path.join(ROOT, "tools")
OUTPUT = os.path.join(HERE, "output")
PREFIX = os.environ.get("IPVS_LAB_PREFIX", "ipvs")
NS = {n: f"{PREFIX}-{n}" for n in ("client", "director", "rs1", "rs2")}
VIP = "203.0.113.5"
CLIENT = "198.51.100.2"

#: The tutorial's rules: the LVS "Virtual Server via NAT" page's, on the lab's addresses.
RULES = [
    f"-A -t {VIP}:80 -s wlc",
    f"-a -t {VIP}:80 -r 172.16.0.2:80 -m -w 1",
    f"-a -t {VIP}:80 -r 172.16.0.3:8000 -m -w 2",
    f"-A -t {VIP}:21 -p",
    f"-a -t {VIP}:21 -r 172.16.0.3:21 -m",
]
#: The same virtual services as the seed typed them for the 2.0 patch's tool.
PF_RULES = [
    f"-A -t {VIP}:80 -R 172.16.0.2:80 -w 1",
    f"-A -t {VIP}:80 -R 172.16.0.3:8000 -w 2",
    f"-A -t {VIP}:21 -R 172.16.0.3:21",
]

# What legitimately differs between two runs of the same steps, and why:
NORMALISE = [
    # The client's ephemeral ports (and the masquerading ports, 61000-65095)
    # are chosen by the kernel at random: "198.51.100.2:41234", tcpdump's
    # "198.51.100.2.41234", and any 5-digit port of the masquerading range.
    (re.compile(r"(198\.51\.100\.[12])([:.])\d{4,5}\b"), r"\1\2PORT"),
    # The FTP data port the real server picks for passive mode (227/229 replies).
    (re.compile(r"\((\d+,\d+,\d+,\d+),\d+,\d+\)"), r"(\1,P1,P2)"),
    (re.compile(r"(172\.16\.0\.3|203\.0\.113\.5):(5\d{4})\b"), r"\1:DATAPORT"),
    # pyftpdlib answers 125 when the client's data connection reached it
    # before the NLST command, 150 otherwise: a race on the client's side.
    (re.compile(r"'1(25|50) [^']*'"), "'1xx (data connection opening or open)'"),
    # TCP sequence and acknowledgement numbers are random (ISNs), window
    # sizes and TCP options (timestamps) depend on timing.
    (re.compile(r"\bseq \d+(:\d+)?"), "seq N"),
    (re.compile(r"\back \d+"), "ack N"),
    (re.compile(r"\bwin \d+"), "win N"),
    (re.compile(r"options \[[^\]]*\]"), "options [..]"),
    # ICMP echo identifiers and round-trip times.
    (re.compile(r"\bid \d+"), "id N"),
    (re.compile(r"time=[0-9.]+ ms"), "time=T ms"),
    (re.compile(r"rtt min/avg/max/mdev = \S+ ms"), "rtt T"),
    (re.compile(r"\btime \d+ms"), "time Tms"),
    # The expiry countdown of ipvsadm -Lnc (mm:ss) depends on when it ran.
    (re.compile(r"\b\d\d:\d\d\b"), "MM:SS"),
    # The peer interface index in "c0@if7" depends on what the host created before.
    (re.compile(r"@if\d+"), "@ifN"),
]
# ipvsadm -Ln's ActiveConn and InActConn counts depend on which earlier
# connections are still in TIME_WAIT when the listing runs.
_DEST_LINE = re.compile(r"^(  -> \S+\s+\S+\s+\d+\s+)(\d+)(\s+)(\d+)\s*$")


def normalise(text: str) -> str:
    """The text with everything that varies between runs replaced (see NORMALISE)."""
    out = []
    for line in text.splitlines():
        m = _DEST_LINE.match(line)
        if m:
            line = f"{m.group(1)}A{m.group(3)}I"
        for pattern, repl in NORMALISE:
            line = pattern.sub(repl, line)
        out.append(line.rstrip())
    # ipvsadm -Lnc lists connections in hash-table order, which follows the
    # client's port: compare the connection lines as a set.
    blocks, conns = [], []
    for line in out:
        if re.match(r"^(TCP|UDP) ", line):
            conns.append(line)
            continue
        if conns:
            blocks.extend(sorted(conns))
            conns = []
        blocks.append(line)
    blocks.extend(sorted(conns))
    return "\n".join(blocks) + "\n"


class Transcript:
    """One step's file: each command as ``$ command`` (with its namespace), then its output."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def note(self, text: str) -> None:
        self.parts.append(text if text.endswith("\n") else text + "\n")

    def run(self, ns: str, shown: str, argv: list[str], check: bool = True, timeout: float = 60) -> str:
        r = subprocess.run(["ip", "netns", "exec", NS[ns], *argv], capture_output=True, text=True,
                           timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"{shown} (in {ns}) failed: {r.stderr.strip() or r.stdout.strip()}")
        self.parts.append(f"{ns}# {shown}\n")
        self.parts.append(r.stdout + r.stderr)
        return r.stdout

    def text(self) -> str:
        return "".join(self.parts)


def tool(name: str) -> list[str]:
    return [sys.executable, os.path.join(TOOLS, name)]


def ipvsadm(t: Transcript, args: str, shown: bool = True) -> str:
    if shown:
        return t.run("director", f"ipvsadm {args}", tool("ipvsadm") + args.split())
    silent = Transcript()
    return silent.run("director", f"ipvsadm {args}", tool("ipvsadm") + args.split())


def quiet(ns: str, argv: list[str], timeout: float = 30) -> str:
    return subprocess.run(["ip", "netns", "exec", NS[ns], *argv], capture_output=True, text=True,
                          timeout=timeout, check=True).stdout


def wait_idle(timeout: float = 10) -> None:
    """Until no connection of VIP:80 is active (closing ones count as inactive).

    wlc weighs active connections 256 times more than inactive ones, so the
    scheduling step waits for each request's connection to close before the
    next one, or its order would depend on how fast curl's FIN got through.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        active = [int(f.split()[4]) for f in quiet("director", tool("ipvsadm") + ["-Ln"]).splitlines()
                  if f.startswith("  ->") and len(f.split()) >= 6 and f.split()[4].isdigit()]
        if not any(active):
            return
        time.sleep(0.1)
    raise RuntimeError("connections stayed active")


@contextlib.contextmanager
def tcpdump(ns: str, dev: str, bpf: str, path: str):
    """tcpdump writing ``path`` in namespace ``ns`` for the body; stopped by its PID."""
    argv = ["tcpdump", "-n", "-U", "--immediate-mode", "-i", dev, "-w", path, bpf]
    p = subprocess.Popen(["ip", "netns", "exec", NS[ns], *argv], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    try:
        p.stderr.readline()  # "listening on ...": the socket is open
        yield
        time.sleep(0.5)  # let the last frames reach the file (immediate mode: no block timeout)
    finally:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        p.stderr.close()


def read_pcap(path: str) -> list[tuple[float, str]]:
    out = subprocess.run(["tcpdump", "-n", "-tt", "-r", path], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        stamp, _, rest = line.partition(" ")
        rows.append((float(stamp), rest))
    return rows


# ---------------------------------------------------------------- the steps


def step_topology() -> str:
    t = Transcript()
    for ns in ("client", "director", "rs1", "rs2"):
        t.run(ns, "ip -br -4 addr", ["ip", "-br", "-4", "addr"])
    t.run("rs1", "ip route", ["ip", "route"])
    t.run("client", "ip route", ["ip", "route"])
    return t.text()


def step_rules() -> str:
    t = Transcript()
    for line in RULES:
        ipvsadm(t, line)
    ipvsadm(t, "-Ln")
    return t.text()


def step_ippfvsadm() -> str:
    t = Transcript()
    ipvsadm(t, "-C")
    for line in PF_RULES:
        t.run("director", f"ippfvsadm {line}", tool("ippfvsadm") + line.split())
    t.run("director", "ippfvsadm -L -n", tool("ippfvsadm") + ["-L", "-n"])
    ipvsadm(t, "-Ln")
    # Back to the tutorial's rules (not part of the transcript).
    ipvsadm(t, "-C", shown=False)
    for line in RULES:
        ipvsadm(t, line, shown=False)
    return t.text()


def step_packets(tmp: str) -> tuple[str, str]:
    """One request's first packet each way, on the client's wire and the real servers'."""
    t = Transcript()
    bpf = "tcp[tcpflags] & tcp-syn != 0"
    paths = {ns: os.path.join(tmp, f"{ns}.pcap") for ns in ("client", "rs1", "rs2")}
    with tcpdump("client", "c0", bpf, paths["client"]), tcpdump("rs1", "eth0", bpf, paths["rs1"]), \
            tcpdump("rs2", "eth0", bpf, paths["rs2"]):
        t.run("client", f"curl -s http://{VIP}/", ["curl", "-s", "-m", "5", f"http://{VIP}/"])
    rows = sorted((stamp, where, text) for where, path in paths.items() for stamp, text in read_pcap(path))
    wire = {"client": "client's wire (c0)", "rs1": "rs1's wire (eth0)", "rs2": "rs2's wire (eth0)"}
    # The order of the four: request on the client's wire, then on the real
    # server's, its reply there, and the reply on the client's wire.
    syn = [r for r in rows if "[S]" in r[2]]
    synack = [r for r in rows if "[S.]" in r[2]]
    if len(syn) != 2 or len(synack) != 2:
        raise RuntimeError(f"expected 2 SYNs and 2 SYN-ACKs, captured: {rows}")
    four = [next(r for r in syn if r[1] == "client"), next(r for r in syn if r[1] != "client"),
            next(r for r in synack if r[1] != "client"), next(r for r in synack if r[1] == "client")]
    lines = [f"# {wire[where]}\n{text}\n" for _, where, text in four]
    table = [f"  {'packet':<28} {'SOURCE':<22} DEST"]
    names = ("1. client -> VIP", "2. director -> real server", "3. real server -> client",
             "4. director -> client")
    for name, (_, _, text) in zip(names, four):
        m = re.match(r"IP (\S+)\.(\d+) > (\S+)\.(\d+):", text)
        if not m:
            raise RuntimeError(f"cannot read {text!r}")
        src, dst = f"{m.group(1)}:{m.group(2)}", f"{m.group(3)}:{m.group(4)}"
        table.append(f"  {name:<28} {src:<22} {dst}")
    return t.text() + "".join(lines), "\n".join(table) + "\n"


def step_scheduling() -> str:
    t = Transcript()
    for _ in range(6):
        wait_idle()
        t.run("client", f"curl -s http://{VIP}/", ["curl", "-s", "-m", "5", f"http://{VIP}/"])
    wait_idle()
    ipvsadm(t, "-Ln -t " + VIP + ":80")
    return t.text()


def step_conntable() -> str:
    t = Transcript()
    ipvsadm(t, "-Lnc")
    ipvsadm(t, "-L --timeout")
    return t.text()


FTP_CLIENT = f"""
import ftplib
ftp = ftplib.FTP("{VIP}", timeout=10)
ftp.set_debuglevel(1)
ftp.login()
ftp.set_pasv(True)
print(ftp.nlst("hello.txt"))
ftp.quit()
"""


def step_ftp() -> str:
    t = Transcript()
    t.run("client", "python3 ftp-client.py", [sys.executable, "-c", FTP_CLIENT])
    wait_idle()
    ipvsadm(t, "-Lnc")
    return t.text()


def step_masquerading(tmp: str) -> str:
    t = Transcript()
    path = os.path.join(tmp, "masq.pcap")
    with tcpdump("client", "c0", "icmp", path):
        t.run("rs1", f"ping -c 1 {CLIENT}", ["ping", "-c", "1", "-W", "2", CLIENT])
    t.note("# what the client saw (tcpdump -n -i c0 icmp)")
    t.note("".join(text + "\n" for _, text in read_pcap(path)))
    return t.text()


def capture(out_dir: str) -> dict[str, str]:
    """Run every step on a fresh lab; write and return ``{step: transcript}``."""
    # ipvsd on the runtime the caller's IPVSD_RUNTIME picks (PyPy by default).
    env = dict(os.environ, IPVS_LAB_PREFIX=PREFIX)
    lab = tool("ipvs-lab")
    subprocess.run(lab + ["up", "--no-rules"], env=env, check=True, capture_output=True, text=True, timeout=300)
    files: dict[str, str] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            files["topology"] = step_topology()
            files["rules"] = step_rules()
            files["ippfvsadm"] = step_ippfvsadm()
            files["packets"], files["packets-table"] = step_packets(tmp)
            files["scheduling"] = step_scheduling()
            files["conntable"] = step_conntable()
            files["ftp"] = step_ftp()
            files["masquerading"] = step_masquerading(tmp)
    finally:
        subprocess.run(lab + ["down"], env=env, capture_output=True, timeout=120)
    os.makedirs(out_dir, exist_ok=True)
    for name, text in files.items():
        with open(os.path.join(out_dir, f"{name}.txt"), "w") as f:
            f.write(text)
    return files


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=OUTPUT, help="where to write the transcripts (default: %(default)s)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("capture.py: the lab needs root (network namespaces)", file=sys.stderr)
        return 2
    for name in capture(args.out):
        print(os.path.join(args.out, f"{name}.txt"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
