//! Rotary position embeddings in Hugging Face's rotate-half convention (`LlamaRotaryEmbedding`,
//! `apply_rotary_pos_emb` and `modeling_rope_utils.py`).
//!
//! For head width `d`, `inv_freq[i] = 1 / θ^(2i/d)` for `i < d/2`. A token at position `p` is
//! rotated by the angles `p · inv_freq`, repeated twice (`cat(freqs, freqs)`), and
//! `x' = x·cos + rotate_half(x)·sin` with `rotate_half([x1, x2]) = [-x2, x1]`. burn's own
//! `RotaryEncoding` rotates adjacent pairs instead (the Meta/GPT-J layout), which HF checkpoints
//! do not use.
//!
//! Scaling (`rope_scaling` in transformers 4 configs, `rope_parameters` in transformers 5):
//! - `linear`: positions are divided by `factor`;
//! - `dynamic` (NTK-aware): when a call reaches `seq_len = max(position) + 1` (the maximum
//!   over the batch and over this call's new tokens) beyond the original context `L`
//!   (`max_position_embeddings`), the base becomes `θ · (factor·seq_len/L − (factor − 1))^(d/(d−2))`.
//!   Cached keys keep the rotation of the call that produced them, as in transformers.
//!   transformers keeps the largest base seen in a module attribute across calls; here it is a
//!   function of the call's positions, which is the same thing within one left-to-right decode
//!   from a fresh model.
//!
//! Angles are computed in f32 on the host, as transformers does in float32.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// The rope scaling kinds this port supports.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RopeType {
    /// No scaling.
    Default,
    /// Position interpolation: `p / factor`.
    Linear,
    /// Dynamic NTK scaling of the base.
    Dynamic,
}

/// Rotary embedding parameters, resolved from either config generation.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    /// Base θ (`rope_theta`).
    pub theta: f64,
    /// Rotated width (the head dim; Llama rotates all of it).
    pub dim: usize,
    /// Scaling kind.
    pub rope_type: RopeType,
    /// Scaling factor (1 without scaling).
    pub factor: f64,
    /// Context length the model was trained with (dynamic scaling starts beyond it): the
    /// config's `max_position_embeddings`.
    pub original_max_position_embeddings: usize,
}

/// Rotary embedding with precomputed inverse frequencies.
#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    config: RopeConfig,
    inv_freq: Vec<f32>,
}

fn inv_freq(theta: f64, dim: usize) -> Vec<f32> {
    // transformers: 1 / base ** (arange(0, dim, 2).float() / dim), all in float32.
    let base = theta as f32;
    (0..dim)
        .step_by(2)
        .map(|i| 1.0 / base.powf(i as f32 / dim as f32))
        .collect()
}

impl RotaryEmbedding {
    /// Precomputes the unscaled inverse frequencies.
    pub fn new(config: RopeConfig) -> Self {
        let inv_freq = inv_freq(config.theta, config.dim);
        Self { config, inv_freq }
    }

    /// The configuration.
    pub fn config(&self) -> &RopeConfig {
        &self.config
    }

