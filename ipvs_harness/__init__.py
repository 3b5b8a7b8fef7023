"""PyIPVS's test harness: the kernel oracle, the differential comparison, the lab.

The tests import this package; it never imports the tests.  What it holds:

* :mod:`.kernel` (``ipvs-kernel``) - the real kernel IPVS (Debian's 6.1
  kernel, ipvsadm 1.31) in a throw-away qemu VM; records the goldens under
  ``tests/kernel/goldens/``.
* :mod:`.guest` - the scenario library that runs inside that VM
  (``oracle.sh`` and its Python helpers; ``steps.sh`` holds the step helpers
  every backend shares).
* :mod:`.diff` (``ipvs-diff``) - one scenario script run on the kernel,
  offline against the kernel's own captures, or in the namespace lab, and
  the outputs compared item by item.
* :mod:`.capture` - a golden's captures read into named frames, split into
  replay input and expected output (the one golden reader).
* :mod:`.lab` (``ipvs-lab``) - the classic VS/NAT example in network
  namespaces, with ``ipvsd`` as the director.

Scenarios and goldens are data of the test suite and stay under
``tests/kernel/``; :data:`ROOT` is the checkout they are read from.
"""

from __future__ import annotations

import os

#: The checkout: ``tools/``, ``tests/kernel/scenarios`` and ``goldens`` are read from here.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")
KERNEL_TESTS = os.path.join(ROOT, "tests", "kernel")
GOLDENS = os.path.join(KERNEL_TESTS, "goldens")
#: The scenario library the VM runs (``$LIB`` of a kernel run).
GUEST_LIB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guest")
