//! diffusers' `attention.py` / `attention_processor.py` / `transformers/transformer_2d.py`:
//! `Attention` (to_q/to_k/to_v/to_out), the GEGLU `FeedForward`, `BasicTransformerBlock`
//! and `Transformer2DModel` (the "spatial transformer" of SD 1.x), plus the cross-attention
//! capture Char-LDM's L_reg needs.

use std::collections::{BTreeMap, BTreeSet};

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor};

use crate::linear3;
use crate::resnet::{conv1x1, group_norm};

/// Requests cross-attention probabilities of chosen layers during a UNet forward, by diffusers
/// module name (e.g. `down_blocks.1.attentions.0.transformer_blocks.0.attn2`).
///
/// Layers that are not requested use burn's fused attention op; requested layers compute the
/// softmax explicitly (as diffusers' `AttnProcessor`), and the probabilities
/// `[batch, heads, query_len, key_len]` are stored under their name. Under an autodiff
/// backend the stored probabilities carry gradients (Char-LDM's L_reg).
#[derive(Debug, Clone)]
pub struct AttentionCapture<B: Backend> {
    wanted: BTreeSet<String>,
    /// The captured probabilities, by module name.
    pub probs: BTreeMap<String, Tensor<B, 4>>,
}

impl<B: Backend> AttentionCapture<B> {
    /// Captures the named layers.
    pub fn new<I, S>(layers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            wanted: layers.into_iter().map(Into::into).collect(),
            probs: BTreeMap::new(),
        }
    }

    /// Whether `name` was requested.
    pub fn wants(&self, name: &str) -> bool {
        self.wanted.contains(name)
    }

    /// The requested names.
    pub fn requested(&self) -> impl Iterator<Item = &String> {
        self.wanted.iter()
    }
}

/// Passes a capture request and the current module path down a forward call. `None` costs
/// nothing: no names are built.
pub(crate) struct Probe<'a, B: Backend> {
    capture: Option<&'a mut AttentionCapture<B>>,
    path: String,
}

impl<'a, B: Backend> Probe<'a, B> {
    pub(crate) fn new(capture: Option<&'a mut AttentionCapture<B>>) -> Self {
        Self {
            capture,
            path: String::new(),
        }
    }

    /// Runs `f` with `segment` appended to the path (only when capturing).
    pub(crate) fn scoped<T>(
        &mut self,
        segment: impl FnOnce() -> String,
        f: impl FnOnce(&mut Self) -> T,
    ) -> T {
        if self.capture.is_none() {
            return f(self);
        }
        let len = self.path.len();
        if !self.path.is_empty() {
            self.path.push('.');
        }
        self.path.push_str(&segment());
        let out = f(self);
        self.path.truncate(len);
        out
    }

    fn wants_here(&self) -> bool {
        self.capture.as_ref().is_some_and(|c| c.wants(&self.path))
    }

    fn store(&mut self, probs: Tensor<B, 4>) {
        if let Some(c) = self.capture.as_mut() {
            c.probs.insert(self.path.clone(), probs);
        }
    }
}

/// Multi-head attention with bias-less q/k/v and a biased output projection (`to_out.0`).
/// Self-attention when `context` is `None`.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Query projection (no bias in the UNet; with bias in the VAE).
    pub to_q: Linear<B>,
    /// Key projection.
    pub to_k: Linear<B>,
    /// Value projection.
    pub to_v: Linear<B>,
    /// Output projection; a one-element list so the key is `to_out.0` as in diffusers.
    pub to_out: Vec<Linear<B>>,
    heads: usize,
}

impl<B: Backend> Attention<B> {
    /// Random weights: `query_dim` → `heads × dim_head`, keys/values from `context_dim`.
    pub fn new(
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        dim_head: usize,
        qkv_bias: bool,
        device: &Device<B>,
    ) -> Self {
        let inner = heads * dim_head;
        Self {
            to_q: LinearConfig::new(query_dim, inner)
                .with_bias(qkv_bias)
                .init(device),
            to_k: LinearConfig::new(context_dim, inner)
                .with_bias(qkv_bias)
                .init(device),
            to_v: LinearConfig::new(context_dim, inner)
                .with_bias(qkv_bias)
                .init(device),
            to_out: vec![LinearConfig::new(inner, query_dim).init(device)],
            heads,
        }
    }

    /// # Shapes
    /// `x`: `[b, n, query_dim]`, `context`: `[b, m, context_dim]` → `[b, n, query_dim]`.
    pub fn forward(&self, x: Tensor<B, 3>, context: Option<Tensor<B, 3>>) -> Tensor<B, 3> {
        self.forward_probe(x, context, &mut Probe::new(None))
    }

    pub(crate) fn forward_probe(
        &self,
        x: Tensor<B, 3>,
        context: Option<Tensor<B, 3>>,
        probe: &mut Probe<'_, B>,
    ) -> Tensor<B, 3> {
        let context = context.unwrap_or_else(|| x.clone());
        let q = linear3(&self.to_q, x);
        let k = linear3(&self.to_k, context.clone());
        let v = linear3(&self.to_v, context);
        linear3(
            &self.to_out[0],
            multi_head_attention(q, k, v, self.heads, probe),
        )
    }
}

