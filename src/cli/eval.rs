//! `storygpt eval`: train the judge classifiers and score generated frames.

use std::path::PathBuf;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use indicatif::{ProgressBar, ProgressStyle};
use storygpt_core::{Error, Result};
use storygpt_data::{Split, open_dataset};
use storygpt_eval::classifier::{LabelKind, load_classifier};
use storygpt_eval::clip_score::ClipScorer;
use storygpt_eval::fid_features::{FidInputChain, InceptionFid};
use storygpt_eval::report::{
    EvalOptions, FidChoice, GeneratedSet, evaluate, grid, summary_markdown, write_report,
};
use storygpt_eval::train_classifier::{ClassifierArch, TrainClassifierConfig, train_classifier};

/// `storygpt eval ...`
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: EvalCommand,
}

/// Evaluation subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum EvalCommand {
    /// Train a character or background classifier (the judge) on a dataset's ground truth.
    TrainClassifier(TrainClassifierArgs),
    /// Score a folder of generated frames against a dataset split; write metrics.json,
    /// summary.md and grid.png.
    Run(RunArgs),
}

/// Network of `train-classifier`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Arch {
    /// The small CNN (story world; trains in about a minute on 2 cores).
    SmallCnn,
    /// The original evaluator's Inception-v3 (299², for GPUs).
    Inception,
}

/// Flags of `storygpt eval train-classifier`.
#[derive(Debug, clap::Args)]
pub struct TrainClassifierArgs {
    /// Dataset folder (story world, FlintstonesSV or PororoSV layout).
    #[arg(long)]
    pub dataset: PathBuf,
    /// What to classify: `char` or `bg`.
    #[arg(long)]
    pub kind: String,
    /// Output classifier folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Network.
    #[arg(long, value_enum, default_value_t = Arch::SmallCnn)]
    pub arch: Arch,
    /// Optimizer steps (default: 1200 small CNN, 2000 Inception).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Batch size (default: 64 small CNN, 32 Inception).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Learning rate (default: 3e-3 small CNN peak, 1e-4 Inception).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Small CNN input side.
    #[arg(long, default_value_t = 64)]
    pub input_size: usize,
    /// Small CNN: train without augmentation.
    #[arg(long)]
    pub no_augment: bool,
    /// Inception: ImageNet weights to start from (torchvision `inception_v3`, `.pth` or
    /// `.safetensors`).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Inception: width divisor (1 = the real network).
    #[arg(long, default_value_t = 1)]
    pub width_divisor: usize,
}

/// Feature space of `eval run`'s FID.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FidFeatures {
    /// Inception with `--fid-weights` when given, else the character classifier's features.
    Auto,
    /// pytorch-fid Inception (needs `--fid-weights`).
    Inception,
    /// The character classifier's pooled features (not comparable to Inception FID).
    Classifier,
    /// No FID.
    None,
}

/// Flags of `storygpt eval run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Generated frames: GENERATED/{first frame id}/{frame id}.png or GENERATED/{frame id}.png.
    #[arg(long)]
    pub generated: PathBuf,
    /// The dataset the stories come from.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Report folder (metrics.json, summary.md, grid.png).
    #[arg(long)]
    pub out: PathBuf,
    /// Split whose stories were generated.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Character classifier folder (from `eval train-classifier --kind char`).
    #[arg(long)]
    pub char_classifier: Option<PathBuf>,
    /// Background classifier folder.
    #[arg(long)]
    pub bg_classifier: Option<PathBuf>,
    /// FID feature space.
    #[arg(long, value_enum, default_value_t = FidFeatures::Auto)]
    pub fid_features: FidFeatures,
    /// pytorch-fid weights: `pt_inception-2015-12-05-6726825d.pth`, a safetensors conversion,
    /// or a folder with config.json.
    #[arg(long)]
    pub fid_weights: Option<PathBuf>,
    /// FID input chain: `standard` (pytorch-fid) or `storygpt-v` (the original evaluator).
    #[arg(long, default_value = "standard")]
    pub fid_chain: String,
    /// A CLIPModel folder for CLIP T-I / I-I scores.
    #[arg(long)]
    pub clip: Option<PathBuf>,
    /// Stories in the grid.
    #[arg(long, default_value_t = 8)]
    pub grid_stories: usize,
    /// Seed of the ground-truth image draw (clips with several images).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Dispatches an `eval` subcommand on backend `B`.
