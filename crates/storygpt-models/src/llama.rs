//! Llama (`LlamaForCausalLM`, transformers `modeling_llama.py`): Llama 2, SmolLM2 and other
//! Llama-architecture checkpoints, StoryGPT-V's alternative backbone.
//!
//! ids → `embed_tokens` → decoder layers → `norm` → `lm_head` (or the tied embedding matrix).
//! Each layer is `x + attn(rms(x))` then `x + down(silu(gate(rms(x))) · up(rms(x)))`, where
//! attention rotates queries and keys by their positions (rotate-half RoPE) and may share one
//! key/value head between several query heads (grouped-query attention).

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Device, Int, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use storygpt_core::{ConfigFile, Error, KvCache, LlmBackbone, LlmOutput, Result, WeightLoader};

use crate::causal_lm::{
    CallMask, causal_attention, lm_logits, prepare_call, replace_param, resize_rows,
};
use crate::linear3;
use crate::rope::{RopeConfig, RopeType, RotaryEmbedding, apply_rotary};

/// `LlamaConfig`. Defaults are transformers' (Llama-2-7B shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size (32000 for Llama 2).
    #[serde(default = "d::vocab_size")]
    pub vocab_size: usize,
    /// Width of the decoder.
    #[serde(default = "d::hidden_size")]
    pub hidden_size: usize,
    /// SwiGLU width.
    #[serde(default = "d::intermediate_size")]
    pub intermediate_size: usize,
    /// Decoder layers.
    #[serde(default = "d::layers")]
    pub num_hidden_layers: usize,
    /// Query heads.
    #[serde(default = "d::heads")]
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); `num_attention_heads` when absent.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; `hidden_size / num_attention_heads` when absent.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// MLP activation (`silu`).
    #[serde(default = "d::act")]
    pub hidden_act: String,
    /// Longest sequence the model accepts.
    #[serde(default = "d::max_positions")]
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    #[serde(default = "d::eps")]
    pub rms_norm_eps: f64,
    /// RoPE base (transformers 4 configs; transformers 5 moves it into `rope_parameters`).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// RoPE scaling (transformers 4): `{"type" | "rope_type": "linear" | "dynamic", "factor": f}`.
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    /// RoPE parameters (transformers 5): `{"rope_type", "rope_theta", "factor", ...}`.
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    /// Biases on q/k/v/o.
    #[serde(default)]
    pub attention_bias: bool,
    /// Biases on the MLP.
    #[serde(default)]
    pub mlp_bias: bool,
    /// Output head tied to the input embeddings (SmolLM2: yes; Llama 2: no).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Padding id (Llama 2 has none).
    #[serde(default)]
    pub pad_token_id: Option<usize>,
    /// Begin-of-sequence id.
    #[serde(default = "d::bos")]
    pub bos_token_id: Option<Value>,
    /// End-of-sequence id(s).
    #[serde(default = "d::eos")]
    pub eos_token_id: Option<Value>,
}

mod d {
    use serde_json::Value;
    pub fn vocab_size() -> usize {
        32000
    }
    pub fn hidden_size() -> usize {
        4096
    }
    pub fn intermediate_size() -> usize {
        11008
    }
    pub fn layers() -> usize {
        32
    }
    pub fn heads() -> usize {
        32
    }
    pub fn act() -> String {
        "silu".into()
    }
    pub fn max_positions() -> usize {
        2048
    }
    pub fn eps() -> f64 {
        1e-6
    }
    pub fn bos() -> Option<Value> {
        Some(1.into())
    }
    pub fn eos() -> Option<Value> {
        Some(2.into())
    }
}

impl Default for LlamaConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every LlamaConfig field has a default")
    }
}

fn ids_of(value: &Option<Value>) -> Vec<usize> {
    match value {
        Some(Value::Number(n)) => n.as_u64().map(|v| v as usize).into_iter().collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_u64().map(|v| v as usize))
            .collect(),
        _ => Vec::new(),
    }
}

impl LlamaConfig {
    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// End-of-sequence ids (a config may list several).
    pub fn eos_token_ids(&self) -> Vec<usize> {
        ids_of(&self.eos_token_id)
    }

    /// Begin-of-sequence id, if any.
    pub fn bos_token_ids(&self) -> Vec<usize> {
        ids_of(&self.bos_token_id)
    }

