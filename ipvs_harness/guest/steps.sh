# Scenario step helpers shared by every backend's oracle.sh: the kernel VM's
# (guest/oracle.sh), the offline recorder's (diff/stub/oracle.sh), the
# namespace lab's (diff/lab/oracle.sh) and the scheduler replay's stub
# (tests/sched/stub/oracle.sh).  They are built only on the library's own
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
