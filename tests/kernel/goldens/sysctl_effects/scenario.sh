# Run-time settings (net.ipv4.vs.*) that change decisions: sloppy_tcp (an ACK
# with no connection gets scheduled), expire_nodest_conn (packets of a
# connection whose server was deleted: dropped, and with 1 the entry goes),
# expire_quiescent_template (a persistence template to a weight-0 server: kept
# by default, expired with 1).  tcpcraft walks are in sysctl-tcp.jsonl/.txt,
# the persistence requests in requests.txt / order.txt.
. "$LIB/oracle.sh"
setup_nat 2 198.51.100.2 198.51.100.3
add_vip 203.0.113.5
start_servers 1:80 2:80
ipvs_rules <<'EOF2'
-A -t 203.0.113.5:80 -s rr
-a -t 203.0.113.5:80 -r 172.16.0.2:80 -m
-A -t 203.0.113.5:81 -s rr -p 60
-a -t 203.0.113.5:81 -r 172.16.0.2:80 -m
-a -t 203.0.113.5:81 -r 172.16.0.3:80 -m
EOF2
# tcpcraft owns port 80 of the VIP on the client side; port 81 is left to
# the ordinary client.
ip netns exec cli iptables -A INPUT -p tcp -s 203.0.113.5 --sport 80 -j DROP || die "iptables in cli"
dump_ipvs before-
capture_start client-side cli0
capture_start server-side br0
python3 "$LIB/tcpcraft.py" "$OUT/sysctl-tcp" <<'EOF2'
# sloppy_tcp=0 (default): an ACK with no connection is not scheduled
conn a 198.51.100.2 41101 203.0.113.5 80
send a A
expect a 1
dump a-ack-sloppy0
# sloppy_tcp=1: the same kind of ACK creates a connection
sh echo 1 > /proc/sys/net/ipv4/vs/sloppy_tcp
conn b 198.51.100.2 41102 203.0.113.5 80
send b A
expect b 1
dump b-ack-sloppy1
send b PA "GET / HTTP/1.0\r\n\r\n"
expect b 1
dump b-data-sloppy1
sh echo 0 > /proc/sys/net/ipv4/vs/sloppy_tcp
# expire_nodest_conn=0 (default): the server is deleted under an established connection
conn c 198.51.100.2 41103 203.0.113.5 80
send c S
expect c 1
send c A
expect c 0.3
dump c-established
sh ipvsadm -d -t 203.0.113.5:80 -r 172.16.0.2:80
sh ipvsadm -Ln -t 203.0.113.5:80
dump c-dest-deleted
send c PA "HOLD\n"
expect c 1
dump c-data-after-delete-nodest0
# expire_nodest_conn=1: the next packet of that connection expires it
sh echo 1 > /proc/sys/net/ipv4/vs/expire_nodest_conn
send c PA "HOLD\n"
expect c 1
dump c-data-after-delete-nodest1
sleep 2
dump c-2s-later
sh echo 0 > /proc/sys/net/ipv4/vs/expire_nodest_conn
sh ipvsadm -a -t 203.0.113.5:80 -r 172.16.0.2:80 -m
EOF2
echo "# label n src_addr:src_port server_body" > "$OUT/requests.txt"
client_steps 0.05 >> "$OUT/requests.txt" <<'EOF2'
q-first 198.51.100.2 42001 203.0.113.5 81
q-second 198.51.100.2 42002 203.0.113.5 81
q-other-client 198.51.100.3 42003 203.0.113.5 81
!sh ipvsadm -e -t 203.0.113.5:81 -r 172.16.0.3:80 -m -w 0
!sh ipvsadm -Lnc > "$OUT/quiesced-ipvsadm-Lnc.txt"
q-quiesced-eqt0 198.51.100.2 42004 203.0.113.5 81
q-quiesced-eqt0 198.51.100.3 42005 203.0.113.5 81
!sh echo 1 > /proc/sys/net/ipv4/vs/expire_quiescent_template
q-quiesced-eqt1 198.51.100.2 42006 203.0.113.5 81
q-quiesced-eqt1 198.51.100.3 42007 203.0.113.5 81
!sh ipvsadm -Lnc > "$OUT/eqt1-ipvsadm-Lnc.txt"
!sh echo 0 > /proc/sys/net/ipv4/vs/expire_quiescent_template
EOF2
capture_stop
order_summary
dump_ipvs
cat "$OUT/sysctl-tcp.txt" "$OUT/order.txt"
cleanup
