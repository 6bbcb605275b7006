//! DPM-Solver++: Lu, Zhou, Bao, Chen, Li & Zhu, "DPM-Solver++: Fast Solver for Guided Sampling of
//! Diffusion Probabilistic Models" (2022), <https://arxiv.org/abs/2211.01095>. Mirrors diffusers'
//! `DPMSolverMultistepScheduler` (`schedulers/scheduling_dpmsolver_multistep.py`): the multistep
//! data-prediction solver of orders 1–3 (`dpmsolver++`, "DPM++ 2M" at order 2) and its SDE
//! variant (`sde-dpmsolver++`), with midpoint or Heun second-order updates.

use std::path::Path;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use storygpt_core::{ConfigFile, NoiseScheduler, NoiseSource, PredictionType, Result};

use super::euler_discrete::FinalSigmasType;
use super::sigmas::{interp, karras_sigmas, log_sigmas, sigma_table, sigma_to_t};
use super::{
    BetaSchedule, SchedulerBaseConfig, TimestepSpacing, check_num_inference_steps,
    check_timesteps_in_range, default_true, invalid, json_f64, numpy_arange, numpy_linspace,
    per_sample, read_config,
};

/// Which solver (diffusers' `algorithm_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum AlgorithmType {
    /// The deterministic multistep DPM-Solver++ on the data prediction x₀ (`deis` is mapped
    /// here too, as diffusers does).
    #[default]
    #[serde(rename = "dpmsolver++", alias = "deis")]
    DpmSolverPlusPlus,
    /// Its stochastic variant (SDE-DPM-Solver++, section 5 of the paper); draws noise each step.
    #[serde(rename = "sde-dpmsolver++")]
    SdeDpmSolverPlusPlus,
    /// The original noise-prediction DPM-Solver (deprecated in diffusers; not supported).
    #[serde(rename = "dpmsolver")]
    DpmSolver,
    /// Its SDE variant (deprecated in diffusers; not supported).
    #[serde(rename = "sde-dpmsolver")]
    SdeDpmSolver,
}

/// The second-order update (diffusers' `solver_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SolverType {
    /// The midpoint form of algorithm 2 (`logrho`, `bh1`, `bh2` map here, as in diffusers).
    #[default]
    #[serde(alias = "logrho", alias = "bh1", alias = "bh2")]
    Midpoint,
    /// The Heun-like form.
    Heun,
}

/// `scheduler_config.json` of a `DPMSolverMultistepScheduler`, with diffusers' defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpmSolverMultistepSchedulerConfig {
    /// The keys every scheduler shares.
    #[serde(flatten)]
    pub common: SchedulerBaseConfig,
    /// 1, 2 (default; "DPM++ 2M") or 3.
    #[serde(default = "default_solver_order")]
    pub solver_order: usize,
    /// Default `dpmsolver++`.
    #[serde(default)]
    pub algorithm_type: AlgorithmType,
    /// Default `midpoint`.
    #[serde(default)]
    pub solver_type: SolverType,
    /// Drop to lower orders over the last steps when there are fewer than 15 (default true).
    #[serde(default = "default_true")]
    pub lower_order_final: bool,
    /// Use a first-order (Euler) last step whatever the step count (default false).
    #[serde(default)]
    pub euler_at_final: bool,
    /// Use Karras et al.'s σ spacing (default false).
    #[serde(default)]
    pub use_karras_sigmas: bool,
    /// Lu et al.'s uniform-λ spacing (default false; `true` is not supported).
    #[serde(default)]
    pub use_lu_lambdas: bool,
    /// Exponential σ spacing (default false; `true` is not supported).
    #[serde(default)]
    pub use_exponential_sigmas: bool,
    /// Beta-distribution σ spacing (default false; `true` is not supported).
    #[serde(default)]
    pub use_beta_sigmas: bool,
    /// Flow-matching σ's (default false; `true` is not supported).
    #[serde(default)]
    pub use_flow_sigmas: bool,
    /// Default `zero`.
    #[serde(default)]
    pub final_sigmas_type: FinalSigmasType,
    /// Skip the timesteps whose λ = log(α/σ) is below this (default −∞; diffusers writes
    /// `-Infinity` into the JSON).
    #[serde(default = "default_lambda_min_clipped", deserialize_with = "json_f64")]
    pub lambda_min_clipped: f64,
    /// `learned` / `learned_range` for models predicting their variance (default null; those
    /// are not supported).
    #[serde(default)]
    pub variance_type: Option<String>,
    /// Dynamic thresholding (Imagen); default false, `true` is not supported.
    #[serde(default)]
    pub thresholding: bool,
    /// Default `linspace`.
    #[serde(default = "default_spacing")]
    pub timestep_spacing: TimestepSpacing,
    /// Flow-model time shifting (default false; `true` is not supported).
    #[serde(default)]
    pub use_dynamic_shifting: bool,
}

