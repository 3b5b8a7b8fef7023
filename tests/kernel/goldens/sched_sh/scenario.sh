# sh known-answer sequence: 32 client addresses (source hashing), the same
# again (stable), weights 1,2,1 (weight = buckets), a weight 0 without and
# with -b sh-fallback, and -b sh-port (the client port joins the hash).
. "$LIB/oracle.sh"
sched_lab 3
S="-t 203.0.113.5:80"
F="-t 203.0.113.5:81"
P="-t 203.0.113.5:82"
ipvs_rules <<EOF2
-A $S -s sh
-a $S -r 172.16.0.2:80 -m -w 1
-a $S -r 172.16.0.3:80 -m -w 2
-a $S -r 172.16.0.4:80 -m -w 1
-A $F -s sh -b sh-fallback
-a $F -r 172.16.0.2:80 -m -w 1
-a $F -r 172.16.0.3:80 -m -w 2
-a $F -r 172.16.0.4:80 -m -w 1
-A $P -s sh -b sh-port
-a $P -r 172.16.0.2:80 -m
-a $P -r 172.16.0.3:80 -m
-a $P -r 172.16.0.4:80 -m
EOF2
dump_ipvs before-
{
    for a in $CLIENTS; do req sh $a; done
    for a in $CLIENTS; do req sh-again $a; done
    step sh ipvsadm -e $S -r 172.16.0.3:80 -m -w 0
    step sh ipvsadm -e $F -r 172.16.0.3:80 -m -w 0
    for a in $CLIENTS; do req sh-rs2-w0 $a; done
    for a in $CLIENTS; do req sh-fallback-rs2-w0 $a 203.0.113.5 81; done
    for i in $(seq 16); do req sh-port 198.51.100.2 203.0.113.5 82; done
    for i in $(seq 16); do req sh-port 198.51.100.3 203.0.113.5 82; done
    step sh ipvsadm -e $S -r 172.16.0.3:80 -m -w 1
    step sh ipvsadm -a $S -r 172.16.0.5:80 -m -w 1
    for a in $CLIENTS; do req sh-w1111-rs4-missing $a; done
    snapshot end
} | sched_run 0.02
cleanup
