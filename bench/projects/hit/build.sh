# The cheapest real build: one small artifact. The harness adds a big file beside this one (kept
# out of the image by .dockerignore) so the project's content, and its fingerprint, grow.
set -eu
echo "hit build" > /data/artifacts/result.txt
