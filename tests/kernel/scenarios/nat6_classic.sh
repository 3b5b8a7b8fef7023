# VS/NAT over IPv6: the classic example with documentation prefixes.
# client 2001:db8:1::2 -> VIP 2001:db8:f::5 (director) -> real servers 2001:db8:2::2/::3, gw 2001:db8:2::1
. "$LIB/oracle.sh"
setup_nat 2 198.51.100.2
setup_v6
add_vip6 2001:db8:f::5
start_servers 1:80/tcp6 2:8000/tcp6 1:53/udp6 2:53/udp6
ipvs_rules <<'EOF2'
-A -t [2001:db8:f::5]:80 -s wlc
-a -t [2001:db8:f::5]:80 -r [2001:db8:2::2]:80 -m
-a -t [2001:db8:f::5]:80 -r [2001:db8:2::3]:8000 -m -w 2
-A -u [2001:db8:f::5]:53 -s rr
-a -u [2001:db8:f::5]:53 -r [2001:db8:2::2]:53 -m
-a -u [2001:db8:f::5]:53 -r [2001:db8:2::3]:53 -m
EOF2
dump_ipvs before-
capture_start client-side cli0
capture_start server-side br0
R=$OUT/requests.txt
echo "# label n src_addr:src_port server_body" > "$R"
client_steps 0.2 >> "$R" <<'EOF2'
http 2001:db8:1::2 40001 2001:db8:f::5 80
http 2001:db8:1::2 40002 2001:db8:f::5 80
http 2001:db8:1::2 40003 2001:db8:f::5 80
http 2001:db8:1::2 40004 2001:db8:f::5 80
http 2001:db8:1::2 40005 2001:db8:f::5 80
http 2001:db8:1::2 40006 2001:db8:f::5 80
!udp dns 2001:db8:1::2 40011 2001:db8:f::5 53
!udp dns 2001:db8:1::2 40012 2001:db8:f::5 53
!udp dns 2001:db8:1::2 40013 2001:db8:f::5 53
!hold held 2001:db8:1::2 40021 2001:db8:f::5 80
!hold held 2001:db8:1::2 40022 2001:db8:f::5 80
!ping held
!sh ipvsadm -Ln --stats > "$OUT/during-ipvsadm-Ln-stats.txt"
!sh ipvsadm -Ln > "$OUT/during-ipvsadm-Ln.txt"
!sh ipvsadm -Lnc > "$OUT/during-ipvsadm-Lnc.txt"
!sh cat /proc/net/ip_vs_conn > "$OUT/during-proc-net-ip_vs_conn.txt"
!release-all
!sleep 1
EOF2
capture_stop
order_summary
dump_ipvs
cat "$OUT/ipvsadm-Ln.txt" "$OUT/ipvsadm-Lnc.txt"
cleanup
