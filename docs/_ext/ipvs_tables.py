"""Sphinx directives that render PyIPVS's own tables into the docs.

``.. ipvs-tcp-states::`` draws the kernel's TCP state tables from the data
in :mod:`ipvs.proto.tcp` (``TCP_STATES`` or, with ``:dos:``,
``TCP_STATES_DOS``), so the page can never drift from the code: the h11
trick of generating the state diagram from the transition table.
"""

from docutils import nodes
from docutils.parsers.rst import Directive, directives

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
            entry += nodes.paragraph(text=c)
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


def setup(app):
    app.add_directive("ipvs-tcp-states", TcpStates)
    return {"parallel_read_safe": True}
