//! Writing trained models as Hugging Face / diffusers folders (so the normal loaders read
//! them) with a model card, atomically: the folder is assembled under a hidden temporary name
//! and renamed into place, replacing any previous export.

use std::path::Path;

use burn::module::Module;
use burn::tensor::backend::Backend;
use serde::Serialize;
use storygpt_core::config::ConfigFile;
use storygpt_core::weights::{TensorLayout, save_file_renamed};
use storygpt_core::{Error, Result};

/// Parses a model config given as JSON (a TOML table of a run config) with the model's own
/// schema and checks.
pub fn model_config<T: ConfigFile>(value: &serde_json::Value, what: &str) -> Result<T> {
    let cfg: T = serde_json::from_value(value.clone()).map_err(|e| Error::InvalidConfig {
        path: None,
        message: format!("[{what}]: {e}"),
    })?;
    cfg.validate().map_err(|m| Error::InvalidConfig {
        path: None,
        message: format!("[{what}]: {m}"),
    })?;
    Ok(cfg)
}

/// What a model card says.
#[derive(Debug, Clone, Serialize)]
pub struct ModelCard {
    /// Title line.
    pub title: String,
    /// What the model is and how it was trained, in a few lines.
    pub description: String,
    /// Data it was trained on.
    pub data: String,
    /// Optimizer steps.
    pub steps: usize,
    /// Wall seconds of training (all sessions).
    pub seconds: f64,
    /// Final metrics (name, value, note).
    pub metrics: Vec<(String, f64, String)>,
    /// The run config, as TOML.
    pub config_toml: String,
    /// How to reproduce.
    pub command: String,
}

impl ModelCard {
    /// The card as markdown.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# {}\n\n{}\n\n- data: {}\n- steps: {}\n- training time: {:.1} min (2-core CPU unless noted)\n- reproduce: `{}`\n\n",
            self.title,
            self.description,
            self.data,
            self.steps,
            self.seconds / 60.0,
            self.command
        );
        if !self.metrics.is_empty() {
            s += "## Metrics\n\n| metric | value | note |\n|---|---|---|\n";
            for (name, v, note) in &self.metrics {
                s += &format!("| {name} | {v:.4} | {note} |\n");
            }
            s += "\n";
        }
        s += &format!("## Config\n\n```toml\n{}\n```\n", self.config_toml.trim());
        s
    }
}

/// One file of an export: the weights of `module` under `name`, with key renames.
pub struct Weights<'a, B: Backend, M: Module<B>> {
    /// File name (`model.safetensors`, `diffusion_pytorch_model.safetensors`).
    pub name: &'a str,
    /// The module.
    pub module: &'a M,
    /// Inverse loader remaps (regex, replacement).
    pub renames: &'a [(&'a str, &'a str)],
    #[doc(hidden)]
    pub _b: std::marker::PhantomData<B>,
}

impl<'a, B: Backend, M: Module<B>> Weights<'a, B, M> {
    /// Weights under `name` with key renames.
    pub fn new(name: &'a str, module: &'a M, renames: &'a [(&'a str, &'a str)]) -> Self {
        Self {
            name,
            module,
            renames,
            _b: std::marker::PhantomData,
        }
    }
}

/// Writes `dir` = `config.json` + weights (PyTorch layout) + extra JSON files + `README.md`,
/// atomically (see the module docs).
pub fn write_model_folder<B: Backend, M: Module<B>>(
    dir: &Path,
    config: &serde_json::Value,
    weights: Weights<'_, B, M>,
    extra: &[(&str, serde_json::Value)],
    card: &ModelCard,
) -> Result<()> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.partial-"))
        .tempdir_in(parent)
        .map_err(|e| Error::io(parent, e))?;
    storygpt_core::fs::write_json_atomic(tmp.path().join("config.json"), config)?;
    save_file_renamed(
        weights.module,
        &tmp.path().join(weights.name),
        TensorLayout::PyTorch,
        weights.renames,
    )?;
    for (file, value) in extra {
        storygpt_core::fs::write_json_atomic(tmp.path().join(file), value)?;
    }
    storygpt_core::fs::write_atomic(tmp.path().join("README.md"), card.markdown().as_bytes())?;
    replace_dir(tmp, dir)
}

/// Moves a finished temporary folder to `dir`, replacing what was there.
pub fn replace_dir(tmp: tempfile::TempDir, dir: &Path) -> Result<()> {
    let staged = tmp.keep();
    if dir.exists() {
        let old = dir.with_extension("old-export");
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
        std::fs::rename(&staged, dir).map_err(|e| Error::io(dir, e))?;
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    } else {
        std::fs::rename(&staged, dir).map_err(|e| Error::io(dir, e))?;
    }
    Ok(())
}

/// Rewrites `path` with tensor `key` reshaped from `[1]` to a scalar `[]` (burn parameters
/// have rank ≥ 1; transformers stores e.g. CLIP's `logit_scale` as a 0-d tensor).
pub fn scalar_tensor(path: &Path, key: &str) -> Result<()> {
    use safetensors::tensor::{SafeTensors, TensorView};
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut views = Vec::new();
    for (name, view) in st.tensors() {
        let shape = if name == key && view.shape() == [1] {
            vec![]
        } else {
            view.shape().to_vec()
        };
        let v =
            TensorView::new(view.dtype(), shape, view.data()).map_err(|e| Error::Safetensors {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        views.push((name, v));
    }
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let out = safetensors::serialize(views, Some(meta)).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    storygpt_core::fs::write_atomic(path, &out)
}
