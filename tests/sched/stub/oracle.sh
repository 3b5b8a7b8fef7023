# Stand-in for ipvs_harness/guest/oracle.sh used by tests/sched/golden_replay.py:
# it runs a scheduler scenario without a lab and prints what the scenario
# would do, one record per line: "L <number of real servers>",
# "R <ipvsadm rule>", "M <cidr> <mark>", "D <delay>", "S <client step>".
# The step helpers (sched_lab, req, hold, step) are the shared ones.
. "$(dirname "${BASH_SOURCE[0]}")/../../../ipvs_harness/guest/steps.sh"
setup_nat() { echo "L $1"; }
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
snapshot() { echo "!snapshot $1"; }
sched_run() { echo "D ${1:-0.05}"; sed 's/^/S /'; }
