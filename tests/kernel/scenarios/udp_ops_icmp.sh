# UDP: an ordinary service (replies rewritten, one entry per client port),
# one-packet scheduling (-o: every datagram scheduled on its own, the entry
# gone after it, so the reply leaves un-NATed), and a service whose server
# port has no listener (the ICMP port unreachable is rewritten back to the
# client, from the VIP).
. "$LIB/oracle.sh"
setup_nat 2 198.51.100.2 198.51.100.3
add_vip 203.0.113.5
start_servers 1:53/udp 2:53/udp
ipvs_rules <<'EOF2'
-A -u 203.0.113.5:53 -s rr
-a -u 203.0.113.5:53 -r 172.16.0.2:53 -m
-a -u 203.0.113.5:53 -r 172.16.0.3:53 -m
-A -u 203.0.113.5:54 -s rr -o
-a -u 203.0.113.5:54 -r 172.16.0.2:53 -m
-a -u 203.0.113.5:54 -r 172.16.0.3:53 -m
-A -u 203.0.113.5:55 -s rr
-a -u 203.0.113.5:55 -r 172.16.0.2:5555 -m
EOF2
dump_ipvs before-
capture_start client-side cli0
capture_start server-side br0
echo "# label n src_addr:src_port server_body" > "$OUT/requests.txt"
client_steps 0.05 >> "$OUT/requests.txt" <<'EOF2'
!udp u53 198.51.100.2 41001 203.0.113.5 53
!udp u53 198.51.100.2 41001 203.0.113.5 53
!udp u53 198.51.100.2 41002 203.0.113.5 53
!udp u53 198.51.100.3 41003 203.0.113.5 53
!sh ipvsadm -Lnc > "$OUT/mid-ipvsadm-Lnc.txt"
!udp ops 198.51.100.2 41011 203.0.113.5 54
!udp ops 198.51.100.2 41011 203.0.113.5 54
!udp icmp 198.51.100.2 41021 203.0.113.5 55
!udp icmp 198.51.100.3 41022 203.0.113.5 55
EOF2
capture_stop
order_summary
dump_ipvs
cleanup
