"""Issue 7 end to end: vsftpd behind the AF_PACKET director, curl and ftplib in front.

The module builds its own three namespaces (their names carry this
process's pid, so it never meets ``tools/ipvs-lab``'s lab or another run)::

    <tag>-cli                 <tag>-dir                        <tag>-rs
    198.51.100.2 c0 ==== d_out [ipvsd --ftp 21] d_rs ==== eth0 172.16.0.2
                          VIPs 203.0.113.5, .6    172.16.0.1     vsftpd :21 (data from :20)
                                                                 vsftpd :2121 (data from :2120)

joined by veth pairs only, and runs ``tools/ipvsd`` there in spare mode
with the FTP helper on virtual port 21 and two services::

    -A -t 203.0.113.5:21 -s rr ; -a -t 203.0.113.5:21 -r 172.16.0.2:21 -m     (same port)
    -A -t 203.0.113.6:21 -s rr ; -a -t 203.0.113.6:21 -r 172.16.0.2:2121 -m   (mapped port)

For each service a ~1 MiB random file is fetched in every mode the kernel's
``ip_vs_ftp`` handles, with curl (PASV, EPSV, PORT, EPRT) and with Python's
ftplib (PASV, PORT; run inside the client's namespace in a subprocess).
Each test checks the file's SHA-256, that the command or reply the mode is
about was really sent (and, for passive replies, rewritten to the VIP), and
that ``ipvsadm -Lnc`` lists the data connection the helper expected.

The active-mode data connection comes from the real server's control port
minus one (the kernel's rule, and PyIPVS's): vsftpd's
``connect_from_port_20=YES`` with ``ftp_data_port`` 20 and 2120.

Everything (processes by PID, namespaces, files) is removed at the end of
the module, whatever happened.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from ipvs_harness.lab import alive, ip_batch, nsexec, run, stop_pid, wait_answering

pytestmark = pytest.mark.lab

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Under the run's lab prefix (IPVS_LAB_PREFIX, see conftest.py), so that
# two runs, or two developers' runs, never share or remove each other's.
PREFIX = f"{os.environ.get('IPVS_LAB_PREFIX', 'py')}ftp"
TAG = f"{PREFIX}{os.getpid()}"
NS_CLI, NS_DIR, NS_RS = f"{TAG}-cli", f"{TAG}-dir", f"{TAG}-rs"
CLIENT = "198.51.100.2"
OUTER = "198.51.100.1"
GATEWAY = "172.16.0.1"
RS = "172.16.0.2"
FILE = "data.bin"
FILE_SIZE = 1 << 20
TIMEOUT = 20  # seconds, per transfer; a 1 MiB file takes well under one

# name: (VIP, virtual port, real server's control port, its active data port, passive range)
SERVICES = {
    "same-port": ("203.0.113.5", 21, 21, 20, (30000, 30009)),
    "mapped-port": ("203.0.113.6", 21, 2121, 2120, (30010, 30019)),
}

VSFTPD_CONF = """\
listen=YES
listen_ipv6=NO
listen_address={rs}
listen_port={port}
background=NO
seccomp_sandbox=NO
anonymous_enable=YES
no_anon_password=YES
anon_root={root}
local_enable=NO
write_enable=NO
dirmessage_enable=NO
hide_ids=YES
connect_from_port_20=YES
ftp_data_port={data_port}
port_enable=YES
pasv_enable=YES
pasv_min_port={pasv_lo}
pasv_max_port={pasv_hi}
secure_chroot_dir={empty}
nopriv_user=ftp
ftp_username=ftp
ssl_enable=NO
tcp_wrappers=NO
syslog_enable=NO
xferlog_enable=YES
xferlog_std_format=NO
log_ftp_protocol=YES
vsftpd_log_file={log}
idle_session_timeout=60
data_connection_timeout=30
accept_timeout=15
connect_timeout=15
"""

# ftplib inside the client's namespace: ftplib opens its data sockets itself,
# so the whole client runs there. trust_server_pasv_ipv4_address makes it
# connect to the address the (rewritten) 227 reply names, so a reply the
# helper failed to rewrite fails the transfer instead of being ignored.
FTPLIB_CLIENT = f"""\
import ftplib, sys
host, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
f = ftplib.FTP()
f.trust_server_pasv_ipv4_address = True
f.set_debuglevel(1)
f.connect(host, port, timeout={TIMEOUT})
f.login()
for i, mode in enumerate(sys.argv[4:]):
    f.set_pasv(mode == "pasv")
    with open(f"{{out}}.{{i}}", "wb") as o:
        f.retrbinary("RETR {FILE}", o.write)
