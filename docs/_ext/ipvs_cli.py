"""The command-line reference, generated from the tools themselves.

Two sources, read and never retyped:

* ``ipvsadm``: its ``-h`` text (:func:`ipvs.cli.ipvsadm.usage_text`, byte for
  byte ipvsadm 1.31's), split into its sections and option entries;
* ``ipvsd``: its argument parser (:func:`ipvs.daemon.build_parser` with the
  AF_PACKET driver's options), group by group.

From them this module renders the site's CLI pages (the directives
``ipvs-usage`` and ``ipvs-options``) and the manual pages ``ipvsadm.8`` and
``ipvsd.8`` (``python3 docs/_ext/ipvs_cli.py`` rewrites ``docs/man/``;
tests/docs/test_cli_docs.py fails when the committed pages or the guides'
option tables drift from the parsers).
"""

from __future__ import annotations

import os
import re
import sys
from typing import NamedTuple

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.dirname(HERE)
MAN_DIR = os.path.join(DOCS, "man")
if os.path.dirname(DOCS) not in sys.path:
    sys.path.insert(0, os.path.dirname(DOCS))


class Entry(NamedTuple):
    """One option of a tool: its spellings, its argument (may be empty), what it does."""

    flags: tuple[str, ...]
    arg: str
    text: str


class Section(NamedTuple):
    title: str
    entries: list[Entry]


# ---------------------------------------------------------------- ipvsadm


def ipvsadm_usage() -> str:
    """``ipvsadm -h``'s text (without the version line, which names the build)."""
    from ipvs.cli import ipvsadm

    return ipvsadm.usage_text("ipvsadm")


def ipvsadm_synopsis() -> list[str]:
    """The ``Usage:`` lines, without the program name."""
    lines = ipvsadm_usage().split("\n\n")[0].splitlines()[1:]
    return [line.strip()[len("ipvsadm "):] for line in lines]


_ENTRY = re.compile(r"^  (\S.*?)(?:\s{2,}(\S.*))?$")


def _split_opts(head: str) -> tuple[tuple[str, ...], str]:
    """``--scheduler    -s scheduler`` -> (("--scheduler", "-s"), "scheduler")."""
    flags: list[str] = []
    arg: list[str] = []
    for word in head.replace("|", " ").split():
        if word.startswith("-") and not arg:
            flags.append(word)
        else:
            arg.append(word)
    return tuple(flags), " ".join(arg)


def ipvsadm_sections() -> list[Section]:
    """The ``Commands:``, ``virtual-service:``, ``Options:`` and ``Daemon Options:`` entries."""
    sections: list[Section] = []
    for line in ipvsadm_usage().split("\n\n", 1)[1].splitlines():
        if not line.strip() or line.startswith("Either"):
            continue
        if not line.startswith(" "):
            sections.append(Section(line.rstrip(":"), []))
            continue
        if line.startswith("      ") and sections and sections[-1].entries:  # a continuation line
            last = sections[-1].entries.pop()
            sections[-1].entries.append(last._replace(text=f"{last.text} {line.strip()}"))
            continue
        # The head (options and argument) and the text are two or more blanks apart;
        # "--set tcp tcpfin udp" has single blanks inside its head.
        cells = re.split(r"\s{2,}", line.strip())
        head, text = " ".join(cells[:-1]), cells[-1]
        if len(cells) == 1:
            head, text = cells[0], ""
        flags, arg = _split_opts(head)
        sections[-1].entries.append(Entry(flags, arg, text))
    return sections


def ipvsadm_parser_options() -> set[str]:
    """Every spelling ipvsadm's popt table accepts (``--long`` and ``-x``)."""
    from ipvs.cli import ipvsadm

    out = set()
    for long, short, _arg, _val in ipvsadm.OPTIONS_TABLE:
        out.add(f"--{long}")
        if short:
            out.add(f"-{short}")
    return out


# ---------------------------------------------------------------- ipvsd


def ipvsd_parser(with_driver: bool = True):
    from ipvs import daemon

    driver = None
    if with_driver:
        from ipvs.driver import afpacket as driver
    return daemon.build_parser(driver)


def argparse_sections(parser) -> list[Section]:
    """The parser's options, group by group, with ``%(default)s`` filled in."""
    sections = []
    for group in parser._action_groups:  # argparse has no public view of its groups
        entries = []
        for action in group._group_actions:
            if not action.option_strings or action.help == "==SUPPRESS==":
                continue
            arg = ""
            if action.nargs != 0:
                arg = action.metavar or (
                    "{" + ",".join(action.choices) + "}" if action.choices else action.dest.upper())
                if action.nargs == "?":
                    arg = f"[{arg}]"
            text = (action.help or "") % {"default": action.default, "prog": parser.prog}
            if action.choices and action.metavar:
                text += f" (one of: {', '.join(action.choices)})"
            entries.append(Entry(tuple(sorted(action.option_strings, key=lambda s: (not s.startswith("--"), s))),
                                 arg, text))
        if entries:
            title = {"options": "Options", "optional arguments": "Options"}.get(group.title, group.title)
            sections.append(Section(title, entries))
    return sections


def ipvsd_sections() -> list[Section]:
    return argparse_sections(ipvsd_parser())


# ---------------------------------------------------------------- man pages


