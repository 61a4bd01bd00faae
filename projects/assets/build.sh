#!/bin/sh
# Compiles a web app's assets as a deploy does: Sass to minified CSS (sassc), the JavaScript
# modules to one minified bundle (esbuild), each precompressed with zopfli and named by its
# content (assets/app-<digest>.css and a manifest.json). Every compiled asset is kept in
# /data/cache under the digest of its inputs and tools, so the group's next build compiles only
# what changed: a new `brand_color` recompiles app.css and reuses the framework and the bundle.
set -eu
brand='#0a66c2'
[ -f /data/params/brand_color ] && brand=$(cat /data/params/brand_color)
if ! printf '%s' "$brand" | grep -Eqx '#([0-9a-fA-F]{3}|[0-9a-fA-F]{6})'; then
  echo "brand_color must be a colour such as #0a66c2, not '$brand'" >&2
  exit 2
fi
src=/src/app work=$(mktemp -d) cache=/data/cache/compiled out=/data/artifacts/assets
printf '$brand: %s;\n' "$brand" > "$work/_brand.scss"
tools="sassc $(sassc --version | head -1), esbuild $(esbuild --version)"
mkdir -p "$cache" "$out"
compiled=0 reused=0 manifest=''

# asset NAME EXT COMMAND INPUT...: the compiled asset of these inputs, from the cache or made now
asset() {
  name=$1 ext=$2 command=$3
  shift 3
  digest=$( (echo "$tools"; echo "$command"; cat "$@") | sha256sum | cut -c1-16)
  file="$name-$digest.$ext"
  if [ -f "$cache/$file" ] && [ -f "$cache/$file.gz" ]; then
    reused=$((reused + 1))
    echo "reused   $file"
  else
    sh -c "$command" > "$cache/$file.tmp"
    zopfli -c "$cache/$file.tmp" > "$cache/$file.gz"
    mv "$cache/$file.tmp" "$cache/$file"
    compiled=$((compiled + 1))
    echo "compiled $file"
  fi
  cp "$cache/$file" "$cache/$file.gz" "$out/"
  manifest="$manifest${manifest:+,}
  \"$name.$ext\": \"assets/$file\""
}

asset framework css "sassc --style compressed $src/styles/framework.scss" "$src/styles/framework.scss"
asset app css "sassc --style compressed -I $work $src/styles/app.scss" \
  "$src/styles/app.scss" "$work/_brand.scss"
asset app js "esbuild $src/js/app.js --bundle --minify --log-level=warning" "$src"/js/*.js
printf '{%s\n}\n' "$manifest" > /data/artifacts/manifest.json
echo "assets: $compiled compiled, $reused reused from earlier builds of this group"
