"""The documented options and commands match the tools' parsers.

The CLI pages and the manual pages are generated from the parsers
(docs/_ext/ipvs_cli.py); the guides' hand-written tables are checked here,
so that an option added to a parser and not documented (``--marks`` was
missing from docs/ipvsd.md) or a statement the code contradicts (docs/ipvsadm.md
said ``--pe sip`` is refused) fails a test.
"""

from __future__ import annotations

import os
import re

import pytest

from ipvs.cli import ipvsadm
from ipvs.pe import pe_get
from tests.docs.conftest import DOCS, load

cli = load(os.path.join("_ext", "ipvs_cli.py"), "ipvs_cli_under_test")


def read(name: str) -> str:
    with open(os.path.join(DOCS, name)) as f:
        return f.read()


def table_options(markdown: str, heading: str) -> set[str]:
    """The options named in the first column of the table under ``## heading``."""
    section = markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    opts = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            opts.update(re.findall(r"`(-[-\w]+)", first))
            opts.update(re.findall(r", `(-\w)`", first))
    return opts


def unclustered(token: str) -> list[str]:
    """``-Ln`` -> ``-L``, ``-n``; ``-At10`` -> ``-A``, ``-t`` (popt clusters short options;
    the rest of a cluster after an option that takes an argument is that argument)."""
    if token.startswith("--"):
        return [token]
    takes_arg = {short for _long, short, arg, _val in ipvsadm.OPTIONS_TABLE if short and arg != ipvsadm.ARG_NONE}
    out = []
    for ch in token[1:]:
        out.append(f"-{ch}")
        if ch in takes_arg:
            break
    return out


def parser_options(sections) -> set[str]:
    return {f for s in sections for e in s.entries for f in e.flags}


@pytest.mark.parametrize("page", sorted(cli.MAN_PAGES))
def test_committed_man_page_is_generated_from_the_parser(page):
    """docs/man/*.8 are what the generator makes now (rerun ``python3 docs/_ext/ipvs_cli.py``)."""
    with open(os.path.join(cli.MAN_DIR, page)) as f:
        assert f.read() == cli.MAN_PAGES[page](), f"docs/man/{page} is stale: run python3 docs/_ext/ipvs_cli.py"


def test_man_pages_are_installed_with_the_package():
    with open(os.path.join(os.path.dirname(DOCS), "pyproject.toml")) as f:
        pyproject = f.read()
    for page in [*cli.MAN_PAGES, "ippfvsadm.8"]:
        assert re.search(rf'"share/man/man8" = \[[^\]]*{re.escape(page)}"', pyproject), page


def test_ipvsd_guide_documents_every_daemon_option():
    parser = parser_options(cli.argparse_sections(cli.ipvsd_parser(with_driver=False)))
    documented = table_options(read("ipvsd.md"), "Options")
    assert parser - documented == set(), "options of ipvs.daemon.build_parser missing from docs/ipvsd.md"
    assert documented - parser == set(), "docs/ipvsd.md documents options the parser does not have"


def test_spare_nic_guide_documents_every_driver_option():
    everything = parser_options(cli.ipvsd_sections())
    daemon_only = parser_options(cli.argparse_sections(cli.ipvsd_parser(with_driver=False)))
    documented = table_options(read("spare-nic.md"), "The driver's options")
    assert documented == everything - daemon_only


def test_ipvsadm_guide_names_only_real_options_and_all_of_them():
    accepted = cli.ipvsadm_parser_options()
    text = read("ipvsadm.md")
    table = text.split("## Commands and options\n", 1)[1].split("\n## ", 1)[0]
    named = set()
    for span in re.findall(r"`([^`]+)`", table):
        for tok in re.findall(r"(?<![\w-])(--?[A-Za-z][-\w]*)", span):
            named |= set(unclustered(tok))
    assert named - accepted - {"--socket"} == set(), "docs/ipvsadm.md names options ipvsadm does not have"
    # Every long option of the popt table appears somewhere on the page (long or short spelling).
    missing = []
    for long, short, _arg, _val in ipvsadm.OPTIONS_TABLE:
        spellings = [f"--{long}"] + ([f"-{short}"] if short else [])
        if not any(re.search(rf"`[^`]*{re.escape(s)}(?![-\w])", text) for s in spellings):
            missing.append(spellings[0])
    assert missing == [], "ipvsadm options the guide never mentions"


def test_usage_text_options_exist_in_the_parser():
    """The generated CLI page lists what popt accepts, and nothing else."""
    listed = parser_options(cli.ipvsadm_sections())
    assert listed - cli.ipvsadm_parser_options() == set()


def test_persistence_engines_the_guide_calls_refused_really_are():
    """``--pe NAME`` is accepted exactly when PyIPVS has the engine."""
    text = read("ipvsadm.md")
    for name in ipvsadm.PE_LIST.split("|"):
        assert pe_get(name) is not None
        assert not re.search(rf"`--pe {name}` is refused", text), f"docs/ipvsadm.md says --pe {name} is refused"
        assert re.search(rf"`--pe {name}` is accepted", text), f"docs/ipvsadm.md should say --pe {name} is accepted"


def test_ipvsd_option_table_drift_is_caught():
    """The checker itself: a table without --marks fails, as docs/ipvsd.md once did."""
    text = read("ipvsd.md")
    broken = "\n".join(line for line in text.splitlines() if not line.startswith("| `--marks"))
    parser = parser_options(cli.argparse_sections(cli.ipvsd_parser(with_driver=False)))
    assert parser - table_options(broken, "Options") == {"--marks"}
