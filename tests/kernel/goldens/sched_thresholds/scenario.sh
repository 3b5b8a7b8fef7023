# Upper/lower connection thresholds (-x/-y): rs1 has -x 2 -y 1; while rs2
# and rs3 have weight 0, two held connections go to rs1 and overload it;
# with the weights back, requests go elsewhere; RST-closing the held ones
# (CLOSE state, 10 s) and waiting for their expiry brings rs1 back.  A
# second service (rr) has -x 3 without -y on both servers: both overload
# (no server left), then -x 0 lifts the limit.
. "$LIB/oracle.sh"
sched_lab 3
S="-t 203.0.113.5:80"
T="-t 203.0.113.5:81"
ipvs_rules <<EOF2
-A $S -s wlc
-a $S -r 172.16.0.2:80 -m -w 1 -x 2 -y 1
-a $S -r 172.16.0.3:80 -m -w 1
-a $S -r 172.16.0.4:80 -m -w 1
-A $T -s rr
-a $T -r 172.16.0.2:80 -m -x 3
-a $T -r 172.16.0.3:80 -m -x 3
EOF2
dump_ipvs before-
{
    step sh ipvsadm -e $S -r 172.16.0.3:80 -m -w 0
    step sh ipvsadm -e $S -r 172.16.0.4:80 -m -w 0
    hold h1; hold h1
    step sh ipvsadm -e $S -r 172.16.0.3:80 -m -w 1
    step sh ipvsadm -e $S -r 172.16.0.4:80 -m -w 1
    snapshot overloaded
    step 'sh ipvsadm -Ln --thresholds > "$OUT/overloaded-ipvsadm-Ln-thresholds.txt"'
    for i in $(seq 6); do req thr-rs1-overloaded; done
    step rst-label h1
    step sleep 13
    snapshot recovered
    for i in $(seq 6); do req thr-rs1-recovered; done
    for i in $(seq 8); do req x3-rr 198.51.100.3 203.0.113.5 81; done
    step sh ipvsadm -e $T -r 172.16.0.2:80 -m -x 0
    for i in $(seq 2); do req x3-rr-x0 198.51.100.3 203.0.113.5 81; done
    snapshot end
    step 'sh ipvsadm -Ln --thresholds > "$OUT/end-ipvsadm-Ln-thresholds.txt"'
} | sched_run
cleanup
