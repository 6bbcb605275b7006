//! `storygpt train-*`: train a stage from a TOML run config, with checkpoints and `--resume`.

use std::path::PathBuf;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use storygpt_core::Result;

use crate::train::RunOptions;
use crate::train::config::read_toml;

/// Flags shared by every `train-*` command.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// The run config (TOML). Examples: `configs/storyworld/*.toml`.
    #[arg(long)]
    pub config: PathBuf,
    /// The run folder: checkpoints, loss curve, validation images, and the exported model
    /// (`RUN/model/`) once all steps are done.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from the newest checkpoint in `--out` (the config must be the same).
    #[arg(long)]
    pub resume: bool,
    /// Stop (after a checkpoint) once this many steps are done in total; resume later.
    #[arg(long)]
    pub stop_after: Option<usize>,
}

impl TrainArgs {
    fn options(&self) -> RunOptions {
        RunOptions {
            run_dir: self.out.clone(),
            resume: self.resume,
            stop_after: self.stop_after,
            progress: true,
        }
    }
}

/// `storygpt train-vae`.
pub fn vae<B: Backend>(a: &TrainArgs, device: &B::Device) -> Result<()> {
    let cfg: crate::train::vae::VaeRunConfig = read_toml(&a.config)?;
    let r = crate::train::vae::train_vae::<Autodiff<B>>(&cfg, &a.options(), device)?;
    report(&a.out, r.finished, r.steps, r.seconds);
    if let (Some(p), Some(s)) = (r.psnr_db, r.scaling_factor) {
        println!("validation PSNR {p:.2} dB, latent scaling factor {s:.4}");
    }
    Ok(())
}

pub(crate) fn report(out: &std::path::Path, finished: bool, steps: usize, seconds: f64) {
    if finished {
        println!(
            "done: {steps} steps in {:.1} min; model in {}",
            seconds / 60.0,
            out.join("model").display()
        );
    } else {
        println!(
            "paused after {steps} steps ({:.1} min so far); continue with --resume",
            seconds / 60.0
        );
    }
}

/// `storygpt train-clip`.
pub fn clip<B: Backend>(a: &TrainArgs, device: &B::Device) -> Result<()> {
    let cfg: crate::train::clip::ClipRunConfig = read_toml(&a.config)?;
    let r = crate::train::clip::train_clip::<Autodiff<B>>(&cfg, &a.options(), device)?;
    report(&a.out, r.finished, r.steps, r.seconds);
    print_metrics(&r.metrics);
    Ok(())
}

/// `storygpt train-lm`.
pub fn lm<B: Backend>(a: &TrainArgs, device: &B::Device) -> Result<()> {
    let cfg: crate::train::lm::LmRunConfig = read_toml(&a.config)?;
    let r = crate::train::lm::train_lm::<Autodiff<B>>(&cfg, &a.options(), device)?;
    report(&a.out, r.finished, r.steps, r.seconds);
    print_metrics(&r.metrics);
    Ok(())
}

/// `storygpt train-ldm`.
pub fn ldm<B: Backend>(a: &TrainArgs, device: &B::Device) -> Result<()> {
    let cfg: crate::train::char_ldm::CharLdmRunConfig = read_toml(&a.config)?;
    let r = crate::train::char_ldm::train_char_ldm::<Autodiff<B>>(&cfg, &a.options(), device)?;
    report(&a.out, r.finished, r.steps, r.seconds);
    print_metrics(&r.metrics);
    Ok(())
}

fn print_metrics(m: &crate::train::Metrics) {
    for (k, v) in m {
        println!("  {k}: {v:.4}");
    }
}