/// Scaled dot-product attention over projected queries/keys/values.
///
/// # Shapes
/// `q`: `[b, n, inner]`, `k`/`v`: `[b, m, inner]`, split into `heads` → `[b, n, inner]`.
/// Uses burn's fused op unless `probe` asks for this layer's probabilities.
pub(crate) fn multi_head_attention<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    heads: usize,
    probe: &mut Probe<'_, B>,
) -> Tensor<B, 3> {
    let [b, n, inner] = q.dims();
    let m = k.dims()[1];
    let dh = inner / heads;
    // [b, len, inner] -> [b, heads, len, dh]
    let split = |t: Tensor<B, 3>, len: usize| t.reshape([b, len, heads, dh]).swap_dims(1, 2);
    let (q, k, v) = (split(q, n), split(k, m), split(v, m));
    let out = if probe.wants_here() {
        // diffusers' AttnProcessor: explicit softmax(q kᵀ · scale).
        let scale = (dh as f64).powf(-0.5);
        let probs = softmax(q.matmul(k.swap_dims(2, 3)) * scale, 3); // [b, h, n, m]
        probe.store(probs.clone());
        probs.matmul(v)
    } else {
        fused_attention(q, k, v)
    };
    // [b, heads, n, dh] -> [b, n, inner]
    out.swap_dims(1, 2).reshape([b, n, inner])
}

/// Score matrices above this many elements (per head) run their heads on several threads.
const PARALLEL_HEADS_MIN_SCORES: usize = 256 * 1024;

