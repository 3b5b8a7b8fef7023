# ovf known-answer sequence: weights 3,2,1; connections held until every
# server is at its weight (then no server: refused), RST recovery, weight 0.
. "$LIB/oracle.sh"
sched_lab 3
S="-t 203.0.113.5:80"
ipvs_rules <<EOF2
-A $S -s ovf
-a $S -r 172.16.0.2:80 -m -w 3
-a $S -r 172.16.0.3:80 -m -w 2
-a $S -r 172.16.0.4:80 -m -w 1
EOF2
dump_ipvs before-
{
    for i in $(seq 4); do req ovf-fresh; done
    for i in $(seq 7); do hold h$i; done
    snapshot held7
    for i in $(seq 3); do req ovf-full; done
    step rst-label h1
    step rst-label h2
    step sleep 0.5
    for i in $(seq 3); do req ovf-after-rst; done
    step sh ipvsadm -e $S -r 172.16.0.2:80 -m -w 0
    for i in $(seq 3); do req ovf-rs1-w0; done
    step sh ipvsadm -e $S -r 172.16.0.4:80 -m -w 9
    for i in $(seq 4); do req ovf-rs3-w9; done
    snapshot end
    step release-all
} | sched_run
cleanup
