//! Euler's method on the probability-flow ODE in σ form (Karras, Aittala, Aila & Laine,
//! "Elucidating the Design Space of Diffusion-Based Generative Models", 2022,
//! <https://arxiv.org/abs/2206.00364>, algorithm 2 without churn). Mirrors diffusers'
//! `EulerDiscreteScheduler` (`schedulers/scheduling_euler_discrete.py`), itself a port of
//! k-diffusion's `sample_euler`.

use std::path::Path;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use storygpt_core::{ConfigFile, NoiseScheduler, NoiseSource, PredictionType, Result};

use super::sigmas::{
    index_for_timestep, interp, karras_sigmas, log_sigmas, sigma_table, sigma_to_t,
};
use super::{
    SchedulerBaseConfig, TimestepSpacing, check_num_inference_steps, invalid, per_sample,
    read_config, spaced_timesteps,
};

/// How the last σ of the schedule is chosen (diffusers' `final_sigmas_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalSigmasType {
    /// σ = 0: the last step lands on the clean sample.
    #[default]
    Zero,
    /// The smallest training σ, σ_0.
    SigmaMin,
}

/// `scheduler_config.json` of an `EulerDiscreteScheduler`, with diffusers' defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EulerDiscreteSchedulerConfig {
    /// The keys every scheduler shares.
    #[serde(flatten)]
    pub common: SchedulerBaseConfig,
    /// How σ is read off the table between timesteps (default `linear`, the only one supported;
    /// `log_linear` is rejected).
    #[serde(default = "default_interpolation")]
    pub interpolation_type: String,
    /// Use Karras et al.'s σ spacing (default false).
    #[serde(default)]
    pub use_karras_sigmas: bool,
    /// Exponential σ spacing (default false; `true` is not supported).
    #[serde(default)]
    pub use_exponential_sigmas: bool,
    /// Beta-distribution σ spacing (default false; `true` is not supported).
    #[serde(default)]
    pub use_beta_sigmas: bool,
    /// Lower end of the Karras σ range (default null: the smallest training σ).
    #[serde(default)]
    pub sigma_min: Option<f64>,
    /// Upper end of the Karras σ range (default null: the largest training σ).
    #[serde(default)]
    pub sigma_max: Option<f64>,
    /// Default `linspace`.
    #[serde(default = "default_spacing")]
    pub timestep_spacing: TimestepSpacing,
    /// `discrete` (default) or `continuous` (σ-valued timesteps for v-models; not supported).
    #[serde(default = "default_timestep_type")]
    pub timestep_type: String,
    /// Default `zero`.
    #[serde(default)]
    pub final_sigmas_type: FinalSigmasType,
}

fn default_interpolation() -> String {
    "linear".into()
}
fn default_timestep_type() -> String {
    "discrete".into()
}
fn default_spacing() -> TimestepSpacing {
    TimestepSpacing::Linspace
}

impl Default for EulerDiscreteSchedulerConfig {
    fn default() -> Self {
        Self {
            common: SchedulerBaseConfig::default(),
            interpolation_type: default_interpolation(),
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            sigma_min: None,
            sigma_max: None,
            timestep_spacing: default_spacing(),
            timestep_type: default_timestep_type(),
            final_sigmas_type: FinalSigmasType::default(),
        }
    }
}

impl ConfigFile for EulerDiscreteSchedulerConfig {
    const FILE_NAME: &'static str = super::CONFIG_FILE;

    fn validate(&self) -> std::result::Result<(), String> {
        self.common.validate()?;
        if self.interpolation_type != "linear" {
            return Err(format!(
                "interpolation_type `{}` is not supported (only `linear`)",
                self.interpolation_type
            ));
        }
        if self.timestep_type != "discrete" {
            return Err(format!(
                "timestep_type `{}` is not supported (only `discrete`)",
                self.timestep_type
            ));
        }
        if self.use_exponential_sigmas || self.use_beta_sigmas {
            return Err("use_exponential_sigmas / use_beta_sigmas = true are not supported".into());
        }
        Ok(())
    }

    fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        read_config(path.as_ref())
    }
}

