//! Tokenizers of the LLM backbones, through the `tokenizers` crate, giving the ids transformers
//! 5 gives:
//!
//! - **GPT-2 / OPT byte-level BPE**, from `tokenizer.json` or from `vocab.json` + `merges.txt`
//!   (built like transformers' `GPT2Tokenizer`: byte-level pre-tokenizer with GPT-2's regex, no
//!   prefix space, a BOS only when `add_bos_token`, as OPT's config asks);
//! - **Llama SentencePiece-BPE** (`tokenizer.json`): when `tokenizer_config.json` names
//!   `LlamaTokenizer`, transformers 5 does not run the file as written. It keeps the vocabulary,
//!   merges and post-processor and replaces the `Prepend("▁")` + `Replace(" ", "▁")` normalizer
//!   by a `Metaspace` pre-tokenizer that prepends "▁" to the first word only. The two differ on
//!   leading spaces and on text right after a special token; this wrapper does the same rebuild;
//! - any other `tokenizer.json` (SmolLM2's GPT-2-style BPE) as written.
//!
//! BOS/EOS come from the file's post-processor; [`LlmTokenizer::set_special_tokens`] rebuilds it
//! from flags, as passing `add_bos_token` / `add_eos_token` to `from_pretrained` does (the flag
//! not given is then off). Padding and truncation states saved in a `tokenizer.json` are
//! ignored; padding is per call ([`LlmTokenizer::encode_batch`]). Decoding keeps special tokens
//! unless asked, as transformers' `decode`.

use std::path::Path;

use serde_json::{Value, json};
use storygpt_core::{Error, Result};
use tokenizers::{AddedToken, Tokenizer};

/// Which side [`LlmTokenizer::encode_batch`] pads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaddingSide {
    /// Pads after the text (training batches).
    Right,
    /// Pads before the text (generation batches: every row ends with a real token).
    Left,
}

/// A padded batch: `input_ids` and `attention_mask`, `[batch][longest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchEncoding {
    /// Token ids, padded with the pad token.
    pub input_ids: Vec<Vec<u32>>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<Vec<u32>>,
}

/// The tokenizer of a causal LM folder.
#[derive(Debug, Clone)]
pub struct LlmTokenizer {
    tokenizer: Tokenizer,
    bos_token: Option<String>,
    eos_token: Option<String>,
    pad_token: Option<String>,
    unk_token: Option<String>,
    model_max_length: Option<usize>,
}

fn json_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// A token given as a string or as `{"content": ...}` in `tokenizer_config.json`.
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// GPT-2's byte-level pre-tokenizer (its regex, no prefix space).
fn byte_level() -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
}

