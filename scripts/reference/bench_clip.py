#!/usr/bin/env python3
"""CPU timing of the transformers CLIP encoders at real Stable-Diffusion / StoryGPT-V sizes.

Random weights (seed 0), float32, ``torch.inference_mode()``, ``torch.set_num_threads(--threads)``:

* ``clip_text_l14``   — CLIPTextModel with the openai/clip-vit-large-patch14 text config (hidden 768,
  12 layers, 12 heads, intermediate 3072, vocab 49408, 77 positions, quick_gelu; bos/eos/pad ids
  0/2/1 as in that hub config, so pooling is argmax(input_ids)) on one [1,77] batch;
* ``clip_vision_l14`` — CLIPVisionModelWithProjection, ViT-L/14 (hidden 1024, 24 layers, 16 heads,
  intermediate 4096, patch 14, image 224, projection 768, quick_gelu) on one [1,3,224,224] image.

Warm-up ``--warmup`` (2) forwards, then ``--iters`` (10) timed forwards; prints one JSON line per
model with the median and min milliseconds per forward. ``--save-configs DIR`` also writes
``DIR/clip_text_l14/config.json`` and ``DIR/clip_vision_l14/config.json`` (HF format, no weights)
so a Rust benchmark can build exactly the same shapes.

    .venv/bin/python scripts/reference/bench_clip.py --threads 2 --iters 10 [--save-configs DIR]
"""

from __future__ import annotations

import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection


def text_config() -> CLIPTextConfig:
    # openai/clip-vit-large-patch14 text_config (the SD 1.x text encoder)
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        projection_dim=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        attention_dropout=0.0,
        initializer_range=0.02,
        initializer_factor=1.0,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )


def vision_config() -> CLIPVisionConfig:
    # openai/clip-vit-large-patch14 vision_config
    return CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        projection_dim=768,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_channels=3,
        image_size=224,
        patch_size=14,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        attention_dropout=0.0,
        initializer_range=0.02,
        initializer_factor=1.0,
    )


def text_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    body = torch.randint(1, 49406, (10,), generator=g).tolist()
    ids = [49406] + body + [49407]
    ids += [49407] * (77 - len(ids))  # SD 1.x: pad with <|endoftext|>
    return {"input_ids": torch.tensor([ids], dtype=torch.int64)}


def vision_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    return {"pixel_values": torch.randn(1, 3, 224, 224, generator=g)}


def bench(name: str, model: torch.nn.Module, inputs: dict, warmup: int, iters: int, threads: int) -> dict:
    with torch.inference_mode():
        for _ in range(warmup):
            model(**inputs)
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            model(**inputs)
            times.append((time.perf_counter() - t0) * 1000.0)
    return {
        "model": name,
        "threads": threads,
        "median_ms": round(statistics.median(times), 2),
        "min_ms": round(min(times), 2),
        "iters": iters,
        "warmup": warmup,
        "dtype": "float32",
        "params": sum(p.numel() for p in model.parameters()),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--save-configs", type=Path, metavar="DIR", help="write DIR/<model>/config.json")
    ap.add_argument("--only", choices=["clip_text_l14", "clip_vision_l14"], action="append")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    models = {
        "clip_text_l14": (CLIPTextModel, text_config, text_inputs),
        "clip_vision_l14": (CLIPVisionModelWithProjection, vision_config, vision_inputs),
    }
    for name, (cls, make_cfg, make_inputs) in models.items():
        if args.only and name not in args.only:
            continue
        cfg = make_cfg()
        torch.manual_seed(0)
        model = cls(cfg).eval()
        if args.save_configs:
            model.config.save_pretrained(args.save_configs / name)
        print(json.dumps(bench(name, model, make_inputs(), args.warmup, args.iters, args.threads)), flush=True)
        del model
    return 0


if __name__ == "__main__":
    sys.exit(main())
