//! The transformer encoder shared by CLIP's text and vision towers (`CLIPEncoder`,
//! `CLIPEncoderLayer`, `CLIPAttention`, `CLIPMLP` in transformers' `modeling_clip.py`).
//!
//! Pre-norm residual blocks: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`. The text tower uses a
//! causal mask; the vision tower attends everywhere.

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor};

use crate::activation::Activation;
use crate::linear3;

/// Multi-head self-attention with biased q/k/v/out projections.
#[derive(Module, Debug)]
pub struct ClipAttention<B: Backend> {
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

impl<B: Backend> ClipAttention<B> {
    /// Random weights.
    pub fn new(hidden: usize, num_heads: usize, device: &Device<B>) -> Self {
        let lin = || LinearConfig::new(hidden, hidden).init(device);
        Self {
            q_proj: lin(),
            k_proj: lin(),
            v_proj: lin(),
            out_proj: lin(),
            num_heads,
        }
    }

    /// # Shapes
    /// `x`: `[batch, seq, hidden]` → `[batch, seq, hidden]`.
    pub fn forward(&self, x: Tensor<B, 3>, causal: bool) -> Tensor<B, 3> {
        let [b, l, d] = x.dims();
        let heads = |t: Tensor<B, 3>| {
            // [b, l, d] -> [b, heads, l, head_dim]
            t.reshape([b, l, self.num_heads, d / self.num_heads])
                .swap_dims(1, 2)
        };
        let q = heads(linear3(&self.q_proj, x.clone()));
        let k = heads(linear3(&self.k_proj, x.clone()));
        let v = heads(linear3(&self.v_proj, x));
        let options = AttentionModuleOptions {
            scale: None, // 1/sqrt(head_dim), as CLIP
            softcap: None,
            is_causal: causal,
        };
        let out = attention(q, k, v, None, None, options); // [b, heads, l, head_dim]
        self.out_proj
            .forward(out.swap_dims(1, 2).reshape([b, l, d]))
    }
}

/// `fc1 → activation → fc2`.
#[derive(Module, Debug)]
pub struct ClipMlp<B: Backend> {
    /// Up projection.
    pub fc1: Linear<B>,
    /// Down projection.
    pub fc2: Linear<B>,
    act: Activation,
}

impl<B: Backend> ClipMlp<B> {
    /// Random weights.
    pub fn new(hidden: usize, intermediate: usize, act: Activation, device: &Device<B>) -> Self {
        Self {
            fc1: LinearConfig::new(hidden, intermediate).init(device),
            fc2: LinearConfig::new(intermediate, hidden).init(device),
            act,
        }
    }

    /// `[.., hidden] → [.., hidden]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        linear3(&self.fc2, self.act.forward(linear3(&self.fc1, x)))
    }
}

/// One pre-norm encoder layer.
#[derive(Module, Debug)]
pub struct ClipEncoderLayer<B: Backend> {
    /// Self-attention.
    pub self_attn: ClipAttention<B>,
    /// Norm before attention.
    pub layer_norm1: LayerNorm<B>,
    /// Feed-forward.
    pub mlp: ClipMlp<B>,
    /// Norm before the feed-forward.
    pub layer_norm2: LayerNorm<B>,
}

impl<B: Backend> ClipEncoderLayer<B> {
    /// `[batch, seq, hidden] → [batch, seq, hidden]`.
    pub fn forward(&self, x: Tensor<B, 3>, causal: bool) -> Tensor<B, 3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x), causal);
        x.clone() + self.mlp.forward(self.layer_norm2.forward(x))
    }
}

/// A stack of encoder layers (`encoder.layers.N` in checkpoints).
#[derive(Module, Debug)]
pub struct ClipEncoder<B: Backend> {
    /// The layers, in order.
    pub layers: Vec<ClipEncoderLayer<B>>,
}

/// Shape parameters of a [`ClipEncoder`].
#[derive(Debug, Clone, Copy)]
pub struct EncoderDims {
    /// Hidden width.
    pub hidden: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Heads.
    pub heads: usize,
    /// Layers.
    pub layers: usize,
    /// LayerNorm epsilon.
    pub eps: f64,
    /// MLP activation.
    pub act: Activation,
}

impl<B: Backend> ClipEncoder<B> {
    /// Random weights.
    pub fn new(dims: EncoderDims, device: &Device<B>) -> Self {
        let norm = || {
            LayerNormConfig::new(dims.hidden)
                .with_epsilon(dims.eps)
                .init(device)
        };
        Self {
            layers: (0..dims.layers)
                .map(|_| ClipEncoderLayer {
                    self_attn: ClipAttention::new(dims.hidden, dims.heads, device),
                    layer_norm1: norm(),
                    mlp: ClipMlp::new(dims.hidden, dims.intermediate, dims.act, device),
                    layer_norm2: norm(),
                })
                .collect(),
        }
    }

    /// Runs every layer; with `hidden_states`, also returns the input and each layer's output
    /// (`num_layers + 1` tensors, as transformers' `hidden_states`).
    pub fn forward(
        &self,
        mut x: Tensor<B, 3>,
        causal: bool,
        hidden_states: bool,
    ) -> (Tensor<B, 3>, Option<Vec<Tensor<B, 3>>>) {
        let mut all = hidden_states.then(|| vec![x.clone()]);
        for layer in &self.layers {
            x = layer.forward(x, causal);
            if let Some(all) = all.as_mut() {
                all.push(x.clone());
            }
        }
        (x, all)
    }
}
