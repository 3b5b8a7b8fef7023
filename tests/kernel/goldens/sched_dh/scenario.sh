# dh known-answer sequence: destination hashing needs several destination
# addresses, so the service is a fwmark service (-f 1) over the 8 VIPs
# 203.0.113.16-23 (marked by iptables); weight 0 and a removed server.
. "$LIB/oracle.sh"
VIPS=$(for i in $(seq 16 23); do echo 203.0.113.$i; done)
# shellcheck disable=SC2086
sched_lab 3 $VIPS
mark_dst 203.0.113.16/29 1
ipvs_rules <<EOF2
-A -f 1 -s dh
-a -f 1 -r 172.16.0.2 -m
-a -f 1 -r 172.16.0.3 -m
-a -f 1 -r 172.16.0.4 -m -w 3
EOF2
dump_ipvs before-
{
    for v in $VIPS; do req dh 198.51.100.2 $v; done
    for v in $VIPS; do req dh-other-client 198.51.100.9 $v; done
    step sh ipvsadm -e -f 1 -r 172.16.0.3 -m -w 0
    for v in $VIPS; do req dh-rs2-w0 198.51.100.2 $v; done
    step sh ipvsadm -d -f 1 -r 172.16.0.2
    for v in $VIPS; do req dh-rs1-deleted 198.51.100.2 $v; done
    snapshot end
} | sched_run
cleanup
