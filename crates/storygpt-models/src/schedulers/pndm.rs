//! PNDM: Liu, Ren, Lin & Zhao, "Pseudo Numerical Methods for Diffusion Models on Manifolds"
//! (ICLR 2022), <https://arxiv.org/abs/2202.09778>. Mirrors diffusers' `PNDMScheduler`
//! (`schedulers/scheduling_pndm.py`): the linear multistep method PLMS (SD 1.x's default, with
//! `skip_prk_steps`) and, without it, three Runge-Kutta (PRK) warm-up steps first.

use std::path::Path;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use storygpt_core::{ConfigFile, Error, NoiseScheduler, NoiseSource, PredictionType, Result};

use super::{
    SchedulerBaseConfig, TimestepSpacing, add_noise_alpha, check_num_inference_steps,
    check_timesteps_in_range, invalid, read_config, spaced_timesteps, table_index,
};

/// `scheduler_config.json` of a `PNDMScheduler`, with diffusers' defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PndmSchedulerConfig {
    /// The keys every scheduler shares (`prediction_type`: `epsilon` or `v_prediction`).
    #[serde(flatten)]
    pub common: SchedulerBaseConfig,
    /// Start PLMS at once, warming up with a 2-point average, instead of three PRK steps
    /// (default false; SD 1.x true).
    #[serde(default)]
    pub skip_prk_steps: bool,
    /// Use ᾱ = 1 after the last step (default false); otherwise ᾱ_0.
    #[serde(default)]
    pub set_alpha_to_one: bool,
    /// Default `leading`.
    #[serde(default = "default_spacing")]
    pub timestep_spacing: TimestepSpacing,
}

fn default_spacing() -> TimestepSpacing {
    TimestepSpacing::Leading
}

impl Default for PndmSchedulerConfig {
    fn default() -> Self {
        Self {
            common: SchedulerBaseConfig::default(),
            skip_prk_steps: false,
            set_alpha_to_one: false,
            timestep_spacing: default_spacing(),
        }
    }
}

impl PndmSchedulerConfig {
    /// SD 1.x's own scheduler (`runwayml/stable-diffusion-v1-5/scheduler/scheduler_config.json`):
    /// SD betas, `skip_prk_steps`, `steps_offset` 1, `set_alpha_to_one` false.
    pub fn sd_v1() -> Self {
        Self {
            common: SchedulerBaseConfig {
                steps_offset: 1,
                ..SchedulerBaseConfig::sd_v1()
            },
            skip_prk_steps: true,
            ..Self::default()
        }
    }
}

impl ConfigFile for PndmSchedulerConfig {
    const FILE_NAME: &'static str = super::CONFIG_FILE;

    fn validate(&self) -> std::result::Result<(), String> {
        self.common.validate()?;
        if self.common.prediction_type == PredictionType::Sample {
            return Err("prediction_type `sample` is not supported by PNDM \
                        (diffusers accepts epsilon and v_prediction)"
                .into());
        }
        Ok(())
    }

    fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        read_config(path.as_ref())
    }
}

/// The PRK / PLMS order: four model outputs per Runge-Kutta step and in the 4-step multistep
/// formula (diffusers' `pndm_order`).
const PNDM_ORDER: usize = 4;

/// PNDM sampling (diffusers' `PNDMScheduler`). Holds the multistep history, so one instance
/// serves one sampling run at a time; [`NoiseScheduler::set_timesteps`] resets it.
#[derive(Debug, Clone)]
pub struct PndmScheduler<B: Backend> {
    /// The config it was built from.
    pub config: PndmSchedulerConfig,
    /// ᾱ_t for t = 0..T (float32 values).
    pub alphas_cumprod: Vec<f64>,
    /// ᾱ after the last step: 1 with `set_alpha_to_one`, else ᾱ_0.
    pub final_alpha_cumprod: f64,
    /// The PRK timesteps (empty with `skip_prk_steps`), which `timesteps` starts with.
    pub prk_timesteps: Vec<f64>,
    /// PRK then PLMS timesteps, in the order `step` expects them; PLMS repeats its second one.
    pub timesteps: Vec<f64>,
    /// `None` until [`NoiseScheduler::set_timesteps`].
    pub num_inference_steps: Option<usize>,
    /// Steps taken since `set_timesteps`.
    pub counter: usize,
    /// History: the last (up to four) model outputs ε at the full steps, oldest first.
    pub ets: Vec<Tensor<B, 4>>,
    /// The sample at the start of the current PRK step, or of the PLMS warm-up step.
    pub cur_sample: Option<Tensor<B, 4>>,
    /// The weighted sum of the current PRK step's model outputs so far (1/6, 1/3, 1/3, 1/6).
    pub cur_model_output: Option<Tensor<B, 4>>,
}

