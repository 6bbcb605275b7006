//! `AutoencoderKL` (diffusers `autoencoder_kl.py` and `vae.py`): the VAE of Stable Diffusion.
//!
//! pixels `[b, 3, H, W]` in [-1, 1] → `Encoder` → `quant_conv` → diagonal Gaussian over
//! `[b, latent, H/f, W/f]`; latents → `post_quant_conv` → `Decoder` → pixels.
//! Loads current (`to_q/to_k/to_v/to_out.0`) and legacy (`query/key/value/proj_attn`)
//! attention key names.

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Device, Tensor};
use serde::Deserialize;
use storygpt_core::{Autoencoder, ConfigFile, DiagonalGaussian, Error, Result, WeightLoader};

use crate::attention::{Probe, multi_head_attention};
use crate::linear3;
use crate::resnet::{Downsample2D, ResnetBlock2D, Upsample2D, conv3x3, group_norm};

/// diffusers' `AutoencoderKL` config.
#[derive(Debug, Clone, Deserialize)]
pub struct AutoencoderKLConfig {
    /// Image channels in (3).
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Image channels out (3).
    #[serde(default = "three")]
    pub out_channels: usize,
    /// `DownEncoderBlock2D` × n.
    pub down_block_types: Vec<String>,
    /// `UpDecoderBlock2D` × n.
    pub up_block_types: Vec<String>,
    /// Channels per resolution, e.g. `[128, 256, 512, 512]`.
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder block (decoder blocks have one more).
    #[serde(default = "one")]
    pub layers_per_block: usize,
    /// Only `silu`.
    #[serde(default = "silu_name")]
    pub act_fn: String,
    /// Latent channels (4).
    #[serde(default = "four")]
    pub latent_channels: usize,
    /// GroupNorm groups (32).
    #[serde(default = "groups")]
    pub norm_num_groups: usize,
    /// Latent scaling for the denoiser (0.18215 for SD 1.x).
    #[serde(default = "scaling")]
    pub scaling_factor: f64,
    /// Whether `quant_conv` exists (true).
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    /// Whether `post_quant_conv` exists (true).
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    /// Whether the mid blocks have attention (true).
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
}

fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn one() -> usize {
    1
}
fn groups() -> usize {
    32
}
fn yes() -> bool {
    true
}
fn silu_name() -> String {
    "silu".into()
}
fn scaling() -> f64 {
    0.18215
}

impl ConfigFile for AutoencoderKLConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "down_block_types ({}), up_block_types ({}) and block_out_channels ({n}) must have the same, non-zero length",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        if let Some(t) = self
            .down_block_types
            .iter()
            .find(|t| *t != "DownEncoderBlock2D")
        {
            return Err(format!(
                "unknown down block type `{t}` (supported: DownEncoderBlock2D)"
            ));
        }
        if let Some(t) = self
            .up_block_types
            .iter()
            .find(|t| *t != "UpDecoderBlock2D")
        {
            return Err(format!(
                "unknown up block type `{t}` (supported: UpDecoderBlock2D)"
            ));
        }
        if self.act_fn != "silu" {
            return Err(format!("unsupported act_fn `{}`", self.act_fn));
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|c| !c.is_multiple_of(self.norm_num_groups))
        {
            return Err(format!(
                "block_out_channels value {c} is not divisible by norm_num_groups ({})",
                self.norm_num_groups
            ));
        }
        Ok(())
    }
}

impl AutoencoderKLConfig {
    /// Stable Diffusion 1.5's VAE (`runwayml/stable-diffusion-v1-5/vae/config.json`).
    pub fn sd_v1_5() -> Self {
        serde_json::from_value(serde_json::json!({
            "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
            "block_out_channels": [128, 256, 512, 512], "norm_num_groups": 32, "act_fn": "silu",
            "scaling_factor": 0.18215
        }))
        .unwrap_or_else(|e| unreachable!("the SD 1.5 preset is valid JSON for this struct: {e}"))
    }
}

const VAE_EPS: f64 = 1e-6;

/// Single-head self-attention over pixels with a GroupNorm and a residual (`UNetMidBlock2D`'s
/// attention, `Attention(residual_connection=True, _from_deprecated_attn_block=True)`).
#[derive(Module, Debug)]
pub struct VaeAttention<B: Backend> {
    /// GroupNorm (eps 1e-6).
    pub group_norm: GroupNorm<B>,
    /// q/k/v/out projections, all with bias.
    pub to_q: burn::nn::Linear<B>,
    /// Key.
    pub to_k: burn::nn::Linear<B>,
    /// Value.
    pub to_v: burn::nn::Linear<B>,
    /// Output (`to_out.0`).
    pub to_out: Vec<burn::nn::Linear<B>>,
}

impl<B: Backend> VaeAttention<B> {
    fn new(channels: usize, groups: usize, device: &Device<B>) -> Self {
        let lin = || LinearConfig::new(channels, channels).init(device);
        Self {
            group_norm: group_norm(groups, channels, VAE_EPS, device),
            to_q: lin(),
            to_k: lin(),
            to_v: lin(),
            to_out: vec![lin()],
        }
    }