f.quit()
"""


# ---------------------------------------------------------------- plumbing


def sysctl(ns: str, settings: dict[str, str]) -> None:
    script = "; ".join(f"echo {v} > /proc/sys/{k.replace('.', '/')}" for k, v in settings.items())
    run(*nsexec(ns, "sh", "-c", script))


def remove_namespace(ns: str) -> None:
    """Stop what still runs in one of this module's namespaces, then delete it.

    Whatever runs there was started by this module (vsftpd's session
    processes, a curl that hung): the namespace's name is ours alone.
    """
    r = run("ip", "netns", "pids", ns, check=False)
    for tok in r.stdout.split():
        if tok.isdigit():
            stop_pid(int(tok), grace=2.0)
    run("ip", "netns", "del", ns, check=False)


def remove_stale_namespaces() -> None:
    """Namespaces of an earlier run of this module that was killed (its pid is gone)."""
    out = run("ip", "netns", "list", check=False).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.strip() else ""
        m = re.fullmatch(rf"{PREFIX}(\d+)-(cli|dir|rs)", name)
        if m and int(m.group(1)) != os.getpid() and not os.path.exists(f"/proc/{m.group(1)}"):
            remove_namespace(name)


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the FTP lab checks need root (network namespaces)"
    for tool, why in (("ip", "iproute2"), ("curl", "curl"), ("vsftpd", "vsftpd"), ("ethtool", "ethtool")):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"the FTP lab checks need {tool} (apt-get install {why})"
    if run("ip", "netns", "list", check=False).returncode != 0:
        return "ip netns is not usable here"
    return None


def vsftpd_path() -> str:
    return shutil.which("vsftpd") or "/usr/sbin/vsftpd"


# ---------------------------------------------------------------- the topology


class FTPLab:
    """The running topology: the tests' handles on it."""

    def __init__(self, tmp: str, strict: bool) -> None:
        self.tmp = tmp
        self.strict = strict
        self.pids: dict[str, int] = {}
        self.sha256 = ""

    # processes

    def start(self, name: str, ns: str, cmd: list[str], env: dict | None = None) -> int:
        log = open(os.path.join(self.tmp, f"{name}.log"), "w")
        p = subprocess.Popen(nsexec(ns, *cmd), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, env={**os.environ, **(env or {})})
        log.close()
        # ip netns exec execs the command: this is its real pid.
        self.pids[name] = p.pid
        return p.pid

    def log_tail(self, name: str, n: int = 3000) -> str:
        try:
            with open(os.path.join(self.tmp, f"{name}.log"), errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return "(no log)"

    def wait_listen(self, port: int, name: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if run(*nsexec(NS_RS, "ss", "-Hltn", f"src {RS}:{port}"), check=False).stdout.strip():
                return
            if not alive(self.pids[name]):
                break
            time.sleep(0.05)
        raise RuntimeError(f"{name} does not listen on {RS}:{port}:\n{self.log_tail(name)}")

    # the director

    def ipvsadm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(*nsexec(NS_DIR, sys.executable, os.path.join(ROOT, "tools", "ipvsadm"), *args), check=check)

    def conns(self) -> set[tuple[str, str, str, str]]:
        """``ipvsadm -Lnc`` as (state, source, virtual, destination) rows."""
        rows = set()
        for line in self.ipvsadm("-Lnc").stdout.splitlines()[2:]:
            f = line.split()
            if len(f) >= 6 and f[0] == "TCP":
                rows.add((f[2], f[3], f[4], f[5]))
        return rows

    def csum_errors(self) -> dict[str, int]:
        """The receivers' checksum error counters (client and real server)."""
        vals = {}
        for ns in (NS_CLI, NS_RS):
            out = run(*nsexec(ns, "nstat", "-asz", "TcpInCsumErrors", "IpExtInCsumErrors")).stdout
            for m in re.finditer(r"^(\w+)\s+(\d+)", out, re.M):
                vals[f"{ns}:{m.group(1)}"] = int(m.group(2))
        assert len(vals) == 4, f"nstat did not give both checksum counters in both namespaces: {vals}"
        return vals

    def evidence(self) -> str:
        listing = self.ipvsadm("-Lnc", check=False).stdout
        return f"--- ipvsadm -Lnc\n{listing}--- ipvsd log (tail)\n{self.log_tail('ipvsd')}"


def build(lab: FTPLab) -> None:
    for ns in (NS_CLI, NS_DIR, NS_RS):
        run("ip", "netns", "add", ns)
    # veth pairs created straight inside the namespaces: none ever exists in the host's.
    run("ip", "link", "add", "c0", "netns", NS_CLI, "type", "veth", "peer", "name", "d_out", "netns", NS_DIR)
    run("ip", "link", "add", "eth0", "netns", NS_RS, "type", "veth", "peer", "name", "d_rs", "netns", NS_DIR)
    for ns, devs in ((NS_CLI, ("c0",)), (NS_DIR, ("d_out", "d_rs")), (NS_RS, ("eth0",))):
        s = {"net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.default.rp_filter": "0",
             "net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}
        s.update({f"net.ipv4.conf.{d}.rp_filter": "0" for d in devs})
        sysctl(ns, s)
    sysctl(NS_DIR, {"net.ipv4.ip_forward": "0"})  # spare mode: the kernel stays out of the way
    ip_batch(NS_CLI, ["link set lo up", "link set c0 up", f"addr add {CLIENT}/24 dev c0",
                      "route add 203.0.113.0/24 dev c0"])
    ip_batch(NS_RS, ["link set lo up", "link set eth0 up", f"addr add {RS}/24 dev eth0",
                     f"route add default via {GATEWAY}"])
    ip_batch(NS_DIR, ["link set lo up", "link set d_out up", "link set d_rs up"])
    if lab.strict:
        # veth marks what it receives CHECKSUM_UNNECESSARY while rx offload is
        # on: a wrong checksum in a rewritten segment would go unseen. Off on
        # the receivers, and the director's egress sends no partial checksums.
        for ns, dev, what in ((NS_CLI, "c0", ("rx", "off")), (NS_RS, "eth0", ("rx", "off")),
                              (NS_DIR, "d_out", ("tx", "off", "tso", "off")),
                              (NS_DIR, "d_rs", ("tx", "off", "tso", "off"))):
            run(*nsexec(ns, "ethtool", "-K", dev, *what))

    # the file, readable by vsftpd's unprivileged anonymous user
    os.chmod(lab.tmp, 0o755)
    root = os.path.join(lab.tmp, "ftproot")
    empty = os.path.join(lab.tmp, "empty")
    os.mkdir(root, 0o755)
    os.mkdir(empty, 0o755)
    data = os.urandom(FILE_SIZE)
    with open(os.path.join(root, FILE), "wb") as f:
        f.write(data)
    os.chmod(os.path.join(root, FILE), 0o644)
    lab.sha256 = hashlib.sha256(data).hexdigest()
    for _svc, (_vip, _vport, port, data_port, (lo, hi)) in SERVICES.items():
        conf = os.path.join(lab.tmp, f"vsftpd-{port}.conf")
        with open(conf, "w") as f:
            f.write(VSFTPD_CONF.format(rs=RS, port=port, root=root, data_port=data_port, pasv_lo=lo, pasv_hi=hi,
                                       empty=empty, log=os.path.join(lab.tmp, f"vsftpd-{port}.xfer")))
        lab.start(f"vsftpd-{port}", NS_RS, [vsftpd_path(), conf])
    for _svc, (_vip, _vport, port, _dp, _r) in SERVICES.items():
        lab.wait_listen(port, f"vsftpd-{port}")

    procfs = os.path.join(lab.tmp, "proc")
    lab.start("ipvsd", NS_DIR, [sys.executable, os.path.join(ROOT, "tools", "ipvsd"), "--foreground",
                                "--ftp", "21", "--procfs-dir", procfs, "--state", os.path.join(lab.tmp, "state"),
                                "--outer", "d_out", "--outer-addr", f"{OUTER}/24",
                                "--inner", "d_rs", "--inner-addr", f"{GATEWAY}/24", "--mode", "spare"],
              env={"PYTHONPATH": ROOT})
    wait_answering(lab.pids["ipvsd"], lab.ipvsadm, lambda: lab.log_tail("ipvsd"))
    for _svc, (vip, vport, port, _dp, _r) in SERVICES.items():
        lab.ipvsadm("-A", "-t", f"{vip}:{vport}", "-s", "rr")
        lab.ipvsadm("-a", "-t", f"{vip}:{vport}", "-r", f"{RS}:{port}", "-m")
    # Neighbour caches warm on both sides before the first transfer.
    for vip, *_ in SERVICES.values():
        run(*nsexec(NS_CLI, "ping", "-c", "1", "-W", "2", vip), check=False)
    run(*nsexec(NS_RS, "ping", "-c", "1", "-W", "2", GATEWAY), check=False)


def teardown(lab: FTPLab) -> None:
    # The director first (it may hold state for the servers' last packets),
    # then the servers, then whatever is left in the namespaces.
    for name in sorted(lab.pids, key=lambda n: n != "ipvsd"):
        stop_pid(lab.pids[name], grace=10.0 if name == "ipvsd" else 3.0)
    for ns in (NS_CLI, NS_DIR, NS_RS):
        remove_namespace(ns)


@pytest.fixture(scope="module", params=["offloads", "strict"])
def ftplab(request):
    """The topology, once with the veths' offloads on, once with checksums
    verified by the receivers ("strict", as ``ipvs-lab up --strict``)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    remove_stale_namespaces()
    tmp = tempfile.mkdtemp(prefix=f"{TAG}-")
    lab = FTPLab(tmp, request.param == "strict")
    try:
        try:
            build(lab)
        except BaseException:
            sys.stderr.write(f"ipvsd log:\n{lab.log_tail('ipvsd')}\n")
            raise
        yield lab
    finally:
        teardown(lab)
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- checks


def sha256_of(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def data_ports(trace: str, mode: str) -> list[int]:
    """The ports of the data connections in a client's protocol trace, in order.

    Passive: the server's port from each 227 or 229 reply; active: the
    client's port from each PORT or EPRT command.
    """
    if mode == "pasv":
        return [int(m[4]) * 256 + int(m[5])
                for m in re.findall(r"227 [^(\n]*\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)", trace)]
    if mode == "epsv":
        return [int(m) for m in re.findall(r"229 [^(\n]*\(\|\|\|(\d+)\|\)", trace)]
    if mode == "port":
        return [int(a) * 256 + int(b) for a, b in re.findall(r"PORT 198,51,100,2,(\d+),(\d+)", trace)]
    return [int(m) for m in re.findall(r"EPRT \|1\|198\.51\.100\.2\|(\d+)\|", trace)]


def expect_data_conn(ftplab: FTPLab, before: set, svc: str, mode: str, port: int) -> None:
    """The data connection the helper expected is in ``ipvsadm -Lnc``, with the right ends.

    ``port`` is the one the mode is about: the server's passive port, or
    the client's active port.
    """
    vip, vport, _port, data_port, (lo, hi) = SERVICES[svc]
    rows = ftplab.conns() - before
    if mode in ("pasv", "epsv"):
        assert lo <= port <= hi, f"passive port {port} outside vsftpd's range {lo}-{hi}"
        want_v, want_d = f"{vip}:{port}", f"{RS}:{port}"
        # The client's port was unknown when the helper made the entry
        # (NO_CPORT); the client's SYN must have filled it in.
        ok = [r for r in rows if r[2] == want_v and r[3] == want_d and r[1].startswith(f"{CLIENT}:")
              and not r[1].endswith(":0")]
        want_s = f"{CLIENT}:<its port>"
    else:
        want_s, want_v, want_d = f"{CLIENT}:{port}", f"{vip}:{vport - 1}", f"{RS}:{data_port}"
        ok = [r for r in rows if r[1] == want_s and r[2] == want_v and r[3] == want_d]
    assert ok, (f"ipvsadm -Lnc has no new data connection {want_s} -> {want_v} -> {want_d}; new rows: "
                f"{sorted(rows)}\n{ftplab.evidence()}")


def one_data_port(trace: str, mode: str) -> int:
    ports = data_ports(trace, mode)
    assert len(ports) == 1, f"expected one {mode.upper()} exchange in the client's trace, got {ports}:\n{trace[-3000:]}"
    return ports[0]


CURL_MODES = {
    # mode: (curl options, the command the trace must show, one it must not)
    "pasv": (["--ftp-pasv", "--disable-epsv"], "> PASV", "> EPSV"),
    "epsv": (["--ftp-pasv"], "> EPSV", "> PASV"),
    "port": (["-P", "-", "--disable-eprt"], "> PORT", "> EPRT"),
    "eprt": (["-P", "-"], "> EPRT", "> PORT"),
}


def test_helper_loaded_for_port_21(ftplab):
    deadline = time.monotonic() + 5
    path = os.path.join(ftplab.tmp, "proc", "net", "ip_vs_app")
    text = ""
    while time.monotonic() < deadline:  # ipvsd rewrites its /proc views every second
        if os.path.exists(path):
            text = open(path).read()
            if re.search(r"^TCP\s+21\s+\d+\s+ftp\s*$", text, re.M):
                return
        time.sleep(0.2)
    pytest.fail(f"/proc/net/ip_vs_app does not list ftp on TCP 21:\n{text}")


@pytest.mark.parametrize("mode", list(CURL_MODES))
@pytest.mark.parametrize("svc", list(SERVICES))
def test_curl_transfer(ftplab, svc, mode):
    vip, vport, *_ = SERVICES[svc]
    opts, must, must_not = CURL_MODES[mode]
    out = os.path.join(ftplab.tmp, f"curl-{svc}-{mode}.bin")
    before, csum0 = ftplab.conns(), ftplab.csum_errors()
    r = run(*nsexec(NS_CLI, "curl", "-v", "-sS", "--max-time", str(TIMEOUT), "--connect-timeout", "5",
                    *opts, "-o", out, f"ftp://{vip}:{vport}/{FILE}"), check=False, timeout=TIMEOUT + 10)
    trace = r.stderr
    assert r.returncode == 0, f"curl {' '.join(opts)} failed ({r.returncode}):\n{trace[-3000:]}\n{ftplab.evidence()}"
    assert must in trace, f"curl did not send {must[2:]}:\n{trace[-3000:]}"
    assert must_not not in trace, f"curl fell back to {must_not[2:]}:\n{trace[-3000:]}"
    if mode == "pasv":
        # The real server said 172,16,0,2: the client must see the VIP.
        assert re.search(rf"< 227 [^\n]*\({vip.replace('.', ',')},\d+,\d+\)", trace), trace[-3000:]
    if mode == "epsv":
        assert re.search(r"< 229 [^\n]*\(\|\|\|\d+\|\)", trace), trace[-3000:]
    assert sha256_of(out) == ftplab.sha256, f"{FILE} arrived corrupted ({os.path.getsize(out)} bytes)"
    assert ftplab.csum_errors() == csum0, "checksum errors at the receivers"
    expect_data_conn(ftplab, before, svc, mode, one_data_port(trace, mode))


def ftplib_session(ftplab: FTPLab, svc: str, modes: list[str], name: str) -> tuple[str, list[str]]:
    """Run ftplib in the client's namespace: one login, one RETR per mode; its trace and files."""
    vip, vport, *_ = SERVICES[svc]
    out = os.path.join(ftplab.tmp, f"ftplib-{svc}-{name}")
    r = run(*nsexec(NS_CLI, sys.executable, "-c", FTPLIB_CLIENT, vip, str(vport), out, *modes),
            check=False, timeout=TIMEOUT * len(modes) + 10)
    trace = r.stdout + r.stderr
    assert r.returncode == 0, f"ftplib ({' '.join(modes)}) failed:\n{trace[-3000:]}\n{ftplab.evidence()}"
    return trace, [f"{out}.{i}" for i in range(len(modes))]


@pytest.mark.parametrize("mode", ["pasv", "port"])
@pytest.mark.parametrize("svc", list(SERVICES))
def test_ftplib_transfer(ftplab, svc, mode):
    vip = SERVICES[svc][0]
    before, csum0 = ftplab.conns(), ftplab.csum_errors()
    trace, (out,) = ftplib_session(ftplab, svc, [mode], mode)
    if mode == "pasv":
        assert re.search(rf"227 [^\n]*\({vip.replace('.', ',')},\d+,\d+\)", trace), trace[-3000:]
    else:
        assert "*cmd* 'PORT 198,51,100,2," in trace, trace[-3000:]
    assert sha256_of(out) == ftplab.sha256, f"{FILE} arrived corrupted ({os.path.getsize(out)} bytes)"
    assert ftplab.csum_errors() == csum0, "checksum errors at the receivers"
    expect_data_conn(ftplab, before, svc, mode, one_data_port(trace, mode))


@pytest.mark.parametrize("svc", list(SERVICES))
def test_ftplib_several_transfers_one_control_connection(ftplab, svc):
    """Three 227 rewrites on one control connection, each one byte longer
    than the server's reply (172,16,0,2 -> 203,0,113,x): every later reply
    (150, 226, the next 227, 221) is only understood if the director
    shifts the server's sequence numbers and the client's acknowledgements
    by the accumulated delta. An active transfer in between."""
    vip = SERVICES[svc][0]
    modes = ["pasv", "pasv", "port", "pasv"]
    before, csum0 = ftplab.conns(), ftplab.csum_errors()
    trace, outs = ftplib_session(ftplab, svc, modes, "several")
    replies = re.findall(r"227 [^\n]*\((\d+,\d+,\d+,\d+),\d+,\d+\)", trace)
    assert replies == [vip.replace(".", ",")] * 3, f"227 replies not all rewritten to the VIP: {replies}"
    assert trace.count("'226 ") == len(modes), f"not every transfer completed:\n{trace[-3000:]}"
    assert "'221 " in trace, f"no 221 reply to QUIT:\n{trace[-3000:]}"
    for out in outs:
        assert sha256_of(out) == ftplab.sha256, f"{out} arrived corrupted ({os.path.getsize(out)} bytes)"
    assert ftplab.csum_errors() == csum0, "checksum errors at the receivers"
    for p in data_ports(trace, "pasv"):
        expect_data_conn(ftplab, before, svc, "pasv", p)
    (p,) = data_ports(trace, "port")
    expect_data_conn(ftplab, before, svc, "port", p)
