# Writes `mb` MiB of artifacts (param, default 1); exits 1 after writing them when `fail` is set.
set -eu
mb=$(cat /data/params/mb 2>/dev/null || echo 1)
head -c $((mb * 1048576)) /dev/zero > /data/artifacts/blob
echo "wrote ${mb} MiB"
if [ -f /data/params/fail ]; then exit 1; fi
