"""Hand-made TCP segments from the client namespace, to walk IPVS's TCP states.

Runs in the director's namespace; its sockets live in the client namespace
``cli``: a raw IP socket sends the segments this script builds, an
AF_PACKET socket on the client's eth0 sees the answers.  The scenario must
drop TCP from the VIP on the client's INPUT hook (iptables in ``cli``) so
the client kernel never answers unknown segments with its own RSTs; the
AF_PACKET socket sees packets before netfilter does.

Usage: ``python3 tcpcraft.py OUTBASE < steps`` writes ``OUTBASE.jsonl``
(one record per step) and ``OUTBASE.txt``.  Steps, one per line::

    conn NAME SRC SPORT DST DPORT [ISN]
                                    declare a flow (ISN default 1000000 * SPORT % 2**32)
    send NAME FLAGS [DATA]          FLAGS from S A F R P (e.g. S, A, PA, FA, R,
                                    RA); DATA is a Python string literal
                                    (escapes allowed); seq/ack follow the flow
    expect NAME [SECONDS]           collect the flow's answers for SECONDS
                                    (default 1.0); ack advances over them
    dump LABEL                      ipvsadm -Lnc and /proc/net/ip_vs_conn
    sh COMMAND                      run COMMAND in the director's namespace
    sleep SECONDS
    # TEXT                          a section title for the following records
"""

from __future__ import annotations

import ast
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time

import clock
from nsutil import netns

NS = "cli"
ETH_P_IP = 0x0800
FLAG_BITS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20}


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def flags_str(bits: int) -> str:
    return "".join(ch for ch, b in FLAG_BITS.items() if bits & b) or "-"


class Flow:
    def __init__(self, src: str, sport: int, dst: str, dport: int, isn: int | None = None):
        self.src, self.sport, self.dst, self.dport = src, sport, dst, dport
        self.isn = (1000000 * sport) % (1 << 32) if isn is None else isn
        self.seq = self.isn
        self.ack = 0
        self.ipid = 1

    def segment(self, flags: str, data: bytes) -> bytes:
        bits = 0
        for ch in flags:
            bits |= FLAG_BITS[ch]
        ack = self.ack if bits & FLAG_BITS["A"] else 0
        tcp = struct.pack("!HHIIBBHHH", self.sport, self.dport, self.seq, ack,
                          5 << 4, bits, 64240, 0, 0) + data
        pseudo = struct.pack("!4s4sBBH", socket.inet_aton(self.src),
                             socket.inet_aton(self.dst), 0, socket.IPPROTO_TCP, len(tcp))
        c = csum(pseudo + tcp)
        tcp = tcp[:16] + struct.pack("!H", c) + tcp[18:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), self.ipid, 0x4000, 64,
                         socket.IPPROTO_TCP, 0, socket.inet_aton(self.src),
                         socket.inet_aton(self.dst))
        ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
        self.ipid += 1
        # Sequence space: SYN and FIN count one, data its length.
        self.seq = (self.seq + len(data) + (1 if bits & 0x03 else 0)) % (1 << 32)
        return ip + tcp


def parse(frame: bytes):
    """Return (src, sport, dst, dport, flags, seq, ack, payload) or None."""
    if len(frame) < 14 + 20 or struct.unpack("!H", frame[12:14])[0] != ETH_P_IP:
        return None
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[9] != socket.IPPROTO_TCP:
        return None
    total = struct.unpack("!H", ip[2:4])[0]
    tcp = ip[ihl:total]
    sport, dport, seq, ack, off, bits = struct.unpack("!HHIIBB", tcp[:14])
    payload = tcp[(off >> 4) * 4:]
    return (socket.inet_ntoa(ip[12:16]), sport, socket.inet_ntoa(ip[16:20]), dport,
            bits, seq, ack, payload)


