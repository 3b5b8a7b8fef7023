# oracle.sh for the PyIPVS namespace lab: the same functions as
# ipvs_harness/guest/oracle.sh, so a scenario runs unchanged on PyIPVS.
#
# Started by ipvs_harness/diff/lab.py, which sets OUT, LIB (this directory),
# PYIPVS_DIFF_PREFIX (namespace prefix, pyipvs-diff-PID-), PYIPVS_DIFF_RUN
# (a private run directory), IPVS_SOCKET (ipvsd's control socket) and PATH
# (a directory whose `ipvsadm` is tools/ipvsadm), and which removes every
# namespace and process of the run afterwards, even when the script fails.
#
#   netns ${_PYD_P}cli: eth0 198.51.100.2.. /24 --- cli0 [198.51.100.1 by ipvsd]
#                                               ${_PYD_P}dir: tools/ipvsd on AF_PACKET
#   netns ${_PYD_P}rsK: eth0 172.16.0.(K+1)/24 --- rsK -- br0 [172.16.0.1 by ipvsd]
#
# Differences from the kernel's lab, and why: the director is a namespace of
# its own (not the root namespace) and its kernel holds no addresses (spare
# mode: ipvsd answers ARP and routes); VIPs are ipvsd's services, so add_vip
# only records them; mark_dst cannot mark (the AF_PACKET driver has no packet
# marks); /proc views and sysctls go through the daemon's socket.

export PATH LC_ALL=C LANG=C
: "${OUT:?OUT must be set}" "${LIB:?LIB must be set}" "${PYIPVS_DIFF_PREFIX:?}" "${PYIPVS_DIFF_RUN:?}"
_PYD_P=$PYIPVS_DIFF_PREFIX
_PYD_RUN=$PYIPVS_DIFF_RUN
_PYD_ROOT=$(cd "$LIB/../../.." && pwd)
SERVERS_PID=
CAP_PIDS=
CAP_NAMES=
NSERVERS=0

die() { echo "oracle.sh (pyipvs lab): $*" >&2; exit 1; }
# Every process this library starts, for lab.py's cleanup if we die.
track() { echo "$1" >> "$_PYD_RUN/pids"; }
# load_ipvs - IPVS without a lab (transcript scenarios): a control-plane-only
# ipvsd; setup_nat later moves its rules to one with a data path.
IPVSD_CTL_ONLY=
load_ipvs() {
    [ -n "$IPVSD_PID" ] && return 0
    IPVSD_CTL_ONLY=1
    start_ipvsd_cmd python3 "$_PYD_ROOT/tools/ipvsd" --foreground --socket "$IPVS_SOCKET"
}

setup_nat() {
    local n=$1 k a
    shift
    NSERVERS=$n
    ip netns add "${_PYD_P}dir" || die "netns add"
    ip netns add "${_PYD_P}cli" || die "netns add"
    for k in $(seq 1 "$n"); do ip netns add "${_PYD_P}rs$k" || die "netns add"; done
    ip link add cli0 netns "${_PYD_P}dir" type veth peer name eth0 netns "${_PYD_P}cli" || die "veth cli"
    {
        echo "link set dev lo up"
        echo "link add br0 type bridge forward_delay 0"
        echo "link set dev br0 addrgenmode none"
        echo "link set dev cli0 addrgenmode none"
        echo "link set dev cli0 up"
    } | ip -n "${_PYD_P}dir" -batch - || die "ip -batch (director)"
    for k in $(seq 1 "$n"); do
        ip link add "rs$k" netns "${_PYD_P}dir" type veth peer name eth0 netns "${_PYD_P}rs$k" || die "veth rs$k"
        printf '%s\n' "link set dev rs$k addrgenmode none" "link set dev rs$k master br0" \
            "link set dev rs$k up" | ip -n "${_PYD_P}dir" -batch - || die "ip -batch (director rs$k)"
        printf '%s\n' "link set dev lo up" "link set dev eth0 addrgenmode none" \
            "addr add 172.16.0.$((k + 1))/24 dev eth0" "link set dev eth0 up" \
            "route add default via 172.16.0.1" | ip -n "${_PYD_P}rs$k" -batch - || die "ip -batch (rs$k)"
        ip netns exec "${_PYD_P}rs$k" ethtool -K eth0 tx off > /dev/null 2>&1
    done
    ip -n "${_PYD_P}dir" link set dev br0 up || die "br0 up"
    {
        echo "link set dev lo up"
        echo "link set dev eth0 addrgenmode none"
        for a in "$@"; do echo "addr add $a/24 dev eth0"; done
        echo "link set dev eth0 up"
        echo "route add default via 198.51.100.1"
    } | ip -n "${_PYD_P}cli" -batch - || die "ip -batch (cli)"
    ip netns exec "${_PYD_P}cli" ethtool -K eth0 tx off > /dev/null 2>&1
    if [ -n "$IPVSD_CTL_ONLY" ]; then
        restart_ipvsd
    else
        start_ipvsd
    fi
}

