#!/usr/bin/env bash
# Tools the tests call that PyPI does not carry, from Debian's packages:
# - promtool and prometheus (the prometheus package), unpacked under .tools/ so no system
#   service is started;
# - buildah and debootstrap, installed (they need root and system paths) so the images can be
#   built without a Docker engine (scripts/build_images.sh, docs/images.md).
# Each is skipped when already there, so a second run prints nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=".tools"

apt_updated=""
apt_update_once() {  # the package lists may be missing or stale on a fresh machine
  if [[ -z "$apt_updated" ]]; then
    apt-get update -qq >/dev/null
    apt_updated=1
  fi
}

if ! { [[ -x "$TOOLS/usr/bin/promtool" && -x "$TOOLS/usr/bin/prometheus" ]] \
  || { command -v promtool && command -v prometheus; } >/dev/null; }; then
  echo "tools: fetching Debian's prometheus package for promtool"
  mkdir -p "$TOOLS/debs"
  pushd "$TOOLS/debs" >/dev/null
  apt-get download prometheus >/dev/null 2>&1 || { apt_update_once && apt-get download prometheus >/dev/null; }
  popd >/dev/null
  dpkg-deb -x "$TOOLS"/debs/prometheus_*.deb "$TOOLS"
  "$TOOLS/usr/bin/promtool" --version | head -n1
fi

if ! { command -v buildah && command -v debootstrap; } >/dev/null; then
  echo "tools: installing Debian's buildah and debootstrap"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq buildah debootstrap >/dev/null 2>&1 \
    || { apt_update_once && apt-get install -y -qq buildah debootstrap >/dev/null; }
  buildah --version
fi
