#!/usr/bin/env python3
"""Deterministic generator of the reference fixtures under tests/fixtures/.

Usage (from the repository root, with the reference venv from scripts/reference/install.sh):

    .venv/bin/python scripts/reference/generate.py               # regenerate every case
    .venv/bin/python scripts/reference/generate.py --only loader # regenerate one case (repeatable)
    .venv/bin/python scripts/reference/generate.py --check       # regenerate into a temp dir and
                                                                 # compare with tests/fixtures/SHA256SUMS
    .venv/bin/python scripts/reference/generate.py --list        # list the registered cases

Every *case* is one function registered with ``@case("name")``; it writes only into its own
folder ``tests/fixtures/<name>/`` (which is emptied first). ``tests/fixtures/SHA256SUMS`` lists
``<sha256>  <path relative to tests/fixtures>`` for every generated file, sorted by path; with
``--only`` only the entries of the selected cases are replaced. ``--check`` exits 1 and prints each
mismatching / missing / extra file if anything differs, otherwise prints "N files match".

To add a case (a scheduler, a tokenizer, a pipeline, ...), write a new ``@case("folder")`` function
below; nothing else has to change. Conventions:
  * CPU only, ``torch.set_num_threads(1)``; the RNGs are re-seeded before each case (weights with
    seed 0, probe inputs with a separate ``torch.Generator`` seeded with INPUT_SEED), so cases are
    independent of each other and of the order in which they run.
  * Golden tensors are written with ``safetensors.torch.save_file`` (metadata {"format": "pt"}),
    float32 unless noted; never pickle.
  * Models are saved with ``save_pretrained`` (safetensors) so each folder has a real HF layout.
"""

from __future__ import annotations

import os

# Must be set before torch / transformers / diffusers are imported.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["DIFFUSERS_VERBOSITY"] = "error"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"

import argparse
import hashlib
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = REPO_ROOT / "tests" / "fixtures"
SUMS_NAME = "SHA256SUMS"
WEIGHT_SEED = 0
INPUT_SEED = 1234

# --------------------------------------------------------------------------------------------
# case registry
# --------------------------------------------------------------------------------------------

CASES: dict[str, Callable[[Path], None]] = {}


def case(name: str):
    """Register ``fn(out_dir)`` as the generator of ``tests/fixtures/<name>/``."""

    def deco(fn: Callable[[Path], None]):
        if name in CASES:
            raise ValueError(f"duplicate case {name!r}")
        CASES[name] = fn
        return fn

    return deco


