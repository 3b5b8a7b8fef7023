"""Run scenarios on the real Linux kernel IPVS inside a throw-away qemu VM.

This is the *oracle* side of PyIPVS's differential tests.  The host kernel
has no IPVS, so the real thing runs in a VM built only from Debian
packages: the bookworm ``linux-image-6.1.0-NN-amd64`` kernel and a
``debootstrap --variant=minbase`` userland with ipvsadm 1.31, packed as an
initramfs.  The VM has no network device at all (``-nodefaults -nic
none``): every packet a scenario makes stays inside network namespaces in
the guest.  Scenarios come in and results go out over a virtio-9p share.

Commands::

    ipvs-kernel build                 build (or reuse) the cached VM
    ipvs-kernel run SCENARIO OUTDIR [--input [NAME=]FILE]...
                                      boot once, run one scenario, copy results
    ipvs-kernel record [NAME|PATH.sh...] [--out DIR]
                                      re-record tests/kernel/goldens/NAME/ (or DIR/NAME/)
                                      (all scenarios when none named), as few boots as possible
    ipvs-kernel info                  print cache paths and pinned versions
    ipvs-kernel check                 check the committed goldens (no VM)

The cache lives in ``$PYIPVS_KERNEL_CACHE`` (default
``/var/cache/pyipvs-kernel``), outside the repository.  Nothing here is
needed by the ordinary test command: the goldens are committed.

See tests/kernel/README.md for the scenario format and timings.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ipvs_harness import GUEST_LIB, KERNEL_TESTS, ROOT

REPO = Path(ROOT)
KDIR = Path(KERNEL_TESTS)
LIBDIR = Path(GUEST_LIB)
SCENARIOS = KDIR / "scenarios"
# Scenarios that need an input file (--input) and have no golden.
ONDEMAND = KDIR / "ondemand"
GOLDENS = KDIR / "goldens"

CACHE = Path(os.environ.get("PYIPVS_KERNEL_CACHE", "/var/cache/pyipvs-kernel"))

# The kernel package the goldens are recorded with.  The Debian package
# carries stable backports newer than the 6.1 release, so the exact
# package (not "6.1") is the reference; it is written into every result.
KERNEL_PKG = os.environ.get("PYIPVS_KERNEL_PKG", "linux-image-6.1.0-56-amd64")
SUITE = "bookworm"

# Guest userland.  python3-scapy is there for ad-hoc packet crafting, but
# the scenarios use plain raw sockets: importing scapy costs many seconds
# under TCG.
GUEST_PACKAGES = [
    "ipvsadm", "iproute2", "tcpdump", "busybox-static", "python3",
    "python3-scapy", "curl", "socat", "kmod", "iptables", "ethtool",
    "conntrack", "python3-pyftpdlib", "procps", "bsdextrautils",
    # /etc/services: ipvsadm resolves ports given by name (":http") with it.
    "netbase",
]

# Only these parts of the kernel's module tree go into the initramfs: the
# full tree is several hundred MB and the guest only needs networking,
# virtio and 9p.
MODULE_SUBTREES = [
    "kernel/net", "kernel/fs/9p", "kernel/fs/netfs", "kernel/fs/fscache",
    "kernel/lib", "kernel/crypto", "kernel/arch/x86/crypto",
    "kernel/drivers/virtio", "kernel/drivers/net/veth.ko",
    "kernel/drivers/net/dummy.ko",
]

HOST_DEPS = {  # command -> Debian package providing it
    "qemu-system-x86_64": "qemu-system-x86",
    "debootstrap": "debootstrap",
    "zstd": "zstd",
    "cpio": "cpio",
    "depmod": "kmod",
}

# The guest's /init: mount the basics and the 9p share, then hand over to
# the repository's guest-main.sh (read from the share, so editing the
# harness library needs no rebuild).  Power off whatever happens.
GUEST_INIT = r"""#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /run /tmp /share /run/netns
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/netns
modprobe virtio_pci
modprobe 9pnet_virtio
modprobe 9p
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,cache=none share /share; then
    /bin/bash /share/lib/guest-main.sh < /dev/null > /dev/ttyS0 2>&1
else
    echo "pyipvs-kernel: cannot mount the 9p share" > /dev/ttyS0
