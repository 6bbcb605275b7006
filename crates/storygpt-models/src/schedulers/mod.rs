//! Noise schedulers (diffusers' `scheduling_*.py`), one file per algorithm, with exact parity to
//! diffusers 0.42.1:
//!
//! | file | diffusers class | paper |
//! |---|---|---|
//! | [`ddpm`] | `DDPMScheduler` | Ho et al. 2020, <https://arxiv.org/abs/2006.11239> |
//! | [`ddim`] | `DDIMScheduler` | Song et al. 2020, <https://arxiv.org/abs/2010.02502> |
//! | [`pndm`] | `PNDMScheduler` (PLMS and PRK) | Liu et al. 2022, <https://arxiv.org/abs/2202.09778> |
//! | [`euler_discrete`] | `EulerDiscreteScheduler` | Karras et al. 2022, <https://arxiv.org/abs/2206.00364> |
//! | [`euler_ancestral`] | `EulerAncestralDiscreteScheduler` | k-diffusion's `sample_euler_ancestral` |
//! | [`dpm_solver_multistep`] | `DPMSolverMultistepScheduler` (DPM-Solver++) | Lu et al. 2022, <https://arxiv.org/abs/2211.01095> |
//!
//! Each scheduler has a config that mirrors `scheduler_config.json` (diffusers' key names and
//! per-class defaults; the keys every class shares sit in [`SchedulerBaseConfig`], flattened in),
//! and is plain data: `Vec<f64>` tables, no device. Only the multistep history of PNDM and
//! DPM-Solver++ holds tensors. [`load_scheduler`] builds whichever class `_class_name` names.
//!
//! **Numerics.** diffusers keeps `betas`, `alphas_cumprod` and the σ tables as float32; the
//! tables here hold exactly those float32 values (as `f64`), computed the way torch computes
//! them ([`torch_linspace_f32`], a cumulative product accumulated in f64), so timesteps and ᾱ
//! match bit for bit, and σ to one float32 ulp (torch's CPU `sqrt` is not correctly rounded).
//! Step coefficients are then computed in f64 from those values (diffusers
//! does that arithmetic on 0-d float32 tensors; the difference is below 1e-6 relative) and
//! applied to the tensors in their own dtype.

pub mod ddim;
pub mod ddpm;
pub mod dpm_solver_multistep;
pub mod euler_ancestral;
pub mod euler_discrete;
mod json;
pub mod pndm;
mod ranges;
mod sigmas;

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};
use storygpt_core::{Error, NoiseScheduler, PredictionType, Result};

use json::read_scheduler_json;
pub(crate) use json::{json_f64, read_config};
pub use ranges::torch_linspace_f32;
pub(crate) use ranges::{numpy_arange, numpy_linspace, spaced_timesteps};

pub use ddim::{DdimScheduler, DdimSchedulerConfig};
pub use ddpm::{DdpmScheduler, DdpmSchedulerConfig, VarianceType};
pub use dpm_solver_multistep::{
    AlgorithmType, DpmSolverMultistepScheduler, DpmSolverMultistepSchedulerConfig, SolverType,
};
pub use euler_ancestral::{EulerAncestralDiscreteScheduler, EulerAncestralDiscreteSchedulerConfig};
pub use euler_discrete::{EulerDiscreteScheduler, EulerDiscreteSchedulerConfig};
pub use pndm::{PndmScheduler, PndmSchedulerConfig};

/// The config file of a scheduler folder.
pub const CONFIG_FILE: &str = "scheduler_config.json";

/// How β_t grows over the training timesteps (diffusers' `beta_schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// `linspace(beta_start, beta_end)` (DDPM).
    #[default]
    Linear,
    /// `linspace(√beta_start, √beta_end)²` (Stable Diffusion).
    ScaledLinear,
    /// Nichol & Dhariwal's cosine ᾱ(t), β capped at 0.999 (`betas_for_alpha_bar`).
    SquaredcosCapV2,
}

