//! `storygpt eval-story`: the stage-2 table (full pipeline with pronouns, Char-LDM with
//! pronouns, Char-LDM with names) on a dataset's test stories, or on its validation stories to
//! tune sampler settings.

use std::path::PathBuf;
use std::sync::Arc;

use burn::tensor::backend::Backend;
use indicatif::{ProgressBar, ProgressStyle};
use storygpt_core::Result;

use crate::cli::visualize::StoryOptionArgs;
use crate::pipeline::StoryPipeline;
use crate::story_eval::{StoryEvalSpec, StoryRowKind, evaluate_stories, markdown};

/// Flags of `storygpt eval-story`.
#[derive(Debug, clap::Args)]
pub struct EvalStoryArgs {
    /// A StoryGPT-V folder.
    #[arg(long, default_value = "models/storyworld")]
    pub model: PathBuf,
    /// The dataset whose test stories are drawn.
    #[arg(long)]
    pub data: PathBuf,
    /// How many stories (the first ones of `--split`).
    #[arg(long, default_value_t = 100)]
    pub stories: usize,
    /// The split whose stories are drawn: `test` for the reported table, `val` to tune sampler
    /// settings without looking at the test stories.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// The rows to draw, comma-separated (default: the paper's three, in its order).
    /// `pipeline-names`, the pipeline fed the captions with names, is a diagnostic row: with
    /// `pipeline` it separates pronoun resolution from alignment.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub rows: Vec<StoryRowKind>,
    /// Output folder: `table.md`, `metrics.json`, `stories.png`.
    #[arg(long)]
    pub out: PathBuf,
    /// Character judge folder.
    #[arg(long, default_value = "models/storyworld/judge-char")]
    pub char_judge: PathBuf,
    /// Background judge folder.
    #[arg(long, default_value = "models/storyworld/judge-bg")]
    pub bg_judge: PathBuf,
    /// Sampling and story options over the model folder's defaults (`--seed` is story 1's;
    /// story k's is `seed + 1000 (k - 1)`).
    #[command(flatten)]
    pub options: StoryOptionArgs,
}

/// `storygpt eval-story`.
pub fn run<B: Backend + 'static>(a: &EvalStoryArgs, device: &B::Device) -> Result<()> {
    let (mut pipe, mut opts) = StoryPipeline::<B>::from_dir(&a.model, device)?;
    a.options.apply(&mut opts)?;
    let spec = StoryEvalSpec {
        split: storygpt_data::Split::parse(&a.split)?,
        stories: a.stories,
        rows: if a.rows.is_empty() {
            StoryRowKind::ALL.to_vec()
        } else {
            a.rows.clone()
        },
    };
    let dataset: Arc<dyn storygpt_data::StoryDataset> =
        Arc::from(storygpt_data::open_dataset(&a.data)?);
    // The dataset's characters are the ones to draw: its portraits replace the folder's cast
    // (used when Char-LDM draws a sentence itself, `--first-frame char-ldm`).
    pipe.cast = Some(crate::cast::Cast::from_dataset(dataset.as_ref())?);
    let bar = ProgressBar::new(a.stories as u64);
    bar.set_style(
        ProgressStyle::with_template("[eval-story] {bar:30} story {pos}/{len} | ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (rows, frames) = evaluate_stories(
        &pipe,
        dataset,
        &spec,
        &opts,
        (Some(a.char_judge.as_path()), Some(a.bg_judge.as_path())),
        &mut |i, n| {
            bar.set_length(n as u64);
            bar.set_position(i as u64)
        },
        device,
    )?;
    bar.finish_and_clear();
    std::fs::create_dir_all(&a.out).map_err(|e| storygpt_core::Error::io(&a.out, e))?;
    let table = markdown(&rows);
    storygpt_core::fs::write_atomic(a.out.join("table.md"), table.as_bytes())?;
    storygpt_core::fs::write_json_atomic(
        a.out.join("metrics.json"),
        &serde_json::json!({"model": a.model, "data": a.data, "split": a.split,
            "stories": a.stories, "options": opts, "rows": rows}),
    )?;
    // The first two stories: one row of frames per condition, captions under the first row's.
    let n = frames.ids.len().min(8);
    let mut tiles = Vec::new();
    for (r, row) in frames.rows.iter().enumerate() {
        for (img, caption) in row.iter().zip(&frames.captions).take(n) {
            let label = if r == 0 {
                caption.clone()
            } else {
                String::new()
            };
            tiles.push((crate::train::data::resize(img, 96), label));
        }
    }
    storygpt_data::draw::save_png(
        &a.out.join("stories.png"),
        &storygpt_data::draw::contact_sheet(&tiles, n.max(1), 3, 4),
    )?;
    print!("{table}");
    Ok(())
}
