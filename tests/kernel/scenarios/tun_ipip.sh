# VS/TUN with IPIP (the kernel's default tunnel type): the real servers hold the VIP on tunl0.
# client 198.51.100.2 -> VIP 203.0.113.5 (director) -> real servers 172.16.0.2/.3
. "$LIB/oracle.sh"
setup_nat 2 198.51.100.2
add_vip 203.0.113.5
rs_vip ipip 203.0.113.5
fwd_method_run "-i"
