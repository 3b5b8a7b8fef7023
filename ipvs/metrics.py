"""``ipvsd --metrics ADDR:PORT``: node_exporter's ipvs metrics, served by the director.

There is no kernel file to mirror: on a kernel director, Prometheus reads
IPVS through node_exporter's ``ipvs`` collector (``collector/ipvs_linux.go``),
which parses ``/proc/net/ip_vs_stats`` and ``/proc/net/ip_vs`` with the
``procfs`` library (``ipvs.go``).  This module gives the same metric names,
help texts, types and labels, so dashboards and alerts made for a kernel
director work unchanged:

* counters from ``ip_vs_stats`` (the director's totals):
  ``node_ipvs_connections_total``, ``node_ipvs_incoming_packets_total``,
  ``node_ipvs_outgoing_packets_total``, ``node_ipvs_incoming_bytes_total``,
  ``node_ipvs_outgoing_bytes_total``;
* gauges from ``ip_vs``, one per real server of each service:
  ``node_ipvs_backend_connections_active`` (ActiveConn),
  ``node_ipvs_backend_connections_inactive`` (InActConn) and
  ``node_ipvs_backend_weight`` (Weight).

The backend gauges carry the labels ``local_address``, ``local_port``,
``remote_address``, ``remote_port``, ``proto`` and ``local_mark``, filled
as procfs fills them: a firewall-mark service has an empty
``local_address``, port ``0``, proto ``FWM`` and its mark as the kernel
prints it (eight hex digits); rows that share all labels are summed.

How it runs.  prometheus_client's HTTP server answers scrapes in its own
thread.  That thread never touches the director's objects, which the
daemon's single loop changes without locks: each scrape asks the daemon
over its control socket for the two ``/proc`` texts (``GET_PROC``, what
``ipvsadm`` and the ``--procfs-dir`` mirror read too), so the loop serves
it between packets like any client, and the figures are those
node_exporter would read from the mirror.

Where it differs: procfs skips SCTP services (their real servers are then
counted under the service listed before); here they are listed with proto
``SCTP``.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("ipvs.daemon")

#: The backend labels, in node_exporter's order.
BACKEND_LABELS = ("local_address", "local_port", "remote_address", "remote_port", "proto", "local_mark")

#: (name, help) of the ip_vs_stats counters, in the order of its columns.
TOTALS = (
    ("node_ipvs_connections_total", "The total number of connections made."),
    ("node_ipvs_incoming_packets_total", "The total number of incoming packets."),
    ("node_ipvs_outgoing_packets_total", "The total number of outgoing packets."),
    ("node_ipvs_incoming_bytes_total", "The total amount of incoming data."),
    ("node_ipvs_outgoing_bytes_total", "The total amount of outgoing data."),
)

#: (name, help) of the per-backend gauges: active, inactive, weight.
BACKEND_GAUGES = (
    ("node_ipvs_backend_connections_active", "The current active connections by local and remote address."),
    ("node_ipvs_backend_connections_inactive", "The current inactive connections by local and remote address."),
    ("node_ipvs_backend_weight", "The current backend weight by local and remote address."),
)


class ProcFormatError(ValueError):
    """A /proc text that does not read as the kernel writes it."""


def parse_ip_vs_stats(text: str) -> tuple[int, int, int, int, int]:
    """The five totals (connections, packets in/out, bytes in/out) of
    ``/proc/net/ip_vs_stats``: the third line, in hex."""
    lines = text.split("\n")
    if len(lines) < 4:
        raise ProcFormatError("ip_vs_stats: too short")
    fields = lines[2].split()
    if len(fields) != 5:
        raise ProcFormatError("ip_vs_stats: unexpected number of fields")
    try:
        conns, inpkts, outpkts, inbytes, outbytes = (int(f, 16) for f in fields)
    except ValueError as e:
        raise ProcFormatError(f"ip_vs_stats: {e}") from None
    return conns, inpkts, outpkts, inbytes, outbytes


def _addr_port(text: str) -> tuple[str, str]:
    """``C0A80001:0050`` or ``[2001:db8::1]:0050`` as the address and the
    decimal port procfs makes of them."""
    addr, sep, port = text.rpartition(":")
    if not sep:
        raise ProcFormatError(f"ip_vs: not ADDRESS:PORT: {text!r}")
    try:
        if addr.startswith("[") and addr.endswith("]"):
            packed = socket.inet_pton(socket.AF_INET6, addr[1:-1])
        elif len(addr) in (8, 32):
            packed = bytes.fromhex(addr)
        else:
            raise ValueError(addr)
        port_n = int(port, 16)
    except (OSError, ValueError):
        raise ProcFormatError(f"ip_vs: bad address {text!r}") from None
    if not 0 <= port_n <= 0xFFFF:
        raise ProcFormatError(f"ip_vs: bad port {text!r}")
    family = socket.AF_INET if len(packed) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, packed), str(port_n)


def parse_ip_vs(text: str) -> dict[tuple[str, ...], list[int]]:
    """``/proc/net/ip_vs`` as node_exporter sums it: backend labels (in
    :data:`BACKEND_LABELS` order) -> [active, inactive, weight]."""
    out: dict[tuple[str, ...], list[int]] = {}
    service: tuple[str, str, str, str] | None = None  # local address, port, proto, mark
    for line in text.split("\n"):
        f = line.split()
        if len(f) < 2 or f[0] in ("IP", "Prot") or f[1] == "RemoteAddress:Port":
            continue
        if f[0] in ("TCP", "UDP", "SCTP"):
            addr, port = _addr_port(f[1])
            service = (addr, port, f[0], "")
        elif f[0] == "FWM":
            service = ("", "0", "FWM", f[1])
        elif f[0] == "->" and len(f) >= 6:
            if service is None:
                raise ProcFormatError("ip_vs: a real server before any service")
            raddr, rport = _addr_port(f[1])
            try:
                weight, active, inactive = int(f[3]), int(f[4]), int(f[5])
            except ValueError:
                raise ProcFormatError(f"ip_vs: bad counters in {line.strip()!r}") from None
            key = (service[0], service[1], raddr, rport, service[2], service[3])
            sums = out.setdefault(key, [0, 0, 0])
            sums[0] += active
            sums[1] += inactive
            sums[2] += weight
    return out


class IPVSCollector:
    """A prometheus_client collector over ``fetch(name) -> /proc text``."""

    def __init__(self, fetch: Callable[[str], str]) -> None:
        self.fetch = fetch

    def collect(self) -> Iterator[Any]:
        """The metric families of one scrape (prometheus_client calls it per request)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        totals = parse_ip_vs_stats(self.fetch("ip_vs_stats"))
        backends = parse_ip_vs(self.fetch("ip_vs"))
        for (name, help_), value in zip(TOTALS, totals):
            yield CounterMetricFamily(name, help_, value=value)
        for i, (name, help_) in enumerate(BACKEND_GAUGES):
            g = GaugeMetricFamily(name, help_, labels=BACKEND_LABELS)
            for labels, sums in backends.items():
                g.add_metric(labels, sums[i])
            yield g