/// How the inference timesteps are picked from the training ones (diffusers'
/// `timestep_spacing`, table 2 of <https://arxiv.org/abs/2305.08891>).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    /// Evenly spaced over `[0, T-1]`, both ends included.
    Linspace,
    /// Multiples of `T / n` from 0, plus `steps_offset` (SD 1.x: `[901, …, 1]`).
    Leading,
    /// Multiples of `T / n` counted down from T, minus 1 (`[999, …, 99]`).
    Trailing,
}

/// The `scheduler_config.json` keys every scheduler here shares, with diffusers' defaults (the
/// same in all six classes). Flattened into each scheduler's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulerBaseConfig {
    /// `_class_name`: the diffusers class that wrote the file, when it came from one.
    #[serde(
        rename = "_class_name",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub class_name: Option<String>,
    /// Number of diffusion steps the model was trained with (default 1000).
    #[serde(default = "default_num_train_timesteps")]
    pub num_train_timesteps: usize,
    /// β of the first training step (default 0.0001; SD 1.x 0.00085).
    #[serde(default = "default_beta_start")]
    pub beta_start: f64,
    /// β of the last training step (default 0.02; SD 1.x 0.012).
    #[serde(default = "default_beta_end")]
    pub beta_end: f64,
    /// Default `linear`; SD 1.x `scaled_linear`.
    #[serde(default)]
    pub beta_schedule: BetaSchedule,
    /// Explicit betas, one per training step; overrides the three keys above (default null).
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    /// What the model predicts (default `epsilon`).
    #[serde(default)]
    pub prediction_type: PredictionType,
    /// Added to the `leading` timesteps (default 0; SD 1.x 1).
    #[serde(default)]
    pub steps_offset: usize,
    /// Zero-terminal-SNR rescaling of the betas (default false; `true` is not supported).
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
}

fn default_num_train_timesteps() -> usize {
    1000
}
fn default_beta_start() -> f64 {
    0.0001
}
fn default_beta_end() -> f64 {
    0.02
}
fn default_one() -> f64 {
    1.0
}
fn default_true() -> bool {
    true
}

impl Default for SchedulerBaseConfig {
    fn default() -> Self {
        Self {
            class_name: None,
            num_train_timesteps: default_num_train_timesteps(),
            beta_start: default_beta_start(),
            beta_end: default_beta_end(),
            beta_schedule: BetaSchedule::default(),
            trained_betas: None,
            prediction_type: PredictionType::default(),
            steps_offset: 0,
            rescale_betas_zero_snr: false,
        }
    }
}

impl SchedulerBaseConfig {
    /// SD 1.x's betas: `scaled_linear` from 0.00085 to 0.012 over 1000 steps
    /// (`runwayml/stable-diffusion-v1-5/scheduler/scheduler_config.json`).
    pub fn sd_v1() -> Self {
        Self {
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            ..Self::default()
        }
    }