    /// The rotary embedding, from `rope_parameters` (transformers 5) or `rope_theta` +
    /// `rope_scaling` (transformers 4).
    pub fn rope(&self) -> std::result::Result<RopeConfig, String> {
        let params = self
            .rope_parameters
            .as_ref()
            .or(self.rope_scaling.as_ref())
            .filter(|v| !v.is_null());
        let field = |name: &str| params.and_then(|p| p.get(name));
        let theta = field("rope_theta")
            .and_then(Value::as_f64)
            .or(self.rope_theta)
            .unwrap_or(10000.0);
        let kind = field("rope_type")
            .or_else(|| field("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let rope_type = match kind {
            "default" => RopeType::Default,
            "linear" => RopeType::Linear,
            "dynamic" => RopeType::Dynamic,
            other => {
                return Err(format!(
                    "rope type {other:?} is not supported (supported: default, linear, dynamic)"
                ));
            }
        };
        let factor = field("factor").and_then(Value::as_f64).unwrap_or(1.0);
        if rope_type != RopeType::Default && factor < 1.0 {
            return Err(format!("rope scaling factor must be >= 1, got {factor}"));
        }
        // transformers 5.24 reads `max_position_embeddings` as the original context of dynamic
        // scaling (an `original_max_position_embeddings` key is ignored for these types).
        let original = self.max_position_embeddings;
        if let Some(p) = field("partial_rotary_factor").and_then(Value::as_f64)
            && p != 1.0
        {
            return Err(format!("partial_rotary_factor {p} is not supported"));
        }
        Ok(RopeConfig {
            theta,
            dim: self.head_dim(),
            rope_type,
            factor,
            original_max_position_embeddings: original,
        })
    }

    /// The published shape of `meta-llama/Llama-2-7b-hf`.
    pub fn llama2_7b() -> Self {
        Self {
            num_key_value_heads: Some(32),
            ..Self::default()
        }
    }
}

impl ConfigFile for LlamaConfig {
    const FILE_NAME: &'static str = "config.json";

    fn validate(&self) -> std::result::Result<(), String> {
        let (heads, kv) = (self.num_attention_heads, self.kv_heads());
        if heads == 0 || kv == 0 {
            return Err("num_attention_heads and num_key_value_heads must be positive".into());
        }
        if !heads.is_multiple_of(kv) {
            return Err(format!(
                "num_attention_heads {heads} is not divisible by num_key_value_heads {kv}"
            ));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(heads) {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {heads}",
                self.hidden_size
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "head_dim {} must be even for RoPE",
                self.head_dim()
            ));
        }
        if self.hidden_act != "silu" {
            return Err(format!(
                "hidden_act {:?} is not supported (Llama uses silu)",
                self.hidden_act
            ));
        }
        if self.vocab_size == 0 || self.num_hidden_layers == 0 || self.hidden_size == 0 {
            return Err("vocab_size, num_hidden_layers and hidden_size must be positive".into());
        }
        self.rope().map(|_| ())
    }
}

/// Grouped-query self-attention with rotary positions (`self_attn`).
#[derive(Module, Debug)]
pub struct LlamaAttention<B: Backend> {
    /// `[hidden → heads·head_dim]`.
    pub q_proj: Linear<B>,
    /// `[hidden → kv_heads·head_dim]`.
    pub k_proj: Linear<B>,
    /// `[hidden → kv_heads·head_dim]`.
    pub v_proj: Linear<B>,
    /// `[heads·head_dim → hidden]`.
    pub o_proj: Linear<B>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl<B: Backend> LlamaAttention<B> {
    fn new(c: &LlamaConfig, device: &Device<B>) -> Self {
        let (h, kv, dh) = (c.num_attention_heads, c.kv_heads(), c.head_dim());
        let lin = |i, o| {
            LinearConfig::new(i, o)
                .with_bias(c.attention_bias)
                .init(device)
        };
        Self {
            q_proj: lin(c.hidden_size, h * dh),
            k_proj: lin(c.hidden_size, kv * dh),
            v_proj: lin(c.hidden_size, kv * dh),
            o_proj: lin(h * dh, c.hidden_size),
            num_heads: h,
            num_kv_heads: kv,
            head_dim: dh,
        }
    }

    fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: (&Tensor<B, 4>, &Tensor<B, 4>),
        mask: &CallMask,
        layer: usize,
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let [b, l, _] = x.dims();
        let dh = self.head_dim;
        let split = |t: Tensor<B, 3>, n: usize| t.reshape([b, l, n, dh]).swap_dims(1, 2);
        let q = split(linear3(&self.q_proj, x.clone()), self.num_heads);
        let k = split(linear3(&self.k_proj, x.clone()), self.num_kv_heads);
        let mut v = split(linear3(&self.v_proj, x), self.num_kv_heads);
        let q = apply_rotary(q, rope.0, rope.1);
        let mut k = apply_rotary(k, rope.0, rope.1);
        if let Some(cache) = cache {
            let full = cache.append(layer, k, v);
            (k, v) = (full.key, full.value);
        }
        let out = causal_attention(q, k, v, mask, (dh as f64).powf(-0.5));
        linear3(
            &self.o_proj,
            out.swap_dims(1, 2).reshape([b, l, self.num_heads * dh]),
        )
    }
}

