# wrr known-answer sequence: weights 1,2,3; a weight raised mid-stream
# (ipvsadm -e), a weight 0, a new server, then every weight 0.
. "$LIB/oracle.sh"
sched_lab 4
S="-t 203.0.113.5:80"
ipvs_rules <<EOF2
-A $S -s wrr
-a $S -r 172.16.0.2:80 -m -w 1
-a $S -r 172.16.0.3:80 -m -w 2
-a $S -r 172.16.0.4:80 -m -w 3
EOF2
dump_ipvs before-
{
    for i in $(seq 12); do req wrr-123; done
    step sh ipvsadm -e $S -r 172.16.0.2:80 -m -w 4
    for i in $(seq 20); do req wrr-423; done
    step sh ipvsadm -e $S -r 172.16.0.3:80 -m -w 0
    for i in $(seq 10); do req wrr-403; done
    step sh ipvsadm -a $S -r 172.16.0.5:80 -m -w 2
    for i in $(seq 10); do req wrr-4032; done
    step sh ipvsadm -e $S -r 172.16.0.2:80 -m -w 0
    step sh ipvsadm -e $S -r 172.16.0.4:80 -m -w 0
    step sh ipvsadm -e $S -r 172.16.0.5:80 -m -w 0
    for i in $(seq 2); do req wrr-all0; done
    step sh ipvsadm -e $S -r 172.16.0.3:80 -m -w 6
    step sh ipvsadm -e $S -r 172.16.0.5:80 -m -w 4
    for i in $(seq 10); do req wrr-0604; done
    snapshot end
} | sched_run
cleanup