impl<B: Backend> PndmScheduler<B> {
    /// Builds the scheduler with no timesteps yet (as diffusers' constructor does).
    pub fn new(config: PndmSchedulerConfig) -> Result<Self> {
        config.validate().map_err(invalid)?;
        let alphas_cumprod = config.common.alphas_cumprod();
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        Ok(Self {
            config,
            alphas_cumprod,
            final_alpha_cumprod,
            prk_timesteps: Vec::new(),
            timesteps: Vec::new(),
            num_inference_steps: None,
            counter: 0,
            ets: Vec::new(),
            cur_sample: None,
            cur_model_output: None,
        })
    }

    /// Reads `dir/scheduler_config.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::new(PndmSchedulerConfig::from_dir(dir)?)
    }

    /// The stride T / n between full steps.
    fn stride(&self) -> usize {
        self.config.common.num_train_timesteps
            / self
                .num_inference_steps
                .expect("PndmScheduler::step called before set_timesteps")
    }

    /// One of the 4 model evaluations of a PRK step (eq. 13: the classical Runge-Kutta weights
    /// 1/6, 1/3, 1/3, 1/6, at t, t − Δ/2, t − Δ/2 and t − Δ).
    fn step_prk(
        &mut self,
        model_output: Tensor<B, 4>,
        timestep: f64,
        sample: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        let diff_to_prev = if self.counter % 2 == 1 {
            0
        } else {
            self.stride() / 2
        };
        let prev_timestep = timestep - diff_to_prev as f64;
        let timestep = self.prk_timesteps[self.counter / 4 * 4];

        let model_output = match self.counter % 4 {
            0 => {
                self.cur_model_output = Some(model_output.clone().mul_scalar(1.0 / 6.0));
                self.ets.push(model_output.clone());
                self.cur_sample = Some(sample.clone());
                model_output
            }
            1 | 2 => {
                let acc = self.cur_model_output.take().expect("PRK accumulator");
                self.cur_model_output = Some(acc + model_output.clone().mul_scalar(1.0 / 3.0));
                model_output
            }
            _ => {
                let acc = self.cur_model_output.take().expect("PRK accumulator");
                acc + model_output.mul_scalar(1.0 / 6.0)
            }
        };
        let cur_sample = self.cur_sample.clone().unwrap_or(sample);
        let prev_sample = self.prev_sample(cur_sample, timestep, prev_timestep, model_output);
        self.counter += 1;
        prev_sample
    }

    /// A PLMS step: the 4-step Adams-Bashforth combination of ε's (eq. 12), with lower orders
    /// while the history fills up.
    fn step_plms(
        &mut self,
        model_output: Tensor<B, 4>,
        timestep: f64,
        sample: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        let stride = self.stride() as f64;
        let (mut timestep, mut prev_timestep) = (timestep, timestep - stride);
        if self.counter != 1 {
            let keep = self.ets.len().saturating_sub(3);
            self.ets.drain(..keep);
            self.ets.push(model_output.clone());
        } else {
            // The warm-up's second call re-evaluates at t − Δ: step from t again.
            prev_timestep = timestep;
            timestep += stride;
        }

        let e = &self.ets;
        let (model_output, sample) = match (e.len(), self.counter) {
            // Warm-up, first call: an Euler step with ε(x_t, t), remembering x_t.
            (1, 0) => {
                self.cur_sample = Some(sample.clone());
                (model_output, sample)
            }
            // Warm-up, second call: from x_t again, with the average of ε at t and t − Δ.
            (1, 1) => {
                let mo = (model_output + e[0].clone()).div_scalar(2.0);
                (mo, self.cur_sample.take().expect("PLMS warm-up sample"))
            }
            (2, _) => {
                let mo = (e[1].clone().mul_scalar(3.0) - e[0].clone()).div_scalar(2.0);
                (mo, sample)
            }
            (3, _) => {
                let mo = (e[2].clone().mul_scalar(23.0) - e[1].clone().mul_scalar(16.0)
                    + e[0].clone().mul_scalar(5.0))
                .div_scalar(12.0);
                (mo, sample)
            }
            _ => {
                let mo = (e[3].clone().mul_scalar(55.0) - e[2].clone().mul_scalar(59.0)
                    + e[1].clone().mul_scalar(37.0)
                    - e[0].clone().mul_scalar(9.0))
                .mul_scalar(1.0 / 24.0);
                (mo, sample)
            }
        };
        let prev_sample = self.prev_sample(sample, timestep, prev_timestep, model_output);
        self.counter += 1;
        prev_sample
    }

    /// The transfer part φ of PNDM (eq. 9), from `timestep` t to `prev_timestep` t':
    /// `x_{t'} = √(ᾱ_{t'}/ᾱ_t) x_t − (ᾱ_{t'} − ᾱ_t) ε / (ᾱ_t √(1−ᾱ_{t'}) + √(ᾱ_t (1−ᾱ_t) ᾱ_{t'}))`.
    fn prev_sample(
        &self,
        sample: Tensor<B, 4>,
        timestep: f64,
        prev_timestep: f64,
        model_output: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        let alpha_prod_t = self.alphas_cumprod[table_index(timestep, self.alphas_cumprod.len())];
        let alpha_prod_t_prev = if prev_timestep >= 0.0 {
            self.alphas_cumprod[prev_timestep as usize]
        } else {
            self.final_alpha_cumprod
        };
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;

        // v-prediction → ε = √ᾱ_t v + √(1−ᾱ_t) x_t.
        let model_output = match self.config.common.prediction_type {
            PredictionType::VPrediction => {
                model_output.mul_scalar(alpha_prod_t.sqrt())
                    + sample.clone().mul_scalar(beta_prod_t.sqrt())
            }
            PredictionType::Epsilon => model_output,
            PredictionType::Sample => unreachable!("rejected by PndmSchedulerConfig::validate"),
        };

        let sample_coeff = (alpha_prod_t_prev / alpha_prod_t).sqrt();
        let model_output_denom_coeff = alpha_prod_t * beta_prod_t_prev.sqrt()
            + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev).sqrt();
        sample.mul_scalar(sample_coeff)
            - model_output
                .mul_scalar(alpha_prod_t_prev - alpha_prod_t)
                .div_scalar(model_output_denom_coeff)
    }
}

