//! DDPM: Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models" (2020),
//! <https://arxiv.org/abs/2006.11239>. Mirrors diffusers' `DDPMScheduler`
//! (`schedulers/scheduling_ddpm.py`): ancestral sampling and the forward process used in
//! training (`add_noise`).

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

/// The variance of the reverse step (diffusers' `variance_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VarianceType {
    /// σ_t² = β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t, the posterior variance (DDPM's lower bound).
    #[default]
    FixedSmall,
    /// β̃_t, applied through its log (`exp(0.5 · log β̃_t)`).
    FixedSmallLog,
    /// σ_t² = β_t (DDPM's upper bound).
    FixedLarge,
    /// β_t, applied through its log. diffusers 0.42.1 returns NaN here (it takes the square root
    /// of `log β_t` < 0); this port applies the evident intent, `σ_t = exp(0.5 · log β_t)`.
    FixedLargeLog,
    /// Predicted by the model (extra output channels); not supported.
    Learned,
    /// Interpolated between the two bounds by the model; not supported.
    LearnedRange,
}

/// `scheduler_config.json` of a `DDPMScheduler`, with diffusers' defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DdpmSchedulerConfig {
    /// The keys every scheduler shares.
    #[serde(flatten)]
    pub common: SchedulerBaseConfig,
    /// Default `fixed_small`.
    #[serde(default)]
    pub variance_type: VarianceType,
    /// Clip the predicted x₀ to ±`clip_sample_range` (default true).
    #[serde(default = "default_true")]
    pub clip_sample: bool,
    /// Default 1.0.
    #[serde(default = "default_one")]
    pub clip_sample_range: f64,
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

impl Default for DdpmSchedulerConfig {
    fn default() -> Self {
        Self {
            common: SchedulerBaseConfig::default(),
            variance_type: VarianceType::default(),
            clip_sample: true,
            clip_sample_range: 1.0,
            thresholding: false,
            timestep_spacing: default_spacing(),
        }
    }
}

impl ConfigFile for DdpmSchedulerConfig {
    const FILE_NAME: &'static str = super::CONFIG_FILE;

    fn validate(&self) -> std::result::Result<(), String> {
        self.common.validate()?;
        if self.thresholding {
            return Err("thresholding = true (dynamic thresholding) is not supported".into());
        }
        if matches!(
            self.variance_type,
            VarianceType::Learned | VarianceType::LearnedRange
        ) {
            return Err(format!(
                "variance_type {:?} (a model that predicts its variance) is not supported",
                self.variance_type
            ));
        }
        Ok(())
    }

    fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        read_config(path.as_ref())
    }
}

/// DDPM ancestral sampling (diffusers' `DDPMScheduler`).
#[derive(Debug, Clone)]
pub struct DdpmScheduler {
    /// The config it was built from.
    pub config: DdpmSchedulerConfig,
    /// ᾱ_t for t = 0..T (float32 values).
    pub alphas_cumprod: Vec<f64>,
    /// The timesteps to visit, descending.
    pub timesteps: Vec<f64>,
    /// `None` until [`NoiseScheduler::set_timesteps`]; then steps go from one timestep to the
    /// next in `timesteps`, otherwise from t to t − 1.
    pub num_inference_steps: Option<usize>,
}

impl DdpmScheduler {
    /// Builds the scheduler over all T training timesteps, as diffusers' constructor does.
    pub fn new(config: DdpmSchedulerConfig) -> Result<Self> {
        config.validate().map_err(invalid)?;
        let t = config.common.num_train_timesteps;
        Ok(Self {
            alphas_cumprod: config.common.alphas_cumprod(),
            timesteps: (0..t).rev().map(|t| t as f64).collect(),
            num_inference_steps: None,
            config,
        })
    }