    /// `[b, c, h, w] → [b, c, h, w]`.
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, c, h, w] = x.dims();
        let residual = x.clone();
        // [b, c, h, w] -> [b, h·w, c]
        let tokens = self
            .group_norm
            .forward(x)
            .reshape([b, c, h * w])
            .swap_dims(1, 2);
        let (q, k, v) = (
            linear3(&self.to_q, tokens.clone()),
            linear3(&self.to_k, tokens.clone()),
            linear3(&self.to_v, tokens),
        );
        let out = multi_head_attention(q, k, v, 1, &mut Probe::new(None));
        let out = linear3(&self.to_out[0], out);
        out.swap_dims(1, 2).reshape([b, c, h, w]) + residual
    }
}

/// `UNetMidBlock2D` of the VAE: resnet, attention, resnet (no time embedding).
#[derive(Module, Debug)]
pub struct VaeMidBlock<B: Backend> {
    /// Two resnets.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// Zero or one attention.
    pub attentions: Vec<VaeAttention<B>>,
}

impl<B: Backend> VaeMidBlock<B> {
    fn new(channels: usize, groups: usize, attention: bool, device: &Device<B>) -> Self {
        let resnet = || ResnetBlock2D::new(channels, channels, None, groups, VAE_EPS, device);
        Self {
            resnets: vec![resnet(), resnet()],
            attentions: if attention {
                vec![VaeAttention::new(channels, groups, device)]
            } else {
                Vec::new()
            },
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = self.resnets[0].forward(x, None);
        for attn in &self.attentions {
            x = attn.forward(x);
        }
        self.resnets[1].forward(x, None)
    }
}

/// `DownEncoderBlock2D`.
#[derive(Module, Debug)]
pub struct DownEncoderBlock2D<B: Backend> {
    /// Resnets.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// Bottom/right-padded stride-2 conv, except in the last block.
    pub downsamplers: Vec<Downsample2D<B>>,
}

/// `UpDecoderBlock2D`.
#[derive(Module, Debug)]
pub struct UpDecoderBlock2D<B: Backend> {
    /// Resnets.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// Nearest ×2 + conv, except in the last block.
    pub upsamplers: Vec<Upsample2D<B>>,
}

/// The VAE encoder (`vae.py: Encoder`).
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    /// Pixels → first channels.
    pub conv_in: Conv2d<B>,
    /// Down path.
    pub down_blocks: Vec<DownEncoderBlock2D<B>>,
    /// Bottleneck.
    pub mid_block: VaeMidBlock<B>,
    /// Output GroupNorm.
    pub conv_norm_out: GroupNorm<B>,
    /// → 2 × latent channels (mean, log-variance).
    pub conv_out: Conv2d<B>,
}

/// The VAE decoder (`vae.py: Decoder`).
#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    /// Latents → last channels.
    pub conv_in: Conv2d<B>,
    /// Bottleneck.
    pub mid_block: VaeMidBlock<B>,
    /// Up path.
    pub up_blocks: Vec<UpDecoderBlock2D<B>>,
    /// Output GroupNorm.
    pub conv_norm_out: GroupNorm<B>,
    /// → pixels.
    pub conv_out: Conv2d<B>,
}

/// The autoencoder.
#[derive(Module, Debug)]
pub struct AutoencoderKL<B: Backend> {
    /// Encoder.
    pub encoder: Encoder<B>,
    /// Decoder.
    pub decoder: Decoder<B>,
    /// 1×1 conv on the moments.
    pub quant_conv: Option<Conv2d<B>>,
    /// 1×1 conv on the latents before decoding.
    pub post_quant_conv: Option<Conv2d<B>>,
    scaling_factor: f64,
    latent_channels: usize,
    downsample_factor: usize,
    in_channels: usize,
}

