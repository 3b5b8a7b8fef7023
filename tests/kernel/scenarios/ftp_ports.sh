# ip_vs_ftp on two ports (modprobe ip_vs_ftp ports=21,2100): FTP services on
# VIP:21 and VIP:2100 (mapped to the server's 21), passive and active
# sessions on each; the 227 and PORT lines are rewritten on both.
. "$LIB/oracle.sh"
setup_nat 1 198.51.100.2
add_vip 203.0.113.5
modprobe ip_vs_ftp ports=21,2100 || die "modprobe ip_vs_ftp"
python3 "$LIB/ftp.py" server "$OUT" 1 50000 > /tmp/ftpd.out 2> "$OUT/ftpd.err" &
SERVERS_PID=$!
for i in $(seq 1 100); do grep -q ready /tmp/ftpd.out && break; sleep 0.1; done
ipvs_rules <<'EOF2'
-A -t 203.0.113.5:21 -s rr
-a -t 203.0.113.5:21 -r 172.16.0.2:21 -m
-A -t 203.0.113.5:2100 -s rr
-a -t 203.0.113.5:2100 -r 172.16.0.2:21 -m
EOF2
dump_ipvs before-
capture_start client-side cli0
capture_start server-side br0
S=$OUT/ftp-session.txt
python3 "$LIB/ftp.py" client "$S" 198.51.100.2 43101 203.0.113.5 passive 43102
python3 "$LIB/ftp.py" client "$S" 198.51.100.2 43103 203.0.113.5:2100 passive 43104
dump_conn passive-
python3 "$LIB/ftp.py" client "$S" 198.51.100.2 43105 203.0.113.5:2100 active 43106
dump_conn active-
capture_stop
dump_ipvs
[ -s "$OUT/ftpd.err" ] || rm -f "$OUT/ftpd.err"
cat "$S"
cleanup
