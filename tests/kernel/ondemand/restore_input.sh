# Restore a rules file from outside into the kernel (e.g. PyIPVS's ipvsadm -S)
# and show what the kernel made of it:
#   tools/ipvs-kernel run restore_input OUT --input rules.txt=FILE
# OUT/restore.jsonl/.txt: ipvsadm -R of the file (stderr, rc), then -S -n,
# -S, -Ln, -Ln --thresholds and -Ln --persistent-conn as transcripts;
# OUT/rules.txt is the input as given.
. "$LIB/oracle.sh"
[ -f "$IN/rules.txt" ] || die "no input: run with --input rules.txt=FILE"
load_ipvs
cp "$IN/rules.txt" "$OUT/rules.txt"
RULES=$(python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read()))' "$IN/rules.txt")
transcript restore <<EOF2
# the input restored into an empty table
ipvsadm -R <<< $RULES
ipvsadm -S -n
ipvsadm -S
ipvsadm -Ln
ipvsadm -Ln --thresholds
ipvsadm -Ln --persistent-conn
EOF2
cat "$OUT/restore.txt"
