#!/bin/sh
# Writes a greeting artifact; the optional param `name` says whom to greet.
set -eu
name=world
[ -f /data/params/name ] && name=$(cat /data/params/name)
echo "building hello for $name"
echo "Hello, $name!" > /data/artifacts/hello.txt
echo "done"
