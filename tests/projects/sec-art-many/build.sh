# Many files with long names: a manifest of about 30 MB.
set -eu
mkdir -p /data/artifacts/many
cd /data/artifacts/many
pad=$(printf '%0190d' 0)
seq -w 1 100000 | sed "s/\$/-$pad/" | xargs touch
