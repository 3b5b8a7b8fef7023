# ipvsadm 1.31 error cases (and help/version output) against kernel 6.1.
# Every command runs in order against the same table; transcript.jsonl has
# argv, stdin, stdout, stderr and rc of each (see tests/kernel/README.md).
# No traffic: the lab is not built, only the IPVS module is loaded.
. "$LIB/oracle.sh"
load_ipvs
V=203.0.113.5
transcript transcript <<EOF
# help, version and the empty table
ipvsadm
ipvsadm -Ln
ipvsadm -h
ipvsadm --help
ipvsadm -v
ipvsadm --version
ipvsadm -Ln --timeout
ipvsadm -Ln --daemon
ipvsadm -S -n
# setup: one TCP service with one destination
ipvsadm -A -t $V:80 -s wlc
ipvsadm -a -t $V:80 -r 172.16.0.2:80 -m
# services: existing, missing
ipvsadm -A -t $V:80 -s wlc
ipvsadm -A -t $V:80
ipvsadm -E -t $V:81 -s rr
ipvsadm -D -t $V:81
ipvsadm -D -u $V:80
ipvsadm -E -t $V:80
ipvsadm -L -t $V:81
ipvsadm -Ln -t $V:81
ipvsadm -Ln -u $V:80
ipvsadm -Ln -f 7
ipvsadm -Z -t $V:81
ipvsadm -Z -f 7
ipvsadm -D -f 7
# destinations: missing service, duplicate, missing
ipvsadm -a -t $V:81 -r 172.16.0.2:80 -m
ipvsadm -a -t $V:80 -r 172.16.0.2:80 -m
ipvsadm -a -t $V:80 -r 172.16.0.2:80 -g
ipvsadm -a -t $V:80 -r 172.16.0.2 -m
ipvsadm -d -t $V:80 -r 172.16.0.9:80
ipvsadm -e -t $V:80 -r 172.16.0.9:80 -m -w 3
ipvsadm -e -t $V:81 -r 172.16.0.2:80 -m -w 3
ipvsadm -d -t $V:81 -r 172.16.0.2:80
ipvsadm -e -t $V:80 -r 172.16.0.2:80 -m
ipvsadm -e -t $V:80 -r 172.16.0.2:80
ipvsadm -d -t $V:80
ipvsadm -a -t $V:80
ipvsadm -a -t $V:80 -r 172.16.0.3:80 -m -x 10
ipvsadm -e -t $V:80 -r 172.16.0.3:80 -m -w 1 -x 5 -y 2
ipvsadm -Ln --thresholds
# scheduler names and flags
ipvsadm -A -t $V:82 -s foo
ipvsadm -A -t $V:82 -s ""
ipvsadm -A -t $V:82 -s twos
ipvsadm -A -t $V:82 -s thisnameiswaytoolongforascheduler
ipvsadm -E -t $V:80 -s foo
ipvsadm -A -t $V:82 -s wlc -b sh-port
ipvsadm -A -t $V:82 -s rr -b sh-fallback
ipvsadm -A -t $V:82 -s sh -b mh-port
ipvsadm -A -t $V:82 -b sh-port
ipvsadm -A -t $V:82 -s sh -b bogus
ipvsadm -A -t $V:82 -s sh -b sh-port,bogus
ipvsadm -A -t $V:82 -s sh -b ""
ipvsadm -A -t $V:82 -s sh -b ,
ipvsadm -A -t $V:82 -s mh -b mh-fallback,flag-1
ipvsadm -A -t $V:83 -s rr -b flag-1
ipvsadm -Ln
ipvsadm -D -t $V:82
ipvsadm -D -t $V:83
# addresses and ports
ipvsadm -A -t 300.1.1.1:80
ipvsadm -A -t 203.0.113:80
ipvsadm -A -t nosuchhost.invalid:80
ipvsadm -A -t $V:99999
ipvsadm -A -t $V:-1
ipvsadm -A -t $V:nosuchport
ipvsadm -A -t $V:http
ipvsadm -A -t $V:
ipvsadm -A -t $V
ipvsadm -A -t $V:0
ipvsadm -A -t 80
ipvsadm -A -t :80
ipvsadm -A -u $V:0 -p
ipvsadm -D -u $V:0
ipvsadm -A -t [2001:db8::1]:80
ipvsadm -A -t [2001:db8::1:80
ipvsadm -A -t 2001:db8::1
ipvsadm -a -t $V:80 -r 300.0.0.1:80 -m
ipvsadm -a -t $V:80 -r 172.16.0.4:99999 -m
ipvsadm -a -t $V:80 -r [2001:db8::2]:80 -m
ipvsadm -a -t $V:80 -r 172.16.0.4:81 -g
ipvsadm -a -t $V:80 -r 172.16.0.5:81 -i
ipvsadm -Ln -t $V:80
ipvsadm -L -t $V:http
ipvsadm -Ln -t $V:http
# weights and thresholds
ipvsadm -a -t $V:80 -r 172.16.0.6:80 -m -w -1
ipvsadm -a -t $V:80 -r 172.16.0.6:80 -m -w 70000
ipvsadm -a -t $V:80 -r 172.16.0.6:80 -m -w 65536
ipvsadm -a -t $V:80 -r 172.16.0.6:80 -m -w x
ipvsadm -a -t $V:80 -r 172.16.0.6:80 -m -w ""
ipvsadm -a -t $V:80 -r 172.16.0.6:80 -m -w 1.5
ipvsadm -a -t $V:80 -r 172.16.0.6:80 -m -w 0x10
ipvsadm -a -t $V:80 -r 172.16.0.6:80 -m -w 65535
ipvsadm -a -t $V:80 -r 172.16.0.7:80 -m -y 2
ipvsadm -a -t $V:80 -r 172.16.0.7:80 -m -x 1 -y 2
ipvsadm -a -t $V:80 -r 172.16.0.7:80 -m -x 2 -y 2
ipvsadm -a -t $V:80 -r 172.16.0.7:80 -m -x -1
ipvsadm -a -t $V:80 -r 172.16.0.7:80 -m -x 2147483648
ipvsadm -a -t $V:80 -r 172.16.0.7:80 -m -x 2147483647 -y 0
ipvsadm -a -t $V:80 -r 172.16.0.8:80 -m -y 5 -x 0
ipvsadm -Ln --thresholds -t $V:80
# persistence, netmask, one-packet, fwmark, -6
ipvsadm -A -t $V:84 -p x
ipvsadm -A -t $V:84 -p 0
ipvsadm -A -t $V:84 -p -5
ipvsadm -A -t $V:84 -p 2678401
ipvsadm -A -t $V:84 -p 2678400
ipvsadm -A -t $V:85 -p 60 -M 255.255.255.0
ipvsadm -A -t $V:86 -p -M 999.0.0.0
ipvsadm -A -t $V:86 -p -M foo.invalid
ipvsadm -A -t $V:86 -M 255.255.0.0
ipvsadm -A -t $V:86 -p -M 255.0.255.0
ipvsadm -A -t $V:86 -p -M 0.0.0.0
ipvsadm -A -t $V:87 -o
ipvsadm -A -u $V:87 -o
ipvsadm -A -f 0
ipvsadm -A -f -1
ipvsadm -A -f 4294967296
ipvsadm -A -f x
ipvsadm -A -f 1 -o
ipvsadm -A -6 -f 2
ipvsadm -A -f 3 -6
ipvsadm -A -f 3 -6
ipvsadm -A -f 4 -6 -M 64
ipvsadm -A -f 5 -6 -M 129
ipvsadm -a -f 3 -6 -r 172.16.0.2 -m
ipvsadm -a -f 3 -6 -r [2001:db8::3] -m
ipvsadm -Ln
ipvsadm -Ln -f 3
ipvsadm -S -n
ipvsadm -D -t $V:84
ipvsadm -D -t $V:85
ipvsadm -D -t $V:86
ipvsadm -D -u $V:87
ipvsadm -D -f 1
ipvsadm -D -f 3
ipvsadm -D -f 3 -6
ipvsadm -D -f 4 -6
# command and option structure
ipvsadm -A -E -t $V:80
ipvsadm -L -C
ipvsadm -A -t $V:88 -t $V:89
ipvsadm -A -t $V:88 -s rr -s wrr
ipvsadm -A
ipvsadm -a -t $V:80
ipvsadm -a -r 172.16.0.2
ipvsadm -E -s rr
ipvsadm -D
ipvsadm -A -t $V:88 -r 172.16.0.2
ipvsadm -A -t $V:88 -w 2
ipvsadm -A -t $V:88 -m
ipvsadm -a -t $V:80 -r 172.16.0.10 -m -s rr
ipvsadm -a -t $V:80 -r 172.16.0.10 -m -p
ipvsadm -d -t $V:80 -r 172.16.0.2:80 -w 2
ipvsadm -C -t $V:80
ipvsadm -L -c -t $V:80
ipvsadm -L --stats --rate
ipvsadm -L --timeout --stats
ipvsadm -L --daemon --thresholds
ipvsadm -L --timeout --persistent-conn
ipvsadm -L -c --persistent-conn
ipvsadm -Lnc --stats
ipvsadm -L -n -n
ipvsadm -S -c
ipvsadm -S -t $V:80
ipvsadm -R -n
ipvsadm -Z -n
ipvsadm --bogus
ipvsadm -q
ipvsadm -A -t $V:88 --bogus
ipvsadm -A -t
ipvsadm -A -t $V:88 extra
ipvsadm -A -t $V:88 -s
ipvsadm -A -t $V:88 -b
ipvsadm -L extra
ipvsadm -Ln -t $V:80 --nosort --sort
ipvsadm -a -t $V:80 -r 172.16.0.11 -m --tun-type gue
ipvsadm -a -t $V:80 -r 172.16.0.11 -i --tun-type bogus
ipvsadm -a -t $V:80 -r 172.16.0.11 -i --tun-type gue
ipvsadm -a -t $V:80 -r 172.16.0.11 -i --tun-port 6080
ipvsadm -a -t $V:80 -r 172.16.0.11 -i --tun-type gue --tun-port 0
ipvsadm -a -t $V:80 -r 172.16.0.11 -i --tun-type ipip --tun-csum
ipvsadm -a -t $V:80 -r 172.16.0.11 -i --tun-type gre --tun-csum --tun-nocsum
ipvsadm -a -t $V:80 -r 172.16.0.11 -i --tun-type gue --tun-port 6080 --tun-nocsum
ipvsadm -a -t $V:80 -r 172.16.0.12 -i --tun-type gre --tun-csum
ipvsadm -Ln --tun-info
ipvsadm -Ln -t $V:80
ipvsadm -L -t $V:80
ipvsadm -S -n
# --set
ipvsadm --set 100
ipvsadm --set 100 20
ipvsadm --set 100 20 30 40
ipvsadm --set x 20 30
ipvsadm --set -1 20 30
ipvsadm --set 2678401 20 30
ipvsadm --set 100 20 30
ipvsadm -L --timeout
ipvsadm --set 0 0 0
ipvsadm -L --timeout
ipvsadm --set 900 120 300
# daemons
ipvsadm --start-daemon foo
ipvsadm --stop-daemon foo
ipvsadm --stop-daemon master
ipvsadm --start-daemon master --syncid 256
ipvsadm --start-daemon master --mcast-port 0
ipvsadm --start-daemon master --mcast-ttl 0
ipvsadm --start-daemon master --sync-maxlen 0
ipvsadm --start-daemon master --mcast-group 10.1.1.1
ipvsadm --start-daemon master --mcast-interface nosuchif0
ipvsadm -L --daemon
ipvsadm --stop-daemon master
ipvsadm --stop-daemon backup
# -R: restore from stdin, with an error in the middle
ipvsadm -R <<< "-A -t 203.0.113.6:80 -s rr\n-a -t 203.0.113.6:80 -r 172.16.0.2:80 -m\n-a -t 203.0.113.6:80 -r 172.16.0.2:80 -m\n-a -t 203.0.113.6:80 -r 172.16.0.3:80 -m\n"
ipvsadm -Ln -t 203.0.113.6:80
ipvsadm -R <<< "-A -t 203.0.113.7:80 -s bogus\n-A -t 203.0.113.8:80 -s rr\n"
ipvsadm -R <<< "-R\n"
ipvsadm -R <<< "-X\n-A -t 203.0.113.9:80\n"
ipvsadm -R <<< "\n\n-A -t 203.0.113.10:80 -s wrr   \n  # comment?\n"
ipvsadm -Ln
# -Z and -C
ipvsadm -Z -t $V:80
ipvsadm -Z
ipvsadm -C
ipvsadm -C
ipvsadm -Ln
ipvsadm -D -t $V:80
ipvsadm -Z
EOF
cat "$OUT/transcript.txt" | tail -n 20