impl<B: Backend> AutoencoderKL<B> {
    /// Random weights from a validated config.
    pub fn new(config: &AutoencoderKLConfig, device: &Device<B>) -> Result<Self> {
        config.validate().map_err(|message| Error::InvalidConfig {
            path: None,
            message,
        })?;
        let ch = &config.block_out_channels;
        let n = ch.len();
        let g = config.norm_num_groups;
        let l = config.latent_channels;
        let resnet = |a, b| ResnetBlock2D::new(a, b, None, g, VAE_EPS, device);

        let mut down_blocks = Vec::with_capacity(n);
        let mut c_out = ch[0];
        for (i, &c) in ch.iter().enumerate() {
            let c_in = c_out;
            c_out = c;
            down_blocks.push(DownEncoderBlock2D {
                resnets: (0..config.layers_per_block)
                    .map(|j| resnet(if j == 0 { c_in } else { c_out }, c_out))
                    .collect(),
                downsamplers: if i + 1 < n {
                    vec![Downsample2D::new(c_out, 0, device)]
                } else {
                    Vec::new()
                },
            });
        }
        let encoder = Encoder {
            conv_in: conv3x3(config.in_channels, ch[0], device),
            down_blocks,
            mid_block: VaeMidBlock::new(ch[n - 1], g, config.mid_block_add_attention, device),
            conv_norm_out: group_norm(g, ch[n - 1], VAE_EPS, device),
            conv_out: conv3x3(ch[n - 1], 2 * l, device),
        };

        let mut up_blocks = Vec::with_capacity(n);
        let mut out = ch[n - 1];
        for i in 0..n {
            let prev = out;
            out = ch[n - 1 - i];
            up_blocks.push(UpDecoderBlock2D {
                resnets: (0..config.layers_per_block + 1)
                    .map(|j| resnet(if j == 0 { prev } else { out }, out))
                    .collect(),
                upsamplers: if i + 1 < n {
                    vec![Upsample2D::new(out, device)]
                } else {
                    Vec::new()
                },
            });
        }
        let decoder = Decoder {
            conv_in: conv3x3(l, ch[n - 1], device),
            mid_block: VaeMidBlock::new(ch[n - 1], g, config.mid_block_add_attention, device),
            up_blocks,
            conv_norm_out: group_norm(g, ch[0], VAE_EPS, device),
            conv_out: conv3x3(ch[0], config.out_channels, device),
        };

        let conv1 = |c| Conv2dConfig::new([c, c], [1, 1]).init(device);
        Ok(Self {
            encoder,
            decoder,
            quant_conv: config.use_quant_conv.then(|| conv1(2 * l)),
            post_quant_conv: config.use_post_quant_conv.then(|| conv1(l)),
            scaling_factor: config.scaling_factor,
            latent_channels: l,
            downsample_factor: 1 << (n - 1),
            in_channels: config.in_channels,
        })
    }

    /// Loads a diffusers VAE folder (current or legacy attention key names).
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &Device<B>) -> Result<Self> {
        Self::from_pretrained_with(dir, device, None, None)
    }

    /// With a weights `variant` (e.g. `"fp16"`) and an optional float `dtype`.
    pub fn from_pretrained_with(
        dir: impl AsRef<Path>,
        device: &Device<B>,
        variant: Option<&str>,
        dtype: Option<DType>,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        let config = AutoencoderKLConfig::from_dir(dir)?;
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

    /// The key rules of diffusers VAE checkpoints: old SD VAE files name the mid-block
    /// attention `query/key/value/proj_attn` (diffusers renames them at load time too).
    pub fn weight_loader() -> WeightLoader {
        WeightLoader::new()
            .remap(r"(attentions\.\d+)\.query\.", "$1.to_q.")
            .remap(r"(attentions\.\d+)\.key\.", "$1.to_k.")
            .remap(r"(attentions\.\d+)\.value\.", "$1.to_v.")
            .remap(r"(attentions\.\d+)\.proj_attn\.", "$1.to_out.0.")
    }

    /// Checks an image batch before [`Autoencoder::encode`].
    pub fn check_image(&self, image: &Tensor<B, 4>) -> Result<()> {
        let [b, c, h, w] = image.dims();
        let f = self.downsample_factor;
        if b == 0
            || c != self.in_channels
            || h == 0
            || w == 0
            || !h.is_multiple_of(f)
            || !w.is_multiple_of(f)
        {
            return Err(Error::InputShape {
                what: "VAE image".into(),
                expected: format!(
                    "[batch >= 1, {}, H, W] with H and W non-zero multiples of {f}",
                    self.in_channels
                ),
                found: vec![b, c, h, w],
            });
        }
        Ok(())
    }

    fn encoder_forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let e = &self.encoder;
        let mut x = e.conv_in.forward(x);
        for block in &e.down_blocks {
            for r in &block.resnets {
                x = r.forward(x, None);
            }
            for d in &block.downsamplers {
                x = d.forward(x);
            }
        }
        x = e.mid_block.forward(x);
        e.conv_out.forward(silu(e.conv_norm_out.forward(x)))
    }

    fn decoder_forward(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let d = &self.decoder;
        let mut x = d.mid_block.forward(d.conv_in.forward(z));
        for block in &d.up_blocks {
            for r in &block.resnets {
                x = r.forward(x, None);
            }
            for u in &block.upsamplers {
                x = u.forward(x);
            }
        }
        d.conv_out.forward(silu(d.conv_norm_out.forward(x)))
    }
}

impl<B: Backend> Autoencoder<B> for AutoencoderKL<B> {
    fn encode(&self, image: Tensor<B, 4>) -> DiagonalGaussian<B> {
        let mut moments = self.encoder_forward(image);
        if let Some(q) = &self.quant_conv {
            moments = q.forward(moments);
        }
        DiagonalGaussian::from_moments(moments)
    }

    fn decode(&self, latents: Tensor<B, 4>) -> Tensor<B, 4> {
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(latents),
            None => latents,
        };
        self.decoder_forward(z)
    }

    fn scaling_factor(&self) -> f64 {
        self.scaling_factor
    }

    fn latent_channels(&self) -> usize {
        self.latent_channels
    }

    fn downsample_factor(&self) -> usize {
        self.downsample_factor
    }
}
