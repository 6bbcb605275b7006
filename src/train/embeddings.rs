//! Embedding preparation, between the two stages (StoryGPT-V `models/clip_embs.py`): for every
//! frame of a dataset, Char-LDM's stage-1 text path writes the fused conditioning of the
//! caption **with names**: the CLIP text encoder reads the caption with `<|image|>` after each
//! character name, and the FuseModule mixes in the CLIP image embedding of that character's
//! reference portrait. Stage 2 regresses onto these `[l, d]` tensors while its LLM reads the
//! caption with pronouns.
//!
//! ```text
//! OUT/manifest.json                 what was made from what, and the finished shards in order
//! OUT/shard-00000.safetensors       `embeddings` [n, l, d] f32; metadata `ids` (JSON list)
//! ```
//!
//! Frames are taken split by split (train, val, test) in the dataset's order and cut into
//! shards of `shard_size`. Each shard is written atomically and only then listed in the
//! manifest (also written atomically), so an interrupted run resumes at the first unlisted
//! shard and a reader never sees a partial file. The original pickles a dict of fp16 tensors;
//! here it is safetensors, f32.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use storygpt_core::{Error, Result};
use storygpt_data::{Split, StoryDataset};

use super::char_ldm::{CharLdmFolder, frame_prompt, portraits, prompt_conditioning};

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// The manifest's `format` value.
pub const FORMAT: &str = "storygpt-fused-embeddings/1";

/// `OUT/manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingManifest {
    /// [`FORMAT`].
    pub format: String,
    /// The dataset's name.
    pub dataset: String,
    /// The dataset's folder.
    pub dataset_root: PathBuf,
    /// The Char-LDM folder whose text path made the embeddings.
    pub ldm: PathBuf,
    /// Frames in all shards once complete.
    pub frames: usize,
    /// Frames per shard (the last may hold fewer).
    pub shard_size: usize,
    /// `[l, d]` of one embedding (the text encoder's length and width).
    pub shape: [usize; 2],
    /// Finished shards, in order.
    pub shards: Vec<ShardEntry>,
}

impl EmbeddingManifest {
    /// Whether every frame has its embedding.
    pub fn is_complete(&self) -> bool {
        self.shards.iter().map(|s| s.ids.len()).sum::<usize>() == self.frames
    }
}

/// One finished shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// File name inside the output folder.
    pub file: String,
    /// Frame ids, one per row of `embeddings`.
    pub ids: Vec<String>,
}

/// Options of [`prepare_embeddings`].
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// Output folder.
    pub out: PathBuf,
    /// Frames per forward pass.
    pub batch_size: usize,
    /// Frames per shard file.
    pub shard_size: usize,
    /// Show a progress bar.
    pub progress: bool,
}

/// Every frame id of the dataset, split by split (train, val, test), each once.
pub fn all_frame_ids(dataset: &dyn StoryDataset) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    Split::ALL
        .iter()
        .flat_map(|&s| dataset.frame_ids(s).iter())
        .filter(|id| seen.insert(id.as_str()))
        .cloned()
        .collect()
}

/// Writes (or finishes) the fused embeddings of every frame of `dataset` into `opts.out`.
///
/// # Errors
/// An existing manifest made from another dataset, model, frame list or shard size (use
/// another folder); a frame whose annotation or character portrait cannot be read; I/O.
pub fn prepare_embeddings<B: Backend>(
    ldm: &CharLdmFolder<B>,
    ldm_dir: &Path,
    dataset: &dyn StoryDataset,
    opts: &PrepareOptions,
    device: &Device<B>,
) -> Result<EmbeddingManifest> {
    if opts.batch_size == 0 || opts.shard_size == 0 {
        return Err(Error::InvalidInput(
            "prepare-embeddings: batch size and shard size must be positive".into(),
        ));
    }
    let ids = all_frame_ids(dataset);
    if ids.is_empty() {
        return Err(Error::InvalidInput(format!(
            "prepare-embeddings: dataset {} has no frames",
            dataset.root().display()
        )));
    }
    let portraits = portraits(dataset)?;
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let manifest_path = opts.out.join(MANIFEST);
    let text_len = ldm.frozen.tokenizer.model_max_length;
    let width = ldm.model.postfuse_module.embed_dim();
    let fresh = EmbeddingManifest {
        format: FORMAT.into(),
        dataset: dataset.name().to_string(),
        dataset_root: dataset.root().to_path_buf(),
        ldm: ldm_dir.to_path_buf(),
        frames: ids.len(),
        shard_size: opts.shard_size,
        shape: [text_len, width],
        shards: Vec::new(),
    };
    let mut manifest = if manifest_path.exists() {
        let old: EmbeddingManifest = storygpt_core::config::read_json(&manifest_path)?;
        let same_plan = EmbeddingManifest {
            shards: Vec::new(),
            ..old.clone()
        } == fresh;
        let same_ids = old
            .shards
            .iter()
            .flat_map(|s| s.ids.iter())
            .zip(&ids)
            .all(|(a, b)| a == b);
        if !same_plan || !same_ids {
            return Err(Error::InvalidInput(format!(
                "{} was made from another dataset, model or shard size; write into a new folder",
                manifest_path.display()
            )));
        }
        old
    } else {
        fresh
    };
    let done: usize = manifest.shards.iter().map(|s| s.ids.len()).sum();
    let bar = if opts.progress {
        let bar = ProgressBar::new(ids.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "[embeddings] {bar:30} {pos}/{len} frames | {per_sec}, ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_position(done as u64);
        bar
    } else {
        ProgressBar::hidden()
    };
    let t0 = Instant::now();
    for (k, chunk) in ids.chunks(opts.shard_size).enumerate() {
        if k < manifest.shards.len() {
            continue;
        }
        let mut rows: Vec<f32> = Vec::with_capacity(chunk.len() * text_len * width);
        for batch in chunk.chunks(opts.batch_size) {
            let prompts = batch
                .iter()
                .map(|id| frame_prompt(dataset, id, &portraits))
                .collect::<Result<Vec<_>>>()?;
            let (_, _, fused) =
                prompt_conditioning(&ldm.model, &ldm.frozen, &prompts, ldm.crop_size, device)?;
            rows.extend(tensor_values(fused)?);
            bar.inc(batch.len() as u64);
        }
        let file = format!("shard-{k:05}.safetensors");
        write_shard(&opts.out.join(&file), chunk, &rows, [text_len, width])?;
        manifest.shards.push(ShardEntry {
            file,
            ids: chunk.to_vec(),
        });
        storygpt_core::fs::write_json_atomic(&manifest_path, &manifest)?;
        tracing::info!(shard = k, frames = chunk.len(), "embedding shard written");
    }
    bar.finish_and_clear();
    tracing::info!(
        frames = ids.len(),
        seconds = t0.elapsed().as_secs_f64(),
        "fused embeddings ready in {}",
        opts.out.display()
    );
    Ok(manifest)
}

fn tensor_values<B: Backend>(t: Tensor<B, 3>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| Error::InvalidInput(format!("fused embeddings: {e:?}")))
}