/// Euler sampling in σ space (diffusers' `EulerDiscreteScheduler`).
#[derive(Debug, Clone)]
pub struct EulerDiscreteScheduler {
    /// The config it was built from.
    pub config: EulerDiscreteSchedulerConfig,
    /// ᾱ_t for t = 0..T (float32 values).
    pub alphas_cumprod: Vec<f64>,
    /// σ at each timestep of the schedule plus the final σ (float32 values), descending.
    pub sigmas: Vec<f64>,
    /// The timesteps to visit (float32 values; fractional with Karras σ's or `linspace`).
    pub timesteps: Vec<f64>,
    /// `None` until [`NoiseScheduler::set_timesteps`].
    pub num_inference_steps: Option<usize>,
    /// Index of the next step, set by the first `step` from its timestep.
    pub step_index: Option<usize>,
}

impl EulerDiscreteScheduler {
    /// Builds the scheduler over all T training timesteps, as diffusers' constructor does.
    pub fn new(config: EulerDiscreteSchedulerConfig) -> Result<Self> {
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
        Self::new(EulerDiscreteSchedulerConfig::from_dir(dir)?)
    }

    /// The step index for `timestep`: the running counter, or where `timestep` sits in the
    /// schedule before the first step.
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

impl<B: Backend> NoiseScheduler<B> for EulerDiscreteScheduler {
    fn num_train_timesteps(&self) -> usize {
        self.config.common.num_train_timesteps
    }

    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        let c = &self.config;
        let n = num_inference_steps;
        check_num_inference_steps(n, c.common.num_train_timesteps)?;
        // 1. Timesteps as float32 (`linspace` ones are not rounded).
        let timesteps: Vec<f64> = spaced_timesteps(
            c.timestep_spacing,
            n,
            c.common.num_train_timesteps,
            c.common.steps_offset,
        )
        .into_iter()
        .map(|t| f64::from(t as f32))
        .collect();
        super::check_timesteps_in_range(&timesteps, c.common.num_train_timesteps)?;

        // 2. σ at those timesteps, interpolated in the training table.
        let table = sigma_table(&self.alphas_cumprod);
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| interp(t, &table)).collect();

        // 3. Karras spacing: n σ's between the ends, and the timesteps they map back to.
        let timesteps = if c.use_karras_sigmas {
            let sigma_min = c.sigma_min.unwrap_or(sigmas[sigmas.len() - 1]);
            let sigma_max = c.sigma_max.unwrap_or(sigmas[0]);
            sigmas = karras_sigmas(sigma_min, sigma_max, n);
            let logs = log_sigmas(&table);
            sigmas
                .iter()
                .map(|&s| f64::from(sigma_to_t(s, &logs) as f32))
                .collect()
        } else {
            timesteps
        };

