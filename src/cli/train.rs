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

/// `storygpt train-llm`.
pub fn llm<B: Backend>(a: &TrainArgs, device: &B::Device) -> Result<()> {
    let cfg: crate::train::stage2::Stage2RunConfig = read_toml(&a.config)?;
    let r = crate::train::stage2::train_stage2::<Autodiff<B>>(&cfg, &a.options(), device)?;
    report(&a.out, r.finished, r.steps, r.seconds);
    println!(
        "best head: validation L2 {:.4}, validation objective {:.4}",
        r.best_align_l2, r.best_score
    );
    print_metrics(&r.metrics);
    Ok(())
}

/// Flags of `storygpt prepare-embeddings`.
#[derive(Debug, Clone, clap::Args)]
pub struct PrepareArgs {
    /// The Char-LDM folder (`RUN/model` of `train-ldm`).
    #[arg(long)]
    pub ldm: PathBuf,
    /// The dataset folder.
    #[arg(long)]
    pub data: PathBuf,
    /// The output folder (resumes when it holds an unfinished run of the same inputs).
    #[arg(long)]
    pub out: PathBuf,
    /// Frames per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Frames per shard file.
    #[arg(long, default_value_t = 1024)]
    pub shard_size: usize,
}

/// `storygpt prepare-embeddings`.
pub fn prepare<B: Backend>(a: &PrepareArgs, device: &B::Device) -> Result<()> {
    let ldm = crate::train::char_ldm::load_char_ldm::<B>(&a.ldm, device)?;
    let dataset = storygpt_data::open_dataset(&a.data)?;
    let t0 = std::time::Instant::now();
    let m = crate::train::embeddings::prepare_embeddings(
        &ldm,
        &a.ldm,
        dataset.as_ref(),
        &crate::train::embeddings::PrepareOptions {
            out: a.out.clone(),
            batch_size: a.batch_size,
            shard_size: a.shard_size,
            progress: true,
        },
        device,
    )?;
    println!(
        "{} fused embeddings [{}, {}] in {} shards under {} ({:.1} s)",
        m.frames,
        m.shape[0],
        m.shape[1],
        m.shards.len(),
        a.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Flags of `storygpt export-ldm`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportLdmArgs {
    /// A `train-ldm` run folder.
    #[arg(long)]
    pub run: PathBuf,
    /// Where to write the Char-LDM folder (replaced atomically).
    #[arg(long)]
    pub out: PathBuf,
}

/// `storygpt export-ldm`: the newest checkpoint of a Char-LDM run as a model folder.
pub fn export_ldm<B: Backend>(a: &ExportLdmArgs, device: &B::Device) -> Result<()> {
    let step = crate::train::char_ldm::export_char_ldm_checkpoint::<B>(&a.run, &a.out, device)?;
    println!(
        "exported step {step} of {} to {}",
        a.run.display(),
        a.out.display()
    );
    Ok(())
}