fn default_solver_order() -> usize {
    2
}
fn default_lambda_min_clipped() -> f64 {
    f64::NEG_INFINITY
}
fn default_spacing() -> TimestepSpacing {
    TimestepSpacing::Linspace
}

impl Default for DpmSolverMultistepSchedulerConfig {
    fn default() -> Self {
        Self {
            common: SchedulerBaseConfig::default(),
            solver_order: default_solver_order(),
            algorithm_type: AlgorithmType::default(),
            solver_type: SolverType::default(),
            lower_order_final: true,
            euler_at_final: false,
            use_karras_sigmas: false,
            use_lu_lambdas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            use_flow_sigmas: false,
            final_sigmas_type: FinalSigmasType::default(),
            lambda_min_clipped: default_lambda_min_clipped(),
            variance_type: None,
            thresholding: false,
            timestep_spacing: default_spacing(),
            use_dynamic_shifting: false,
        }
    }
}

impl ConfigFile for DpmSolverMultistepSchedulerConfig {
    const FILE_NAME: &'static str = super::CONFIG_FILE;

    fn validate(&self) -> std::result::Result<(), String> {
        self.common.validate()?;
        if !(1..=3).contains(&self.solver_order) {
            return Err(format!(
                "solver_order must be 1, 2 or 3, got {}",
                self.solver_order
            ));
        }
        if matches!(
            self.algorithm_type,
            AlgorithmType::DpmSolver | AlgorithmType::SdeDpmSolver
        ) {
            return Err(format!(
                "algorithm_type {:?} (deprecated in diffusers) is not supported; \
                 use dpmsolver++ or sde-dpmsolver++",
                self.algorithm_type
            ));
        }
        if self.thresholding {
            return Err("thresholding = true (dynamic thresholding) is not supported".into());
        }
        if self.use_lu_lambdas
            || self.use_exponential_sigmas
            || self.use_beta_sigmas
            || self.use_flow_sigmas
            || self.use_dynamic_shifting
        {
            return Err(
                "use_lu_lambdas / use_exponential_sigmas / use_beta_sigmas / \
                        use_flow_sigmas / use_dynamic_shifting = true are not supported"
                    .into(),
            );
        }
        if let Some(v) = &self.variance_type {
            return Err(format!(
                "variance_type `{v}` (a model that predicts its variance) is not supported"
            ));
        }
        if self.lambda_min_clipped.is_nan() {
            return Err("lambda_min_clipped is NaN".into());
        }
        Ok(())
    }

    fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        read_config(path.as_ref())
    }
}

