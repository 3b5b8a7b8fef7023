# Scenario step helpers shared by every backend's oracle.sh: the kernel VM's
# (guest/oracle.sh), the offline recorder's (diff/stub/oracle.sh, whose
# replay the scheduler goldens' tests use too) and the namespace lab's
# (diff/lab/oracle.sh).  They are built only on the library's own
# functions (setup_nat, add_vip, start_servers, capture_start/stop,
# client_steps, order_summary, dump_ipvs), which each backend provides.

# sched_lab N [VIP...] - N real servers with HTTP on port 80, the 32 client
# addresses $CLIENTS (198.51.100.2-33), the VIP 203.0.113.5 and any others.
sched_lab() {
    local n=$1 k a specs=
    shift
    CLIENTS=
    for k in $(seq 2 33); do CLIENTS="$CLIENTS 198.51.100.$k"; done
    # shellcheck disable=SC2086
    setup_nat "$n" $CLIENTS
    add_vip 203.0.113.5
    for a in "$@"; do add_vip "$a"; done
    for k in $(seq 1 "$n"); do specs="$specs $k:80"; done
    # shellcheck disable=SC2086
    start_servers $specs
}

# Step generators for client_steps; each new connection gets the next
# client port (PORT, from 40001), so every request's 4-tuple is fixed.
PORT=40000
# req LABEL [SRC] [DST] [DPORT] - one HTTP request (closes: TIME_WAIT).
req() { PORT=$((PORT + 1)); echo "$1 ${2:-198.51.100.2} $PORT ${3:-203.0.113.5} ${4:-80}"; }
# hold LABEL [SRC] [DST] [DPORT] - a connection kept ESTABLISHED (active).
hold() { PORT=$((PORT + 1)); echo "!hold $1 ${2:-198.51.100.2} $PORT ${3:-203.0.113.5} ${4:-80}"; }
# step TEXT - any other client step (!sh ..., !sleep ..., !rst-label ...).
step() { echo "!$*"; }
# snapshot NAME - a mid-sequence ipvsadm -Ln and connection listing.
snapshot() {
    echo "!sh ipvsadm -Ln > \"\$OUT/$1-ipvsadm-Ln.txt\"; ipvsadm -Lnc > \"\$OUT/$1-ipvsadm-Lnc.txt\""
}

# sched_run [DELAY] - run client steps from stdin with captures on both
# sides; writes requests.txt, order.txt and the final dump_ipvs files.
sched_run() {
    capture_start client-side cli0
    capture_start server-side br0
    echo "# label n src_addr:src_port server_body" > "$OUT/requests.txt"
    client_steps "${1:-0.05}" >> "$OUT/requests.txt"
    capture_stop
    order_summary
    dump_ipvs
    if [ -f "$OUT/order.txt" ]; then cat "$OUT/order.txt"; fi
}

# value NAME CMD [ARG...] - run CMD and print its output, kept as
# $OUT/value-NAME.txt: a value computed at run time (a timestamp, a count
# read back from the kernel) that later steps use, X=$(value x CMD ...).
# The offline backend, which cannot run CMD against the kernel, is handed
# the recorded value instead (diff/stub/oracle.sh).
value() {
    local name=$1 v
    shift
    v=$("$@")
    printf '%s\n' "$v" > "$OUT/value-$name.txt"
    printf '%s\n' "$v"
}

