# Alternating writes to stdout and stderr, for the log-order tests. Params: `pairs` (how many
# `out N` / `err N` pairs, each written back to back, default 200), `acked` (after each pair,
# wait until /data/ack-N exists: the test makes it once the log holds the pair), `run` (only to
# make builds of the same script distinct).
pairs=$(cat /data/params/pairs 2>/dev/null || echo 200)
acked=$(cat /data/params/acked 2>/dev/null || echo "")
i=1
while [ "$i" -le "$pairs" ]; do
  echo "out $i"
  echo "err $i" >&2
  if [ -n "$acked" ]; then while [ ! -e "/data/ack-$i" ]; do sleep 0.01; done; fi
  i=$((i + 1))
done
