//! diffusers' `embeddings.py`: sinusoidal timestep features (`Timesteps`,
//! `get_timestep_embedding`) and the `TimestepEmbedding` MLP.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{Device, Tensor};

/// Sinusoidal features of (possibly fractional) timesteps, as `get_timestep_embedding` with
/// `max_period = 10000`, `scale = 1`.
///
/// `exponent_i = -ln(10000) · i / (half − downscale_freq_shift)`, `emb = t · exp(exponent)`,
/// `[sin, cos]`, swapped to `[cos, sin]` when `flip_sin_to_cos` (SD).
///
/// # Shapes
/// `timesteps`: `[b]` → `[b, dim]`.
pub fn timestep_embedding<B: Backend>(
    timesteps: Tensor<B, 1>,
    dim: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f64,
) -> Tensor<B, 2> {
    let half = dim / 2;
    let device = timesteps.device();
    // The frequency table in f32, as torch computes it.
    let freqs: Vec<f32> = (0..half)
        .map(|i| {
            let exponent =
                -(10000f32.ln()) * i as f32 / (half as f32 - downscale_freq_shift as f32);
            exponent.exp()
        })
        .collect();
    let freqs = Tensor::<B, 1>::from_floats(freqs.as_slice(), &device).cast(timesteps.dtype());
    let [b] = timesteps.dims();
    let args = timesteps.reshape([b, 1]) * freqs.reshape([1, half]); // [b, half]
    let (sin, cos) = (args.clone().sin(), args.cos());
    let emb = if flip_sin_to_cos {
        Tensor::cat(vec![cos, sin], 1)
    } else {
        Tensor::cat(vec![sin, cos], 1)
    };
    if dim % 2 == 1 {
        let pad = Tensor::zeros([b, 1], (&device, emb.dtype()));
        Tensor::cat(vec![emb, pad], 1)
    } else {
        emb
    }
}

/// `TimestepEmbedding`: `linear_2(silu(linear_1(x)))`.
#[derive(Module, Debug)]
pub struct TimestepEmbedding<B: Backend> {
    /// `[in → time_embed_dim]`
    pub linear_1: Linear<B>,
    /// `[time_embed_dim → time_embed_dim]`
    pub linear_2: Linear<B>,
}

impl<B: Backend> TimestepEmbedding<B> {
    /// Random weights.
    pub fn new(c_in: usize, time_embed_dim: usize, device: &Device<B>) -> Self {
        Self {
            linear_1: LinearConfig::new(c_in, time_embed_dim).init(device),
            linear_2: LinearConfig::new(time_embed_dim, time_embed_dim).init(device),
        }
    }

    /// `[b, in] → [b, time_embed_dim]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}
