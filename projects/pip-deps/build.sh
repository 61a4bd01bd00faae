#!/bin/sh
# Installs an app's Python dependencies from its requirements.txt, given as a param
# (`-- --requirements.txt=@requirements.txt`; without it, the example in this folder), into a
# virtualenv kept in /data/cache: the group's first build downloads everything, the next ones
# install only what is new and take a second or two.
set -eu
requirements=/src/requirements.txt
[ -f /data/params/requirements.txt ] && requirements=/data/params/requirements.txt
[ -d /data/cache/venv ] || python3 -m venv /data/cache/venv
count() { /data/cache/venv/bin/pip freeze | wc -l; }
before=$(count)
echo "venv: $before package(s) installed by earlier builds of this group"
/data/cache/venv/bin/pip install --quiet --disable-pip-version-check -r "$requirements"
echo "venv: $(($(count) - before)) package(s) installed by this build"
/data/cache/venv/bin/pip freeze > /data/artifacts/requirements.lock
cat /data/artifacts/requirements.lock
