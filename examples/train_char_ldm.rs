//! Trains stage 1, Char-LDM, from a run config: the story world (`configs/storyworld/ldm.toml`)
//! or the original FlintstonesSV layout (point `[data] dataset` at a folder with
//! `split.json`, `video_frames_sampled_4x/`, `seg_mask_4x_comb/`, ...).
//!
//! ```bash
//! cargo run --release --example train_char_ldm -- configs/storyworld/ldm.toml runs/ldm
//! # interrupted? the same command with --resume continues bit-exactly
//! cargo run --release --example train_char_ldm -- configs/storyworld/ldm.toml runs/ldm --resume
//! ```
//!
//! What one step does is spelled out in `storygpt::train::char_ldm` (the module docs); the
//! loop itself (accumulation, clipping, schedule, EMA, checkpoints) is `storygpt::train::run`.
//! `storygpt train-ldm` is the same thing behind the CLI.

use burn::backend::Autodiff;
use storygpt::backend::{DefaultBackend, default_device};
use storygpt::train::RunOptions;
use storygpt::train::char_ldm::{CharLdmRunConfig, train_char_ldm};
use storygpt::train::config::read_toml;

fn main() -> storygpt::Result<()> {
    tracing_subscriber_init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let positional: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let (Some(config), Some(out)) = (positional.first(), positional.get(1)) else {
        eprintln!("usage: train_char_ldm CONFIG.toml RUN_DIR [--resume] [--stop-after=N]");
        std::process::exit(2);
    };
    let stop_after = args
        .iter()
        .find_map(|a| a.strip_prefix("--stop-after="))
        .and_then(|v| v.parse().ok());

    // 1. The run config: data, the frozen VAE + CLIP, the UNet, the loop, the loss weights.
    let cfg: CharLdmRunConfig = read_toml(config.as_ref())?;
    println!(
        "Char-LDM on {} at {}², {} steps of batch {} (lr {}, L_reg weight {}, mask-loss p {})",
        cfg.data.dataset.display(),
        cfg.data.resolution,
        cfg.train.steps,
        cfg.train.batch_size,
        cfg.train.lr,
        cfg.loss.reg_weight,
        cfg.loss.mask_loss_prob,
    );

    // 2. Train on the default backend with autodiff; checkpoints land in RUN_DIR/checkpoints.
    let opts = RunOptions {
        run_dir: out.into(),
        resume: args.iter().any(|a| a == "--resume"),
        stop_after,
        progress: true,
    };
    let report = train_char_ldm::<Autodiff<DefaultBackend>>(&cfg, &opts, &default_device())?;

    // 3. What came out.
    if report.finished {
        println!(
            "done in {:.1} min; model in {}/model",
            report.seconds / 60.0,
            out
        );
    } else {
        println!("paused after {} steps; rerun with --resume", report.steps);
    }
    for (k, v) in &report.metrics {
        println!("  {k:<24} {v:.4}");
    }
    Ok(())
}

fn tracing_subscriber_init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
}
