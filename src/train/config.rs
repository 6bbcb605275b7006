//! The settings every training stage shares, read from the `[train]` table of a run's TOML
//! config. Defaults mirror the original StoryGPT-V scripts where they apply (AdamW with
//! PyTorch's eps 1e-8 and weight decay 1e-2, global-norm clipping at 1.0, a constant LR).

use serde::{Deserialize, Serialize};
use storygpt_core::{Error, Result};

/// How the learning rate evolves ([`crate::train::schedule`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LrSchedule {
    /// `lr` throughout (stage 1 of the original: `--lr_scheduler constant`).
    Constant,
    /// Linear warm-up from 0 over `warmup` steps, then ×`gamma` every `step_size` steps
    /// (stage 2 of the original: GradualWarmup 2000 → StepLR ×0.1 every 10k).
    WarmupStep {
        /// Warm-up steps.
        warmup: usize,
        /// Steps between decays.
        step_size: usize,
        /// Decay factor.
        gamma: f64,
    },
    /// Linear warm-up, then cosine decay to `min_lr` at the last step.
    Cosine {
        /// Warm-up steps.
        warmup: usize,
        /// The final learning rate.
        min_lr: f64,
    },
}

/// Exponential moving average of the weights (used for validation and export when on).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EmaConfig {
    /// Maximum decay; the effective decay at step `s` is `min(decay, (1 + s) / (10 + s))`.
    pub decay: f64,
}

/// Settings shared by every stage's loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimizer steps.
    pub steps: usize,
    /// Samples per micro-batch.
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    /// Micro-batches per optimizer step (the loss is scaled by 1/n).
    #[serde(default = "d_one")]
    pub grad_accumulation: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// The schedule.
    #[serde(default = "d_schedule")]
    pub schedule: LrSchedule,
    /// AdamW β₁.
    #[serde(default = "d_beta1")]
    pub beta1: f64,
    /// AdamW β₂.
    #[serde(default = "d_beta2")]
    pub beta2: f64,
    /// AdamW ε (PyTorch's 1e-8, not burn's 1e-5).
    #[serde(default = "d_eps")]
    pub eps: f64,
    /// Decoupled weight decay (PyTorch's 1e-2, not burn's 1e-4).
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (`None`: no clipping).
    #[serde(default = "d_clip")]
    pub max_grad_norm: Option<f64>,
    /// EMA of the weights.
    #[serde(default)]
    pub ema: Option<EmaConfig>,
    /// Write a checkpoint every this many steps (and at the end).
    #[serde(default = "d_ckpt")]
    pub checkpoint_every: usize,
    /// Run validation every this many steps (0: only at the end).
    #[serde(default)]
    pub validate_every: usize,
    /// Seed of initialisation, data order and noise.
    #[serde(default)]
    pub seed: u64,
    /// Keep this many checkpoints (oldest removed first).
    #[serde(default = "d_keep")]
    pub keep_checkpoints: usize,
}

fn d_batch() -> usize {
    32
}
fn d_one() -> usize {
    1
}
fn d_schedule() -> LrSchedule {
    LrSchedule::Constant
}
fn d_beta1() -> f64 {
    0.9
}
fn d_beta2() -> f64 {
    0.999
}
fn d_eps() -> f64 {
    1e-8
}
fn d_wd() -> f64 {
    1e-2
}
fn d_clip() -> Option<f64> {
    Some(1.0)
}
fn d_ckpt() -> usize {
    500
}
fn d_keep() -> usize {
    2
}

impl TrainConfig {
    /// A config with the defaults above.
    pub fn new(steps: usize, lr: f64) -> Self {
        Self {
            steps,
            batch_size: d_batch(),
            grad_accumulation: 1,
            lr,
            schedule: LrSchedule::Constant,
            beta1: d_beta1(),
            beta2: d_beta2(),
            eps: d_eps(),
            weight_decay: d_wd(),
            max_grad_norm: d_clip(),
            ema: None,
            checkpoint_every: d_ckpt(),
            validate_every: 0,
            seed: 0,
            keep_checkpoints: d_keep(),
        }
    }

    /// Checks the values; the message names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| {
            Err(Error::InvalidConfig {
                path: None,
                message: m,
            })
        };
        if self.steps == 0 || self.batch_size == 0 || self.grad_accumulation == 0 {
            return bad(
                "train.steps, train.batch_size and train.grad_accumulation must be positive".into(),
            );
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!(
                "train.lr must be a positive number, got {}",
                self.lr
            ));
        }
        if self.checkpoint_every == 0 || self.keep_checkpoints == 0 {
            return bad(
                "train.checkpoint_every and train.keep_checkpoints must be positive".into(),
            );
        }
        if let Some(c) = self.max_grad_norm
            && !(c.is_finite() && c > 0.0)
        {
            return bad(format!("train.max_grad_norm must be positive, got {c}"));
        }
        if let Some(e) = self.ema
            && !(0.0..1.0).contains(&e.decay)
        {
            return bad(format!(
                "train.ema.decay must be in [0, 1), got {}",
                e.decay
            ));
        }
        if let LrSchedule::WarmupStep { step_size: 0, .. } = self.schedule {
            return bad("train.schedule.step_size must be positive".into());
        }
        Ok(())
    }
}

/// Reads a TOML file into `T`, with errors naming the file and the offending key.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    toml::from_str(&text).map_err(|e| Error::InvalidConfig {
        path: Some(path.to_path_buf()),
        message: e.to_string(),
    })
}

/// Serialises `value` as TOML.
pub fn to_toml<T: Serialize>(value: &T) -> Result<String> {
    toml::to_string_pretty(value)
        .map_err(|e| Error::InvalidInput(format!("TOML encoding failed: {e}")))
}
