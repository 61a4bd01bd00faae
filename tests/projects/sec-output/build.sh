# A build that goes after mistryd's output plumbing (mistryd/ordered_output.py): the shell and the
# FIFOs mounted at /.mistryd, then a process left holding its stdout open as it exits.
for attempt in "echo x > /.mistryd/busybox" "rm -f /.mistryd/log/out" \
    "mv /.mistryd/log/err /.mistryd/log/moved" "touch /.mistryd/log/new" \
    "ln -s /etc/passwd /.mistryd/log/link"; do
  if sh -c "$attempt" 2>/dev/null; then echo "tamper worked: $attempt"; else echo "tamper refused: $attempt"; fi
done
sleep 1000 > /.mistryd/log/out 2>&1 &
echo "left a writer behind"
