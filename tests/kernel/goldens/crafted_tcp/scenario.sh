# Crafted TCP segments from the client (client step !tcp): a SYN (entry in
# SYN_RECV; the client's kernel answers the SYN-ACK with a RST), a bare ACK,
# a FIN and a RST with no connection (not scheduled), the bare ACK again with
# sloppy_tcp=1 (scheduled), SYN+ACK and SYN+FIN.
. "$LIB/oracle.sh"
setup_nat 1 198.51.100.2
add_vip 203.0.113.5
start_servers 1:80
ipvs_rules <<'EOF2'
-A -t 203.0.113.5:80 -s rr
-a -t 203.0.113.5:80 -r 172.16.0.2:80 -m
EOF2
dump_ipvs before-
capture_start client-side cli0
capture_start server-side br0
echo "# label n src_addr:src_port server_body" > "$OUT/requests.txt"
client_steps 0.3 >> "$OUT/requests.txt" <<'EOF2'
!tcp S 198.51.100.2 42001 203.0.113.5 80
!sh ipvsadm -Lnc > "$OUT/syn-ipvsadm-Lnc.txt"
!tcp A 198.51.100.2 42002 203.0.113.5 80 5000 7000
!tcp F 198.51.100.2 42003 203.0.113.5 80
!tcp R 198.51.100.2 42004 203.0.113.5 80
!sh ipvsadm -Lnc > "$OUT/noconn-ipvsadm-Lnc.txt"
!sh echo 1 > /proc/sys/net/ipv4/vs/sloppy_tcp
!tcp A 198.51.100.2 42005 203.0.113.5 80 5000 7000
!tcp SA 198.51.100.2 42006 203.0.113.5 80
!tcp SF 198.51.100.2 42007 203.0.113.5 80
!sh ipvsadm -Lnc > "$OUT/sloppy-ipvsadm-Lnc.txt"
EOF2
capture_stop
dump_ipvs
cleanup
