//! The `storygpt` CLI: each subcommand parses its flags, builds a config and calls one library
//! function. Backends are chosen only here (`--backend`).

use clap::{Parser, Subcommand};

use crate::backend::BackendKind;

mod convert;
mod eval;
mod eval_story;
mod info;
mod inspect;
mod train;
mod txt2img;
mod visualize;
mod world;

/// StoryGPT-V story visualization (Char-LDM + LLM) on burn.
#[derive(Debug, Parser)]
#[command(name = "storygpt", version, about, long_about = None)]
pub struct Args {
    /// Backend to run on, among those compiled in (see `storygpt info`). Default: the most
    /// specific compiled-in one (cuda, tch, ndarray, flex).
    #[arg(long, global = true, value_name = "NAME")]
    pub backend: Option<String>,

    /// More log output (-v: info, -vv: debug, -vvv: trace). `RUST_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the compiled-in backends, their devices, and versions.
    Info,
    /// Validate and summarise a checkpoint: a `.safetensors` file, a sharded
    /// `*.safetensors.index.json`, or a Hugging Face / diffusers model folder.
    Inspect(inspect::InspectArgs),
    /// The stage-2 table on test stories: the pipeline with pronoun captions vs Char-LDM with
    /// pronoun and with named captions, scored by the judges.
    EvalStory(eval_story::EvalStoryArgs),
    /// Rewrite a model folder's weights in another float precision (bf16 halves it).
    Convert(convert::ConvertArgs),
    /// Generate one image with a diffusers Stable Diffusion folder.
    Txt2img(txt2img::Txt2ImgArgs),
    /// The procedural story world: generate, check, preview.
    World(world::WorldArgs),
    /// Evaluation: train the judge classifiers, score generated frames.
    Eval(eval::EvalArgs),
    /// Stage 0: train a VAE (diffusers AutoencoderKL) on a dataset's frames.
    TrainVae(train::TrainArgs),
    /// Stage 0: train a CLIP (text + vision, contrastive) on a dataset's captions and frames.
    TrainClip(train::TrainArgs),
    /// Stage 0: pretrain a small Llama-architecture LM on a dataset's stories.
    TrainLm(train::TrainArgs),
    /// Stage 1: train Char-LDM (UNet + FuseModule + CLIP vision, L_reg, mask loss).
    TrainLdm(train::TrainArgs),
    /// Export the newest checkpoint of a `train-ldm` run (EMA weights) as a Char-LDM folder,
    /// without finishing the run.
    ExportLdm(train::ExportLdmArgs),
    /// Between the stages: write Char-LDM's fused embedding of every frame's caption with
    /// names (the stage-2 targets), as safetensors shards with a manifest.
    PrepareEmbeddings(train::PrepareArgs),
    /// Stage 2: align a frozen LLM's [IMG] tokens to the fused embeddings (visual projection,
    /// [IMG] rows and GILL mapper trained).
    TrainLlm(train::TrainArgs),
    /// Draw a story, one frame per sentence, with a StoryGPT-V folder (default: the embedded
    /// story-world model): frames, a storyboard and story.json.
    Visualize(visualize::VisualizeArgs),
}

/// Runs `$f::<Backend>(args..., &device)` on the backend `$kind` (one of the compiled-in ones;
/// `BackendKind::parse` has already rejected the others).
macro_rules! on_backend {
    ($kind:expr, $($f:ident)::+, $($arg:expr),*) => {{
        use crate::backend::BackendKind as K;
        match $kind {
            #[cfg(feature = "flex")]
            K::Flex => $($f)::+::<crate::backend::Flex>($($arg,)* &Default::default()),
            #[cfg(feature = "ndarray")]
            K::NdArray => $($f)::+::<crate::backend::NdArray>($($arg,)* &Default::default()),
            #[cfg(feature = "tch")]
            K::Tch => $($f)::+::<crate::backend::LibTorch>($($arg,)* &Default::default()),
            #[cfg(feature = "cuda")]
            K::Cuda => $($f)::+::<crate::backend::Cuda>($($arg,)* &Default::default()),
            #[allow(unreachable_patterns)]
            other => Err(crate::Error::BackendUnavailable {
                name: other.name().into(),
                reason: "not compiled in".into(),
            }),
        }
    }};
}

pub use visualize::{parse_story, storyboard, write_outputs as write_story_outputs};

/// Runs the CLI.
pub fn run(args: Args) -> crate::Result<()> {
    init_logging(args.verbose);
    let backend = match &args.backend {
        Some(name) => BackendKind::parse(name)?,
        None => BackendKind::default_kind(),
    };
    match args.command {
        Command::Info => info::run(backend),
        Command::Inspect(a) => inspect::run(&a),
        Command::Convert(a) => convert::run(&a),
        Command::EvalStory(a) => on_backend!(backend, eval_story::run, &a),
        Command::Txt2img(a) => on_backend!(backend, txt2img::run, &a),
        Command::World(a) => world::run(&a),
        Command::Eval(a) => on_backend!(backend, eval::run, &a),
        Command::TrainVae(a) => on_backend!(backend, train::vae, &a),
        Command::TrainClip(a) => on_backend!(backend, train::clip, &a),
        Command::TrainLm(a) => on_backend!(backend, train::lm, &a),
        Command::TrainLdm(a) => on_backend!(backend, train::ldm, &a),
        Command::ExportLdm(a) => on_backend!(backend, train::export_ldm, &a),
        Command::PrepareEmbeddings(a) => on_backend!(backend, train::prepare, &a),
        Command::TrainLlm(a) => on_backend!(backend, train::llm, &a),
        Command::Visualize(a) => on_backend!(backend, visualize::run, &a),
    }
}

/// Maps a failed write to stdout to an error; a closed pipe (`storygpt inspect | head`) is
/// reported as [`std::io::ErrorKind::BrokenPipe`], which `main` treats as success.
pub(crate) fn stdout_error(e: std::io::Error) -> crate::Error {
    crate::Error::io("<stdout>", e)
}

/// Whether an error is only a closed stdout pipe.
pub fn is_broken_pipe(err: &crate::Error) -> bool {
    matches!(err, crate::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
