# Every ipvsadm listing form over a rich rule set: TCP/UDP services, fwmark
# services (1 and 4294967295), persistence (-p, -p 60 -M), one-packet UDP, sh
# and mh with -b flags, thresholds, -g/-i/-m destinations (with tunnel
# options), weight 0, ports by name, and addresses that exercise ipvsadm's
# sort (1.0.0.0 vs 200.0.0.0).  Then a little traffic, --set, -Z and -C.
# listings-*.jsonl/.txt are transcripts (argv, stdout, stderr, rc per
# command); the dump_ipvs files use the classic names.
. "$LIB/oracle.sh"
setup_nat 3 198.51.100.2 198.51.100.3
add_vip 203.0.113.5
start_servers 1:80 2:8080 3:80 1:53/udp 2:5353/udp
ipvs_rules <<'EOF'
-A -t 203.0.113.5:http -s wlc
-a -t 203.0.113.5:http -r 172.16.0.2:http -m -w 3
-a -t 203.0.113.5:http -r 172.16.0.3:8080 -m -w 0
-a -t 203.0.113.5:http -r 172.16.0.4 -m -x 100 -y 50
-A -u 203.0.113.5:domain -s rr
-a -u 203.0.113.5:domain -r 172.16.0.2:53 -m
-a -u 203.0.113.5:domain -r 172.16.0.3:5353 -m -w 2
-A -u 203.0.113.5:5000 -s rr -o
-a -u 203.0.113.5:5000 -r 172.16.0.2:5000 -m
-A -f 1 -s wrr
-a -f 1 -r 172.16.0.2 -g -w 1
-a -f 1 -r 172.16.0.3 -i -w 2
-A -f 4294967295 -s lc -p
-a -f 4294967295 -r 172.16.0.4:0 -m
-A -t 203.0.113.5:https -s lblc -p
-a -t 203.0.113.5:https -r 172.16.0.2 -m
-a -t 203.0.113.5:https -r 172.16.0.3 -m -w 5
-A -t 203.0.113.6:https -s lblcr -p 60 -M 255.255.255.0
-a -t 203.0.113.6:https -r 172.16.0.4:443 -m
-A -t 203.0.113.5:0 -s dh -p 300
-a -t 203.0.113.5:0 -r 172.16.0.2 -m
-A -t 203.0.113.5:8000 -s sh -b sh-fallback,sh-port
-a -t 203.0.113.5:8000 -r 172.16.0.2:80 -m
-a -t 203.0.113.5:8000 -r 172.16.0.4:80 -m
-A -t 203.0.113.5:8001 -s mh -b mh-port
-a -t 203.0.113.5:8001 -r 172.16.0.2:80 -m
-A -t 203.0.113.5:8002 -s mh -b mh-fallback,mh-port
-A -t 203.0.113.5:ftp -s sed
-a -t 203.0.113.5:ftp -r 172.16.0.3:21 -m -w 65535
-A -t 203.0.113.5:8003 -s nq
-A -t 203.0.113.5:8004 -s fo
-a -t 203.0.113.5:8004 -r 172.16.0.2:80 -g
-a -t 203.0.113.5:8004 -r 172.16.0.3:80 -i --tun-type gue --tun-port 6080 --tun-nocsum
-a -t 203.0.113.5:8004 -r 172.16.0.4:80 -i --tun-type gre --tun-csum
-A -t 203.0.113.5:8005 -s ovf
-a -t 203.0.113.5:8005 -r 172.16.0.2:80 -m -w 2 -x 2147483647 -y 0
-A -t 1.0.0.0:80 -s rr
-a -t 1.0.0.0:80 -r 200.0.0.1:80 -m
-a -t 1.0.0.0:80 -r 1.0.0.1:80 -m
-a -t 1.0.0.0:80 -r 127.0.0.2:80 -m
-a -t 1.0.0.0:80 -r 128.0.0.1:80 -m
-A -t 200.0.0.0:80 -s rr
-A -t 127.0.0.1:80 -s rr
-A -t 128.0.0.0:80 -s rr
-A -u 200.0.0.0:80 -s rr
-A -u 1.0.0.0:80 -s rr
-A -f 2 -s rr -p 1800 -M 255.255.0.0
-A -f 3 -6 -s wlc
EOF
L="ipvsadm -Ln"
LIST_FORMS=$(cat <<EOF
$L
ipvsadm -L
ipvsadm -l -n
ipvsadm
$L --stats
$L --rate
$L --exact --stats
$L --exact --rate
$L --exact
$L --thresholds
$L --persistent-conn
$L --tun-info
$L --nosort
$L --nosort --stats
$L --sort
$L -t 203.0.113.5:80
$L -t 203.0.113.5:http --stats
$L -t 203.0.113.5:http --rate --exact
$L -u 203.0.113.5:53
$L -u 203.0.113.5:5000
$L -f 1
$L -f 4294967295
$L -f 2 --persistent-conn
$L -f 3 -6
$L -t 1.0.0.0:80 --nosort
$L -t 203.0.113.5:8004 --tun-info
$L -t 203.0.113.5:8005 --thresholds
ipvsadm -L -t 203.0.113.5:80
ipvsadm -L -t 203.0.113.5:https --thresholds
ipvsadm -L -u 203.0.113.5:domain
$L --timeout
$L --daemon
ipvsadm -L --timeout
ipvsadm -S
ipvsadm -S -n
ipvsadm -Sn
ipvsadm --save --numeric
ipvsadm -Lnc
ipvsadm -Lc
ipvsadm -Lnc --persistent-conn
ipvsadm -Lnc --exact
EOF
)
dump_ipvs before-
echo "$LIST_FORMS" | transcript listings-before
# a little traffic so that counters, rates and connection entries exist
capture_start client-side cli0
capture_start server-side br0
R=$OUT/requests.txt
echo "# label n src_addr:src_port server_body" > "$R"
client_steps 0.1 >> "$R" <<'EOF'
http 198.51.100.2 40001 203.0.113.5 80
http 198.51.100.2 40002 203.0.113.5 80
http 198.51.100.3 40003 203.0.113.5 80
!udp dns 198.51.100.2 40004 203.0.113.5 53
!udp dns 198.51.100.2 40005 203.0.113.5 53
!udp dns 198.51.100.3 40006 203.0.113.5 53
!hold held 198.51.100.2 40007 203.0.113.5 80
!hold held 198.51.100.3 40008 203.0.113.5 8000
!hold held 198.51.100.3 40009 203.0.113.5 8001
!sleep 4
!sh ipvsadm -Ln --rate > "$OUT/during-ipvsadm-Ln-rate.txt"
!sh ipvsadm -Ln --stats > "$OUT/during-ipvsadm-Ln-stats.txt"
!sh ipvsadm -Ln > "$OUT/during-ipvsadm-Ln.txt"
!sh ipvsadm -Lnc > "$OUT/during-ipvsadm-Lnc.txt"
!sh ipvsadm -Ln --persistent-conn > "$OUT/during-ipvsadm-Ln-persistent-conn.txt"
!sh cat /proc/net/ip_vs_conn > "$OUT/during-proc-net-ip_vs_conn.txt"
!release-all
EOF
capture_stop
order_summary
dump_ipvs
echo "$LIST_FORMS" | transcript listings-after-traffic
transcript listings-set-zero-clear <<EOF
# --set changes the timeouts shown by --timeout
ipvsadm --set 100 20 30
$L --timeout
ipvsadm -L --timeout
ipvsadm --set 0 0 0
$L --timeout
ipvsadm --set 900 120 300
$L --timeout
# -Z on one service, then all
$L --stats --exact
ipvsadm -Z -t 203.0.113.5:http
$L --stats --exact
ipvsadm -Z
$L --stats --exact
$L --rate --exact
# -C and the empty table
ipvsadm -C
$L
ipvsadm -L
ipvsadm -S -n
$L --stats
$L --rate
$L --thresholds
$L --persistent-conn
ipvsadm -Lnc
EOF
dump_ipvs cleared-
cat "$OUT/order.txt"
cleanup
