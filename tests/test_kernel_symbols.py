"""docs/kernel-symbols.md: generated from the docstrings, current, and
every entry names something that exists.

The convention (see ``docs/_ext/kernel_symbols.py``): a docstring that
begins with a kernel name in double backquotes declares that its function,
method or class mirrors that kernel function.  The packet path's kernel
functions must all be declared so (:data:`REQUIRED`): a newcomer holding
``ip_vs_core.c`` finds each on the page.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re

ROOT = os.path.join(os.path.dirname(__file__), "..")
_spec = importlib.util.spec_from_file_location(
    "kernel_symbols", os.path.join(ROOT, "docs", "_ext", "kernel_symbols.py")
)
ks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ks)

#: Kernel functions of the sans-I/O core that must be on the page.
REQUIRED = {
    # ip_vs_core.c
    "ip_vs_in", "ip_vs_out", "ip_vs_in_icmp", "ip_vs_out_icmp", "handle_response", "ip_vs_schedule",
    "ip_vs_sched_persist", "ip_vs_leave", "ip_vs_todrop", "ip_vs_in_stats", "ip_vs_out_stats",
    "ip_vs_conn_stats", "ip_vs_new_conn_out", "__ip_vs_rs_conn_out", "ip_vs_check_template",
    # ip_vs_conn.c
    "ip_vs_conn_new", "ip_vs_conn_expire", "ip_vs_conn_put", "ip_vs_conn_in_get", "ip_vs_conn_out_get",
    "ip_vs_ct_in_get", "ip_vs_bind_dest", "ip_vs_unbind_dest", "ip_vs_conn_hash", "ip_vs_conn_unhash",
    "ip_vs_conn_fill_cport", "ip_vs_control_add", "ip_vs_conn_expire_now",
    # ip_vs_proto*.c, ip_vs.h
    "ip_vs_proto_get", "tcp_conn_schedule", "set_tcp_state", "tcp_state_transition", "udp_state_transition",
    "tcp_timeout_change", "ip_vs_control_assure_ct", "ip_vs_state_name",
    # ip_vs_xmit.c
    "ip_vs_nat_xmit", "ip_vs_icmp_xmit", "ip_vs_nat_icmp", "decrement_ttl", "ip_vs_nat_xmit_v6",
    "ip_vs_dr_xmit", "ip_vs_dr_xmit_v6", "ip_vs_tunnel_xmit", "ip_vs_tunnel_xmit_v6", "__ip_vs_get_out_rt",
    "__ip_vs_get_out_rt_v6",
    # ip_vs_ctl.c
    "ip_vs_service_find", "ip_vs_find_real_service", "ip_vs_dest_trash_expire",
}


def page_text() -> str:
    with open(ks.PAGE) as f:
        return f.read()


def test_the_page_is_current():
    assert page_text() == ks.render(), "run: .venv/bin/python docs/_ext/kernel_symbols.py"


def test_every_entry_exists():
    rows = re.findall(r"^\| `([^`]+)` \| `([^`]+)` \|", page_text(), re.M)
    assert len(rows) > 100
    for kernel, where in rows:
        parts = where.split(".")
        # The longest importable prefix is the module; the rest is attributes.
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            break
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        assert kernel in ks.kernel_names(obj.__doc__), (kernel, where)


def test_the_packet_path_is_on_the_page():
    listed = {k for k, *_ in ks.collect()}
    assert REQUIRED - listed == set()


def test_the_convention_reads_only_leading_names():
    assert ks.kernel_names("``ip_vs_bind_app`` / ``tcp_app_conn_bind``: bind it.") == [
        "ip_vs_bind_app", "tcp_app_conn_bind",
    ]
    assert ks.kernel_names("``ip_vs_out_icmp`` then ``ip_vs_in_icmp`` for an ICMP packet") == [
        "ip_vs_out_icmp", "ip_vs_in_icmp",
    ]
    assert ks.kernel_names("Run ``ip_vs_in`` later.") == []
    assert ks.kernel_names(None) == []


def test_a_function_may_name_its_own_kernel_file():
    """A function from another kernel file than its module's is filed under
    its own (is_ineligible is net/ipv6/icmp.c's, in a module mirroring
    ip_vs_core.c's ICMPv6 handling)."""
    assert ks.own_file("``f`` (in ``net/ipv6/icmp.c``): what it does.") == "net/ipv6/icmp.c"
    assert ks.own_file("``f`` / ``g`` (in ``a/b.h``): both.") == "a/b.h"
    assert ks.own_file("``f``: what it does (in ``net/ipv6/icmp.c``).") == ""
    assert ks.own_file("Not a kernel function (in ``a.c``).") == ""
    rows = {(k, mod, qual): kfile for k, mod, qual, kfile in ks.collect()}
    assert rows[("is_ineligible", "ipvs.proto.icmpv6", "is_ineligible")] == "net/ipv6/icmp.c"
