//! OPT (`OPTForCausalLM`, transformers `modeling_opt.py`): StoryGPT-V's default frozen LLM
//! (OPT-6.7B in the paper).
//!
//! ids → `embed_tokens` (width `word_embed_proj_dim`) → `project_in` (when that width differs
//! from `hidden_size`, as OPT-350m) → + learned positions (offset by 2) → decoder layers →
//! `final_layer_norm` (pre-LN models) → `project_out` → logits through the tied embedding matrix.
//!
//! Each decoder layer is `x + attn(ln(x))`, `x + fc2(relu(fc1(ln(x))))` when
//! `do_layer_norm_before` (all OPT sizes but 350m), and the post-LN order `ln(x + attn(x))`,
//! `ln(x + ffn(x))` otherwise.

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use storygpt_core::{ConfigFile, Error, KvCache, LlmBackbone, LlmOutput, Result, WeightLoader};

use crate::activation::Activation;
use crate::causal_lm::{
    CallMask, causal_attention, lm_logits, prepare_call, replace_param, resize_rows,
};
use crate::linear3;

/// OPT's learned positions start at index 2 of `embed_positions` (a fairseq leftover).
pub const OPT_POSITION_OFFSET: usize = 2;

/// `OPTConfig`. Defaults are transformers' (OPT-125m shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptConfig {
    /// Vocabulary size (50272 for the released models).
    #[serde(default = "d::vocab_size")]
    pub vocab_size: usize,
    /// Width of the decoder.
    #[serde(default = "d::hidden_size")]
    pub hidden_size: usize,
    /// Decoder layers.
    #[serde(default = "d::layers")]
    pub num_hidden_layers: usize,
    /// Feed-forward width.
    #[serde(default = "d::ffn_dim")]
    pub ffn_dim: usize,
    /// Attention heads.
    #[serde(default = "d::heads")]
    pub num_attention_heads: usize,
    /// Longest sequence (the position table has 2 more rows).
    #[serde(default = "d::max_positions")]
    pub max_position_embeddings: usize,
    /// Pre-LN (`true`, all sizes but 350m) or post-LN.
    #[serde(default = "d::yes")]
    pub do_layer_norm_before: bool,
    /// Drops the decoder's final LayerNorm even for pre-LN models (old checkpoints).
    #[serde(default, rename = "_remove_final_layer_norm")]
    pub remove_final_layer_norm: bool,
    /// Width of token embeddings and of the output; `hidden_size` when absent.
    #[serde(default)]
    pub word_embed_proj_dim: Option<usize>,
    /// Feed-forward activation (`relu`).
    #[serde(default = "d::act")]
    pub activation_function: Activation,
    /// Whether linear layers have biases.
    #[serde(default = "d::yes")]
    pub enable_bias: bool,
    /// Whether LayerNorms have weight and bias (only `true` is supported).
    #[serde(default = "d::yes")]
    pub layer_norm_elementwise_affine: bool,
    /// Output head tied to the input embeddings (OPT: always).
    #[serde(default = "d::yes")]
    pub tie_word_embeddings: bool,
    /// Padding id (1).
    #[serde(default = "d::pad")]
    pub pad_token_id: Option<usize>,
    /// Begin-of-sequence id (2, `</s>`).
    #[serde(default = "d::bos")]
    pub bos_token_id: Option<usize>,
    /// End-of-sequence id (2).
    #[serde(default = "d::bos")]
    pub eos_token_id: Option<usize>,
}

mod d {
    use crate::activation::Activation;
    pub fn vocab_size() -> usize {
        50272
    }
    pub fn hidden_size() -> usize {
        768
    }
    pub fn layers() -> usize {
        12
    }
    pub fn ffn_dim() -> usize {
        3072
    }
    pub fn heads() -> usize {
        12
    }
    pub fn max_positions() -> usize {
        2048
    }
    pub fn yes() -> bool {
        true
    }
    pub fn act() -> Activation {
        Activation::Relu
    }
    pub fn pad() -> Option<usize> {
        Some(1)
    }
    pub fn bos() -> Option<usize> {
        Some(2)
    }
}

impl OptConfig {
    /// The token-embedding (and output) width.
    pub fn embed_dim(&self) -> usize {
        self.word_embed_proj_dim.unwrap_or(self.hidden_size)
    }