def seed_everything(seed: int = WEIGHT_SEED) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def input_gen(seed: int = INPUT_SEED) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def save_golden(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    out = {}
    for k, v in tensors.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{k}: not a tensor")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ValueError(f"{k}: non-finite values")
        out[k] = v.detach().cpu().contiguous().clone()
    save_file(out, str(path), metadata={"format": "pt"})


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def assert_identical(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or not torch.equal(a, b):
        diff = (a - b).abs().max().item() if a.shape == b.shape else "shape"
        raise AssertionError(f"{name}: reload mismatch (max diff {diff})")


# --------------------------------------------------------------------------------------------
# case: loader — a tiny hand-written module exercising every loader path
# --------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 5)


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 5)
        self.norm = nn.LayerNorm(5, eps=1e-5)
        self.emb = nn.Embedding(10, 5)
        self.rms = RMSNorm(5, eps=1e-6)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.proj = nn.Linear(5, 4, bias=False)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.gn = nn.GroupNorm(2, 4, eps=1e-5)
        self.register_buffer("position_ids", torch.arange(7).unsqueeze(0))  # int64 [1,7], persistent

    def forward(self, x, ids, img):
        h = self.norm(self.fc(x)) + self.emb(ids)
        h = self.rms(h)
        for b in self.blocks:
            h = h + b.lin(h)
        vec = self.proj(h)  # [2,4]
        out_img = self.gn(self.conv(img))  # [1,4,6,6]
        return vec, out_img


LOADER_CONFIG = {
    "hidden_size": 5,
    "num_blocks": 2,
    "vocab_size": 10,
    "rms_norm_eps": 1e-06,
    "layer_norm_eps": 1e-05,
    "torch_dtype": "float32",
    "some_unknown_field": {"nested": [1, 2]},
}


def _write_loader_config(path: Path) -> None:
    path.write_text(json.dumps(LOADER_CONFIG, indent=2) + "\n")


@case("loader")
def gen_loader(out: Path) -> None:
    seed_everything(WEIGHT_SEED)
    model = TinyNet().eval()
    with torch.no_grad():
        for mod in (model.norm, model.gn, model.rms):
            mod.weight.copy_(torch.randn_like(mod.weight))
            if getattr(mod, "bias", None) is not None:
                mod.bias.copy_(torch.randn_like(mod.bias))
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}

    _write_loader_config(out / "config.json")
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})

    def cast(dtype):
        return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}

    save_file(cast(torch.float16), str(out / "model.f16.safetensors"), metadata={"format": "pt"})
    save_file(cast(torch.bfloat16), str(out / "model.bf16.safetensors"), metadata={"format": "pt"})

    # Sharded copy in the HF layout (model.safetensors.index.json + 2 shards, f32).
    shard_dir = out / "sharded"
    shard_dir.mkdir()
    _write_loader_config(shard_dir / "config.json")
    keys = list(sd.keys())
    half = (len(keys) + 1) // 2
    shards = [keys[:half], keys[half:]]
    weight_map = {}
    total = 0
    for i, shard_keys in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: sd[k] for k in shard_keys}, str(shard_dir / fname), metadata={"format": "pt"})
        for k in shard_keys:
            weight_map[k] = fname
            total += sd[k].numel() * sd[k].element_size()
    write_json(
        shard_dir / "model.safetensors.index.json",
        {"metadata": {"total_size": total}, "weight_map": weight_map},
    )

    # Reload check: every file reproduces the state dict.
    for f in ["model.safetensors"] + [f"sharded/model-0000{i}-of-00002.safetensors" for i in (1, 2)]:
        for k, v in load_file(str(out / f)).items():
            assert_identical(f"{f}:{k}", v, sd[k])

    g = input_gen()
    x = torch.randn(2, 3, generator=g)
    ids = torch.tensor([3, 7], dtype=torch.int64)
    img = torch.randn(1, 4, 6, 6, generator=g)
    golden = {"x": x, "ids": ids, "img": img}
    with torch.no_grad():
        golden["vec"], golden["out_img"] = model(x, ids, img)
        for suffix, dtype in (("f16", torch.float16), ("bf16", torch.bfloat16)):
            m = TinyNet().eval()
            m.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in cast(dtype).items()})
            golden[f"vec_{suffix}"], golden[f"out_img_{suffix}"] = m(x, ids, img)
    save_golden(out / "golden.safetensors", golden)


# --------------------------------------------------------------------------------------------
# tiny Hugging Face models (configs as in offline-assets.md §2.1)
# --------------------------------------------------------------------------------------------


def clip_text_config(**extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=1000,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=998,
        eos_token_id=999,
        pad_token_id=999,
        **extra,
    )


def clip_input_ids() -> torch.Tensor:
    g = input_gen()
    rows = []
    for n in (10, 5):
        body = torch.randint(1, 998, (n,), generator=g).tolist()  # ids in [1, 997]
        row = [998] + body + [999]
        row += [999] * (77 - len(row))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.int64)


def clip_text_golden(model) -> dict[str, torch.Tensor]:
    ids = clip_input_ids()
    with torch.no_grad():
        o = model(input_ids=ids)
    return {"input_ids": ids, "last_hidden_state": o.last_hidden_state, "pooler_output": o.pooler_output}


@case("clip_text_tiny")
def gen_clip_text_tiny(out: Path) -> None:
    from transformers import CLIPTextModel

    seed_everything(WEIGHT_SEED)
    model = CLIPTextModel(clip_text_config()).eval()
    model.save_pretrained(out)
    golden = clip_text_golden(model)
    reloaded = CLIPTextModel.from_pretrained(out).eval()
    r = clip_text_golden(reloaded)
    for k in golden:
        assert_identical(f"clip_text_tiny reload {k}", golden[k], r[k])
    save_golden(out / "golden.safetensors", golden)