/// SwiGLU feed-forward (`mlp`): `down(silu(gate(x)) · up(x))`.
#[derive(Module, Debug)]
pub struct LlamaMlp<B: Backend> {
    /// Gate projection.
    pub gate_proj: Linear<B>,
    /// Up projection.
    pub up_proj: Linear<B>,
    /// Down projection.
    pub down_proj: Linear<B>,
}

impl<B: Backend> LlamaMlp<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let gate = silu(linear3(&self.gate_proj, x.clone()));
        linear3(&self.down_proj, gate * linear3(&self.up_proj, x))
    }
}

/// One decoder layer (`model.layers.N`).
#[derive(Module, Debug)]
pub struct LlamaDecoderLayer<B: Backend> {
    /// Attention.
    pub self_attn: LlamaAttention<B>,
    /// Feed-forward.
    pub mlp: LlamaMlp<B>,
    /// Norm before attention.
    pub input_layernorm: RmsNorm<B>,
    /// Norm before the feed-forward.
    pub post_attention_layernorm: RmsNorm<B>,
}

/// `model` in `LlamaForCausalLM` checkpoints.
#[derive(Module, Debug)]
pub struct LlamaModel<B: Backend> {
    /// `[vocab, hidden]`.
    pub embed_tokens: Embedding<B>,
    /// The layers.
    pub layers: Vec<LlamaDecoderLayer<B>>,
    /// Final RMSNorm.
    pub norm: RmsNorm<B>,
}

/// `LlamaForCausalLM`.
#[derive(Module, Debug)]
pub struct LlamaForCausalLM<B: Backend> {
    /// `model.*` in checkpoints.
    pub model: LlamaModel<B>,
    /// Output head; `None` when tied to `model.embed_tokens`.
    pub lm_head: Option<Linear<B>>,
    #[module(skip)]
    rotary: RotaryEmbedding,
    hidden_size: usize,
    max_position_embeddings: usize,
}