    /// The inverse frequencies used for a call whose largest position is `max_position`.
    fn frequencies(&self, max_position: i64) -> std::borrow::Cow<'_, [f32]> {
        let c = &self.config;
        let seq_len = (max_position + 1).max(0) as f64;
        let original = c.original_max_position_embeddings as f64;
        if c.rope_type == RopeType::Dynamic && seq_len > original {
            let d = c.dim as f64;
            let base =
                c.theta * ((c.factor * seq_len / original) - (c.factor - 1.0)).powf(d / (d - 2.0));
            return std::borrow::Cow::Owned(inv_freq(base, c.dim));
        }
        std::borrow::Cow::Borrowed(&self.inv_freq)
    }

    /// `cos` and `sin`, each `[batch, 1, seq, dim]`, for positions `[batch][seq]`.
    pub fn cos_sin<B: Backend>(
        &self,
        positions: &[Vec<i64>],
        dtype: DType,
        device: &Device<B>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let batch = positions.len();
        let seq = positions.first().map_or(0, Vec::len);
        let max_position = positions.iter().flatten().copied().max().unwrap_or(0);
        let freqs = self.frequencies(max_position);
        let half = freqs.len();
        let dim = 2 * half;
        let scale = if self.config.rope_type == RopeType::Linear {
            self.config.factor as f32
        } else {
            1.0
        };
        let mut cos = Vec::with_capacity(batch * seq * dim);
        let mut sin = Vec::with_capacity(batch * seq * dim);
        for row in positions {
            for &p in row {
                let p = p as f32 / scale;
                for _ in 0..2 {
                    for &f in freqs.iter() {
                        let angle = p * f;
                        cos.push(angle.cos());
                        sin.push(angle.sin());
                    }
                }
            }
        }
        let make = |v: Vec<f32>| {
            Tensor::<B, 4>::from_data(TensorData::new(v, [batch, 1, seq, dim]), (device, dtype))
        };
        (make(cos), make(sin))
    }
}

/// `[-x2, x1]` for `x = [x1, x2]` split in halves along the last axis.
fn rotate_half<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, h, l, d] = x.dims();
    let x1 = x.clone().slice([0..b, 0..h, 0..l, 0..d / 2]);
    let x2 = x.slice([0..b, 0..h, 0..l, d / 2..d]);
    Tensor::cat(vec![x2.neg(), x1], 3)
}

/// Applies the rotation to `[batch, heads, seq, dim]` queries or keys.
pub fn apply_rotary<B: Backend>(
    x: Tensor<B, 4>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
) -> Tensor<B, 4> {
    x.clone() * cos.clone() + rotate_half(x) * sin.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use storygpt_core::backend::{DefaultBackend as TB, default_device};

    fn rope(rope_type: RopeType, factor: f64) -> RotaryEmbedding {
        RotaryEmbedding::new(RopeConfig {
            theta: 10000.0,
            dim: 4,
            rope_type,
            factor,
            original_max_position_embeddings: 4,
        })
    }

    #[test]
    fn position_zero_is_the_identity_and_norms_are_kept() {
        let dev = default_device();
        let (cos, sin) =
            rope(RopeType::Default, 1.0).cos_sin::<TB>(&[vec![0, 3]], DType::F32, &dev);
        let x = Tensor::<TB, 4>::from_data([[[[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]]]], &dev);
        let y = apply_rotary(x, &cos, &sin);
        let v = y.into_data().into_vec::<f32>().unwrap();
        assert_eq!(&v[..4], &[1.0, 2.0, 3.0, 4.0]);
        let n0: f32 = v[..4].iter().map(|x| x * x).sum();
        let n1: f32 = v[4..].iter().map(|x| x * x).sum();
        assert!((n0 - n1).abs() < 1e-4, "{n0} vs {n1}");
    }

    #[test]
    fn linear_scaling_divides_positions() {
        let dev = default_device();
        let (c1, _) = rope(RopeType::Linear, 2.0).cos_sin::<TB>(&[vec![6]], DType::F32, &dev);
        let (c2, _) = rope(RopeType::Default, 1.0).cos_sin::<TB>(&[vec![3]], DType::F32, &dev);
        c1.into_data()
            .assert_approx_eq::<f32>(&c2.into_data(), Default::default());
    }

    #[test]
    fn dynamic_scaling_starts_beyond_the_original_context() {
        let dev = default_device();
        let r = rope(RopeType::Dynamic, 2.0);
        let (a, _) = r.cos_sin::<TB>(&[vec![2, 3]], DType::F32, &dev);
        let (b, _) = rope(RopeType::Default, 1.0).cos_sin::<TB>(&[vec![2, 3]], DType::F32, &dev);
        a.into_data()
            .assert_approx_eq::<f32>(&b.into_data(), Default::default());
        // seq_len 6 > 4: base = 1e4 · (2·6/4 − 1)^(4/2) = 4e4.
        assert_eq!(r.frequencies(5)[1], 1.0 / 40000f32.powf(0.5));
    }
}