/// DPM-Solver++ multistep sampling (diffusers' `DPMSolverMultistepScheduler`). Holds the
/// multistep history, so one instance serves one sampling run at a time;
/// [`NoiseScheduler::set_timesteps`] resets it.
#[derive(Debug, Clone)]
pub struct DpmSolverMultistepScheduler<B: Backend> {
    /// The config it was built from.
    pub config: DpmSolverMultistepSchedulerConfig,
    /// ᾱ_t for t = 0..T (float32 values).
    pub alphas_cumprod: Vec<f64>,
    /// σ at each timestep of the schedule plus the final σ (float32 values), descending.
    pub sigmas: Vec<f64>,
    /// The timesteps to visit (integers).
    pub timesteps: Vec<f64>,
    /// `None` until [`NoiseScheduler::set_timesteps`].
    pub num_inference_steps: Option<usize>,
    /// Index of the next step, set by the first `step` from its timestep.
    pub step_index: Option<usize>,
    /// History: the converted model outputs x̂₀ of the last `solver_order` steps, oldest first
    /// (`None` until filled).
    pub model_outputs: Vec<Option<Tensor<B, 4>>>,
    /// How many steps so far could use history (caps the order while it fills up).
    pub lower_order_nums: usize,
}

/// α_t = 1/√(σ²+1), σ_t = σ α_t, λ_t = log α_t − log σ_t for the VP process with EDM σ = σ_t/α_t.
#[derive(Debug, Clone, Copy)]
struct Vp {
    alpha: f64,
    sigma: f64,
    lambda: f64,
}

impl Vp {
    fn at(sigma: f64) -> Self {
        let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
        let sigma = sigma * alpha;
        Self {
            alpha,
            sigma,
            lambda: alpha.ln() - sigma.ln(),
        }
    }
}

impl<B: Backend> DpmSolverMultistepScheduler<B> {
    /// Builds the scheduler; [`NoiseScheduler::set_timesteps`] must run before stepping.
    pub fn new(config: DpmSolverMultistepSchedulerConfig) -> Result<Self> {
        config.validate().map_err(invalid)?;
        let alphas_cumprod = config.common.alphas_cumprod();
        let t = config.common.num_train_timesteps;
        let sigmas = sigma_table(&alphas_cumprod)
            .into_iter()
            .map(f64::from)
            .collect();
        Ok(Self {
            model_outputs: vec![None; config.solver_order],
            config,
            alphas_cumprod,
            sigmas,
            timesteps: (0..t).rev().map(|t| t as f64).collect(),
            num_inference_steps: None,
            step_index: None,
            lower_order_nums: 0,
        })
    }

