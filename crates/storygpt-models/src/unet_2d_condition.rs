//! `UNet2DConditionModel` (diffusers `unet_2d_condition.py`), the denoiser of Stable Diffusion
//! 1.x/2.x and of Char-LDM.
//!
//! Config-driven from a diffusers `config.json`. Supported: `CrossAttnDownBlock2D` /
//! `DownBlock2D` / `UNetMidBlock2DCrossAttn` / `UpBlock2D` / `CrossAttnUpBlock2D`, integer or
//! per-block `attention_head_dim` (with SD-1.x semantics: it is the number of *heads*),
//! `use_linear_projection` (SD 2.x), `upcast_attention` (computation is already f32 unless
//! the weights are half), positional time embeddings. Other options are rejected with a typed
//! error at load time rather than silently ignored.

use std::path::Path;

use burn::module::Module;
use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Device, Tensor};
use serde::Deserialize;
use storygpt_core::{ConfigFile, Denoiser, Error, Result, WeightLoader};

use crate::attention::{AttentionCapture, Probe};
use crate::embeddings::{TimestepEmbedding, timestep_embedding};
use crate::resnet::{conv3x3, group_norm};
use crate::unet_2d_blocks::{BlockSettings, DownBlock, MidBlock, UpBlock};

/// An int or a per-block list, as several diffusers config fields allow.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    /// The same value for every block.
    One(usize),
    /// One value per down block (up blocks use the reverse).
    Each(Vec<usize>),
}

impl PerBlock {
    fn get(&self, i: usize) -> Option<usize> {
        match self {
            PerBlock::One(v) => Some(*v),
            PerBlock::Each(v) => v.get(i).copied(),
        }
    }

    fn len_ok(&self, n: usize) -> bool {
        match self {
            PerBlock::One(_) => true,
            PerBlock::Each(v) => v.len() == n,
        }
    }
}

/// diffusers' `UNet2DConditionModel` config (the fields this port reads; others are ignored
/// or, when they would change the model, checked in [`UNet2DConditionConfig::validate`]).
#[derive(Debug, Clone, Deserialize)]
pub struct UNet2DConditionConfig {
    /// Latent side the model was trained at (informational).
    #[serde(default)]
    pub sample_size: Option<usize>,
    /// Latent channels in (4).
    #[serde(default = "four")]
    pub in_channels: usize,
    /// Channels out (4).
    #[serde(default = "four")]
    pub out_channels: usize,
    /// `2·x − 1` on the input (false for SD).
    #[serde(default)]
    pub center_input_sample: bool,
    /// `[cos, sin]` order of the timestep features (true for SD).
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    /// Frequency shift of the timestep features (0 for SD).
    #[serde(default)]
    pub freq_shift: f64,
    /// e.g. `["CrossAttnDownBlock2D", ×3, "DownBlock2D"]`.
    pub down_block_types: Vec<String>,
    /// `UNetMidBlock2DCrossAttn`.
    #[serde(default = "mid_default")]
    pub mid_block_type: Option<String>,
    /// e.g. `["UpBlock2D", "CrossAttnUpBlock2D", ×3]`.
    pub up_block_types: Vec<String>,
    /// Channels per resolution, e.g. `[320, 640, 1280, 1280]`.
    pub block_out_channels: Vec<usize>,
    /// Resnets per down block (up blocks have one more).
    #[serde(default = "two")]
    pub layers_per_block: PerBlock,
    /// Padding of the downsamplers (1).
    #[serde(default = "one")]
    pub downsample_padding: usize,
    /// Only 1 is supported.
    #[serde(default = "one_f")]
    pub mid_block_scale_factor: f64,
    /// Only `silu`.
    #[serde(default = "silu_name")]
    pub act_fn: String,
    /// GroupNorm groups (32).
    #[serde(default = "groups")]
    pub norm_num_groups: usize,
    /// Resnet / output GroupNorm epsilon (1e-5).
    #[serde(default = "eps")]
    pub norm_eps: f64,
    /// Conditioning width (768 for SD 1.x).
    #[serde(default = "cross")]
    pub cross_attention_dim: usize,
    /// Transformer blocks per attention (1).
    #[serde(default = "one_pb")]
    pub transformer_layers_per_block: PerBlock,
    /// **Heads** per block in SD 1.x/2.x configs (the name is historical).
    #[serde(default = "heads")]
    pub attention_head_dim: PerBlock,
    /// When set, overrides `attention_head_dim` as the head count.
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    /// SD 2.x: linear instead of 1×1-conv projections in the transformers.
    #[serde(default)]
    pub use_linear_projection: bool,
    /// SD 2.1: attention softmax in f32 (no-op here for f32 weights).
    #[serde(default)]
    pub upcast_attention: bool,
    /// Unsupported options, checked to be at their SD defaults.
    #[serde(default)]
    pub only_cross_attention: serde_json::Value,
    /// Must be null.
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// Must be null.
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// Must be `positional`.
    #[serde(default = "positional")]
    pub time_embedding_type: String,
    /// Must be `default`.
    #[serde(default = "default_name")]
    pub resnet_time_scale_shift: String,
    /// Must be false.
    #[serde(default)]
    pub dual_cross_attention: bool,
}