    /// Checks the shared keys; the message names the offending one.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let t = self.num_train_timesteps;
        if t == 0 {
            return Err("num_train_timesteps must be at least 1, got 0".into());
        }
        if self.rescale_betas_zero_snr {
            return Err(
                "rescale_betas_zero_snr = true (zero-terminal-SNR betas) is not supported".into(),
            );
        }
        match &self.trained_betas {
            Some(betas) => {
                if betas.len() != t {
                    return Err(format!(
                        "trained_betas has {} values, num_train_timesteps is {t}",
                        betas.len()
                    ));
                }
                if let Some(b) = betas.iter().find(|b| !(0.0..1.0).contains(*b)) {
                    return Err(format!("trained_betas must lie in [0, 1), found {b}"));
                }
            }
            None => {
                for (name, b) in [("beta_start", self.beta_start), ("beta_end", self.beta_end)] {
                    if !(0.0..1.0).contains(&b) {
                        return Err(format!("{name} must lie in [0, 1), got {b}"));
                    }
                }
            }
        }
        Ok(())
    }

    /// β_t for t = 0..T as diffusers stores them (float32).
    pub fn betas(&self) -> Vec<f32> {
        let t = self.num_train_timesteps;
        if let Some(betas) = &self.trained_betas {
            return betas.iter().map(|&b| b as f32).collect();
        }
        match self.beta_schedule {
            BetaSchedule::Linear => torch_linspace_f32(self.beta_start, self.beta_end, t),
            BetaSchedule::ScaledLinear => {
                torch_linspace_f32(self.beta_start.sqrt(), self.beta_end.sqrt(), t)
                    .into_iter()
                    .map(|b| b * b)
                    .collect()
            }
            BetaSchedule::SquaredcosCapV2 => {
                // `betas_for_alpha_bar`: Python floats, then one cast to float32.
                let alpha_bar = |x: f64| {
                    ((x + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
                        .cos()
                        .powi(2)
                };
                (0..t)
                    .map(|i| {
                        let (t1, t2) = (i as f64 / t as f64, (i + 1) as f64 / t as f64);
                        (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
                    })
                    .collect()
            }
        }
    }

    /// ᾱ_t = ∏_{s≤t} (1 − β_s) for t = 0..T, as float32 values: `1 - betas` in float32, then
    /// `torch.cumprod`, which accumulates in double on the CPU and rounds each output.
    pub fn alphas_cumprod(&self) -> Vec<f64> {
        let mut acc = 1.0f64;
        self.betas()
            .into_iter()
            .map(|beta| {
                acc *= f64::from(1.0f32 - beta);
                f64::from(acc as f32)
            })
            .collect()
    }
}

/// `set_timesteps`' argument check, shared by every scheduler.
pub(crate) fn check_num_inference_steps(n: usize, num_train_timesteps: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::InvalidInput(
            "num_inference_steps must be at least 1, got 0".into(),
        ));
    }
    if n > num_train_timesteps {
        return Err(Error::InvalidInput(format!(
            "num_inference_steps ({n}) cannot be larger than num_train_timesteps \
             ({num_train_timesteps}): the model was trained on {num_train_timesteps} timesteps"
        )));
    }
    Ok(())
}

/// Checks that spaced timesteps index the training tables (`leading` with a `steps_offset` can
/// push the first one to T, which diffusers only notices when it indexes `alphas_cumprod`).
pub(crate) fn check_timesteps_in_range(
    timesteps: &[f64],
    num_train_timesteps: usize,
) -> Result<()> {
    match timesteps
        .iter()
        .find(|&&t| !(0.0..num_train_timesteps as f64).contains(&t))
    {
        Some(t) => Err(Error::InvalidInput(format!(
            "timestep {t} lies outside the training range 0..{num_train_timesteps} \
             (check steps_offset against num_inference_steps)"
        ))),
        None => Ok(()),
    }
}

/// A training-table index from a discrete timestep.
///
/// # Panics
/// If `t` is not an integer in `0..len` (see [`NoiseScheduler::step`]).
pub(crate) fn table_index(t: f64, len: usize) -> usize {
    assert!(
        t.fract() == 0.0 && (0.0..len as f64).contains(&t),
        "timestep {t} is not an integer in 0..{len}"
    );
    t as usize
}

/// A `[batch, 1, 1, 1]` tensor of per-sample factors in `like`'s dtype and device, for
/// broadcasting over `[batch, c, h, w]`.
///
/// # Panics
/// If there is not one value per sample (the `add_noise` contract).
pub(crate) fn per_sample<B: Backend>(values: Vec<f64>, like: &Tensor<B, 4>) -> Tensor<B, 4> {
    let n = values.len();
    let batch = like.dims()[0];
    assert_eq!(n, batch, "add_noise: {n} timesteps for a batch of {batch}");
    let values: Vec<f32> = values.into_iter().map(|v| v as f32).collect();
    Tensor::from_data(
        TensorData::new(values, [n, 1, 1, 1]),
        (&like.device(), like.dtype()),
    )
}

/// `add_noise` of the ᾱ-parameterised schedulers (DDPM, DDIM, PNDM): eq. 4 of DDPM,
/// `x_t = √ᾱ_t · x₀ + √(1−ᾱ_t) · ε`.
pub(crate) fn add_noise_alpha<B: Backend>(
    alphas_cumprod: &[f64],
    original: Tensor<B, 4>,
    noise: Tensor<B, 4>,
    timesteps: &[f64],
) -> Tensor<B, 4> {
    let alpha_prod: Vec<f64> = timesteps
        .iter()
        .map(|&t| alphas_cumprod[table_index(t, alphas_cumprod.len())])
        .collect();
    let sqrt_alpha_prod = per_sample(alpha_prod.iter().map(|a| a.sqrt()).collect(), &original);
    let sqrt_one_minus_alpha_prod = per_sample(
        alpha_prod.iter().map(|a| (1.0 - a).sqrt()).collect(),
        &original,
    );
    original * sqrt_alpha_prod + noise * sqrt_one_minus_alpha_prod
}

