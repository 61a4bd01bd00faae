#!/usr/bin/env bash
# Set up everything mistryd and its tests need, on a fresh Debian 12 machine or an old one.
# Idempotent: each step checks first and does nothing when its thing is already there.
# Used by `make run`, `make test` and `make bench`.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages (extend this list when a feature needs a new real component).
PACKAGES=(
  docker.io btrfs-progs libbtrfsutil-dev rsync debootstrap git
  openssh-server openssh-client python3-venv python3-dev gcc
  chromium wrk
)
BASE_IMAGE=debian:bookworm-slim
VENV=.venv
log() { printf 'setup: %s\n' "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -q >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

# The Docker engine: start it when nothing answers (no systemd on these machines).
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd"
  as_root bash -c 'nohup dockerd >/var/log/mistryd-dockerd.log 2>&1 &'
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { log "dockerd did not start; see /var/log/mistryd-dockerd.log"; exit 1; }
fi

# The base image the example projects build FROM. With a registry it would simply be pulled;
# here there is none, so it is made from Debian's archive. An existing image is never replaced.
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  if docker pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
    log "pulled $BASE_IMAGE"
  else
    log "making $BASE_IMAGE with debootstrap (about 30 s)"
    rootfs=$(mktemp -d /var/tmp/mistryd-rootfs.XXXXXX)
    trap 'as_root rm -rf "$rootfs"' EXIT
    as_root debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
    as_root tar -C "$rootfs" -c . | docker import - "$BASE_IMAGE" >/dev/null
  fi
fi

# The virtualenv with mistryd installed (editable) and the test tools; redone when
# pyproject.toml changes.
stamp="$VENV/.installed"
if [ ! -x "$VENV/bin/python" ] || [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  log "installing mistryd into $VENV"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
  "$VENV/bin/pip" install -q -e '.[test,btrfs,browser,bench]' 2>&1 | grep -v '^WARNING: Location' >&2 || true
  "$VENV/bin/python" -c 'import mistryd, btrfsutil, docker, flask, waitress' \
    || { log "the virtualenv is incomplete"; exit 1; }
  touch "$stamp"
fi
mkdir -p var/builds
log "ready"
