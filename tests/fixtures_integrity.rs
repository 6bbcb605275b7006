//! The committed fixtures are exactly what the generator produced (`tests/fixtures/SHA256SUMS`,
//! written by `scripts/reference/generate.py`), and every checkpoint in them is readable.
//! This catches a fixture edited by hand, corrupted by a checkout (line endings, LFS), or a
//! generator change that was not re-run.

use std::path::Path;

use sha2::{Digest, Sha256};

fn sums() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(crate::common::fixture("SHA256SUMS")).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (hash, path) = l.split_once("  ").expect("`<sha256>  <path>` lines");
            (hash.to_string(), path.to_string())
        })
        .collect()
}

#[test]
fn every_fixture_file_matches_its_recorded_hash() {
    let sums = sums();
    assert!(sums.len() >= 40, "SHA256SUMS lists {} files", sums.len());
    for (hash, rel) in &sums {
        let bytes =
            std::fs::read(crate::common::fixture(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let got = format!("{:x}", Sha256::digest(&bytes));
        assert_eq!(&got, hash, "{rel} differs from what the generator wrote");
    }
}

#[test]
fn every_generated_fixture_is_listed() {
    let listed: std::collections::BTreeSet<String> = sums().into_iter().map(|(_, p)| p).collect();
    let root = crate::common::fixture("");
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            if rel == "SHA256SUMS" || rel.ends_with("README.md") {
                continue;
            }
            assert!(
                listed.contains(&rel),
                "{rel} is not in SHA256SUMS: regenerate the fixtures"
            );
        }
    }
}

#[test]
fn every_checkpoint_and_config_parses() {
    let mut checked = 0;
    for (_, rel) in sums() {
        let p = crate::common::fixture(&rel);
        if rel.ends_with(".safetensors") {
            let infos = storygpt::core::weights::tensor_infos(&p).unwrap_or_else(|e| panic!("{e}"));
            assert!(!infos.is_empty(), "{rel} has no tensors");
            checked += 1;
        } else if rel.ends_with(".json") {
            let _: serde_json::Value =
                storygpt::core::config::read_json(Path::new(&p)).unwrap_or_else(|e| panic!("{e}"));
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} files checked");
}
