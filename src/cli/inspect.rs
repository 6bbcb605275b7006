//! `storygpt inspect`: validate and summarise a checkpoint without loading it into a model.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use storygpt_core::weights::{shard_files, tensor_infos};
use storygpt_core::{Error, Result};

use super::stdout_error;

/// Flags of `storygpt inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A `.safetensors` file, a `*.safetensors.index.json`, or a model folder.
    pub path: PathBuf,
    /// List every tensor with its dtype and shape.
    #[arg(long)]
    pub tensors: bool,
}

/// Validates every weights file under `args.path` and prints a summary.
pub fn run(args: &InspectArgs) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let out = &mut out;
    let path = &args.path;
    if path.is_dir() {
        inspect_dir(out, path, args.tensors)
    } else if path.to_string_lossy().ends_with(".index.json") {
        inspect_files(out, path, &shard_files(path)?, args.tensors)
    } else if path.is_file() {
        inspect_files(out, path, std::slice::from_ref(path), args.tensors)
    } else {
        Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
        ))
    }
}

fn inspect_dir(out: &mut dyn Write, dir: &Path, list: bool) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for json in ["model_index.json", "config.json", "scheduler_config.json"] {
        let p = dir.join(json);
        if p.is_file() {
            let v: serde_json::Value = storygpt_core::config::read_json(&p)?;
            writeln!(out, "{}: {}", p.display(), describe_config(&v)).map_err(stdout_error)?;
        }
    }
    let mut found = false;
    for p in &entries {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.ends_with(".safetensors.index.json") {
            inspect_files(out, p, &shard_files(p)?, list)?;
            found = true;
        } else if name.ends_with(".safetensors") && !is_shard(&name) {
            inspect_files(out, p, std::slice::from_ref(p), list)?;
            found = true;
        }
    }
    // diffusers pipelines keep each component in a sub-folder.
    for p in entries.iter().filter(|p| p.is_dir()) {
        if p.join("config.json").is_file() || p.join("scheduler_config.json").is_file() {
            writeln!(out).map_err(stdout_error)?;
            writeln!(out, "== {}", p.display()).map_err(stdout_error)?;
            inspect_dir(out, p, list)?;
            found = true;
        }
    }
    if !found {
        writeln!(out, "{}: no safetensors weights", dir.display()).map_err(stdout_error)?;
    }
    Ok(())
}

fn is_shard(name: &str) -> bool {
    // model-00001-of-00002.safetensors
    name.contains("-of-")
}

fn describe_config(v: &serde_json::Value) -> String {
    for key in ["_class_name", "architectures", "model_type"] {
        if let Some(x) = v.get(key) {
            return format!("{key} = {x}");
        }
    }
    "config".to_string()
}

fn inspect_files(out: &mut dyn Write, report: &Path, files: &[PathBuf], list: bool) -> Result<()> {
    let mut total_params = 0usize;
    let mut total_tensors = 0usize;
    let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
    let mut rows = Vec::new();
    for f in files {
        for t in tensor_infos(f)? {
            let n: usize = t.shape.iter().product();
            total_params += n;
            total_tensors += 1;
            *dtypes.entry(t.dtype.clone()).or_default() += n;
            rows.push(t);
        }
    }
    let dt: Vec<String> = dtypes.iter().map(|(d, n)| format!("{d}: {n}")).collect();
    writeln!(
        out,
        "{}: {} tensor(s) in {} file(s), {} parameters ({:.2} M) [{}]",
        report.display(),
        total_tensors,
        files.len(),
        total_params,
        total_params as f64 / 1e6,
        dt.join(", ")
    )
    .map_err(stdout_error)?;
    if list {
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        for t in rows {
            writeln!(out, "  {:<70} {:<5} {:?}", t.key, t.dtype, t.shape).map_err(stdout_error)?;
        }
    }
    Ok(())
}
