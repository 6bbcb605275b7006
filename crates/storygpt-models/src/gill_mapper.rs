//! GILL's mapper, StoryGPT-V's bridge from the LLM to the denoiser (`gill/layers.py`,
//! `TextFcLayer(mode='gill_mapper')`): the hidden states of the `R` `[IMG]` tokens, with their
//! input embeddings added, become a `[77, d_ctx]` sequence used in place of the CLIP text
//! encoder's output.
//!
//! ```text
//! x      = h_[IMG] + e_[IMG]                          [b, R, in_dim]
//! memory = Encoder(fc(x))                             [b, R, d_model]   pre-norm, final LN
//! y      = Decoder(query_embs, memory)                [b, 77, d_model]  pre-norm, final LN
//! c      = model(y)                                   [b, 77, out_dim]
//! ```
//!
//! The Transformer is PyTorch's `nn.Transformer(batch_first=True, norm_first=True,
//! dropout=0.0)` with its defaults elsewhere (ReLU, LayerNorm eps 1e-5, no masks). Field names
//! are the checkpoint's (`fc`, `tfm.encoder.layers.0.self_attn.in_proj_weight`, `model`,
//! `query_embs`), so the original's `gen_text_hidden_fcs.0.*` keys load once the prefix is
//! stripped.

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::{Device, Distribution, Tensor};
use serde::{Deserialize, Serialize};
use storygpt_core::config::ConfigFile;
use storygpt_core::traits::ConditioningMapper;
use storygpt_core::weights::WeightLoader;
use storygpt_core::{Error, Result};

use crate::attention::{Probe, multi_head_attention};
use crate::linear3;

/// The mapper's `config.json`: `TextFcLayer`'s arguments plus the `nn.Transformer` sizes,
/// which the original fixes (512 wide, 4 heads, 4 + 4 layers, FF 2048).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GillMapperConfig {
    /// LLM width: OPT's `word_embed_proj_dim`, Llama's `hidden_size`.
    pub in_dim: usize,
    /// Conditioning width: the denoiser's `cross_attention_dim` (768 for SD 1.x).
    pub out_dim: usize,
    /// `[IMG]` tokens read (R = 8).
    #[serde(default = "eight")]
    pub num_input_tokens: usize,
    /// Learnable queries = conditioning length (77).
    #[serde(default = "seventy_seven")]
    pub num_output_tokens: usize,
    /// Transformer width (512).
    #[serde(default = "d512")]
    pub d_model: usize,
    /// Attention heads (4).
    #[serde(default = "four")]
    pub nhead: usize,
    /// Encoder layers (4).
    #[serde(default = "four")]
    pub num_encoder_layers: usize,
    /// Decoder layers (4).
    #[serde(default = "four")]
    pub num_decoder_layers: usize,
    /// Feed-forward width (4 × 512 = 2048).
    #[serde(default = "d2048")]
    pub dim_feedforward: usize,
    /// LayerNorm epsilon (PyTorch's 1e-5).
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
}

fn eight() -> usize {
    8
}
fn seventy_seven() -> usize {
    77
}
fn d512() -> usize {
    512
}
fn four() -> usize {
    4
}
fn d2048() -> usize {
    2048
}
fn eps() -> f64 {
    1e-5
}

impl GillMapperConfig {
    /// The original's sizes for an LLM of width `in_dim` and a denoiser of width `out_dim`.
    pub fn new(in_dim: usize, out_dim: usize) -> Self {
        Self {
            in_dim,
            out_dim,
            num_input_tokens: 8,
            num_output_tokens: 77,
            d_model: 512,
            nhead: 4,
            num_encoder_layers: 4,
            num_decoder_layers: 4,
            dim_feedforward: 2048,
            layer_norm_eps: 1e-5,
        }
    }