fn four() -> usize {
    4
}
fn two() -> PerBlock {
    PerBlock::One(2)
}
fn one() -> usize {
    1
}
fn one_f() -> f64 {
    1.0
}
fn one_pb() -> PerBlock {
    PerBlock::One(1)
}
fn yes() -> bool {
    true
}
fn mid_default() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn silu_name() -> String {
    "silu".into()
}
fn groups() -> usize {
    32
}
fn eps() -> f64 {
    1e-5
}
fn cross() -> usize {
    1280
}
fn heads() -> PerBlock {
    PerBlock::One(8)
}
fn positional() -> String {
    "positional".into()
}
fn default_name() -> String {
    "default".into()
}

impl ConfigFile for UNet2DConditionConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        let n = self.down_block_types.len();
        if n == 0 || self.block_out_channels.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "down_block_types ({n}), up_block_types ({}) and block_out_channels ({}) must have the same, non-zero length",
                self.up_block_types.len(),
                self.block_out_channels.len()
            ));
        }
        for t in &self.down_block_types {
            if !matches!(t.as_str(), "CrossAttnDownBlock2D" | "DownBlock2D") {
                return Err(format!(
                    "unknown down block type `{t}` (supported: CrossAttnDownBlock2D, DownBlock2D)"
                ));
            }
        }
        for t in &self.up_block_types {
            if !matches!(t.as_str(), "CrossAttnUpBlock2D" | "UpBlock2D") {
                return Err(format!(
                    "unknown up block type `{t}` (supported: CrossAttnUpBlock2D, UpBlock2D)"
                ));
            }
        }
        match self.mid_block_type.as_deref() {
            Some("UNetMidBlock2DCrossAttn") => {}
            other => {
                return Err(format!(
                    "unsupported mid_block_type {other:?} (supported: UNetMidBlock2DCrossAttn)"
                ));
            }
        }
        for (name, pb) in [
            ("layers_per_block", &self.layers_per_block),
            (
                "transformer_layers_per_block",
                &self.transformer_layers_per_block,
            ),
            ("attention_head_dim", &self.attention_head_dim),
        ] {
            if !pb.len_ok(n) {
                return Err(format!("{name} must be an int or a list of {n} values"));
            }
        }
        if let Some(h) = &self.num_attention_heads
            && !h.len_ok(n)
        {
            return Err(format!(
                "num_attention_heads must be an int or a list of {n} values"
            ));
        }
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            let h = self.heads(i);
            if !c.is_multiple_of(self.norm_num_groups) {
                return Err(format!(
                    "block_out_channels[{i}] = {c} is not divisible by norm_num_groups ({})",
                    self.norm_num_groups
                ));
            }
            if h == 0 || !c.is_multiple_of(h) {
                return Err(format!(
                    "block_out_channels[{i}] = {c} is not divisible by its head count {h}"
                ));
            }
        }
        let unsupported = [
            (self.act_fn != "silu", format!("act_fn `{}`", self.act_fn)),
            (
                self.mid_block_scale_factor != 1.0,
                "mid_block_scale_factor != 1".into(),
            ),
            (
                !matches!(
                    &self.only_cross_attention,
                    serde_json::Value::Null | serde_json::Value::Bool(false)
                ),
                "only_cross_attention".into(),
            ),
            (self.class_embed_type.is_some(), "class_embed_type".into()),
            (
                self.addition_embed_type.is_some(),
                "addition_embed_type (SDXL)".into(),
            ),
            (
                self.time_embedding_type != "positional",
                format!("time_embedding_type `{}`", self.time_embedding_type),
            ),
            (
                self.resnet_time_scale_shift != "default",
                format!("resnet_time_scale_shift `{}`", self.resnet_time_scale_shift),
            ),
            (self.dual_cross_attention, "dual_cross_attention".into()),
        ];
        if let Some((_, what)) = unsupported.iter().find(|(bad, _)| *bad) {
            return Err(format!("unsupported UNet option: {what}"));
        }
        Ok(())
    }
}

