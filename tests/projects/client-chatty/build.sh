# Prints a line every 0.2 s for about 60 s: output that never pauses long, for the client's
# --timeout (a deadline that every line used to push back).
i=0
while [ "$i" -lt 300 ]; do
  echo "line $i"
  i=$((i + 1))
  sleep 0.2
done
echo done > /data/artifacts/done.txt
