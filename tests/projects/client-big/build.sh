set -eu
head -c 104857600 /dev/urandom > /data/artifacts/big.bin
mkdir -p /data/artifacts/sub
echo small > /data/artifacts/sub/small.txt
