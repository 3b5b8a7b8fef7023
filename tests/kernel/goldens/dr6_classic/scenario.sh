# VS/DR over IPv6: the real servers hold the VIP on lo.
# client 2001:db8:1::2 -> VIP 2001:db8:f::5 (director) -> real servers 2001:db8:2::2/::3
. "$LIB/oracle.sh"
setup_nat 2 198.51.100.2
setup_v6
add_vip6 2001:db8:f::5
rs_vip6 dr 2001:db8:f::5
fwd_method_run6 "-g"