# fwd_method_run FLAGS - the body the VS/DR and VS/TUN scenarios share (they
# differ only in how the real servers receive and in ipvsadm's forwarding
# flags): TCP and UDP services on the VIP, two real servers, short HTTP
# connections, DNS-like datagrams and held connections, with listings
# before, during and after.  Replies bypass IPVS (the servers answer from
# the VIP, routed back through the director as plain forwarding), so the
# connections see input only: the INPUT_ONLY rows of the TCP table.
fwd_method_run() {
    local flags=$1
    start_servers 1:80 2:80 1:53/udp 2:53/udp
    # shellcheck disable=SC2086
    ipvs_rules <<EOF2
-A -t 203.0.113.5:80 -s wlc
-a -t 203.0.113.5:80 -r 172.16.0.2:80 $flags
-a -t 203.0.113.5:80 -r 172.16.0.3:80 $flags -w 2
-A -u 203.0.113.5:53 -s rr
-a -u 203.0.113.5:53 -r 172.16.0.2:53 $flags
-a -u 203.0.113.5:53 -r 172.16.0.3:53 $flags
EOF2
    dump_ipvs before-
    capture_start client-side cli0
    capture_start server-side br0
    R=$OUT/requests.txt
    echo "# label n src_addr:src_port server_body" > "$R"
    client_steps 0.2 >> "$R" <<'EOF2'
http 198.51.100.2 40001 203.0.113.5 80
http 198.51.100.2 40002 203.0.113.5 80
http 198.51.100.2 40003 203.0.113.5 80
http 198.51.100.2 40004 203.0.113.5 80
http 198.51.100.2 40005 203.0.113.5 80
http 198.51.100.2 40006 203.0.113.5 80
!udp dns 198.51.100.2 40011 203.0.113.5 53
!udp dns 198.51.100.2 40012 203.0.113.5 53
!udp dns 198.51.100.2 40013 203.0.113.5 53
!hold held 198.51.100.2 40021 203.0.113.5 80
!hold held 198.51.100.2 40022 203.0.113.5 80
!hold held 198.51.100.2 40023 203.0.113.5 80
!ping held
!sh ipvsadm -Ln --stats > "$OUT/during-ipvsadm-Ln-stats.txt"
!sh ipvsadm -Ln > "$OUT/during-ipvsadm-Ln.txt"
!sh ipvsadm -Lnc > "$OUT/during-ipvsadm-Lnc.txt"
!sh cat /proc/net/ip_vs_conn > "$OUT/during-proc-net-ip_vs_conn.txt"
!release-all
!sleep 1
EOF2
    capture_stop
    order_summary
    dump_ipvs
    cat "$OUT/ipvsadm-Ln.txt" "$OUT/ipvsadm-Lnc.txt"
    cleanup
}

# fwd_method_run6 FLAGS - fwd_method_run over IPv6 (setup_v6, rs_vip6 first):
# the VIP 2001:db8:f::5, servers 2001:db8:2::2 and ::3.
fwd_method_run6() {
    local flags=$1
    start_servers 1:80/tcp6 2:80/tcp6 1:53/udp6 2:53/udp6
    # shellcheck disable=SC2086
    ipvs_rules <<EOF2
-A -t [2001:db8:f::5]:80 -s wlc
-a -t [2001:db8:f::5]:80 -r [2001:db8:2::2]:80 $flags
-a -t [2001:db8:f::5]:80 -r [2001:db8:2::3]:80 $flags -w 2
-A -u [2001:db8:f::5]:53 -s rr
-a -u [2001:db8:f::5]:53 -r [2001:db8:2::2]:53 $flags
-a -u [2001:db8:f::5]:53 -r [2001:db8:2::3]:53 $flags
EOF2
    dump_ipvs before-
    capture_start client-side cli0
    capture_start server-side br0
    R=$OUT/requests.txt
    echo "# label n src_addr:src_port server_body" > "$R"
    client_steps 0.2 >> "$R" <<'EOF2'
http 2001:db8:1::2 40001 2001:db8:f::5 80
http 2001:db8:1::2 40002 2001:db8:f::5 80
http 2001:db8:1::2 40003 2001:db8:f::5 80
http 2001:db8:1::2 40004 2001:db8:f::5 80
!udp dns 2001:db8:1::2 40011 2001:db8:f::5 53
!udp dns 2001:db8:1::2 40012 2001:db8:f::5 53
!hold held 2001:db8:1::2 40021 2001:db8:f::5 80
!hold held 2001:db8:1::2 40022 2001:db8:f::5 80
!ping held
!sh ipvsadm -Ln --stats > "$OUT/during-ipvsadm-Ln-stats.txt"
!sh ipvsadm -Lnc > "$OUT/during-ipvsadm-Lnc.txt"
!release-all
!sleep 1
EOF2
    capture_stop
    order_summary
    dump_ipvs
    cat "$OUT/ipvsadm-Ln.txt" "$OUT/ipvsadm-Lnc.txt"
    cleanup
}
