//! DDIM: Song, Meng & Ermon, "Denoising Diffusion Implicit Models" (2020),
//! <https://arxiv.org/abs/2010.02502>. Mirrors diffusers' `DDIMScheduler`
//! (`schedulers/scheduling_ddim.py`): deterministic for η = 0, stochastic for η > 0.

use std::path::Path;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use storygpt_core::{ConfigFile, NoiseScheduler, NoiseSource, PredictionType, Result};

use super::{
    SchedulerBaseConfig, TimestepSpacing, add_noise_alpha, check_num_inference_steps,
    check_timesteps_in_range, default_one, default_true, invalid, read_config, spaced_timesteps,
    table_index,
};

/// `scheduler_config.json` of a `DDIMScheduler`, with diffusers' defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DdimSchedulerConfig {
    /// The keys every scheduler shares.
    #[serde(flatten)]
    pub common: SchedulerBaseConfig,
    /// Clip the predicted x₀ to ±`clip_sample_range` (default true; SD 1.x false).
    #[serde(default = "default_true")]
    pub clip_sample: bool,
    /// Default 1.0.
    #[serde(default = "default_one")]
    pub clip_sample_range: f64,
    /// Use ᾱ = 1 after the last step (default true); otherwise ᾱ_0 (SD 1.x: false).
    #[serde(default = "default_true")]
    pub set_alpha_to_one: bool,
    /// Dynamic thresholding (Imagen); default false, `true` is not supported.
    #[serde(default)]
    pub thresholding: bool,
    /// Default `leading`.
    #[serde(default = "default_spacing")]
    pub timestep_spacing: TimestepSpacing,
}

fn default_spacing() -> TimestepSpacing {
    TimestepSpacing::Leading
}

impl Default for DdimSchedulerConfig {
    fn default() -> Self {
        Self {
            common: SchedulerBaseConfig::default(),
            clip_sample: true,
            clip_sample_range: 1.0,
            set_alpha_to_one: true,
            thresholding: false,
            timestep_spacing: default_spacing(),
        }
    }
}

impl DdimSchedulerConfig {
    /// DDIM as SD 1.x pipelines swap it in: SD betas, `steps_offset` 1, `set_alpha_to_one` and
    /// `clip_sample` false (the keys of `runwayml/stable-diffusion-v1-5/scheduler`).
    pub fn sd_v1() -> Self {
        Self {
            common: SchedulerBaseConfig {
                steps_offset: 1,
                ..SchedulerBaseConfig::sd_v1()
            },
            clip_sample: false,
            set_alpha_to_one: false,
            ..Self::default()
        }
    }
}

impl ConfigFile for DdimSchedulerConfig {
    const FILE_NAME: &'static str = super::CONFIG_FILE;

    fn validate(&self) -> std::result::Result<(), String> {
        self.common.validate()?;
        if self.thresholding {
            return Err("thresholding = true (dynamic thresholding) is not supported".into());
        }
        Ok(())
    }

    fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        read_config(path.as_ref())
    }
}

/// DDIM sampling (diffusers' `DDIMScheduler`).
#[derive(Debug, Clone)]
pub struct DdimScheduler {
    /// The config it was built from.
    pub config: DdimSchedulerConfig,
    /// η of eq. 16: 0 is deterministic DDIM, 1 is DDPM-like ancestral sampling. Not a config
    /// key: diffusers takes it as an argument of `step` (the pipelines' `eta`), default 0.
    pub eta: f64,
    /// ᾱ_t for t = 0..T (float32 values).
    pub alphas_cumprod: Vec<f64>,
    /// ᾱ after the last step: 1 with `set_alpha_to_one`, else ᾱ_0.
    pub final_alpha_cumprod: f64,
    /// The timesteps to visit, descending.
    pub timesteps: Vec<f64>,
    /// `None` until [`NoiseScheduler::set_timesteps`].
    pub num_inference_steps: Option<usize>,
}

impl DdimScheduler {
    /// Builds the scheduler with η = 0 and the training timesteps, as diffusers' constructor does.
    pub fn new(config: DdimSchedulerConfig) -> Result<Self> {
        config.validate().map_err(invalid)?;
        let alphas_cumprod = config.common.alphas_cumprod();
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        let t = config.common.num_train_timesteps;
        Ok(Self {
            eta: 0.0,
            alphas_cumprod,
            final_alpha_cumprod,
            timesteps: (0..t).rev().map(|t| t as f64).collect(),
            num_inference_steps: None,
            config,
        })
    }

