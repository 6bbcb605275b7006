//! `storygpt txt2img`: one image from a diffusers Stable Diffusion folder.

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::DType;
use burn::tensor::backend::Backend;
use indicatif::{ProgressBar, ProgressStyle};
use storygpt_core::{Error, Result};
use storygpt_models::txt2img::{Txt2ImgPipeline, Txt2ImgRequest, save_png};

/// Flags of `storygpt txt2img`.
#[derive(Debug, clap::Args)]
pub struct Txt2ImgArgs {
    /// A diffusers Stable Diffusion folder (`model_index.json`, `unet/`, `vae/`, ...).
    #[arg(long)]
    pub model: PathBuf,
    /// The prompt.
    #[arg(long)]
    pub prompt: String,
    /// The negative prompt.
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
    /// Output PNG path (written atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// Sampling steps.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Classifier-free guidance scale.
    #[arg(long, default_value_t = 7.5)]
    pub guidance: f64,
    /// Seed of the initial noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image height in pixels.
    #[arg(long, default_value_t = 512)]
    pub height: usize,
    /// Image width in pixels.
    #[arg(long, default_value_t = 512)]
    pub width: usize,
    /// Weight-file variant to load, e.g. `fp16` (`diffusion_pytorch_model.fp16.safetensors`).
    #[arg(long)]
    pub variant: Option<String>,
    /// Float type of the weights in memory.
    #[arg(long, value_enum, default_value_t = WeightDType::F32)]
    pub dtype: WeightDType,
    /// Char-LDM delayed conditioning: switch to `--late-prompt` after this step index.
    #[arg(long, requires = "late_prompt")]
    pub start_merge_step: Option<usize>,
    /// The prompt used after `--start-merge-step`.
    #[arg(long, requires = "start_merge_step")]
    pub late_prompt: Option<String>,
}

/// In-memory float type of the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightDType {
    /// 32-bit floats.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

impl WeightDType {
    fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
        }
    }
}

/// Loads the pipeline, samples with a progress bar, writes the PNG.
pub fn run<B: Backend>(args: &Txt2ImgArgs, device: &B::Device) -> Result<()> {
    if args
        .out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
        != Some("png")
    {
        return Err(Error::InvalidInput(format!(
            "--out {} must end in .png",
            args.out.display()
        )));
    }
    let t0 = Instant::now();
    let mut pipe = Txt2ImgPipeline::<B>::from_pretrained(
        &args.model,
        device,
        args.variant.as_deref(),
        Some(args.dtype.dtype()),
    )?;
    tracing::info!(model = %args.model.display(), secs = t0.elapsed().as_secs_f64(), "loaded pipeline");

    let request = Txt2ImgRequest {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        height: args.height,
        width: args.width,
        num_inference_steps: args.steps,
        guidance_scale: args.guidance,
        seed: args.seed,
        delayed: args.start_merge_step.zip(args.late_prompt.clone()),
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} step {pos}/{len} [{bar:30}] {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let t1 = Instant::now();
    let out = pipe.generate(&request, None, &mut |s| {
        bar.set_length(s.total as u64);
        bar.set_position(s.index as u64 + 1);
    })?;
    bar.finish_and_clear();
    save_png(&args.out, args.width, args.height, &out.rgb8)?;
    eprintln!(
        "wrote {} ({}x{}, {} steps in {:.1} s)",
        args.out.display(),
        args.width,
        args.height,
        args.steps,
        t1.elapsed().as_secs_f64()
    );
    Ok(())
}
