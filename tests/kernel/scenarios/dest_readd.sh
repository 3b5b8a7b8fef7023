# Destinations removed and re-added while they hold connections: three held
# connections (wlc: one per server), rs1 deleted (its connection stays and
# its packets are dropped: expire_nodest_conn 0; a ping through it goes
# unanswered), new requests spread over the others, rs1 added back (revived
# from the trash with its connection: the ping's retransmission gets
# through), rs2 deleted and re-added with another weight.
. "$LIB/oracle.sh"
sched_lab 3
S="-t 203.0.113.5:80"
ipvs_rules <<EOF2
-A $S -s wlc
-a $S -r 172.16.0.2:80 -m
-a $S -r 172.16.0.3:80 -m
-a $S -r 172.16.0.4:80 -m
EOF2
dump_ipvs before-
{
    hold h 198.51.100.2; hold h 198.51.100.3; hold h 198.51.100.4
    snapshot held
    step sh ipvsadm -d $S -r 172.16.0.2:80
    snapshot deleted
    for c in 5 6 7 8; do req after-del 198.51.100.$c; done
    step sh ipvsadm -a $S -r 172.16.0.2:80 -m
    snapshot readded
    step ping h
    for c in 9 10 11 12; do req after-readd 198.51.100.$c; done
    step sh ipvsadm -d $S -r 172.16.0.3:80
    step sh ipvsadm -a $S -r 172.16.0.3:80 -m -w 3
    for c in 13 14 15 16 17; do req after-w3 198.51.100.$c; done
    snapshot end
    step release-all
} | sched_run
cleanup
