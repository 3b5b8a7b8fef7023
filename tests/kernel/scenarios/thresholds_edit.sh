# Editing -x/-y on a destination while it holds connections: the overload
# flag from every side.  One fo service per case (VIP port 81-93), rs1
# (weight 2) is the one fo prefers, rs2 (weight 1) takes what rs1 may not:
# each case holds connections to rs1, edits rs1's thresholds with
# ipvsadm -e, then sends one probe request; order.txt says whether rs1 was
# still overloaded (the probe went to rs2) or not.  The last cases let a
# connection expire (RST, CLOSE: 10 s) to see the flag on unbind.  The
# held connections end with a FIN (TIME_WAIT, 120 s) after the last dump.
. "$LIB/oracle.sh"
sched_lab 2
V=203.0.113.5
R1=172.16.0.2:80
R2=172.16.0.3:80
rules() {  # rules PORT [RS1 THRESHOLD OPTIONS]
    echo "-A -t $V:$1 -s fo"
    echo "-a -t $V:$1 -r $R1 -m -w 2 ${*:2}"
    echo "-a -t $V:$1 -r $R2 -m -w 1"
}
{
    rules 81 -x 1          # raise, conns between the new l and u
    rules 82 -x 1          # raise, conns below the new l
    rules 83 -x 2          # raise without -y (l = 3u/4), conns between
    rules 84 -x 2          # raise without -y, conns below
    rules 85               # set u below the conns (was no threshold)
    rules 86               # set u and l around the conns
    rules 87 -x 1          # clear (-x 0) while overloaded
    rules 88 -x 3          # lower u while overloaded, conns above
    rules 89 -x 2 -y 1     # same thresholds, new weight
    rules 90               # set u below the conns, then raise it, still below
    rules 91 -x 2          # unbind without -y: 2 conns -> 1
    rules 92 -x 2 -y 1     # unbind with -y 1: 2 conns -> 1
    rules 93 -x 3 -y 2     # unbind with -y 2: 3 conns -> 1
    rules 94 -x 3          # raise without -y, conns at 3/4 of the new -x
    rules 95 -x 4          # unbind without -y: 4 conns -> 3 (3/4 of -x)
} | ipvs_rules
dump_ipvs before-
edit() { local p=$1; shift; step "sh ipvsadm -e -t $V:$p -r $R1 -m $*"; }
probe() { req "probe-$1" 198.51.100.3 $V "$1"; }
{
    hold h81 198.51.100.2 $V 81
    hold h82 198.51.100.2 $V 82
    for i in 1 2; do hold h83 198.51.100.2 $V 83; done
    for i in 1 2; do hold h84 198.51.100.2 $V 84; done
    for i in 1 2 3; do hold h85 198.51.100.2 $V 85; done
    for i in 1 2; do hold h86 198.51.100.2 $V 86; done
    hold h87 198.51.100.2 $V 87
    for i in 1 2 3; do hold h88 198.51.100.2 $V 88; done
    for i in 1 2; do hold h89 198.51.100.2 $V 89; done
    for i in 1 2 3; do hold h90 198.51.100.2 $V 90; done
    hold h91a 198.51.100.2 $V 91; hold h91b 198.51.100.2 $V 91
    hold h92a 198.51.100.2 $V 92; hold h92b 198.51.100.2 $V 92
    hold h93a 198.51.100.2 $V 93; hold h93b 198.51.100.2 $V 93; hold h93b 198.51.100.2 $V 93
    for i in 1 2 3; do hold h94 198.51.100.2 $V 94; done
    for i in 1 2 3; do hold h95a 198.51.100.2 $V 95; done; hold h95b 198.51.100.2 $V 95
    snapshot held
    edit 81 -w 2 -x 3 -y 1
    edit 82 -w 2 -x 4 -y 2
    edit 83 -w 2 -x 3
    edit 84 -w 2 -x 4
    edit 85 -w 2 -x 2
    edit 86 -w 2 -x 3 -y 1
    edit 87 -w 2 -x 0
    edit 88 -w 2 -x 2
    edit 89 -w 3 -x 2 -y 1
    edit 90 -w 2 -x 1
    edit 94 -w 2 -x 4
    snapshot edited
    for p in 81 82 83 84 85 86 87 88 89 90 94; do probe $p; done
    edit 90 -w 2 -x 2
    probe 90
    step rst-label h91b
    step rst-label h92b
    step rst-label h93b
    step rst-label h95b
    step sleep 13
    snapshot expired
    for p in 91 92 93 95; do probe $p; done
    snapshot end
    step 'sh ipvsadm -Ln --thresholds > "$OUT/end-ipvsadm-Ln-thresholds.txt"'
} | sched_run
cleanup