impl<B: Backend> NoiseScheduler<B> for PndmScheduler<B> {
    fn num_train_timesteps(&self) -> usize {
        self.config.common.num_train_timesteps
    }

    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        let c = &self.config;
        let t = c.common.num_train_timesteps;
        check_num_inference_steps(num_inference_steps, t)?;
        if !c.skip_prk_steps && num_inference_steps < PNDM_ORDER {
            return Err(Error::InvalidInput(format!(
                "PNDM with PRK warm-up (skip_prk_steps = false) needs at least {PNDM_ORDER} \
                 inference steps, got {num_inference_steps}"
            )));
        }
        // The full steps, ascending (diffusers' `_timesteps`).
        let full: Vec<f64> = spaced_timesteps(
            c.timestep_spacing,
            num_inference_steps,
            t,
            c.common.steps_offset,
        )
        .into_iter()
        .rev()
        .map(f64::round_ties_even)
        .collect();
        check_timesteps_in_range(&full, t)?;
        let n = full.len();

        let (prk, plms) = if c.skip_prk_steps {
            // [t_0 … t_{n−2}, t_{n−2}, t_{n−1}], reversed: the second timestep twice.
            let mut plms: Vec<f64> = full[..n - 1].to_vec();
            plms.extend_from_slice(&full[n.saturating_sub(2)..n - 1]);
            plms.push(full[n - 1]);
            plms.reverse();
            (Vec::new(), plms)
        } else {
            // The last 4 full steps, each with its half step (+Δ/2), each point twice, dropping
            // the very first and last ones, reversed: 12 calls for 3 Runge-Kutta steps.
            let half = (t / num_inference_steps / 2) as f64;
            let points: Vec<f64> = full[n - PNDM_ORDER..]
                .iter()
                .flat_map(|&s| [s, s + half])
                .collect();
            let mut prk: Vec<f64> = points[..points.len() - 1]
                .iter()
                .flat_map(|&s| [s, s])
                .collect();
            prk = prk[1..prk.len() - 1].to_vec();
            prk.reverse();
            let plms: Vec<f64> = full[..n - 3].iter().rev().copied().collect();
            (prk, plms)
        };
        check_timesteps_in_range(&prk, t)?;
        self.timesteps = prk.iter().chain(&plms).copied().collect();
        self.prk_timesteps = prk;
        self.num_inference_steps = Some(num_inference_steps);
        self.counter = 0;
        self.ets.clear();
        self.cur_sample = None;
        self.cur_model_output = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// | symbol | diffusers | meaning |
    /// |---|---|---|
    /// | x_t | `sample` | the current sample |
    /// | ε_θ | `model_output` | the model's noise prediction (v converted, see `prev_sample`) |
    /// | e_{t−kΔ} | `ets` | the history of ε at the previous full steps |
    /// | Δ | `T // num_inference_steps` | the stride between full steps |
    /// | φ(x_t, ε, t, t') | `_get_prev_sample` | the DDIM-like transfer of eq. 9 |
    ///
    /// 1. PRK phase (`skip_prk_steps = false`, first 12 calls): `step_prk`, eq. 13.
    /// 2. PLMS phase: `step_plms`, eq. 12, warming up with a 2-point average when PRK
    ///    is skipped (which is why the second timestep is visited twice).
    ///
    /// # Panics
    /// Before [`NoiseScheduler::set_timesteps`] (diffusers raises too).
    fn step(
        &mut self,
        model_output: Tensor<B, 4>,
        timestep: f64,
        sample: Tensor<B, 4>,
        _noise: &mut dyn NoiseSource<B>,
    ) -> Tensor<B, 4> {
        if self.counter < self.prk_timesteps.len() {
            self.step_prk(model_output, timestep, sample)
        } else {
            self.step_plms(model_output, timestep, sample)
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

    fn pndm(extra: &str) -> PndmScheduler<TB> {
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), &sd_config("PNDMScheduler", extra));
        PndmScheduler::from_dir(dir.path()).unwrap()
    }

