#!/bin/sh
# Installs requirements.txt into a virtualenv kept in /data/cache: the first build of a group
# downloads, the next ones find everything installed and take a second.
set -eu
[ -d /data/cache/venv ] || python3 -m venv /data/cache/venv
/data/cache/venv/bin/pip install --quiet -r /src/requirements.txt
/data/cache/venv/bin/pip freeze > /data/artifacts/requirements.lock
cat /data/artifacts/requirements.lock
