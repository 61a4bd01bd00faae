# One artifact of /data/params/mib MiB (default 200), incompressible.
set -eu
mib=200
[ -f /data/params/mib ] && mib=$(cat /data/params/mib)
head -c "$((mib * 1048576))" /dev/urandom > /data/artifacts/big.bin
