#!/usr/bin/env bash
# Creates .venv and installs kssm-tui with its test tools, once. Safe to run again: it only
# installs what is missing. TORCH_SPEC picks the torch build (default: the pinned CPU-friendly
# release; set e.g. TORCH_SPEC="torch" for your platform's default build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
stamp="$VENV/.kssm-installed"

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "bootstrap: creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
if [[ -f "$stamp" && "$stamp" -nt pyproject.toml ]]; then
  exit 0
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "bootstrap: installing $TORCH_SPEC (first, so no other package pulls a different build)"
  "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
fi
echo "bootstrap: installing kssm-tui and its test tools"
"$VENV/bin/python" -m pip install -q -e ".[test]"
touch "$stamp"
