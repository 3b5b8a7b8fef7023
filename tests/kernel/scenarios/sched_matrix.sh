# A scheduler matrix: every 6.1 scheduler on a service of its own (VIP
# ports 81-93) over the same three servers with weights 1, 2 and 3; two
# held connections, then eight requests from eight clients, on each.
. "$LIB/oracle.sh"
sched_lab 3
SCHEDS="rr wrr lc wlc lblc lblcr dh sh sed nq fo ovf mh"
{
    p=80
    for s in $SCHEDS; do
        p=$((p + 1))
        echo "-A -t 203.0.113.5:$p -s $s"
        for k in 1 2 3; do echo "-a -t 203.0.113.5:$p -r 172.16.0.$((k + 1)):80 -m -w $k"; done
    done
} | ipvs_rules
dump_ipvs before-
{
    p=80
    for s in $SCHEDS; do
        p=$((p + 1))
        hold "$s-held" 198.51.100.2 203.0.113.5 $p
        hold "$s-held" 198.51.100.3 203.0.113.5 $p
        for c in 4 5 6 7 8 9 10 11; do req "$s" 198.51.100.$c 203.0.113.5 $p; done
    done
    snapshot held
    step release-all
} | sched_run 0.02
cleanup
