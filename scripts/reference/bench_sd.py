#!/usr/bin/env python3
"""CPU timings of the diffusers reference for Stable Diffusion 1.5-sized components (fp32).

Usage (from the repository root, with the reference venv from scripts/reference/install.sh):

    .venv/bin/python scripts/reference/bench_sd.py                      # all benchmarks, 2 threads
    .venv/bin/python scripts/reference/bench_sd.py --only vae_decode_256 --iters 3
    .venv/bin/python scripts/reference/bench_sd.py --save-configs /tmp/sd-bench-configs

Benchmarks (random weights, torch.inference_mode, default attention processor = SDPA):
  unet_sd15_cfg_step  UNet2DConditionModel from the real SD-1.5 config (859.5 M parameters), one
                      CFG step at 256x256: sample [2,4,32,32], timestep [2], context [2,77,768]
  vae_decode_256      AutoencoderKL SD-1.5 config, decode latents [1,4,32,32] -> [1,3,256,256]
  tiny_pipeline       tests/fixtures/sd_tiny_pipeline end to end (assembled with the unet_tiny,
                      vae_tiny and clip_text_tiny weights): 3 PNDM steps, 32x32, CFG 7.5, np output

Each benchmark runs one untimed warm-up call, then --iters timed calls (tiny_pipeline:
--pipeline-iters); it prints one JSON line with median / min / mean milliseconds. "gflop" is the
FLOP count of one call from torch.utils.flop_counter (conv, matmul, bmm, SDPA; 2 FLOPs per MAC;
norms / activations / softmax not counted) on meta tensors, and "gflop_per_s" = gflop / median.
"""

from __future__ import annotations

import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["DIFFUSERS_VERBOSITY"] = "error"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"

import argparse
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate as G  # noqa: E402  (SD-1.5 configs and the tiny-pipeline assembly live there)

BENCHES = ("unet_sd15_cfg_step", "vae_decode_256", "tiny_pipeline")


def flops_of(fn) -> float | None:
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as fc:
            fn()
        return round(fc.get_total_flops() / 1e9, 3)
    except Exception as e:  # noqa: BLE001
        print(f"  flop count failed: {e}", file=sys.stderr)
        return None


def timed(fn, iters: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def report(name: str, times: list[float], args, gflop: float | None, **extra) -> None:
    import diffusers
    import transformers

    med = statistics.median(times)
    line = {
        "bench": name,
        "threads": torch.get_num_threads(),
        "median_ms": round(med, 2),
        "min_ms": round(min(times), 2),
        "mean_ms": round(statistics.fmean(times), 2),
        "iters": len(times),
        "gflop": gflop,
        "gflop_per_s": round(gflop / (med / 1e3), 2) if gflop else None,
        "dtype": "float32",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "machine": platform.machine(),
    }
    line.update(extra)
    print(json.dumps(line), flush=True)


def bench_unet(args) -> None:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        m = UNet2DConditionModel.from_config(G.SD15_UNET_CONFIG)
        gflop = flops_of(lambda: m(torch.empty(2, 4, 32, 32), torch.tensor([10, 10]),
                                   encoder_hidden_states=torch.empty(2, 77, 768)))
    del m
    torch.manual_seed(0)
    t0 = time.perf_counter()
    unet = UNet2DConditionModel.from_config(G.SD15_UNET_CONFIG).eval()
    init_s = time.perf_counter() - t0
    if args.save_configs:
        unet.save_config(args.save_configs / "unet_sd15_cfg_step")
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(2, 4, 32, 32, generator=g)
    t = torch.tensor([500, 500], dtype=torch.int64)
    ctx = torch.randn(2, 77, 768, generator=g)
    with torch.inference_mode():
        times = timed(lambda: unet(x, t, encoder_hidden_states=ctx).sample, args.iters)
    report("unet_sd15_cfg_step", times, args, gflop, params=sum(p.numel() for p in unet.parameters()),
           shape="sample [2,4,32,32], t [2], ctx [2,77,768]", init_s=round(init_s, 1))
    del unet
    gc.collect()


def bench_vae(args) -> None:
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        m = AutoencoderKL.from_config(G.SD15_VAE_CONFIG)
        gflop = flops_of(lambda: m.decode(torch.empty(1, 4, 32, 32)))
    del m
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(G.SD15_VAE_CONFIG).eval()
    if args.save_configs:
        vae.save_config(args.save_configs / "vae_decode_256")
    z = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(1234))
    with torch.inference_mode():
        times = timed(lambda: vae.decode(z).sample, args.iters)
    report("vae_decode_256", times, args, gflop, params=sum(p.numel() for p in vae.decoder.parameters())
           + sum(p.numel() for p in vae.post_quant_conv.parameters()),
           shape="latents [1,4,32,32] -> [1,3,256,256]")
    del vae
    gc.collect()


def bench_tiny_pipeline(args) -> None:
    from diffusers import StableDiffusionPipeline

    with tempfile.TemporaryDirectory(prefix="sd-tiny-bench-") as tmp:
        asm = Path(tmp) / "pipe"
        G._assemble_sd_tiny(G.FIXTURES / "sd_tiny_pipeline", asm)
        pipe = StableDiffusionPipeline.from_pretrained(asm)
        if args.save_configs:
            for f in ["model_index.json", "scheduler/scheduler_config.json", "tokenizer/tokenizer_config.json"] + [
                    f"{sub}/config.json" for sub in ("unet", "vae", "text_encoder")]:
                dst = args.save_configs / "tiny_pipeline" / f
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes((asm / f).read_bytes())
    pipe.set_progress_bar_config(disable=True)
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1234))

    def run():
        return pipe(G.SD_TINY_PROMPT, negative_prompt="", height=32, width=32,
                    num_inference_steps=G.SD_TINY_STEPS, guidance_scale=G.SD_TINY_GUIDANCE,
                    latents=latents.clone(), output_type="np").images

    with torch.inference_mode():
        gflop = flops_of(run)
        times = timed(run, args.pipeline_iters)
    report("tiny_pipeline", times, args, gflop, shape="3 PNDM steps (4 UNet calls b=2), 32x32, CFG 7.5")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--iters", type=int, default=5, help="timed calls for the SD-1.5 benches (default 5)")
    ap.add_argument("--pipeline-iters", type=int, default=20, help="timed calls for tiny_pipeline (default 20)")
    ap.add_argument("--only", action="append", choices=BENCHES, help="run only this benchmark (repeatable)")
    ap.add_argument("--save-configs", type=Path, metavar="DIR", help="write the configs used into DIR")
    args = ap.parse_args()

    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    if args.save_configs:
        args.save_configs.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()}", file=sys.stderr)
    for name in args.only or BENCHES:
        {"unet_sd15_cfg_step": bench_unet, "vae_decode_256": bench_vae, "tiny_pipeline": bench_tiny_pipeline}[name](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
