# Artifacts next to things that must never leave through rsync: the log, the cache, the params
# (a link in the artifacts points at them).
set -eu
echo "LOG-SECRET-line"
echo "CACHE-SECRET" > /data/cache/cached.txt
mkdir -p /data/artifacts/sub
echo "artifact" > /data/artifacts/sub/ok.txt
ln -s ../params /data/artifacts/up
