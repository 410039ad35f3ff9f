#!/usr/bin/env bash
# Lock each image's dependencies for the platform the image runs on (`make lock-images`):
#   deploy/requirements/gpu.in     -> gpu.lock      (CUDA torch and vLLM wheels from PyPI)
#   deploy/requirements/service.in -> service.lock  (no torch, no vLLM)
# Target: linux x86_64, CPython 3.11, glibc 2.36 (python:3.11.11-slim-bookworm, both images'
# base), wheels only, every file's sha256 (the Dockerfiles install with --require-hashes).
#
# requirements.lock (the CPU lock the suite runs on) is passed as constraints, so the images
# run the versions the suite tested; for gpu.lock less the packages named in
# gpu-differences.txt, where the CUDA builds pin something else (the why is in that file).
# The existing locks are read back as preferences: re-locking moves only what must move.
#
# uv resolves for another platform by itself (pip needs every wheel tag spelled out); it is
# pinned and installed from PyPI into .tools/. Neither this machine's pip config (local wheel
# folders with a CPU torch, file:// indexes) nor any UV_* setting may reach the resolution.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
PLATFORM=x86_64-manylinux_2_36
PYTHON_VERSION=3.11
INDEX=https://pypi.org/simple
REQ="$PWD/deploy/requirements"
UV_HOME=".tools/uv-$UV_VERSION"
CERT=/etc/ssl/certs/ca-certificates.crt

for name in $(compgen -e); do
  if [[ "$name" == UV_* ]]; then unset "$name"; fi
done
if [[ -f "$CERT" ]]; then export SSL_CERT_FILE="$CERT"; fi

if ! "$UV_HOME/bin/uv" --version 2>/dev/null | grep -q "^uv $UV_VERSION "; then
  python3 -m venv "$UV_HOME"
  PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS="" "$UV_HOME/bin/pip" install -q \
    ${SSL_CERT_FILE:+--cert "$SSL_CERT_FILE"} --index-url "$INDEX" "uv==$UV_VERSION"
fi
uv="$PWD/$UV_HOME/bin/uv"

# The resolver runs in a scratch folder holding copies of the inputs, so the locks'
# "via" comments name the files by a stable relative name, not a temporary path.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$REQ/gpu.in" "$REQ/service.in" "$work/"
cd "$work"
differences="$(grep -vE '^\s*(#|$)' "$REQ/gpu-differences.txt" | awk '{print $1}')"
grep -viE "^($(paste -sd'|' <<<"$differences"))==" "$OLDPWD/requirements.lock" \
  >requirements.lock-less-gpu-differences
cp "$OLDPWD/requirements.lock" requirements.lock

declare -A constraints=([gpu]=requirements.lock-less-gpu-differences [service]=requirements.lock)
for image in gpu service; do
  echo "lock-images: $image.in -> deploy/requirements/$image.lock ($PLATFORM, CPython $PYTHON_VERSION)"
  "$uv" pip compile --quiet --no-config --system-certs --default-index "$INDEX" \
    --python-platform "$PLATFORM" --python-version "$PYTHON_VERSION" --only-binary :all: \
    --generate-hashes --no-emit-index-url --custom-compile-command "make lock-images" \
    -c "${constraints[$image]}" "$image.in" -o "$REQ/$image.lock"
  echo "lock-images: $(grep -cE '^[A-Za-z0-9]' "$REQ/$image.lock") packages"
done
