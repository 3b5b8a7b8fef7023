# oracle.sh - shell library for kernel-oracle scenarios (sourced, runs in the VM).
#
# A scenario is a bash script that sources this file ('. "$LIB/oracle.sh"'),
# builds the lab, configures IPVS with ipvsadm, drives traffic and dumps
# listings into $OUT.  Topology (director = the guest's root namespace):
#
#   netns cli: eth0 198.51.100.2.. /24 --- cli0 198.51.100.1 (+ VIP /32)
#                                          [director, ip_forward=1]
#   netns rsK: eth0 172.16.0.(K+1)/24 --- rsK --- br0 172.16.0.1/24
#
# Every process start costs 0.3-0.5 s under TCG: functions batch their work
# (ip -batch, one Python process for all servers, one for the client).

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
: "${OUT:?OUT must be set}" "${LIB:?LIB must be set}"
SERVERS_PID=
CAP_PIDS=
CAP_NAMES=
NSERVERS=0

die() { echo "oracle.sh: $*" >&2; exit 1; }

# Load the IPVS core (ipvsadm would do it on first use; doing it here makes
# the moment explicit and the module list deterministic).  Loading arms the
# estimator's timer (ip_vs_estimator_net_init), whose phase the counters in
# every listing follow: the stamps bracket it, est_trace records its runs.
load_ipvs() {
    stamp ipvs_load modprobe
    modprobe ip_vs || die "modprobe ip_vs failed"
    stamp ipvs_loaded ip_vs
    est_trace_start
}

# est_trace_start - trace the ip_vs estimator's timer (timer:timer_start and
# timer:timer_expire_entry, filtered on estimation_timer) with the "mono"
# trace clock, and mark the guest's realtime in the trace, so the ticks map
# onto the clock of the stamps and pcaps.  guest-main.sh saves the trace as
# $OUT/est-trace.txt after the scenario.  Best effort: without tracefs or
# the symbol nothing is traced (the offline model then uses the stamps).
EST_TRACE=/sys/kernel/tracing
est_trace_start() {
    local t=$EST_TRACE a e
    [ -e "$t/trace_marker" ] || mount -t tracefs nodev "$t" 2>/dev/null || return 0
    a=$(awk '$3 == "estimation_timer" && $4 == "[ip_vs]" { print $1; exit }' /proc/kallsyms)
    case $a in ''|0000000000000000) return 0 ;; esac
    echo 0 > "$t/tracing_on"
    echo mono > "$t/trace_clock"
    echo > "$t/trace"
    for e in timer_start timer_expire_entry; do
        echo "function == 0x$a" > "$t/events/timer/$e/filter" || return 0
        echo 1 > "$t/events/timer/$e/enable"
    done
    echo 1 > "$t/tracing_on"
    printf 'pyipvs realtime %s\n' "$EPOCHREALTIME" > "$t/trace_marker"
    : > /tmp/pyipvs-est-trace
}

# setup_nat NSERVERS CLIENT_ADDR...  - the VS/NAT lab (see the header).
setup_nat() {
    local n=$1 k a first=1 b=/tmp/ip-root.batch
    shift
    NSERVERS=$n
    load_ipvs
    echo 1 > /proc/sys/net/ipv4/ip_forward
    for a in all default lo; do echo 0 > "/proc/sys/net/ipv4/conf/$a/rp_filter"; done
    {
        echo "link add br0 type bridge forward_delay 0"
        echo "link set dev br0 addrgenmode none"
        echo "netns add cli"
        echo "link add cli0 type veth peer name eth0 netns cli"
        echo "link set dev cli0 addrgenmode none"
        echo "addr add 198.51.100.1/24 dev cli0"
        echo "link set dev cli0 up"
        for k in $(seq 1 "$n"); do
            echo "netns add rs$k"
            echo "link add rs$k type veth peer name eth0 netns rs$k"
            echo "link set dev rs$k addrgenmode none"
            echo "link set dev rs$k master br0"
            echo "link set dev rs$k up"
        done
        echo "addr add 172.16.0.1/24 dev br0"
        echo "link set dev br0 up"
    } > "$b"
    ip -batch "$b" || die "ip -batch (director) failed"
    {
        echo "link set dev lo up"
        echo "link set dev eth0 addrgenmode none"
        for a in "$@"; do echo "addr add $a/24 dev eth0"; done
        echo "link set dev eth0 up"
        echo "route add default via 198.51.100.1"
    } | ip -n cli -batch - || die "ip -batch (cli) failed"
    # Checksum offload off on both ends of every veth and on the bridge:
    # captures then show final checksums, also for packets IPVS rewrote
    # (ip_vs_ftp's mangled 227 lines would otherwise show "incorrect").
    local tx="cli:eth0 :cli0 :br0"
    for k in $(seq 1 "$n"); do
        printf '%s\n' "link set dev lo up" "link set dev eth0 addrgenmode none" \
            "addr add 172.16.0.$((k + 1))/24 dev eth0" "link set dev eth0 up" \
            "route add default via 172.16.0.1" | ip -n "rs$k" -batch - \
            || die "ip -batch (rs$k) failed"
        tx="$tx rs$k:eth0 :rs$k"
    done
    # shellcheck disable=SC2086
    python3 "$LIB/nsutil.py" txoff $tx || die "tx checksum offload off failed"
}

