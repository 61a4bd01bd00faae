set -eu
mkdir -p /data/artifacts/params
for f in /data/params/*; do [ -f "$f" ] && cp "$f" /data/artifacts/params/ && echo "param $(basename "$f")"; done
echo done > /data/artifacts/done.txt
