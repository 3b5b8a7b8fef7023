# lc known-answer sequence: weights 1,2,3 (lc ignores them), connections held
# open (active) while others complete (inactive, TIME_WAIT), RST-closed ones
# (CLOSE), a weight change mid-stream and a weight 0.
. "$LIB/oracle.sh"
sched_lab 4
S="-t 203.0.113.5:80"
ipvs_rules <<EOF2
-A $S -s lc
-a $S -r 172.16.0.2:80 -m -w 1
-a $S -r 172.16.0.3:80 -m -w 2
-a $S -r 172.16.0.4:80 -m -w 3
EOF2
dump_ipvs before-
{
    for i in $(seq 6); do req lc-fresh; done
    hold h1; hold h1; hold h2
    snapshot held3
    for i in $(seq 6); do req lc-3held; done
    hold h3; hold h3; hold h3; hold h3
    snapshot held7
    for i in $(seq 8); do req lc-7held; done
    step rst-label h1
    step sleep 0.5
    snapshot h1-rst
    for i in $(seq 6); do req lc-h1-rst; done
    step sh ipvsadm -e $S -r 172.16.0.2:80 -m -w 5
    for i in $(seq 8); do req lc-rs1-w5; done
    step sh ipvsadm -e $S -r 172.16.0.4:80 -m -w 0
    hold h4; hold h4
    for i in $(seq 6); do req lc-rs3-w0; done
    step sh ipvsadm -a $S -r 172.16.0.5:80 -m -w 2
    for i in $(seq 6); do req lc-rs4-added; done
    snapshot end
    step release-all
} | sched_run
cleanup