# The director: ipvsd on AF_PACKET, spare mode (the kernel has no addresses).
IPVSD_PID=
start_ipvsd() {
    IPVSD_CTL_ONLY=
    start_ipvsd_cmd ip netns exec "${_PYD_P}dir" python3 "$_PYD_ROOT/tools/ipvsd" --foreground \
        --socket "$IPVS_SOCKET" --outer cli0 --outer-addr 198.51.100.1/24 --inner br0 \
        --inner-addr 172.16.0.1/24 --mode spare --strict-checksums "$@"
}
start_ipvsd_cmd() {
    local k
    "$@" >> "$_PYD_RUN/ipvsd.log" 2>&1 &
    IPVSD_PID=$!
    track "$IPVSD_PID"
    for k in $(seq 1 200); do
        ipvsadm -Ln > /dev/null 2>&1 && return 0
        kill -0 "$IPVSD_PID" 2>/dev/null || die "ipvsd died: $(tail -5 "$_PYD_RUN/ipvsd.log")"
        sleep 0.05
    done
    die "ipvsd did not answer: $(tail -5 "$_PYD_RUN/ipvsd.log")"
}

# modprobe ip_vs_ftp: ipvsd loads its FTP helper at start (--ftp), so the
# director restarts with it, keeping its rules.  Other modules: nothing to do.
modprobe() {
    case "$1" in
        ip_vs_ftp) restart_ipvsd --ftp 21 ;;
        ip_vs*) load_ipvs ;;
    esac
    return 0
}

# restart_ipvsd [OPTION...] - a new director (data path if the lab exists),
# with the old one's rules.
restart_ipvsd() {
    local rules k
    rules=$(ipvsadm -S -n) || die "ipvsadm -S"
    kill "$IPVSD_PID" 2>/dev/null
    for k in $(seq 1 100); do kill -0 "$IPVSD_PID" 2>/dev/null || break; sleep 0.05; done
    if ip netns list | grep -q "^${_PYD_P}dir"; then
        start_ipvsd "$@"
    else
        start_ipvsd_cmd python3 "$_PYD_ROOT/tools/ipvsd" --foreground --socket "$IPVS_SOCKET" "$@"
    fi
    [ -z "$rules" ] || printf '%s\n' "$rules" | ipvsadm -R || die "ipvsadm -R"
}

# VIPs are whatever ipvsd's services name; nothing to configure.
add_vip() { echo "$1" >> "$_PYD_RUN/vips"; }

start_servers() {
    local i
    python3 "$LIB/nsrun.py" servers.py "$OUT" "$@" > "$_PYD_RUN/servers.out" 2> "$OUT/servers.err" &
    SERVERS_PID=$!
    track "$SERVERS_PID"
    for i in $(seq 1 300); do
        grep -q ready "$_PYD_RUN/servers.out" 2>/dev/null && break
        kill -0 "$SERVERS_PID" 2>/dev/null || die "servers.py died: $(cat "$OUT/servers.err")"
        sleep 0.05
    done
    grep -q ready "$_PYD_RUN/servers.out" || die "servers not ready"
    [ -s "$OUT/servers.err" ] || rm -f "$OUT/servers.err"
}
start_httpd() { start_servers "$@"; }

