# A slow build for the live log: one line a second for about 6 seconds.
set -eu
for i in 1 2 3 4 5 6; do echo "tick $i"; sleep 1; done
mkdir -p /data/artifacts/reports
echo "done" > /data/artifacts/result.txt
head -c 3000 /dev/zero > /data/artifacts/reports/zeros.bin
echo "ticker finished"