/// burn's fused attention on `[b, heads, len, dh]`. burn-flex 0.21 runs each call on one
/// thread, so long sequences (the UNet's 64² / 32² self-attention) split the heads across the
/// available cores (scoped threads, one `attention` call per chunk, concatenated back).
/// Under autodiff the plain call is kept: the decomposed backward path is multi-threaded.
fn fused_attention<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
    let [_, heads, n, _] = q.dims();
    let m = k.dims()[2];
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(heads);
    let device = q.device();
    if threads < 2 || n * m < PARALLEL_HEADS_MIN_SCORES || B::ad_enabled(&device) {
        return attention(q, k, v, None, None, AttentionModuleOptions::default());
    }
    let (qs, ks, vs) = (
        q.chunk(threads, 1),
        k.chunk(threads, 1),
        v.chunk(threads, 1),
    );
    let outs: Vec<Tensor<B, 4>> = std::thread::scope(|scope| {
        let handles: Vec<_> = qs
            .into_iter()
            .zip(ks)
            .zip(vs)
            .map(|((q, k), v)| {
                scope.spawn(move || {
                    attention(q, k, v, None, None, AttentionModuleOptions::default())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    Tensor::cat(outs, 1)
}

/// GEGLU: `proj(x)` split in two halves, `hidden · gelu(gate)` (`ff.net.0`).
#[derive(Module, Debug)]
pub struct Geglu<B: Backend> {
    /// `[dim → 2 · inner]`
    pub proj: Linear<B>,
}

/// The transformer block's feed-forward: GEGLU then a linear (`ff.net.0`, `ff.net.2`; the
/// dropout at `ff.net.1` has no weights). Field names `net_0`/`net_2` are remapped from
/// `net.0`/`net.2` by [`crate::unet_2d_condition`]'s loader, since one list cannot hold both
/// types.
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    /// GEGLU projection.
    pub net_0: Geglu<B>,
    /// Output projection `[inner → dim]`.
    pub net_2: Linear<B>,
}

impl<B: Backend> FeedForward<B> {
    /// Random weights, `inner = 4 · dim`.
    pub fn new(dim: usize, device: &Device<B>) -> Self {
        let inner = dim * 4;
        Self {
            net_0: Geglu {
                proj: LinearConfig::new(dim, inner * 2).init(device),
            },
            net_2: LinearConfig::new(inner, dim).init(device),
        }
    }

    /// `[b, n, dim] → [b, n, dim]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [hidden, gate] = linear3(&self.net_0.proj, x)
            .chunk(2, 2)
            .try_into()
            .unwrap_or_else(|_| unreachable!("2·inner splits in two"));
        linear3(&self.net_2, hidden * gelu(gate))
    }
}

/// `BasicTransformerBlock`: self-attention, cross-attention, GEGLU feed-forward, each pre-norm
/// with a residual.
#[derive(Module, Debug)]
pub struct BasicTransformerBlock<B: Backend> {
    /// Norm before self-attention.
    pub norm1: LayerNorm<B>,
    /// Self-attention.
    pub attn1: Attention<B>,
    /// Norm before cross-attention.
    pub norm2: LayerNorm<B>,
    /// Cross-attention to the conditioning.
    pub attn2: Attention<B>,
    /// Norm before the feed-forward.
    pub norm3: LayerNorm<B>,
    /// Feed-forward.
    pub ff: FeedForward<B>,
}

impl<B: Backend> BasicTransformerBlock<B> {
    /// Random weights.
    pub fn new(
        dim: usize,
        heads: usize,
        dim_head: usize,
        context_dim: usize,
        device: &Device<B>,
    ) -> Self {
        let norm = || LayerNormConfig::new(dim).with_epsilon(1e-5).init(device);
        Self {
            norm1: norm(),
            attn1: Attention::new(dim, dim, heads, dim_head, false, device),
            norm2: norm(),
            attn2: Attention::new(dim, context_dim, heads, dim_head, false, device),
            norm3: norm(),
            ff: FeedForward::new(dim, device),
        }
    }

    pub(crate) fn forward_probe(
        &self,
        x: Tensor<B, 3>,
        context: Tensor<B, 3>,
        probe: &mut Probe<'_, B>,
    ) -> Tensor<B, 3> {
        let x = probe.scoped(
            || "attn1".into(),
            |p| {
                self.attn1
                    .forward_probe(self.norm1.forward(x.clone()), None, p)
            },
        ) + x;
        let x = probe.scoped(
            || "attn2".into(),
            |p| {
                self.attn2
                    .forward_probe(self.norm2.forward(x.clone()), Some(context), p)
            },
        ) + x;
        self.ff.forward(self.norm3.forward(x.clone())) + x
    }
}

/// How `Transformer2DModel` projects into and out of the token space.
#[derive(Module, Debug)]
pub enum Projection<B: Backend> {
    /// SD 1.x: 1×1 convolutions (`use_linear_projection = false`).
    Conv(Conv2d<B>),
    /// SD 2.x: linears applied to the flattened tokens.
    Linear(Linear<B>),
}

/// `Transformer2DModel` for continuous inputs: GroupNorm → project in → transformer blocks →
/// project out → + residual.
#[derive(Module, Debug)]
pub struct Transformer2DModel<B: Backend> {
    /// GroupNorm (eps 1e-6).
    pub norm: GroupNorm<B>,
    /// Projection into `heads × dim_head` channels.
    pub proj_in: Projection<B>,
    /// The blocks (`transformer_layers_per_block`, 1 for SD).
    pub transformer_blocks: Vec<BasicTransformerBlock<B>>,
    /// Projection back to the input channels.
    pub proj_out: Projection<B>,
}

impl<B: Backend> Transformer2DModel<B> {
    /// Random weights.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        channels: usize,
        heads: usize,
        dim_head: usize,
        context_dim: usize,
        layers: usize,
        groups: usize,
        use_linear_projection: bool,
        device: &Device<B>,
    ) -> Self {
        let inner = heads * dim_head;
        let proj = |a, b| {
            if use_linear_projection {
                Projection::Linear(LinearConfig::new(a, b).init(device))
            } else {
                Projection::Conv(conv1x1(a, b, device))
            }
        };
        Self {
            norm: group_norm(groups, channels, 1e-6, device),
            proj_in: proj(channels, inner),
            transformer_blocks: (0..layers)
                .map(|_| BasicTransformerBlock::new(inner, heads, dim_head, context_dim, device))
                .collect(),
            proj_out: proj(inner, channels),
        }
    }

    /// `[b, c, h, w]` with conditioning `[b, seq, context_dim]` → `[b, c, h, w]`.
    pub fn forward(&self, x: Tensor<B, 4>, context: Tensor<B, 3>) -> Tensor<B, 4> {
        self.forward_probe(x, context, &mut Probe::new(None))
    }

    pub(crate) fn forward_probe(
        &self,
        x: Tensor<B, 4>,
        context: Tensor<B, 3>,
        probe: &mut Probe<'_, B>,
    ) -> Tensor<B, 4> {
        let [b, c, h, w] = x.dims();
        let residual = x.clone();
        let x = self.norm.forward(x);
        // [b, c, h, w] -> [b, h·w, inner]
        let to_tokens = |t: Tensor<B, 4>| {
            let inner = t.dims()[1];
            t.reshape([b, inner, h * w]).swap_dims(1, 2)
        };
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(conv.forward(x)),
            Projection::Linear(lin) => linear3(lin, to_tokens(x)),
        };
        for (i, block) in self.transformer_blocks.iter().enumerate() {
            tokens = probe.scoped(
                || format!("transformer_blocks.{i}"),
                |p| block.forward_probe(tokens, context.clone(), p),
            );
        }
        // [b, h·w, inner] -> [b, inner, h, w]
        let to_image = |t: Tensor<B, 3>| {
            let inner = t.dims()[2];
            t.swap_dims(1, 2).reshape([b, inner, h, w])
        };
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(to_image(tokens)),
            Projection::Linear(lin) => to_image(linear3(lin, tokens)),
        };
        debug_assert_eq!(out.dims()[1], c);
        out + residual
    }
}