pub fn run<B: Backend + 'static>(args: &EvalArgs, device: &B::Device) -> Result<()> {
    match &args.command {
        EvalCommand::TrainClassifier(a) => train::<B>(a, device),
        EvalCommand::Run(a) => run_eval::<B>(a, device),
    }
}

fn train<B: Backend>(a: &TrainClassifierArgs, device: &B::Device) -> Result<()> {
    let dataset = open_dataset(&a.dataset)?;
    let kind = LabelKind::parse(&a.kind)?;
    let arch = match a.arch {
        Arch::SmallCnn => ClassifierArch::SmallCnn,
        Arch::Inception => ClassifierArch::Inception,
    };
    let mut cfg = TrainClassifierConfig::new(kind, arch);
    if let Some(s) = a.steps {
        cfg.steps = s;
    }
    if let Some(b) = a.batch_size {
        cfg.batch_size = b;
    }
    if let Some(lr) = a.lr {
        cfg.learning_rate = lr;
    }
    cfg.seed = a.seed;
    if matches!(arch, ClassifierArch::SmallCnn) {
        cfg.input_size = a.input_size;
        cfg.augment = !a.no_augment;
    }
    cfg.width_divisor = a.width_divisor;
    cfg.init = a.init.clone();
    let bar = ProgressBar::new(cfg.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} steps {per_sec} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("training {} classifier", kind.short()));
    let report =
        train_classifier::<Autodiff<B>>(dataset.as_ref(), &cfg, &a.out, device, &mut |_, loss| {
            bar.set_message(format!("loss {loss:.4}"));
            bar.inc(1);
        })?;
    bar.finish_and_clear();
    println!(
        "{} classifier: {} training frames, {} steps in {:.1} s; ground-truth test frames: Acc {:.2} %, F1 {:.2}",
        kind.short(),
        report.train_frames,
        cfg.steps,
        report.train_seconds,
        report.test.accuracy,
        report.test.f1
    );
    for (label, acc) in &report.per_label_accuracy {
        println!("  {label:12} {:.2} %", 100.0 * acc);
    }
    println!("wrote {}", a.out.display());
    Ok(())
}

fn run_eval<B: Backend + 'static>(a: &RunArgs, device: &B::Device) -> Result<()> {
    let dataset = open_dataset(&a.dataset)?;
    let split = Split::parse(&a.split)?;
    let set = GeneratedSet::find(&a.generated, dataset.as_ref(), split)?;
    let char_c = a
        .char_classifier
        .as_ref()
        .map(|d| load_classifier::<B>(d, device))
        .transpose()?;
    let bg_c = a
        .bg_classifier
        .as_ref()
        .map(|d| load_classifier::<B>(d, device))
        .transpose()?;
    let chain = FidInputChain::parse(&a.fid_chain)?;
    let inception = match (a.fid_features, &a.fid_weights) {
        (FidFeatures::Inception | FidFeatures::Auto, Some(w)) => {
            Some(InceptionFid::<B>::from_path(w, chain, device)?)
        }
        (FidFeatures::Inception, None) => {
            return Err(Error::InvalidInput(
                "--fid-features inception needs --fid-weights (pt_inception-2015-12-05-6726825d.pth)"
                    .into(),
            ));
        }
        _ => None,
    };
    let fid = match (&inception, a.fid_features) {
        (Some(i), _) => FidChoice::With(i),
        (None, FidFeatures::None) => FidChoice::None,
        (None, _) if char_c.is_some() => FidChoice::CharClassifierFeatures,
        (None, _) => FidChoice::None,
    };
    let clip = a
        .clip
        .as_ref()
        .map(|d| ClipScorer::<B>::from_pretrained(d, device))
        .transpose()?;
    let options = EvalOptions {
        split,
        char_classifier: char_c.as_ref(),
        bg_classifier: bg_c.as_ref(),
        fid,
        clip: clip.as_ref(),
        grid_stories: a.grid_stories,
        seed: a.seed,
    };
    let bar = ProgressBar::new_spinner();
    let (report, gen_imgs, gt_imgs) =
        evaluate(&set, dataset.as_ref(), &options, device, &mut |stage| {
            bar.set_message(stage.to_string());
            bar.tick();
        })?;
    bar.finish_and_clear();
    let sheet = grid(dataset.as_ref(), &set, &gen_imgs, &gt_imgs, a.grid_stories)?;
    write_report(&a.out, &report, &sheet)?;
    print!("{}", summary_markdown(&report));
    println!("\nwrote {}", a.out.display());
    Ok(())
}
