//! Ancestral Euler sampling in σ space: an Euler step down to σ_down followed by fresh noise of
//! size σ_up, so that σ_down² + σ_up² = σ_{i+1}² (k-diffusion's `sample_euler_ancestral`, after
//! Karras et al. 2022, <https://arxiv.org/abs/2206.00364>). Mirrors diffusers'
//! `EulerAncestralDiscreteScheduler` (`schedulers/scheduling_euler_ancestral_discrete.py`).

use std::path::Path;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use storygpt_core::{ConfigFile, NoiseScheduler, NoiseSource, PredictionType, Result};

use super::sigmas::{index_for_timestep, interp, sigma_table};
use super::{
    SchedulerBaseConfig, TimestepSpacing, check_num_inference_steps, check_timesteps_in_range,
    invalid, per_sample, read_config, spaced_timesteps,
};

/// `scheduler_config.json` of an `EulerAncestralDiscreteScheduler`, with diffusers' defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EulerAncestralDiscreteSchedulerConfig {
    /// The keys every scheduler shares (`prediction_type`: `epsilon` or `v_prediction`).
    #[serde(flatten)]
    pub common: SchedulerBaseConfig,
    /// Default `linspace`.
    #[serde(default = "default_spacing")]
    pub timestep_spacing: TimestepSpacing,
}

fn default_spacing() -> TimestepSpacing {
    TimestepSpacing::Linspace
}

impl Default for EulerAncestralDiscreteSchedulerConfig {
    fn default() -> Self {
        Self {
            common: SchedulerBaseConfig::default(),
            timestep_spacing: default_spacing(),
        }
    }
}

impl ConfigFile for EulerAncestralDiscreteSchedulerConfig {
    const FILE_NAME: &'static str = super::CONFIG_FILE;

    fn validate(&self) -> std::result::Result<(), String> {
        self.common.validate()?;
        if self.common.prediction_type == PredictionType::Sample {
            return Err(
                "prediction_type `sample` is not supported by Euler-ancestral \
                        (diffusers raises NotImplementedError)"
                    .into(),
            );
        }
        Ok(())
    }

    fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        read_config(path.as_ref())
    }
}

/// Ancestral Euler sampling (diffusers' `EulerAncestralDiscreteScheduler`).
#[derive(Debug, Clone)]
pub struct EulerAncestralDiscreteScheduler {
    /// The config it was built from.
    pub config: EulerAncestralDiscreteSchedulerConfig,
    /// ᾱ_t for t = 0..T (float32 values).
    pub alphas_cumprod: Vec<f64>,
    /// σ at each timestep of the schedule plus a final 0 (float32 values), descending.
    pub sigmas: Vec<f64>,
    /// The timesteps to visit (float32 values).
    pub timesteps: Vec<f64>,
    /// `None` until [`NoiseScheduler::set_timesteps`].
    pub num_inference_steps: Option<usize>,
    /// Index of the next step, set by the first `step` from its timestep.
    pub step_index: Option<usize>,
}

impl EulerAncestralDiscreteScheduler {
    /// Builds the scheduler over all T training timesteps, as diffusers' constructor does.
    pub fn new(config: EulerAncestralDiscreteSchedulerConfig) -> Result<Self> {
        config.validate().map_err(invalid)?;
        let alphas_cumprod = config.common.alphas_cumprod();
        let t = config.common.num_train_timesteps;
        let mut sigmas: Vec<f64> = sigma_table(&alphas_cumprod)
            .into_iter()
            .rev()
            .map(f64::from)
            .collect();
        sigmas.push(0.0);
        Ok(Self {
            config,
            alphas_cumprod,
            sigmas,
            timesteps: (0..t).rev().map(|t| t as f64).collect(),
            num_inference_steps: None,
            step_index: None,
        })
    }

    /// Reads `dir/scheduler_config.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::new(EulerAncestralDiscreteSchedulerConfig::from_dir(dir)?)
    }

    fn index(&self, timestep: f64) -> usize {
        self.step_index.unwrap_or_else(|| {
            index_for_timestep(&self.timesteps, timestep).unwrap_or_else(|| {
                panic!(
                    "timestep {timestep} is not in the schedule {:?}",
                    self.timesteps
                )
            })
        })
    }
}

