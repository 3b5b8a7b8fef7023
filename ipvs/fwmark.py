"""Firewall marks: the classification that feeds fwmark services.

The kernel has no such module: a firewall-mark service (``ipvsadm -A -f
MARK``) matches packets whose ``skb->mark`` an iptables/nftables rule set
earlier, typically::

    iptables -t mangle -A PREROUTING -d 203.0.113.16/29 -p tcp --dport 80 \\
             -j MARK --set-mark 1

PyIPVS has no netfilter in front of it, so this module is that small rule
table: each rule matches on family, protocol, source and destination
prefixes and a destination-port range, and sets a mark.  Like the
non-terminating MARK target, every rule is evaluated in order and the last
one that matches decides.  :meth:`MarkTable.classify` is called by the core
only for a packet that has no connection yet and only while some fwmark
service exists, exactly where the kernel's ``ip_vs_service_find`` consults
``skb->mark``; the kernel's fwmark service semantics (persistence templates
per mark, ``dport`` kept from the packet) then apply unchanged.

The control plane manages the table through the PyIPVS schema extensions
``NEW_MARK``, ``DEL_MARK``, ``GET_MARK`` and ``FLUSH_MARK`` (see
:mod:`ipvs.netlink`) and the command-line tool ``tools/ipvs-mark``.
"""

from __future__ import annotations

import errno
import ipaddress

import attrs

from ipvs.uapi import AF_INET, AF_INET6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP

PROTOCOLS = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP, "sctp": IPPROTO_SCTP}
MAX_RULES = 4096  # a bounded table, like every table of the instance


class MarkError(ValueError):
    """A rule does not make sense; ``errno`` says how the schema answers."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


def _net(text: str | None, af: int) -> tuple[int, int]:
    """(network as int, prefix length) of a CIDR; the whole space for None."""
    if text is None:
        return 0, 0
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise MarkError(errno.EINVAL, f"bad prefix {text!r}") from None
    if (net.version == 4) != (af == AF_INET):
        raise MarkError(errno.EINVAL, f"prefix {text!r} is not of the rule's family")
    return int(net.network_address), net.prefixlen


def _canonical(text: str | None) -> str | None:
    """A prefix in its canonical form (``203.0.113.99`` -> ``203.0.113.99/32``);
    text that is no prefix is kept for :meth:`MarkRule.check` to refuse."""
    if text is None:
        return None
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        return text


@attrs.frozen
class MarkRule:
    """One rule: packets matching every given field get ``mark``."""

    mark: int
    af: int = AF_INET
    protocol: int = 0  # 0: any
    saddr: str | None = attrs.field(default=None, converter=_canonical)  # CIDR text, None: any
    daddr: str | None = attrs.field(default=None, converter=_canonical)
    dport_lo: int = 0
    dport_hi: int = 0xFFFF

    def check(self) -> MarkRule:
        """Validate the rule's fields (errno as a :class:`MarkError`); returns the rule."""
        if self.af not in (AF_INET, AF_INET6):
            raise MarkError(errno.EAFNOSUPPORT, f"address family {self.af}")
        if not 1 <= self.mark <= 0xFFFFFFFF:
            raise MarkError(errno.EINVAL, "mark must be 1..4294967295")
        if self.protocol not in (0, *PROTOCOLS.values()):
            raise MarkError(errno.EINVAL, f"protocol {self.protocol}")
        if not 0 <= self.dport_lo <= self.dport_hi <= 0xFFFF:
            raise MarkError(errno.EINVAL, "bad destination port range")
        if (self.dport_lo, self.dport_hi) != (0, 0xFFFF) and not self.protocol:
            raise MarkError(errno.EINVAL, "a port match needs a protocol")
        _net(self.saddr, self.af)
        _net(self.daddr, self.af)
        return self

    def as_dict(self) -> dict:
        """The rule as the control schema's dict (field name to value)."""
        return attrs.asdict(self)

    def text(self) -> str:
        """The rule as ``tools/ipvs-mark`` arguments."""
        parts = ["-6"] if self.af == AF_INET6 else []
        if self.protocol:
            parts += ["-p", {v: k for k, v in PROTOCOLS.items()}[self.protocol]]
        if self.saddr:
            parts += ["-s", self.saddr]
        if self.daddr:
            parts += ["-d", self.daddr]
        if (self.dport_lo, self.dport_hi) != (0, 0xFFFF):
            ports = str(self.dport_lo) if self.dport_lo == self.dport_hi else f"{self.dport_lo}:{self.dport_hi}"
            parts += ["--dport", ports]
        return " ".join(parts + ["--set-mark", str(self.mark)])


class MarkTable:
    """The ordered rules of one instance, compiled for matching."""

    def __init__(self) -> None:
        self.rules: list[MarkRule] = []
        self._compiled: list[tuple] = []

    def __len__(self) -> int:
        return len(self.rules)

    def add(self, rule: MarkRule) -> None:
        """Append a rule (checked; EEXIST for a duplicate, ENOSPC past the limit) and recompile the lookup."""
        rule.check()
        if rule in self.rules:
            raise MarkError(errno.EEXIST, "rule already exists")
        if len(self.rules) >= MAX_RULES:
            raise MarkError(errno.ENOSPC, f"at most {MAX_RULES} rules")
        self.rules.append(rule)
        self._compile()

    def delete(self, rule: MarkRule) -> None:
        """Remove a rule (ENOENT when absent) and recompile the lookup."""
        try:
            self.rules.remove(rule)
        except ValueError:
            raise MarkError(errno.ENOENT, "no such rule") from None
        self._compile()

    def flush(self) -> None:
        """Remove every rule."""
        self.rules.clear()
        self._compile()

    def _compile(self) -> None:
        out = []
        for r in self.rules:
            bits = 32 if r.af == AF_INET else 128
            s, sl = _net(r.saddr, r.af)
            d, dl = _net(r.daddr, r.af)
            out.append((r.af, r.protocol, s, bits - sl, d, bits - dl, r.dport_lo, r.dport_hi, r.mark))
        self._compiled = out

    def classify(self, af: int, protocol: int, saddr: bytes, daddr: bytes, dport: int) -> int:
        """The mark of a packet (0 when no rule matches); the last match wins."""
        mark = 0
        s = d = None
        for raf, rproto, snet, sshift, dnet, dshift, lo, hi, m in self._compiled:
            if raf != af or (rproto and rproto != protocol) or not lo <= dport <= hi:
                continue
            if s is None:
                s, d = int.from_bytes(saddr, "big"), int.from_bytes(daddr, "big")
            if (s >> sshift) == (snet >> sshift) and (d >> dshift) == (dnet >> dshift):
                mark = m
        return mark


def rule_from_dict(d: dict) -> MarkRule:
    """A rule from its schema form (the keys of :class:`MarkRule`)."""
    try:
        return MarkRule(**d).check()
    except TypeError as e:
        raise MarkError(errno.EINVAL, f"bad rule: {e}") from None
