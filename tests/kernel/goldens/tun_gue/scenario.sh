# VS/TUN with GUE (6.1's --tun-type gue, UDP port 6080, with the UDP checksum: --tun-csum): a fou GUE port feeds tunl0.
# client 198.51.100.2 -> VIP 203.0.113.5 (director) -> real servers 172.16.0.2/.3
. "$LIB/oracle.sh"
setup_nat 2 198.51.100.2
add_vip 203.0.113.5
rs_vip gue 203.0.113.5 6080
fwd_method_run "-i --tun-type gue --tun-port 6080 --tun-csum"