# add_vip ADDR - the virtual address on the director's outer side.
add_vip() { ip addr add "$1/32" dev cli0 || die "add_vip $1"; }

# setup_v6 - IPv6 beside the IPv4 lab (call after setup_nat): the client
# side 2001:db8:1::/64 (director ::1, client ::2), the real servers' side
# 2001:db8:2::/64 (director ::1, server K at ::K+1), forwarding on; every
# address without duplicate address detection, so it is usable at once.
setup_v6() {
    local k
    echo 1 > /proc/sys/net/ipv6/conf/all/forwarding
    # setup_nat turned link-local addresses off (addrgenmode none); neighbour
    # solicitations need one as their source (ndisc_send_ns), so each
    # interface gets a fixed one.
    printf '%s\n' "addr add 2001:db8:1::1/64 dev cli0 nodad" "addr add 2001:db8:2::1/64 dev br0 nodad" \
        "addr add fe80::1/64 dev cli0 nodad" "addr add fe80::1/64 dev br0 nodad" \
        | ip -batch - || die "setup_v6 (director) failed"
    printf '%s\n' "addr add 2001:db8:1::2/64 dev eth0 nodad" "addr add fe80::2/64 dev eth0 nodad" \
        "route add default via 2001:db8:1::1" | ip -n cli -batch - || die "setup_v6 (cli) failed"
    for k in $(seq 1 "$NSERVERS"); do
        printf '%s\n' "addr add 2001:db8:2::$(printf %x $((k + 1)))/64 dev eth0 nodad" \
            "addr add fe80::$(printf %x $((k + 1)))/64 dev eth0 nodad" \
            "route add default via 2001:db8:2::1" | ip -n "rs$k" -batch - || die "setup_v6 (rs$k) failed"
    done
}

# add_vip6 ADDR - an IPv6 virtual address on the director's outer side.
add_vip6() { ip addr add "$1/128" dev cli0 nodad || die "add_vip6 $1"; }

# rs_vip6 METHOD VIP - rs_vip for an IPv6 VIP (after setup_v6): dr puts it on
# lo (neighbour discovery answers only for addresses of the asking
# interface, so no sysctl is needed); ipip puts it on ip6tnl0, the
# ip6_tunnel module's fallback device, which takes IPv6-in-IPv6.
rs_vip6() {
    local method=$1 vip=$2 k dev=lo
    case $method in
        dr) ;;
        ipip) modprobe ip6_tunnel || die "modprobe ip6_tunnel"; dev=ip6tnl0 ;;
        *) die "rs_vip6: unknown method $method" ;;
    esac
    for k in $(seq 1 "$NSERVERS"); do
        printf '%s\n' "link set dev $dev up" "addr add $vip/128 dev $dev nodad" \
            | ip -n "rs$k" -batch - || die "rs_vip6 $method (rs$k) failed"
    done
    export RS_BIND6=$vip
}

