//! The CLIP BPE tokenizer, through the `tokenizers` crate, behaving like transformers 5's
//! `CLIPTokenizer`.
//!
//! - Loads `tokenizer.json`, or builds the same pipeline from `vocab.json` + `merges.txt`
//!   (how SD 1.x `tokenizer/` folders ship): NFC → collapse whitespace → lowercase; split on
//!   CLIP's regex, byte-level; BPE with the `</w>` end-of-word suffix; `<|startoftext|> … <|endoftext|>`.
//! - Truncation and padding are ours, not the file's: a `tokenizer.json` saved after a call
//!   with `padding="max_length"` carries that padding state, which must not change the output.
//!   [`ClipTokenizer::encode`] truncates to `model_max_length` (77) keeping both special
//!   tokens; [`ClipTokenizer::encode_padded`] also pads to 77 with the pad token, as SD
//!   pipelines call the tokenizer.
//! - Special tokens can be added (Char-LDM adds `<|image|>`), and
//!   [`ClipTokenizer::encode_with_marker`] implements Char-LDM's marking: the token *before*
//!   each marker (the last BPE piece of a character name) is flagged and the marker removed.

use std::path::Path;

use serde_json::{Value, json};
use storygpt_core::{Error, Result};
use tokenizers::{
    AddedToken, PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

/// The pre-tokenizer regex of transformers' `CLIPTokenizer`.
const CLIP_SPLIT: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// One tokenized text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipEncoding {
    /// Token ids, `<|startoftext|>` first and `<|endoftext|>` last (then pads, if padded).
    pub input_ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u32>,
    /// For each token, the index of the pre-tokenized word it comes from (`None` for special
    /// and padding tokens).
    pub word_ids: Vec<Option<u32>>,
    /// Character offsets of each token in the (original) text.
    pub offsets: Vec<(usize, usize)>,
}

/// The CLIP tokenizer.
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    /// Maximum sequence length including the special tokens (77).
    pub model_max_length: usize,
    /// `<|startoftext|>` id.
    pub bos_token_id: u32,
    /// `<|endoftext|>` id.
    pub eos_token_id: u32,
    /// Padding id (`<|endoftext|>` for OpenAI CLIP / SD 1.x, `!` for SD 2.x).
    pub pad_token_id: u32,
}

fn json_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// A token given as a string or as `{"content": ...}` in `tokenizer_config.json`.
fn token_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

