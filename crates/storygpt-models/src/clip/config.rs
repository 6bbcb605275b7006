//! CLIP configs, mirroring transformers' `CLIPTextConfig` and `CLIPVisionConfig`.
//!
//! A text or vision folder's `config.json` holds the fields at the top level
//! (`model_type: clip_text_model` / `clip_vision_model`, e.g. SD 1.x `text_encoder/`); a full
//! `CLIPModel` folder (`openai/clip-vit-large-patch14`) nests them under `text_config` /
//! `vision_config`. [`ClipTextConfig::from_dir`] and [`ClipVisionConfig::from_dir`] accept both.

use std::path::Path;

use serde::{Deserialize, Serialize};
use storygpt_core::{Error, Result};

use crate::activation::Activation;

/// `CLIPTextConfig`. Defaults are transformers' (CLIP ViT-B/32 text tower).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipTextConfig {
    /// Token vocabulary size (49408 for the OpenAI BPE).
    #[serde(default = "d::vocab_size")]
    pub vocab_size: usize,
    /// Width of the hidden states (768 for ViT-L/14, SD 1.x).
    #[serde(default = "d::text_hidden")]
    pub hidden_size: usize,
    /// Width of the MLP.
    #[serde(default = "d::text_intermediate")]
    pub intermediate_size: usize,
    /// Output width of `text_projection` (CLIPTextModelWithProjection).
    #[serde(default = "d::projection_dim")]
    pub projection_dim: usize,
    /// Encoder layers.
    #[serde(default = "d::layers")]
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    #[serde(default = "d::text_heads")]
    pub num_attention_heads: usize,
    /// Longest token sequence (77).
    #[serde(default = "d::text_max_pos")]
    pub max_position_embeddings: usize,
    /// MLP activation (`quick_gelu` for OpenAI CLIP, `gelu` for OpenCLIP ViT-H / SD 2.x).
    #[serde(default = "d::act")]
    pub hidden_act: Activation,
    /// LayerNorm epsilon.
    #[serde(default = "d::eps")]
    pub layer_norm_eps: f64,
    /// Padding id.
    #[serde(default = "d::pad")]
    pub pad_token_id: usize,
    /// Begin-of-text id.
    #[serde(default = "d::bos")]
    pub bos_token_id: usize,
    /// End-of-text id. **2 means a legacy config** (openai / SD 1.x ship `eos_token_id: 2`,
    /// which is wrong); then the pooled output is taken at `argmax(input_ids)`, which is the
    /// end-of-text token because it has the highest id in the vocabulary. Otherwise pooling
    /// takes the first position of `eos_token_id` (transformers `modeling_clip.py`).
    #[serde(default = "d::eos")]
    pub eos_token_id: usize,
}

/// `CLIPVisionConfig`. Defaults are transformers' (CLIP ViT-B/32 vision tower).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipVisionConfig {
    /// Width of the hidden states (1024 for ViT-L/14).
    #[serde(default = "d::vision_hidden")]
    pub hidden_size: usize,
    /// Width of the MLP.
    #[serde(default = "d::vision_intermediate")]
    pub intermediate_size: usize,
    /// Output width of `visual_projection`.
    #[serde(default = "d::projection_dim")]
    pub projection_dim: usize,
    /// Encoder layers.
    #[serde(default = "d::layers")]
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    #[serde(default = "d::vision_heads")]
    pub num_attention_heads: usize,
    /// Input channels.
    #[serde(default = "d::channels")]
    pub num_channels: usize,
    /// Side of the square input (224).
    #[serde(default = "d::image_size")]
    pub image_size: usize,
    /// Side of a patch (14 for ViT-L/14).
    #[serde(default = "d::patch_size")]
    pub patch_size: usize,
    /// MLP activation.
    #[serde(default = "d::act")]
    pub hidden_act: Activation,
    /// LayerNorm epsilon.
    #[serde(default = "d::eps")]
    pub layer_norm_eps: f64,
}

/// transformers' defaults, as functions for serde.
mod d {
    use crate::activation::Activation;
    pub fn vocab_size() -> usize {
        49408
    }
    pub fn text_hidden() -> usize {
        512
    }
    pub fn text_intermediate() -> usize {
        2048
    }
    pub fn projection_dim() -> usize {
        512
    }
    pub fn layers() -> usize {
        12
    }
    pub fn text_heads() -> usize {
        8
    }
    pub fn text_max_pos() -> usize {
        77
    }
    pub fn act() -> Activation {
        Activation::QuickGelu
    }
    pub fn eps() -> f64 {
        1e-5
    }
    pub fn pad() -> usize {
        1
    }
    pub fn bos() -> usize {
        49406
    }
    pub fn eos() -> usize {
        49407
    }
    pub fn vision_hidden() -> usize {
        768
    }
    pub fn vision_intermediate() -> usize {
        3072
    }
    pub fn vision_heads() -> usize {
        12
    }
    pub fn channels() -> usize {
        3
    }
    pub fn image_size() -> usize {
        224
    }
    pub fn patch_size() -> usize {
        32
    }
}