    /// Reads `dir/scheduler_config.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::new(DdpmSchedulerConfig::from_dir(dir)?)
    }

    /// The timestep after `t` in the schedule, −1 at the end (diffusers' `previous_timestep`).
    fn previous_timestep(&self, t: f64) -> f64 {
        if self.num_inference_steps.is_none() {
            return t - 1.0;
        }
        let i = self
            .timesteps
            .iter()
            .position(|&s| s == t)
            .unwrap_or_else(|| panic!("timestep {t} is not in the schedule {:?}", self.timesteps));
        self.timesteps.get(i + 1).copied().unwrap_or(-1.0)
    }
}

impl<B: Backend> NoiseScheduler<B> for DdpmScheduler {
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
    /// | x̂₀ | `pred_original_sample` | the predicted clean sample |
    /// | ᾱ_t, ᾱ_{t'} | `alpha_prod_t`, `alpha_prod_t_prev` | ∏(1 − β) at t and at the next timestep t' |
    /// | β_t | `current_beta_t` | 1 − ᾱ_t / ᾱ_{t'}, the effective β of this (possibly strided) step |
    /// | μ̃_t | `pred_prev_sample` | the posterior mean of x_{t'} |
    fn step(
        &mut self,
        model_output: Tensor<B, 4>,
        timestep: f64,
        sample: Tensor<B, 4>,
        noise: &mut dyn NoiseSource<B>,
    ) -> Tensor<B, 4> {
        let c = &self.config;
        let t = timestep;
        let prev_t = self.previous_timestep(t);

        // 1. ᾱ_t, ᾱ_{t'} (1 past the end), and this step's β_t.
        let alpha_prod_t = self.alphas_cumprod[table_index(t, self.alphas_cumprod.len())];
        let alpha_prod_t_prev = if prev_t >= 0.0 {
            self.alphas_cumprod[prev_t as usize]
        } else {
            1.0
        };
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let current_alpha_t = alpha_prod_t / alpha_prod_t_prev;
        let current_beta_t = 1.0 - current_alpha_t;

        // 2. x̂₀ from the prediction, eq. 15: x̂₀ = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t.
        let pred_original_sample = match c.common.prediction_type {
            PredictionType::Epsilon => (sample.clone()
                - model_output.mul_scalar(beta_prod_t.sqrt()))
            .div_scalar(alpha_prod_t.sqrt()),
            PredictionType::Sample => model_output,
            PredictionType::VPrediction => {
                sample.clone().mul_scalar(alpha_prod_t.sqrt())
                    - model_output.mul_scalar(beta_prod_t.sqrt())
            }
        };

        // 3. Clip x̂₀.
        let pred_original_sample = if c.clip_sample {
            pred_original_sample.clamp(-c.clip_sample_range, c.clip_sample_range)
        } else {
            pred_original_sample
        };

        // 4. Coefficients of x̂₀ and x_t in the posterior mean, eq. 7:
        //    μ̃_t = √ᾱ_{t'} β_t / (1−ᾱ_t) · x̂₀ + √α_t (1−ᾱ_{t'}) / (1−ᾱ_t) · x_t.
        let pred_original_sample_coeff = alpha_prod_t_prev.sqrt() * current_beta_t / beta_prod_t;
        let current_sample_coeff = current_alpha_t.sqrt() * beta_prod_t_prev / beta_prod_t;

        // 5. μ̃_t.
        let pred_prev_sample = pred_original_sample.mul_scalar(pred_original_sample_coeff)
            + sample.mul_scalar(current_sample_coeff);

        // 6. Add σ_t z, except at t = 0 (algorithm 2, line 4).
        if t > 0.0 {
            let posterior_variance = (beta_prod_t_prev / beta_prod_t * current_beta_t).max(1e-20);
            let std_dev = match c.variance_type {
                VarianceType::FixedSmall => posterior_variance.sqrt(),
                VarianceType::FixedSmallLog => (0.5 * posterior_variance.ln()).exp(),
                VarianceType::FixedLarge => current_beta_t.sqrt(),
                VarianceType::FixedLargeLog => (0.5 * current_beta_t.ln()).exp(),
                VarianceType::Learned | VarianceType::LearnedRange => {
                    unreachable!("rejected by DdpmSchedulerConfig::validate")
                }
            };
            let z = noise.noise(pred_prev_sample.dims(), &pred_prev_sample.device());
            pred_prev_sample + z.mul_scalar(std_dev)
        } else {
            pred_prev_sample
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
    use storygpt_core::{Error, SeededNoise};

    fn sd_ddpm(extra: &str) -> DdpmScheduler {
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), &sd_config("DDPMScheduler", extra));
        DdpmScheduler::from_dir(dir.path()).unwrap()
    }