fn write_shard(path: &Path, ids: &[String], rows: &[f32], shape: [usize; 2]) -> Result<()> {
    let bytes: Vec<u8> = rows.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F32,
        vec![ids.len(), shape[0], shape[1]],
        &bytes,
    )
    .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))?;
    let ids_json = serde_json::to_string(ids)
        .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))?;
    let metadata = HashMap::from([("ids".to_string(), ids_json)]);
    let data = safetensors::serialize([("embeddings", view)], Some(metadata))
        .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))?;
    storygpt_core::fs::write_atomic(path, &data)
}

/// Prepared embeddings, loaded: `[l, d]` per frame id.
#[derive(Debug, Clone)]
pub struct FusedEmbeddings {
    shape: [usize; 2],
    index: HashMap<String, usize>,
    values: Vec<f32>,
}

impl FusedEmbeddings {
    /// Reads a complete output folder of [`prepare_embeddings`].
    ///
    /// # Errors
    /// A missing or unfinished manifest, a missing or corrupt shard, or a shard whose rows or
    /// ids disagree with the manifest; each error names the file.
    pub fn open(dir: &Path) -> Result<Self> {
        let manifest_path = dir.join(MANIFEST);
        let manifest: EmbeddingManifest = storygpt_core::config::read_json(&manifest_path)?;
        let bad = |message: String| Error::InvalidConfig {
            path: Some(manifest_path.clone()),
            message,
        };
        if manifest.format != FORMAT {
            return Err(bad(format!(
                "format `{}`, expected `{FORMAT}`",
                manifest.format
            )));
        }
        if !manifest.is_complete() {
            return Err(bad(format!(
                "unfinished: {} of {} frames; run prepare-embeddings again to finish it",
                manifest.shards.iter().map(|s| s.ids.len()).sum::<usize>(),
                manifest.frames
            )));
        }
        let [l, d] = manifest.shape;
        let mut index = HashMap::new();
        let mut values = Vec::with_capacity(manifest.frames * l * d);
        for shard in &manifest.shards {
            let path = dir.join(&shard.file);
            let tensors = storygpt_core::weights::read_tensors(&path)?;
            let t = tensors
                .get("embeddings")
                .ok_or_else(|| Error::MissingTensors {
                    path: path.clone(),
                    missing: vec!["embeddings".into()],
                    unused: tensors.keys().cloned().collect(),
                })?;
            if t.shape.to_vec() != [shard.ids.len(), l, d] {
                return Err(Error::ShapeMismatch {
                    path: path.clone(),
                    key: "embeddings".into(),
                    expected: vec![shard.ids.len(), l, d],
                    found: t.shape.to_vec(),
                });
            }
            for id in &shard.ids {
                index.insert(id.clone(), index.len());
            }
            values.extend(
                t.clone()
                    .convert::<f32>()
                    .into_vec::<f32>()
                    .map_err(|e| Error::InvalidInput(format!("{}: {e:?}", path.display())))?,
            );
        }
        Ok(Self {
            shape: manifest.shape,
            index,
            values,
        })
    }

    /// `[l, d]`.
    pub fn shape(&self) -> [usize; 2] {
        self.shape
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether there are no frames.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The `l × d` values of a frame, row-major.
    ///
    /// # Errors
    /// An id that was not prepared.
    pub fn get(&self, id: &str) -> Result<&[f32]> {
        let &row = self
            .index
            .get(id)
            .ok_or_else(|| Error::InvalidInput(format!("no fused embedding for frame `{id}`")))?;
        let n = self.shape[0] * self.shape[1];
        Ok(&self.values[row * n..(row + 1) * n])
    }

    /// The embeddings of `ids` as `[ids.len(), l, d]`.
    ///
    /// # Errors
    /// An id that was not prepared.
    pub fn batch<B: Backend>(&self, ids: &[String], device: &Device<B>) -> Result<Tensor<B, 3>> {
        let mut v = Vec::with_capacity(ids.len() * self.shape[0] * self.shape[1]);
        for id in ids {
            v.extend_from_slice(self.get(id)?);
        }
        Ok(Tensor::from_data(
            burn::tensor::TensorData::new(v, [ids.len(), self.shape[0], self.shape[1]]),
            device,
        ))
    }
}
