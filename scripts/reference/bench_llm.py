#!/usr/bin/env python3
"""CPU timings of transformers' OPT on an OPT-1.3B-shaped model (random weights, real config).

Usage (from the repository root, with the reference venv from scripts/reference/install.sh):

    .venv/bin/python scripts/reference/bench_llm.py --threads 2 --iters 3

Side by side with `RAYON_NUM_THREADS=2 cargo run --release --example bench_llm -- --iters 3`.

Benchmarks (torch.inference_mode, default attention = SDPA; input ids fixed, seed 1234):
  opt1.3b_prefill160_{f32,bf16}  one forward over [1, 160] ids, logits for every position
  opt1.3b_decode32_{f32,bf16}    prefill 160 with the KV cache, then 32 greedy one-token steps;
                                 reports the decode steps alone (total - prefill) as tokens/s

Each prints one JSON line with median / min milliseconds over --iters timed runs after one
warm-up run.
"""

from __future__ import annotations

import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"

import argparse
import json
import platform
import statistics
import time

import torch

PROMPT = 160
NEW = 32


def opt_1_3b():
    from transformers import OPTConfig

    # facebook/opt-1.3b's config.json (shapes); weights are random.
    return OPTConfig(vocab_size=50272, hidden_size=2048, num_hidden_layers=24, ffn_dim=8192,
                     num_attention_heads=32, max_position_embeddings=2048, word_embed_proj_dim=2048,
                     do_layer_norm_before=True, pad_token_id=1, bos_token_id=2, eos_token_id=2)


def timed(fn, iters: int) -> list[float]:
    fn()
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def report(name, times, dtype, **extra):
    import transformers

    med = statistics.median(times)
    line = {"bench": name, "threads": torch.get_num_threads(), "median_ms": round(med, 1),
            "min_ms": round(min(times), 1), "iters": len(times), "dtype": dtype,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "loadavg_1m": round(os.getloadavg()[0], 2), "machine": platform.machine()}
    line.update(extra)
    print(json.dumps(line), flush=True)


def past_of(out):
    return getattr(out, "past_key_values", None) or getattr(out, "cache", None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--dtypes", default="f32,bf16")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import OPTForCausalLM

    torch.manual_seed(0)
    model = OPTForCausalLM(opt_1_3b()).eval()
    params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(3, 50272, (1, PROMPT), generator=torch.Generator().manual_seed(1234))
    # 2 FLOPs per multiply-add of every linear layer and the tied head, for 160 tokens.
    gflop = 2 * PROMPT * (params - model.model.decoder.embed_positions.weight.numel()) / 1e9

    for dtype in args.dtypes.split(","):
        model = model.to(torch.float32 if dtype == "f32" else torch.bfloat16)

        def prefill():
            return model(ids, use_cache=False).logits

        def decode():
            out = model(ids, use_cache=True)
            t_prefill = time.perf_counter()
            past = past_of(out)
            tok = out.logits[:, -1:].argmax(-1)
            for _ in range(NEW):
                out = model(tok, past_key_values=past, use_cache=True)
                past = past_of(out)
                tok = out.logits[:, -1:].argmax(-1)
            return t_prefill

        with torch.inference_mode():
            times = timed(prefill, args.iters)
            report(f"opt1.3b_prefill{PROMPT}_{dtype}", times, dtype, params=params, gflop=round(gflop, 1),
                   gflop_per_s=round(gflop / (statistics.median(times) / 1e3), 1))
            decode()
            steps = []
            for _ in range(args.iters):
                t0 = time.perf_counter()
                t_prefill = decode()
                steps.append((time.perf_counter() - t_prefill) * 1e3)
            med = statistics.median(steps)
            report(f"opt1.3b_decode{NEW}_{dtype}", steps, dtype, tokens_per_s=round(NEW / (med / 1e3), 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
