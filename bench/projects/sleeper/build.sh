# Sleeps /data/params/sleep seconds (default 3), then writes one artifact.
set -eu
secs=3
[ -f /data/params/sleep ] && secs=$(cat /data/params/sleep)
sleep "$secs"
echo done > /data/artifacts/done
