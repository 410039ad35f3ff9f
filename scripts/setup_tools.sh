#!/usr/bin/env bash
# Tools the tests call that PyPI does not carry: promtool and prometheus (Debian's package),
# unpacked under .tools/ so no system service is started. Skipped when already there.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=".tools"
if [[ -x "$TOOLS/usr/bin/promtool" && -x "$TOOLS/usr/bin/prometheus" ]]; then
  exit 0
fi
if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
  exit 0
fi
echo "tools: fetching Debian's prometheus package for promtool"
mkdir -p "$TOOLS/debs"
(cd "$TOOLS/debs" && (apt-get download prometheus >/dev/null 2>&1 || (apt-get update -qq >/dev/null && apt-get download prometheus >/dev/null)))
dpkg-deb -x "$TOOLS"/debs/prometheus_*.deb "$TOOLS"
"$TOOLS/usr/bin/promtool" --version | head -n1
