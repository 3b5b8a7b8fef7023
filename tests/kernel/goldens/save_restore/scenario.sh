# ipvsadm -S of a rich rule set, and -R of a given file then -S again
# (transcript save-restore.jsonl; the given file is restore-input.txt).
. "$LIB/oracle.sh"
load_ipvs
cat > "$OUT/restore-input.txt" <<'EOF2'
-A -t 203.0.113.5:http -s wlc
-a -t 203.0.113.5:http -r 172.16.0.2:http -m -w 3
-a -t 203.0.113.5:http -r 172.16.0.3:8080 -m -w 0
-a -t 203.0.113.5:http -r 172.16.0.4 -m -x 100 -y 50
--add-service --udp-service 203.0.113.5:domain --scheduler rr
--add-server --udp-service 203.0.113.5:domain --real-server 172.16.0.2:53 --masquerading
-a -u 203.0.113.5:53 -r 172.16.0.3:5353 -m -w 2
-A -u 203.0.113.5:5000 -s rr -o
-a -u 203.0.113.5:5000 -r 172.16.0.2:5000 -m
-A -f 1 -s wrr
-a -f 1 -r 172.16.0.2 -g -w 1
-a -f 1 -r 172.16.0.3 -i -w 2
-A -f 4294967295 -s lc -p
-a -f 4294967295 -r 172.16.0.4:0 -m
-A -t 203.0.113.5:https -s lblc -p
-a -t 203.0.113.5:https -r 172.16.0.2 -m
-A -t 203.0.113.6:443 -s lblcr --persistent 60 --netmask 255.255.255.0
-a -t 203.0.113.6:443 -r 172.16.0.4:443 -m
-A -t 203.0.113.5:0 -s dh -p 300
-a -t 203.0.113.5:0 -r 172.16.0.2 -m
-A -t 203.0.113.5:8000 -s sh -b sh-fallback,sh-port
-a -t 203.0.113.5:8000 -r 172.16.0.2:80 -m
-A -t 203.0.113.5:8001 -s mh -b mh-port
-A -t 203.0.113.5:8002 -s mh -b mh-fallback,mh-port
-A -t 203.0.113.5:21 -s sed
-a -t 203.0.113.5:21 -r 172.16.0.3:21 -m -w 65535
-A -t 203.0.113.5:8003 -s nq
-A -t 203.0.113.5:8004 -s fo
-a -t 203.0.113.5:8004 -r 172.16.0.2:80 -g
-a -t 203.0.113.5:8004 -r 172.16.0.3:80 -i --tun-type gue --tun-port 6080 --tun-nocsum
-a -t 203.0.113.5:8004 -r 172.16.0.4:80 -i --tun-type gre --tun-csum
-A -t 203.0.113.5:8005 -s ovf
-a -t 203.0.113.5:8005 -r 172.16.0.2:80 -m -w 2 -x 2147483647 -y 0
-A -t 1.0.0.0:80 -s rr
-a -t 1.0.0.0:80 -r 200.0.0.1:80 -m
-a -t 1.0.0.0:80 -r 1.0.0.1:80 -m
-A -t 200.0.0.0:80 -s rr
-A -f 2 -s rr -p 1800 -M 255.255.0.0
-A -f 3 -6 -s wlc
-A -t [2001:db8::5]:80 -s rr
-a -t [2001:db8::5]:80 -r [2001:db8::10]:8080 -m
-a -t [2001:db8::5]:80 -r 172.16.0.9 -i
-A -t 203.0.113.5:8006 -s rr -p 1
-A -t 203.0.113.5:8007 -s wlc --pe sip
EOF2
RESTORE=$(python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read()))' "$OUT/restore-input.txt")
ipvsadm -R < "$OUT/restore-input.txt" > "$OUT/restore-1.out" 2>&1; echo "rc=$?" >> "$OUT/restore-1.out"
ipvsadm -S > "$OUT/ipvsadm-S.txt"
ipvsadm -S -n > "$OUT/ipvsadm-S-n.txt"
ipvsadm -Ln > "$OUT/ipvsadm-Ln.txt"
json_of() { python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read()))' "$1"; }
SAVED=$(json_of "$OUT/ipvsadm-S-n.txt")
SAVED_NAMES=$(json_of "$OUT/ipvsadm-S.txt")
# ipvsadm -S prints fwmark 4294967295 as -1, which its own -R rejects: a
# second save without that service round-trips the rest.
ipvsadm -D -f 4294967295
ipvsadm -S > "$OUT/ipvsadm-S-2.txt"
ipvsadm -S -n > "$OUT/ipvsadm-S-n-2.txt"
SAVED2=$(json_of "$OUT/ipvsadm-S-n-2.txt")
SAVED2_NAMES=$(json_of "$OUT/ipvsadm-S-2.txt")
transcript save-restore <<EOF2
# the given file restored (on top of an empty table) and saved
ipvsadm -C
ipvsadm -R <<< $RESTORE
ipvsadm -S
ipvsadm -S -n
ipvsadm -Ln
# -S -n output restored into an empty table: the "-A -f -1" line stops -R
ipvsadm -C
ipvsadm -R <<< $SAVED
ipvsadm -S -n
# -S (names) output restored: same
ipvsadm -C
ipvsadm -R <<< $SAVED_NAMES
ipvsadm -S -n
# without the fwmark 4294967295 service: -S -n output restored
ipvsadm -C
ipvsadm -R <<< $SAVED2
ipvsadm -S -n
ipvsadm -Ln
# without it: -S (names) output restored
ipvsadm -C
ipvsadm -R <<< $SAVED2_NAMES
ipvsadm -S -n
# restoring on top of existing rules: every -A and -a fails, -R goes on
ipvsadm -R <<< $SAVED2
ipvsadm -S -n
# a file that starts with -C
ipvsadm -R <<< "-C\n-A -t 203.0.113.9:80 -s rr\n-a -t 203.0.113.9:80 -r 172.16.0.2:80 -m -w 7\n"
ipvsadm -S -n
ipvsadm -C
EOF2
# (sed, not head: head would close the pipe early, and pipefail turns SIGPIPE into rc 141)
grep -v '^< ' "$OUT/save-restore.txt" | sed -n '1,120p'