    /// Reads `dir/scheduler_config.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::new(DpmSolverMultistepSchedulerConfig::from_dir(dir)?)
    }

    /// The index of `timestep` in the schedule (diffusers' `index_for_timestep`: the second
    /// match if it occurs twice, the last step if it does not occur).
    fn index_for_timestep(&self, timestep: f64) -> usize {
        super::sigmas::index_for_timestep(&self.timesteps, timestep)
            .unwrap_or(self.timesteps.len() - 1)
    }

    /// x̂₀ from the model output at step `i` (diffusers' `convert_model_output` for
    /// `dpmsolver++`): ε → (x − σ_t ε)/α_t, v → α_t x − σ_t v.
    fn convert_model_output(
        &self,
        model_output: Tensor<B, 4>,
        sample: &Tensor<B, 4>,
        i: usize,
    ) -> Tensor<B, 4> {
        let s = Vp::at(self.sigmas[i]);
        match self.config.common.prediction_type {
            PredictionType::Epsilon => {
                (sample.clone() - model_output.mul_scalar(s.sigma)).div_scalar(s.alpha)
            }
            PredictionType::Sample => model_output,
            PredictionType::VPrediction => {
                sample.clone().mul_scalar(s.alpha) - model_output.mul_scalar(s.sigma)
            }
        }
    }

    /// The first-order update from σ_i to σ_{i+1} (eq. 5 of the paper, i.e. DDIM):
    /// `x_t = (σ_t/σ_s) x − α_t (e^{−h} − 1) x̂₀`.
    fn first_order_update(
        &self,
        m0: Tensor<B, 4>,
        sample: Tensor<B, 4>,
        i: usize,
        noise: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 4> {
        let (t, s0) = (Vp::at(self.sigmas[i + 1]), Vp::at(self.sigmas[i]));
        let h = t.lambda - s0.lambda;
        match noise {
            None => {
                sample.mul_scalar(t.sigma / s0.sigma) - m0.mul_scalar(t.alpha * ((-h).exp() - 1.0))
            }
            Some(z) => {
                sample.mul_scalar(t.sigma / s0.sigma * (-h).exp())
                    + m0.mul_scalar(t.alpha * (1.0 - (-2.0 * h).exp()))
                    + z.mul_scalar(t.sigma * (1.0 - (-2.0 * h).exp()).sqrt())
            }
        }
    }

    /// The second-order multistep update (algorithm 2 of the paper), from the last two x̂₀'s.
    fn second_order_update(
        &self,
        sample: Tensor<B, 4>,
        i: usize,
        noise: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 4> {
        let [.., m1, m0] = self.model_outputs.as_slice() else {
            unreachable!("solver_order ≥ 2 here")
        };
        let (m0, m1) = (m0.clone().expect("history"), m1.clone().expect("history"));
        let (t, s0, s1) = (
            Vp::at(self.sigmas[i + 1]),
            Vp::at(self.sigmas[i]),
            Vp::at(self.sigmas[i - 1]),
        );
        let (h, h_0) = (t.lambda - s0.lambda, s0.lambda - s1.lambda);
        let r0 = h_0 / h;
        // D0 = x̂₀(s0), D1 = (x̂₀(s0) − x̂₀(s1)) / r0.
        let d1 = (m0.clone() - m1).mul_scalar(1.0 / r0);
        let d0 = m0;
        let solver_type = self.config.solver_type;
        match noise {
            None => {
                let a = t.alpha * ((-h).exp() - 1.0);
                let x = sample.mul_scalar(t.sigma / s0.sigma) - d0.mul_scalar(a);
                match solver_type {
                    SolverType::Midpoint => x - d1.mul_scalar(0.5 * a),
                    SolverType::Heun => x + d1.mul_scalar(t.alpha * (((-h).exp() - 1.0) / h + 1.0)),
                }
            }
            Some(z) => {
                let a = t.alpha * (1.0 - (-2.0 * h).exp());
                let x = sample.mul_scalar(t.sigma / s0.sigma * (-h).exp()) + d0.mul_scalar(a);
                let x = match solver_type {
                    SolverType::Midpoint => x + d1.mul_scalar(0.5 * a),
                    SolverType::Heun => {
                        x + d1.mul_scalar(t.alpha * ((1.0 - (-2.0 * h).exp()) / (-2.0 * h) + 1.0))
                    }
                };
                x + z.mul_scalar(t.sigma * (1.0 - (-2.0 * h).exp()).sqrt())
            }
        }
    }

    /// The third-order multistep update, from the last three x̂₀'s.
    fn third_order_update(
        &self,
        sample: Tensor<B, 4>,
        i: usize,
        noise: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 4> {
        let [.., m2, m1, m0] = self.model_outputs.as_slice() else {
            unreachable!("solver_order = 3 here")
        };
        let (m0, m1, m2) = (
            m0.clone().expect("history"),
            m1.clone().expect("history"),
            m2.clone().expect("history"),
        );
        let (t, s0, s1, s2) = (
            Vp::at(self.sigmas[i + 1]),
            Vp::at(self.sigmas[i]),
            Vp::at(self.sigmas[i - 1]),
            Vp::at(self.sigmas[i - 2]),
        );
        let (h, h_0, h_1) = (
            t.lambda - s0.lambda,
            s0.lambda - s1.lambda,
            s1.lambda - s2.lambda,
        );
        let (r0, r1) = (h_0 / h, h_1 / h);
        let d1_0 = (m0.clone() - m1.clone()).mul_scalar(1.0 / r0);
        let d1_1 = (m1 - m2).mul_scalar(1.0 / r1);
        let d1 = d1_0.clone() + (d1_0.clone() - d1_1.clone()).mul_scalar(r0 / (r0 + r1));
        let d2 = (d1_0 - d1_1).mul_scalar(1.0 / (r0 + r1));
        let d0 = m0;
        match noise {
            None => {
                let e = (-h).exp() - 1.0;
                sample.mul_scalar(t.sigma / s0.sigma) - d0.mul_scalar(t.alpha * e)
                    + d1.mul_scalar(t.alpha * (e / h + 1.0))
                    - d2.mul_scalar(t.alpha * ((e + h) / (h * h) - 0.5))
            }
            Some(z) => {
                let e = 1.0 - (-2.0 * h).exp();
                sample.mul_scalar(t.sigma / s0.sigma * (-h).exp())
                    + d0.mul_scalar(t.alpha * e)
                    + d1.mul_scalar(t.alpha * (e / (-2.0 * h) + 1.0))
                    + d2.mul_scalar(t.alpha * ((e - 2.0 * h) / (2.0 * h).powi(2) - 0.5))
                    + z.mul_scalar(t.sigma * e.sqrt())
            }
        }
    }
}

impl<B: Backend> NoiseScheduler<B> for DpmSolverMultistepScheduler<B> {
    fn num_train_timesteps(&self) -> usize {
        self.config.common.num_train_timesteps
    }

    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        let c = &self.config;
        let (n, t) = (num_inference_steps, c.common.num_train_timesteps);
        check_num_inference_steps(n, t)?;
        let table = sigma_table(&self.alphas_cumprod);

        // 1. Clip the λ range: drop the timesteps whose λ_t is below lambda_min_clipped.
        let clipped_idx = self
            .alphas_cumprod
            .iter()
            .filter(|&&a| 0.5 * (a / (1.0 - a)).ln() < c.lambda_min_clipped)
            .count();
        let last_timestep = t - clipped_idx;

        // 2. n timesteps over [0, last_timestep), descending (n + 1 points, dropping t = 0).
        let mut timesteps: Vec<f64> = match c.timestep_spacing {
            TimestepSpacing::Linspace => numpy_linspace(0.0, (last_timestep - 1) as f64, n + 1)
                .into_iter()
                .rev()
                .take(n)
                .map(f64::round_ties_even)
                .collect(),
            TimestepSpacing::Leading => {
                let step_ratio = last_timestep / (n + 1);
                (1..=n)
                    .rev()
                    .map(|i| (i * step_ratio + c.common.steps_offset) as f64)
                    .collect()
            }
            TimestepSpacing::Trailing => {
                numpy_arange(last_timestep as f64, 0.0, -(t as f64 / n as f64))
                    .into_iter()
                    .map(|x| x.round_ties_even() - 1.0)
                    .collect()
            }
        };

        // 3. σ's: Karras spacing (timesteps mapped back and rounded), or the table at the
        //    timesteps.
        let mut sigmas: Vec<f64> = if c.use_karras_sigmas {
            let sigma_min = f64::from(table[0]);
            let sigma_max = f64::from(table[table.len() - 1]);
            let sigmas = karras_sigmas(sigma_min, sigma_max, n);
            let logs = log_sigmas(&table);
            timesteps = sigmas
                .iter()
                .map(|&s| {
                    let t = sigma_to_t(s, &logs);
                    // diffusers keeps fractional timesteps for the cosine schedule, then casts
                    // them to int64 (truncation).
                    if c.common.beta_schedule == BetaSchedule::SquaredcosCapV2 {
                        t.trunc()
                    } else {
                        t.round_ties_even()
                    }
                })
                .collect();
            sigmas
        } else {
            timesteps.iter().map(|&t| interp(t, &table)).collect()
        };
        check_timesteps_in_range(&timesteps, t)?;

        // 4. The final σ, then everything rounded to float32.
        sigmas.push(match c.final_sigmas_type {
            FinalSigmasType::Zero => 0.0,
            FinalSigmasType::SigmaMin => f64::from(table[0]),
        });
        self.sigmas = sigmas.into_iter().map(|s| f64::from(s as f32)).collect();
        self.num_inference_steps = Some(timesteps.len());
        self.timesteps = timesteps;
        self.model_outputs = vec![None; c.solver_order];
        self.lower_order_nums = 0;
        self.step_index = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// | symbol | diffusers | meaning |
    /// |---|---|---|
    /// | x | `sample` | the current sample |
    /// | α_t, σ_t | `alpha_t`, `sigma_t` | VP scales of the next step, x_t = α_t x₀ + σ_t ε |
    /// | α_s, σ_s | `alpha_s0`, `sigma_s0` | the same at this step |
    /// | λ | `lambda_t` | log(α/σ), the half log-SNR the solver integrates over |
    /// | h | `h` | λ_t − λ_s, the step size in λ |
    /// | x̂₀ (M) | `model_outputs` | the data predictions of the last `solver_order` steps |
    /// | D0, D1, D2 | `D0`, `D1`, `D2` | x̂₀ and its divided differences in λ |
    ///
    /// 1. Decide the order: lower while the history fills up and, with `lower_order_final`,
    ///    over the last steps (below 15 steps) or at a σ = 0 end.
    /// 2. Convert the model output to x̂₀ and push it onto the history.
    /// 3. Draw z (SDE variant only).
    /// 4. Apply the first-, second- or third-order update.
    ///
    /// # Panics
    /// Before [`NoiseScheduler::set_timesteps`], or after the last step.
    fn step(
        &mut self,
        model_output: Tensor<B, 4>,
        timestep: f64,
        sample: Tensor<B, 4>,
        noise: &mut dyn NoiseSource<B>,
    ) -> Tensor<B, 4> {
        assert!(
            self.num_inference_steps.is_some(),
            "DpmSolverMultistepScheduler::step called before set_timesteps"
        );
        let c = &self.config;
        let i = self
            .step_index
            .unwrap_or_else(|| self.index_for_timestep(timestep));
        let len = self.timesteps.len();

        // 1. The order of this step.
        let lower_order_final = i == len - 1
            && (c.euler_at_final
                || (c.lower_order_final && len < 15)
                || c.final_sigmas_type == FinalSigmasType::Zero);
        let lower_order_second = i + 2 == len && c.lower_order_final && len < 15;

        // 2. x̂₀, pushed onto the history (oldest dropped).
        let m0 = self.convert_model_output(model_output, &sample, i);
        self.model_outputs.rotate_left(1);
        if let Some(last) = self.model_outputs.last_mut() {
            *last = Some(m0.clone());
        }

        // 3. z for the SDE variant, drawn at every step.
        let z = (c.algorithm_type == AlgorithmType::SdeDpmSolverPlusPlus)
            .then(|| noise.noise(sample.dims(), &sample.device()));

        // 4. The update.
        let order = c.solver_order;
        let prev_sample = if order == 1 || self.lower_order_nums < 1 || lower_order_final {
            self.first_order_update(m0, sample, i, z)
        } else if order == 2 || self.lower_order_nums < 2 || lower_order_second {
            self.second_order_update(sample, i, z)
        } else {
            self.third_order_update(sample, i, z)
        };
        self.lower_order_nums = (self.lower_order_nums + 1).min(order);
        self.step_index = Some(i + 1);
        prev_sample
    }

    /// `α_t x₀ + σ_t ε` with the VP scales of the σ at `timesteps` in the current schedule.
    fn add_noise(
        &self,
        original: Tensor<B, 4>,
        noise: Tensor<B, 4>,
        timesteps: &[f64],
    ) -> Tensor<B, 4> {
        let vp: Vec<Vp> = timesteps
            .iter()
            .map(|&t| Vp::at(self.sigmas[self.index_for_timestep(t)]))
            .collect();
        let alpha = per_sample(vp.iter().map(|v| v.alpha).collect(), &original);
        let sigma = per_sample(vp.iter().map(|v| v.sigma).collect(), &original);
        original * alpha + noise * sigma
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use storygpt_core::Error;

    fn dpm(extra: &str) -> DpmSolverMultistepScheduler<TB> {
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), &sd_config("DPMSolverMultistepScheduler", extra));
        DpmSolverMultistepScheduler::from_dir(dir.path()).unwrap()
    }

    fn timesteps(extra: &str, n: usize) -> Vec<f64> {
        let mut s = dpm(extra);
        s.set_timesteps(n).unwrap();
        s.timesteps
    }

    #[test]
    fn timesteps_match_diffusers() {
        // Printed by diffusers 0.42.1.
        assert_eq!(
            timesteps("", 10),
            [999., 899., 799., 699., 599., 500., 400., 300., 200., 100.]
        );
        assert_eq!(timesteps("", 7), [999., 856., 714., 571., 428., 285., 143.]);
        assert_eq!(timesteps("", 1), [999.]);
        assert_eq!(
            timesteps(r#""timestep_spacing": "leading", "steps_offset": 1"#, 7),
            [876., 751., 626., 501., 376., 251., 126.]
        );
        assert_eq!(
            timesteps(r#""timestep_spacing": "trailing""#, 7),
            [999., 856., 713., 570., 428., 285., 142.]
        );
        assert_eq!(
            timesteps(r#""use_karras_sigmas": true"#, 25),
            [
                999., 970., 938., 905., 868., 829., 786., 739., 687., 630., 568., 500., 427., 352.,
                278., 207., 146., 96., 59., 34., 18., 9., 4., 1., 0.
            ]
        );
        assert_eq!(
            timesteps(r#""lambda_min_clipped": -5.1"#, 10),
            timesteps("", 10)
        );
    }

    #[test]
    fn minus_infinity_in_the_json_loads() {
        let dir = tempfile::tempdir().unwrap();
        write_config(
            dir.path(),
            &sd_config(
                "DPMSolverMultistepScheduler",
                r#""lambda_min_clipped": -Infinity, "variance_type": null"#,
            ),
        );
        let s = DpmSolverMultistepScheduler::<TB>::from_dir(dir.path()).unwrap();
        assert_eq!(s.config.lambda_min_clipped, f64::NEG_INFINITY);
    }

    #[test]
    fn zero_and_too_many_steps_are_errors() {
        let mut s = dpm("");
        for n in [0, 1001] {
            let err = s.set_timesteps(n).unwrap_err();
            assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
        }
    }

    #[test]
    fn unsupported_options_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        for extra in [
            r#""thresholding": true"#,
            r#""algorithm_type": "dpmsolver""#,
            r#""solver_order": 4"#,
            r#""use_lu_lambdas": true"#,
            r#""variance_type": "learned_range""#,
        ] {
            write_config(dir.path(), &sd_config("DPMSolverMultistepScheduler", extra));
            let err = DpmSolverMultistepScheduler::<TB>::from_dir(dir.path()).unwrap_err();
            assert!(
                matches!(err, Error::InvalidConfig { .. }),
                "{extra}: {err:?}"
            );
        }
    }

    #[test]
    fn legacy_names_map_like_diffusers() {
        let s = dpm(r#""algorithm_type": "deis", "solver_type": "bh2""#);
        assert_eq!(s.config.algorithm_type, AlgorithmType::DpmSolverPlusPlus);
        assert_eq!(s.config.solver_type, SolverType::Midpoint);
    }
}
