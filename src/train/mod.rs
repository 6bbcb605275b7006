//! Training: one loop shared by every stage ([`run`]), and the stages themselves.
//!
//! A stage ([`Stage`]) says how to compute the loss of one micro-batch, how to validate, and
//! where its data cursor is; [`run`] does the rest, the same way for all of them:
//!
//! 1. resume from the run's newest checkpoint when asked (model, optimizer, EMA, RNG position,
//!    data cursor, loss history), refusing a checkpoint written under another config;
//! 2. per optimizer step: `grad_accumulation` micro-batches (loss / n, gradients summed), the
//!    stage's gradient edits, global-norm clipping, the scheduled learning rate, AdamW, the
//!    stage's post-step hook, the EMA;
//! 3. a progress bar with loss, rate and ETA, `tracing` logs, checkpoints every
//!    `checkpoint_every` steps (atomic, see [`checkpoint`]), validation every
//!    `validate_every` steps, and `losses.csv` + `loss_curve.png` in the run folder.
//!
//! All randomness is drawn on the host from one ChaCha8 stream seeded by `train.seed`, whose
//! position is checkpointed, so a resumed run computes exactly what the uninterrupted run
//! would have (tested bit for bit on flex). The initial weights come from the backend's RNG,
//! seeded with `train.seed` right before the model is built. burn keeps that RNG
//! process-global, so anything else drawing random numbers in the same process at that moment
//! (another thread building a model or starting a run) changes them: for a reproducible run,
//! train one stage per process, as the `storygpt train-*` commands do.
//!
//! burn-train's `Learner` is not used: the stages need per-step hooks it does not offer
//! (Char-LDM's attention capture and mixed conditioning, stage 2's frozen-row gradient
//! masking and row rescaling) and checkpoints that include the host RNG and data cursor.

pub mod char_ldm;
pub mod checkpoint;
pub mod clip;
pub mod config;
pub mod curve;
pub mod data;
pub mod embeddings;
pub mod export;
pub mod latents;
pub mod lm;
pub mod optim;
pub mod stage2;
pub mod tokenizer;
pub mod vae;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use storygpt_core::{Error, Result};

use checkpoint::{CheckpointParts, LoopState, LossPoint, ValPoint};
pub use config::{EmaConfig, LrSchedule, TrainConfig};

/// Named scalar metrics (validation results, extra training losses).
pub type Metrics = BTreeMap<String, f64>;

/// One trainable stage (see the module docs).
pub trait Stage<B: AutodiffBackend> {
    /// What is trained (only its parameters get gradients and optimizer state).
    type Model: AutodiffModule<B> + Clone;

    /// Short name for logs and plots ("vae", "clip", "lm", "char-ldm", "stage2").
    fn name(&self) -> &str;

    /// The loss of one micro-batch (a scalar tensor `[1]`) and extra metrics to log.
    fn loss(
        &mut self,
        model: &Self::Model,
        rng: &mut ChaCha8Rng,
    ) -> Result<(Tensor<B, 1>, Metrics)>;

    /// Edits the gradients before clipping (stage 2 keeps only the `[IMG]` rows).
    fn edit_grads(&self, _model: &Self::Model, _grads: &mut GradientsParams) {}

    /// After the optimizer step (stage 2 rescales the `[IMG]` rows).
    fn after_step(&self, model: Self::Model) -> Self::Model {
        model
    }

    /// Validation on the inference copy of the model (or its EMA).
    fn validate(
        &mut self,
        model: &<Self::Model as AutodiffModule<B>>::InnerModule,
        step: usize,
        run: &Path,
    ) -> Result<Metrics>;

    /// The data position to checkpoint.
    fn data_state(&self) -> serde_json::Value;

    /// Restores a checkpointed data position.
    fn restore_data_state(&mut self, state: &serde_json::Value) -> Result<()>;
}

/// How to run a stage.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The run folder (checkpoints, curves, logs).
    pub run_dir: PathBuf,
    /// Continue from the newest checkpoint in `run_dir`.
    pub resume: bool,
    /// Stop after this step (as if killed there; checkpoints first). For tests and for
    /// splitting a long run across sessions.
    pub stop_after: Option<usize>,
    /// Show a progress bar.
    pub progress: bool,
}

