"""The import layers of the package: nothing imports upward.

Bottom to top (a module may import its own layer and the layers below):

1. ``uapi``: the constants of ``include/uapi/linux/ip_vs.h``.
2. ``packet`` (frames and checksums) and ``est`` (``struct ip_vs_stats``
   and the estimator: every service and destination embeds a
   :class:`~ipvs.est.Stats`, so it sits below the header that declares
   them; it imports nothing of PyIPVS).
3. ``ip_vs``: the header, ``include/net/ip_vs.h``: Service, Dest, Sysctls,
   ConnParam, IPVSError, the verdicts.
4. The parts: ``proto``, ``sched``, ``conn``, ``pe``, ``app``, ``fwmark``.
5. ``netns``: the instance (``struct netns_ipvs``).  It owns a connection
   table, the protocol data, an estimator and the mark rules, so it sits
   above the parts, and below everything that works on an instance.
6. ``ctl``: ``ip_vs_ctl.c``, the commands and the lookups the packet
   path calls (``ip_vs_service_find``, ``ip_vs_find_real_service``, the
   destination trash timer).  ``ip_vs_core.c`` calls into
   ``ip_vs_ctl.c`` and never the other way round, so ``ctl`` is below
   the packet path (issue 12 drew it above; with each kernel function in
   the module of its kernel file, that order would need the lookups
   moved out of ``ctl``).
7. The packet path: ``xmit`` and ``core``.
8. On top, what does I/O or talks to users: ``driver``, ``daemon``,
   ``cli``, ``procfs``, ``netlink``, ``client``, ``rules``, ``metrics``
   (the Prometheus endpoint), ``systemd`` (sd_notify, the unit).

Imports are read with :mod:`ast`, at module level and inside functions.
Imports under ``if TYPE_CHECKING:`` are left out: they only name the
type of an object handed in (a scheduler is given the instance it serves)
and are never executed.  Within a layer any import is allowed, but the
module-level imports of the whole package must form no cycle, and the
sans-I/O core (layers 1 to 7) has no function-level import of its own
package: such an import only ever served to dodge a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "ipvs"

LAYERS = (
    ("uapi",),
    ("packet", "est"),
    ("ip_vs",),
    ("proto", "sched", "conn", "pe", "app", "fwmark"),
    ("netns",),
    ("ctl",),
    ("xmit", "core"),
    ("driver", "daemon", "cli", "procfs", "netlink", "client", "rules", "metrics", "systemd"),
)
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
#: Layers whose modules may not import inside functions (the sans-I/O core).
CORE_TOP = LAYER["core"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def layer_of(module: str) -> int | None:
    """The layer of ``ipvs.x.y`` (by ``x``), None for the package itself."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    if parts[1] not in LAYER:
        raise AssertionError(f"{module}: not in any layer; add it to LAYERS (and the docstring)")
    return LAYER[parts[1]]


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def imports(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported ipvs module, line, at module level) for every import that
    runs, ``from ipvs import x`` resolved to ``ipvs.x`` when ``x`` is a module."""
    tree = ast.parse(path.read_text(), str(path))
    known = modules()
    found: list[tuple[str, int, bool]] = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit_one(sub, top)
                continue
            visit_one(child, top)

    def visit_one(child: ast.AST, top: bool) -> None:
        if isinstance(child, ast.Import):
            for a in child.names:
                if a.name.split(".")[0] == "ipvs":
                    found.append((a.name, child.lineno, top))
        elif isinstance(child, ast.ImportFrom):
            base = child.module or ""
            if child.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (child.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "ipvs":
                return
            for a in child.names:
                full = f"{base}.{a.name}"
                found.append((full if full in known else base, child.lineno, top))
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            visit(child, False)
        elif isinstance(child, ast.If) and _is_type_checking(child):
            for sub in child.orelse:
                visit_one(sub, top)
        else:
            visit(child, top)

    visit(tree, True)
    return found


ALL = modules()


@pytest.mark.parametrize("module", sorted(ALL))
def test_no_upward_import(module: str) -> None:
    mine = layer_of(module)
    bad = []
    for target, line, _top in imports(module, ALL[module]):
        theirs = layer_of(target)
        if mine is not None and theirs is not None and theirs > mine:
            bad.append(f"{module}:{line} imports {target} (layer {theirs} above {mine})")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", sorted(m for m in ALL if (layer_of(m) or 0) <= CORE_TOP))
def test_core_has_no_function_level_import(module: str) -> None:
    inner = [f"{module}:{line} imports {t} inside a function" for t, line, top in imports(module, ALL[module]) if not top]
    assert not inner, "\n".join(inner)


def test_no_import_cycle() -> None:
    graph = {m: {t for t, _line, top in imports(m, p) if top and t in ALL and t != m} for m, p in ALL.items()}
    # A package's __init__ imports its submodules and each submodule
    # imports its package first: that edge (child -> parent) is Python's
    # loading order, not a dependency.
    for m, targets in graph.items():
        targets.difference_update({t for t in targets if m.startswith(t + ".")})
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t) :] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                walk(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m)


def test_the_layer_test_sees_an_upward_import(tmp_path: Path) -> None:
    """The parser finds a function-level upward import (the test can fail)."""
    src = PKG / "uapi.py"
    fake = tmp_path / "ipvs" / "uapi.py"
    fake.parent.mkdir()
    fake.write_text(src.read_text() + "\n\ndef f():\n    from ipvs.core import Director\n    return Director\n")
    found = [(t, top) for t, _line, top in imports("ipvs.uapi", fake)]
    assert ("ipvs.core", False) in found
    assert layer_of("ipvs.core") > layer_of("ipvs.uapi")
