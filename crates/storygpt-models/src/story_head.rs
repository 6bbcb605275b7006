//! What StoryGPT-V adds to a frozen LLM (`gill/models.py`): the projection of a frame's CLIP
//! features to `m` LLM input tokens, the `R` learned `[IMG]` input embeddings, and the GILL
//! mapper from the `[IMG]` hidden states to denoiser conditioning. Stage 2 trains exactly
//! these; the LLM, the CLIP vision tower and Char-LDM stay frozen.
//!
//! A trained head is a folder:
//!
//! ```text
//! config.json          StoryHeadConfig: sizes, the [IMG] token strings, the LLM / CLIP folders
//! model.safetensors    visual_embeddings.{weight,bias}, img_embeddings [R, d_llm],
//!                      gen_text_hidden_fcs.0.* (the mapper, under the original's key names)
//! ```

use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Device, Distribution, Tensor};
use serde::{Deserialize, Serialize};
use storygpt_core::config::ConfigFile;
use storygpt_core::weights::WeightLoader;
use storygpt_core::{Error, Result};

use crate::gill_mapper::{GillMapper, GillMapperConfig};

/// The head's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoryHeadConfig {
    /// The frozen LLM's folder (relative paths are relative to the head's folder).
    pub llm: PathBuf,
    /// The CLIP folder whose vision tower encodes history frames (`pooler_output`).
    pub visual_encoder: PathBuf,
    /// The Char-LDM folder whose fused embeddings the head was aligned to, if known.
    #[serde(default)]
    pub ldm: Option<PathBuf>,
    /// `m`: LLM tokens per history frame (4).
    pub n_visual_tokens: usize,
    /// The `[IMG]` token strings added to the LLM's tokenizer, in order (R = 8).
    pub img_tokens: Vec<String>,
    /// The LLM's vocabulary size before the `[IMG]` tokens were added.
    pub base_vocab_size: usize,
    /// Width of the CLIP vision `pooler_output`.
    pub visual_dim: usize,
    /// Width of the LLM's input embeddings.
    pub llm_dim: usize,
    /// Longest training sequence (160); inference may use the LLM's whole context.
    pub max_len: usize,
    /// Whether frame 1 (no history) was a training target, so inference can draw it through
    /// the LLM in distribution.
    #[serde(default)]
    pub first_frame_trained: bool,
    /// The mapper (its `in_dim` is `llm_dim`, its `num_input_tokens` is R).
    pub mapper: GillMapperConfig,
}

impl ConfigFile for StoryHeadConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        if self.n_visual_tokens == 0 || self.visual_dim == 0 || self.llm_dim == 0 {
            return Err("n_visual_tokens, visual_dim and llm_dim must be positive".into());
        }
        if self.img_tokens.is_empty() {
            return Err("img_tokens must name at least one [IMG] token".into());
        }
        if self.mapper.in_dim != self.llm_dim {
            return Err(format!(
                "mapper.in_dim ({}) must equal llm_dim ({})",
                self.mapper.in_dim, self.llm_dim
            ));
        }
        if self.mapper.num_input_tokens != self.img_tokens.len() {
            return Err(format!(
                "mapper.num_input_tokens ({}) must equal the number of img_tokens ({})",
                self.mapper.num_input_tokens,
                self.img_tokens.len()
            ));
        }
        self.mapper.validate().map_err(|m| format!("mapper: {m}"))
    }
}

impl StoryHeadConfig {
    /// A head with random weights: `visual_embeddings` as PyTorch's `nn.Linear`, `[IMG]` rows
    /// ~ N(0, 1) (rescaled by the caller to the LLM's mean row norm), a fresh mapper.
    pub fn init<B: Backend>(&self, device: &Device<B>) -> Result<StoryHead<B>> {
        self.validate().map_err(|message| Error::InvalidConfig {
            path: None,
            message,
        })?;
        Ok(StoryHead {
            visual_embeddings: LinearConfig::new(
                self.visual_dim,
                self.n_visual_tokens * self.llm_dim,
            )
            .init(device),
            img_embeddings: Param::from_tensor(Tensor::random(
                [self.img_tokens.len(), self.llm_dim],
                Distribution::Normal(0.0, 1.0),
                device,
            )),
            gill_mapper: self.mapper.init(device)?,
        })
    }

    /// `path` resolved against the head's folder when relative.
    pub fn resolve(dir: &Path, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            dir.join(path)
        }
    }
}

/// The trained parts (see the module docs).
#[derive(Module, Debug)]
pub struct StoryHead<B: Backend> {
    /// CLIP `pooler_output` → `m · d_llm` (`visual_embeddings`).
    pub visual_embeddings: Linear<B>,
    /// The `[IMG0..R-1]` input embeddings `[R, d_llm]`.
    pub img_embeddings: Param<Tensor<B, 2>>,
    /// `[IMG]` hidden states → conditioning (`gen_text_hidden_fcs.0`).
    pub gill_mapper: GillMapper<B>,
}

impl<B: Backend> StoryHead<B> {
    /// Loads a head folder; returns it with its config.
    pub fn from_pretrained(
        dir: impl AsRef<Path>,
        device: &Device<B>,
    ) -> Result<(Self, StoryHeadConfig)> {
        let dir = dir.as_ref();
        let config = StoryHeadConfig::from_dir(dir)?;
        let head = Self::weight_loader().load_dir(config.init(device)?, dir, "model")?;
        Ok((head, config))
    }

    /// The original's key names: the mapper is `gen_text_hidden_fcs.0`.
    pub fn weight_loader() -> WeightLoader {
        WeightLoader::new().remap(r"^gen_text_hidden_fcs\.0\.", "gill_mapper.")
    }

    /// The renames that write the mapper under the original's names.
    pub const EXPORT_RENAMES: &'static [(&'static str, &'static str)] =
        &[(r"^gill_mapper\.", "gen_text_hidden_fcs.0.")];

    /// A frame's `m` LLM tokens from its CLIP `pooler_output`: `[n, visual_dim]` →
    /// `[n, m, d_llm]`.
    pub fn visual_tokens(&self, pooled: Tensor<B, 2>) -> Tensor<B, 3> {
        let n = pooled.dims()[0];
        let d = self.img_embeddings.dims()[1];
        let m = self.visual_embeddings.weight.dims()[1] / d;
        self.visual_embeddings.forward(pooled).reshape([n, m, d])
    }
}