    /// A mapper with random weights (`query_embs` ~ N(0, 1), as `torch.randn`).
    pub fn init<B: Backend>(&self, device: &Device<B>) -> Result<GillMapper<B>> {
        self.validate().map_err(|message| Error::InvalidConfig {
            path: None,
            message,
        })?;
        let d = self.d_model;
        let norm = || {
            LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let attn = || MultiheadAttention::new(d, self.nhead, device);
        let ff = || {
            (
                LinearConfig::new(d, self.dim_feedforward).init(device),
                LinearConfig::new(self.dim_feedforward, d).init(device),
            )
        };
        let encoder = TransformerEncoder {
            layers: (0..self.num_encoder_layers)
                .map(|_| {
                    let (linear1, linear2) = ff();
                    TransformerEncoderLayer {
                        self_attn: attn(),
                        linear1,
                        linear2,
                        norm1: norm(),
                        norm2: norm(),
                    }
                })
                .collect(),
            norm: norm(),
        };
        let decoder = TransformerDecoder {
            layers: (0..self.num_decoder_layers)
                .map(|_| {
                    let (linear1, linear2) = ff();
                    TransformerDecoderLayer {
                        self_attn: attn(),
                        multihead_attn: attn(),
                        linear1,
                        linear2,
                        norm1: norm(),
                        norm2: norm(),
                        norm3: norm(),
                    }
                })
                .collect(),
            norm: norm(),
        };
        Ok(GillMapper {
            fc: LinearConfig::new(self.in_dim, d).init(device),
            tfm: Transformer { encoder, decoder },
            model: LinearConfig::new(d, self.out_dim).init(device),
            query_embs: Param::from_tensor(Tensor::random(
                [1, self.num_output_tokens, d],
                Distribution::Normal(0.0, 1.0),
                device,
            )),
            num_input_tokens: self.num_input_tokens,
        })
    }
}

impl ConfigFile for GillMapperConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        let sizes = [
            ("in_dim", self.in_dim),
            ("out_dim", self.out_dim),
            ("num_input_tokens", self.num_input_tokens),
            ("num_output_tokens", self.num_output_tokens),
            ("d_model", self.d_model),
            ("nhead", self.nhead),
            ("dim_feedforward", self.dim_feedforward),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(format!("`{name}` must be positive"));
        }
        if !self.d_model.is_multiple_of(self.nhead) {
            return Err(format!(
                "d_model ({}) must be divisible by nhead ({})",
                self.d_model, self.nhead
            ));
        }
        Ok(())
    }
}

/// PyTorch's `nn.MultiheadAttention` (batch first, no dropout): one packed `in_proj_weight`
/// `[3e, e]` for queries, keys and values, and `out_proj`.
#[derive(Module, Debug)]
pub struct MultiheadAttention<B: Backend> {
    /// `[3e, e]`, PyTorch layout (rows: q, k, v).
    pub in_proj_weight: Param<Tensor<B, 2>>,
    /// `[3e]`.
    pub in_proj_bias: Param<Tensor<B, 1>>,
    /// `[e → e]`.
    pub out_proj: Linear<B>,
    num_heads: usize,
}

impl<B: Backend> MultiheadAttention<B> {
    /// Random weights (xavier-uniform packed projection, zero biases, as PyTorch).
    pub fn new(embed_dim: usize, num_heads: usize, device: &Device<B>) -> Self {
        let bound = (6.0 / (embed_dim + 3 * embed_dim) as f64).sqrt();
        Self {
            in_proj_weight: Param::from_tensor(Tensor::random(
                [3 * embed_dim, embed_dim],
                Distribution::Uniform(-bound, bound),
                device,
            )),
            in_proj_bias: Param::from_tensor(Tensor::zeros([3 * embed_dim], device)),
            out_proj: LinearConfig::new(embed_dim, embed_dim).init(device),
            num_heads,
        }
    }

    /// `query`: `[b, n, e]`, `key_value`: `[b, m, e]` → `[b, n, e]`.
    pub fn forward(&self, query: Tensor<B, 3>, key_value: Tensor<B, 3>) -> Tensor<B, 3> {
        let e = self.out_proj.weight.dims()[0];
        let w = self.in_proj_weight.val();
        let bias = self.in_proj_bias.val();
        let project = |x: Tensor<B, 3>, i: usize| {
            let [b, n, _] = x.dims();
            let wi = w.clone().narrow(0, i * e, e).transpose();
            let bi = bias.clone().narrow(0, i * e, e).unsqueeze::<2>();
            (x.reshape([b * n, e]).matmul(wi) + bi).reshape([b, n, e])
        };
        let q = project(query, 0);
        let k = project(key_value.clone(), 1);
        let v = project(key_value, 2);
        let out = multi_head_attention(q, k, v, self.num_heads, &mut Probe::new(None));
        linear3(&self.out_proj, out)
    }
}

/// `nn.TransformerEncoderLayer(norm_first=True)`: `x + SA(LN1 x)`, then `x + FF(LN2 x)`.
#[derive(Module, Debug)]
pub struct TransformerEncoderLayer<B: Backend> {
    /// Self-attention.
    pub self_attn: MultiheadAttention<B>,
    /// `[d → ff]`.
    pub linear1: Linear<B>,
    /// `[ff → d]`.
    pub linear2: Linear<B>,
    /// Before self-attention.
    pub norm1: LayerNorm<B>,
    /// Before the feed-forward block.
    pub norm2: LayerNorm<B>,
}

impl<B: Backend> TransformerEncoderLayer<B> {
    /// `[b, n, d] → [b, n, d]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = self.norm1.forward(x.clone());
        let x = x + self.self_attn.forward(h.clone(), h);
        let h = self.norm2.forward(x.clone());
        x + feed_forward(&self.linear1, &self.linear2, h)
    }
}

/// `nn.TransformerDecoderLayer(norm_first=True)`: self-attention (no mask), cross-attention to
/// the encoder memory, feed-forward, each pre-normed with a residual.
#[derive(Module, Debug)]
pub struct TransformerDecoderLayer<B: Backend> {
    /// Self-attention over the queries.
    pub self_attn: MultiheadAttention<B>,
    /// Cross-attention to the memory.
    pub multihead_attn: MultiheadAttention<B>,
    /// `[d → ff]`.
    pub linear1: Linear<B>,
    /// `[ff → d]`.
    pub linear2: Linear<B>,
    /// Before self-attention.
    pub norm1: LayerNorm<B>,
    /// Before cross-attention.
    pub norm2: LayerNorm<B>,
    /// Before the feed-forward block.
    pub norm3: LayerNorm<B>,
}

