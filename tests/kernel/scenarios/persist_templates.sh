# Persistence with templates: -p 20 over three servers (each client sticks
# to one; the templates in -Lnc), -p 30 -M 255.255.255.0 (a whole /24 sticks
# together), a held connection pinged through, then the template's server at
# weight 0 (expire_quiescent_template 0 keeps the client there, 1 drops the
# template and schedules it again), and the held connection aborted by its
# server.
. "$LIB/oracle.sh"
sched_lab 3
P="-t 203.0.113.5:80"
Q="-t 203.0.113.5:8080"
ipvs_rules <<EOF2
-A $P -s rr -p 20
-a $P -r 172.16.0.2:80 -m
-a $P -r 172.16.0.3:80 -m
-a $P -r 172.16.0.4:80 -m
-A $Q -s rr -p 30 -M 255.255.255.0
-a $Q -r 172.16.0.2:80 -m
-a $Q -r 172.16.0.3:80 -m
EOF2
dump_ipvs before-
{
    for c in 2 3 4 2 3 4 5; do req p20 198.51.100.$c; done
    hold h 198.51.100.6
    step ping h
    snapshot templates
    for c in 2 3 4 5; do req mask24 198.51.100.$c 203.0.113.5 8080; done
    step sh ipvsadm -e $P -r 172.16.0.4:80 -m -w 0
    for c in 2 3 4; do req after-w0 198.51.100.$c; done
    step 'sh echo 1 > /proc/sys/net/ipv4/vs/expire_quiescent_template'
    for c in 2 3 4; do req after-eqt 198.51.100.$c; done
    step abort h
    step sleep 2
    snapshot end
} | sched_run
cleanup
