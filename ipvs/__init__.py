"""PyIPVS: a readable, pure-Python Linux Virtual Server.

The package mirrors the kernel's ``net/netfilter/ipvs/``: ``ipvs.core`` is
``ip_vs_core.c``, ``ipvs.conn`` is ``ip_vs_conn.c``, ``ipvs.ctl`` is
``ip_vs_ctl.c``, ``ipvs.sched.<name>`` is ``ip_vs_<name>.c`` and so on.
Everything above ``ipvs.driver`` is sans-I/O: it takes bytes and a tick
count and returns verdicts.
"""

__version__ = "0.1.0"