# rs_vip METHOD VIP [PORT] - every real server takes packets addressed to
# the VIP itself, as VS/DR and VS/TUN need (call after setup_nat, before
# start_servers): the VIP on a device that does not answer ARP for it
# (arp_ignore=1, arp_announce=2, the LVS-DR recipe), the servers bound to
# it (RS_BIND), and the director accepting the replies the
# servers send from the VIP through it (accept_local: the VIP is also its
# own address).  METHOD: dr (VIP on lo); ipip (tunl0, the ipip module's
# fallback device); gue PORT (a fou receive port in GUE mode feeding tunl0);
# gre (gre0, ip_gre's fallback device for keyless GRE).
rs_vip() {
    local method=$1 vip=$2 port=${3:-} k dev=lo a
    case $method in
        dr) ;;
        ipip) modprobe ipip || die "modprobe ipip"; dev=tunl0 ;;
        gue) modprobe ipip && modprobe fou || die "modprobe fou"; dev=tunl0 ;;
        gre) modprobe ip_gre || die "modprobe ip_gre"; dev=gre0 ;;
        *) die "rs_vip: unknown method $method" ;;
    esac
    for a in all br0; do echo 1 > "/proc/sys/net/ipv4/conf/$a/accept_local"; done
    for k in $(seq 1 "$NSERVERS"); do
        {
            [ "$method" = gue ] && echo "fou add port $port gue"
            echo "link set dev $dev up"
            echo "addr add $vip/32 dev $dev"
        } | ip -n "rs$k" -batch - || die "rs_vip $method (rs$k) failed"
        for a in all default lo eth0 $dev; do
            ip netns exec "rs$k" sh -c "echo 0 > /proc/sys/net/ipv4/conf/$a/rp_filter" \
                || die "rs_vip rp_filter $a (rs$k)"
        done
        ip netns exec "rs$k" sh -c 'echo 1 > /proc/sys/net/ipv4/conf/all/arp_ignore; echo 2 > /proc/sys/net/ipv4/conf/all/arp_announce' \
            || die "rs_vip arp sysctls (rs$k)"
    done
    export RS_BIND=$vip
}

# start_servers K:PORT[/udp]... - real servers (see servers.py); logs go to
# $OUT/rsK-PORT.log.  start_httpd is the historical name.
start_servers() {
    local i
    python3 "$LIB/servers.py" "$OUT" "$@" > /tmp/servers.out 2> "$OUT/servers.err" &
    SERVERS_PID=$!
    for i in $(seq 1 300); do
        grep -q ready /tmp/servers.out 2>/dev/null && break
        kill -0 "$SERVERS_PID" 2>/dev/null || die "servers.py died: $(cat "$OUT/servers.err")"
        sleep 0.1
    done
    grep -q ready /tmp/servers.out || die "servers not ready"
    [ -s "$OUT/servers.err" ] || rm -f "$OUT/servers.err"
}
start_httpd() { start_servers "$@"; }

# ipvs_rules - apply ipvsadm -R rules from stdin (one process for all).
ipvs_rules() { ipvsadm -R || die "ipvsadm -R failed"; }

# vs_sysctl NAME VALUE - set /proc/sys/net/ipv4/vs/NAME.
vs_sysctl() { stamp vs_sysctl "$1 $2"; echo "$2" > "/proc/sys/net/ipv4/vs/$1" || die "sysctl vs.$1=$2"; }

# stamp KIND WHAT - the guest's realtime clock (the pcap timestamps' clock)
# into $OUT/clock.txt before a step (see clock.py; bash's EPOCHREALTIME
# costs no process start, so stamping does not slow what it measures).
stamp() { printf '%s\t%s\t%s\n' "$EPOCHREALTIME" "$1" "$2" >> "$OUT/clock.txt"; }

# snap SRC DST - copy a /proc file without forking a process.
snap() {
    local x=
    stamp file "${2#"$OUT"/}"
    IFS= read -r -d '' x < "$1"
    printf '%s' "$x" > "$2"
}

