#!/usr/bin/env bash
# Build the images without a Docker engine: buildah (chroot isolation, no daemon) on a
# debootstrapped Debian stand-in for python:3.11-slim-bookworm, which cannot be pulled here.
# Recipe and what the stand-in does not prove: docs/images.md ("Building the images here").
#
#   scripts/build_images.sh [service] [gpu]    # default: both (`make images`)
#
# Buildah's storage is its own root under /var/lib/containers, outside the repo, so the
# stand-in and every layer are reused by later runs, tests and CI on this machine. The driver
# is overlay: with vfs every layer is a full copy of the image (a code change rebuilt in
# 7-10 min and took 1 GB a layer here; overlay: about a minute). HSIG_BUILDAH_DRIVER=vfs where
# the kernel has no overlayfs; HSIG_BUILDAH_ROOT and HSIG_BUILDAH_RUNROOT move the storage
# (tests/deploy/conftest.py reads the same variables).
set -euo pipefail
cd "$(dirname "$0")/.."

STANDIN="localhost/hsig-python-standin:3.11-bookworm"
MIRROR="${HSIG_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CA_BUNDLE="/etc/ssl/certs/ca-certificates.crt"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n1)"
declare -A DOCKERFILE=([service]=deploy/Dockerfile.service [gpu]=deploy/Dockerfile.gpu)
DRIVER="${HSIG_BUILDAH_DRIVER:-overlay}"
BUILDAH=(buildah --storage-driver "$DRIVER" --root "${HSIG_BUILDAH_ROOT:-/var/lib/containers/hsig-$DRIVER}"
  --runroot "${HSIG_BUILDAH_RUNROOT:-/run/hsig-buildah-$DRIVER}")

log() { echo "images: $*" >&2; }

build_standin() {  # once: every later run finds it in buildah's storage
  if "${BUILDAH[@]}" inspect --type image "$STANDIN" >/dev/null 2>&1; then
    log "stand-in base $STANDIN already built"
    return
  fi
  log "building the stand-in base $STANDIN (debootstrap bookworm, about 2 minutes)"
  local started=$SECONDS ctr=hsig-standin-build mnt
  "${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true  # what an interrupted run left
  "${BUILDAH[@]}" from --name "$ctr" scratch >/dev/null
  mnt="$("${BUILDAH[@]}" mount "$ctr")"
  debootstrap --variant=minbase \
    --include=python3.11,python3.11-venv,python3-distutils,ca-certificates \
    bookworm "$mnt" "$MIRROR" >/dev/null
  # python:3.11-slim puts python/python3 in /usr/local/bin; the Dockerfiles call them so.
  ln -sf /usr/bin/python3.11 "$mnt/usr/local/bin/python"
  ln -sf /usr/bin/python3.11 "$mnt/usr/local/bin/python3"
  rm -rf "$mnt"/var/cache/apt/archives/*.deb "$mnt"/var/lib/apt/lists/*
  "${BUILDAH[@]}" umount "$ctr" >/dev/null
  "${BUILDAH[@]}" config --env LANG=C.UTF-8 \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd python3 "$ctr"
  "${BUILDAH[@]}" commit --quiet "$ctr" "$STANDIN" >/dev/null
  "${BUILDAH[@]}" rm "$ctr" >/dev/null
  log "stand-in base built in $((SECONDS - started)) s"
}

drop_stale_layers() {  # $1: service or gpu
  # Each step's cached image is an untagged image; `rmi --prune` would drop them all (and the
  # cache with them). Drop only the ones this image's previous build used and this one did
  # not (the steps after a change), newest first so no child is left behind.
  local state="$STATE_DIR/$1.ids" id
  sed -nE 's/^--> (Using cache )?([0-9a-f]{11}).*/\2/p' "$WORK/$1.log" | awk '!seen[$0]++' >"$WORK/$1.ids"
  if [[ -f "$state" ]]; then
    for id in $(grep -vxFf "$WORK/$1.ids" "$state" | tac); do
      "${BUILDAH[@]}" rmi "$id" >/dev/null 2>&1 || true  # already gone, or still used
    done
  fi
  cp "$WORK/$1.ids" "$state"
}

build_image() {  # $1: service or gpu
  local name=$1 dockerfile=${DOCKERFILE[$1]} tag="headline-signal/$1:$VERSION" started=$SECONDS
  grep -q '^ARG PYTHON_BASE' "$dockerfile" \
    || { log "$dockerfile does not take ARG PYTHON_BASE: it cannot be built on the stand-in"; exit 1; }
  log "building $tag from $dockerfile"
  if [[ $name == gpu && $(df --output=avail -BG "$STORE" | tail -n1 | tr -dc 0-9) -lt 45 ]]; then
    log "warning: the GPU image's build peaks at about 40 GB in $STORE (10.5 GB image, layers, diffs)"
  fi
  # --layers caches every step; --format docker keeps HEALTHCHECK (OCI drops it); the ignore
  # file keeps the host's __pycache__ out of COPY services, or each test run would bust it.
  # pip inside the build trusts this machine's CA bundle, mounted for the build only: neither
  # the bundle nor this pip.conf ends up in a layer.
  "${BUILDAH[@]}" bud --isolation chroot --layers --format docker \
    --build-arg "PYTHON_BASE=$STANDIN" \
    -v "$CA_BUNDLE:$CA_BUNDLE:ro" -v "$PIP_CONF:/etc/pip.conf:ro" \
    --ignorefile "$IGNORE" -f "$dockerfile" -t "$tag" . 2>&1 | tee "$WORK/$name.log" >&2
  drop_stale_layers "$name"
  SUMMARY+=("$(printf '%-34s %8s  built in %d s' "$tag" \
    "$("${BUILDAH[@]}" images --format '{{.Size}}' "$tag" | head -n1)" $((SECONDS - started)))")
}

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
PIP_CONF="$WORK/pip.conf" IGNORE="$WORK/ignore"
printf '[global]\ncert = %s\n' "$CA_BUNDLE" >"$PIP_CONF"
chmod 755 "$WORK" && chmod 644 "$PIP_CONF"
printf '%s\n' '**/__pycache__' '**/*.pyc' >"$IGNORE"
STORE="$("${BUILDAH[@]}" info --format '{{.store.GraphRoot}}')"
STATE_DIR="$STORE/hsig-build-ids"
mkdir -p "$STATE_DIR"

[[ $# -gt 0 ]] || set -- service gpu
for name in "$@"; do
  [[ -n "${DOCKERFILE[$name]:-}" ]] || { log "unknown image $name (service or gpu)"; exit 2; }
done
SUMMARY=()
build_standin
for name in "$@"; do build_image "$name"; done
printf '%s\n' "${SUMMARY[@]}"