ipvs_rules() { ipvsadm -R || die "ipvsadm -R failed"; }
vs_sysctl() { python3 "$LIB/ctl.py" sysctl "$1" "$2" || die "sysctl vs.$1=$2"; }
snap() { python3 "$LIB/ctl.py" proc "${1#/proc/net/}" > "$2"; }
dump_sysctl() { python3 "$LIB/ctl.py" sysctl-dump > "$1"; }

dump_ipvs() {
    local p=$OUT/${1:-}
    ipvsadm -Ln > "${p}ipvsadm-Ln.txt"
    ipvsadm -Ln --stats > "${p}ipvsadm-Ln-stats.txt"
    ipvsadm -Ln --rate > "${p}ipvsadm-Ln-rate.txt"
    ipvsadm -Ln --exact --stats > "${p}ipvsadm-Ln-exact-stats.txt"
    ipvsadm -Ln --timeout > "${p}ipvsadm-Ln-timeout.txt"
    ipvsadm -Ln --persistent-conn > "${p}ipvsadm-Ln-persistent-conn.txt"
    ipvsadm -Lnc > "${p}ipvsadm-Lnc.txt"
    ipvsadm -S -n > "${p}ipvsadm-S-n.txt"
    python3 "$LIB/ctl.py" dump "$p"
}

dump_conn() {
    local p=$OUT/${1:-}
    ipvsadm -Lnc > "${p}ipvsadm-Lnc.txt"
    python3 "$LIB/ctl.py" proc ip_vs_conn > "${p}proc-net-ip_vs_conn.txt"
}

capture_start() {
    local name=$1 dev=$2 i
    shift 2
    rm -f "$_PYD_RUN/cap-$name.err"
    ip netns exec "${_PYD_P}dir" tcpdump -i "$dev" --immediate-mode -nn -U -s 0 -Z root -w "$_PYD_RUN/$name.pcap" "$@" \
        2> "$_PYD_RUN/cap-$name.err" &
    CAP_PIDS="$CAP_PIDS $!"
    CAP_NAMES="$CAP_NAMES $name"
    track $!
    for i in $(seq 1 300); do
        grep -q "listening on" "$_PYD_RUN/cap-$name.err" 2>/dev/null && return 0
        sleep 0.05
    done
    die "tcpdump on $dev did not start: $(cat "$_PYD_RUN/cap-$name.err")"
}

capture_stop() {
    local p n
    sleep 0.5
    for p in $CAP_PIDS; do kill -INT "$p" 2>/dev/null; done
    for p in $CAP_PIDS; do wait "$p" 2>/dev/null; done
    for n in $CAP_NAMES; do
        cp "$_PYD_RUN/$n.pcap" "$OUT/$n.pcap"
        tcpdump -nn -v -tt -r "$_PYD_RUN/$n.pcap" > "$OUT/$n.txt" 2>/dev/null
    done
    CAP_PIDS=
    CAP_NAMES=
}

http_seq() { python3 "$LIB/nsrun.py" client.py "${1:-0}"; }
client_steps() { python3 "$LIB/nsrun.py" client.py "${1:-0}"; }
http_get() { ip netns exec "${_PYD_P}cli" curl -s -m 10 --interface "$1" --local-port "$2" "$3"; }
transcript() { python3 "$LIB/../../guest/transcript.py" "$OUT/$1"; }

order_summary() {
    awk '!/^#/{split($4,s,"="); printf "%s %s %s %s\n",$1,$2,$3,s[2]}' \
        "$OUT/requests.txt" > "$OUT/order.txt"
}

cleanup() {
    [ -n "$CAP_PIDS" ] && capture_stop
    if [ -n "$SERVERS_PID" ]; then
        kill "$SERVERS_PID" 2>/dev/null
        wait "$SERVERS_PID" 2>/dev/null
        SERVERS_PID=
    fi
    ipvsadm -C 2>/dev/null
    return 0  # lab.py stops ipvsd and deletes the namespaces
}

# The step helpers every backend shares (sched_lab, req, hold, ...).
. "$LIB/../../guest/steps.sh"

mark_dst() { die "mark_dst $1 $2: the AF_PACKET driver takes no traffic for fwmark services (its BPF filter and ARP cover the VIPs of address services only: ipvs/driver/afpacket.py sync_services)"; }