# dump_sysctl FILE - every net.ipv4.vs sysctl as PATH:VALUE, sorted.
dump_sysctl() {
    local f v
    stamp file "${1#"$OUT"/}"
    for f in /proc/sys/net/ipv4/vs/*; do
        v=
        IFS= read -r v < "$f"
        echo "$f:$v"
    done > "$1"
}

# stamped_ipvsadm FILE ARGS... - ipvsadm ARGS > FILE, stamped (see stamp).
stamped_ipvsadm() {
    local f=$1
    shift
    stamp file "${f#"$OUT"/}"
    ipvsadm "$@" > "$f"
}

# dump_ipvs [PREFIX] - every listing and /proc view into $OUT/PREFIX*.
dump_ipvs() {
    local p=$OUT/${1:-} f
    stamped_ipvsadm "${p}ipvsadm-Ln.txt" -Ln
    stamped_ipvsadm "${p}ipvsadm-Ln-stats.txt" -Ln --stats
    stamped_ipvsadm "${p}ipvsadm-Ln-rate.txt" -Ln --rate
    stamped_ipvsadm "${p}ipvsadm-Ln-exact-stats.txt" -Ln --exact --stats
    stamped_ipvsadm "${p}ipvsadm-Ln-timeout.txt" -Ln --timeout
    stamped_ipvsadm "${p}ipvsadm-Ln-persistent-conn.txt" -Ln --persistent-conn
    stamped_ipvsadm "${p}ipvsadm-Lnc.txt" -Lnc
    stamped_ipvsadm "${p}ipvsadm-S-n.txt" -S -n
    for f in ip_vs ip_vs_conn ip_vs_conn_sync ip_vs_stats ip_vs_stats_percpu ip_vs_app; do
        [ -e "/proc/net/$f" ] && snap "/proc/net/$f" "${p}proc-net-$f.txt"
    done
    dump_sysctl "${p}sysctl-net.ipv4.vs.txt"
}

# dump_conn PREFIX - the connection table only: ipvsadm -Lnc and
# /proc/net/ip_vs_conn (with Expires), taken back to back.
dump_conn() {
    local p=$OUT/${1:-}
    stamped_ipvsadm "${p}ipvsadm-Lnc.txt" -Lnc
    snap /proc/net/ip_vs_conn "${p}proc-net-ip_vs_conn.txt"
}

# capture_start NAME IFACE [FILTER...] - tcpdump on a director interface
# (cli0: client side, br0: server side) into $OUT/NAME.pcap (+ NAME.txt).
# --immediate-mode: libpcap otherwise reads TPACKET_V3 blocks only when they
# retire, and the frames of the block still open when capture_stop's SIGINT
# arrives are lost (the last frames of every capture were missing).
capture_start() {
    local name=$1 dev=$2 i
    shift 2
    rm -f "/tmp/cap-$name.err"
    tcpdump -i "$dev" -nn -U --immediate-mode -s 0 -Z root -w "/tmp/$name.pcap" "$@" \
        2> "/tmp/cap-$name.err" &
    CAP_PIDS="$CAP_PIDS $!"
    CAP_NAMES="$CAP_NAMES $name"
    stamp capture_start "$name"
    for i in $(seq 1 300); do
        grep -q "listening on" "/tmp/cap-$name.err" 2>/dev/null && return 0
        sleep 0.1
    done
    die "tcpdump on $dev did not start: $(cat "/tmp/cap-$name.err")"
}

# capture_stop - stop every capture, copy pcaps and write text decodes.
capture_stop() {
    local p n
    stamp capture_stop "$CAP_NAMES"
    sleep 0.5
    for p in $CAP_PIDS; do kill -INT "$p" 2>/dev/null; done
    for p in $CAP_PIDS; do wait "$p" 2>/dev/null; done
    for n in $CAP_NAMES; do
        cp "/tmp/$n.pcap" "$OUT/$n.pcap"
        tcpdump -nn -v -tt -r "/tmp/$n.pcap" > "$OUT/$n.txt" 2>/dev/null
    done
    CAP_PIDS=
    CAP_NAMES=
}

# http_seq DELAY - run client steps from stdin (see client.py), printing
# one line per request.  client_steps is the same with a clearer name.
http_seq() { python3 "$LIB/client.py" "${1:-0}"; }
client_steps() { python3 "$LIB/client.py" "${1:-0}"; }

# http_get SRC SPORT URL - one request with curl (another client stack).
http_get() {
    ip netns exec cli curl -s -m 10 --interface "$1" --local-port "$2" "$3"
}

# transcript BASE - record commands from stdin into $OUT/BASE.jsonl (+ .txt).
transcript() { python3 "$LIB/transcript.py" "$OUT/$1"; }

# order_summary - requests.txt -> order.txt ("label n src:port rsK").
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
    ip -all netns delete 2>/dev/null
    ip link del br0 2>/dev/null
    ipvsadm -C 2>/dev/null
    return 0
}

# --- scheduler scenarios -------------------------------------------------
# sched_lab NSERVERS [EXTRA_VIP...] - the lab with 32 client addresses
# (198.51.100.2-33, $CLIENTS), the VIP 203.0.113.5 (+ extra VIPs) and an
# HTTP server on port 80 in every real server rs1..rsN (172.16.0.2..).
# sched_lab, req, hold, step, snapshot, sched_run: the step helpers every
# backend shares.
. "$LIB/steps.sh"

# mark_dst CIDR MARK - set the firewall mark MARK on packets to CIDR as they
# enter the director (mangle PREROUTING, before IPVS sees them), so a
# fwmark service (-f MARK) can cover several VIPs.
mark_dst() {
    printf '*mangle\n-A PREROUTING -d %s -j MARK --set-mark %s\nCOMMIT\n' "$1" "$2" \
        | iptables-restore --noflush || die "iptables-restore (mark $1) failed"
}
