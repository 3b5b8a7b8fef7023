"""Sphinx directives that render PyIPVS's own tables into the docs.

``.. ipvs-tcp-states::`` draws the kernel's TCP state tables from the data
in :mod:`ipvs.proto.tcp` (``TCP_STATES`` or, with ``:dos:``,
``TCP_STATES_DOS``), so the page can never drift from the code: the h11
trick of generating the state diagram from the transition table.
``.. ipvs-tcp-graph::`` draws the same table as a Graphviz graph, and
``.. ipvs-kernel-map::`` lists each module with the kernel file its
docstring says it mirrors.
"""

import importlib
import pkgutil
import re

from docutils import nodes
from docutils.parsers.rst import Directive, directives
from sphinx.ext.graphviz import graphviz

import ipvs
from ipvs.proto import tcp

ABBR = ("NO", "ES", "SS", "SR", "FW", "TW", "CL", "CW", "LA", "LI", "SA")


def _table(rows, header):
    table = nodes.table()
    group = nodes.tgroup(cols=len(header))
    table += group
    for _ in header:
        group += nodes.colspec(colwidth=1)
    head = nodes.thead()
    group += head

    def row(cells):
        r = nodes.row()
        for c in cells:
            entry = nodes.entry()
            entry += c if isinstance(c, nodes.Node) else nodes.paragraph(text=c)
            r += entry
        return r

    head += row(header)
    body = nodes.tbody()
    group += body
    for cells in rows:
        body += row(cells)
    return table


class TcpStates(Directive):
    option_spec = {"dos": directives.flag}

    def run(self):
        data = tcp.TCP_STATES_DOS if "dos" in self.options else tcp.TCP_STATES
        rows = []
        for d, dname in ((tcp.INPUT, "INPUT"), (tcp.OUTPUT, "OUTPUT"), (tcp.INPUT_ONLY, "INPUT_ONLY")):
            for i, fname in enumerate(("syn", "fin", "ack", "rst")):
                rows.append([f"{dname} {fname}"] + [ABBR[s] for s in data[d + i]])
        header = ["packet \\ state"] + list(ABBR)
        legend = nodes.paragraph(text="; ".join(f"{a} = {n}" for a, n in zip(ABBR, tcp.STATE_NAMES, strict=True)))
        timeouts = _table(
            [[n, str(t), "yes" if i in tcp.ACTIVE_STATES else "no"]
             for i, (n, t) in enumerate(zip(tcp.STATE_NAMES, tcp.DEFAULT_TIMEOUTS_S, strict=True))],
            ["state", "default timeout (s)", "counted active"],
        )
        return [_table(rows, header), legend, timeouts]


DIRECTIONS = (("in", tcp.INPUT, "#1f6fb2"), ("out", tcp.OUTPUT, "#b25a1f"))
FLAGS = ("SYN", "FIN", "ACK", "RST")


def tcp_dot(table) -> str:
    """The INPUT and OUTPUT rows of a state table as a Graphviz digraph.

    One arrow per (state, next state), labelled with what takes it: the
    direction (``in`` client to server, ``out`` server to client) and the
    flags.  A packet that leaves the state unchanged draws no arrow.
    """
    edges: dict[tuple[int, int], dict[str, list[str]]] = {}
    for dname, off, _colour in DIRECTIONS:
        for i, flag in enumerate(FLAGS):
            for state, nxt in enumerate(table[off + i]):
                if nxt != state:
                    edges.setdefault((state, nxt), {}).setdefault(dname, []).append(flag)
    colour = {d: c for d, _o, c in DIRECTIONS}
    lines = ["digraph tcp_states {", "  rankdir=TB; nodesep=0.5; ranksep=0.7;",
             '  node [shape=box, style="rounded,filled", fillcolor="#f4f4f4", fontsize=12];',
             "  edge [fontsize=10, arrowsize=0.7];"]
    for i, name in enumerate(tcp.STATE_NAMES):
        fill = "#dff0d8" if i in tcp.ACTIVE_STATES else "#f4f4f4"
        lines.append(f'  s{i} [label="{name}\\n{tcp.DEFAULT_TIMEOUTS_S[i]} s", fillcolor="{fill}"];')
    for (a, b), by_dir in sorted(edges.items()):
        label = "\\n".join(f"{d} {'/'.join(flags)}" for d, flags in sorted(by_dir.items()))
        # One direction: its colour; both: neutral.
        c = colour[next(iter(by_dir))] if len(by_dir) == 1 else "#555555"
        lines.append(f'  s{a} -> s{b} [label="{label}", color="{c}", fontcolor="{c}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


class TcpGraph(Directive):
    option_spec = {"dos": directives.flag}

    def run(self):
        data = tcp.TCP_STATES_DOS if "dos" in self.options else tcp.TCP_STATES
        node = graphviz()
        node["code"] = tcp_dot(data)
        node["options"] = {"docname": self.state.document.settings.env.docname}
        node["alt"] = "The IPVS TCP state machine (generated from ipvs.proto.tcp)"
        node["classes"] = ["state-graph"]
        return [node]


_KERNEL_FILE = re.compile(r"(?:net/netfilter/ipvs/|include/(?:uapi/)?(?:net|linux)/|net/netfilter/)?"
                          r"(?:ip_vs\w*\.[ch]|nf_conntrack_sip\.c|ipvsadm\.c|libipvs/libipvs\.c)")


def kernel_map() -> list[tuple[str, str, str]]:
    """(module, kernel file, first line of its docstring) for every module of ipvs/.

    The kernel file is the first one the module's docstring names, which by
    the project's convention is the one it mirrors; modules without one
    (the driver, the tools' glue) say "-".
    """
    rows = []
    names = ["ipvs"] + sorted(m.name for m in pkgutil.walk_packages(ipvs.__path__, "ipvs."))
    for name in names:
        doc = importlib.import_module(name).__doc__ or ""
        m = _KERNEL_FILE.search(doc)
        first = doc.strip().split("\n\n")[0].replace("\n", " ")
        rows.append((name, m.group(0) if m else "-", first))
    return rows


def _plain(rst: str) -> str:
    """Docstring markup as plain text: ``x`` and :role:`x` become x."""
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", rst).replace("``", "")


def _code(text: str) -> nodes.paragraph:
    para = nodes.paragraph()
    para += nodes.literal(text=text)
    return para


class KernelMap(Directive):
    def run(self):
        rows = [[_code(name), _code(kfile) if kfile != "-" else "-", _plain(first)]
                for name, kfile, first in kernel_map() if name != "ipvs"]
        return [_table(rows, ["module", "kernel file it mirrors", "what it holds"])]


def setup(app):
    app.add_directive("ipvs-tcp-states", TcpStates)
    app.add_directive("ipvs-tcp-graph", TcpGraph)
    app.add_directive("ipvs-kernel-map", KernelMap)
    return {"parallel_read_safe": True}
