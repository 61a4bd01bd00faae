set -eu
echo "hello from the build"
for f in /data/params/*; do [ -f "$f" ] && echo "param $(basename "$f")=$(cat "$f")"; done
echo "hello" > /data/artifacts/out.txt
