"""A tiny FTP server and client for the ip_vs_ftp scenarios (runs in the VM).

Both sides are written here (not pyftpdlib/ftplib) so that every port is
fixed: the passive listener port, the active-mode data port of the client
and the server's active source port 20 are the same on every run.

Server: ``python3 ftp.py server OUTDIR K [PASV_PORT]`` - real server K
(namespace rsK, 172.16.0.(K+1):21); prints ``ready``; runs until SIGTERM.
Commands: USER, PASS, TYPE, SYST, PWD, PASV, EPSV, PORT, EPRT, LIST, RETR,
QUIT.

Client: ``python3 ftp.py client OUTFILE SRC CTRL_PORT VIP[:PORT] MODE DATA_PORT``
(MODE ``passive``, ``active``, ``epsv`` or ``eprt``) - one session from SRC:CTRL_PORT to
VIP:21 in namespace ``cli``, retrieving ``hello.txt`` once; every line
sent and received is appended to OUTFILE (``>`` sent, ``<`` received,
``=`` data, ``!`` errors).
"""

from __future__ import annotations

import re
import signal
import socket
import sys
import threading

from nsutil import netns, socket_in

PAYLOAD = "".join(f"line {i} of hello.txt from the real server\r\n" for i in range(1, 6))


def serve_session(conn: socket.socket, rs_ns: str, rs_ip: str, pasv_port: int, log) -> None:
    f = conn.makefile("rb")
    active = None
    pasv = None

    def say(text: str) -> None:
        conn.sendall((text + "\r\n").encode())

    say("220 pyipvs-oracle FTP ready.")
    for raw in f:
        line = raw.decode(errors="replace").strip()
        log(f"{conn.getpeername()} {line}")
        cmd, _, arg = line.partition(" ")
        cmd = cmd.upper()
        if cmd == "USER":
            say("331 Password required.")
        elif cmd == "PASS":
            say("230 Logged in.")
        elif cmd == "TYPE":
            say(f"200 Type set to {arg}.")
        elif cmd == "SYST":
            say("215 UNIX Type: L8")
        elif cmd == "PWD":
            say('257 "/" is the current directory.')
        elif cmd == "PASV":
            pasv = socket_in(rs_ns)
            pasv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            pasv.bind((rs_ip, pasv_port))
            pasv.listen(1)
            h = rs_ip.replace(".", ",")
            say(f"227 Entering Passive Mode ({h},{pasv_port >> 8},{pasv_port & 255}).")
        elif cmd == "EPSV":
            pasv = socket_in(rs_ns)
            pasv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            pasv.bind((rs_ip, pasv_port))
            pasv.listen(1)
            say(f"229 Entering Extended Passive Mode (|||{pasv_port}|).")
        elif cmd == "PORT":
            nums = [int(x) for x in arg.split(",")]
            active = (".".join(map(str, nums[:4])), nums[4] * 256 + nums[5])
            say("200 PORT command successful.")
        elif cmd == "EPRT":
            _, _af, host, port, _ = arg.split(arg[0])
            active = (host, int(port))
            say("200 EPRT command successful.")
        elif cmd in ("RETR", "LIST"):
            say("150 Opening BINARY mode data connection.")
            try:
                if pasv is not None:
                    pasv.settimeout(10)
                    data, _ = pasv.accept()
                    pasv.close()
                    pasv = None
                else:
                    data = socket_in(rs_ns)
                    data.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    data.settimeout(10)
                    data.bind((rs_ip, 20))
                    data.connect(active)
                body = PAYLOAD if cmd == "RETR" else "-rw-r--r-- 1 ftp ftp 235 hello.txt\r\n"
                data.sendall(body.encode())
                data.close()
                say("226 Transfer complete.")
            except OSError as exc:
                log(f"data connection failed: {exc}")
                say("425 Can't open data connection.")
        elif cmd == "QUIT":
            say("221 Goodbye.")
            break
        else:
            say("502 Command not implemented.")
    conn.close()


def server(outdir: str, k: int, pasv_port: int) -> int:
    ns, ip = f"rs{k}", f"172.16.0.{k + 1}"
    logf = open(f"{outdir}/rs{k}-21-ftp.log", "a", buffering=1)
    lock = threading.Lock()

    def log(text: str) -> None:
        with lock:
            logf.write(text + "\n")

    ls = socket_in(ns)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((ip, 21))
    ls.listen(8)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    print("ready", flush=True)
    while True:
        conn, _ = ls.accept()
        threading.Thread(target=serve_session, args=(conn, ns, ip, pasv_port, log),
                         daemon=True).start()


def client(outfile: str, src: str, cport: int, vip: str, mode: str, dport: int) -> int:
    # VIP or VIP:PORT (an FTP service on another port, ip_vs_ftp ports=21,2100).
    vip, _, port = vip.partition(":")
    out = open(outfile, "a", buffering=1)
    out.write(f"# session {mode} from {src}:{cport} to {vip}:{port or 21}, data port {dport}\n")
    ctl = socket_in("cli")
    ctl.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ctl.settimeout(10)
    ctl.bind((src, cport))
    ctl.connect((vip, int(port or 21)))
    f = ctl.makefile("rb")

    def reply() -> str:
        line = f.readline().decode(errors="replace").rstrip("\r\n")
        out.write(f"< {line}\n")
        return line

    def send(text: str) -> str:
        out.write(f"> {text}\n")
        ctl.sendall((text + "\r\n").encode())
        return reply()

    rc = 0
    try:
        reply()
        send("USER anonymous")
        send("PASS oracle@")
        send("TYPE I")
        if mode in ("passive", "epsv"):
            if mode == "passive":
                r = send("PASV")
                m = re.search(r"\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)", r)
                nums = [int(x) for x in m.groups()]
                addr = (".".join(map(str, nums[:4])), nums[4] * 256 + nums[5])
                out.write(f"= 227 address {addr[0]}:{addr[1]}\n")
            else:
                r = send("EPSV")
                m = re.search(r"\(\|\|\|(\d+)\|\)", r)
                addr = (vip, int(m.group(1)))
                out.write(f"= 229 port {addr[1]} (address: the control connection's, {vip})\n")
            data = socket_in("cli")
            data.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            data.settimeout(10)
            data.bind((src, dport))
            data.connect(addr)
            send("RETR hello.txt")
        else:
            with netns("cli"):
                ls = socket.socket()
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.settimeout(10)
            ls.bind((src, dport))
            ls.listen(1)
            if mode == "eprt":
                send(f"EPRT |1|{src}|{dport}|")
            else:
                h = src.replace(".", ",")
                send(f"PORT {h},{dport >> 8},{dport & 255}")
            send("RETR hello.txt")
            data, peer = ls.accept()
            out.write(f"= data connection from {peer[0]}:{peer[1]}\n")
            ls.close()
        body = b""
        while True:
            chunk = data.recv(4096)
            if not chunk:
                break
            body += chunk
        data.close()
        out.write(f"= {len(body)} bytes, intact={body.decode(errors='replace') == PAYLOAD}\n")
        reply()
        send("QUIT")
    except (OSError, AttributeError) as exc:
        out.write(f"! {type(exc).__name__}: {exc}\n")
        rc = 1
    ctl.close()
    return rc


def main(argv: list[str]) -> int:
    if argv[0] == "server":
        return server(argv[1], int(argv[2]), int(argv[3]) if len(argv) > 3 else 50000)
    if argv[0] == "client":
        return client(argv[1], argv[2], int(argv[3]), argv[4], argv[5], int(argv[6]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
