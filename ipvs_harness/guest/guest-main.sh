#!/bin/bash
# Runs inside the oracle VM (started by the initramfs /init, on the 9p share).
# For each scenario named in /share/jobs.txt: run /share/scenarios/NAME.sh with
# OUT=/share/out/NAME and LIB=/share/lib, record rc and timing, then reset the
# guest (namespaces, processes, IPVS modules) so the next scenario starts from
# a fresh kernel IPVS state (unloading ip_vs also gives it a new hash seed).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LC_ALL=C LANG=C HOME=/root
export LIB=/share/lib
# Files given with "ipvs-kernel run --input": read-only inputs.
export IN=/share/input
SHARE=/share
hostname oracle
ip link set lo up
echo "pyipvs-kernel guest: $(uname -r) up after $(cut -d' ' -f1 /proc/uptime) s"

guest_info() {
    echo "kernel: $(uname -a)"
    echo "kernel_pkg: $(cut -d' ' -f1 /etc/pyipvs-kernel-pkg)"
    echo "kernel_pkg_version: $(cut -d' ' -f2 /etc/pyipvs-kernel-pkg)"
    echo "ipvsadm: $(ipvsadm -v 2>&1)"
    echo "net devices at start (must be lo only: the VM has no NIC):"
    ls /sys/class/net
}
INFO=$(guest_info)
# ipvsadm -v loads ip_vs; start every scenario without it.
modprobe -r ip_vs 2>/dev/null

# Return the guest to its boot state: only our own processes exist here.
reset_guest() {
    local p self=$$
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        [ "$p" = 1 ] || [ "$p" = "$self" ] || [ "$p" = "$BASHPID" ] && continue
        [ -s /proc/$p/cmdline ] || continue  # kernel thread
        kill -9 "$p" 2>/dev/null
    done
    # Delete the director's ends first: a netns is freed asynchronously and
    # its veth peers can outlive "ip netns delete" for a while under TCG.
    local dev i
    for dev in /sys/class/net/*; do
        dev=${dev##*/}
        [ "$dev" = lo ] || ip link del dev "$dev" 2>/dev/null
    done
    ip -all netns delete 2>/dev/null
    for i in $(seq 1 100); do
        [ "$(ls /sys/class/net)" = lo ] && break
        sleep 0.1
    done
    ipvsadm -C 2>/dev/null
    iptables -F 2>/dev/null; iptables -t nat -F 2>/dev/null
    echo 0 > /proc/sys/net/ipv4/ip_forward
    local m mods
    mods=$(awk '$1 ~ /^ip_vs_/ {print $1}' /proc/modules)
    for m in $mods; do modprobe -r "$m" 2>/dev/null; done
    modprobe -r ip_vs 2>/dev/null
    if grep -q '^ip_vs ' /proc/modules; then
        echo "warning: ip_vs still loaded after reset: $(grep '^ip_vs' /proc/modules | tr '\n' ';')"
        [ -e /proc/net/ip_vs_conn ] && echo "warning: $(($(wc -l < /proc/net/ip_vs_conn) - 1)) connection entries left"
    fi
    dmesg -C
}

for name in $(cat "$SHARE/jobs.txt"); do
    OUT=$SHARE/out/$name
    # Done in an earlier boot of the same batch.
    [ -e "$OUT/rc" ] && continue
    mkdir -p "$OUT"
    echo "$INFO" > "$OUT/guest-info.txt"
    cp /etc/pyipvs-guest-packages.txt "$OUT/guest-packages.txt"
    echo "=== scenario $name (ip_vs modules loaded before it: $(awk '$1 ~ /^ip_vs/ {printf "%s ", $1}' /proc/modules))"
    t0=$(date +%s.%N)
    ( cd /tmp && OUT=$OUT NAME=$name timeout 1200 bash -o pipefail "$SHARE/scenarios/$name.sh" ) \
        > "$OUT/scenario.log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    echo "$rc" > "$OUT/rc"
    # The estimator's timer as traced since load_ipvs (oracle.sh est_trace_start).
    if [ -e /tmp/pyipvs-est-trace ]; then
        tr=/sys/kernel/tracing
        printf 'pyipvs realtime %s\n' "$EPOCHREALTIME" > "$tr/trace_marker"
        echo 0 > "$tr/tracing_on"
        cat "$tr/trace" > "$OUT/est-trace.txt"
        for e in timer_start timer_expire_entry; do
            echo 0 > "$tr/events/timer/$e/enable"
            echo 0 > "$tr/events/timer/$e/filter"
        done
        echo > "$tr/trace"
        rm -f /tmp/pyipvs-est-trace
    fi
    awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f\n", b-a}' > "$OUT/duration_s"
    lsmod > "$OUT/lsmod.txt"
    dmesg > "$OUT/dmesg.txt"
    echo "=== $name rc=$rc in $(cat "$OUT/duration_s") s"
    tail -5 "$OUT/scenario.log"
    reset_guest
    # Connections bound to a helper (ip_vs_ftp) pin its module until they
    # expire, and with it ip_vs: the rest of the batch then needs a fresh
    # boot, or it would inherit this scenario's connections and counters.
    if grep -q '^ip_vs ' /proc/modules; then
        echo "pyipvs-kernel guest: ip_vs still loaded: the next scenario needs a new boot"
        break
    fi
done
sync
echo "pyipvs-kernel guest: done after $(cut -d' ' -f1 /proc/uptime) s"