impl<B: Backend> LlamaForCausalLM<B> {
    /// Random weights from a (validated) config.
    pub fn new(config: &LlamaConfig, device: &Device<B>) -> Result<Self> {
        let invalid = |message| Error::InvalidConfig {
            path: None,
            message,
        };
        config.validate().map_err(invalid)?;
        let rope = config.rope().map_err(invalid)?;
        let (d, f) = (config.hidden_size, config.intermediate_size);
        let norm = || {
            RmsNormConfig::new(d)
                .with_epsilon(config.rms_norm_eps)
                .init(device)
        };
        let lin = |i, o| {
            LinearConfig::new(i, o)
                .with_bias(config.mlp_bias)
                .init(device)
        };
        let layers = (0..config.num_hidden_layers)
            .map(|_| LlamaDecoderLayer {
                self_attn: LlamaAttention::new(config, device),
                mlp: LlamaMlp {
                    gate_proj: lin(d, f),
                    up_proj: lin(d, f),
                    down_proj: lin(f, d),
                },
                input_layernorm: norm(),
                post_attention_layernorm: norm(),
            })
            .collect();
        Ok(Self {
            model: LlamaModel {
                embed_tokens: EmbeddingConfig::new(config.vocab_size, d).init(device),
                layers,
                norm: norm(),
            },
            lm_head: (!config.tie_word_embeddings).then(|| {
                LinearConfig::new(d, config.vocab_size)
                    .with_bias(false)
                    .init(device)
            }),
            // Dynamic NTK scaling exists to run past the trained context; transformers sets no
            // limit then, and neither do we.
            max_position_embeddings: if rope.rope_type == RopeType::Dynamic {
                usize::MAX
            } else {
                config.max_position_embeddings
            },
            rotary: RotaryEmbedding::new(rope),
            hidden_size: d,
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
        let config = LlamaConfig::from_dir(dir)?;
        let mut loader = Self::weight_loader();
        if config.tie_word_embeddings {
            // Some exports store the tied head anyway.
            loader = loader.ignore_unexpected(r"^lm_head\.weight$");
        }
        if let Some(d) = dtype {
            loader = loader.dtype(d);
        }
        loader.load_dir(Self::new(&config, device)?, dir, "model")
    }

    /// Key rules of Llama checkpoints: old exports carry `rotary_emb.inv_freq` buffers.
    pub fn weight_loader() -> WeightLoader {
        WeightLoader::new().ignore_unexpected(r"rotary_emb\.inv_freq$")
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

impl<B: Backend> LlmBackbone<B> for LlamaForCausalLM<B> {
    fn embed_dim(&self) -> usize {
        self.hidden_size
    }

    fn vocab_size(&self) -> usize {
        self.model.embed_tokens.weight.dims()[0]
    }

    fn num_layers(&self) -> usize {
        self.model.layers.len()
    }

    fn max_position_embeddings(&self) -> usize {
        self.max_position_embeddings
    }

    fn embed_tokens(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.model.embed_tokens.forward(input_ids)
    }

    fn forward_embeds(
        &self,
        inputs_embeds: Tensor<B, 3>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        mut cache: Option<&mut KvCache<B>>,
        output_hidden_states: bool,
    ) -> Result<LlmOutput<B>> {
        let mask = prepare_call(
            "Llama",
            &inputs_embeds,
            attention_mask,
            cache.as_deref(),
            (
                self.hidden_size,
                self.num_layers(),
                self.max_position_embeddings,
            ),
        )?;
        // transformers' generate: cumsum(mask) - 1, padded slots at position 1.
        let positions = mask.positions(1);
        let (cos, sin) =
            self.rotary
                .cos_sin::<B>(&positions, inputs_embeds.dtype(), &inputs_embeds.device());

        let mut x = inputs_embeds;
        let mut all = output_hidden_states.then(Vec::new);
        for (i, layer) in self.model.layers.iter().enumerate() {
            if let Some(all) = all.as_mut() {
                all.push(x.clone());
            }
            let attn = layer.self_attn.forward(
                layer.input_layernorm.forward(x.clone()),
                (&cos, &sin),
                &mask,
                i,
                cache.as_deref_mut(),
            );
            x = x + attn;
            x = x.clone() + layer.mlp.forward(layer.post_attention_layernorm.forward(x));
        }
        let last = self.model.norm.forward(x);
        if let Some(all) = all.as_mut() {
            all.push(last.clone());
        }
        let logits = lm_logits(
            last.clone(),
            self.lm_head.as_ref(),
            &self.model.embed_tokens.weight,
        );
        Ok(LlmOutput {
            last_hidden_state: last,
            hidden_states: all,
            logits,
        })
    }

    fn resize_token_embeddings(&mut self, new_vocab: usize) -> Result<()> {
        if new_vocab == 0 {
            return Err(Error::InvalidInput(
                "resize_token_embeddings: the vocabulary cannot be empty".into(),
            ));
        }
        let table = &mut self.model.embed_tokens.weight;
        let resized = resize_rows(table.val(), new_vocab);
        replace_param(table, resized);
        if let Some(head) = self.lm_head.as_mut() {
            // burn's Linear stores [in, out]: the vocabulary is the second axis.
            let w = head.weight.val().transpose();
            replace_param(&mut head.weight, resize_rows(w, new_vocab).transpose());
        }
        Ok(())
    }

    fn input_embeddings(&self) -> &Param<Tensor<B, 2>> {
        &self.model.embed_tokens.weight
    }

    fn input_embeddings_mut(&mut self) -> &mut Param<Tensor<B, 2>> {
        &mut self.model.embed_tokens.weight
    }
}