impl<B: Backend> NoiseScheduler<B> for EulerAncestralDiscreteScheduler {
    fn num_train_timesteps(&self) -> usize {
        self.config.common.num_train_timesteps
    }

    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        let c = &self.config;
        check_num_inference_steps(num_inference_steps, c.common.num_train_timesteps)?;
        let timesteps: Vec<f64> = spaced_timesteps(
            c.timestep_spacing,
            num_inference_steps,
            c.common.num_train_timesteps,
            c.common.steps_offset,
        )
        .into_iter()
        .map(|t| f64::from(t as f32))
        .collect();
        check_timesteps_in_range(&timesteps, c.common.num_train_timesteps)?;
        let table = sigma_table(&self.alphas_cumprod);
        self.sigmas = timesteps
            .iter()
            .map(|&t| interp(t, &table))
            .chain([0.0])
            .map(|s| f64::from(s as f32))
            .collect();
        self.timesteps = timesteps;
        self.num_inference_steps = Some(num_inference_steps);
        self.step_index = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// The largest σ (`linspace`, `trailing`), or √(σ_max² + 1) (`leading`).
    fn init_noise_sigma(&self) -> f64 {
        let max_sigma = self.sigmas.iter().copied().fold(0.0, f64::max);
        match self.config.timestep_spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max_sigma,
            TimestepSpacing::Leading => (max_sigma * max_sigma + 1.0).sqrt(),
        }
    }

    /// `x / √(σ² + 1)`.
    fn scale_model_input(&self, sample: Tensor<B, 4>, timestep: f64) -> Tensor<B, 4> {
        let sigma = self.sigmas[self.index(timestep)];
        sample.div_scalar((sigma * sigma + 1.0).sqrt())
    }

    /// | symbol | diffusers | meaning |
    /// |---|---|---|
    /// | x | `sample` | the current sample, x = x₀ + σ ε |
    /// | σ, σ_{i+1} | `sigma_from`, `sigma_to` | this and the next noise level |
    /// | D(x; σ) | `pred_original_sample` | the denoised estimate |
    /// | σ_up, σ_down | `sigma_up`, `sigma_down` | fresh noise, and the deterministic target |
    /// | z | `noise` | standard normal, drawn at every step (also the last, where σ_up = 0) |
    ///
    /// # Panics
    /// If `timestep` is not in the schedule on the first call, or after the last step.
    fn step(
        &mut self,
        model_output: Tensor<B, 4>,
        timestep: f64,
        sample: Tensor<B, 4>,
        noise: &mut dyn NoiseSource<B>,
    ) -> Tensor<B, 4> {
        let i = self.index(timestep);
        let sigma = self.sigmas[i];

        // 1. D(x; σ) from the prediction.
        let pred_original_sample = match self.config.common.prediction_type {
            PredictionType::Epsilon => sample.clone() - model_output.mul_scalar(sigma),
            PredictionType::VPrediction => {
                model_output.mul_scalar(-sigma / (sigma * sigma + 1.0).sqrt())
                    + sample.clone().div_scalar(sigma * sigma + 1.0)
            }
            PredictionType::Sample => {
                unreachable!("rejected by EulerAncestralDiscreteSchedulerConfig::validate")
            }
        };

        // 2. Split σ_{i+1}² into a deterministic part σ_down² and fresh noise σ_up²:
        //    σ_up = √(σ_{i+1}² (σ² − σ_{i+1}²) / σ²), σ_down = √(σ_{i+1}² − σ_up²).
        let (sigma_from, sigma_to) = (sigma, self.sigmas[i + 1]);
        let sigma_up = (sigma_to.powi(2) * (sigma_from.powi(2) - sigma_to.powi(2))
            / sigma_from.powi(2))
        .sqrt();
        let sigma_down = (sigma_to.powi(2) - sigma_up.powi(2)).sqrt();

        // 3. Euler step to σ_down: x' = x + (x − D)/σ · (σ_down − σ).
        let derivative = (sample.clone() - pred_original_sample).div_scalar(sigma);
        let dt = sigma_down - sigma;
        let prev_sample = sample + derivative.mul_scalar(dt);

        // 4. Add σ_up z.
        let z = noise.noise(prev_sample.dims(), &prev_sample.device());
        self.step_index = Some(i + 1);
        prev_sample + z.mul_scalar(sigma_up)
    }

    /// `x₀ + σ_t ε`, σ_t looked up at `timesteps` in the current schedule.
    fn add_noise(
        &self,
        original: Tensor<B, 4>,
        noise: Tensor<B, 4>,
        timesteps: &[f64],
    ) -> Tensor<B, 4> {
        let sigmas = timesteps
            .iter()
            .map(|&t| {
                let i = index_for_timestep(&self.timesteps, t).unwrap_or_else(|| {
                    panic!(
                        "add_noise: timestep {t} is not in the schedule {:?}",
                        self.timesteps
                    )
                });
                self.sigmas[i]
            })
            .collect();
        let sigma = per_sample(sigmas, &original);
        original + noise * sigma
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use storygpt_core::{Error, SeededNoise};

    fn euler_a(extra: &str) -> EulerAncestralDiscreteScheduler {
        let dir = tempfile::tempdir().unwrap();
        write_config(
            dir.path(),
            &sd_config("EulerAncestralDiscreteScheduler", extra),
        );
        EulerAncestralDiscreteScheduler::from_dir(dir.path()).unwrap()
    }

    #[test]
    fn timesteps_and_sigmas() {
        let mut s = euler_a("");
        NoiseScheduler::<TB>::set_timesteps(&mut s, 10).unwrap();
        assert_eq!(
            s.timesteps,
            [999., 888., 777., 666., 555., 444., 333., 222., 111., 0.]
        );
        assert!((s.sigmas[0] - 14.614647).abs() < 1e-6);
        assert_eq!(s.sigmas[10], 0.0);
    }

    #[test]
    fn zero_and_too_many_steps_are_errors() {
        let mut s = euler_a("");
        for n in [0, 1001] {
            let err = NoiseScheduler::<TB>::set_timesteps(&mut s, n).unwrap_err();
            assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
        }
    }

    #[test]
    fn draws_noise_at_every_step() {
        struct Count(usize, SeededNoise);
        impl NoiseSource<TB> for Count {
            fn noise(
                &mut self,
                shape: [usize; 4],
                device: &burn::tensor::Device<TB>,
            ) -> Tensor<TB, 4> {
                self.0 += 1;
                NoiseSource::<TB>::noise(&mut self.1, shape, device)
            }
        }
        let mut s = euler_a("");
        NoiseScheduler::<TB>::set_timesteps(&mut s, 4).unwrap();
        let mut x = Tensor::<TB, 4>::ones([1, 1, 2, 2], &default_device());
        let mut noise = Count(0, SeededNoise::new(0));
        for t in s.timesteps.clone() {
            x = s.step(x.clone() * 0.1, t, x, &mut noise);
        }
        assert_eq!(noise.0, 4);
    }
}
