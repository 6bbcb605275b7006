//! `storygpt convert`: a model folder with its float weights stored in another precision
//! (`bf16` halves the embedded story-world model). Every `*.safetensors` file under the folder
//! is rewritten with its F32/F16/BF16 tensors cast (integer tensors and metadata kept); every
//! other file is copied. The loaders cast back to the module's dtype on load.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use storygpt_core::{Error, Result};

/// Target precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FloatDType {
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
    /// IEEE single.
    F32,
}

/// Flags of `storygpt convert`.
#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// The model folder (or one `.safetensors` file) to read.
    pub input: PathBuf,
    /// Where to write (a folder for a folder input; replaced atomically).
    pub output: PathBuf,
    /// Float precision of the written weights.
    #[arg(long, value_enum, default_value_t = FloatDType::Bf16)]
    pub dtype: FloatDType,
}

/// `storygpt convert`.
pub fn run(a: &ConvertArgs) -> Result<()> {
    if a.input.is_file() {
        let bytes = convert_file(&a.input, a.dtype)?;
        return storygpt_core::fs::write_atomic(&a.output, &bytes);
    }
    let parent = a
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".convert.partial-")
        .tempdir_in(parent)
        .map_err(|e| Error::io(parent, e))?;
    let (files, before, after) = convert_dir(&a.input, tmp.path(), a.dtype)?;
    crate::train::export::replace_dir(tmp, &a.output)?;
    println!(
        "{files} weights files: {:.1} MB → {:.1} MB in {}",
        before as f64 / 1e6,
        after as f64 / 1e6,
        a.output.display()
    );
    Ok(())
}

fn convert_dir(from: &Path, to: &Path, dtype: FloatDType) -> Result<(usize, u64, u64)> {
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    let (mut files, mut before, mut after) = (0, 0, 0);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(from)
        .map_err(|e| Error::io(from, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| Error::io(from, e)))
        .collect::<Result<_>>()?;
    entries.sort();
    for p in entries {
        let name = p.file_name().unwrap_or_default();
        let dst = to.join(name);
        if p.is_dir() {
            let (f, b, a) = convert_dir(&p, &dst, dtype)?;
            files += f;
            before += b;
            after += a;
        } else if p.extension().is_some_and(|e| e == "safetensors") {
            let bytes = convert_file(&p, dtype)?;
            before += std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?.len();
            after += bytes.len() as u64;
            files += 1;
            std::fs::write(&dst, bytes).map_err(|e| Error::io(&dst, e))?;
        } else {
            std::fs::copy(&p, &dst).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok((files, before, after))
}

/// One safetensors file with its float tensors cast to `dtype`, serialized.
pub fn convert_file(path: &Path, dtype: FloatDType) -> Result<Vec<u8>> {
    let bad = |reason: String| Error::Safetensors {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let target = match dtype {
        FloatDType::Bf16 => Dtype::BF16,
        FloatDType::F16 => Dtype::F16,
        FloatDType::F32 => Dtype::F32,
    };
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        let values: Option<Vec<f32>> = match view.dtype() {
            Dtype::F32 => Some(
                view.data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            Dtype::F16 => Some(
                view.data()
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
            ),
            Dtype::BF16 => Some(
                view.data()
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
            ),
            _ => None,
        };
        let (dt, data) = match values {
            None => (view.dtype(), view.data().to_vec()),
            Some(v) => (
                target,
                match target {
                    Dtype::BF16 => v
                        .iter()
                        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                        .collect(),
                    Dtype::F16 => v
                        .iter()
                        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                        .collect(),
                    _ => v.iter().flat_map(|&x| x.to_le_bytes()).collect(),
                },
            ),
        };
        tensors.push((name, dt, view.shape().to_vec(), data));
    }
    let views = tensors
        .iter()
        .map(|(n, dt, shape, data)| {
            safetensors::tensor::TensorView::new(*dt, shape.clone(), data)
                .map(|v| (n.clone(), v))
                .map_err(|e| bad(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata: Option<HashMap<String, String>> = meta.metadata().clone();
    safetensors::serialize(views, metadata).map_err(|e| bad(e.to_string()))
}
