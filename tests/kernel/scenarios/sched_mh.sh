# mh known-answer sequence (Maglev hashing, 251-entry table): 32 client
# addresses, again (stable), weights 1,2,3 then a weight raised (the table is
# rebuilt), a server added, a server removed (about 1/N of
# the keys move), weight 0 without and with -b mh-fallback, -b mh-port.
. "$LIB/oracle.sh"
sched_lab 4
S="-t 203.0.113.5:80"
F="-t 203.0.113.5:81"
P="-t 203.0.113.5:82"
ipvs_rules <<EOF2
-A $S -s mh
-a $S -r 172.16.0.2:80 -m -w 1
-a $S -r 172.16.0.3:80 -m -w 2
-a $S -r 172.16.0.4:80 -m -w 3
-A $F -s mh -b mh-fallback
-a $F -r 172.16.0.2:80 -m
-a $F -r 172.16.0.3:80 -m
-a $F -r 172.16.0.4:80 -m
-A $P -s mh -b mh-port
-a $P -r 172.16.0.2:80 -m
-a $P -r 172.16.0.3:80 -m
-a $P -r 172.16.0.4:80 -m
EOF2
dump_ipvs before-
{
    for a in $CLIENTS; do req mh $a; done
    for a in $CLIENTS; do req mh-again $a; done
    step sh ipvsadm -e $S -r 172.16.0.2:80 -m -w 4
    for a in $CLIENTS; do req mh-rs1-w4 $a; done
    step sh ipvsadm -a $S -r 172.16.0.5:80 -m -w 1
    for a in $CLIENTS; do req mh-rs4-added $a; done
    step sh ipvsadm -d $S -r 172.16.0.3:80
    for a in $CLIENTS; do req mh-rs2-deleted $a; done
    step sh ipvsadm -e $S -r 172.16.0.4:80 -m -w 0
    step sh ipvsadm -e $F -r 172.16.0.4:80 -m -w 0
    for a in $CLIENTS; do req mh-rs3-w0 $a; done
    for a in $CLIENTS; do req mh-fallback-rs3-w0 $a 203.0.113.5 81; done
    for i in $(seq 16); do req mh-port 198.51.100.2 203.0.113.5 82; done
    for i in $(seq 16); do req mh-port 198.51.100.3 203.0.113.5 82; done
    snapshot end
} | sched_run 0.02
cleanup
