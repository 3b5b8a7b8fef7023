# UDP through VS/NAT both ways, one-packet scheduling (-o), and an ICMP port
# unreachable from a real server with nothing on the UDP port, rewritten by
# IPVS back to the client (see client-side.txt: the ICMP comes from the VIP
# and quotes the client's original datagram to the VIP).  With -o, the
# connection entry lives for one packet only: the real server's answer is not
# rewritten (it leaves with 172.16.0.x as source, see the captures), so the
# client's connected socket never gets it (TimeoutError in requests.txt).
. "$LIB/oracle.sh"
setup_nat 2 198.51.100.2 198.51.100.3
add_vip 203.0.113.5
start_servers 1:53/udp 2:53/udp 1:5000/udp 2:5000/udp
ipvs_rules <<'EOF2'
-A -u 203.0.113.5:53 -s rr
-a -u 203.0.113.5:53 -r 172.16.0.2:53 -m
-a -u 203.0.113.5:53 -r 172.16.0.3:53 -m
-A -u 203.0.113.5:54 -s rr
-a -u 203.0.113.5:54 -r 172.16.0.2:9999 -m
-A -u 203.0.113.5:5000 -s rr -o
-a -u 203.0.113.5:5000 -r 172.16.0.2:5000 -m
-a -u 203.0.113.5:5000 -r 172.16.0.3:5000 -m
EOF2
dump_ipvs before-
capture_start client-side cli0
capture_start server-side br0
R=$OUT/requests.txt
echo "# label n src_addr:src_port server_body" > "$R"
client_steps 0.05 >> "$R" <<'EOF2'
!udp udp-rr 198.51.100.2 42001 203.0.113.5 53
!udp udp-rr 198.51.100.2 42002 203.0.113.5 53
!udp udp-rr 198.51.100.3 42003 203.0.113.5 53
!udp udp-rr-same-tuple 198.51.100.2 42001 203.0.113.5 53
!udp udp-rr-same-tuple 198.51.100.2 42001 203.0.113.5 53
!udp udp-icmp 198.51.100.2 42010 203.0.113.5 54
!udp udp-icmp-again 198.51.100.2 42010 203.0.113.5 54
!udp udp-ops 198.51.100.2 42020 203.0.113.5 5000
!udp udp-ops-same-tuple 198.51.100.2 42020 203.0.113.5 5000
!udp udp-ops-same-tuple 198.51.100.2 42020 203.0.113.5 5000
!udp udp-ops-same-tuple 198.51.100.2 42020 203.0.113.5 5000
!sh ipvsadm -Lnc > "$OUT/mid-ipvsadm-Lnc.txt"; cat /proc/net/ip_vs_conn > "$OUT/mid-proc-net-ip_vs_conn.txt"
!sh ipvsadm --set 900 120 17
!udp udp-after-set 198.51.100.3 42030 203.0.113.5 53
!sh ipvsadm -Lnc > "$OUT/set-ipvsadm-Lnc.txt"; ipvsadm --set 900 120 300
!udp udp-no-service 198.51.100.2 42040 203.0.113.5 55
EOF2
capture_stop
order_summary
dump_ipvs
cat "$OUT/order.txt"
cleanup
