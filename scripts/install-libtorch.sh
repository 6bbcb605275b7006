#!/usr/bin/env bash
# Install the libtorch used by the Rust `tch` backend (torch-sys 0.22 expects PyTorch 2.9.0)
# into the project venv and print the build/runtime environment as `export` lines.
#
#   eval "$(bash scripts/install-libtorch.sh)"              # full wheel: CPU and CUDA
#   eval "$(bash scripts/install-libtorch.sh --cpu-only)"   # CPU only, ~1.7 GB instead of ~6.5 GB
#   cargo build --features tch ...
#
# Venv location: ${STORYGPT_VENV:-<repo root>/.venv} (shared with scripts/reference/install.sh).
# Progress messages go to stderr; only `export`/`unset` lines go to stdout.
#
# The PyPI Linux x86-64 wheel is CUDA-linked (torch 2.9.0+cu128): with its nvidia-* dependencies
# it takes ~6.5 GB, most of it libtorch_cuda.so and the CUDA libraries. It works on CPU-only
# machines, and torch-sys finds it through LIBTORCH_USE_PYTORCH=1.
#
# --cpu-only installs the wheel without those dependencies (pip --no-deps), plus the two small
# CUDA runtime libraries that libtorch_cpu.so itself links (cudart, cupti). Python's `import torch`
# then fails (libtorch.so needs libtorch_cuda.so), so torch-sys is pointed at a CPU-only view of
# the wheel instead: $VENV/libtorch-cpu/{include,lib}, symlinks into the wheel, where libtorch.so
# is libtorch_cpu.so. CI uses this mode; its disk is limited.
set -euo pipefail

TORCH_VERSION="2.9.0"
# The CUDA runtime libraries libtorch_cpu.so is linked against, at the versions torch 2.9.0 pins.
CPU_ONLY_DEPS=(nvidia-cuda-runtime-cu12==12.8.90 nvidia-cuda-cupti-cu12==12.8.90)
CPU_ONLY=0
for arg in "$@"; do
    case "$arg" in
        --print-env) ;;
        --cpu-only) CPU_ONLY=1 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
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

# The installed version, read from the package metadata: a --cpu-only install cannot be imported.
installed="$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)"
if [[ "${installed%%+*}" == "$TORCH_VERSION" ]]; then
    log "torch $installed already installed, skipping pip"
elif [[ "$CPU_ONLY" == 1 ]]; then
    log "installing torch==$TORCH_VERSION without CUDA dependencies (found: ${installed:-none}); ~900 MB download"
    "$PY" -m pip install --quiet --disable-pip-version-check --no-cache-dir --no-deps \
        "torch==$TORCH_VERSION" "${CPU_ONLY_DEPS[@]}" >&2
    installed="$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))')"
    log "installed torch $installed (CPU-only view)"
else
    log "installing torch==$TORCH_VERSION (found: ${installed:-none}); large download, ~1-2 min"
    "$PY" -m pip install --quiet --disable-pip-version-check --no-cache-dir "torch==$TORCH_VERSION" >&2
    installed="$("$PY" -W ignore -c 'import torch; print(torch.__version__)')"
    log "installed torch $installed"
fi

if [[ "$CPU_ONLY" == 1 ]]; then
    site="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    torch_dir="$site/torch"
    "$PY" -m pip install --quiet --disable-pip-version-check --no-cache-dir --no-deps "${CPU_ONLY_DEPS[@]}" >&2
    view="$VENV/libtorch-cpu"
    rm -rf "$view"
    mkdir -p "$view/lib"
    ln -s "$torch_dir/include" "$view/include"
    for lib in libc10.so libtorch_cpu.so libgomp.so.1; do
        [[ -e "$torch_dir/lib/$lib" ]] || { log "missing $torch_dir/lib/$lib"; exit 1; }
        ln -s "$torch_dir/lib/$lib" "$view/lib/$lib"
    done
    # torch-sys links -ltorch; in the wheel libtorch.so is a shim that pulls in libtorch_cuda.so.
    ln -s "$torch_dir/lib/libtorch_cpu.so" "$view/lib/libtorch.so"
    echo "$TORCH_VERSION" > "$view/build-version"
    lib_path="$view/lib:$site/nvidia/cuda_runtime/lib:$site/nvidia/cuda_cupti/lib"
    echo "unset LIBTORCH_USE_PYTORCH"
    echo "export LIBTORCH=\"$view\""
    echo "export LIBTORCH_CXX11_ABI=1"
    echo "export LD_LIBRARY_PATH=\"$lib_path\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\""
    log "torch $installed ready (CPU-only view $view); eval the lines above before building the tch backend"
    exit 0
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