/// An in-memory config's validation error.
pub(crate) fn invalid(message: String) -> Error {
    Error::InvalidConfig {
        path: None,
        message,
    }
}

/// The scheduler classes [`load_scheduler`] can build, by diffusers class name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulerKind {
    /// `DDPMScheduler`.
    Ddpm,
    /// `DDIMScheduler`.
    Ddim,
    /// `PNDMScheduler` (SD 1.x's default).
    Pndm,
    /// `EulerDiscreteScheduler`.
    EulerDiscrete,
    /// `EulerAncestralDiscreteScheduler`.
    EulerAncestralDiscrete,
    /// `DPMSolverMultistepScheduler`.
    DpmSolverMultistep,
}

impl SchedulerKind {
    /// Every kind, in the order of the table in the module docs.
    pub const ALL: [SchedulerKind; 6] = [
        Self::Ddpm,
        Self::Ddim,
        Self::Pndm,
        Self::EulerDiscrete,
        Self::EulerAncestralDiscrete,
        Self::DpmSolverMultistep,
    ];

    /// The diffusers class name (`_class_name` in `scheduler_config.json`).
    pub fn class_name(self) -> &'static str {
        match self {
            Self::Ddpm => "DDPMScheduler",
            Self::Ddim => "DDIMScheduler",
            Self::Pndm => "PNDMScheduler",
            Self::EulerDiscrete => "EulerDiscreteScheduler",
            Self::EulerAncestralDiscrete => "EulerAncestralDiscreteScheduler",
            Self::DpmSolverMultistep => "DPMSolverMultistepScheduler",
        }
    }

    /// The kind whose diffusers class is `name`, if supported.
    pub fn from_class_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.class_name() == name)
    }

    /// The kind that `dir/scheduler_config.json` names in `_class_name`.
    ///
    /// Errors: [`Error::MissingConfigField`] without `_class_name`, [`Error::InvalidConfig`]
    /// naming an unsupported class, [`Error::Io`] / [`Error::Json`] for an unreadable file.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        #[derive(Deserialize)]
        struct ClassName {
            #[serde(rename = "_class_name")]
            class_name: String,
        }
        let path = dir.as_ref().join(CONFIG_FILE);
        let ClassName { class_name } = read_scheduler_json(&path)?;
        Self::from_class_name(&class_name).ok_or_else(|| {
            let supported: Vec<_> = Self::ALL.iter().map(|k| k.class_name()).collect();
            Error::InvalidConfig {
                path: Some(path.clone()),
                message: format!(
                    "unknown scheduler class `_class_name` = `{class_name}` (supported: {})",
                    supported.join(", ")
                ),
            }
        })
    }
}

/// Builds the scheduler that `dir/scheduler_config.json` names in `_class_name`.
///
/// Errors: those of [`SchedulerKind::from_dir`] and of the class's `from_dir`.
pub fn load_scheduler<B: Backend>(dir: impl AsRef<Path>) -> Result<Box<dyn NoiseScheduler<B>>> {
    load_scheduler_as(SchedulerKind::from_dir(&dir)?, dir)
}