def _roff(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def _man_entries(sections: list[Section]) -> list[str]:
    out = []
    for section in sections:
        out.append(f".SS {_roff(section.title)}")
        for e in section.entries:
            head = ", ".join(f"\\fB{_roff(f)}\\fR" for f in e.flags)
            if e.arg:
                head += f" \\fI{_roff(e.arg)}\\fR"
            out += [".TP", head, _roff(e.text) if e.text else "(see above)"]
    return out


_MAN_HEAD = ('.\\" Generated by docs/_ext/ipvs_cli.py from {source}; do not edit.\n'
             '.TH {name} 8 "" "PyIPVS" "System Administration"')


def ipvsadm_man() -> str:
    lines = [_MAN_HEAD.format(source="ipvs/cli/ipvsadm.py (usage_text)", name="IPVSADM"),
             ".SH NAME", "ipvsadm \\- administer the PyIPVS director (ipvsadm 1.31, byte-compatible)",
             ".SH SYNOPSIS"]
    for syn in ipvsadm_synopsis():
        lines += [f"\\fBipvsadm\\fR {_roff(syn)}", ".br"]
    lines += [".SH DESCRIPTION",
              "PyIPVS's ipvsadm is ipvsadm 1.31 talking to the \\fBipvsd\\fR(8) of its network namespace "
              "instead of the kernel: the same commands, options, output, messages and exit statuses.  "
              "The director is the one listening on the abstract socket \\fB@pyipvs\\-ipvsd\\fR, or the one "
              "named by \\fB\\-\\-socket\\fR \\fIpath\\fR (anywhere before \\fB\\-\\-\\fR) or "
              "\\fBIPVS_SOCKET\\fR."]
    lines += _man_entries(ipvsadm_sections())
    lines += [".SH EXIT STATUS",
              "0 on success; 1 when a listing failed; 2 for a parsing or checking message or no director; "
              "255 when the director refused or for a usage error.",
              ".SH SEE ALSO", "\\fBipvsd\\fR(8), \\fBippfvsadm\\fR(8); the PyIPVS site's ipvsadm guide."]
    return "\n".join(lines) + "\n"


def ipvsd_man() -> str:
    parser = ipvsd_parser()
    lines = [_MAN_HEAD.format(source="ipvs/daemon.py (build_parser)", name="IPVSD"),
             ".SH NAME", "ipvsd \\- the PyIPVS director daemon", ".SH SYNOPSIS",
             "\\fBipvsd\\fR [\\fIoptions\\fR]", ".SH DESCRIPTION", _roff(parser.description or "")]
    lines += [".SH OPTIONS"] + _man_entries(ipvsd_sections())
    lines += [".SH SIGNALS",
              "SIGTERM and SIGINT stop the daemon (saving the rules first with \\fB\\-\\-save\\fR); "
              "SIGHUP reloads \\fB\\-\\-rules\\fR and \\fB\\-\\-marks\\fR.",
              ".SH SEE ALSO", "\\fBipvsadm\\fR(8), \\fBippfvsadm\\fR(8); the PyIPVS site's ipvsd guide."]
    return "\n".join(lines) + "\n"


MAN_PAGES = {"ipvsadm.8": ipvsadm_man, "ipvsd.8": ipvsd_man}


# ---------------------------------------------------------------- Sphinx


def setup(app):
    from docutils import nodes
    from docutils.parsers.rst import Directive

    def table(sections: list[Section]) -> list:
        out = []
        for section in sections:
            out.append(nodes.rubric(text=section.title))
            tbl = nodes.table(classes=["cli-options"])
            group = nodes.tgroup(cols=2)
            tbl += group
            group += nodes.colspec(colwidth=2)
            group += nodes.colspec(colwidth=5)
            body = nodes.tbody()
            group += body
            for e in section.entries:
                row = nodes.row()
                left = nodes.paragraph()
                for i, f in enumerate(e.flags):
                    if i:
                        left += nodes.Text(", ")
                    left += nodes.literal(text=f)
                if e.arg:
                    left += nodes.Text(" ")
                    left += nodes.emphasis(text=e.arg)
                for cell in (left, nodes.paragraph(text=e.text)):
                    entry = nodes.entry()
                    entry += cell
                    row += entry
                body += row
            out.append(tbl)
        return out

    class Usage(Directive):
        """``.. ipvs-usage:: ipvsadm|ippfvsadm``: the tool's help text, verbatim."""

        required_arguments = 1

        def run(self):
            name = self.arguments[0]
            if name == "ipvsadm":
                text = ipvsadm_usage()
            elif name == "ippfvsadm":
                from ipvs.cli import ippfvsadm

                text = ippfvsadm.USAGE
            else:
                raise self.error(f"no usage text for {name}")
            block = nodes.literal_block(text, text)
            block["language"] = "none"
            return [block]

    class Options(Directive):
        """``.. ipvs-options:: ipvsadm|ipvsd``: the options as tables, one per section."""

        required_arguments = 1

        def run(self):
            name = self.arguments[0]
            if name == "ipvsadm":
                return table(ipvsadm_sections())
            if name == "ipvsd":
                return table(ipvsd_sections())
            raise self.error(f"no options for {name}")

    app.add_directive("ipvs-usage", Usage)
    app.add_directive("ipvs-options", Options)
    return {"parallel_read_safe": True}


def write_man_pages(out_dir: str = MAN_DIR) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, render in MAN_PAGES.items():
        path = os.path.join(out_dir, name)
        with open(path, "w") as f:
            f.write(render())
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_man_pages():
        print(path)
