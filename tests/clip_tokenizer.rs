//! CLIP tokenizer parity with transformers 5.24's `CLIPTokenizer` on the real 49408-token
//! OpenAI vocabulary (built offline from `bpe_simple_vocab_16e6.txt.gz`), for every golden
//! sentence, loading from `tokenizer.json` and from `vocab.json` + `merges.txt`.
//!
//! Regenerate: `.venv/bin/python scripts/reference/generate.py --only clip_tokenizer`.

use crate::common::fixture;
use crate::common::unpack;
use serde::Deserialize;
use storygpt::models::clip::ClipTokenizer;

#[derive(Deserialize)]
struct Golden {
    image_token: String,
    image_token_id: u32,
    model_max_length: usize,
    pad_token_id: u32,
    bos_token_id: u32,
    eos_token_id: u32,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    input_ids: Vec<u32>,
    attention_mask: Vec<u32>,
    input_ids_padded: Vec<u32>,
    attention_mask_padded: Vec<u32>,
    word_ids: Vec<Option<u32>>,
    offsets: Vec<(usize, usize)>,
    #[serde(default)]
    input_ids_with_image_token: Option<Vec<u32>>,
}

fn golden() -> Golden {
    let path = fixture("clip_tokenizer/golden_ids.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn check_all(tok: &ClipTokenizer, g: &Golden, source: &str) {
    assert_eq!(tok.model_max_length, g.model_max_length);
    assert_eq!(
        (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id),
        (g.bos_token_id, g.eos_token_id, g.pad_token_id)
    );
    assert!(
        g.cases.len() >= 60,
        "only {} golden sentences",
        g.cases.len()
    );
    for c in &g.cases {
        let enc = tok.encode(&c.text).unwrap();
        assert_eq!(enc.input_ids, c.input_ids, "{source}: ids of {:?}", c.text);
        assert_eq!(
            enc.attention_mask, c.attention_mask,
            "{source}: mask of {:?}",
            c.text
        );
        assert_eq!(
            enc.word_ids, c.word_ids,
            "{source}: word ids of {:?}",
            c.text
        );
        assert_eq!(enc.offsets, c.offsets, "{source}: offsets of {:?}", c.text);
        let padded = tok.encode_padded(&c.text).unwrap();
        assert_eq!(
            padded.input_ids, c.input_ids_padded,
            "{source}: padded ids of {:?}",
            c.text
        );
        assert_eq!(
            padded.attention_mask, c.attention_mask_padded,
            "{source}: padded mask of {:?}",
            c.text
        );
    }
    eprintln!(
        "{source}: {} sentences identical to transformers",
        g.cases.len()
    );
}

#[test]
fn tokenizer_json_matches_transformers() {
    let tok = ClipTokenizer::from_dir(unpack("clip_tokenizer").path()).unwrap();
    check_all(&tok, &golden(), "tokenizer.json");
}

#[test]
fn vocab_and_merges_match_transformers() {
    let dir = unpack("clip_tokenizer");
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let tok = ClipTokenizer::from_vocab_merges(
        dir.path().join("vocab.json"),
        dir.path().join("merges.txt"),
    )
    .unwrap();
    check_all(&tok, &golden(), "vocab.json + merges.txt (explicit)");
    // from_dir falls back to vocab.json + merges.txt when there is no tokenizer.json.
    let tok = ClipTokenizer::from_dir(dir.path()).unwrap();
    check_all(&tok, &golden(), "vocab.json + merges.txt");
}

#[test]
fn baked_in_padding_does_not_change_the_output() {
    let dir = unpack("clip_tokenizer_padded");
    let raw: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("tokenizer.json")).unwrap()).unwrap();
    assert!(
        raw["padding"].is_object(),
        "the fixture really has padding baked in"
    );
    assert!(raw["truncation"].is_object(), "and truncation");
    let tok = ClipTokenizer::from_dir(dir.path()).unwrap();
    check_all(&tok, &golden(), "padded tokenizer.json");
}

#[test]
fn image_marker_token_and_char_ldm_marking() {
    let g = golden();
    let mut tok = ClipTokenizer::from_dir(unpack("clip_tokenizer").path()).unwrap();
    let ids = tok.add_special_tokens(&[&g.image_token]);
    assert_eq!(ids, vec![g.image_token_id]);
    let mut checked = 0;
    for c in g
        .cases
        .iter()
        .filter(|c| c.input_ids_with_image_token.is_some())
    {
        let want = c.input_ids_with_image_token.as_ref().unwrap();
        assert_eq!(
            &tok.encode(&c.text).unwrap().input_ids,
            want,
            "{:?}",
            c.text
        );
        // Char-LDM: markers removed, the token before each marker flagged.
        let (enc, marked) = tok.encode_with_marker(&c.text, &g.image_token).unwrap();
        let expected_ids: Vec<u32> = want
            .iter()
            .copied()
            .filter(|&i| i != g.image_token_id)
            .collect();
        let n = expected_ids.len().min(g.model_max_length);
        assert_eq!(&enc.input_ids[..n], &expected_ids[..n], "{:?}", c.text);
        let mut expected_marks = Vec::new();
        let mut kept = 0usize;
        for &id in want {
            if id == g.image_token_id {
                // A marker right after <|startoftext|> follows no word: nothing is marked.
                if kept > 1 {
                    expected_marks.push(kept - 1);
                }
            } else {
                kept += 1;
            }
        }
        assert_eq!(marked, expected_marks, "{:?}", c.text);
        checked += 1;
    }
    assert!(checked >= 2, "golden has {checked} marker sentences");
}

#[test]
fn marking_flags_the_last_piece_of_a_multi_token_name() {
    let mut tok = ClipTokenizer::from_dir(unpack("clip_tokenizer").path()).unwrap();
    tok.add_special_tokens(&["<|image|>"]);
    let (enc, marked) = tok
        .encode_with_marker(
            "Pebbles <|image|> and Bamm-Bamm <|image|> play.",
            "<|image|>",
        )
        .unwrap();
    assert_eq!(enc.input_ids.len(), 77);
    assert_eq!(marked.len(), 2);
    let plain = tok.encode("Pebbles and Bamm-Bamm play.").unwrap();
    // Marker removal leaves exactly the plain tokenization.
    assert_eq!(
        &enc.input_ids[..plain.input_ids.len()],
        &plain.input_ids[..]
    );
    // The flagged tokens are the last pieces of "pebbles" and "bamm-bamm" (before "and"/"play").
    assert_eq!(
        Some(plain.input_ids[marked[0] + 1]),
        tok.token_to_id("and</w>")
    );
    assert_eq!(
        Some(plain.input_ids[marked[1] + 1]),
        tok.token_to_id("play</w>")
    );
    assert!(tok.encode_with_marker("x", "<|nope|>").is_err());
}
