"""Differential comparison of PyIPVS with the kernel's IPVS (``tools/ipvs-diff``).

One scenario script (``tests/kernel/scenarios/*.sh``, or any script written
against ``ipvs_harness/guest/oracle.sh``'s functions) runs unchanged on
several backends, each providing the library under ``$LIB``:

* **kernel** - ``tools/ipvs-kernel run`` in a Debian 6.1 VM, or the golden
  it recorded (``tests/kernel/goldens/NAME``);
* **offline** (:mod:`.offline`) - the script under a recording stub
  (``stub/oracle.sh``), played in-process against PyIPVS, with the kernel
  run's own captures as the traffic; no VM, no root: the test command's;
* **lab** (:mod:`.lab`) - the script in network namespaces on this host
  with ``tools/ipvsd`` on AF_PACKET (``lab/oracle.sh``).

:mod:`.compare` compares two output directories item by item under the
rules of :mod:`.normalize` (and nothing else); :mod:`.report` runs every
golden, explains differences (``KNOWN_DIFFERENCES``, recording
``ARTEFACTS`` with their evidence) and writes ``docs/differential.md``.
"""
