# Nesting deeper than the manifest walk allows (128 levels).
set -eu
cd /data/artifacts
i=0
while [ $i -lt 140 ]; do mkdir d && cd d; i=$((i + 1)); done
echo bottom > bottom.txt
