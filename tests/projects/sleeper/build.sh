set -eu
secs=1
[ -f /data/params/sleep ] && secs=$(cat /data/params/sleep)
echo "sleeping $secs"
sleep "$secs"
[ -f /data/params/exit ] && exit "$(cat /data/params/exit)"
echo done > /data/artifacts/done
echo "slept"
