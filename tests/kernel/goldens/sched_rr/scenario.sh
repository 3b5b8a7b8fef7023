# rr known-answer sequence: 3 real servers, then a 4th added mid-stream,
# weight 0 on one, a deletion, and the weight restored.
. "$LIB/oracle.sh"
sched_lab 4
S="-t 203.0.113.5:80"
ipvs_rules <<EOF2
-A $S -s rr
-a $S -r 172.16.0.2:80 -m
-a $S -r 172.16.0.3:80 -m
-a $S -r 172.16.0.4:80 -m
EOF2
dump_ipvs before-
{
    for i in $(seq 9); do req rr; done
    step sh ipvsadm -a $S -r 172.16.0.5:80 -m
    for i in $(seq 8); do req rr-added-rs4; done
    step sh ipvsadm -e $S -r 172.16.0.3:80 -m -w 0
    for i in $(seq 6); do req rr-rs2-w0; done
    step sh ipvsadm -d $S -r 172.16.0.2:80
    for i in $(seq 6); do req rr-rs1-deleted; done
    step sh ipvsadm -e $S -r 172.16.0.3:80 -m -w 1
    for i in $(seq 6); do req rr-rs2-w1; done
    snapshot end
} | sched_run
cleanup