class Crafter:
    def __init__(self, base: str):
        self.base = base
        with netns(NS):
            self.tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            self.rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
            self.rx.bind(("eth0", 0))
        self.flows: dict[str, Flow] = {}
        self.section = ""
        self.n = 0
        self.t0 = time.monotonic()
        self.js = open(base + ".jsonl", "w")
        self.txt = open(base + ".txt", "w")

    def record(self, rec: dict, text: str) -> None:
        self.n += 1
        rec = {"n": self.n, "section": self.section,
               "t": round(time.monotonic() - self.t0, 2), **rec}
        self.js.write(json.dumps(rec) + "\n")
        self.js.flush()
        self.txt.write(text if text.endswith("\n") else text + "\n")
        self.txt.flush()

    def send(self, name: str, flags: str, data: bytes) -> None:
        f = self.flows[name]
        seq, ack = f.seq, f.ack
        self.tx.sendto(f.segment(flags, data), (f.dst, 0))
        self.record({"step": "send", "flow": name, "flags": flags, "seq_rel": (seq - f.isn) % (1 << 32),
                     "ack": ack if "A" in flags else None, "len": len(data)},
                    f"> {name} {flags} seq={(seq - f.isn) % (1 << 32)} len={len(data)}")

    def expect(self, name: str, secs: float) -> None:
        f = self.flows[name]
        got = []
        end = time.monotonic() + secs
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            r, _, _ = select.select([self.rx], [], [], left)
            if not r:
                break
            frame, addr = self.rx.recvfrom(65535)
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            p = parse(frame)
            if p is None:
                continue
            src, sport, dst, dport, bits, seq, ack, payload = p
            if (src, sport, dst, dport) != (f.dst, f.dport, f.src, f.sport):
                continue
            if bits & FLAG_BITS["S"]:
                f.peer_isn = seq
            span = len(payload) + (1 if bits & 0x03 else 0)
            if span:
                f.ack = (seq + span) % (1 << 32)
            elif bits & FLAG_BITS["R"] == 0 and f.ack == 0:
                f.ack = seq
            got.append({"flags": flags_str(bits),
                        "seq_rel": (seq - getattr(f, "peer_isn", seq)) % (1 << 32),
                        "ack_rel": (ack - f.isn) % (1 << 32) if bits & FLAG_BITS["A"] else None,
                        "len": len(payload),
                        "data": payload.decode(errors="replace")[:80]})
        text = "".join(f"< {name} {g['flags']} seq={g['seq_rel']} ack={g['ack_rel']} "
                       f"len={g['len']} {g['data']!r}\n" for g in got) or f"< {name} (nothing)\n"
        self.record({"step": "expect", "flow": name, "secs": secs, "received": got}, text)

    def dump(self, label: str) -> None:
        clock.mark("dump", label, os.path.dirname(self.base))
        lnc = subprocess.run(["ipvsadm", "-Lnc"], capture_output=True, text=True).stdout
        with open("/proc/net/ip_vs_conn") as fh:
            proc = fh.read()
        self.record({"step": "dump", "label": label, "ipvsadm_Lnc": lnc,
                     "proc_net_ip_vs_conn": proc},
                    f"-- dump {label}\n{lnc}{proc}")

    def run(self, line: str) -> None:
        line = line.strip()
        if not line:
            return
        if line.startswith("#"):
            self.section = line[1:].strip()
            self.txt.write(f"\n## {self.section}\n")
            return
        verb, _, rest = line.partition(" ")
        args = rest.split()
        if verb == "conn":
            isn = int(args[5]) if len(args) > 5 else None
            self.flows[args[0]] = Flow(args[1], int(args[2]), args[3], int(args[4]), isn)
        elif verb == "send":
            name, _, tail = rest.partition(" ")
            flags, _, data = tail.partition(" ")
            payload = ast.literal_eval(data).encode() if data else b""
            self.send(name, flags, payload)
        elif verb == "expect":
            self.expect(args[0], float(args[1]) if len(args) > 1 else 1.0)
        elif verb == "dump":
            self.dump(rest)
        elif verb == "sh":
            clock.mark("sh", rest, os.path.dirname(self.base))
            p = subprocess.run(rest, shell=True, capture_output=True, text=True)
            self.record({"step": "sh", "cmd": rest, "stdout": p.stdout, "stderr": p.stderr,
                         "rc": p.returncode}, f"$ {rest}\n{p.stdout}{p.stderr}")
        elif verb == "sleep":
            time.sleep(float(args[0]))
            self.record({"step": "sleep", "secs": float(args[0])}, f"-- sleep {args[0]}")
        else:
            raise SystemExit(f"tcpcraft: unknown step {line!r}")


def main(argv: list[str]) -> int:
    c = Crafter(argv[0])
    for line in sys.stdin:
        c.run(line)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("LC_ALL", "C")
    sys.exit(main(sys.argv[1:]))
