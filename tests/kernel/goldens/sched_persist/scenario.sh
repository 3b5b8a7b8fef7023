# Persistence: rr with -p 30 (per client address), rr with -p 60 -M
# 255.255.255.252 (per /30 of clients), rr with -p 60 -M 255.255.255.0 (one
# template for all the clients), a persistent port-0 service (any
# port of the VIP) and a persistent fwmark service; the templates
# (port 0 entries, state NONE) are in ipvsadm-Lnc / proc-net-ip_vs_conn.
. "$LIB/oracle.sh"
sched_lab 3 203.0.113.6 203.0.113.7
mark_dst 203.0.113.7/32 5
ipvs_rules <<'EOF2'
-A -t 203.0.113.5:80 -s rr -p 30
-a -t 203.0.113.5:80 -r 172.16.0.2:80 -m
-a -t 203.0.113.5:80 -r 172.16.0.3:80 -m
-a -t 203.0.113.5:80 -r 172.16.0.4:80 -m
-A -t 203.0.113.5:81 -s rr -p 60 -M 255.255.255.252
-a -t 203.0.113.5:81 -r 172.16.0.2:80 -m
-a -t 203.0.113.5:81 -r 172.16.0.3:80 -m
-a -t 203.0.113.5:81 -r 172.16.0.4:80 -m
-A -t 203.0.113.5:82 -s rr -p 60 -M 255.255.255.0
-a -t 203.0.113.5:82 -r 172.16.0.2:80 -m
-a -t 203.0.113.5:82 -r 172.16.0.3:80 -m
-a -t 203.0.113.5:82 -r 172.16.0.4:80 -m
-A -t 203.0.113.6:0 -s rr -p 120
-a -t 203.0.113.6:0 -r 172.16.0.2 -m
-a -t 203.0.113.6:0 -r 172.16.0.3 -m
-a -t 203.0.113.6:0 -r 172.16.0.4 -m
-A -f 5 -s wrr -p 45
-a -f 5 -r 172.16.0.2:80 -m -w 1
-a -f 5 -r 172.16.0.3:80 -m -w 2
-a -f 5 -r 172.16.0.4:80 -m -w 3
EOF2
dump_ipvs before-
{
    for r in 1 2 3; do for k in $(seq 2 9); do req p30-round$r 198.51.100.$k; done; done
    snapshot p30
    for r in 1 2; do for k in $(seq 2 13); do req mask30-round$r 198.51.100.$k 203.0.113.5 81; done; done
    snapshot mask
    for k in $(seq 2 9); do req mask24 198.51.100.$k 203.0.113.5 82; done
    for k in $(seq 2 7); do req port0 198.51.100.$k 203.0.113.6 80; done
    for k in $(seq 2 7); do req port0-again 198.51.100.$k 203.0.113.6 80; done
    for r in 1 2; do for k in $(seq 2 7); do req fwm5-round$r 198.51.100.$k 203.0.113.7 80; done; done
    step sh ipvsadm -e -t 203.0.113.5:80 -r 172.16.0.3:80 -m -w 0
    for k in $(seq 2 9); do req p30-rs2-w0 198.51.100.$k; done
    step sh ipvsadm -d -t 203.0.113.5:80 -r 172.16.0.4:80
    for k in $(seq 2 9); do req p30-rs3-deleted 198.51.100.$k; done
    step 'sh ipvsadm -Ln --persistent-conn > "$OUT/end-ipvsadm-Ln-persistent-conn.txt"'
    snapshot end
} | sched_run
cleanup
