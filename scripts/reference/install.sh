#!/usr/bin/env bash
# Create (or reuse) the Python reference venv and install the pinned reference stack.
#
#   bash scripts/reference/install.sh
#
# Venv location: ${STORYGPT_VENV:-<repo root>/.venv}. Idempotent: re-running only installs
# what is missing or at a different version. Needs python3 (>= 3.10, tested with 3.11) with the
# venv module and access to PyPI. Download is ~3 GB (CUDA-linked torch wheel), venv ~5.5 GB.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(git -C "$SCRIPT_DIR" rev-parse --show-toplevel 2>/dev/null || (cd "$SCRIPT_DIR/../.." && pwd))"
VENV="${STORYGPT_VENV:-$REPO_ROOT/.venv}"
REQS="$SCRIPT_DIR/requirements.txt"
PYTHON="${PYTHON:-python3}"

log() { echo "[install.sh] $*" >&2; }

if [[ -x "$VENV/bin/python" ]]; then
    log "reusing venv $VENV ($("$VENV/bin/python" --version 2>&1))"
else
    log "creating venv $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi

log "pip install -r $REQS"
start=$(date +%s)
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQS"
log "pip finished in $(( $(date +%s) - start )) s"

"$VENV/bin/python" - <<'PY'
import importlib
mods = ["torch", "transformers", "diffusers", "safetensors", "tokenizers", "numpy", "accelerate", "huggingface_hub",
        "pytorch_fid", "scipy", "sklearn", "mpmath"]
print("[install.sh] installed: " + ", ".join(f"{m} {importlib.import_module(m).__version__}" for m in mods))
PY
log "done. Generate fixtures with: $VENV/bin/python scripts/reference/generate.py"
