//! Word-level tokenizers for a dataset's own small vocabulary (the story world's ~150 words),
//! written as ordinary `tokenizer.json` folders that `ClipTokenizer` and `LlmTokenizer` load
//! like any Hugging Face tokenizer. Real CLIP's 49,408-token BPE would cost 6 M embedding
//! parameters for a world that uses a few hundred words.
//!
//! Both lower-case the text and split it into words and punctuation (the `Whitespace`
//! pre-tokenizer: `\w+|[^\w\s]+`); unknown words map to `<|unk|>`. The vocabulary is sorted
//! by frequency, then alphabetically, so it is deterministic.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};
use storygpt_core::{Error, Result};
use storygpt_data::{Split, StoryDataset};

/// The words the stage-2 sequence format adds to captions.
pub const FORMAT_WORDS: [&str; 6] = ["image", "caption", ":", "<", ">", "/"];

/// Splits like the `Whitespace` pre-tokenizer after lower-casing.
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut cur_word: Option<bool> = None;
    for ch in text.to_lowercase().chars() {
        if ch.is_whitespace() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            cur_word = None;
            continue;
        }
        let is_word = ch.is_alphanumeric() || ch == '_';
        if cur_word.is_some_and(|w| w != is_word) {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(ch);
        cur_word = Some(is_word);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Every word of every caption (with names and referential) of a dataset, most frequent first,
/// plus the stage-2 format words.
pub fn vocabulary(dataset: &dyn StoryDataset) -> Result<Vec<String>> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut add = |t: &str| {
        for w in words(t) {
            *counts.entry(w).or_default() += 1;
        }
    };
    for c in dataset.characters() {
        add(&c.name);
    }
    for split in Split::ALL {
        for story in dataset.stories(split) {
            let images = vec![0; story.len()];
            for r in dataset.referential_captions(story, &images)? {
                add(&r.text);
            }
            for id in story {
                for c in &dataset.annotation(id)?.captions {
                    add(c);
                }
            }
        }
    }
    for w in FORMAT_WORDS {
        counts.entry(w.to_string()).or_insert(1);
    }
    for w in ["he", "she", "they"] {
        counts.entry(w.to_string()).or_insert(1);
    }
    let mut v: Vec<(String, usize)> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(v.into_iter().map(|(w, _)| w).collect())
}

fn special(id: usize, content: &str) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
           "normalized": false, "special": true})
}

/// A word-level `tokenizer.json` with `specials` first (ids 0..), then `vocab`; the
/// post-processor wraps a sequence as `[bos] A [eos]` (each optional).
fn word_level(
    specials: &[&str],
    vocab: &[String],
    bos: Option<&str>,
    eos: Option<&str>,
    unk: &str,
) -> Value {
    let mut map = serde_json::Map::new();
    for (i, s) in specials.iter().enumerate() {
        map.insert((*s).to_string(), json!(i));
    }
    for w in vocab {
        if !map.contains_key(w) {
            let id = map.len();
            map.insert(w.clone(), json!(id));
        }
    }
    let id_of = |t: &str| map.get(t).cloned().unwrap_or(json!(0));
    let mut single = Vec::new();
    let mut special_tokens = serde_json::Map::new();
    for (t, pos) in [(bos, 0), (eos, 1)] {
        if let Some(t) = t {
            special_tokens.insert(t.into(), json!({"id": t, "ids": [id_of(t)], "tokens": [t]}));
            let _ = pos;
        }
    }
    if let Some(b) = bos {
        single.push(json!({"SpecialToken": {"id": b, "type_id": 0}}));
    }
    single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    if let Some(e) = eos {
        single.push(json!({"SpecialToken": {"id": e, "type_id": 0}}));
    }
    let mut pair = single.clone();
    pair.push(json!({"Sequence": {"id": "B", "type_id": 1}}));
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": specials.iter().enumerate().map(|(i, s)| special(i, s)).collect::<Vec<_>>(),
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {"type": "TemplateProcessing", "single": single, "pair": pair,
                           "special_tokens": special_tokens},
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": map, "unk_token": unk}
    })
}

/// Writes a CLIP-style tokenizer folder (`<|startoftext|>` = 0, `<|endoftext|>` = 1 also used
/// for padding, `<|unk|>` = 2; every caption becomes `bos words eos`, padded to
/// `max_length`). Returns the vocabulary size.
pub fn write_clip_tokenizer(dir: &Path, vocab: &[String], max_length: usize) -> Result<usize> {
    let specials = ["<|startoftext|>", "<|endoftext|>", "<|unk|>"];
    let tj = word_level(
        &specials,
        vocab,
        Some(specials[0]),
        Some(specials[1]),
        specials[2],
    );
    let n = tj["model"]["vocab"].as_object().map_or(0, |m| m.len());
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    storygpt_core::fs::write_json_atomic(dir.join("tokenizer.json"), &tj)?;
    storygpt_core::fs::write_json_atomic(
        dir.join("tokenizer_config.json"),
        &json!({"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length,
                "bos_token": specials[0], "eos_token": specials[1], "pad_token": specials[1],
                "unk_token": specials[2]}),
    )?;
    Ok(n)
}

/// Writes a causal-LM tokenizer folder (`<unk>` = 0, `<s>` = 1 added at the start of every
/// encoded text, `</s>` = 2, `<pad>` = 3). Returns the vocabulary size.
pub fn write_lm_tokenizer(dir: &Path, vocab: &[String]) -> Result<usize> {
    let specials = ["<unk>", "<s>", "</s>", "<pad>"];
    let tj = word_level(&specials, vocab, Some("<s>"), None, "<unk>");
    let n = tj["model"]["vocab"].as_object().map_or(0, |m| m.len());
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    storygpt_core::fs::write_json_atomic(dir.join("tokenizer.json"), &tj)?;
    storygpt_core::fs::write_json_atomic(
        dir.join("tokenizer_config.json"),
        &json!({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
                "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
                "add_bos_token": true, "add_eos_token": false, "model_max_length": 512}),
    )?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_the_whitespace_pre_tokenizer() {
        assert_eq!(
            words("Fred walks into the kitchen. Image: <img>"),
            [
                "fred", "walks", "into", "the", "kitchen", ".", "image", ":", "<", "img", ">"
            ]
        );
    }
}
