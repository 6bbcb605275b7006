//! Trains stage 2, LLM alignment, from a run config (`configs/storyworld/stage2.toml`): a frozen
//! LLM learns `[IMG]` tokens whose mapped hidden states hit Char-LDM's fused embedding of the
//! caption *with names* while it reads the caption *with pronouns* and the earlier frames.
//!
//! ```bash
//! # the targets first: Char-LDM's fused embedding of every frame
//! cargo run --release -- prepare-embeddings --ldm runs/ldm/model --data data/world64 --out runs/embeddings
//! cargo run --release --example train_llm -- configs/storyworld/stage2.toml runs/stage2
//! # interrupted? the same command with --resume continues bit-exactly
//! ```
//!
//! The objective and what is frozen are spelled out in `storygpt::train::stage2` (module docs);
//! `storygpt train-llm` is the same thing behind the CLI.

use burn::backend::Autodiff;
use storygpt::backend::{DefaultBackend, default_device};
use storygpt::train::RunOptions;
use storygpt::train::config::read_toml;
use storygpt::train::stage2::{Stage2RunConfig, train_stage2};

fn main() -> storygpt::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let positional: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let (Some(config), Some(out)) = (positional.first(), positional.get(1)) else {
        eprintln!("usage: train_llm CONFIG.toml RUN_DIR [--resume] [--stop-after=N]");
        std::process::exit(2);
    };
    let stop_after = args
        .iter()
        .find_map(|a| a.strip_prefix("--stop-after="))
        .and_then(|v| v.parse().ok());

    // 1. The run config: dataset + prepared targets, the frozen LLM and CLIP, the mapper sizes.
    let cfg: Stage2RunConfig = read_toml(config.as_ref())?;
    println!(
        "stage 2 on {} with LLM {}: {} steps of batch {} (lr {}, CE weight {}, L2 weight {})",
        cfg.data.dataset.display(),
        cfg.components.llm.display(),
        cfg.train.steps,
        cfg.train.batch_size,
        cfg.train.lr,
        cfg.loss.ce_weight,
        cfg.loss.align_weight,
    );

    // 2. Train; the head with the best validation L2 is kept in RUN_DIR/best.
    let opts = RunOptions {
        run_dir: out.into(),
        resume: args.iter().any(|a| a == "--resume"),
        stop_after,
        progress: true,
    };
    let report = train_stage2::<Autodiff<DefaultBackend>>(&cfg, &opts, &default_device())?;

    // 3. What came out.
    if report.finished {
        println!(
            "done in {:.1} min; best validation L2 {:.4}; head in {}/model",
            report.seconds / 60.0,
            report.best_align_l2,
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