impl<B: Backend> TransformerDecoderLayer<B> {
    /// `x`: `[b, n, d]`, `memory`: `[b, m, d]` → `[b, n, d]`.
    pub fn forward(&self, x: Tensor<B, 3>, memory: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = self.norm1.forward(x.clone());
        let x = x + self.self_attn.forward(h.clone(), h);
        let x = x.clone() + self.multihead_attn.forward(self.norm2.forward(x), memory);
        let h = self.norm3.forward(x.clone());
        x + feed_forward(&self.linear1, &self.linear2, h)
    }
}

fn feed_forward<B: Backend>(
    linear1: &Linear<B>,
    linear2: &Linear<B>,
    x: Tensor<B, 3>,
) -> Tensor<B, 3> {
    linear3(linear2, relu(linear3(linear1, x)))
}

/// The encoder stack with its final LayerNorm.
#[derive(Module, Debug)]
pub struct TransformerEncoder<B: Backend> {
    /// Layers.
    pub layers: Vec<TransformerEncoderLayer<B>>,
    /// Final LayerNorm (`nn.Transformer` adds one).
    pub norm: LayerNorm<B>,
}

/// The decoder stack with its final LayerNorm.
#[derive(Module, Debug)]
pub struct TransformerDecoder<B: Backend> {
    /// Layers.
    pub layers: Vec<TransformerDecoderLayer<B>>,
    /// Final LayerNorm.
    pub norm: LayerNorm<B>,
}

/// `nn.Transformer`'s two stacks.
#[derive(Module, Debug)]
pub struct Transformer<B: Backend> {
    /// Reads the projected `[IMG]` states.
    pub encoder: TransformerEncoder<B>,
    /// Reads the queries, attends to the encoder output.
    pub decoder: TransformerDecoder<B>,
}

impl<B: Backend> Transformer<B> {
    /// `src`: `[b, m, d]`, `tgt`: `[b, n, d]` → `[b, n, d]`.
    pub fn forward(&self, src: Tensor<B, 3>, tgt: Tensor<B, 3>) -> Tensor<B, 3> {
        let memory = self
            .encoder
            .layers
            .iter()
            .fold(src, |x, layer| layer.forward(x));
        let memory = self.encoder.norm.forward(memory);
        let y = self
            .decoder
            .layers
            .iter()
            .fold(tgt, |y, layer| layer.forward(y, memory.clone()));
        self.decoder.norm.forward(y)
    }
}

/// The GILL mapper (see the module docs).
#[derive(Module, Debug)]
pub struct GillMapper<B: Backend> {
    /// `[in_dim → d_model]`.
    pub fc: Linear<B>,
    /// The Transformer.
    pub tfm: Transformer<B>,
    /// `[d_model → out_dim]`.
    pub model: Linear<B>,
    /// `[1, num_output_tokens, d_model]` learnable queries.
    pub query_embs: Param<Tensor<B, 3>>,
    num_input_tokens: usize,
}

impl<B: Backend> GillMapper<B> {
    /// Loads `dir/config.json` and `dir/model.safetensors`. The original's checkpoint prefix
    /// `gen_text_hidden_fcs.0.` is stripped when present.
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &Device<B>) -> Result<Self> {
        let dir = dir.as_ref();
        let config = GillMapperConfig::from_dir(dir)?;
        WeightLoader::new()
            .remap(r"^gen_text_hidden_fcs\.0\.", "")
            .load_dir(config.init(device)?, dir, "model")
    }

    /// The mapping with the original's signature: `hidden` (last-layer states at the `[IMG]`
    /// positions) plus `img_embeds` (the `[IMG]` input embeddings), both `[b, R, in_dim]`.
    pub fn forward(&self, hidden: Tensor<B, 3>, img_embeds: Tensor<B, 3>) -> Tensor<B, 3> {
        self.map(hidden + img_embeds)
    }
}

impl<B: Backend> ConditioningMapper<B> for GillMapper<B> {
    fn map(&self, img_states: Tensor<B, 3>) -> Tensor<B, 3> {
        let b = img_states.dims()[0];
        let x = linear3(&self.fc, img_states);
        let queries = self.query_embs.val().repeat_dim(0, b);
        linear3(&self.model, self.tfm.forward(x, queries))
    }

    fn num_queries(&self) -> usize {
        self.query_embs.dims()[1]
    }

    fn output_dim(&self) -> usize {
        self.model.weight.dims()[1]
    }
}

impl<B: Backend> GillMapper<B> {
    /// `R`, the number of `[IMG]` states the mapper was built for.
    pub fn num_input_tokens(&self) -> usize {
        self.num_input_tokens
    }
}
