"""What every benchmark shares: the runtime it ran on, resident memory, and
running one benchmark under both runtimes in one interleaved run.

Each benchmark prints ``name value unit`` lines; the first is
``runtime NAME VERSION``.  ``--runtimes`` (see :func:`run_both`) runs the
same benchmark under ``.venv`` (CPython) and ``.venv-pypy`` (PyPy),
alternating, and prints each figure per runtime with PyPy's ratio to CPython,
so a goal like "12x CPython's in the same run" is read off one run.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, ROOT)
from _venv import VENVS  # noqa: E402 - the launchers' virtualenvs

from ipvs.daemon import PYPY_ENV, pypy_env_missing, tune_jit  # noqa: E402 - ipvsd's PyPy environment and JIT setting
from ipvs.daemon import runtime as describe  # noqa: E402 - one description of the interpreter

PYTHONS = {runtime: os.path.join(venv, "bin", "python") for runtime, venv in VENVS.items()}

# Every benchmark runs PyPy's JIT as ipvsd does, and counts the traces the
# JIT abandoned as too long: each is a path compiled in pieces.
tune_jit()
_TOO_LONG: list[str] = []
if sys.implementation.name == "pypy":
    import pypyjit  # type: ignore[import-not-found]

    def _too_long(_driver: str, greenkey: object) -> None:
        code = greenkey[0] if isinstance(greenkey, tuple) and greenkey else greenkey
        _TOO_LONG.append(getattr(code, "co_name", repr(code)))

    pypyjit.set_trace_too_long_hook(_too_long)


def run_as_ipvsd() -> None:
    """On PyPy, start this benchmark again once with the environment ipvsd
    runs with (:data:`ipvs.daemon.PYPY_ENV`: its GC nursery, its malloc
    threshold) where part of it is missing, so that a direct run measures
    what ``--runtimes`` and the daemon get; values the caller set stand."""
    missing = pypy_env_missing(sys.implementation.name, os.environ)
    if missing:
        os.environ.update(missing)
        os.execv(sys.executable, [sys.executable, *sys.argv])


def print_runtime() -> None:
    """The ``runtime`` line: the interpreter as ipvsd's log names it
    (``PyPy 7.3.11 (Python 3.9.16, GC nursery 4M, JIT trace_limit 10000)``,
    ``CPython 3.11.7``)."""
    print(f"runtime {describe()}", flush=True)


def print_jit_traces_too_long() -> None:
    """On PyPy, the ``jit_traces_too_long`` line: how many traces the JIT
    gave up on so far, and the functions it compiled apart instead."""
    if sys.implementation.name == "pypy":
        names = ",".join(sorted(set(_TOO_LONG))) or "-"
        print(f"jit_traces_too_long {len(_TOO_LONG)} traces ({names})", flush=True)


#: Iterations of :func:`_reference_loop` in one window: about 5 ms on either runtime.
_LOOP_N = 4_000_000 if sys.implementation.name == "pypy" else 60_000


def _reference_loop(n: int) -> int:
    """A fixed integer loop: no allocation, no memory beyond registers, the
    same work on every machine; its time tracks only the CPU's speed."""
    s = 0
    for i in range(n):
        s = (s + ((i * i) ^ (s >> 3))) & 0xFFFFFFFF
    return s


