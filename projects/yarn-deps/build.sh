#!/bin/sh
# Installs a Node app's dependencies with yarn, from the app's package.json and yarn.lock given
# as params (`-- --package.json=@package.json --yarn.lock=@yarn.lock`; without them, the example
# in this folder). yarn's download cache and node_modules stay in /data/cache, so the group's next
# build downloads only the packages that are new, and an unchanged lockfile installs nothing.
set -eu
app=/data/cache/app
mkdir -p "$app"
for f in package.json yarn.lock; do
  if [ -f "/data/params/$f" ]; then cp "/data/params/$f" "$app/$f"; else cp "/src/$f" "$app/$f"; fi
done
count() { ls /data/cache/yarn/v6 2>/dev/null | grep -c '^npm-' || true; }
before=$(count)
echo "yarn cache: $before package(s) from earlier builds of this group"
cd "$app"
yarnpkg install --frozen-lockfile --non-interactive --no-progress --cache-folder /data/cache/yarn
echo "yarn cache: $(($(count) - before)) package(s) downloaded by this build"
cp -a node_modules package.json yarn.lock /data/artifacts/
