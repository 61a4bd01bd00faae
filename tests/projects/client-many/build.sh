# A node_modules-like tree: many small files in nested folders, links, modes, an empty file, a
# large file, a long path and a non-ASCII name; `aaaa.txt` is what the tampering proxy looks for.
set -eu
cd /data/artifacts
head -c 3000 /dev/urandom > /tmp/blob
i=0
while [ $i -lt 20 ]; do
  mkdir -p pkg$i/lib/deep
  j=0
  while [ $j -lt 30 ]; do
    if [ $j -lt 15 ]; then f=pkg$i/lib/f$j.js; else f=pkg$i/lib/deep/f$j.js; fi
    { echo "$i $j"; cat /tmp/blob; } > $f
    j=$((j+1))
  done
  mkdir -p .bin && ln -s ../pkg$i/lib/f0.js .bin/pkg$i
  i=$((i+1))
done
: > empty.txt
head -c 65536 /dev/zero | tr '\0' A > aaaa.txt
head -c 20971520 /dev/urandom > big.bin
printf '#!/bin/sh\necho hi\n' > run.sh && chmod 755 run.sh
echo secret > secret.txt && chmod 600 secret.txt
echo ro > readonly.txt && chmod 444 readonly.txt
long=this-folder-name-is-long-enough/to-push-the-whole-path-past-the-hundred-bytes-of-a-plain-ustar-name
mkdir -p $long && echo long > $long/file-with-a-long-name-at-the-end.txt
echo unicode > "$(printf 'caf\303\251.txt')"
ln -s pkg0 pkg-link
ln -s /etc/passwd absolute-link
mkdir locked && echo inside > locked/inside.txt && chmod 555 locked