/// Builds a `kind` scheduler from `dir/scheduler_config.json` whatever class wrote it, the way
/// diffusers swaps schedulers (`DDIMScheduler.from_config(pipe.scheduler.config)`): keys the
/// class does not know are ignored and missing ones take its defaults.
pub fn load_scheduler_as<B: Backend>(
    kind: SchedulerKind,
    dir: impl AsRef<Path>,
) -> Result<Box<dyn NoiseScheduler<B>>> {
    let dir = dir.as_ref();
    Ok(match kind {
        SchedulerKind::Ddpm => Box::new(DdpmScheduler::from_dir(dir)?),
        SchedulerKind::Ddim => Box::new(DdimScheduler::from_dir(dir)?),
        SchedulerKind::Pndm => Box::new(PndmScheduler::<B>::from_dir(dir)?),
        SchedulerKind::EulerDiscrete => Box::new(EulerDiscreteScheduler::from_dir(dir)?),
        SchedulerKind::EulerAncestralDiscrete => {
            Box::new(EulerAncestralDiscreteScheduler::from_dir(dir)?)
        }
        SchedulerKind::DpmSolverMultistep => {
            Box::new(DpmSolverMultistepScheduler::<B>::from_dir(dir)?)
        }
    })
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Helpers for the scheduler unit tests.
    use std::path::Path;

    pub use storygpt_core::backend::{DefaultBackend as TB, default_device};

    /// Writes `json` as `dir/scheduler_config.json`.
    pub fn write_config(dir: &Path, json: &str) {
        std::fs::write(dir.join(super::CONFIG_FILE), json).unwrap();
    }

    /// A config with SD 1.x's betas plus `extra` (a JSON object body without braces).
    pub fn sd_config(class: &str, extra: &str) -> String {
        let sep = if extra.is_empty() { "" } else { ", " };
        format!(
            r#"{{"_class_name": "{class}", "beta_start": 0.00085, "beta_end": 0.012,
                "beta_schedule": "scaled_linear", "num_train_timesteps": 1000{sep}{extra}}}"#
        )
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;

    #[test]
    fn sd_alphas_cumprod_end_points() {
        // diffusers: alphas_cumprod[0] = 0.99915, alphas_cumprod[999] = 0.0046600 (float32).
        let ac = SchedulerBaseConfig::sd_v1().alphas_cumprod();
        assert_eq!(ac.len(), 1000);
        assert_eq!(ac[0] as f32, 0.99915f32);
        assert!((ac[999] - 0.004_660_0).abs() < 1e-7, "{}", ac[999]);
    }

    #[test]
    fn unknown_class_name_is_a_typed_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), &sd_config("LMSDiscreteScheduler", ""));
        let err = load_scheduler::<TB>(dir.path()).err().unwrap();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("`LMSDiscreteScheduler`") && msg.contains("DDIMScheduler"),
            "{msg}"
        );
    }

    #[test]
    fn missing_class_name_is_a_missing_field() {
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), r#"{"num_train_timesteps": 1000}"#);
        let err = load_scheduler::<TB>(dir.path()).err().unwrap();
        assert!(
            matches!(&err, Error::MissingConfigField { field, .. } if field == "_class_name"),
            "{err:?}"
        );
    }

    #[test]
    fn load_scheduler_dispatches_on_class_name() {
        let dir = tempfile::tempdir().unwrap();
        for kind in SchedulerKind::ALL {
            write_config(
                dir.path(),
                &sd_config(kind.class_name(), r#""steps_offset": 1"#),
            );
            let mut s = load_scheduler::<TB>(dir.path()).unwrap();
            s.set_timesteps(10).unwrap();
            assert_eq!(s.num_train_timesteps(), 1000);
            assert!(!s.timesteps().is_empty(), "{kind:?}");
        }
    }

    #[test]
    fn trained_betas_must_match_num_train_timesteps() {
        let dir = tempfile::tempdir().unwrap();
        write_config(
            dir.path(),
            r#"{"_class_name": "DDIMScheduler", "num_train_timesteps": 3, "trained_betas": [0.1, 0.2]}"#,
        );
        let err = load_scheduler::<TB>(dir.path()).err().unwrap();
        assert!(
            err.to_string().contains("trained_betas has 2 values"),
            "{err}"
        );
    }

    #[test]
    fn rescale_betas_zero_snr_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        write_config(
            dir.path(),
            &sd_config(
                "EulerDiscreteScheduler",
                r#""rescale_betas_zero_snr": true"#,
            ),
        );
        let err = load_scheduler::<TB>(dir.path()).err().unwrap();
        assert!(err.to_string().contains("rescale_betas_zero_snr"), "{err}");
    }
}
