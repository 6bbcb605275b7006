//! What every diffusion objective here shares: the frozen VAE's posteriors of the frames, cached
//! once, and the DDPM forward process of SD 1.x that noises them.
//!
//! ```text
//! z   = scaling · (μ + σ ε₀)              a fresh draw from the cached posterior N(μ, σ²)
//! x_t = √ᾱ_t · z + √(1 − ᾱ_t) · ε         t ~ U[0, T), ε ~ N(0, I)
//! loss = ‖ε̂(x_t, t, c) − ε‖²
//! ```
//!
//! Frames enter the VAE in `[-1, 1]` (`data::images_to_tensor`); the original stage-2 v2 script
//! fed it 0..255 (`train_llm_v2.py:580`, see the reference §3.5).

use std::collections::HashMap;

use burn::tensor::backend::Backend;
use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use storygpt_core::traits::Autoencoder;
use storygpt_core::{Error, Result};
use storygpt_models::autoencoder_kl::AutoencoderKL;

use super::data::normal;

/// Cached posterior `(mean, std)` of frame latents, by frame id.
#[derive(Debug, Clone)]
pub struct LatentCache {
    posteriors: HashMap<String, (Vec<f32>, Vec<f32>)>,
    shape: [usize; 3],
    scaling_factor: f64,
}

impl LatentCache {
    /// An empty cache for a VAE with this `scaling_factor`.
    pub fn new(scaling_factor: f64) -> Self {
        Self {
            posteriors: HashMap::new(),
            shape: [0; 3],
            scaling_factor,
        }
    }

    /// Frames cached.
    pub fn len(&self) -> usize {
        self.posteriors.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.posteriors.is_empty()
    }

    /// Whether frame `id` is cached.
    pub fn contains(&self, id: &str) -> bool {
        self.posteriors.contains_key(id)
    }

    /// `[c, h, w]` of one latent (zeros while empty).
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    /// Encodes `images` (resized to `resolution`², Pillow-style bilinear) with the VAE and
    /// caches their posteriors under `ids`.
    pub fn encode<B: Backend>(
        &mut self,
        vae: &AutoencoderKL<B>,
        ids: &[String],
        images: &[RgbImage],
        resolution: u32,
        device: &Device<B>,
    ) -> Result<()> {
        if ids.len() != images.len() {
            return Err(Error::InvalidInput(format!(
                "latent cache: {} ids for {} images",
                ids.len(),
                images.len()
            )));
        }
        if ids.is_empty() {
            return Ok(());
        }
        let resized: Vec<RgbImage> = images
            .iter()
            .map(|im| super::data::resize(im, resolution))
            .collect();
        let x = super::data::images_to_tensor::<B>(resized.iter(), resolution, device);
        let post = vae.encode(x);
        let [_, c, h, w] = post.mean.dims();
        self.shape = [c, h, w];
        let host = |t: Tensor<B, 4>| -> Result<Vec<f32>> {
            t.into_data()
                .convert::<f32>()
                .to_vec()
                .map_err(|e| Error::InvalidInput(format!("VAE posterior: {e:?}")))
        };
        let mu = host(post.mean.clone())?;
        let sd = host(post.std())?;
        let per = c * h * w;
        for (k, id) in ids.iter().enumerate() {
            self.posteriors.insert(
                id.clone(),
                (
                    mu[k * per..(k + 1) * per].to_vec(),
                    sd[k * per..(k + 1) * per].to_vec(),
                ),
            );
        }
        Ok(())
    }

    /// The latents `scaling · (μ + σ ε₀)` of frames `ids`, `[n, c, h, w]`.
    pub fn sample<B: Backend>(
        &self,
        ids: &[String],
        rng: &mut ChaCha8Rng,
        device: &Device<B>,
    ) -> Result<Tensor<B, 4>> {
        let [c, h, w] = self.shape;
        let mut data = Vec::with_capacity(ids.len() * c * h * w);
        for id in ids {
            let (mu, std) = self
                .posteriors
                .get(id)
                .ok_or_else(|| Error::InvalidInput(format!("no cached latent for frame {id}")))?;
            for (m, s) in mu.iter().zip(std) {
                let e: f32 = rand_distr::Distribution::sample(&rand_distr::StandardNormal, rng);
                data.push((m + s * e) * self.scaling_factor as f32);
            }
        }
        Ok(Tensor::from_data(
            TensorData::new(data, [ids.len(), c, h, w]),
            device,
        ))
    }
}

/// One draw of the forward process for a batch of clean latents `z`: `(x_t, ε, t)`, with
/// `t ~ U[0, ᾱ.len())` per item (ε is drawn before the timesteps).
pub fn add_training_noise<B: Backend>(
    z: Tensor<B, 4>,
    alphas_cumprod: &[f64],
    rng: &mut ChaCha8Rng,
    device: &Device<B>,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 1>) {
    let n = z.dims()[0];
    let eps = normal::<B, 4>(rng, z.dims(), device);
    let ts: Vec<usize> = (0..n)
        .map(|_| rng.random_range(0..alphas_cumprod.len()))
        .collect();
    let coef = |f: &dyn Fn(f64) -> f64| {
        Tensor::<B, 1>::from_data(
            TensorData::new(
                ts.iter()
                    .map(|&t| f(alphas_cumprod[t]) as f32)
                    .collect::<Vec<_>>(),
                [n],
            ),
            device,
        )
        .reshape([n, 1, 1, 1])
    };
    let noisy = z * coef(&|a| a.sqrt()) + eps.clone() * coef(&|a| (1.0 - a).sqrt());
    let t = Tensor::<B, 1>::from_data(
        TensorData::new(ts.iter().map(|&t| t as f32).collect::<Vec<_>>(), [n]),
        device,
    );
    (noisy, eps, t)
}
