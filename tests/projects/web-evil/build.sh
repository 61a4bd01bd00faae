# Markup in a build's output must reach the browser as text.
set -eu
echo '<script>alert(1)</script>'
echo "<img src=x onerror=alert(2)>"
sleep 2
echo 'after the pause: <b>not bold</b> & <script>alert(3)</script>'
for f in /data/params/*; do [ -f "$f" ] && echo "param $(basename "$f")=$(cat "$f")"; done
echo '<u>x</u>' > '/data/artifacts/<u>underlined.txt'