@case("clip_text_tiny_legacy")
def gen_clip_text_tiny_legacy(out: Path) -> None:
    """Same weights as clip_text_tiny, in the transformers-4 layout (``text_model.`` prefix plus a
    ``text_model.embeddings.position_ids`` int64 [1,77] buffer)."""
    from transformers import CLIPTextModel

    seed_everything(WEIGHT_SEED)
    model = CLIPTextModel(clip_text_config()).eval()
    # Reuse HF's config.json writer, then replace the weights file with the legacy layout.
    model.save_pretrained(out)
    (out / "model.safetensors").unlink()
    sd = {f"text_model.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    sd["text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64).unsqueeze(0)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})

    golden = clip_text_golden(model)
    reloaded = CLIPTextModel.from_pretrained(out).eval()
    ref_sd = model.state_dict()
    for k, v in reloaded.state_dict().items():
        assert_identical(f"clip_text_tiny_legacy weight {k}", v, ref_sd[k])
    r = clip_text_golden(reloaded)
    for k in golden:
        assert_identical(f"clip_text_tiny_legacy reload {k}", golden[k], r[k])
    save_golden(out / "golden.safetensors", golden)


@case("clip_text_tiny_projection")
def gen_clip_text_tiny_projection(out: Path) -> None:
    from transformers import CLIPTextModelWithProjection

    seed_everything(WEIGHT_SEED)
    model = CLIPTextModelWithProjection(clip_text_config(projection_dim=32)).eval()
    model.save_pretrained(out)
    ids = clip_input_ids()
    with torch.no_grad():
        o = model(input_ids=ids)
        # pooler_output is not part of CLIPTextModelOutput; take it from the inner text model.
        inner = model.text_model(input_ids=ids)
    assert_identical("projection last_hidden_state", o.last_hidden_state, inner.last_hidden_state)
    golden = {
        "input_ids": ids,
        "last_hidden_state": o.last_hidden_state,
        "pooler_output": inner.pooler_output,
        "text_embeds": o.text_embeds,
    }
    reloaded = CLIPTextModelWithProjection.from_pretrained(out).eval()
    with torch.no_grad():
        assert_identical("projection reload", reloaded(input_ids=ids).text_embeds, o.text_embeds)
    save_golden(out / "golden.safetensors", golden)


@case("clip_vision_tiny")
def gen_clip_vision_tiny(out: Path) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    seed_everything(WEIGHT_SEED)
    cfg = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=4,
        projection_dim=32,
    )
    model = CLIPVisionModelWithProjection(cfg).eval()
    model.save_pretrained(out)
    pixel_values = torch.randn(2, 3, 32, 32, generator=input_gen())
    with torch.no_grad():
        o = model(pixel_values=pixel_values)
        inner = model.vision_model(pixel_values=pixel_values)
    golden = {
        "pixel_values": pixel_values,
        "last_hidden_state": o.last_hidden_state,
        "pooler_output": inner.pooler_output,
        "image_embeds": o.image_embeds,
    }
    reloaded = CLIPVisionModelWithProjection.from_pretrained(out).eval()
    with torch.no_grad():
        assert_identical("vision reload", reloaded(pixel_values=pixel_values).image_embeds, o.image_embeds)
    save_golden(out / "golden.safetensors", golden)


@case("unet_tiny")
def gen_unet_tiny(out: Path) -> None:
    from diffusers import UNet2DConditionModel

    seed_everything(WEIGHT_SEED)
    model = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    ).eval()
    model.save_pretrained(out)
    g = input_gen()
    sample = torch.randn(2, 4, 16, 16, generator=g)
    timestep = torch.tensor([10, 500], dtype=torch.int64)
    ctx = torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        res = model(sample, timestep, encoder_hidden_states=ctx).sample
        reloaded = UNet2DConditionModel.from_pretrained(out).eval()
        assert_identical("unet reload", reloaded(sample, timestep, encoder_hidden_states=ctx).sample, res)
    save_golden(
        out / "golden.safetensors",
        {"sample": sample, "timestep": timestep, "encoder_hidden_states": ctx, "out": res},
    )


def _vae_tiny():
    from diffusers import AutoencoderKL

    seed_everything(WEIGHT_SEED)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
    ).eval()


def _vae_golden(model) -> dict[str, torch.Tensor]:
    image = torch.rand(1, 3, 32, 32, generator=input_gen()) * 2.0 - 1.0
    with torch.no_grad():
        post = model.encode(image).latent_dist
        decoded = model.decode(post.mean).sample
    return {
        "image": image,
        "posterior_mean": post.mean,
        "posterior_logvar": post.logvar,
        "decoded": decoded,
    }


def _check_same(name, a: dict, b: dict) -> None:
    for k in a:
        assert_identical(f"{name} {k}", a[k], b[k])