        // 4. The final σ, then everything rounded to float32.
        sigmas.push(match c.final_sigmas_type {
            FinalSigmasType::Zero => 0.0,
            FinalSigmasType::SigmaMin => f64::from(table[0]),
        });
        self.sigmas = sigmas.into_iter().map(|s| f64::from(s as f32)).collect();
        self.timesteps = timesteps;
        self.num_inference_steps = Some(n);
        self.step_index = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// The largest σ (`linspace`, `trailing`), or √(σ_max² + 1) (`leading`, whose first
    /// timestep is below T − 1).
    fn init_noise_sigma(&self) -> f64 {
        let max_sigma = self.sigmas.iter().copied().fold(0.0, f64::max);
        match self.config.timestep_spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max_sigma,
            TimestepSpacing::Leading => (max_sigma * max_sigma + 1.0).sqrt(),
        }
    }

    /// `x / √(σ² + 1)`: the variance-preserving input the ε-model was trained on.
    fn scale_model_input(&self, sample: Tensor<B, 4>, timestep: f64) -> Tensor<B, 4> {
        let sigma = self.sigmas[self.index(timestep)];
        sample.div_scalar((sigma * sigma + 1.0).sqrt())
    }

    /// | symbol | diffusers | meaning |
    /// |---|---|---|
    /// | x | `sample` | the current sample, x = x₀ + σ ε (not variance-preserving) |
    /// | σ_i, σ_{i+1} | `sigmas[step_index]`, `sigmas[step_index + 1]` | this and the next noise level |
    /// | D(x; σ) | `pred_original_sample` | the denoised estimate |
    /// | d | `derivative` | dx/dσ = (x − D) / σ, eq. 3 of Karras et al. |
    ///
    /// Without churn (γ = 0, as in every diffusers pipeline) σ̂ = σ_i.
    ///
    /// # Panics
    /// If `timestep` is not in the schedule on the first call, or after the last step.
    fn step(
        &mut self,
        model_output: Tensor<B, 4>,
        timestep: f64,
        sample: Tensor<B, 4>,
        _noise: &mut dyn NoiseSource<B>,
    ) -> Tensor<B, 4> {
        let i = self.index(timestep);
        let sigma = self.sigmas[i];

        // 1. D(x; σ) from the prediction (ε: x − σ ε; v: −σ/√(σ²+1) v + x/(σ²+1)).
        let pred_original_sample = match self.config.common.prediction_type {
            PredictionType::Epsilon => sample.clone() - model_output.mul_scalar(sigma),
            PredictionType::VPrediction => {
                model_output.mul_scalar(-sigma / (sigma * sigma + 1.0).sqrt())
                    + sample.clone().div_scalar(sigma * sigma + 1.0)
            }
            PredictionType::Sample => model_output,
        };

        // 2. d = (x − D) / σ, eq. 3.
        let derivative = (sample.clone() - pred_original_sample).div_scalar(sigma);

        // 3. One Euler step to σ_{i+1}: x' = x + d (σ_{i+1} − σ), algorithm 2, line 8.
        let dt = self.sigmas[i + 1] - sigma;
        self.step_index = Some(i + 1);
        sample + derivative.mul_scalar(dt)
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
    use storygpt_core::Error;

    fn euler(extra: &str) -> EulerDiscreteScheduler {
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), &sd_config("EulerDiscreteScheduler", extra));
        EulerDiscreteScheduler::from_dir(dir.path()).unwrap()
    }

    fn set(s: &mut EulerDiscreteScheduler, n: usize) -> Result<()> {
        NoiseScheduler::<TB>::set_timesteps(s, n)
    }

    #[test]
    fn linspace_timesteps_and_init_noise_sigma() {
        // offline-assets.md §2.3: [999.0, 888.0, …, 0.0], init_noise_sigma 14.614647.
        let mut s = euler("");
        set(&mut s, 10).unwrap();
        assert_eq!(
            s.timesteps,
            [999., 888., 777., 666., 555., 444., 333., 222., 111., 0.]
        );
        let sigma = NoiseScheduler::<TB>::init_noise_sigma(&s);
        assert!((sigma - 14.614647).abs() < 1e-6, "{sigma}");
        assert_eq!(s.sigmas.len(), 11);
        assert_eq!(s.sigmas[10], 0.0);
    }

    #[test]
    fn fractional_and_other_spacings_match_diffusers() {
        let mut s = euler("");
        set(&mut s, 25).unwrap();
        assert_eq!(&s.timesteps[..5], [999.0, 957.375, 915.75, 874.125, 832.5]);
        assert_eq!(s.timesteps[24], 0.0);
        let mut s = euler(r#""timestep_spacing": "trailing""#);
        set(&mut s, 7).unwrap();
        assert_eq!(s.timesteps, [999., 856., 713., 570., 428., 285., 142.]);
        let mut s = euler(r#""timestep_spacing": "leading", "steps_offset": 1"#);
        set(&mut s, 7).unwrap();
        assert_eq!(s.timesteps, [853., 711., 569., 427., 285., 143., 1.]);
        // diffusers: 6.6463 = √(σ(853)² + 1).
        let sigma = NoiseScheduler::<TB>::init_noise_sigma(&s);
        assert!((sigma - 6.6463).abs() < 1e-4, "{sigma}");
    }

    #[test]
    fn zero_and_too_many_steps_are_errors() {
        let mut s = euler("");
        for n in [0, 1001] {
            let err = set(&mut s, n).unwrap_err();
            assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
        }
    }

    #[test]
    fn unsupported_options_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        for extra in [
            r#""interpolation_type": "log_linear""#,
            r#""timestep_type": "continuous""#,
            r#""use_beta_sigmas": true"#,
        ] {
            write_config(dir.path(), &sd_config("EulerDiscreteScheduler", extra));
            let err = EulerDiscreteScheduler::from_dir(dir.path()).unwrap_err();
            assert!(
                matches!(err, Error::InvalidConfig { .. }),
                "{extra}: {err:?}"
            );
        }
    }

    #[test]
    fn sigma_min_final_sigma() {
        let mut s = euler(r#""final_sigmas_type": "sigma_min""#);
        set(&mut s, 10).unwrap();
        assert!((s.sigmas[10] - 0.029_167).abs() < 1e-6, "{}", s.sigmas[10]);
    }
}
