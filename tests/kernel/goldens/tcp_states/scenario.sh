# IPVS TCP state trajectories with hand-made segments (tcpcraft.py): SYN only,
# SYN then RST, full close from the client first, full close from the server
# first, an ACK with no connection, a new SYN on a TIME_WAIT connection
# (conn_reuse_mode=1), an RST on an established connection, and the same
# with --set timeouts changed.  After each step: ipvsadm -Lnc and
# /proc/net/ip_vs_conn (with Expires) in tcp-states.jsonl / .txt.
# One real server (rr), so the server never varies.
. "$LIB/oracle.sh"
setup_nat 1 198.51.100.2
add_vip 203.0.113.5
start_servers 1:80
ipvs_rules <<'EOF2'
-A -t 203.0.113.5:80 -s rr
-a -t 203.0.113.5:80 -r 172.16.0.2:80 -m
EOF2
# The client kernel must not see the answers (it would RST them): tcpcraft
# reads them on an AF_PACKET socket, before netfilter.
ip netns exec cli iptables -A INPUT -p tcp -s 203.0.113.5 -j DROP || die "iptables in cli"
dump_ipvs before-
capture_start client-side cli0
capture_start server-side br0
python3 "$LIB/tcpcraft.py" "$OUT/tcp-states" <<'EOF2'
# 1 SYN only
conn a 198.51.100.2 41001 203.0.113.5 80
dump empty
send a S
expect a 1
dump a-syn
# 2 SYN, then RST
conn b 198.51.100.2 41002 203.0.113.5 80
send b S
expect b 1
dump b-syn
send b R
expect b 0.5
dump b-rst
# 3 full close, client first
conn c 198.51.100.2 41003 203.0.113.5 80
send c S
expect c 1
send c A
expect c 0.3
dump c-established
send c PA "HOLD\n"
expect c 1
send c A
expect c 0.3
dump c-data
send c FA
expect c 1
dump c-client-fin-server-fin
send c A
expect c 0.5
dump c-last-ack
# 4 full close, server first
conn d 198.51.100.2 41004 203.0.113.5 80
send d S
expect d 1
send d A
send d PA "GET / HTTP/1.0\r\n\r\n"
expect d 1
dump d-server-fin
send d A
expect d 0.3
dump d-acked-server-fin
send d FA
expect d 1
dump d-closed
# 5 an ACK with no connection (IPVS does not schedule it: the director's own stack answers)
conn e 198.51.100.2 41005 203.0.113.5 80
send e A
expect e 1
dump e-ack-no-conn
send e PA "stray\n"
expect e 1
dump e-data-no-conn
# 6 a new SYN on the TIME_WAIT connection of case 3 (conn_reuse_mode=1)
sh cat /proc/sys/net/ipv4/vs/conn_reuse_mode
dump before-reuse
conn c2 198.51.100.2 41003 203.0.113.5 80 3000000000
send c2 S
expect c2 1
dump c2-syn-on-time-wait
send c2 A
expect c2 0.3
dump c2-established
send c2 R
expect c2 0.3
dump c2-rst
# 7 RST on an established connection
conn g 198.51.100.2 41007 203.0.113.5 80
send g S
expect g 1
send g A
expect g 0.3
dump g-established
send g RA
expect g 0.5
dump g-rst
# 8 timeouts changed with --set: established 30 s, FIN_WAIT 7 s (udp 20 s)
sh ipvsadm --set 30 7 20
sh ipvsadm -L --timeout
conn f 198.51.100.2 41006 203.0.113.5 80
send f S
expect f 1
dump f-syn-set
send f A
expect f 0.3
dump f-established-set
send f PA "GET / HTTP/1.0\r\n\r\n"
expect f 1
dump f-server-fin-set
sleep 8
dump f-after-8s
send f FA
expect f 1
dump f-late-client-fin
sh ipvsadm --set 900 120 300
dump f-after-reset-timeouts
# 9 conn_reuse_mode=0: a new SYN on a TIME_WAIT entry keeps it
sh echo 0 > /proc/sys/net/ipv4/vs/conn_reuse_mode
conn h 198.51.100.2 41008 203.0.113.5 80
send h S
expect h 1
send h A
send h PA "GET / HTTP/1.0\r\n\r\n"
expect h 1
send h FA
expect h 1
dump h-closed
conn h2 198.51.100.2 41008 203.0.113.5 80 3500000000
send h2 S
expect h2 1
dump h2-syn-on-time-wait-reuse0
send h2 R
sh echo 1 > /proc/sys/net/ipv4/vs/conn_reuse_mode
# 10 the SYN-only entry of case 1, later
dump final
EOF2
capture_stop
dump_ipvs
cat "$OUT/tcp-states.txt"
cleanup