    /// Whether the decoder ends with `final_layer_norm`.
    pub fn has_final_layer_norm(&self) -> bool {
        self.do_layer_norm_before && !self.remove_final_layer_norm
    }

    /// The published shape of `facebook/opt-1.3b` (used by the benchmark).
    pub fn opt_1_3b() -> Self {
        Self {
            hidden_size: 2048,
            ffn_dim: 8192,
            num_hidden_layers: 24,
            num_attention_heads: 32,
            word_embed_proj_dim: Some(2048),
            ..Self::default()
        }
    }
}

impl Default for OptConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every OptConfig field has a default")
    }
}

impl ConfigFile for OptConfig {
    const FILE_NAME: &'static str = "config.json";

    fn validate(&self) -> std::result::Result<(), String> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.layer_norm_elementwise_affine {
            return Err("layer_norm_elementwise_affine = false is not supported".into());
        }
        if !self.tie_word_embeddings {
            // transformers ties OPT's head in any case; an untied head would need lm_head weights.
            return Err("OPT with tie_word_embeddings = false is not supported".into());
        }
        if self.vocab_size == 0 || self.num_hidden_layers == 0 || self.embed_dim() == 0 {
            return Err("vocab_size, num_hidden_layers and hidden sizes must be positive".into());
        }
        Ok(())
    }
}

/// Multi-head self-attention (`self_attn`), q scaled by `head_dim^-0.5`.
#[derive(Module, Debug)]
pub struct OptAttention<B: Backend> {
    /// Query projection.
    pub q_proj: Linear<B>,
    /// Key projection.
    pub k_proj: Linear<B>,
    /// Value projection.
    pub v_proj: Linear<B>,
    /// Output projection.
    pub out_proj: Linear<B>,
    num_heads: usize,
}

impl<B: Backend> OptAttention<B> {
    fn new(config: &OptConfig, device: &Device<B>) -> Self {
        let d = config.hidden_size;
        let lin = || {
            LinearConfig::new(d, d)
                .with_bias(config.enable_bias)
                .init(device)
        };
        Self {
            q_proj: lin(),
            k_proj: lin(),
            v_proj: lin(),
            out_proj: lin(),
            num_heads: config.num_attention_heads,
        }
    }

    fn forward(
        &self,
        x: Tensor<B, 3>,
        mask: &CallMask,
        layer: usize,
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let [b, l, d] = x.dims();
        let (h, dh) = (self.num_heads, d / self.num_heads);
        let heads = |t: Tensor<B, 3>| t.reshape([b, l, h, dh]).swap_dims(1, 2);
        let q = heads(linear3(&self.q_proj, x.clone()));
        let mut k = heads(linear3(&self.k_proj, x.clone()));
        let mut v = heads(linear3(&self.v_proj, x));
        if let Some(cache) = cache {
            let full = cache.append(layer, k, v);
            (k, v) = (full.key, full.value);
        }
        let out = causal_attention(q, k, v, mask, (dh as f64).powf(-0.5));
        linear3(&self.out_proj, out.swap_dims(1, 2).reshape([b, l, d]))
    }
}

/// One decoder layer (`model.decoder.layers.N`).
#[derive(Module, Debug)]
pub struct OptDecoderLayer<B: Backend> {
    /// Self-attention.
    pub self_attn: OptAttention<B>,
    /// Norm around attention.
    pub self_attn_layer_norm: LayerNorm<B>,
    /// Feed-forward up projection.
    pub fc1: Linear<B>,
    /// Feed-forward down projection.
    pub fc2: Linear<B>,
    /// Norm around the feed-forward.
    pub final_layer_norm: LayerNorm<B>,
    pre_norm: bool,
    act: Activation,
}

impl<B: Backend> OptDecoderLayer<B> {
    fn new(config: &OptConfig, device: &Device<B>) -> Self {
        let (d, f) = (config.hidden_size, config.ffn_dim);
        Self {
            self_attn: OptAttention::new(config, device),
            self_attn_layer_norm: LayerNormConfig::new(d).init(device),
            fc1: LinearConfig::new(d, f)
                .with_bias(config.enable_bias)
                .init(device),
            fc2: LinearConfig::new(f, d)
                .with_bias(config.enable_bias)
                .init(device),
            final_layer_norm: LayerNormConfig::new(d).init(device),
            pre_norm: config.do_layer_norm_before,
            act: config.activation_function,
        }
    }

