# The web view's log panel: colours (one carried over a line end), stderr lines, markup that
# must stay text, a few slow lines to follow live, text and binary artifacts. Params: `ticks`
# (how many slow lines, default 3), `fail` (yes: exit 3 at the end).
set -eu
ticks=$(cat /data/params/ticks 2>/dev/null || echo 3)
printf '\033[1;32mcoloured green\033[0m and plain <b>not bold</b>\n'
echo "a line on stderr" >&2
printf '\033[31mred starts here\n'
printf 'and is still red\033[0m\n'
i=1
while [ "$i" -le "$ticks" ]; do echo "tick $i"; sleep 1; i=$((i + 1)); done
mkdir -p /data/artifacts/reports
printf 'notes <script>alert(1)</script>\n' > /data/artifacts/notes.txt
printf '<h1>not rendered</h1><script>alert(2)</script>\n' > /data/artifacts/reports/page.html
printf '\000\001\002binary' > /data/artifacts/blob.bin
if [ "$(cat /data/params/fail 2>/dev/null || true)" = yes ]; then
  echo "failing on purpose" >&2
  exit 3
fi
echo "web-colours finished"
