"""Command-line tools: ``ipvsadm`` (:mod:`ipvs.cli.ipvsadm`) and friends.

Each tool is a module with ``main(argv, ...) -> int`` that talks to a
director through a transport (anything with ``call(request) -> reply``,
see :mod:`ipvs.netlink`), so it can be driven in-process by tests.
"""