def control_fetcher(socket_path: str, timeout: float = 10.0) -> Callable[[str], str]:
    """``fetch`` for :class:`IPVSCollector` through the daemon's control socket."""
    from ipvs.client import Client

    def fetch(name: str) -> str:
        with Client(socket_path, timeout=timeout) as c:
            reply = c.call({"version": 1, "cmd": "GET_PROC", "name": name})
        if not reply.get("ok"):
            raise OSError(reply.get("errno", 5), f"GET_PROC {name}: {reply.get('message', 'refused')}")
        return reply["text"]

    return fetch


def parse_listen(text: str) -> tuple[str, int]:
    """``--metrics`` value: ``PORT``, ``:PORT``, ``ADDR:PORT`` or ``[ADDR6]:PORT``
    (no address: every address, as node_exporter's ``:9100``; port 0: any
    free port, which the log names)."""
    addr, sep, port = text.rpartition(":")
    if addr.startswith("[") and addr.endswith("]"):
        addr = addr[1:-1]
    try:
        port_n = int(port)
    except ValueError:
        raise ValueError(f"--metrics wants [ADDR]:PORT, not {text!r}") from None
    if not 0 <= port_n < 65536:
        raise ValueError(f"--metrics: port {port_n} is out of range")
    return (addr if sep else "") or "0.0.0.0", port_n


class MetricsServer:
    """The HTTP endpoint (``/metrics``) in its own thread; :meth:`close` stops it."""

    def __init__(self, listen: str, socket_path: str) -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        addr, port = parse_listen(listen)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(IPVSCollector(control_fetcher(socket_path)))
        started = start_http_server(port, addr=addr, registry=self.registry)
        # prometheus_client >= 0.17 returns (server, thread).
        self._server: Any
        self._thread: Any
        self._server, self._thread = started if isinstance(started, tuple) else (None, None)
        self.address = (addr, self._server.server_port if self._server is not None else port)
        log.info("Prometheus metrics on http://%s:%d/metrics", *self.address)

    def close(self) -> None:
        """Stop serving and wait for the HTTP thread."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