    fn set(s: &mut DdpmScheduler, n: usize) -> Result<()> {
        NoiseScheduler::<TB>::set_timesteps(s, n)
    }

    #[test]
    fn defaults_are_diffusers() {
        let c: DdpmSchedulerConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, DdpmSchedulerConfig::default());
        assert_eq!(c.common.beta_schedule, super::super::BetaSchedule::Linear);
        assert!(c.clip_sample);
    }

    #[test]
    fn timesteps_per_spacing() {
        // diffusers: DDPMScheduler(...).set_timesteps(10).timesteps for each spacing.
        let mut s = sd_ddpm("");
        set(&mut s, 10).unwrap();
        assert_eq!(
            s.timesteps,
            [900., 800., 700., 600., 500., 400., 300., 200., 100., 0.]
        );
        let mut s = sd_ddpm(r#""timestep_spacing": "linspace""#);
        set(&mut s, 10).unwrap();
        assert_eq!(
            s.timesteps,
            [999., 888., 777., 666., 555., 444., 333., 222., 111., 0.]
        );
        let mut s = sd_ddpm(r#""timestep_spacing": "trailing""#);
        set(&mut s, 10).unwrap();
        assert_eq!(
            s.timesteps,
            [999., 899., 799., 699., 599., 499., 399., 299., 199., 99.]
        );
    }

    #[test]
    fn zero_and_too_many_steps_are_errors_naming_both_numbers() {
        let mut s = sd_ddpm("");
        let err = set(&mut s, 0).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
        let msg = set(&mut s, 1001).unwrap_err().to_string();
        assert!(msg.contains("1001") && msg.contains("1000"), "{msg}");
    }

    #[test]
    fn thresholding_and_learned_variance_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        write_config(
            dir.path(),
            &sd_config("DDPMScheduler", r#""thresholding": true"#),
        );
        let err = DdpmScheduler::from_dir(dir.path()).unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
        assert!(err.to_string().contains("thresholding"), "{err}");
        write_config(
            dir.path(),
            &sd_config("DDPMScheduler", r#""variance_type": "learned_range""#),
        );
        let err = DdpmScheduler::from_dir(dir.path()).unwrap_err();
        assert!(err.to_string().contains("LearnedRange"), "{err}");
    }

    #[test]
    fn fixed_large_log_equals_fixed_large() {
        let device = default_device();
        let x = Tensor::<TB, 4>::ones([1, 1, 2, 2], &device);
        let mut out = Vec::new();
        for variance in ["fixed_large", "fixed_large_log"] {
            let mut s = sd_ddpm(&format!(r#""variance_type": "{variance}""#));
            set(&mut s, 10).unwrap();
            let prev = s.step(x.clone() * 0.1, 900.0, x.clone(), &mut SeededNoise::new(0));
            out.push(prev.into_data().to_vec::<f32>().unwrap());
        }
        for (a, b) in out[0].iter().zip(&out[1]) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
            assert!(a.is_finite());
        }
    }

    #[test]
    fn steps_without_set_timesteps_go_from_t_to_t_minus_1() {
        let s = sd_ddpm("");
        assert_eq!(s.previous_timestep(10.0), 9.0);
        assert_eq!(NoiseScheduler::<TB>::timesteps(&s).len(), 1000);
    }
}
