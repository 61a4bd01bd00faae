#!/usr/bin/env bash
# Builds the container image of mistryd (deploy/Dockerfile). The wheels of mistryd and of its
# runtime dependencies are made here, with this machine's pip and its index settings (a proxy,
# a CA), so the image build itself reaches no Python package index.
# Usage: deploy/build-image.sh [TAG]      (default: mistryd:latest; env PYTHON: the python to use)
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-mistryd:latest}
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
echo "build-image: wheels of mistryd[btrfs] and its runtime dependencies" >&2
"$python" -m pip wheel -q --disable-pip-version-check -w "$context/wheels" '.[btrfs]' \
  >"$context/pip.log" 2>&1 || { cat "$context/pip.log" >&2; exit 1; }
cp deploy/Dockerfile "$context/"
echo "build-image: docker build -t $tag" >&2
docker build -t "$tag" "$context" >"$context/docker.log" 2>&1 \
  || { cat "$context/docker.log" >&2; exit 1; }
echo "$tag"
