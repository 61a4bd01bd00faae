set -eu
# Upstream's client asks the daemon for `artifacts/*`: every entry at the top is a request of
# its own, so the top holds a link that points out of the artifacts (sent as a link).
cd /data/artifacts
mkdir -p lib/nested/deeper empty
echo top > top.txt
echo hidden > .hidden
echo deep > lib/nested/deeper/deep.txt
printf '#!/bin/sh\necho hi\n' > run.sh
chmod 755 run.sh
chmod 600 lib/nested/deeper/deep.txt
ln -s lib/nested/deeper/deep.txt inside-link
ln -s ../../build_info.json escaping-link
ln -s /etc/passwd lib/absolute-link
