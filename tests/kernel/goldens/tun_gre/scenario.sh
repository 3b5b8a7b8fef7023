# VS/TUN with GRE (6.1's --tun-type gre): gre0, ip_gre's fallback device, takes keyless GRE.
# (Without --tun-csum: ip_gre's fallback device counts GRE packets with a
# checksum as receive errors and drops them, although their checksum is
# right, so a scenario with it gets no answers; the bytes IPVS builds with
# the checksum are checked by tests/test_xmit.py.)
# client 198.51.100.2 -> VIP 203.0.113.5 (director) -> real servers 172.16.0.2/.3
. "$LIB/oracle.sh"
setup_nat 2 198.51.100.2
add_vip 203.0.113.5
rs_vip gre 203.0.113.5
fwd_method_run "-i --tun-type gre"
