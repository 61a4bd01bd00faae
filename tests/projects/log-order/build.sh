# Alternating writes to stdout and stderr, for the log-order tests. Params: `pairs` (how many
# `out N` / `err N` pairs, default 200), `pause` (seconds slept after each write, default none),
# `pairpause` (seconds slept after each pair: its two lines back to back, default none), `run`
# (only to make builds of the same script distinct).
pairs=$(cat /data/params/pairs 2>/dev/null || echo 200)
pause=$(cat /data/params/pause 2>/dev/null || echo "")
pairpause=$(cat /data/params/pairpause 2>/dev/null || echo "")
i=1
while [ "$i" -le "$pairs" ]; do
  echo "out $i"
  if [ -n "$pause" ]; then sleep "$pause"; fi
  echo "err $i" >&2
  if [ -n "$pause" ]; then sleep "$pause"; fi
  if [ -n "$pairpause" ]; then sleep "$pairpause"; fi
  i=$((i + 1))
done