@case("vae_tiny")
def gen_vae_tiny(out: Path) -> None:
    from diffusers import AutoencoderKL

    model = _vae_tiny()
    model.save_pretrained(out)
    golden = _vae_golden(model)
    _check_same("vae reload", golden, _vae_golden(AutoencoderKL.from_pretrained(out).eval()))
    save_golden(out / "golden.safetensors", golden)


VAE_LEGACY_RENAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


@case("vae_tiny_legacy")
def gen_vae_tiny_legacy(out: Path) -> None:
    """Same weights as vae_tiny, with the mid-block attention keys in the old diffusers names
    ``{query,key,value,proj_attn}`` (Linear [C,C] weights + biases), which diffusers still renames to
    ``to_q/to_k/to_v/to_out.0`` when loading a non-sharded checkpoint."""
    from diffusers import AutoencoderKL

    model = _vae_tiny()
    model.save_pretrained(out)
    fname = out / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(fname))
    fname.unlink()
    legacy = {}
    renamed = 0
    for k, v in sd.items():
        nk = k
        if ".mid_block.attentions." in k:
            for new, old in VAE_LEGACY_RENAMES.items():
                if f".{new}." in k:
                    nk = k.replace(f".{new}.", f".{old}.")
                    renamed += 1
        legacy[nk] = v
    assert renamed == 16, renamed  # encoder+decoder x 4 projections x (weight, bias)
    save_file(legacy, str(fname), metadata={"format": "pt"})
    golden = _vae_golden(model)
    reloaded = AutoencoderKL.from_pretrained(out).eval()
    ref_sd = model.state_dict()
    for k, v in reloaded.state_dict().items():
        assert_identical(f"vae legacy weight {k}", v, ref_sd[k])
    _check_same("vae legacy reload", golden, _vae_golden(reloaded))
    save_golden(out / "golden.safetensors", golden)


# --- causal LMs ---------------------------------------------------------------------------------

LM_PAD_ID = 1


def lm_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """[2,6] ids; row 1 is left-padded with two pad tokens (id 1)."""
    g = input_gen()
    ids = torch.randint(3, 1000, (2, 6), generator=g, dtype=torch.int64)
    mask = torch.ones(2, 6, dtype=torch.int64)
    ids[1, :2] = LM_PAD_ID
    mask[1, :2] = 0
    return ids, mask


def lm_golden(model, out: Path, cls, explicit_positions: bool) -> None:
    ids, mask = lm_inputs()
    kwargs = {"input_ids": ids, "attention_mask": mask, "output_hidden_states": True}
    golden = {"input_ids": ids, "attention_mask": mask}
    if explicit_positions:
        # What `generate` passes for left-padded batches: cumsum(mask) - 1, padded slots set to 1.
        pos = mask.cumsum(-1) - 1
        pos = pos.masked_fill(mask == 0, 1)
        kwargs["position_ids"] = pos
        golden["position_ids"] = pos
    with torch.no_grad():
        o = model(**kwargs)
        r = cls.from_pretrained(out).eval()(**kwargs)
    assert_identical(f"{out.name} reload logits", o.logits, r.logits)
    golden["logits"] = o.logits
    hs = list(o.hidden_states)
    if len({tuple(h.shape) for h in hs}) == 1:
        golden["hidden_states"] = torch.stack(hs)
    else:
        # opt_tiny_350m_style: the last entry is after project_out (word_embed_proj_dim), so it
        # cannot be stacked with the others. Stack the per-layer inputs, keep the last apart.
        golden["hidden_states"] = torch.stack(hs[:-1])
    golden["last_hidden_state"] = hs[-1]
    save_golden(out / "golden.safetensors", golden)


def _opt(out: Path, **extra) -> None:
    from transformers import OPTConfig, OPTForCausalLM

    seed_everything(WEIGHT_SEED)
    cfg = OPTConfig(
        vocab_size=1000,
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=2,
        **extra,
    )
    model = OPTForCausalLM(cfg).eval()
    model.save_pretrained(out)
    lm_golden(model, out, OPTForCausalLM, explicit_positions=False)


@case("opt_tiny")
def gen_opt_tiny(out: Path) -> None:
    _opt(out)


@case("opt_tiny_350m_style")
def gen_opt_tiny_350m_style(out: Path) -> None:
    _opt(out, word_embed_proj_dim=16, do_layer_norm_before=False)