fi
sync
echo o > /proc/sysrq-trigger
busybox poweroff -f
"""


def log(msg: str) -> None:
    print(f"[ipvs-kernel {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(cmd: list[str] | str, **kw) -> subprocess.CompletedProcess:
    shell = isinstance(cmd, str)
    return subprocess.run(cmd, shell=shell, check=True, **kw)


def ensure_host_deps() -> None:
    missing = sorted({pkg for cmd, pkg in HOST_DEPS.items() if shutil.which(cmd) is None})
    if not missing:
        return
    log(f"installing host packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    sh(["apt-get", "update", "-qq"], env=env)
    sh(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)


def debian_mirror() -> str:
    """The host's own Debian mirror for SUITE, read from its apt sources.

    Nothing is hard-coded so that the tool uses whatever mirror the machine
    is configured with.
    """
    override = os.environ.get("PYIPVS_DEBIAN_MIRROR")
    if override:
        return override
    srcdir = Path("/etc/apt")
    files = [srcdir / "sources.list", *sorted((srcdir / "sources.list.d").glob("*"))]
    for f in files:
        if not f.is_file():
            continue
        text = f.read_text(errors="replace")
        if f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(
                    (m.group(1).lower(), m.group(2).strip())
                    for m in re.finditer(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M)
                )
                suites = fields.get("suites", "").split()
                if SUITE in suites and "deb" in fields.get("types", "").split():
                    return fields["uris"].split()[0]
        else:
            for line in text.splitlines():
                parts = line.split("#", 1)[0].split()
                if len(parts) >= 3 and parts[0] == "deb":
                    rest = [p for p in parts[1:] if not p.startswith("[")]
                    if len(rest) >= 2 and rest[1] == SUITE:
                        return rest[0]
    raise SystemExit(f"no apt source for {SUITE} found; set PYIPVS_DEBIAN_MIRROR")


def kernel_dir() -> Path:
    return CACHE / KERNEL_PKG


def build_kernel() -> tuple[Path, str, str]:
    """Fetch and unpack the kernel package; return (tree, kernel release, package version)."""
    kd = kernel_dir()
    stamp = kd / ".done"
    if not stamp.exists():
        log(f"fetching {KERNEL_PKG}")
        if kd.exists():
            shutil.rmtree(kd)
        kd.mkdir(parents=True)
        dl = kd / "deb"
        dl.mkdir()
        dl.chmod(0o777)  # apt-get download drops to the _apt user when it can
        sh(["apt-get", "download", KERNEL_PKG], cwd=dl)
        deb = next(dl.glob("*.deb"))
        version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True,
                                 capture_output=True, text=True).stdout.strip()
        tree = kd / "tree"
        sh(["dpkg", "-x", str(deb), str(tree)])
        release = KERNEL_PKG.removeprefix("linux-image-")
        # The .deb ships no modules.dep: modprobe needs depmod first.
        sh(["depmod", "-b", str(tree), release])
        (kd / "version").write_text(version + "\n")
        deb.unlink()
        stamp.write_text("ok\n")
    release = KERNEL_PKG.removeprefix("linux-image-")
    return kd / "tree", release, (kd / "version").read_text().strip()


def rootfs_key() -> str:
    return hashlib.sha256((SUITE + " ".join(GUEST_PACKAGES)).encode()).hexdigest()[:12]


def build_rootfs() -> Path:
    rd = CACHE / f"rootfs-{rootfs_key()}"
    stamp = CACHE / f"rootfs-{rootfs_key()}.done"
    if stamp.exists():
        return rd
    if rd.exists():
        shutil.rmtree(rd)
    mirror = debian_mirror()
    log(f"debootstrap {SUITE} minbase (+{len(GUEST_PACKAGES)} packages); takes a few minutes")
    debs = CACHE / "debs"
    debs.mkdir(exist_ok=True)
    sh(["debootstrap", "--variant=minbase", f"--include={','.join(GUEST_PACKAGES)}",
        f"--cache-dir={debs}", SUITE, str(rd), mirror])
    # Trim what a scenario never reads: docs, man pages, locales, apt lists.
    for sub in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
                "var/cache/apt", "var/lib/apt/lists", "usr/share/i18n"):
        p = rd / sub
        if p.exists():
            shutil.rmtree(p)
            p.mkdir(parents=True)
    pkgs = subprocess.run(["chroot", str(rd), "dpkg-query", "-W", "-f", "${Package} ${Version}\\n"],
                          check=True, capture_output=True, text=True).stdout
    (rd / "etc" / "pyipvs-guest-packages.txt").write_text(pkgs)
    (rd / "etc" / "hostname").write_text("oracle\n")
    stamp.write_text("ok\n")
    return rd


def initramfs_path() -> Path:
    init_key = hashlib.sha256(GUEST_INIT.encode()).hexdigest()[:8]
    return CACHE / f"initramfs-{KERNEL_PKG}-{rootfs_key()}-{init_key}.cpio.zst"


def build_initramfs(tree: Path, release: str, version: str, rootfs: Path) -> Path:
    out = initramfs_path()
    if out.exists():
        return out
    log("packing the initramfs")
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        stage = Path(tmp) / "root"
        sh(["cp", "-a", str(rootfs), str(stage)])
        moddst = stage / "lib" / "modules" / release
        if moddst.exists():
            shutil.rmtree(moddst)
        modsrc = tree / "lib" / "modules" / release
        for sub in MODULE_SUBTREES:
            src = modsrc / sub
            if not src.exists():
                continue
            dst = moddst / sub
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst)
            else:
                shutil.copy2(src, dst)
        for f in modsrc.glob("modules.builtin*"):
            shutil.copy2(f, moddst / f.name)
        if (modsrc / "modules.order").exists():
            shutil.copy2(modsrc / "modules.order", moddst / "modules.order")
        sh(["depmod", "-b", str(stage), release])
        (stage / "init").write_text(GUEST_INIT)
        (stage / "init").chmod(0o755)
        (stage / "etc" / "pyipvs-kernel-pkg").write_text(f"{KERNEL_PKG} {version}\n")
        part = Path(str(out) + ".part")
        sh(f"cd {stage} && find . -print0 | cpio --null -o -H newc --quiet | zstd -q -T2 -10 -o {part}")
        part.rename(out)
    return out


def build() -> dict:
    t0 = time.monotonic()
    CACHE.mkdir(parents=True, exist_ok=True)
    ensure_host_deps()
    tree, release, version = build_kernel()
    rootfs = build_rootfs()
    initrd = build_initramfs(tree, release, version, rootfs)
    vmlinuz = tree / "boot" / f"vmlinuz-{release}"
    # Drop stale builds of an older package list; they are large.
    for old in CACHE.glob("rootfs-*"):
        if rootfs_key() not in old.name:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    for old in CACHE.glob("initramfs-*"):
        if old != initrd:
            old.unlink()
    info = {"vmlinuz": vmlinuz, "initrd": initrd, "release": release, "version": version}
    log(f"VM ready in {time.monotonic() - t0:.1f} s: {vmlinuz.name} + {initrd.name} "
        f"({initrd.stat().st_size // (1 << 20)} MB)")
    return info


def boot(share: Path, info: dict, timeout: float) -> tuple[int, float]:
    """Boot the VM once on SHARE (lib/, scenarios/, jobs.txt in; out/ back)."""
    console = share / "console.log"
    cmd = [
        "qemu-system-x86_64",
        "-machine", "q35,accel=tcg", "-cpu", "max", "-smp", "2", "-m", "2048",
        "-nodefaults", "-nic", "none", "-display", "none", "-no-reboot",
        "-serial", f"file:{console}",
        "-kernel", str(info["vmlinuz"]), "-initrd", str(info["initrd"]),
        "-append", "console=ttyS0 panic=-1 loglevel=4 rdinit=/init",
        "-virtfs", f"local,path={share},mount_tag=share,security_model=none,id=share",
    ]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"VM still running after {timeout:.0f} s: killing it (pid {proc.pid})")
        proc.kill()
        proc.wait()
        rc = -9
    return rc, time.monotonic() - t0


def prepare_share(names_paths: list[tuple[str, Path]], inputs: list[str] | None = None) -> Path:
    share = Path(tempfile.mkdtemp(prefix="pyipvs-kernel-"))
    shutil.copytree(LIBDIR, share / "lib")
    (share / "scenarios").mkdir()
    (share / "out").mkdir()
    (share / "input").mkdir()
    for item in inputs or []:
        # FILE or NAME=FILE: the scenario finds it as $IN/NAME.
        name, _, path = item.rpartition("=")
        src = Path(path)
        shutil.copy2(src, share / "input" / (name or src.name))
    for name, path in names_paths:
        shutil.copy2(path, share / "scenarios" / f"{name}.sh")
    (share / "jobs.txt").write_text("".join(f"{n}\n" for n, _ in names_paths))
    return share


def run_batch(names_paths: list[tuple[str, Path]], timeout: float,
              inputs: list[str] | None = None) -> tuple[Path, float, int]:
    info = build()
    share = prepare_share(names_paths, inputs)
    wall = 0.0
    boots = 0
    rc = 0
    # Per process: several people may run the tool at once on one cache.
    last = CACHE / f"console-{os.getpid()}.log"
    last.write_text("")
    old_logs = sorted(CACHE.glob("console-*.log"), key=lambda p: p.stat().st_mtime)
    for old in old_logs[:-10]:
        old.unlink(missing_ok=True)
    while True:
        todo = [n for n, _ in names_paths if not (share / "out" / n / "rc").exists()]
        if not todo:
            break
        boots += 1
        log(f"boot {boots} for {len(todo)} scenario(s): {' '.join(todo)}")
        rc, w = boot(share, info, max(60.0, timeout - wall))
        wall += w
        log(f"VM exited rc={rc} after {w:.1f} s")
        # The serial console outlives the share: the guest's warnings are there.
        with open(last, "a") as fh:
            fh.write((share / "console.log").read_text(errors="replace"))
        left = [n for n in todo if not (share / "out" / n / "rc").exists()]
        if len(left) == len(todo) or wall >= timeout:
            log(f"no progress in boot {boots} (or out of time): giving up on {' '.join(left)}")
            break
    log(f"guest console: {last}")
    for name, _ in names_paths:
        out = share / "out" / name
        out.mkdir(parents=True, exist_ok=True)
        run_info = out / "run-info.txt"
        src_rc = (out / "rc").read_text().strip() if (out / "rc").exists() else "missing"
        dur = (out / "duration_s").read_text().strip() if (out / "duration_s").exists() else "?"
        run_info.write_text(
            f"accel=tcg\nkernel_pkg={KERNEL_PKG}\nkernel_version={info['version']}\n"
            f"scenario_s={dur}\nbatch_wall_s={wall:.1f}\nbatch_scenarios={len(names_paths)}\n"
            f"batch_boots={boots}\n"
            f"rc={src_rc}\n")
    return share, wall, rc


def cmd_run(args) -> int:
    scen = Path(args.scenario)
    if not scen.exists():
        cands = [d / f"{args.scenario}.sh" for d in (SCENARIOS, ONDEMAND)]
        cands = [c for c in cands if c.exists()]
        if not cands:
            raise SystemExit(f"no such scenario: {args.scenario}")
        scen = cands[0]
    name = scen.stem
    share, wall, rc = run_batch([(name, scen)], args.timeout, args.input)
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    for f in (share / "out" / name).iterdir():
        dst = outdir / f.name
        if f.is_dir():
            shutil.copytree(f, dst, dirs_exist_ok=True)
        else:
            shutil.copy2(f, dst)
    shutil.copy2(CACHE / f"console-{os.getpid()}.log", outdir / "console.log")
    shutil.rmtree(share)
    src_rc = (outdir / "rc").read_text().strip() if (outdir / "rc").exists() else "missing"
    log(f"results in {outdir} (scenario rc={src_rc})")
    return 0 if src_rc == "0" else 1


# Files a golden never keeps: bulky, per-boot noise, or harness bookkeeping.
DROP_FROM_GOLDEN = {"dmesg.txt", "duration_s", "console.log"}
MAX_PCAP = 256 * 1024
# A capture's text decode (tcpdump -nn -v -tt -r) is about 3x its pcap:
# kept for reading small captures, dropped for big ones (the pcap stays).
MAX_DECODE = 96 * 1024


def cmd_record(args) -> int:
    names = args.names or sorted(p.stem for p in SCENARIOS.glob("*.sh"))
    goldens = Path(args.out) if args.out else GOLDENS
    pairs = []
    for n in names:
        # A name under tests/kernel/scenarios, or the path of any scenario script.
        p = Path(n) if n.endswith(".sh") else SCENARIOS / f"{n}.sh"
        if not p.exists():
            raise SystemExit(f"no such scenario: {p}")
        pairs.append((p.stem, p))
    share, wall, rc = run_batch(pairs, args.timeout)
    failed = []
    for n, p in pairs:
        src = share / "out" / n
        src_rc = (src / "rc").read_text().strip() if (src / "rc").exists() else "missing"
        if src_rc != "0" and not args.keep_failed:
            failed.append(n)
            log(f"{n}: rc={src_rc}; golden NOT updated (see {src}/scenario.log)")
            continue
        # The offline backend replays the captures: a golden never loses one.
        big = [f"{f.name} ({f.stat().st_size} bytes)" for f in sorted(src.glob("*.pcap"))
               if f.stat().st_size > MAX_PCAP]
        if big and not args.allow_big_captures:
            failed.append(n)
            log(f"{n}: {', '.join(big)} over {MAX_PCAP // 1024} KiB: golden NOT updated; make the scenario "
                "send less, or pass --allow-big-captures to commit them")
            continue
        dst = goldens / n
        if dst.exists():
            shutil.rmtree(dst)
        dst.mkdir(parents=True)
        for f in sorted(src.iterdir()):
            if f.name in DROP_FROM_GOLDEN or f.is_dir():
                continue
            size = f.stat().st_size
            pcap = f.with_suffix(".pcap")
            if (f.suffix == ".txt" and pcap.exists() and size > MAX_DECODE
                    and pcap.stat().st_size <= MAX_PCAP):
                continue
            shutil.copy2(f, dst / f.name)
        shutil.copy2(p, dst / "scenario.sh")
        log(f"{n}: recorded into {dst}")
    if failed:
        log(f"failed: {' '.join(failed)}; share kept at {share}")
        return 1
    shutil.rmtree(share)
    log(f"recorded {len(pairs)} scenario(s) in {wall:.1f} s of VM time")
    return 0


def cmd_check(args) -> int:
    """Check the committed goldens without the VM (fast; usable in CI)."""
    problems = []
    for scen in sorted(SCENARIOS.glob("*.sh")):
        g = GOLDENS / scen.stem
        if not g.is_dir():
            problems.append(f"{scen.stem}: no golden (run: ipvs-kernel record {scen.stem})")
            continue
        if (g / "rc").read_text().strip() != "0":
            problems.append(f"{scen.stem}: recorded with rc != 0")
        if (g / "scenario.sh").read_bytes() != scen.read_bytes():
            problems.append(f"{scen.stem}: stale (scenario changed since it was recorded)")
        info = (g / "guest-info.txt").read_text()
        if f"kernel_pkg: {KERNEL_PKG}" not in info:
            problems.append(f"{scen.stem}: not recorded with {KERNEL_PKG}")
        # A scenario must start from an empty IPVS state.
        lnc = g / "before-ipvsadm-Lnc.txt"
        if lnc.exists() and len(lnc.read_text().splitlines()) != 2:
            problems.append(f"{scen.stem}: connections left over from an earlier scenario")
    for g in sorted(p for p in GOLDENS.iterdir() if p.is_dir()):
        if not (SCENARIOS / f"{g.name}.sh").exists():
            problems.append(f"{g.name}: golden without a scenario")
    for line in problems:
        print(line)
    print(f"{len(list(SCENARIOS.glob('*.sh')))} scenarios, {len(problems)} problem(s)")
    return 1 if problems else 0


def cmd_build(args) -> int:
    build()
    return 0


def cmd_info(args) -> int:
    print(f"cache={CACHE}\nkernel_pkg={KERNEL_PKG}\nrootfs_key={rootfs_key()}\n"
          f"initramfs={initramfs_path()} exists={initramfs_path().exists()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ipvs-kernel", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build or reuse the cached VM").set_defaults(fn=cmd_build)
    sub.add_parser("info", help="print cache paths").set_defaults(fn=cmd_info)
    sub.add_parser("check", help="check the committed goldens (no VM, no root)").set_defaults(
        fn=cmd_check, noroot=True)
    r = sub.add_parser("run", help="run one scenario in a fresh VM")
    r.add_argument("scenario", help="a path or a name under tests/kernel/scenarios")
    r.add_argument("outdir")
    r.add_argument("--timeout", type=float, default=900.0, help="VM wall-clock limit (s)")
    r.add_argument("--input", action="append", metavar="[NAME=]FILE",
                   help="copy FILE into the guest as $IN/NAME (repeatable)")
    r.set_defaults(fn=cmd_run)
    rec = sub.add_parser("record", help="re-record goldens (as few boots as possible)")
    rec.add_argument("names", nargs="*", metavar="NAME|PATH.sh",
                     help="scenarios under tests/kernel/scenarios, or scenario scripts anywhere")
    rec.add_argument("--out", metavar="DIR", help="write the goldens under DIR (default tests/kernel/goldens)")
    rec.add_argument("--allow-big-captures", action="store_true",
                     help=f"keep captures over {MAX_PCAP // 1024} KiB (refused by default, never dropped)")
    rec.add_argument("--timeout", type=float, default=2400.0, help="VM wall-clock limit (s)")
    rec.add_argument("--keep-failed", action="store_true",
                     help="record a scenario even when its script failed")
    rec.set_defaults(fn=cmd_record)
    args = ap.parse_args(argv)
    if os.geteuid() != 0 and not getattr(args, "noroot", False):
        raise SystemExit("ipvs-kernel needs root (debootstrap, chroot, 9p share as root)")
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