impl ClipTokenizer {
    /// Loads a tokenizer folder: `tokenizer.json` if present, else `vocab.json` + `merges.txt`.
    /// `tokenizer_config.json` / `special_tokens_map.json`, when present, give
    /// `model_max_length` and the special tokens.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let json = dir.join("tokenizer.json");
        let tokenizer = if json.is_file() {
            Tokenizer::from_file(&json).map_err(|e| json_err(&json, e))?
        } else {
            Self::build_from_vocab_merges(&dir.join("vocab.json"), &dir.join("merges.txt"))?
        };
        let mut settings = Settings::default();
        for name in ["special_tokens_map.json", "tokenizer_config.json"] {
            let p = dir.join(name);
            if p.is_file() {
                let v: Value = storygpt_core::config::read_json(&p)?;
                settings.update(&v);
            }
        }
        Self::with_settings(tokenizer, settings, &json)
    }

    /// Loads a `tokenizer.json` with the default CLIP special tokens and length 77.
    pub fn from_tokenizer_json(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let tokenizer = Tokenizer::from_file(path).map_err(|e| json_err(path, e))?;
        Self::with_settings(tokenizer, Settings::default(), path)
    }

    /// Builds the tokenizer from `vocab.json` and `merges.txt`, exactly as transformers'
    /// `CLIPTokenizer.__init__` does, with the default special tokens and length 77.
    pub fn from_vocab_merges(vocab: impl AsRef<Path>, merges: impl AsRef<Path>) -> Result<Self> {
        let tokenizer = Self::build_from_vocab_merges(vocab.as_ref(), merges.as_ref())?;
        Self::with_settings(tokenizer, Settings::default(), vocab.as_ref())
    }

    fn build_from_vocab_merges(vocab_path: &Path, merges_path: &Path) -> Result<Tokenizer> {
        let vocab: Value = storygpt_core::config::read_json(vocab_path)?;
        let text = std::fs::read_to_string(merges_path).map_err(|e| Error::io(merges_path, e))?;
        let merges: Vec<Value> = text
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .map(|l| Value::String(l.to_string()))
            .collect();
        let id = |t: &str| vocab.get(t).and_then(Value::as_u64);
        let special = |t: &str| -> Result<Value> {
            let id = id(t).ok_or_else(|| Error::InvalidConfig {
                path: Some(vocab_path.to_path_buf()),
                message: format!("vocab.json has no `{t}`"),
            })?;
            Ok(
                json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                      "rstrip": false, "normalized": false, "special": true}),
            )
        };
        let (bos, eos) = ("<|startoftext|>", "<|endoftext|>");
        let spec = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [special(bos)?, special(eos)?],
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "NFC"},
                {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
                {"type": "Lowercase"}
            ]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": CLIP_SPLIT}, "behavior": "Removed", "invert": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
            ]},
            "post_processor": {"type": "RobertaProcessing", "sep": [eos, id(eos)], "cls": [bos, id(bos)],
                               "trim_offsets": false, "add_prefix_space": false},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": eos, "continuing_subword_prefix": "",
                      "end_of_word_suffix": "</w>", "fuse_unk": false, "byte_fallback": false,
                      "ignore_merges": false, "vocab": vocab, "merges": merges}
        });
        let s = serde_json::to_string(&spec).map_err(|e| json_err(vocab_path, e))?;
        s.parse::<Tokenizer>()
            .map_err(|e| json_err(merges_path, format!("building the CLIP BPE failed: {e}")))
    }

    fn with_settings(mut tokenizer: Tokenizer, s: Settings, source: &Path) -> Result<Self> {
        let lookup = |t: &str| {
            tokenizer
                .token_to_id(t)
                .ok_or_else(|| Error::InvalidConfig {
                    path: Some(source.to_path_buf()),
                    message: format!("special token `{t}` is not in the vocabulary"),
                })
        };
        let bos_token_id = lookup(&s.bos_token)?;
        let eos_token_id = lookup(&s.eos_token)?;
        let pad_token_id = lookup(&s.pad_token)?;
        // Ignore any truncation/padding state saved in tokenizer.json; ours is set per call.
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: s.model_max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| json_err(source, e))?;
        tokenizer.with_padding(None);
        Ok(Self {
            tokenizer,
            model_max_length: s.model_max_length,
            bos_token_id,
            eos_token_id,
            pad_token_id,
        })
    }

    /// Adds special tokens (never split, not normalised) and returns their ids.
    pub fn add_special_tokens(&mut self, tokens: &[&str]) -> Vec<u32> {
        let added: Vec<AddedToken> = tokens
            .iter()
            .map(|t| AddedToken::from(t.to_string(), true))
            .collect();
        self.tokenizer.add_special_tokens(&added);
        tokens
            .iter()
            .filter_map(|t| self.tokenizer.token_to_id(t))
            .collect()
    }

    /// The id of a token, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Tokenizes with the special tokens, truncated to `model_max_length`, not padded
    /// (transformers: `tok(text, truncation=True, max_length=77)`).
    pub fn encode(&self, text: &str) -> Result<ClipEncoding> {
        self.encode_with(&self.tokenizer, text)
    }

    /// Tokenizes, truncates and pads to `model_max_length` with the pad token
    /// (transformers: `tok(text, padding="max_length", max_length=77, truncation=True)`).
    pub fn encode_padded(&self, text: &str) -> Result<ClipEncoding> {
        let mut tok = self.tokenizer.clone();
        let pad_token = tok
            .id_to_token(self.pad_token_id)
            .unwrap_or_else(|| "<|endoftext|>".to_string());
        tok.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(self.model_max_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id: self.pad_token_id,
            pad_type_id: 0,
            pad_token,
        }));
        self.encode_with(&tok, text)
    }

    fn encode_with(&self, tok: &Tokenizer, text: &str) -> Result<ClipEncoding> {
        let enc = tok
            .encode(text, true)
            .map_err(|e| Error::InvalidInput(format!("tokenizing {text:?} failed: {e}")))?;
        Ok(ClipEncoding {
            input_ids: enc.get_ids().to_vec(),
            attention_mask: enc.get_attention_mask().to_vec(),
            word_ids: enc.get_word_ids().to_vec(),
            offsets: char_offsets(text, enc.get_offsets()),
        })
    }

    /// Char-LDM's marking: `text` contains `marker` (e.g. `<|image|>`, added as a special
    /// token) right after each character name. Returns the padded ids *without* the markers
    /// and, for each marker, the position of the token before it (the last BPE piece of the
    /// name) in those ids. A marker right after `<|startoftext|>` follows no word and marks
    /// nothing; markers that fall past the truncation point are dropped.
    pub fn encode_with_marker(
        &self,
        text: &str,
        marker: &str,
    ) -> Result<(ClipEncoding, Vec<usize>)> {
        let marker_id = self.token_to_id(marker).ok_or_else(|| {
            Error::InvalidInput(format!("marker `{marker}` is not a token: add it first"))
        })?;
        // Tokenize without truncation so markers near the end are seen, then truncate.
        let mut tok = self.tokenizer.clone();
        tok.with_truncation(None)
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        let enc = tok
            .encode(text, true)
            .map_err(|e| Error::InvalidInput(format!("tokenizing {text:?} failed: {e}")))?;
        let mut ids = Vec::new();
        let mut word_ids = Vec::new();
        let mut offsets = Vec::new();
        let mut marked = Vec::new();
        let char_offs = char_offsets(text, enc.get_offsets());
        for ((&id, &w), &o) in enc.get_ids().iter().zip(enc.get_word_ids()).zip(&char_offs) {
            if id == marker_id {
                if let Some(prev) = ids.len().checked_sub(1) {
                    marked.push(prev);
                }
            } else {
                ids.push(id);
                word_ids.push(w);
                offsets.push(o);
            }
        }
        // Truncate to the maximum length, keeping <|endoftext|> last.
        let max = self.model_max_length;
        if ids.len() > max {
            ids.truncate(max - 1);
            word_ids.truncate(max - 1);
            offsets.truncate(max - 1);
            ids.push(self.eos_token_id);
            word_ids.push(None);
            offsets.push((0, 0));
        }
        marked.retain(|&p| p < ids.len() - 1 && p > 0);
        let real = ids.len();
        ids.resize(max, self.pad_token_id);
        word_ids.resize(max, None);
        offsets.resize(max, (0, 0));
        let mut attention_mask = vec![1; real];
        attention_mask.resize(max, 0);
        Ok((
            ClipEncoding {
                input_ids: ids,
                attention_mask,
                word_ids,
                offsets,
            },
            marked,
        ))
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

/// Char-LDM's marker token, added to the CLIP tokenizer as a special token.
pub const IMAGE_MARKER: &str = "<|image|>";

/// Char-LDM's caption tokenization for the batchers: the marker is [`IMAGE_MARKER`], which must
/// have been added with [`ClipTokenizer::add_special_tokens`].
impl storygpt_core::CaptionTokenizer for ClipTokenizer {
    fn marker(&self) -> &str {
        IMAGE_MARKER
    }

    fn encode_marked(&self, text: &str) -> Result<(Vec<u32>, Vec<usize>)> {
        let (enc, marked) = self.encode_with_marker(text, IMAGE_MARKER)?;
        Ok((enc.input_ids, marked))
    }

    fn max_len(&self) -> usize {
        self.model_max_length
    }
}

/// Converts the `tokenizers` crate's byte offsets into character (code point) offsets, as
/// Python reports them. A token covering part of a multi-byte character (emoji split into
/// byte-level pieces) spans that whole character.
fn char_offsets(text: &str, offsets: &[(usize, usize)]) -> Vec<(usize, usize)> {
    // char_start[b] = index of the character containing byte b; one extra slot for the end.
    let mut char_start = vec![0usize; text.len() + 1];
    let mut n = 0;
    for (byte, ch) in text.char_indices() {
        char_start[byte..byte + ch.len_utf8()].fill(n);
        n += 1;
    }
    char_start[text.len()] = n;
    let end = |b: usize| {
        let b = b.min(text.len());
        if text.is_char_boundary(b) {
            char_start[b]
        } else {
            char_start[b] + 1
        }
    };
    offsets
        .iter()
        .map(|&(s, e)| (char_start[s.min(text.len())], end(e)))
        .collect()
}

/// Special tokens and length, from `tokenizer_config.json` / `special_tokens_map.json`.
#[derive(Debug, Clone)]
struct Settings {
    model_max_length: usize,
    bos_token: String,
    eos_token: String,
    pad_token: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model_max_length: 77,
            bos_token: "<|startoftext|>".into(),
            eos_token: "<|endoftext|>".into(),
            pad_token: "<|endoftext|>".into(),
        }
    }
}

impl Settings {
    fn update(&mut self, v: &Value) {
        // transformers writes a huge sentinel (1e30) when unset; keep 77 then.
        if let Some(n) = v.get("model_max_length").and_then(Value::as_f64)
            && (1.0..=1e6).contains(&n)
        {
            self.model_max_length = n as usize;
        }
        for (key, slot) in [
            ("bos_token", &mut self.bos_token),
            ("eos_token", &mut self.eos_token),
            ("pad_token", &mut self.pad_token),
        ] {
            if let Some(t) = v.get(key).and_then(token_string) {
                *slot = t;
            }
        }
    }
}
