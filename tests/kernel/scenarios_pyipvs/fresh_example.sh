# fresh_example: a scenario written for the differential suite's
# demonstration (not one of the recorded goldens).  wrr with weights 3,1,2,
# two held connections, a weight set to 0 mid-stream, and a persistent
# service (-p 30, port 8080 mapped to the servers' 80) visited by two
# clients in turn.  Run it on both backends with
#   tools/ipvs-diff run tests/kernel/scenarios_pyipvs/fresh_example.sh
. "$LIB/oracle.sh"
sched_lab 3
S="-t 203.0.113.5:80"
P="-t 203.0.113.5:8080"
ipvs_rules <<EOF2
-A $S -s wrr
-a $S -r 172.16.0.2:80 -m -w 3
-a $S -r 172.16.0.3:80 -m -w 1
-a $S -r 172.16.0.4:80 -m -w 2
-A $P -s rr -p 30
-a $P -r 172.16.0.2:80 -m
-a $P -r 172.16.0.3:80 -m
EOF2
dump_ipvs before-
{
    for i in $(seq 6); do req wrr-fresh; done
    hold h1; hold h1
    snapshot held2
    step sh ipvsadm -e $S -r 172.16.0.3:80 -m -w 0
    for i in $(seq 4); do req wrr-w0; done
    for c in 198.51.100.2 198.51.100.3 198.51.100.2 198.51.100.3; do req persist $c 203.0.113.5 8080; done
    snapshot persist
    step release-all
} | sched_run
cleanup
