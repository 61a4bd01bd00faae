set -eu
count=0
[ -f /data/cache/count ] && count=$(cat /data/cache/count)
count=$((count + 1))
echo "$count" > /data/cache/count
# a param named `fail` makes this build fail after touching the cache
[ -f /data/params/fail ] && { echo "failing on purpose" >&2; exit 1; }
cp /data/params/* /data/artifacts/ 2>/dev/null || true
echo "$count" > /data/artifacts/count
ls /data/artifacts
echo "build $count"
