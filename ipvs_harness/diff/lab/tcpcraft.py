"""Shim: ipvs_harness/guest/tcpcraft.py in the PyIPVS namespace lab (see nsrun.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nsrun  # noqa: E402

nsrun.run("tcpcraft.py")