    /// Reads `dir/scheduler_config.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::new(DdimSchedulerConfig::from_dir(dir)?)
    }

    /// Sets η (eq. 16); η > 0 draws noise at every step.
    pub fn with_eta(mut self, eta: f64) -> Self {
        self.eta = eta;
        self
    }
}

impl<B: Backend> NoiseScheduler<B> for DdimScheduler {
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
        .map(f64::round_ties_even)
        .collect();
        check_timesteps_in_range(&timesteps, c.common.num_train_timesteps)?;
        self.timesteps = timesteps;
        self.num_inference_steps = Some(num_inference_steps);
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// | symbol | diffusers | meaning |
    /// |---|---|---|
    /// | x_t | `sample` | the current sample |
    /// | ε_θ, v_θ | `model_output` | the model's prediction |
    /// | x̂₀, ε̂ | `pred_original_sample`, `pred_epsilon` | predicted clean sample and noise |
    /// | ᾱ_t, ᾱ_{t−Δ} | `alpha_prod_t`, `alpha_prod_t_prev` | ∏(1 − β) now and one stride Δ = T / n earlier |
    /// | σ_t | `std_dev_t` | η · √(variance), eq. 16 |
    /// | "direction pointing to x_t" | `pred_sample_direction` | √(1 − ᾱ_{t−Δ} − σ_t²) · ε̂ |
    ///
    /// # Panics
    /// Before [`NoiseScheduler::set_timesteps`] (diffusers raises too).
    fn step(
        &mut self,
        model_output: Tensor<B, 4>,
        timestep: f64,
        sample: Tensor<B, 4>,
        noise: &mut dyn NoiseSource<B>,
    ) -> Tensor<B, 4> {
        let c = &self.config;
        let n = self
            .num_inference_steps
            .expect("DdimScheduler::step called before set_timesteps");

        // 1. The previous timestep, one stride back whatever the spacing (diffusers' choice).
        let prev_timestep = timestep - (c.common.num_train_timesteps / n) as f64;

        // 2. ᾱ_t and ᾱ_{t−Δ}.
        let alpha_prod_t = self.alphas_cumprod[table_index(timestep, self.alphas_cumprod.len())];
        let alpha_prod_t_prev = if prev_timestep >= 0.0 {
            self.alphas_cumprod[prev_timestep as usize]
        } else {
            self.final_alpha_cumprod
        };
        let beta_prod_t = 1.0 - alpha_prod_t;

        // 3. x̂₀ ("predicted x_0" of eq. 12) and ε̂ from the prediction.
        let (pred_original_sample, pred_epsilon) = match c.common.prediction_type {
            PredictionType::Epsilon => (
                (sample.clone() - model_output.clone().mul_scalar(beta_prod_t.sqrt()))
                    .div_scalar(alpha_prod_t.sqrt()),
                model_output,
            ),
            PredictionType::Sample => {
                let eps = (sample.clone() - model_output.clone().mul_scalar(alpha_prod_t.sqrt()))
                    .div_scalar(beta_prod_t.sqrt());
                (model_output, eps)
            }
            PredictionType::VPrediction => (
                sample.clone().mul_scalar(alpha_prod_t.sqrt())
                    - model_output.clone().mul_scalar(beta_prod_t.sqrt()),
                model_output.mul_scalar(alpha_prod_t.sqrt())
                    + sample.clone().mul_scalar(beta_prod_t.sqrt()),
            ),
        };

        // 4. Clip x̂₀.
        let pred_original_sample = if c.clip_sample {
            pred_original_sample.clamp(-c.clip_sample_range, c.clip_sample_range)
        } else {
            pred_original_sample
        };

        // 5. σ_t = η √((1 − ᾱ_{t−Δ}) / (1 − ᾱ_t) · (1 − ᾱ_t / ᾱ_{t−Δ})), eq. 16.
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let variance = (beta_prod_t_prev / beta_prod_t) * (1.0 - alpha_prod_t / alpha_prod_t_prev);
        let std_dev_t = self.eta * variance.sqrt();

        // 6. The direction pointing to x_t, eq. 12.
        let pred_sample_direction =
            pred_epsilon.mul_scalar((1.0 - alpha_prod_t_prev - std_dev_t.powi(2)).sqrt());

        // 7. x_{t−Δ} = √ᾱ_{t−Δ} x̂₀ + direction (+ σ_t z when η > 0), eq. 12.
        let prev_sample =
            pred_original_sample.mul_scalar(alpha_prod_t_prev.sqrt()) + pred_sample_direction;
        if self.eta > 0.0 {
            let z = noise.noise(prev_sample.dims(), &prev_sample.device());
            prev_sample + z.mul_scalar(std_dev_t)
        } else {
            prev_sample
        }
    }

