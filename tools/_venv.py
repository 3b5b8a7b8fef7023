"""Run a command of this checkout: the launchers in ``tools/``.

``pip install`` makes the commands from ``[project.scripts]`` in
pyproject.toml; ``tools/<command>`` runs the same function from a checkout,
with the same command line, through :func:`launch`.

``tools/bootstrap`` installs PyIPVS's dependencies into two virtualenvs at
the top of the checkout: ``.venv`` (CPython) and ``.venv-pypy`` (PyPy 3.9).
:func:`launch` first tries the interpreter that started the launcher
(``#!/usr/bin/env python3`` finds the system's): starting a second
interpreter costs more than many commands' work.  Only when that one
cannot import the command (attrs missing, say) is the launcher executed
again under ``.venv``'s python with the same arguments (:func:`ensure`).

The admin tools run on CPython, which starts faster.  The daemon, whose
data path is a long-running loop that PyPy's JIT makes several times
faster, runs on PyPy where ``.venv-pypy`` exists: :func:`daemon_runtime`
reads ``--runtime`` and ``IPVSD_RUNTIME`` (``auto``, ``pypy``, ``cpython``).
``PYIPVS_NO_VENV=1`` turns all this off (to run a tool under an
interpreter of your own).

On PyPy the daemon runs with a 4 MB young generation (``PYPY_GC_NURSERY``,
unless set): ``ipvs.daemon.console_main`` sees to it, for this launcher and
the installed command alike (``ipvs.daemon.PYPY_ENV`` says why).
"""

from __future__ import annotations

import importlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
VENVS = {"cpython": os.path.join(ROOT, ".venv"), "pypy": os.path.join(ROOT, ".venv-pypy")}
RUNTIMES = ("auto", "pypy", "cpython")


def _python(venv: str) -> str:
    return os.path.join(venv, "bin", "python")


def daemon_runtime(argv: list) -> str:
    """The runtime ipvsd asked for: ``--runtime X`` on its command line,
    else ``$IPVSD_RUNTIME``, else ``auto`` (PyPy where it is installed)."""
    want = os.environ.get("IPVSD_RUNTIME", "auto")
    for i, arg in enumerate(argv):
        if arg == "--runtime" and i + 1 < len(argv):
            want = argv[i + 1]
        elif arg.startswith("--runtime="):
            want = arg.split("=", 1)[1]
    if want == "auto":
        return "pypy" if os.path.exists(_python(VENVS["pypy"])) else "cpython"
    return want


def ensure(runtime: str = "cpython") -> None:
    """Re-execute this tool under the virtualenv of ``runtime`` unless it
    already runs there (or that virtualenv is missing)."""
    venv = VENVS.get(runtime)
    if os.environ.get("PYIPVS_NO_VENV") or venv is None or not os.path.exists(_python(venv)):
        return
    if os.path.realpath(sys.prefix) == os.path.realpath(venv):
        return
    python = _python(venv)
    os.execv(python, [python, os.path.abspath(sys.argv[0]), *sys.argv[1:]])


def launch(module: str, func: str = "main") -> None:
    """Exit with ``module.func()``, importing it from this checkout (under
    ``.venv`` when this interpreter lacks a dependency)."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    try:
        mod = importlib.import_module(module)
    except ImportError:
        ensure()  # returns only when there is no other interpreter to try
        raise
    sys.exit(getattr(mod, func)())