def print_machine_speed(when: str, seconds: float = 1.0) -> None:
    """``machine_<when>_fast`` and ``machine_<when>_slow_share``: a fixed
    loop timed in windows of about 5 ms over ``seconds``; its fastest
    window in ns an iteration of this thread's CPU time, and the share of
    windows that took over 1.5 times that.

    Some virtual machines run a thread at half speed for spells of a
    fraction of a second to seconds (seen here: a tenth of the windows of a
    30-second run took 1.7 times the median or more), which the thread's CPU time
    cannot tell from the code being slower.  Printed before and after a
    benchmark's figures, these tell whether its runs may have met such a
    spell: a slow share well above 0, or a fast figure that moved from one
    run to the next.
    """
    _reference_loop(_LOOP_N)  # compiled by the JIT before the first window
    times = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.thread_time()
        _reference_loop(_LOOP_N)
        times.append(time.thread_time() - t)
    fast = min(times)
    slow = sum(1 for t in times if t > 1.5 * fast)
    print(f"machine_{when}_fast {fast / _LOOP_N * 1e9:.3f} ns/iteration", flush=True)
    print(f"machine_{when}_slow_share {slow / len(times):.2f} of windows", flush=True)


def rss_bytes(pid: int | str = "self") -> int:
    """The resident set size (``VmRSS``) of this process or of ``pid``: the
    one memory figure that means the same on both runtimes (PyPy has no
    tracemalloc).  OSError when the process is gone."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds of this process or of ``pid`` so far
    (``/proc/PID/stat``'s utime and stime).  OSError when the process is gone."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold anything
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's waited-for children so far
    (a load generator or a tool, measured around its run)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def parse_figures(text: str) -> dict[str, tuple[float, str]]:
    figures = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] != "runtime":
            try:
                figures[parts[0]] = (float(parts[1]), " ".join(parts[2:]))
            except ValueError:
                continue
    return figures


def without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` less ``name VALUE`` or ``name=VALUE``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out


def run_both(script: str, argv: list[str], rounds: int) -> None:
    """Run ``script argv`` under each runtime ``rounds`` times, alternating,
    and print the median of each figure per runtime and PyPy's ratio."""
    results: dict[str, list[dict[str, tuple[float, str]]]] = {rt: [] for rt in PYTHONS}
    for r in range(rounds):
        order = list(PYTHONS) if r % 2 == 0 else list(reversed(PYTHONS))
        for rt in order:
            # PyPy as ipvsd runs it (its GC nursery), unless the caller says otherwise.
            env = {**PYPY_ENV, **os.environ} if rt == "pypy" else None
            out = subprocess.run([PYTHONS[rt], script, *argv], capture_output=True, text=True, check=True,
                                 env=env).stdout
            results[rt].append(parse_figures(out))
            print(f"# round {r} {rt} done", file=sys.stderr, flush=True)
    names = list(results["pypy"][0])
    print(f"runtimes cpython pypy rounds={rounds} (medians; ratio = pypy / cpython)")
    for name in names:
        unit = results["pypy"][0][name][1]
        seen = {rt: [res[name][0] for res in results[rt] if name in res] for rt in PYTHONS}
        if not seen["cpython"]:  # a PyPy-only figure (the JIT's)
            print(f"{name} pypy {statistics.median(seen['pypy']):.6g} {unit}")
            continue
        med = {rt: statistics.median(values) for rt, values in seen.items()}
        ratio = med["pypy"] / med["cpython"] if med["cpython"] else float("nan")
        print(f"{name} cpython {med['cpython']:.6g} pypy {med['pypy']:.6g} {unit} ratio {ratio:.2f}x")


def start_daemon(sock: str) -> subprocess.Popen:
    """A control-plane-only ``tools/ipvsd`` (its own runtime choice) on ``sock``, once it answers."""
    from ipvs.client import Client

    daemon = subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "ipvsd"), "--foreground",
                               "--socket", sock, "--log-level", "warning"])
    deadline = time.monotonic() + 30
    while True:
        try:
            with Client(sock, timeout=5) as c:
                c.call({"version": 1, "cmd": "GET_INFO"})
            return daemon
        except OSError:
            if time.monotonic() > deadline or daemon.poll() is not None:
                stop_daemon(daemon)
                raise SystemExit("ipvsd did not start") from None
            time.sleep(0.05)


def stop_daemon(daemon: subprocess.Popen) -> None:
    daemon.terminate()
    try:
        daemon.wait(30)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()
