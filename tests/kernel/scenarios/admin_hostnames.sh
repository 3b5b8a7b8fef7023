# The admin CLI with host and service names: the scenario's own /etc/hosts
# lines name the VIP and the real servers; services and servers are added,
# edited, listed (-L without -n) and saved by name; an unknown name fails.
. "$LIB/oracle.sh"
setup_nat 2 198.51.100.2
add_vip 203.0.113.5
cp /etc/hosts /tmp/hosts.before-admin
cat >> /etc/hosts <<'EOF2'
203.0.113.5 vip.example.test vip
172.16.0.2 rs1.example.test rs1
172.16.0.3 rs2.example.test
EOF2
transcript admin <<'EOF2'
# services and servers by name
ipvsadm -A -t vip.example.test:http -s wrr
ipvsadm -a -t vip.example.test:http -r rs1.example.test:http -m -w 2
ipvsadm -a -t vip:80 -r rs2.example.test:8080 -m
ipvsadm -a -t vip:80 -r nosuch.example.test:80 -m
ipvsadm -A -u vip:domain -s rr
ipvsadm -a -u vip:53 -r rs1:domain -m
# listings with names
ipvsadm -L
ipvsadm -L -n
ipvsadm -L --exact
ipvsadm -L -t vip.example.test:http
ipvsadm -S
# edits and deletes by name
ipvsadm -e -t vip.example.test:80 -r rs2.example.test:8080 -m -w 3
ipvsadm -d -t vip:80 -r rs1.example.test:80
ipvsadm -D -u vip.example.test:53
ipvsadm -L
EOF2
dump_ipvs
cp /tmp/hosts.before-admin /etc/hosts
cleanup
