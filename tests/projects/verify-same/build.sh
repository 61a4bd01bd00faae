#!/bin/sh
# the same bytes every time: a deterministic build for `mistry verify`
set -e
mkdir -p /data/artifacts/docs
printf 'hello %s\n' "$(cat /data/params/who 2>/dev/null || echo world)" > /data/artifacts/greeting.txt
printf 'fixed\n' > /data/artifacts/docs/readme.txt
ln -sf greeting.txt /data/artifacts/link
date +%s%N > /data/cache/last-run