    fn add_noise(
        &self,
        original: Tensor<B, 4>,
        noise: Tensor<B, 4>,
        timesteps: &[f64],
    ) -> Tensor<B, 4> {
        add_noise_alpha(&self.alphas_cumprod, original, noise, timesteps)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use storygpt_core::Error;

    fn ddim(extra: &str) -> DdimScheduler {
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), &sd_config("DDIMScheduler", extra));
        DdimScheduler::from_dir(dir.path()).unwrap()
    }

    fn timesteps(s: &mut DdimScheduler, n: usize) -> Vec<f64> {
        NoiseScheduler::<TB>::set_timesteps(s, n).unwrap();
        s.timesteps.clone()
    }

    #[test]
    fn five_steps_with_offset_one() {
        // diffusers' test_scheduler_ddim: `test_steps_offset`.
        let mut s = ddim(r#""steps_offset": 1"#);
        assert_eq!(timesteps(&mut s, 5), [801., 601., 401., 201., 1.]);
    }

    #[test]
    fn spacings_match_diffusers() {
        // Values printed by diffusers 0.42.1 (`DDIMScheduler(timestep_spacing=...)`).
        let mut s = ddim(r#""steps_offset": 1"#);
        assert_eq!(
            timesteps(&mut s, 10),
            [901., 801., 701., 601., 501., 401., 301., 201., 101., 1.]
        );
        let mut s = ddim(r#""timestep_spacing": "linspace""#);
        assert_eq!(
            timesteps(&mut s, 7),
            [999., 832., 666., 500., 333., 166., 0.]
        );
        let mut s = ddim(r#""timestep_spacing": "trailing""#);
        assert_eq!(
            timesteps(&mut s, 7),
            [999., 856., 713., 570., 428., 285., 142.]
        );
        assert_eq!(timesteps(&mut s, 3), [999., 666., 332.]);
        let mut s = ddim(r#""timestep_spacing": "linspace""#);
        assert_eq!(timesteps(&mut s, 4), [999., 666., 333., 0.]);
    }

    #[test]
    fn zero_and_too_many_steps_are_errors() {
        let mut s = ddim("");
        for n in [0, 1001] {
            let err = NoiseScheduler::<TB>::set_timesteps(&mut s, n).unwrap_err();
            assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
            assert!(err.to_string().contains(&n.to_string()), "{err}");
        }
        let msg = NoiseScheduler::<TB>::set_timesteps(&mut s, 1001)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("1000"), "{msg}");
    }

    #[test]
    fn offset_pushing_past_the_last_training_step_is_an_error() {
        // leading, 1000 steps, steps_offset 1 → first timestep 1000 (diffusers: IndexError later).
        let mut s = ddim(r#""steps_offset": 1"#);
        let err = NoiseScheduler::<TB>::set_timesteps(&mut s, 1000).unwrap_err();
        assert!(err.to_string().contains("timestep 1000"), "{err}");
    }

    #[test]
    fn thresholding_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        write_config(
            dir.path(),
            &sd_config("DDIMScheduler", r#""thresholding": true"#),
        );
        let err = DdimScheduler::from_dir(dir.path()).unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
        assert!(err.to_string().contains("thresholding"), "{err}");
    }

    #[test]
    fn final_alpha_follows_set_alpha_to_one() {
        assert_eq!(ddim("").final_alpha_cumprod, 1.0);
        let s = ddim(r#""set_alpha_to_one": false"#);
        assert_eq!(s.final_alpha_cumprod, s.alphas_cumprod[0]);
    }

    #[test]
    fn sd_v1_preset_matches_the_hub_keys() {
        let c = DdimSchedulerConfig::sd_v1();
        assert_eq!(c.common.steps_offset, 1);
        assert!(!c.clip_sample && !c.set_alpha_to_one);
        assert_eq!(c.common.beta_start, 0.00085);
    }
}
