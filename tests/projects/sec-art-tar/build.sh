# A tar long enough to be caught mid-stream: a 128 MB sparse file, then small files after it.
set -eu
cd /data/artifacts
truncate -s 128M big.bin
echo last > z.txt
