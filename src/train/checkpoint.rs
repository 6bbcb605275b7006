//! Checkpoints that resume exactly: the model and optimizer records (burn's named
//! MessagePack, full precision, parameter ids included, so the optimizer state re-attaches),
//! the EMA weights when on, and the loop state (step, RNG position, data cursor, loss history).
//!
//! ```text
//! RUN/checkpoints/step-000500/{model.mpk, optim.mpk, ema.mpk, state.json}
//! RUN/checkpoints/latest            the name of the newest complete checkpoint
//! ```
//!
//! A checkpoint is written into a hidden `.step-000500.partial-*` folder, fsynced, renamed into
//! place, and only then named in `latest` (atomically). A crash at any point leaves the
//! previous checkpoint intact and `latest` pointing at it.

use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module};
use burn::optim::Optimizer;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::{Deserialize, Serialize};
use storygpt_core::{Error, Result};

/// One logged training step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossPoint {
    /// Optimizer step (1-based: after this many updates).
    pub step: usize,
    /// Loss of the step (mean over micro-batches).
    #[serde(with = "exact_f64")]
    pub loss: f64,
    /// Learning rate used.
    #[serde(with = "exact_f64")]
    pub lr: f64,
    /// Gradient norm before clipping.
    #[serde(with = "exact_f64")]
    pub grad_norm: f64,
    /// The stage's named loss terms of the step (mean over micro-batches), e.g. stage 2's
    /// `ce`, `align_l2` and `diffusion`. Checkpoints written before they were kept have none.
    #[serde(default, with = "exact_f64_map")]
    pub terms: std::collections::BTreeMap<String, f64>,
}

/// f64 stored in `state.json` as its shortest round-trip decimal string. serde_json's default
/// number parser may come back 1 ulp off (exactness is its `float_roundtrip` feature, which
/// would rebuild burn with it), and then a resumed run's `losses.csv` differs from the
/// straight run's (CI caught a grad-norm ending …843 vs …845). Rust's `str::parse` is exact.
///
/// Checkpoints written before this change hold plain JSON numbers; those still load (with the
/// old, possibly 1-ulp-off parse, which only touches the logged history, never the weights).
mod exact_f64 {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    pub(super) enum Stored {
        Exact(String),
        Number(f64),
    }

    impl Stored {
        pub(super) fn value<E: serde::de::Error>(self) -> std::result::Result<f64, E> {
            match self {
                Stored::Exact(s) => s.parse().map_err(E::custom),
                Stored::Number(x) => Ok(x),
            }
        }
    }

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{x:?}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
        Stored::deserialize(d)?.value()
    }
}

/// [`exact_f64`] for a map of named metrics.
mod exact_f64_map {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<String, f64>,
        s: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        s.collect_map(m.iter().map(|(k, v)| (k, format!("{v:?}"))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<BTreeMap<String, f64>, D::Error> {
        BTreeMap::<String, super::exact_f64::Stored>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| v.value().map(|x| (k, x)))
            .collect()
    }
}

/// One validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValPoint {
    /// Step.
    pub step: usize,
    /// Named metrics.
    #[serde(with = "exact_f64_map")]
    pub metrics: std::collections::BTreeMap<String, f64>,
}

/// The loop state saved with a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    /// Optimizer steps done.
    pub step: usize,
    /// The run's RNG position (ChaCha8 seeded with `train.seed`): `get_word_pos`.
    pub rng_word_pos: u128,
    /// The stage's data position (sampler epoch and cursor), stage-defined.
    pub data: serde_json::Value,
    /// Every step's loss.
    pub losses: Vec<LossPoint>,
    /// Every validation.
    pub validations: Vec<ValPoint>,
    /// Wall seconds spent training so far (all sessions).
    pub seconds: f64,
    /// The run's config, as TOML, to refuse resuming with another one.
    pub config: String,
}

fn recorder() -> NamedMpkBytesRecorder<FullPrecisionSettings> {
    NamedMpkBytesRecorder::<FullPrecisionSettings>::default()
}

fn record_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::DataFile {
        path: path.to_path_buf(),
        reason: format!("checkpoint record: {e}"),
    }
}

/// Serialises a module's record.
pub fn module_bytes<B: Backend, M: Module<B>>(module: &M) -> Result<Vec<u8>> {
    Recorder::<B>::record(&recorder(), module.clone().into_record(), ())
        .map_err(|e| Error::InvalidInput(format!("serialising a module failed: {e}")))
}

/// Restores a module's record (weights and parameter ids) from `path`.
pub fn load_module<B: Backend, M: Module<B>>(
    module: M,
    path: &Path,
    device: &B::Device,
) -> Result<M> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let record =
        Recorder::<B>::load(&recorder(), bytes, device).map_err(|e| record_err(path, e))?;
    Ok(module.load_record(record))
}

