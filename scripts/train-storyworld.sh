#!/usr/bin/env bash
# Trains the story-world model from scratch, resuming wherever an earlier invocation stopped:
#
#   bash scripts/train-storyworld.sh            # everything that is not done yet
#   bash scripts/train-storyworld.sh vae clip   # only these stages
#
# Stages, in order (each writes runs/<stage>/ and, when all its steps are done, runs/<stage>/model):
#   data      storygpt world generate --size 64 (data/world64; 2,000 stories, seed 0)
#   clip      stage 0 CLIP        configs/storyworld/clip.toml   (~10 min on 2 cores)
#   vae       stage 0 VAE         configs/storyworld/vae.toml    (~25 min)
#   lm        stage 0 LM          configs/storyworld/lm.toml     (~6 min)
#   ldm       stage 1 Char-LDM    configs/storyworld/ldm.toml    (hours; see docs/training.md)
#   embeddings  storygpt prepare-embeddings (runs/embeddings; the stage-2 targets)
#   stage2    stage 2 LLM alignment configs/storyworld/stage2.toml
#   stage2-diffusion  stage 2 continued under the diffusion loss configs/storyworld/stage2-diffusion.toml
#   assemble  the embedded default: models/storyworld/{ldm,stage2} in bf16, the cast + model_index.json
#
# The stage-0 models this script made are committed under models/storyworld/{clip,vae,lm}; it
# starts from those unless STORYGPT_RETRAIN=1.
#
# Killing the script at any point loses at most the steps since the last checkpoint: the next
# run resumes from runs/<stage>/checkpoints/latest with bit-identical results.
#
# Training uses the tch backend (libtorch on the CPU is several times faster than flex for
# training; docs/training.md). Set STORYGPT_TRAIN_BACKEND=flex to use the pure-Rust backend.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BACKEND="${STORYGPT_TRAIN_BACKEND:-tch}"
# libtorch's OpenMP threads spin while they wait; next to any other busy process (a build, a
# second run) that made the LM 10x slower here (0.2 vs 2.6 steps/s). Passive waiting costs
# nothing measurable when the machine is otherwise idle.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
STAGES=("$@")
[[ ${#STAGES[@]} -eq 0 ]] && STAGES=(data clip vae lm ldm embeddings stage2 stage2-diffusion assemble)

if [[ "$BACKEND" == "tch" ]]; then
    env_file=$(mktemp)
    bash scripts/install-libtorch.sh --cpu-only > "$env_file"
    # shellcheck disable=SC1090
    source "$env_file"
    TARGET_DIR="${CARGO_TARGET_DIR:-target}/train-tch"
    CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release --locked --bin storygpt \
        --no-default-features --features tch
else
    TARGET_DIR="${CARGO_TARGET_DIR:-target}"
    cargo build --release --locked --bin storygpt
fi
BIN="$TARGET_DIR/release/storygpt"

train() { # stage command config
    local run="runs/$1"
    if [[ -f "$run/model/config.json" || -f "$run/model/model_index.json" ]]; then
        echo "== $1: done ($run/model)"
        return
    fi
    # The stage-0 exports are committed (models/storyworld/<stage>, made by this script); start
    # from them unless asked to retrain. STORYGPT_RETRAIN=1 trains every stage from scratch.
    if [[ "${STORYGPT_RETRAIN:-0}" != "1" && "$1" =~ ^(clip|vae|lm)$ && -f "models/storyworld/$1/config.json" ]]; then
        mkdir -p "$run" && cp -r "models/storyworld/$1" "$run/model"
        echo "== $1: using the committed models/storyworld/$1 (STORYGPT_RETRAIN=1 retrains it)"
        return
    fi
    local resume=()
    [[ -f "$run/checkpoints/latest" ]] && resume=(--resume)
    echo "== $1: $BIN $2 --config $3 --out $run ${resume[*]}"
    "$BIN" "$2" --config "$3" --out "$run" "${resume[@]}"
}

for stage in "${STAGES[@]}"; do
    case "$stage" in
        data)
            if [[ -f data/world64/manifest.json ]]; then
                echo "== data: done (data/world64)"
            else
                "$BIN" world generate --out data/world64 --stories 2000 --size 64 --seed 0
            fi ;;
        clip) train clip train-clip configs/storyworld/clip.toml ;;
        vae) train vae train-vae configs/storyworld/vae.toml ;;
        lm) train lm train-lm configs/storyworld/lm.toml ;;
        ldm) train ldm train-ldm configs/storyworld/ldm.toml ;;
        embeddings)
            # Resumes shard by shard when interrupted.
            "$BIN" prepare-embeddings --ldm runs/ldm/model --data data/world64 --out runs/embeddings ;;
        stage2) train stage2 train-llm configs/storyworld/stage2.toml ;;
        stage2-diffusion) train stage2-diffusion train-llm configs/storyworld/stage2-diffusion.toml ;;
        assemble)
            # The embedded default: Char-LDM and the stage-2 head in bf16, sharing the stage-0
            # CLIP, VAE and LM (the text encoder and VAE of runs/ldm/model are copies of those).
            out=models/storyworld
            "$BIN" convert runs/ldm/model/unet "$out/ldm/unet"
            "$BIN" convert runs/ldm/model/postfuse_module "$out/ldm/postfuse_module"
            "$BIN" convert runs/ldm/model/image_encoder "$out/ldm/image_encoder"
            mkdir -p "$out/ldm/scheduler"
            cp runs/ldm/model/scheduler/scheduler_config.json "$out/ldm/scheduler/"
            cp runs/ldm/model/README.md "$out/ldm/README.md"
            python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
index = json.load(open("runs/ldm/model/model_index.json"))
index.update({"text_encoder": "../clip", "vae": "../vae"})
json.dump(index, open(f"{out}/ldm/model_index.json", "w"), indent=2)
PY
            "$BIN" convert runs/stage2-diffusion/model "$out/stage2"
            python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
cfg = json.load(open(f"{out}/stage2/config.json"))
cfg.update({"llm": "../lm", "visual_encoder": "../clip", "ldm": "../ldm"})
json.dump(cfg, open(f"{out}/stage2/config.json", "w"), indent=2)
# The cast: each character's name and portrait, so that Char-LDM can fuse the names of a
# sentence it draws itself (--first-frame char-ldm).
import os, shutil
os.makedirs(f"{out}/cast", exist_ok=True)
manifest = json.load(open("data/world64/manifest.json"))
cast = []
for c in manifest["characters"]:
    name = os.path.basename(c["portrait"])
    shutil.copy(os.path.join("data/world64", c["portrait"]), f"{out}/cast/{name}")
    cast.append({"name": c["name"], "portrait": name})
json.dump({"characters": cast}, open(f"{out}/cast/cast.json", "w"), indent=2)
json.dump({"ldm": "ldm", "head": "stage2", "cast": "cast",
           # DPM-Solver++ 2M in 12 steps draws what DDIM draws in 25 (docs/stage2.md), in half the time
           "options": {"sample": {"steps": 12, "scheduler": "dpm_solver_multistep",
                                  "guidance_scale": 4.0, "start_merge_step": 0},
                       "first_frame": "llm", "history_window": 3, "seed": 0}},
          open(f"{out}/model_index.json", "w"), indent=2)
PY
            du -sh "$out" ;;
        *) echo "unknown stage '$stage' (data, clip, vae, lm, ldm, embeddings, stage2, stage2-diffusion, assemble)" >&2; exit 2 ;;
    esac
done
