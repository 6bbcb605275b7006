//! `storygpt visualize`: one frame per sentence of a story, with the StoryGPT-V pipeline.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::Backend;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use storygpt_core::{Error, Result};

use crate::pipeline::{FirstFrame, StoryFrame, StoryOptions, StoryPipeline, split_sentences};

/// Flags of `storygpt visualize`.
#[derive(Debug, clap::Args)]
pub struct VisualizeArgs {
    /// The story: sentences as plain text ("Fred walks in. He waves."), or a JSON list of
    /// sentences. Alternatively `--story-file`.
    #[arg(long, conflicts_with = "story_file")]
    pub story: Option<String>,
    /// A file holding the story (plain text or a JSON list).
    #[arg(long)]
    pub story_file: Option<PathBuf>,
    /// A StoryGPT-V folder (`model_index.json` naming `ldm` and `head`).
    #[arg(long, default_value = "models/storyworld")]
    pub model: PathBuf,
    /// Output folder: `frame-01.png`…, `storyboard.png`, `story.json`.
    #[arg(long, default_value = "story")]
    pub out: PathBuf,
    /// Sampling and story options over the model folder's defaults.
    #[command(flatten)]
    pub options: StoryOptionArgs,
}

/// The flags that override a StoryGPT-V folder's default [`StoryOptions`] (`visualize`,
/// `eval-story`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StoryOptionArgs {
    /// Seed of frame 1 (frame k uses seed + k - 1).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Denoising steps (default: the model folder's).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Sampler (default: the model folder's).
    #[arg(long, value_enum)]
    pub scheduler: Option<crate::train::char_ldm::Sampler>,
    /// Classifier-free guidance scale.
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Earlier frames the LLM sees (0 = none; `all` = the whole story).
    #[arg(long)]
    pub history_window: Option<String>,
    /// Frame 1 through the LLM (`llm`, the paper) or Char-LDM alone (`char-ldm`, the
    /// original code).
    #[arg(long)]
    pub first_frame: Option<String>,
}

impl StoryOptionArgs {
    /// Applies the given flags to `opts`.
    pub fn apply(&self, opts: &mut StoryOptions) -> Result<()> {
        if let Some(s) = self.seed {
            opts.seed = s;
        }
        if let Some(s) = self.steps {
            opts.sample.steps = s;
        }
        if let Some(k) = self.scheduler {
            opts.sample.scheduler = k;
        }
        if let Some(g) = self.guidance {
            opts.sample.guidance_scale = g;
        }
        if let Some(w) = &self.history_window {
            opts.history_window = match w.as_str() {
                "all" => None,
                n => Some(n.parse().map_err(|_| {
                    Error::InvalidInput(format!(
                        "--history-window must be a number or `all`, not {n:?}"
                    ))
                })?),
            };
        }
        if let Some(f) = &self.first_frame {
            opts.first_frame = match f.as_str() {
                "llm" => FirstFrame::Llm,
                "char-ldm" => FirstFrame::CharLdm,
                other => {
                    return Err(Error::InvalidInput(format!(
                        "--first-frame must be `llm` or `char-ldm`, not {other:?}"
                    )));
                }
            };
        }
        Ok(())
    }
}

/// `story.json`.
#[derive(Debug, Serialize)]
struct StoryJson<'a> {
    model: &'a Path,
    backend: String,
    options: &'a StoryOptions,
    frames: Vec<FrameJson>,
    total_seconds: f64,
    load_seconds: f64,
}

#[derive(Debug, Serialize)]
struct FrameJson {
    file: String,
    caption: String,
    pronoun: bool,
    seed: u64,
    history_frames: usize,
    context_tokens: usize,
    new_context_tokens: usize,
    seconds: f64,
}

/// Parses a story: a JSON list of strings, else text split into sentences.
pub fn parse_story(text: &str) -> Result<Vec<String>> {
    let t = text.trim();
    if t.starts_with('[') {
        let list: Vec<String> = serde_json::from_str(t).map_err(|e| {
            Error::InvalidInput(format!(
                "the story looks like JSON but is not a list of strings: {e}"
            ))
        })?;
        return Ok(list.into_iter().map(|s| s.trim().to_string()).collect());
    }
    Ok(split_sentences(t))
}

/// `storygpt visualize`.
pub fn run<B: Backend>(a: &VisualizeArgs, device: &B::Device) -> Result<()> {
    let t0 = Instant::now();
    let text = match (&a.story, &a.story_file) {
        (Some(s), _) => s.clone(),
        (None, Some(p)) => std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?,
        (None, None) => {
            return Err(Error::InvalidInput(
                "give the story with --story \"…\" or --story-file FILE".into(),
            ));
        }
    };
    let story = parse_story(&text)?;
    let (pipe, mut opts) = StoryPipeline::<B>::from_dir(&a.model, device)?;
    a.options.apply(&mut opts)?;
    let load_seconds = t0.elapsed().as_secs_f64();
    pipe.check_story(&story, &opts)?;
    let bar = ProgressBar::new(story.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "[visualize] {bar:30} frame {pos}/{len} | {per_sec}, ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let frames = pipe.visualize(&story, &opts, &mut |k, _| bar.set_position(k as u64))?;
    bar.finish_and_clear();
    write_outputs(
        &a.out,
        &a.model,
        B::name(device),
        &opts,
        &frames,
        load_seconds,
    )?;
    let total: f64 = frames.iter().map(|f| f.seconds).sum();
    println!(
        "{} frames in {:.1} s ({:.2} s/frame, model load {:.1} s) → {}",
        frames.len(),
        total,
        total / frames.len().max(1) as f64,
        load_seconds,
        a.out.join("storyboard.png").display()
    );
    Ok(())
}

/// Writes `frame-NN.png`, `storyboard.png` and `story.json` into `out` (each atomically).
pub fn write_outputs(
    out: &Path,
    model: &Path,
    backend: String,
    opts: &StoryOptions,
    frames: &[StoryFrame],
    load_seconds: f64,
) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut json = Vec::with_capacity(frames.len());
    for (k, f) in frames.iter().enumerate() {
        let file = format!("frame-{:02}.png", k + 1);
        storygpt_data::draw::save_png(&out.join(&file), &f.image)?;
        json.push(FrameJson {
            file,
            caption: f.caption.clone(),
            pronoun: f.pronoun,
            seed: f.seed,
            history_frames: f.history,
            context_tokens: f.context_tokens,
            new_context_tokens: f.new_tokens,
            seconds: f.seconds,
        });
    }
    storygpt_data::draw::save_png(&out.join("storyboard.png"), &storyboard(frames))?;
    storygpt_core::fs::write_json_atomic(
        out.join("story.json"),
        &StoryJson {
            model,
            backend,
            options: opts,
            frames: json,
            total_seconds: load_seconds + frames.iter().map(|f| f.seconds).sum::<f64>(),
            load_seconds,
        },
    )
}

/// The frames in a strip (at most 8 per row), scaled to at least 192 px, each captioned.
pub fn storyboard(frames: &[StoryFrame]) -> image::RgbImage {
    let tiles: Vec<(image::RgbImage, String)> = frames
        .iter()
        .enumerate()
        .map(|(k, f)| {
            let scale = (192 / f.image.width().max(1)).max(1);
            let img = image::imageops::resize(
                &f.image,
                f.image.width() * scale,
                f.image.height() * scale,
                image::imageops::FilterType::Nearest,
            );
            (img, format!("{}. {}", k + 1, f.caption))
        })
        .collect();
    storygpt_data::draw::contact_sheet(&tiles, tiles.len().clamp(1, 8), 4, 8)
}
