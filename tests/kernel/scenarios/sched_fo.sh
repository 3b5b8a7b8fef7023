# fo known-answer sequence: weights 1,2,3 (all to the heaviest), weight
# changes, a tie with a newly added server, weight 0 everywhere.
. "$LIB/oracle.sh"
sched_lab 4
S="-t 203.0.113.5:80"
ipvs_rules <<EOF2
-A $S -s fo
-a $S -r 172.16.0.2:80 -m -w 1
-a $S -r 172.16.0.3:80 -m -w 2
-a $S -r 172.16.0.4:80 -m -w 3
EOF2
dump_ipvs before-
{
    for i in $(seq 4); do req fo-123; done
    step sh ipvsadm -e $S -r 172.16.0.4:80 -m -w 0
    for i in $(seq 3); do req fo-120; done
    step sh ipvsadm -e $S -r 172.16.0.2:80 -m -w 5
    for i in $(seq 3); do req fo-520; done
    step sh ipvsadm -a $S -r 172.16.0.5:80 -m -w 5
    for i in $(seq 3); do req fo-5205-tie; done
    step sh ipvsadm -e $S -r 172.16.0.3:80 -m -w 5
    for i in $(seq 3); do req fo-5505-tie3; done
    step sh ipvsadm -e $S -r 172.16.0.2:80 -m -w 0
    step sh ipvsadm -e $S -r 172.16.0.3:80 -m -w 0
    step sh ipvsadm -e $S -r 172.16.0.5:80 -m -w 0
    for i in $(seq 2); do req fo-all0; done
    snapshot end
} | sched_run
cleanup
