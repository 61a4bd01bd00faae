# A node_modules-like tree in /data/artifacts, the same for the same params: /data/params/files
# files (default 30000; 0: an empty artifacts folder), /data/params/mb MB together (default 200),
# shaped by /data/params/seed (default 1).
set -eu
param() { if [ -f "/data/params/$1" ]; then cat "/data/params/$1"; else echo "$2"; fi; }
perl /tree.pl /data/artifacts "$(param files 30000)" "$(param mb 200)" "$(param seed 1)"