impl UNet2DConditionConfig {
    /// Stable Diffusion 1.5's UNet (`runwayml/stable-diffusion-v1-5/unet/config.json`).
    pub fn sd_v1_5() -> Self {
        serde_json::from_value(serde_json::json!({
            "in_channels": 4, "out_channels": 4, "sample_size": 64,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
            "attention_head_dim": 8, "cross_attention_dim": 768, "norm_num_groups": 32, "norm_eps": 1e-5,
            "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "act_fn": "silu",
            "center_input_sample": false, "mid_block_scale_factor": 1
        }))
        .unwrap_or_else(|e| unreachable!("the SD 1.5 preset is valid JSON for this struct: {e}"))
    }

    /// Heads of down block `i` (diffusers: `num_attention_heads or attention_head_dim`).
    pub fn heads(&self, i: usize) -> usize {
        self.num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
            .get(i)
            .unwrap_or(0)
    }

    /// Spatial downsampling factor: 2^(blocks − 1).
    pub fn downsample_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }
}

/// The UNet. Field names are the checkpoint's key segments.
#[derive(Module, Debug)]
pub struct UNet2DConditionModel<B: Backend> {
    /// Latents → first block's channels.
    pub conv_in: Conv2d<B>,
    /// Timestep features → time embedding.
    pub time_embedding: TimestepEmbedding<B>,
    /// Down path.
    pub down_blocks: Vec<DownBlock<B>>,
    /// Bottleneck.
    pub mid_block: MidBlock<B>,
    /// Up path.
    pub up_blocks: Vec<UpBlock<B>>,
    /// Output GroupNorm.
    pub conv_norm_out: GroupNorm<B>,
    /// Output conv.
    pub conv_out: Conv2d<B>,
    in_channels: usize,
    cross_attention_dim: usize,
    downsample_factor: usize,
    center_input_sample: bool,
    flip_sin_to_cos: bool,
    freq_shift: f64,
}

impl<B: Backend> UNet2DConditionModel<B> {
    /// Random weights from a validated config.
    pub fn new(config: &UNet2DConditionConfig, device: &Device<B>) -> Result<Self> {
        config.validate().map_err(|message| Error::InvalidConfig {
            path: None,
            message,
        })?;
        let ch = &config.block_out_channels;
        let n = ch.len();
        let temb_channels = ch[0] * 4;
        let settings = |i: usize| BlockSettings {
            temb_channels,
            groups: config.norm_num_groups,
            eps: config.norm_eps,
            cross_attention_dim: config.cross_attention_dim,
            use_linear_projection: config.use_linear_projection,
            transformer_layers: config.transformer_layers_per_block.get(i).unwrap_or(1),
            downsample_padding: config.downsample_padding,
        };

        let mut down_blocks = Vec::with_capacity(n);
        let mut c_out = ch[0];
        for (i, kind) in config.down_block_types.iter().enumerate() {
            let c_in = c_out;
            c_out = ch[i];
            let cross = kind == "CrossAttnDownBlock2D";
            down_blocks.push(DownBlock::new(
                c_in,
                c_out,
                config.layers_per_block.get(i).unwrap_or(2),
                cross.then(|| config.heads(i)),
                i + 1 < n,
                &settings(i),
                device,
            ));
        }

        let mid_block = MidBlock::new(ch[n - 1], config.heads(n - 1), &settings(n - 1), device);

        let mut up_blocks = Vec::with_capacity(n);
        let mut out = ch[n - 1];
        for (i, kind) in config.up_block_types.iter().enumerate() {
            let block = n - 1 - i; // the down block this up block mirrors
            let prev = out;
            out = ch[block];
            let c_in = ch[block.saturating_sub(1)];
            let cross = kind == "CrossAttnUpBlock2D";
            up_blocks.push(UpBlock::new(
                c_in,
                out,
                prev,
                config.layers_per_block.get(block).unwrap_or(2) + 1,
                cross.then(|| config.heads(block)),
                i + 1 < n,
                &settings(block),
                device,
            ));
        }

        Ok(Self {
            conv_in: conv3x3(config.in_channels, ch[0], device),
            time_embedding: TimestepEmbedding::new(ch[0], temb_channels, device),
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: group_norm(config.norm_num_groups, ch[0], config.norm_eps, device),
            conv_out: conv3x3(ch[0], config.out_channels, device),
            in_channels: config.in_channels,
            cross_attention_dim: config.cross_attention_dim,
            downsample_factor: config.downsample_factor(),
            center_input_sample: config.center_input_sample,
            flip_sin_to_cos: config.flip_sin_to_cos,
            freq_shift: config.freq_shift,
        })
    }

