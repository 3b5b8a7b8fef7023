"""Make a tool run under the project's virtualenv.

``tools/bootstrap`` installs PyIPVS's dependencies into ``.venv`` at the top
of the checkout.  Every tool imports this module first: when the tool was
started by another interpreter (``#!/usr/bin/env python3`` finds the
system's) and ``.venv`` exists, the tool is executed again under
``.venv/bin/python`` with the same arguments.  ``PYIPVS_NO_VENV=1`` turns
this off (to run a tool under an interpreter of your own).
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
VENV = os.path.join(ROOT, ".venv")
PYTHON = os.path.join(VENV, "bin", "python")


def ensure() -> None:
    if os.environ.get("PYIPVS_NO_VENV") or not os.path.exists(PYTHON):
        return
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        return
    os.execv(PYTHON, [PYTHON, os.path.abspath(sys.argv[0]), *sys.argv[1:]])


ensure()