    fn timesteps(s: &mut PndmScheduler<TB>, n: usize) -> Vec<f64> {
        s.set_timesteps(n).unwrap();
        s.timesteps.clone()
    }

    #[test]
    fn plms_repeats_the_second_timestep() {
        // offline-assets.md §2.3 and diffusers 0.42.1.
        let mut s = pndm(r#""skip_prk_steps": true, "steps_offset": 1"#);
        assert_eq!(
            timesteps(&mut s, 10),
            [
                901., 801., 801., 701., 601., 501., 401., 301., 201., 101., 1.
            ]
        );
        assert_eq!(timesteps(&mut s, 2), [501., 1., 1.]);
        assert_eq!(timesteps(&mut s, 1), [1.]);
        let mut s = pndm(r#""skip_prk_steps": true, "timestep_spacing": "trailing""#);
        assert_eq!(
            timesteps(&mut s, 7),
            [999., 856., 856., 713., 570., 428., 285., 142.]
        );
        let mut s = pndm(r#""skip_prk_steps": true, "timestep_spacing": "linspace""#);
        assert_eq!(
            timesteps(&mut s, 7),
            [999., 832., 832., 666., 500., 333., 166., 0.]
        );
    }

    #[test]
    fn prk_timesteps_match_diffusers() {
        let mut s = pndm(r#""steps_offset": 1"#);
        assert_eq!(
            timesteps(&mut s, 10),
            [
                901., 851., 851., 801., 801., 751., 751., 701., 701., 651., 651., 601., 601., 501.,
                401., 301., 201., 101., 1.
            ]
        );
        assert_eq!(
            timesteps(&mut s, 4),
            [
                751., 626., 626., 501., 501., 376., 376., 251., 251., 126., 126., 1., 1.
            ]
        );
        let err = s.set_timesteps(3).unwrap_err();
        assert!(err.to_string().contains("at least 4"), "{err}");
    }

    #[test]
    fn zero_and_too_many_steps_are_errors() {
        let mut s = pndm(r#""skip_prk_steps": true"#);
        for n in [0, 1001] {
            let err = s.set_timesteps(n).unwrap_err();
            assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
        }
        let msg = s.set_timesteps(1001).unwrap_err().to_string();
        assert!(msg.contains("1001") && msg.contains("1000"), "{msg}");
    }

    #[test]
    fn sample_prediction_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        write_config(
            dir.path(),
            &sd_config("PNDMScheduler", r#""prediction_type": "sample""#),
        );
        let err = PndmScheduler::<TB>::from_dir(dir.path()).unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
    }

    #[test]
    fn set_timesteps_resets_the_history() {
        let mut s = pndm(r#""skip_prk_steps": true"#);
        s.set_timesteps(5).unwrap();
        let x = Tensor::<TB, 4>::ones([1, 1, 2, 2], &default_device());
        let mut noise = storygpt_core::SeededNoise::new(0);
        let t0 = s.timesteps[0];
        let _ = s.step(x.clone(), t0, x.clone(), &mut noise);
        assert_eq!((s.counter, s.ets.len()), (1, 1));
        s.set_timesteps(5).unwrap();
        assert_eq!((s.counter, s.ets.len()), (0, 0));
        assert!(s.cur_sample.is_none());
    }

    #[test]
    fn sd_v1_preset() {
        let c = PndmSchedulerConfig::sd_v1();
        assert!(c.skip_prk_steps && !c.set_alpha_to_one);
        assert_eq!(c.common.steps_offset, 1);
    }
}