/// Everything a checkpoint holds besides the loop state.
pub struct CheckpointParts<
    'a,
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
    E: Module<B::InnerBackend>,
> {
    /// The model being trained.
    pub model: &'a M,
    /// Its optimizer.
    pub optim: &'a O,
    /// The EMA weights, if on.
    pub ema: Option<&'a E>,
    /// Loop state.
    pub state: &'a LoopState,
    #[doc(hidden)]
    pub _b: std::marker::PhantomData<B>,
}

/// The checkpoints folder of a run.
pub fn checkpoints_dir(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

/// Writes a checkpoint (see the module docs) and prunes old ones beyond `keep`.
pub fn save<B, M, O, E>(
    run: &Path,
    parts: CheckpointParts<'_, B, M, O, E>,
    keep: usize,
) -> Result<PathBuf>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
    E: Module<B::InnerBackend>,
{
    let dir = checkpoints_dir(run);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let name = format!("step-{:06}", parts.state.step);
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.partial-"))
        .tempdir_in(&dir)
        .map_err(|e| Error::io(&dir, e))?;
    let write =
        |file: &str, bytes: &[u8]| storygpt_core::fs::write_atomic(tmp.path().join(file), bytes);
    write("model.mpk", &module_bytes::<B, M>(parts.model)?)?;
    let optim = Recorder::<B>::record(&recorder(), parts.optim.to_record(), ())
        .map_err(|e| Error::InvalidInput(format!("serialising the optimizer failed: {e}")))?;
    write("optim.mpk", &optim)?;
    if let Some(ema) = parts.ema {
        write("ema.mpk", &module_bytes::<B::InnerBackend, E>(ema)?)?;
    }
    let json = serde_json::to_vec_pretty(parts.state)
        .map_err(|e| Error::InvalidInput(format!("serialising the loop state failed: {e}")))?;
    write("state.json", &json)?;
    let final_dir = dir.join(&name);
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| Error::io(&final_dir, e))?;
    }
    let tmp_path = tmp.keep();
    std::fs::rename(&tmp_path, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
    storygpt_core::fs::write_atomic(dir.join("latest"), name.as_bytes())?;
    prune(&dir, keep)?;
    Ok(final_dir)
}

fn prune(dir: &Path, keep: usize) -> Result<()> {
    let mut steps: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
        })
        .collect();
    steps.sort();
    while steps.len() > keep {
        let old = steps.remove(0);
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

/// The newest complete checkpoint of a run, if any.
pub fn latest(run: &Path) -> Result<Option<PathBuf>> {
    let dir = checkpoints_dir(run);
    let pointer = dir.join("latest");
    if !pointer.is_file() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&pointer).map_err(|e| Error::io(&pointer, e))?;
    let path = dir.join(name.trim());
    if !path.join("state.json").is_file() {
        return Err(Error::data_file(
            &pointer,
            format!(
                "names checkpoint `{}`, which is incomplete or missing",
                name.trim()
            ),
        ));
    }
    Ok(Some(path))
}

/// Reads a checkpoint's loop state.
pub fn read_state(ckpt: &Path) -> Result<LoopState> {
    storygpt_core::config::read_json(ckpt.join("state.json"))
}

/// Restores the optimizer state of a checkpoint.
pub fn load_optim<B: AutodiffBackend, M: AutodiffModule<B>, O: Optimizer<M, B>>(
    optim: O,
    ckpt: &Path,
    device: &B::Device,
) -> Result<O> {
    let path = ckpt.join("optim.mpk");
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let record =
        Recorder::<B>::load(&recorder(), bytes, device).map_err(|e| record_err(&path, e))?;
    Ok(optim.load_record(record))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_reads_exact_strings_and_the_older_plain_numbers() {
        let exact = r#"{"step":3,"loss":"1.2898523368703845","lr":"0.0002","grad_norm":"0.5"}"#;
        let p: LossPoint = serde_json::from_str(exact).unwrap();
        assert_eq!(p.loss.to_bits(), 1.2898523368703845f64.to_bits());
        let old = r#"{"step":3,"loss":0.25,"lr":2e-4,"grad_norm":0.5}"#;
        let q: LossPoint = serde_json::from_str(old).unwrap();
        assert_eq!((q.loss, q.lr, q.grad_norm), (0.25, 2e-4, 0.5));
        let v: ValPoint =
            serde_json::from_str(r#"{"step":500,"metrics":{"a":"4.6875","b":59.375}}"#).unwrap();
        assert_eq!(v.metrics["a"], 4.6875);
        assert_eq!(v.metrics["b"], 59.375);
        let back: LossPoint = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        assert!(
            serde_json::from_str::<LossPoint>(r#"{"step":1,"loss":"x","lr":"1","grad_norm":"1"}"#)
                .is_err()
        );
    }
}