impl LlmTokenizer {
    /// Loads a tokenizer folder: `tokenizer.json` if present, else `vocab.json` + `merges.txt`
    /// (GPT-2 / OPT byte-level BPE). `tokenizer_config.json` and `special_tokens_map.json`, when
    /// present, name the special tokens.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let mut config = serde_json::Map::new();
        for name in ["special_tokens_map.json", "tokenizer_config.json"] {
            let p = dir.join(name);
            if p.is_file()
                && let Value::Object(o) = storygpt_core::config::read_json::<Value>(&p)?
            {
                config.extend(o);
            }
        }
        let class = config
            .get("tokenizer_class")
            .and_then(Value::as_str)
            .unwrap_or("");
        let flag = |k: &str| config.get(k).and_then(Value::as_bool).unwrap_or(false);
        let json_path = dir.join("tokenizer.json");
        let (spec, source) = if json_path.is_file() {
            let mut spec: Value = storygpt_core::config::read_json(&json_path)?;
            if matches!(class, "LlamaTokenizer" | "LlamaTokenizerFast") {
                spec["normalizer"] = Value::Null;
                spec["pre_tokenizer"] = json!({
                    "type": "Metaspace", "replacement": "\u{2581}",
                    "prepend_scheme": "first", "split": false
                });
                spec["model"]["unk_token"] = Value::Null;
            }
            (spec, json_path.clone())
        } else {
            let vocab_path = dir.join("vocab.json");
            let merges_path = dir.join("merges.txt");
            if !vocab_path.is_file() || !merges_path.is_file() {
                return Err(Error::io(
                    &json_path,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no tokenizer.json, and no vocab.json + merges.txt beside it",
                    ),
                ));
            }
            // The config's special tokens are matched whole, as transformers registers them
            // (OPT's `</s>` and `<pad>` are ordinary vocabulary entries otherwise).
            let specials: Vec<String> = ["bos_token", "eos_token", "unk_token", "pad_token"]
                .iter()
                .filter_map(|k| token_string(config.get(*k)))
                .collect();
            let spec = Self::byte_level_bpe_spec(&vocab_path, &merges_path, &specials)?;
            (spec, vocab_path)
        };
        let mut spec = spec;
        spec["padding"] = Value::Null;
        spec["truncation"] = Value::Null;
        let text = serde_json::to_string(&spec).map_err(|e| json_err(&source, e))?;
        let tokenizer: Tokenizer = text
            .parse()
            .map_err(|e| json_err(&source, format!("not a valid tokenizer: {e}")))?;
        let model_max_length = config
            .get("model_max_length")
            .and_then(Value::as_f64)
            .filter(|&n| (1.0..1e12).contains(&n))
            .map(|n| n as usize);
        let mut this = Self {
            tokenizer,
            bos_token: token_string(config.get("bos_token")),
            eos_token: token_string(config.get("eos_token")),
            pad_token: token_string(config.get("pad_token")),
            unk_token: token_string(config.get("unk_token")),
            model_max_length,
        };
        for (name, token) in [
            ("bos_token", &this.bos_token),
            ("eos_token", &this.eos_token),
            ("pad_token", &this.pad_token),
            ("unk_token", &this.unk_token),
        ] {
            if let Some(t) = token
                && this.tokenizer.token_to_id(t).is_none()
            {
                return Err(Error::InvalidConfig {
                    path: Some(dir.join("tokenizer_config.json")),
                    message: format!("{name} `{t}` is not in the vocabulary"),
                });
            }
        }
        if !json_path.is_file() {
            // transformers' GPT2Tokenizer: the flags decide (OPT sets add_bos_token).
            this.set_special_tokens(flag("add_bos_token"), flag("add_eos_token"))?;
        }
        Ok(this)
    }

    /// transformers' `GPT2Tokenizer` pipeline over `vocab.json` + `merges.txt`.
    fn byte_level_bpe_spec(
        vocab_path: &Path,
        merges_path: &Path,
        specials: &[String],
    ) -> Result<Value> {
        let vocab: Value = storygpt_core::config::read_json(vocab_path)?;
        let text = std::fs::read_to_string(merges_path).map_err(|e| Error::io(merges_path, e))?;
        let merges: Vec<Value> = text
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .map(|l| Value::String(l.to_string()))
            .collect();
        // GPT-2's `<|endoftext|>` and the config's special tokens, when the vocabulary has them.
        let mut names: Vec<&str> = vec!["<|endoftext|>"];
        for s in specials {
            if !names.contains(&s.as_str()) {
                names.push(s);
            }
        }
        let added: Vec<Value> = names
            .iter()
            .filter_map(|t| vocab.get(*t).and_then(Value::as_u64).map(|id| (t, id)))
            .map(|(t, id)| {
                json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": byte_level(),
            "post_processor": {"type": "TemplateProcessing",
                "single": [{"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {}},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                      "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
                      "ignore_merges": false, "vocab": vocab, "merges": merges}
        }))
    }

    /// Rebuilds the post-processor so that encoding adds BOS and/or EOS, as
    /// `from_pretrained(..., add_bos_token=.., add_eos_token=..)` does.
    ///
    /// # Errors
    /// A flag is set but the tokenizer has no such token.
    pub fn set_special_tokens(&mut self, add_bos: bool, add_eos: bool) -> Result<()> {
        let pick =
            |on: bool, token: &Option<String>, what: &str| -> Result<Option<(String, u32)>> {
                if !on {
                    return Ok(None);
                }
                let t = token.clone().ok_or_else(|| {
                    Error::InvalidInput(format!("the tokenizer has no {what} token to add"))
                })?;
                let id = self
                    .tokenizer
                    .token_to_id(&t)
                    .ok_or_else(|| Error::InvalidInput(format!("{what} token `{t}` has no id")))?;
                Ok(Some((t, id)))
            };
        let bos = pick(add_bos, &self.bos_token, "BOS")?;
        let eos = pick(add_eos, &self.eos_token, "EOS")?;
        let mut single = Vec::new();
        let mut pair = Vec::new();
        let mut specials = serde_json::Map::new();
        for (seq, type_id, out) in [("A", 0, &mut single), ("B", 1, &mut pair)] {
            if let Some((t, _)) = &bos {
                out.push(json!({"SpecialToken": {"id": t, "type_id": type_id}}));
            }
            out.push(json!({"Sequence": {"id": seq, "type_id": type_id}}));
            if let Some((t, _)) = &eos {
                out.push(json!({"SpecialToken": {"id": t, "type_id": type_id}}));
            }
        }
        let pair: Vec<Value> = single.iter().cloned().chain(pair).collect();
        for (t, id) in bos.iter().chain(eos.iter()) {
            specials.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
        }
        let spec = json!({"type": "TemplateProcessing", "single": single, "pair": pair,
                          "special_tokens": specials});
        let processor: tokenizers::processors::PostProcessorWrapper =
            serde_json::from_value(spec).map_err(|e| Error::InvalidInput(e.to_string()))?;
        self.tokenizer.with_post_processor(Some(processor));
        Ok(())
    }

    /// Adds special tokens (never split, not normalised, skipped by `decode(.., true)`), like
    /// `add_special_tokens({"cls_token": "<|image|>"})`; returns their ids.
    pub fn add_special_tokens(&mut self, tokens: &[&str]) -> Vec<u32> {
        let added: Vec<AddedToken> = tokens
            .iter()
            .map(|t| AddedToken::from(t.to_string(), true))
            .collect();
        self.tokenizer.add_special_tokens(&added);
        self.ids_of(tokens)
    }

    /// Adds ordinary tokens (never split, normalised), like `add_tokens("[IMG0]")`; returns
    /// their ids. StoryGPT-V adds `[IMG0]`…`[IMG7]` this way.
    pub fn add_tokens(&mut self, tokens: &[&str]) -> Vec<u32> {
        let added: Vec<AddedToken> = tokens
            .iter()
            .map(|t| AddedToken::from(t.to_string(), false))
            .collect();
        self.tokenizer.add_tokens(&added);
        self.ids_of(tokens)
    }

    fn ids_of(&self, tokens: &[&str]) -> Vec<u32> {
        tokens
            .iter()
            .filter_map(|t| self.tokenizer.token_to_id(t))
            .collect()
    }

    /// Sets the padding token (Llama 2 has none; GPT-2 users pad with EOS).
    ///
    /// # Errors
    /// The token is not in the vocabulary.
    pub fn set_pad_token(&mut self, token: &str) -> Result<()> {
        if self.tokenizer.token_to_id(token).is_none() {
            return Err(Error::InvalidInput(format!(
                "pad token `{token}` is not in the vocabulary"
            )));
        }
        self.pad_token = Some(token.to_string());
        Ok(())
    }

    /// Token ids of one text, with the special tokens the post-processor adds.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| Error::InvalidInput(format!("tokenizing {text:?} failed: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of one text without any special tokens added (pieces of a longer prompt).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::InvalidInput(format!("tokenizing {text:?} failed: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes texts and pads them to the longest with the pad token, on `side`.
    ///
    /// # Errors
    /// No pad token is set (see [`LlmTokenizer::set_pad_token`]), or an empty batch.
    pub fn encode_batch(&self, texts: &[&str], side: PaddingSide) -> Result<BatchEncoding> {
        if texts.is_empty() {
            return Err(Error::InvalidInput("encode_batch: no texts".into()));
        }
        let pad = self.pad_token_id().ok_or_else(|| {
            Error::InvalidInput(
                "the tokenizer has no pad token; set one with set_pad_token (e.g. the EOS token)"
                    .into(),
            )
        })?;
        let rows = texts
            .iter()
            .map(|t| self.encode(t))
            .collect::<Result<Vec<_>>>()?;
        let longest = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut out = BatchEncoding {
            input_ids: Vec::with_capacity(rows.len()),
            attention_mask: Vec::with_capacity(rows.len()),
        };
        for ids in rows {
            let n = longest - ids.len();
            let (mut i, mut m) = (Vec::with_capacity(longest), Vec::with_capacity(longest));
            if side == PaddingSide::Left {
                i.extend(std::iter::repeat_n(pad, n));
                m.extend(std::iter::repeat_n(0, n));
            }
            m.extend(std::iter::repeat_n(1, ids.len()));
            i.extend(ids);
            if side == PaddingSide::Right {
                i.extend(std::iter::repeat_n(pad, n));
                m.extend(std::iter::repeat_n(0, n));
            }
            out.input_ids.push(i);
            out.attention_mask.push(m);
        }
        Ok(out)
    }

    /// Text of token ids; special tokens are kept unless `skip_special_tokens`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.tokenizer
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::InvalidInput(format!("decoding {} ids failed: {e}", ids.len())))
    }

    /// The id of a token, if it is in the vocabulary (added tokens included).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Vocabulary size including added tokens (`len(tokenizer)` in transformers).
    pub fn len(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Whether the vocabulary is empty (never, for a loaded tokenizer).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// BOS id, if the tokenizer has one.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    /// EOS id, if the tokenizer has one.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    /// Pad id, if a pad token is set.
    pub fn pad_token_id(&self) -> Option<u32> {
        self.pad_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    /// `model_max_length` from `tokenizer_config.json` (absent or "unlimited": `None`).
    pub fn model_max_length(&self) -> Option<usize> {
        self.model_max_length
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

/// The stage-2 sequence builder's view: segments tokenized without special tokens, BOS
/// prepended on request.
impl storygpt_core::LmTokenizer for LlmTokenizer {
    fn encode_text(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if add_bos {
            ids.push(self.bos_token_id().ok_or_else(|| {
                Error::InvalidInput("the tokenizer has no BOS token to prepend".into())
            })?);
        }
        ids.extend(self.encode_plain(text)?);
        Ok(ids)
    }

    fn token_id(&self, token: &str) -> Option<u32> {
        self.token_to_id(token)
    }

    fn pad_id(&self) -> u32 {
        self.pad_token_id().or(self.eos_token_id()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An OPT-style folder: vocab.json + merges.txt, `</s>` as BOS/EOS and `<pad>` in the
    /// vocabulary, `add_bos_token: true`.
    fn opt_style() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let vocab =
            json!({"<s>": 0, "<pad>": 1, "</s>": 2, "a": 3, "b": 4, "ab": 5, "\u{0120}": 6});
        std::fs::write(dir.path().join("vocab.json"), vocab.to_string()).unwrap();
        std::fs::write(dir.path().join("merges.txt"), "#version: 0.2\na b\n").unwrap();
        let config = json!({"add_bos_token": true, "bos_token": "</s>", "eos_token": "</s>",
                            "pad_token": "<pad>", "unk_token": "</s>",
                            "tokenizer_class": "GPT2Tokenizer"});
        std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
        dir
    }

    #[test]
    fn opt_style_folder_adds_bos_and_matches_special_tokens_whole() {
        let dir = opt_style();
        let tok = LlmTokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(tok.encode("ab</s>").unwrap(), vec![2, 5, 2]);
        assert_eq!(tok.encode_plain("ab").unwrap(), vec![5]);
        assert_eq!(tok.pad_token_id(), Some(1));
        let batch = tok.encode_batch(&["ab", "a b"], PaddingSide::Left).unwrap();
        // "a b" is `a`, `Ġ`, `b` (no `Ġb` in this vocabulary); "ab" is padded on the left.
        assert_eq!(batch.input_ids, vec![vec![1, 1, 2, 5], vec![2, 3, 6, 4]]);
        assert_eq!(batch.attention_mask[0], vec![0, 0, 1, 1]);
        assert_eq!(tok.decode(&[2, 5, 2], true).unwrap(), "ab");
    }

    #[test]
    fn a_special_token_outside_the_vocabulary_is_named() {
        let dir = opt_style();
        let config = json!({"bos_token": "<bos>", "tokenizer_class": "GPT2Tokenizer"});
        std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
        let err = LlmTokenizer::from_dir(dir.path()).unwrap_err();
        assert!(err.to_string().contains("<bos>"), "{err}");
    }
}
