# Stand-in for tests/kernel/lib/oracle.sh used by tests/sched/golden_replay.py:
# it runs a scheduler scenario without a lab and prints what the scenario
# would do, one record per line: "L <number of real servers>",
# "R <ipvsadm rule>", "M <cidr> <mark>", "D <delay>", "S <client step>".
CLIENTS=
sched_lab() {
    local k
    echo "L $1"
    CLIENTS=
    for k in $(seq 2 33); do CLIENTS="$CLIENTS 198.51.100.$k"; done
}
setup_nat() { :; }
add_vip() { :; }
start_servers() { :; }
start_httpd() { :; }
dump_ipvs() { :; }
capture_start() { :; }
capture_stop() { :; }
cleanup() { :; }
die() { echo "die: $*" >&2; exit 1; }
mark_dst() { echo "M $1 $2"; }
ipvs_rules() { sed -e '/^[[:space:]]*$/d' -e 's/^/R /'; }
PORT=40000
req() { PORT=$((PORT + 1)); echo "$1 ${2:-198.51.100.2} $PORT ${3:-203.0.113.5} ${4:-80}"; }
hold() { PORT=$((PORT + 1)); echo "!hold $1 ${2:-198.51.100.2} $PORT ${3:-203.0.113.5} ${4:-80}"; }
step() { echo "!$*"; }
snapshot() { echo "!snapshot $1"; }
sched_run() { echo "D ${1:-0.05}"; sed 's/^/S /'; }
