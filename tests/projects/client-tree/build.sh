set -eu
cd /data/artifacts
mkdir -p a/b empty
echo top > top.txt
echo deep > a/b/deep.txt
printf '#!/bin/sh\necho hi\n' > run.sh
chmod 755 run.sh
chmod 600 a/b/deep.txt
ln -s a/b/deep.txt inside-link
ln -s ../../build_info.json escaping-link
ln -s /etc/passwd absolute-link
