//! `storygpt world`: generate, check and preview the procedural story world.

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use storygpt_core::{Error, Result};
use storygpt_data::draw::save_png;
use storygpt_data::world::{self, StoryWorld, WorldConfig};

/// `storygpt world ...`
#[derive(Debug, clap::Args)]
pub struct WorldArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: WorldCommand,
}

/// Story-world subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum WorldCommand {
    /// Generate a story world dataset (frames, masks, captions, labels, splits).
    Generate(GenerateArgs),
    /// Decode every file of a story world and check it against the manifest.
    Check(CheckArgs),
    /// Write a contact sheet of random frames (and optionally the cast) as PNG.
    Preview(PreviewArgs),
}

/// Flags of `storygpt world generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Output folder (must not exist unless --overwrite).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of stories.
    #[arg(long, default_value_t = 2000)]
    pub stories: usize,
    /// Frames per story (1..=50).
    #[arg(long, default_value_t = 4)]
    pub frames: usize,
    /// Frame size in pixels (multiple of 8, 32..=1024).
    #[arg(long, default_value_t = 128)]
    pub size: u32,
    /// Seed: the same seed gives byte-identical output.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// At most this many characters per frame (1..=3).
    #[arg(long, default_value_t = 3)]
    pub max_characters: usize,
    /// Worker threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Replace an existing output folder.
    #[arg(long)]
    pub overwrite: bool,
}

/// Flags of `storygpt world check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The story world folder.
    pub dataset: PathBuf,
}

/// Flags of `storygpt world preview`.
#[derive(Debug, clap::Args)]
pub struct PreviewArgs {
    /// The story world folder.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of random frames.
    #[arg(long, default_value_t = 16)]
    pub frames: usize,
    /// Columns of the sheet.
    #[arg(long, default_value_t = 4)]
    pub cols: usize,
    /// Seed of the frame draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the cast's reference portraits to this PNG.
    #[arg(long)]
    pub cast: Option<PathBuf>,
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what} {{pos}}/{{len}} [{{bar:30}}] {{per_sec}} eta {{eta}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

fn require_png(path: &std::path::Path) -> Result<()> {
    let ok = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "{} must end in .png",
            path.display()
        )))
    }
}

/// Runs a `storygpt world` subcommand.
pub fn run(args: &WorldArgs) -> Result<()> {
    match &args.command {
        WorldCommand::Generate(a) => {
            let config = WorldConfig {
                stories: a.stories,
                frames_per_story: a.frames,
                size: a.size,
                seed: a.seed,
                max_characters_per_frame: a.max_characters,
                threads: a.threads,
                ..WorldConfig::default()
            };
            config.validate()?;
            let pb = bar(a.stories as u64, "stories");
            let report = world::generate(&config, &a.out, a.overwrite, &|done, _| {
                pb.set_position(done as u64)
            })?;
            pb.finish_and_clear();
            tracing::info!(?report, "generated story world");
            eprintln!(
                "wrote {}: {} stories, {} frames of {}x{} in {:.1} s ({:.0} frames/s, {} threads)",
                a.out.display(),
                report.stories,
                report.frames,
                a.size,
                a.size,
                report.seconds,
                report.frames_per_second,
                report.threads
            );
            Ok(())
        }
        WorldCommand::Check(a) => {
            let w = StoryWorld::open(&a.dataset)?;
            let total = w
                .manifest()
                .stories
                .iter()
                .map(|s| s.frames.len())
                .sum::<usize>();
            let pb = bar(total as u64, "frames");
            w.validate_files(&|done, _| pb.set_position(done as u64))?;
            pb.finish_and_clear();
            eprintln!("{}: {total} frames OK", a.dataset.display());
            Ok(())
        }
        WorldCommand::Preview(a) => {
            require_png(&a.out)?;
            let w = StoryWorld::open(&a.dataset)?;
            let sheet = world::preview(&w, a.frames, a.cols, a.seed)?;
            save_png(&a.out, &sheet)?;
            eprintln!("wrote {}", a.out.display());
            if let Some(cast) = &a.cast {
                require_png(cast)?;
                save_png(cast, &world::cast_sheet(&w)?)?;
                eprintln!("wrote {}", cast.display());
            }
            Ok(())
        }
    }
}
