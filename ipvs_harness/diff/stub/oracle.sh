# Event recorder standing in for ipvs_harness/guest/oracle.sh (offline backend).
#
# ipvs_harness/diff/offline.py runs a scenario script with LIB pointing here
# and DIFF_EVENTS naming a file: nothing is configured and no traffic is
# sent; every library call (and every direct `ipvsadm`) is written to
# DIFF_EVENTS as one record, "KIND<TAB>ARG<TAB>ARG...", followed by the
# lines it read from stdin as "+<TAB>LINE" records.  The records go to fd 9
# so that a scenario's own redirections (`ipvsadm -Ln > file`) cannot
# swallow them.  The Python side then plays the records against PyIPVS.
: "${OUT:?OUT must be set}" "${DIFF_EVENTS:?DIFF_EVENTS must be set}"
exec 9>>"$DIFF_EVENTS"
NSERVERS=0
CLIENTS=

# /etc/hosts as the script left it before each record ("hosts" and its
# lines), when it changed: names resolve offline as they did at that point
# in the VM (the script runs in a private /etc, see ipvs_harness/sandbox.py).
#
# A record and its "+" lines go to the file in one write(2): helpers a
# scenario starts in the background (ftp.py's server stub) append records
# of their own, and one that landed between a record and its lines would
# take them (a scenario then ran without its rules, under load).  bash's
# own printf and echo write line by line (its stdout is line-buffered), so
# the block goes to a file of this shell's own first, and dd reads it whole
# and writes it at once.
_emit() {
    local tmp="$DIFF_EVENTS.block.$BASHPID"
    printf '%s' "$1" > "$tmp"
    dd if="$tmp" bs=16M status=none >&9
    rm -f "$tmp"
}
_HOSTS_LAST=
_hosts_check() {
    mapfile -t _HOSTS < /etc/hosts 2>/dev/null
    [ "${_HOSTS[*]}" = "$_HOSTS_LAST" ] && return
    _HOSTS_LAST="${_HOSTS[*]}"
    local block=$'hosts\n' h
    for h in "${_HOSTS[@]}"; do block+=$'+\t'"$h"$'\n'; done
    _emit "$block"
}
ev() { _hosts_check; local IFS=$'\t'; printf '%s\n' "$*" >&9; }
# ev, with the lines of standard input (a here-document) as the record's lines.
ev_stdin() {
    _hosts_check
    local IFS=$'\t' l block
    block="$*"$'\n'
    while IFS= read -r l || [ -n "$l" ]; do block+=$'+\t'"$l"$'\n'; done
    _emit "$block"
}

# Scenario scripts wait for their own helpers; nothing runs here.
sleep() { :; }
# Nothing a scenario does may touch this host: every command that would
# configure a network, a firewall or a module is recorded, not run.
ip() { ev cmd ip "$@"; }
iptables() { ev cmd iptables "$@"; }
iptables-restore() { ev cmd iptables-restore "$@"; cat > /dev/null; }
ip6tables() { ev cmd ip6tables "$@"; }
nft() { ev cmd nft "$@"; }
modprobe() { ev modprobe "$@"; }
rmmod() { ev cmd rmmod "$@"; }
sysctl() { ev cmd sysctl "$@"; }
ethtool() { ev cmd ethtool "$@"; }
tcpdump() { ev cmd tcpdump "$@"; }
curl() { ev cmd curl "$@"; }
socat() { ev cmd socat "$@"; }
conntrack() { ev cmd conntrack "$@"; }
ipvsadm-save() { ev cmd ipvsadm-save "$@"; }
ipvsadm-restore() { ev cmd ipvsadm-restore "$@"; }
die() { ev die "$*"; echo "oracle.sh (diff stub): $*" >&2; exit 1; }
load_ipvs() { :; }
setup_nat() { NSERVERS=$1; ev setup_nat "$@"; }
add_vip() { ev add_vip "$@"; }
rs_vip() { ev rs_vip "$@"; }
setup_v6() { ev setup_v6 "$@"; }
rs_vip6() { ev rs_vip6 "$@"; }
add_vip6() { ev add_vip6 "$@"; }
start_servers() { ev start_servers "$@"; }
start_httpd() { start_servers "$@"; }
ipvs_rules() { ev_stdin ipvs_rules; }
ipvsadm() {
    # Where does this call's stdout go?  A file under $OUT is an output the
    # kernel run also wrote (ipvsadm -S > "$OUT/x.txt"): record its name.
    local me=$BASHPID to record=ev
    case " $* " in *" -R "*|*" --restore "*) record=ev_stdin ;; esac
    to=$(readlink "/proc/$me/fd/1" 2>/dev/null)
    case "$to" in
        "$OUT"/*)
            $record ipvsadm_to "${to#"$OUT"/}" "$@"
            # What PyIPVS wrote there on the previous pass, for scripts that read it back.
            [ -f "$DIFF_PREFILL/${to#"$OUT"/}" ] && cat "$DIFF_PREFILL/${to#"$OUT"/}"
            ;;
        *) $record ipvsadm "$@" ;;
    esac
    return 0
}
vs_sysctl() { ev vs_sysctl "$@"; }
snap() { ev snap "$@"; }
dump_sysctl() { ev dump_sysctl "$@"; }
dump_ipvs() { ev dump_ipvs "${1:-}"; }
dump_conn() { ev dump_conn "${1:-}"; }
capture_start() { ev capture_start "$@"; }
capture_stop() { ev capture_stop; }
http_seq() { ev_stdin client_steps "${1:-0}"; }
client_steps() { ev_stdin client_steps "${1:-0}"; }
http_get() { ev http_get "$@"; }
transcript() { ev_stdin transcript "$1"; }
order_summary() { ev order_summary; }
cleanup() { ev cleanup; }
mark_dst() { ev mark_dst "$@"; }

# The step helpers every backend shares (sched_lab, req, hold, ...).
. "$LIB/../../guest/steps.sh"
# The kernel run's value of NAME (its value-NAME.txt), not a stub's guess.
value() { ev value "$@"; [ -n "${DIFF_GOLDEN:-}" ] && cat "$DIFF_GOLDEN/value-$1.txt" 2>/dev/null; return 0; }