    fn forward(
        &self,
        x: Tensor<B, 3>,
        mask: &CallMask,
        layer: usize,
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let ffn = |t| linear3(&self.fc2, self.act.forward(linear3(&self.fc1, t)));
        if self.pre_norm {
            let x = x.clone()
                + self
                    .self_attn
                    .forward(self.self_attn_layer_norm.forward(x), mask, layer, cache);
            x.clone() + ffn(self.final_layer_norm.forward(x))
        } else {
            let x = self
                .self_attn_layer_norm
                .forward(x.clone() + self.self_attn.forward(x, mask, layer, cache));
            self.final_layer_norm.forward(x.clone() + ffn(x))
        }
    }
}

/// The decoder stack (`model.decoder`).
#[derive(Module, Debug)]
pub struct OptDecoder<B: Backend> {
    /// `[vocab, word_embed_proj_dim]`; also the output head.
    pub embed_tokens: Embedding<B>,
    /// `[max_position_embeddings + 2, hidden]`.
    pub embed_positions: Embedding<B>,
    /// `word_embed_proj_dim → hidden` (no bias), when the widths differ.
    pub project_in: Option<Linear<B>>,
    /// `hidden → word_embed_proj_dim` (no bias), when the widths differ.
    pub project_out: Option<Linear<B>>,
    /// Final norm of pre-LN models.
    pub final_layer_norm: Option<LayerNorm<B>>,
    /// The layers.
    pub layers: Vec<OptDecoderLayer<B>>,
}

/// `model` in `OPTForCausalLM` checkpoints.
#[derive(Module, Debug)]
pub struct OptModel<B: Backend> {
    /// The decoder.
    pub decoder: OptDecoder<B>,
}

/// `OPTForCausalLM`: the decoder plus the tied output head.
#[derive(Module, Debug)]
pub struct OptForCausalLM<B: Backend> {
    /// `model.decoder.*` in checkpoints.
    pub model: OptModel<B>,
    embed_dim: usize,
    max_position_embeddings: usize,
}

impl<B: Backend> OptForCausalLM<B> {
    /// Random weights from a (validated) config.
    pub fn new(config: &OptConfig, device: &Device<B>) -> Result<Self> {
        config.validate().map_err(|message| Error::InvalidConfig {
            path: None,
            message,
        })?;
        let (e, d) = (config.embed_dim(), config.hidden_size);
        let projected = e != d;
        let proj = |i, o| projected.then(|| LinearConfig::new(i, o).with_bias(false).init(device));
        Ok(Self {
            model: OptModel {
                decoder: OptDecoder {
                    embed_tokens: EmbeddingConfig::new(config.vocab_size, e).init(device),
                    embed_positions: EmbeddingConfig::new(
                        config.max_position_embeddings + OPT_POSITION_OFFSET,
                        d,
                    )
                    .init(device),
                    project_in: proj(e, d),
                    project_out: proj(d, e),
                    final_layer_norm: config
                        .has_final_layer_norm()
                        .then(|| LayerNormConfig::new(d).init(device)),
                    layers: (0..config.num_hidden_layers)
                        .map(|_| OptDecoderLayer::new(config, device))
                        .collect(),
                },
            },
            embed_dim: e,
            max_position_embeddings: config.max_position_embeddings,
        })
    }

