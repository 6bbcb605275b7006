use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::Result;

/// What the denoiser predicts (diffusers' `prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    /// The added noise ε (SD 1.x).
    #[default]
    Epsilon,
    /// v = α·ε − σ·x₀ (SD 2.x 768).
    #[serde(rename = "v_prediction")]
    VPrediction,
    /// The clean sample x₀.
    Sample,
}

/// A source of Gaussian noise for stochastic schedulers and initial latents.
///
/// Injected rather than drawn from a global RNG, so trajectories are reproducible and tests
/// can supply exactly the noise the Python reference used.
pub trait NoiseSource<B: Backend> {
    /// Draws standard-normal noise of `shape` on `device`.
    fn noise(&mut self, shape: [usize; 4], device: &B::Device) -> Tensor<B, 4>;
}

/// Standard-normal noise from a seeded ChaCha8 generator, drawn on the host so that the same
/// seed gives the same numbers on every backend.
#[derive(Debug, Clone)]
pub struct SeededNoise {
    rng: ChaCha8Rng,
}

impl SeededNoise {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }
}

impl<B: Backend> NoiseSource<B> for SeededNoise {
    fn noise(&mut self, shape: [usize; 4], device: &B::Device) -> Tensor<B, 4> {
        let n = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| StandardNormal.sample(&mut self.rng))
            .collect();
        Tensor::from_data(TensorData::new(values, shape), device)
    }
}

/// A diffusion noise schedule: training-time noising and sampling steps (diffusers'
/// `SchedulerMixin`).
///
/// Schedulers are plain data (`Vec<f64>` tables, no tensors, no device); only the methods
/// that combine samples touch tensors. Multistep history lives in the scheduler, so a
/// scheduler instance serves one sampling run at a time; `set_timesteps` resets it.
pub trait NoiseScheduler<B: Backend> {
    /// Number of diffusion steps the model was trained with (1000 for SD).
    fn num_train_timesteps(&self) -> usize;

    /// Prepares `num_inference_steps` sampling steps and resets multistep state.
    ///
    /// Errors with [`crate::Error::InvalidInput`] when the count is 0 or exceeds
    /// [`NoiseScheduler::num_train_timesteps`].
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()>;

    /// The timesteps to visit, in order (some schedulers repeat one, e.g. PLMS).
    fn timesteps(&self) -> &[f64];

    /// Standard deviation of the initial latents (1 for DDPM/DDIM, σ_max for Euler).
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// Scales the denoiser input at `timestep` (identity except for σ-parameterised
    /// schedulers such as Euler).
    fn scale_model_input(&self, sample: Tensor<B, 4>, _timestep: f64) -> Tensor<B, 4> {
        sample
    }

    /// One reverse step from `timestep`: x_t → x_{t-1}.
    ///
    /// Call it once per entry of [`NoiseScheduler::timesteps`], in order, passing that entry:
    /// multistep schedulers (PLMS, DPM-Solver++) and the σ-parameterised ones (Euler) keep a step
    /// counter and history, as diffusers does.
    ///
    /// # Shapes
    /// `model_output` and `sample` are `[batch, c, h, w]`; returns the same shape. Stochastic
    /// schedulers draw their noise from `noise`.
    ///
    /// # Panics
    /// On misuse that diffusers also rejects: a `timestep` that is not one of the scheduler's
    /// timesteps, more calls than there are timesteps, or (for the schedulers that need it) no
    /// [`NoiseScheduler::set_timesteps`] beforehand.
    fn step(
        &mut self,
        model_output: Tensor<B, 4>,
        timestep: f64,
        sample: Tensor<B, 4>,
        noise: &mut dyn NoiseSource<B>,
    ) -> Tensor<B, 4>;

    /// Forward process for training: `√ᾱ_t · x₀ + √(1−ᾱ_t) · ε`, one timestep per sample
    /// (σ-parameterised schedulers: `x₀ + σ_t · ε`, with σ_t looked up in the current schedule).
    ///
    /// Timesteps are `f64` like [`NoiseScheduler::timesteps`], so schedule entries pass through
    /// unchanged (Euler's are fractional with Karras sigmas); the discrete schedulers (DDPM,
    /// DDIM, PNDM) take any integer `0 ≤ t < num_train_timesteps`.
    ///
    /// # Shapes
    /// `original` and `noise` are `[batch, c, h, w]`; `timesteps.len() == batch`.
    ///
    /// # Panics
    /// If `timesteps.len() != batch`, or a timestep is not valid for the scheduler (see above).
    fn add_noise(
        &self,
        original: Tensor<B, 4>,
        noise: Tensor<B, 4>,
        timesteps: &[f64],
    ) -> Tensor<B, 4>;
}
