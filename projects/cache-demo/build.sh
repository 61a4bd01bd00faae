#!/bin/sh
# Counts the builds of its group: /data/cache survives from one build of a group to the next.
set -eu
count=0
[ -f /data/cache/count ] && count=$(cat /data/cache/count)
count=$((count + 1))
echo "$count" > /data/cache/count
echo "build number $count of this group"
echo "$count" > /data/artifacts/count.txt
