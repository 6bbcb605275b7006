#!/usr/bin/env bash
# Install the libtorch used by the Rust `tch` backend (torch-sys 0.22 expects PyTorch 2.9.0)
# into the project venv and print the build/runtime environment as `export` lines.
#
#   eval "$(bash scripts/install-libtorch.sh)"      # install if needed, then set the env
#   bash scripts/install-libtorch.sh --print-env    # same output (flag accepted for clarity)
#   cargo build --features tch ...
#
# Venv location: ${STORYGPT_VENV:-<repo root>/.venv} (shared with scripts/reference/install.sh).
# Progress messages go to stderr; only `export` lines go to stdout.
# Notes: the PyPI Linux x86-64 wheel is CUDA-linked (torch 2.9.0+cu128, ~3 GB with its nvidia-*
# dependencies) but works on CPU-only machines. torch-sys accepts "2.9.0+<local>" version strings,
# so LIBTORCH_BYPASS_VERSION_CHECK is only emitted if the installed version is not 2.9.0.
set -euo pipefail

TORCH_VERSION="2.9.0"
for arg in "$@"; do
    case "$arg" in
        --print-env) ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(git -C "$SCRIPT_DIR" rev-parse --show-toplevel 2>/dev/null || (cd "$SCRIPT_DIR/.." && pwd))"
VENV="${STORYGPT_VENV:-$REPO_ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

log() { echo "[install-libtorch.sh] $*" >&2; }

if [[ -x "$VENV/bin/python" ]]; then
    log "reusing venv $VENV"
else
    log "creating venv $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
fi
VENV="$(cd "$VENV" && pwd)"
PY="$VENV/bin/python"

installed="$("$PY" -W ignore -c 'import torch; print(torch.__version__)' 2>/dev/null || true)"
if [[ "${installed%%+*}" == "$TORCH_VERSION" ]]; then
    log "torch $installed already installed, skipping pip"
else
    log "installing torch==$TORCH_VERSION (found: ${installed:-none}); large download, ~1-2 min"
    "$PY" -m pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION" >&2
    installed="$("$PY" -W ignore -c 'import torch; print(torch.__version__)')"
    log "installed torch $installed"
fi

# Library dirs: torch/lib plus every site-packages/nvidia/*/lib (CUDA runtime libs that
# libtorch_cuda.so needs at load time, even on CPU-only machines).
lib_path="$("$PY" -W ignore - <<'PY'
import glob, os, torch
from torch.utils import cpp_extension
dirs = list(cpp_extension.library_paths())
site = os.path.dirname(os.path.dirname(torch.__file__))
dirs += sorted(d for d in glob.glob(os.path.join(site, "nvidia", "*", "lib")) if os.path.isdir(d))
dirs += sorted(d for d in glob.glob(os.path.join(site, "nvidia", "cu*", "lib")) if os.path.isdir(d) and d not in dirs)
print(":".join(dict.fromkeys(dirs)))
PY
)"

echo "export LIBTORCH_USE_PYTORCH=1"
echo "export VIRTUAL_ENV=\"$VENV\""
echo "export PATH=\"$VENV/bin:\$PATH\""
if [[ "${installed%%+*}" != "$TORCH_VERSION" ]]; then
    echo "export LIBTORCH_BYPASS_VERSION_CHECK=1"
fi
echo "export LD_LIBRARY_PATH=\"$lib_path\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\""
log "torch $installed ready; eval the export lines above before building the tch backend"
