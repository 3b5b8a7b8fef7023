"""ipvs-replay RULES IN.pcap [IN2.pcap ...] OUT.pcap [--trace]

The PyIPVS core, offline.  RULES is a file in `ipvsadm -S` format (what
`ipvsadm -R` reads; comment lines as in Debian's /etc/ipvsadm.rules).  The input captures hold frames arriving at the
director (client requests and real-server replies, in any order: several
files are merged by time).  OUT.pcap receives every frame the director
transmits, stamped with the time of the frame that caused it; the pcap
clock drives the core's ticks.  --trace prints one line per packet and per
decision: the service matched, the scheduler's choice, the connection state
before and after, the rewrite, expiries.

The input captures may be classic pcap or pcapng (what Wireshark saves);
the output is classic pcap.  pcapng is read by scapy's reader: install
it with ``pip install 'pyipvs[pcap]'``.

Exit status: 0 on success, 2 for bad arguments, rules or captures.
"""

from __future__ import annotations

import argparse
import io
import sys
from typing import Any, cast

from ipvs import rules
from ipvs.cli.ipvsadm import restore
from ipvs.core import Director
from ipvs.driver import pcap
from ipvs.driver.replay import replay
from ipvs.netlink import LocalTransport
from ipvs.packet import Drop

#: The first four bytes of a pcapng file (its Section Header Block's type).
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"


def read_capture(path: str) -> list[pcap.Record]:
    """The frames of a classic pcap (:mod:`ipvs.driver.pcap`) or pcapng
    capture (scapy's ``RawPcapNgReader``: a maintained reader rather than
    a second hand-written one); raises :class:`pcap.PcapError`."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != PCAPNG_MAGIC:
        return pcap.read_file(path)
    try:
        from scapy.utils import RawPcapNgReader
    except ImportError:
        raise pcap.PcapError("a pcapng capture needs scapy's reader: pip install 'pyipvs[pcap]' "
                             "(or convert it: editcap -F pcap IN OUT)") from None
    records = []
    try:
        with RawPcapNgReader(path) as reader:
            for data, meta in reader:  # meta: RawPcapNgReader.PacketMetadata
                meta = cast(Any, meta)
                ts = ((meta.tshigh << 32) | meta.tslow) / meta.tsresol
                records.append(pcap.Record(ts, bytes(data), meta.linktype))
    except Exception as e:  # scapy's errors have no common class of their own
        raise pcap.PcapError(f"not a readable pcapng capture: {e}") from None
    return records


def main(argv: list[str] | None = None) -> int:
    """Run ``ipvs-replay`` with ``argv`` (default: the command line); returns the exit status."""
    ap = argparse.ArgumentParser(prog="ipvs-replay", description=__doc__.split("\n\n")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rules", help="rules file in ipvsadm -S format")
    ap.add_argument("inputs", nargs="+", metavar="IN.pcap",
                    help="frames arriving at the director (pcap or pcapng)")
    ap.add_argument("output", metavar="OUT.pcap", help="frames the director transmits")
    ap.add_argument("--trace", action="store_true", help="print what the director decided and why")
    a = ap.parse_args(argv)
    director = Director()
    err = io.StringIO()
    try:
        text = rules.read(a.rules)
    except OSError as e:
        print(f"ipvs-replay: {a.rules}: {e.strerror}", file=sys.stderr)
        return 2
    if not text.exists:
        print(f"ipvs-replay: {a.rules}: No such file or directory", file=sys.stderr)
        return 2
    rc = restore(text.rules, LocalTransport(director.ipvs), stderr=err)
    if rc != 0 or err.getvalue():
        sys.stderr.write(err.getvalue())
        print(f"ipvs-replay: {a.rules}: rules not accepted (status {rc})", file=sys.stderr)
        return 2
    records = []
    for path in a.inputs:
        try:
            records += read_capture(path)
        except (OSError, pcap.PcapError) as e:
            print(f"ipvs-replay: {path}: {e}", file=sys.stderr)
            return 2
    records.sort(key=lambda r: r.ts)
    trace = print if a.trace else None
    out = replay(director, records, trace=trace)
    linktype = records[0].linktype if records else pcap.LINKTYPE_ETHERNET
    with open(a.output, "wb") as f:
        pcap.write(f, out, linktype)
    drops = ", ".join(f"{Drop(k).name.lower()} {v}" for k, v in sorted(director.ipvs.drops.items()))
    print(f"ipvs-replay: {len(records)} frames in, {len(out)} out, "
          f"{len(director.ipvs.conn_tab)} connections held" + (f"; dropped/not handled: {drops}" if drops else ""),
          file=sys.stderr)
    return 0


def console_main() -> int:
    """The ``ipvs-replay`` command: quiet when --trace is piped into head."""
    try:
        return main()
    except BrokenPipeError:
        return 0
