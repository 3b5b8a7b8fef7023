# The FTP helper (ip_vs_ftp) in VS/NAT: passive and active sessions through a
# persistent FTP service (-p, the classic set-up) and a passive session
# through a non-persistent one, where only ip_vs_ftp's expectation of the
# data connection gets it to the right server.  Captures on both sides show
# the 227 reply rewritten from 172.16.0.2 to the VIP (a longer line: the
# sequence numbers after it shift) and the PORT address; EPSV and EPRT
# sessions show what ip_vs_ftp does with RFC 2428's commands; ftp-session.txt has
# each session as the client saw it, rs1-21-ftp.log as the server saw it.
. "$LIB/oracle.sh"
setup_nat 1 198.51.100.2
add_vip 203.0.113.5
add_vip 203.0.113.6
modprobe ip_vs_ftp || die "modprobe ip_vs_ftp"
python3 "$LIB/ftp.py" server "$OUT" 1 50000 > /tmp/ftpd.out 2> "$OUT/ftpd.err" &
SERVERS_PID=$!
for i in $(seq 1 100); do grep -q ready /tmp/ftpd.out && break; sleep 0.1; done
ipvs_rules <<'EOF2'
-A -t 203.0.113.5:21 -s rr -p
-a -t 203.0.113.5:21 -r 172.16.0.2:21 -m
-A -t 203.0.113.6:21 -s rr
-a -t 203.0.113.6:21 -r 172.16.0.2:21 -m
EOF2
dump_ipvs before-
capture_start client-side cli0
capture_start server-side br0
S=$OUT/ftp-session.txt
python3 "$LIB/ftp.py" client "$S" 198.51.100.2 43001 203.0.113.5 passive 43002
dump_conn passive-
python3 "$LIB/ftp.py" client "$S" 198.51.100.2 43003 203.0.113.5 active 43004
dump_conn active-
python3 "$LIB/ftp.py" client "$S" 198.51.100.2 43005 203.0.113.6 passive 43006
dump_conn nonpersistent-passive-
python3 "$LIB/ftp.py" client "$S" 198.51.100.2 43007 203.0.113.6 active 43008
dump_conn nonpersistent-active-
# The extended commands (RFC 2428): EPSV carries no address, EPRT does.
python3 "$LIB/ftp.py" client "$S" 198.51.100.2 43009 203.0.113.6 epsv 43010
dump_conn nonpersistent-epsv-
python3 "$LIB/ftp.py" client "$S" 198.51.100.2 43011 203.0.113.6 eprt 43012
dump_conn nonpersistent-eprt-
python3 "$LIB/ftp.py" client "$S" 198.51.100.2 43013 203.0.113.5 epsv 43014
capture_stop
dump_ipvs
[ -s "$OUT/ftpd.err" ] || rm -f "$OUT/ftpd.err"
cat "$S"
cleanup