fn check_heads(hidden: usize, heads: usize) -> std::result::Result<(), String> {
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(format!(
            "hidden_size ({hidden}) must be a positive multiple of num_attention_heads ({heads})"
        ));
    }
    Ok(())
}

fn check_positive(pairs: &[(&str, usize)]) -> std::result::Result<(), String> {
    for (name, v) in pairs {
        if *v == 0 {
            return Err(format!("{name} must be positive"));
        }
    }
    Ok(())
}

impl ClipTextConfig {
    /// Checks the invariants the model relies on; the message names the fields.
    pub fn validate(&self) -> std::result::Result<(), String> {
        check_positive(&[
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ])?;
        check_heads(self.hidden_size, self.num_attention_heads)?;
        if self.eos_token_id >= self.vocab_size && self.eos_token_id != 2 {
            return Err(format!(
                "eos_token_id ({}) is outside the vocabulary (vocab_size {})",
                self.eos_token_id, self.vocab_size
            ));
        }
        Ok(())
    }

    /// Whether the pooled output uses the legacy `argmax(input_ids)` rule (`eos_token_id == 2`).
    pub fn legacy_pooling(&self) -> bool {
        self.eos_token_id == 2
    }

    /// Reads `dir/config.json` (top-level or nested under `text_config`) and validates it.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        read_nested(
            &dir.as_ref().join("config.json"),
            "text_config",
            Self::validate,
        )
    }

    /// The SD 1.x text encoder (`openai/clip-vit-large-patch14`'s text tower, as shipped in
    /// `runwayml/stable-diffusion-v1-5/text_encoder/config.json`).
    pub fn sd_v1_5() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            projection_dim: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            pad_token_id: 1,
            bos_token_id: 0,
            eos_token_id: 2,
        }
    }
}

impl ClipVisionConfig {
    /// Checks the invariants the model relies on; the message names the fields.
    pub fn validate(&self) -> std::result::Result<(), String> {
        check_positive(&[
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_channels", self.num_channels),
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
        ])?;
        check_heads(self.hidden_size, self.num_attention_heads)?;
        if !self.image_size.is_multiple_of(self.patch_size) {
            return Err(format!(
                "image_size ({}) must be a multiple of patch_size ({})",
                self.image_size, self.patch_size
            ));
        }
        Ok(())
    }

    /// Patches per image side.
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens per image: the class token plus one per patch.
    pub fn num_positions(&self) -> usize {
        self.patches_per_side() * self.patches_per_side() + 1
    }

    /// Reads `dir/config.json` (top-level or nested under `vision_config`) and validates it.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        read_nested(
            &dir.as_ref().join("config.json"),
            "vision_config",
            Self::validate,
        )
    }

    /// ViT-L/14 at 224² (`openai/clip-vit-large-patch14`'s vision tower).
    pub fn vit_l_14() -> Self {
        Self {
            hidden_size: 1024,
            intermediate_size: 4096,
            projection_dim: 768,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            num_channels: 3,
            image_size: 224,
            patch_size: 14,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

/// Reads a config that is either top-level or nested under `key` (full `CLIPModel` configs).
/// A nested config inherits `projection_dim` from the top level, as transformers does.
fn read_nested<T: serde::de::DeserializeOwned>(
    path: &Path,
    key: &str,
    validate: fn(&T) -> std::result::Result<(), String>,
) -> Result<T> {
    let mut value: serde_json::Value = storygpt_core::config::read_json(path)?;
    if let Some(mut nested) = value.get_mut(key).map(serde_json::Value::take) {
        if let (Some(obj), Some(p)) = (nested.as_object_mut(), value.get("projection_dim")) {
            obj.entry("projection_dim").or_insert(p.clone());
        }
        value = nested;
    }
    let bytes = serde_json::to_vec(&value).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let config: T = storygpt_core::config::parse_json(path, &bytes)?;
    validate(&config).map_err(|message| Error::InvalidConfig {
        path: Some(path.to_path_buf()),
        message,
    })?;
    Ok(config)
}