def _llama(out: Path, **extra) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    seed_everything(WEIGHT_SEED)
    cfg = LlamaConfig(
        vocab_size=1000,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        **extra,
    )
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(out)
    lm_golden(model, out, LlamaForCausalLM, explicit_positions=True)


@case("llama_tiny")
def gen_llama_tiny(out: Path) -> None:
    _llama(out, tie_word_embeddings=False)


@case("llama_tiny_tied")
def gen_llama_tiny_tied(out: Path) -> None:
    _llama(out, tie_word_embeddings=True)


@case("llama_tiny_rope_linear")
def gen_llama_tiny_rope_linear(out: Path) -> None:
    _llama(
        out,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
    )


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_tree(root: Path, names: list[str]) -> dict[str, str]:
    sums = {}
    for name in names:
        for p in sorted((root / name).rglob("*")):
            if p.is_file():
                sums[p.relative_to(root).as_posix()] = sha256(p)
    return sums


def read_sums(path: Path) -> dict[str, str]:
    sums = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                digest, rel = line.split(None, 1)
                sums[rel.strip().lstrip("*")] = digest
    return sums


def write_sums(path: Path, sums: dict[str, str]) -> None:
    path.write_text("".join(f"{sums[k]}  {k}\n" for k in sorted(sums)))


def in_cases(rel: str, names: list[str]) -> bool:
    return rel.split("/", 1)[0] in names


def run_cases(root: Path, names: list[str]) -> None:
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    tlog.disable_progress_bar()
    dlog.disable_progress_bar()
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    for name in names:
        out = root / name
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        t0 = time.perf_counter()
        with torch.no_grad():
            CASES[name](out)
        n = sum(1 for p in out.rglob("*") if p.is_file())
        print(f"  {name:28s} {n:3d} files  {time.perf_counter() - t0:6.2f} s", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", metavar="CASE", help="only this case (repeatable)")
    ap.add_argument("--check", action="store_true", help="regenerate into a temp dir and compare with SHA256SUMS")
    ap.add_argument("--out", type=Path, default=FIXTURES, help="fixtures root (default: tests/fixtures)")
    ap.add_argument("--list", action="store_true", help="list the registered cases")
    args = ap.parse_args()

    if args.list:
        print("\n".join(CASES))
        return 0
    names = args.only or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        print(f"unknown case(s): {', '.join(unknown)}; known: {', '.join(CASES)}", file=sys.stderr)
        return 2

    root: Path = args.out.resolve()
    sums_path = root / SUMS_NAME
    print(
        f"torch {torch.__version__}, python {sys.version.split()[0]}; cases: {', '.join(names)}",
        file=sys.stderr,
    )

    if args.check:
        expected = {k: v for k, v in read_sums(sums_path).items() if in_cases(k, names)}
        with tempfile.TemporaryDirectory(prefix="storygpt-fixtures-") as tmp:
            run_cases(Path(tmp), names)
            actual = hash_tree(Path(tmp), names)
        bad = 0
        for rel in sorted(set(expected) | set(actual)):
            if rel not in actual:
                print(f"MISSING (listed in {SUMS_NAME}, not generated): {rel}")
                bad += 1
            elif rel not in expected:
                print(f"EXTRA (generated, not in {SUMS_NAME}): {rel}")
                bad += 1
            elif expected[rel] != actual[rel]:
                print(f"MISMATCH: {rel} (expected {expected[rel][:12]}, regenerated {actual[rel][:12]})")
                bad += 1
        # Also make sure the files in the working tree are the ones the hash list describes.
        for rel in sorted(expected):
            p = root / rel
            if not p.is_file():
                print(f"MISSING ON DISK: {rel}")
                bad += 1
            elif sha256(p) != expected[rel]:
                print(f"ON-DISK MISMATCH: {rel} differs from {SUMS_NAME}")
                bad += 1
        if bad:
            print(f"{bad} difference(s)")
            return 1
        print(f"{len(actual)} files match")
        return 0

    root.mkdir(parents=True, exist_ok=True)
    run_cases(root, names)
    sums = {k: v for k, v in read_sums(sums_path).items() if not in_cases(k, names)}
    sums.update(hash_tree(root, names))
    write_sums(sums_path, sums)
    print(f"wrote {len(sums)} entries to {sums_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