/// What [`run`] returns.
pub struct RunOutcome<B: AutodiffBackend, M: AutodiffModule<B>> {
    /// The trained model.
    pub model: M,
    /// The EMA weights, when on.
    pub ema: Option<M::InnerModule>,
    /// Loop state at the end (history included).
    pub state: LoopState,
    /// Whether all `train.steps` are done (false when stopped early by `stop_after`).
    pub finished: bool,
    #[doc(hidden)]
    pub _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> RunOutcome<B, M> {
    /// The weights to export: the EMA when on, else the trained weights.
    pub fn export(&self) -> M::InnerModule {
        self.ema.clone().unwrap_or_else(|| self.model.valid())
    }
}

/// Whether a checkpoint's saved run config says what `config` says: the saved text read as
/// the current config type, so comments, layout and key order do not matter, and a field added
/// since (which the saved text lacks) takes its default, as it did when the checkpoint was
/// written.
fn same_config<C: serde::de::DeserializeOwned + PartialEq>(saved: &str, config: &C) -> bool {
    toml::from_str::<C>(saved).is_ok_and(|s| &s == config)
}

/// Runs (or resumes) a stage (see the module docs). `config` is the whole run config (`cfg`
/// is its `[train]` table), checkpointed as TOML so a resume under another config is refused.
pub fn run<B, S, C>(
    stage: &mut S,
    model: S::Model,
    cfg: &TrainConfig,
    config: &C,
    opts: &RunOptions,
    device: &B::Device,
) -> Result<RunOutcome<B, S::Model>>
where
    B: AutodiffBackend,
    S: Stage<B>,
    C: serde::Serialize + serde::de::DeserializeOwned + PartialEq,
{
    cfg.validate()?;
    let config_toml = &config::to_toml(config)?;
    let run_dir = &opts.run_dir;
    std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
    let mut model = model;
    let mut optim = optim::adamw(cfg).init::<B, S::Model>();
    let mut ema = cfg.ema.map(|e| optim::Ema::new(model.valid(), e.decay));
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut state = LoopState {
        step: 0,
        rng_word_pos: 0,
        data: serde_json::Value::Null,
        losses: Vec::new(),
        validations: Vec::new(),
        seconds: 0.0,
        config: config_toml.to_string(),
    };
    match (checkpoint::latest(run_dir)?, opts.resume) {
        (Some(ckpt), true) => {
            let saved = checkpoint::read_state(&ckpt)?;
            if !same_config(&saved.config, config) {
                return Err(Error::InvalidInput(format!(
                    "{} was written under another config; resume with the same config or train into a new folder",
                    ckpt.display()
                )));
            }
            model = checkpoint::load_module::<B, S::Model>(model, &ckpt.join("model.mpk"), device)?;
            optim = checkpoint::load_optim::<B, S::Model, _>(optim, &ckpt, device)?;
            if let Some(e) = ema.as_mut() {
                e.module = checkpoint::load_module::<B::InnerBackend, _>(
                    e.module.clone(),
                    &ckpt.join("ema.mpk"),
                    device,
                )?;
            }
            rng.set_word_pos(saved.rng_word_pos);
            stage.restore_data_state(&saved.data)?;
            tracing::info!(stage = stage.name(), step = saved.step, checkpoint = %ckpt.display(), "resumed");
            state = saved;
        }
        (Some(ckpt), false) => {
            return Err(Error::InvalidInput(format!(
                "{} already holds a run (checkpoint {}); pass --resume to continue it, or choose another folder",
                run_dir.display(),
                ckpt.display()
            )));
        }
        (None, _) => {}
    }
    let stop = opts.stop_after.unwrap_or(cfg.steps).min(cfg.steps);
    let bar = if opts.progress {
        let b = ProgressBar::new(cfg.steps as u64);
        b.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_prefix(stage.name().to_string());
        b.set_position(state.step as u64);
        b.reset_eta();
        b
    } else {
        ProgressBar::hidden()
    };
    let session_start = Instant::now();
    let steps_at_start = state.step;
    let seconds_before = state.seconds;
    let mut last_save = state.step;
    while state.step < stop {
        let step = state.step;
        // 1. micro-batches
        let mut grads = GradientsParams::new();
        let mut loss_sum = 0.0;
        let mut terms = Metrics::new();
        for _ in 0..cfg.grad_accumulation {
            let (loss, metrics) = stage.loss(&model, &mut rng)?;
            for (k, v) in metrics {
                *terms.entry(k).or_insert(0.0) += v / cfg.grad_accumulation as f64;
            }
            let value: f64 = loss.clone().into_scalar().elem();
            if !value.is_finite() {
                return Err(Error::NonFinite {
                    what: format!("{} training loss", stage.name()),
                    index: vec![step],
                });
            }
            loss_sum += value;
            let loss = if cfg.grad_accumulation > 1 {
                loss / cfg.grad_accumulation as f64
            } else {
                loss
            };
            let micro = GradientsParams::from_grads(loss.backward(), &model);
            if cfg.grad_accumulation == 1 {
                grads = micro;
            } else {
                optim::accumulate_grads::<B, S::Model>(&model, &mut grads, micro);
            }
        }
        // 2. edits, clipping, schedule, update
        stage.edit_grads(&model, &mut grads);
        let grad_norm = match cfg.max_grad_norm {
            Some(max) => optim::clip_grad_norm::<B, S::Model>(&model, &mut grads, max),
            None => optim::grad_norm::<B, S::Model>(&model, &grads),
        };
        let lr = optim::learning_rate(&cfg.schedule, cfg.lr, step, cfg.steps);
        model = optim.step(lr, model, grads);
        model = stage.after_step(model);
        if let Some(e) = ema.as_mut() {
            e.update(&model, step);
        }
        state.step += 1;
        let loss = loss_sum / cfg.grad_accumulation as f64;
        state.losses.push(LossPoint {
            step: state.step,
            loss,
            lr,
            grad_norm,
            terms: terms.clone(),
        });
        bar.set_position(state.step as u64);
        bar.set_message(format!("loss {loss:.4} lr {lr:.2e}"));
        // Without a terminal (logs, CI) the bar is invisible: print ~100 plain lines instead.
        let every = (cfg.steps / 100).max(1);
        if opts.progress
            && !std::io::IsTerminal::is_terminal(&std::io::stderr())
            && state.step.is_multiple_of(every)
        {
            let elapsed = session_start.elapsed().as_secs_f64();
            let done = (state.step - steps_at_start).max(1) as f64;
            let rate = done / elapsed.max(1e-9);
            let eta = (cfg.steps - state.step) as f64 / rate.max(1e-9);
            let terms: String = terms.iter().map(|(k, v)| format!(" {k} {v:.4}")).collect();
            eprintln!(
                "[{}] step {}/{} loss {loss:.4}{terms} lr {lr:.2e} grad-norm {grad_norm:.3} | {rate:.2} steps/s, ETA {:.1} min",
                stage.name(),
                state.step,
                cfg.steps,
                eta / 60.0
            );
        }
        if state.step.is_multiple_of(50) || state.step == 1 {
            tracing::info!(
                stage = stage.name(),
                step = state.step,
                loss,
                lr,
                grad_norm,
                terms = ?terms,
                "train"
            );
        }
        // 3. validation and checkpoints
        let last = state.step == cfg.steps;
        let validate =
            (cfg.validate_every > 0 && state.step.is_multiple_of(cfg.validate_every)) || last;
        if validate {
            let inner = ema
                .as_ref()
                .map_or_else(|| model.valid(), |e| e.module.clone());
            let metrics = stage.validate(&inner, state.step, run_dir)?;
            tracing::info!(
                stage = stage.name(),
                step = state.step,
                ?metrics,
                "validation"
            );
            bar.println(format!(
                "[{}] step {}: {}",
                stage.name(),
                state.step,
                metrics
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.4}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            state.validations.push(ValPoint {
                step: state.step,
                metrics,
            });
        }
        if state.step.is_multiple_of(cfg.checkpoint_every) || last || state.step == stop {
            state.seconds = seconds_before + session_start.elapsed().as_secs_f64();
            state.rng_word_pos = rng.get_word_pos();
            state.data = stage.data_state();
            checkpoint::save(
                run_dir,
                CheckpointParts::<B, S::Model, _, <S::Model as AutodiffModule<B>>::InnerModule> {
                    model: &model,
                    optim: &optim,
                    ema: ema.as_ref().map(|e| &e.module),
                    state: &state,
                    _b: std::marker::PhantomData,
                },
                cfg.keep_checkpoints,
            )?;
            curve::write_curves(run_dir, stage.name(), &state.losses, &state.validations)?;
            last_save = state.step;
        }
    }
    let _ = last_save;
    bar.finish_and_clear();
    state.seconds = seconds_before + session_start.elapsed().as_secs_f64();
    let finished = state.step >= cfg.steps;
    Ok(RunOutcome {
        model,
        ema: ema.map(|e| e.module),
        state,
        finished,
        _b: std::marker::PhantomData,
    })
}

#[cfg(test)]
mod tests {
    use super::same_config;

    /// A run config; `width` is a field "added later", with a default.
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Cfg {
        steps: usize,
        lr: f64,
        #[serde(default = "d_width")]
        width: usize,
    }
    fn d_width() -> usize {
        128
    }

    fn cfg(steps: usize, width: usize) -> (Cfg, String) {
        let c = Cfg {
            steps,
            lr: 1e-3,
            width,
        };
        let t = toml::to_string(&c).unwrap();
        (c, t)
    }

    #[test]
    fn a_resume_config_may_differ_in_comments_and_layout_but_not_in_values() {
        let (c, t) = cfg(8000, 128);
        let commented = "# a note added later\nwidth = 128 # same\n\nlr = 0.001\nsteps = 8000\n";
        assert!(same_config(commented, &c));
        assert!(same_config(&t, &c));
        let (c9, _) = cfg(9000, 128);
        assert!(!same_config(&t, &c9));
        // a checkpoint written before `width` existed: it had the default, so it resumes
        assert!(same_config("steps = 8000\nlr = 1e-3\n", &c));
        // ... but not under a config that changes it
        let (c64, _) = cfg(8000, 64);
        assert!(!same_config("steps = 8000\nlr = 1e-3\n", &c64));
        // a saved text that is not TOML never matches a config
        assert!(!same_config("not = [toml", &c));
    }
}
