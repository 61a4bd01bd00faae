#!/bin/sh
# one artifact holds the time it was built: not reproducible, and `mistry verify` names it
set -e
mkdir -p /data/artifacts
printf 'same\n' > /data/artifacts/same.txt
date +%s%N > /data/artifacts/stamp.txt
