# Waits for the test to create /signal/go (a mounted folder), so a test controls when it ends.
echo "waiting for the signal"
while [ ! -e /signal/go ]; do sleep 0.05; done
echo "got the signal"
echo ok > /data/artifacts/ok.txt
