"""A classic BPF socket filter: only what the director handles reaches Python.

The kernel runs this program on every frame the NIC sees, before the frame
is copied into the RX ring, so traffic that belongs to the director's own
kernel (or to nobody) never costs a Python cycle.  It has no kernel IPVS
counterpart: there the netfilter hooks see only IP packets routed to them.

The program accepts:

* every ARP frame (the driver answers ARP and learns neighbours);
* with ``ipv6``, every IPv6 frame (the port has an IPv6 address; the
  IPv6 path, :mod:`ipvs.driver.ip6`, sorts them);
* IPv4 to one of ``daddrs`` (the VIPs, and in spare mode the addresses
  the driver owns), fragments included, since they are reassembled first;
* IPv4 to the masquerading address when it is TCP/UDP to a port in the
  masquerading range, or ICMP (shared mode, where the kernel keeps that
  address and its other ports);
* IPv4 from one of ``src_nets`` (the real servers) unless it is addressed
  to one of ``exclude_daddrs`` (the kernel's own addresses in shared mode).

Everything else returns 0, which tells the kernel to drop the frame for
this socket only.  Jump offsets of classic BPF are 8 bits, so the address
lists together are capped at :data:`MAX_ADDRS` instructions; past that the program accepts all
IPv4 and the driver's own checks do the sorting (counted, never wrong).
"""

from __future__ import annotations

import struct

from ipvs.packet import ETH_P_ARP, ETH_P_IP, ETH_P_IPV6

# Instruction classes, sizes, modes, operations (linux/filter.h, bpf_common.h).
BPF_LD, BPF_LDX, BPF_ALU, BPF_JMP, BPF_RET = 0x00, 0x01, 0x04, 0x05, 0x06
BPF_W, BPF_H, BPF_B = 0x00, 0x08, 0x10
BPF_IMM, BPF_ABS, BPF_IND, BPF_MSH = 0x00, 0x20, 0x40, 0xA0
BPF_JA, BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JSET = 0x00, 0x10, 0x20, 0x30, 0x40
BPF_AND = 0x50
BPF_K = 0x00

INSN = struct.Struct("=HBBI")
#: Snap length returned for accepted frames: at least the largest GSO frame.
ACCEPT_LEN = 0x40000
MAX_ADDRS = 200


class Asm:
    """A tiny assembler: instructions with symbolic jump targets."""

    def __init__(self) -> None:
        self.code: list[tuple[int, int | str, int | str, int]] = []
        self.labels: dict[str, int] = {}

    def op(self, code: int, k: int = 0, jt: int | str = 0, jf: int | str = 0) -> None:
        """Append one instruction; ``jt`` and ``jf`` are relative jumps or label names resolved by :meth:`assemble`.
        """
        self.code.append((code, jt, jf, k & 0xFFFFFFFF))

    def label(self, name: str) -> None:
        """Name the position of the next instruction, as a jump target."""
        self.labels[name] = len(self.code)

    def assemble(self) -> bytes:
        """The program as ``struct sock_filter`` records, labels resolved to relative jumps."""
        out = bytearray()
        for i, (code, jt, jf, k) in enumerate(self.code):
            out += INSN.pack(code, self._rel(i, jt), self._rel(i, jf), k)
        return bytes(out)

    def _rel(self, i: int, target: int | str) -> int:
        if isinstance(target, int):
            return target
        rel = self.labels[target] - i - 1
        if not 0 <= rel <= 255:
            raise ValueError(f"jump to {target} out of range ({rel})")
        return rel


def build(daddrs=(), src_nets=(), exclude_daddrs=(), masq=None, all_ipv4: bool = False, ipv6: bool = False) -> bytes:
    """Assemble the filter program (addresses as host-order ints).

    ``src_nets`` is a list of (network, mask); ``masq`` is (address,
    first port, last port) or None.
    """
    daddrs, exclude_daddrs = sorted(set(daddrs)), sorted(set(exclude_daddrs))
    if len(daddrs) + len(exclude_daddrs) + 3 * len(src_nets) > MAX_ADDRS:
        all_ipv4 = True
    a = Asm()
    a.op(BPF_LD | BPF_H | BPF_ABS, 12)
    a.op(BPF_JMP | BPF_JEQ | BPF_K, ETH_P_ARP, "accept", 0)
    if ipv6:
        a.op(BPF_JMP | BPF_JEQ | BPF_K, ETH_P_IPV6, "accept", 0)
    a.op(BPF_JMP | BPF_JEQ | BPF_K, ETH_P_IP, 0, "drop")
    if all_ipv4:
        a.op(BPF_RET | BPF_K, ACCEPT_LEN)
        a.label("accept")
        a.op(BPF_RET | BPF_K, ACCEPT_LEN)
        a.label("drop")
        a.op(BPF_RET | BPF_K, 0)
        return a.assemble()
    a.op(BPF_LD | BPF_W | BPF_ABS, 30)  # destination address
    for addr in daddrs:
        a.op(BPF_JMP | BPF_JEQ | BPF_K, addr, "accept", 0)
    if masq is not None:
        a.op(BPF_JMP | BPF_JEQ | BPF_K, masq[0], "masq", 0)
    if src_nets:
        for addr in exclude_daddrs:
            a.op(BPF_JMP | BPF_JEQ | BPF_K, addr, "drop", 0)
        for net, mask in src_nets:
            a.op(BPF_LD | BPF_W | BPF_ABS, 26)  # source address
            a.op(BPF_ALU | BPF_AND | BPF_K, mask)
            a.op(BPF_JMP | BPF_JEQ | BPF_K, net & mask, "accept", 0)
    a.op(BPF_RET | BPF_K, 0)
    if masq is not None:
        a.label("masq")
        a.op(BPF_LD | BPF_B | BPF_ABS, 23)  # protocol
        a.op(BPF_JMP | BPF_JEQ | BPF_K, 1, "accept", 0)
        a.op(BPF_JMP | BPF_JEQ | BPF_K, 6, "ports", 0)
        a.op(BPF_JMP | BPF_JEQ | BPF_K, 17, "ports", "drop")
        a.label("ports")
        a.op(BPF_LD | BPF_H | BPF_ABS, 20)  # flags + fragment offset
        a.op(BPF_JMP | BPF_JSET | BPF_K, 0x1FFF, "drop", 0)
        a.op(BPF_LDX | BPF_B | BPF_MSH, 14)  # X = IP header length
        a.op(BPF_LD | BPF_H | BPF_IND, 16)  # 14 + ihl + 2: destination port
        a.op(BPF_JMP | BPF_JGE | BPF_K, masq[1], 0, "drop")
        a.op(BPF_JMP | BPF_JGT | BPF_K, masq[2], "drop", "accept")
    a.label("accept")
    a.op(BPF_RET | BPF_K, ACCEPT_LEN)
    a.label("drop")
    a.op(BPF_RET | BPF_K, 0)
    return a.assemble()
