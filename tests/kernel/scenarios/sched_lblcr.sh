# lblcr known-answer sequence: locality by destination address, so the
# service is a fwmark service (-f 1) over the 8 VIPs 203.0.113.16-23 (marked
# by iptables); connections held open until a server counts as overloaded
# (active > weight) so that lblcr moves (or adds) a server for that address;
# then lblcr_expiration is cut to 3 s so that the grown server sets shrink.
. "$LIB/oracle.sh"
VIPS=$(for i in $(seq 16 23); do echo 203.0.113.$i; done)
# shellcheck disable=SC2086
sched_lab 3 $VIPS
mark_dst 203.0.113.16/29 1
ipvs_rules <<EOF2
-A -f 1 -s lblcr
-a -f 1 -r 172.16.0.2 -m -w 1
-a -f 1 -r 172.16.0.3 -m -w 2
-a -f 1 -r 172.16.0.4 -m -w 1
EOF2
dump_ipvs before-
{
    for v in $VIPS; do req lblcr 198.51.100.2 $v; done
    for v in $VIPS; do req lblcr-again 198.51.100.3 $v; done
    for i in 1 2 3 4; do hold h16 198.51.100.2 203.0.113.16; done
    snapshot held16
    for i in 1 2 3; do req lblcr-16-loaded 198.51.100.4 203.0.113.16; done
    for i in 1 2 3 4 5 6; do hold h17 198.51.100.2 203.0.113.17; done
    for i in 1 2 3; do req lblcr-17-loaded 198.51.100.4 203.0.113.17; done
    for v in $VIPS; do req lblcr-all-loaded 198.51.100.5 $v; done
    step rst-all
    step sleep 0.5
    for v in $VIPS; do req lblcr-after-rst 198.51.100.6 $v; done
    step 'sh echo 3 > /proc/sys/net/ipv4/vs/lblcr_expiration'
    step sleep 4
    for v in $VIPS; do req lblcr-set-expired 198.51.100.8 $v; done
    for v in $VIPS; do req lblcr-set-expired-again 198.51.100.8 $v; done
    step sh ipvsadm -e -f 1 -r 172.16.0.3 -m -w 0
    for v in $VIPS; do req lblcr-rs2-w0 198.51.100.7 $v; done
    snapshot end
} | sched_run
cleanup