    /// Loads a diffusers UNet folder (`config.json` + `diffusion_pytorch_model.safetensors`,
    /// or its sharded index).
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &Device<B>) -> Result<Self> {
        Self::from_pretrained_with(dir, device, None, None)
    }

    /// Like [`Self::from_pretrained`], with a weights `variant` (`"fp16"` loads
    /// `diffusion_pytorch_model.fp16.safetensors`) and an optional float `dtype` for the weights.
    pub fn from_pretrained_with(
        dir: impl AsRef<Path>,
        device: &Device<B>,
        variant: Option<&str>,
        dtype: Option<DType>,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        let config = UNet2DConditionConfig::from_dir(dir)?;
        let mut loader = Self::weight_loader();
        if let Some(d) = dtype {
            loader = loader.dtype(d);
        }
        let stem = match variant {
            Some(v) => format!("diffusion_pytorch_model.{v}"),
            None => "diffusion_pytorch_model".to_string(),
        };
        loader.load_dir(Self::new(&config, device)?, dir, &stem)
    }

    /// The key rules of diffusers UNet checkpoints: `ff.net.0` (GEGLU) and `ff.net.2` (Linear)
    /// are one PyTorch list of mixed types; the burn fields are `net_0` / `net_2`.
    pub fn weight_loader() -> WeightLoader {
        WeightLoader::new().remap(r"\.ff\.net\.(\d+)\.", ".ff.net_$1.")
    }

    /// Checks shapes before a forward: channels, divisibility by the downsampling factor,
    /// conditioning width and batch sizes.
    pub fn check_inputs(
        &self,
        sample: &Tensor<B, 4>,
        timestep: &Tensor<B, 1>,
        encoder_hidden_states: &Tensor<B, 3>,
    ) -> Result<()> {
        let [b, c, h, w] = sample.dims();
        let f = self.downsample_factor;
        if b == 0
            || c != self.in_channels
            || !h.is_multiple_of(f)
            || !w.is_multiple_of(f)
            || h == 0
            || w == 0
        {
            return Err(Error::InputShape {
                what: "UNet sample".into(),
                expected: format!(
                    "[batch >= 1, {}, h, w] with h and w non-zero multiples of {f}",
                    self.in_channels
                ),
                found: vec![b, c, h, w],
            });
        }
        let [bt] = timestep.dims();
        if bt != b {
            return Err(Error::InputShape {
                what: "UNet timestep".into(),
                expected: format!("[{b}] (one per sample)"),
                found: vec![bt],
            });
        }
        let [be, l, d] = encoder_hidden_states.dims();
        if be != b || d != self.cross_attention_dim || l == 0 {
            return Err(Error::InputShape {
                what: "UNet encoder_hidden_states".into(),
                expected: format!(
                    "[{b}, seq >= 1, cross_attention_dim = {}]",
                    self.cross_attention_dim
                ),
                found: vec![be, l, d],
            });
        }
        Ok(())
    }

    /// Predicts the noise (or v).
    ///
    /// # Shapes
    /// - `sample`: `[b, in_channels, h, w]`, `h`, `w` multiples of the downsampling factor;
    /// - `timestep`: `[b]`;
    /// - `encoder_hidden_states`: `[b, seq, cross_attention_dim]`;
    /// - returns `[b, out_channels, h, w]`.
    pub fn forward(
        &self,
        sample: Tensor<B, 4>,
        timestep: Tensor<B, 1>,
        encoder_hidden_states: Tensor<B, 3>,
    ) -> Tensor<B, 4> {
        self.forward_probe(
            sample,
            timestep,
            encoder_hidden_states,
            &mut Probe::new(None),
        )
    }

    /// [`Self::forward`], also storing the cross-attention probabilities requested in
    /// `capture` (see [`AttentionCapture`]).
    pub fn forward_with_capture(
        &self,
        sample: Tensor<B, 4>,
        timestep: Tensor<B, 1>,
        encoder_hidden_states: Tensor<B, 3>,
        capture: &mut AttentionCapture<B>,
    ) -> Tensor<B, 4> {
        self.forward_probe(
            sample,
            timestep,
            encoder_hidden_states,
            &mut Probe::new(Some(capture)),
        )
    }

    /// Names of every cross-attention layer, in forward order (for [`AttentionCapture`]).
    pub fn cross_attention_layers(&self) -> Vec<String> {
        let mut names = Vec::new();
        let mut push = |prefix: String, attns: usize, blocks: &dyn Fn(usize) -> usize| {
            for a in 0..attns {
                for t in 0..blocks(a) {
                    names.push(format!(
                        "{prefix}.attentions.{a}.transformer_blocks.{t}.attn2"
                    ));
                }
            }
        };
        for (i, b) in self.down_blocks.iter().enumerate() {
            push(format!("down_blocks.{i}"), b.attentions.len(), &|a| {
                b.attentions[a].transformer_blocks.len()
            });
        }
        let m = &self.mid_block;
        push("mid_block".into(), m.attentions.len(), &|a| {
            m.attentions[a].transformer_blocks.len()
        });
        for (i, b) in self.up_blocks.iter().enumerate() {
            push(format!("up_blocks.{i}"), b.attentions.len(), &|a| {
                b.attentions[a].transformer_blocks.len()
            });
        }
        names
    }

    fn forward_probe(
        &self,
        sample: Tensor<B, 4>,
        timestep: Tensor<B, 1>,
        encoder_hidden_states: Tensor<B, 3>,
        probe: &mut Probe<'_, B>,
    ) -> Tensor<B, 4> {
        let context = &encoder_hidden_states;
        // 0. center input if necessary
        let sample = if self.center_input_sample {
            sample * 2.0 - 1.0
        } else {
            sample
        };

        // 1. time
        let t_features = timestep_embedding(
            timestep.cast(sample.dtype()),
            self.conv_in.weight.dims()[0],
            self.flip_sin_to_cos,
            self.freq_shift,
        );
        let temb = self.time_embedding.forward(t_features);

        // 2. pre-process
        let mut x = self.conv_in.forward(sample);

        // 3. down
        let mut skips = vec![x.clone()];
        for (i, block) in self.down_blocks.iter().enumerate() {
            let (out, states) = probe.scoped(
                || format!("down_blocks.{i}"),
                |p| block.forward_probe(x, &temb, context, p),
            );
            x = out;
            skips.extend(states);
        }

        // 4. mid
        x = probe.scoped(
            || "mid_block".into(),
            |p| self.mid_block.forward_probe(x, &temb, context, p),
        );

        // 5. up: each block takes as many skips as it has resnets, from the end.
        for (i, block) in self.up_blocks.iter().enumerate() {
            let take = block.resnets.len();
            let block_skips = skips.split_off(skips.len() - take);
            x = probe.scoped(
                || format!("up_blocks.{i}"),
                |p| block.forward_probe(x, block_skips, &temb, context, p),
            );
        }

        // 6. post-process
        self.conv_out.forward(silu(self.conv_norm_out.forward(x)))
    }
}

impl<B: Backend> Denoiser<B> for UNet2DConditionModel<B> {
    fn predict(
        &self,
        sample: Tensor<B, 4>,
        timestep: Tensor<B, 1>,
        encoder_hidden_states: Tensor<B, 3>,
    ) -> Tensor<B, 4> {
        self.forward(sample, timestep, encoder_hidden_states)
    }

    fn in_channels(&self) -> usize {
        self.in_channels
    }

    fn cross_attention_dim(&self) -> usize {
        self.cross_attention_dim
    }

    fn downsample_factor(&self) -> usize {
        self.downsample_factor
    }
}