    /// Loads `dir/config.json` and `dir/model.safetensors` (or `model.safetensors.index.json`
    /// with its shards).
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &Device<B>) -> Result<Self> {
        Self::from_pretrained_dtype(dir, device, None)
    }

    /// Like `from_pretrained`, keeping float weights as `dtype` (e.g. `DType::BF16` to halve
    /// memory) whatever the checkpoint's dtype.
    pub fn from_pretrained_dtype(
        dir: impl AsRef<Path>,
        device: &Device<B>,
        dtype: Option<DType>,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        let config = OptConfig::from_dir(dir)?;
        let mut loader = Self::weight_loader();
        if let Some(d) = dtype {
            loader = loader.dtype(d);
        }
        loader.load_dir(Self::new(&config, device)?, dir, "model")
    }

    /// Key rules of OPT checkpoints: some (metaseq conversions) omit the `model.` prefix, and
    /// some store the tied `lm_head.weight`, which is the embedding matrix again.
    pub fn weight_loader() -> WeightLoader {
        WeightLoader::new()
            .remap(r"^decoder\.", "model.decoder.")
            .ignore_unexpected(r"^lm_head\.weight$")
    }

    /// The decoder on embeddings (already checked).
    fn decode(
        &self,
        inputs_embeds: Tensor<B, 3>,
        mask: &CallMask,
        mut cache: Option<&mut KvCache<B>>,
        output_hidden_states: bool,
    ) -> (Tensor<B, 3>, Option<Vec<Tensor<B, 3>>>) {
        let dec = &self.model.decoder;
        let [b, l, _] = inputs_embeds.dims();
        let device = inputs_embeds.device();
        // transformers: cumsum(mask) * mask - 1, i.e. -1 at padding, then + 2.
        let positions: Vec<i64> = mask
            .positions(-1)
            .into_iter()
            .flatten()
            .map(|p| p + OPT_POSITION_OFFSET as i64)
            .collect();
        let positions = Tensor::<B, 2, Int>::from_data(TensorData::new(positions, [b, l]), &device);
        let mut x = match &dec.project_in {
            Some(p) => linear3(p, inputs_embeds),
            None => inputs_embeds,
        };
        x = x + dec.embed_positions.forward(positions);
        let mut all = output_hidden_states.then(Vec::new);
        for (i, layer) in dec.layers.iter().enumerate() {
            if let Some(all) = all.as_mut() {
                all.push(x.clone());
            }
            x = layer.forward(x, mask, i, cache.as_deref_mut());
        }
        if let Some(norm) = &dec.final_layer_norm {
            x = norm.forward(x);
        }
        if let Some(p) = &dec.project_out {
            x = linear3(p, x);
        }
        if let Some(all) = all.as_mut() {
            all.push(x.clone());
        }
        (x, all)
    }

    /// The ids → logits convenience of transformers' `forward(input_ids, attention_mask)`
    /// (see [`LlmBackbone::forward_ids`]).
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        cache: Option<&mut KvCache<B>>,
        output_hidden_states: bool,
    ) -> Result<LlmOutput<B>> {
        self.forward_ids(input_ids, attention_mask, cache, output_hidden_states)
    }
}

impl<B: Backend> LlmBackbone<B> for OptForCausalLM<B> {
    fn embed_dim(&self) -> usize {
        self.embed_dim
    }

    fn vocab_size(&self) -> usize {
        self.model.decoder.embed_tokens.weight.dims()[0]
    }

    fn num_layers(&self) -> usize {
        self.model.decoder.layers.len()
    }

    fn max_position_embeddings(&self) -> usize {
        self.max_position_embeddings
    }

    fn embed_tokens(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.model.decoder.embed_tokens.forward(input_ids)
    }

    fn forward_embeds(
        &self,
        inputs_embeds: Tensor<B, 3>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        cache: Option<&mut KvCache<B>>,
        output_hidden_states: bool,
    ) -> Result<LlmOutput<B>> {
        let mask = prepare_call(
            "OPT",
            &inputs_embeds,
            attention_mask,
            cache.as_deref(),
            (
                self.embed_dim,
                self.num_layers(),
                self.max_position_embeddings,
            ),
        )?;
        let (last, hidden_states) = self.decode(inputs_embeds, &mask, cache, output_hidden_states);
        let logits = lm_logits(last.clone(), None, &self.model.decoder.embed_tokens.weight);
        Ok(LlmOutput {
            last_hidden_state: last,
            hidden_states,
            logits,
        })
    }

    fn resize_token_embeddings(&mut self, new_vocab: usize) -> Result<()> {
        if new_vocab == 0 {
            return Err(Error::InvalidInput(
                "resize_token_embeddings: the vocabulary cannot be empty".into(),
            ));
        }
        let table = &mut self.model.decoder.embed_tokens.weight;
        let resized = resize_rows(table.val(), new_vocab);
        replace_param(table, resized);
        Ok(())
    }

    fn input_embeddings(&self) -> &Param<Tensor<B, 2>> {
        &self.model.decoder.embed_tokens.weight
    }

    fn input_embeddings_mut(&mut self) -> &mut Param<Tensor<B, 2>> {
        &mut self.model.decoder.embed_tokens.weight
    }
}
