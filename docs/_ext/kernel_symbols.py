"""The kernel-symbol page: every kernel function PyIPVS mirrors, and where.

The convention the page is built from (and ``tests/test_kernel_symbols.py``
holds): a function, method or class that mirrors a kernel function has a
docstring that *begins* with the kernel's name in double backquotes, e.g.
``"``ip_vs_conn_new``: create, bind ..."``.  Several names may lead, joined
by ``/``, ``,``, ``and`` or ``then`` (``"``ip_vs_bind_app`` /
``tcp_app_conn_bind``: ..."``).  A docstring that merely mentions a kernel
function further on declares nothing.  The same holds for ipvsadm's C
functions in :mod:`ipvs.cli`.

Regenerate the page after changing such docstrings:
``.venv/bin/python docs/_ext/kernel_symbols.py`` (writes
``docs/kernel-symbols.md``).
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import re
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PAGE = os.path.join(ROOT, "docs", "kernel-symbols.md")

#: A kernel identifier in double backquotes (optionally with call parens).
_NAME = r"``([A-Za-z_][A-Za-z0-9_]*)(?:\(\))?``"
#: The leading names of a docstring: the first, and any joined to it by
#: ``/``, ``,``, ``and`` or ``then``.
LEADING = re.compile(rf"^{_NAME}((?:\s*(?:/|,|and|then)\s*{_NAME})*)")
_ONE = re.compile(_NAME)
#: The kernel file a module mirrors: the first source path its docstring names.
_FILE = re.compile(r"``([\w/.-]+\.[ch])``")
#: A function from another kernel file says so right after its names:
#: ```is_ineligible`` (in ``net/ipv6/icmp.c``): ...``.
_OWN_FILE = re.compile(r"\s*\(in ``([\w/.-]+\.[ch])``\)")


def own_file(doc: str | None) -> str:
    """The kernel file a docstring names for its own function (``(in
    ``file.c``)`` after the leading names), or ""."""
    if not doc:
        return ""
    text = inspect.cleandoc(doc)
    m = LEADING.match(text)
    own = _OWN_FILE.match(text, m.end()) if m else None
    return own.group(1) if own else ""


def kernel_names(doc: str | None) -> list[str]:
    """The kernel names a docstring declares (the convention above)."""
    if not doc:
        return []
    m = LEADING.match(inspect.cleandoc(doc))
    if m is None:
        return []
    return _ONE.findall(m.group(0))


def _modules() -> list[str]:
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    import ipvs

    return ["ipvs"] + sorted(m.name for m in pkgutil.walk_packages(ipvs.__path__, "ipvs."))


def _members(mod) -> list[tuple[str, object]]:
    """(qualified name, object) of the functions, classes and methods
    defined in ``mod``, in source order."""
    out = []
    for name, obj in vars(mod).items():
        if inspect.isfunction(obj) and obj.__module__ == mod.__name__:
            out.append((name, obj))
        elif inspect.isclass(obj) and obj.__module__ == mod.__name__:
            out.append((name, obj))
            for mname, m in vars(obj).items():
                if isinstance(m, (staticmethod, classmethod)):
                    m = m.__func__
                if inspect.isfunction(m):
                    out.append((f"{name}.{mname}", m))
    return out


def collect() -> list[tuple[str, str, str, str]]:
    """(kernel name, module, qualified name, kernel file the module mirrors),
    sorted by kernel name."""
    rows = []
    for modname in _modules():
        mod = importlib.import_module(modname)
        m = _FILE.search(mod.__doc__ or "")
        kfile = m.group(1) if m else ""
        for qual, obj in _members(mod):
            for k in kernel_names(obj.__doc__):
                rows.append((k, modname, qual, own_file(obj.__doc__) or kfile))
    return sorted(set(rows), key=lambda r: (r[0].lstrip("_"), r[0], r[1], r[2]))


def render() -> str:
    rows = collect()
    lines = [
        "# Kernel symbols",
        "",
        "Every kernel function PyIPVS mirrors (and, for the tools, ipvsadm's),",
        "with the Python function, method or class that holds it.  Generated from the code by",
        "`docs/_ext/kernel_symbols.py` (do not edit by hand; the test",
        "`tests/test_kernel_symbols.py` fails when this page is not current).",
        "A docstring that begins with a kernel name in double backquotes",
        "declares it.  The last column is the kernel file the Python module",
        "mirrors (its docstring names it first), or the function's own file",
        "when its docstring names one in parentheses right after the kernel names.",
        "",
        f"{len(rows)} entries.",
        "",
        "| Kernel | PyIPVS | Module mirrors |",
        "|---|---|---|",
    ]
    for k, modname, qual, kfile in rows:
        lines.append(f"| `{k}` | `{modname}.{qual}` | {('`' + kfile + '`') if kfile else ''} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    with open(PAGE, "w") as f:
        f.write(render())
    print(f"wrote {PAGE}")


if __name__ == "__main__":
    main()
