# wlc with held connections while a server's weight is raised, set to 0
# and restored: where the next requests go at each step.
. "$LIB/oracle.sh"
sched_lab 3
S="-t 203.0.113.5:80"
ipvs_rules <<'EOF2'
-A -t 203.0.113.5:80 -s wlc
-a -t 203.0.113.5:80 -r 172.16.0.2:80 -m -w 1
-a -t 203.0.113.5:80 -r 172.16.0.3:80 -m -w 1
-a -t 203.0.113.5:80 -r 172.16.0.4:80 -m -w 1
EOF2
dump_ipvs before-
{
    for c in 2 3 4 5; do hold h 198.51.100.$c; done
    snapshot held
    step sh ipvsadm -e $S -r 172.16.0.3:80 -m -w 4
    for c in 6 7 8 9; do req w4 198.51.100.$c; done
    step sh ipvsadm -e $S -r 172.16.0.3:80 -m -w 0
    for c in 10 11 12; do req w0 198.51.100.$c; done
    step ping h
    step sh ipvsadm -e $S -r 172.16.0.3:80 -m -w 1
    for c in 13 14 15; do req w1 198.51.100.$c; done
    snapshot end
} | sched_run
cleanup
