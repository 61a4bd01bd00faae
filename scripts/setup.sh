#!/usr/bin/env bash
# Set up what mistryd needs, on a fresh Debian 12 machine or an old one:
#   scripts/setup.sh run    what serving needs: Debian packages, dockerd, the base image, and a
#                           .venv with mistryd and its runtime dependencies only (`make run`)
#   scripts/setup.sh test   all of that, and the test, browser and benchmark tools (`make test`,
#                           `make lint`, `make bench`; the default)
# Idempotent: each step checks first and does nothing when its thing is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-test}
case "$MODE" in
  run|test) ;;
  *) printf 'usage: %s [run|test]\n' "$0" >&2; exit 2 ;;
esac

# Debian packages (extend these lists when a feature needs a new real component). Serving needs
# Docker, btrfs tools, rsync (the artifact daemon), debootstrap (the local base image), what
# builds the btrfsutil binding, git and the ssh client (ssh-agent) for push builds, and a static
# busybox (the shell that puts a build's output on the FIFOs mistryd reads in order); the tests
# also run sshd (a loopback git server over ssh) and Chromium, the benchmarks wrk.
PACKAGES=(
  docker.io btrfs-progs libbtrfsutil-dev rsync debootstrap python3-venv python3-dev gcc
  git openssh-client busybox-static
)
if [ "$MODE" = test ]; then
  PACKAGES+=(openssh-server chromium wrk redis-server)  # redis-server: the Redis queue's tests
fi
BASE_IMAGE=debian:bookworm-slim
VENV=${MISTRYD_VENV:-.venv}  # another folder for a trial set-up beside the real one
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

# The virtualenv with mistryd installed (editable): for `run` with the runtime dependencies
# only (and btrfsutil, the snapshots' binding), for `test` with the tools too. Redone when
# pyproject.toml or this script changes; a `test` set-up serves `run` as well. The editable
# install is setuptools' "compat" mode (a path in a .pth file): its default mode imports a
# finder module at every interpreter start, 10 ms of each `mistry` command.
run_stamp="$VENV/.installed-run" test_stamp="$VENV/.installed"
fresh() { [ -x "$VENV/bin/python" ] && [ -f "$1" ] && [ ! pyproject.toml -nt "$1" ] \
          && [ ! scripts/setup.sh -nt "$1" ]; }
if [ "$MODE" = test ]; then
  stamp=$test_stamp extras=btrfs,test,browser,bench,redis
  check='import mistryd, btrfsutil, docker, flask, waitress, pytest, hypothesis, playwright, rq'
else
  stamp=$run_stamp extras=btrfs
  check='import mistryd, btrfsutil, docker, flask, waitress'
fi
if ! fresh "$stamp" && ! fresh "$test_stamp"; then
  log "installing mistryd into $VENV (mistryd[$extras])"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
  "$VENV/bin/pip" install -q -e ".[$extras]" --config-settings editable_mode=compat \
    >"$VENV/pip-install.log" 2>&1 \
    || { cat "$VENV/pip-install.log" >&2; log "pip install failed (above)"; exit 1; }
  "$VENV/bin/python" -c "$check" || { log "the virtualenv is incomplete"; exit 1; }
  touch "$stamp"
fi
mkdir -p var/builds
log "ready ($MODE)"
