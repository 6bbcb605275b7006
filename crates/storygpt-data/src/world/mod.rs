//! The story world: a procedural, license-clean, deterministic generator of cartoon stories
//! with exact labels and masks. StoryGPT-V is trained on it here, and it is the embedded
//! default model's domain.
//!
//! - a cast of seven named characters ([`cast::default_cast`]) with genders, drawn from
//!   shapes, colours and accessories, each with a reference portrait;
//! - ten places ([`places::PLACES`]), each with its own colour layout;
//! - stories of K frames (4 by default, up to 50) that keep the place and a main cast; each
//!   frame shows 1–3 characters at varied positions, sizes and poses, with a caption naming
//!   them and the place, and the referential caption computed by [`crate::coref`];
//! - exact per-character masks, boxes, multi-hot character labels and a background label.
//!
//! [`generate`] writes the format described in [`format`]; [`StoryWorld`] reads it.
//! The same [`WorldConfig`] gives byte-identical output on any machine and any number of
//! threads: each story draws from its own ChaCha8 stream (`seed`, story index).

pub mod cast;
pub mod format;
pub mod places;
pub mod story;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use storygpt_core::{Error, Result};

pub use format::{Manifest, StoryWorld};

use crate::coref::{CastFrame, by_character_sets};
use crate::draw::{Canvas, contact_sheet};
use cast::{CharacterStyle, Placement, Pose};
use format::{
    CharacterEntry, FORMAT, FrameEntry, GeneratorInfo, MANIFEST, SegmentEntry, Splits, StoryEntry,
    VERSION,
};
use places::{PLACES, draw_place};

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct WorldConfig {
    /// Number of stories.
    pub stories: usize,
    /// Frames per story (1..=50).
    pub frames_per_story: usize,
    /// Frame width and height in pixels (32..=1024, a multiple of 8).
    pub size: u32,
    /// The seed: same seed, same bytes.
    pub seed: u64,
    /// At most this many characters per frame (1..=3).
    pub max_characters_per_frame: usize,
    /// Fraction of stories in the validation split.
    pub val_fraction: f64,
    /// Fraction of stories in the test split.
    pub test_fraction: f64,
    /// Worker threads (0: all cores).
    pub threads: usize,
}

impl Default for WorldConfig {
    fn default() -> Self {
        Self {
            stories: 2000,
            frames_per_story: 4,
            size: 128,
            seed: 0,
            max_characters_per_frame: 3,
            val_fraction: 0.1,
            test_fraction: 0.1,
            threads: 0,
        }
    }
}

impl WorldConfig {
    /// Checks the ranges documented on the fields.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidInput(m));
        if self.stories == 0 {
            return bad("the story world needs at least one story".into());
        }
        if !(1..=50).contains(&self.frames_per_story) {
            return bad(format!(
                "frames per story must be 1..=50, got {}",
                self.frames_per_story
            ));
        }
        if !(32..=1024).contains(&self.size) || !self.size.is_multiple_of(8) {
            return bad(format!(
                "frame size must be a multiple of 8 in 32..=1024, got {}",
                self.size
            ));
        }
        if !(1..=3).contains(&self.max_characters_per_frame) {
            return bad(format!(
                "characters per frame must be 1..=3, got {}",
                self.max_characters_per_frame
            ));
        }
        let ok = |f: f64| (0.0..1.0).contains(&f);
        if !ok(self.val_fraction)
            || !ok(self.test_fraction)
            || self.val_fraction + self.test_fraction >= 1.0
        {
            return bad(format!(
                "val and test fractions must be in [0, 1) and sum below 1, got {} and {}",
                self.val_fraction, self.test_fraction
            ));
        }
        Ok(())
    }
}

/// What [`generate`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateReport {
    /// Stories written.
    pub stories: usize,
    /// Frames written.
    pub frames: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Frames per second.
    pub frames_per_second: f64,
    /// Worker threads used.
    pub threads: usize,
}

/// One rendered frame: pixels, labels and the manifest entry.
#[derive(Debug, Clone)]
pub struct RenderedFrame {
    /// The frame (labels: segment ids).
    pub canvas: Canvas,
    /// Its manifest entry (paths filled in by the writer).
    pub entry: FrameEntry,
}

/// Renders story `index` of `config` in memory (what [`generate`] writes).
pub fn render_story(config: &WorldConfig, index: usize) -> Vec<RenderedFrame> {
    let cast = cast::default_cast();
    let names: Vec<&str> = cast.iter().map(|c| c.name).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    rng.set_stream(index as u64);
    let plans = story::plan_story(
        &mut rng,
        &names,
        config.frames_per_story,
        config.max_characters_per_frame,
    );
    let referential = by_character_sets(
        &plans
            .iter()
            .map(|p| CastFrame {
                caption: &p.caption,
                cast: p
                    .cast
                    .iter()
                    .map(|&(c, _)| (cast[c].name, cast[c].gender))
                    .collect(),
            })
            .collect::<Vec<_>>(),
    );
    let story_id = story_id(index);
    plans
        .iter()
        .zip(referential)
        .enumerate()
        .map(|(k, (plan, rc))| {
            let (canvas, segments) = render_frame(&mut rng, &cast, plan, config.size);
            let id = format!("{story_id}_f{k:02}");
            RenderedFrame {
                canvas,
                entry: FrameEntry {
                    image: format!("frames/{id}.png"),
                    mask: format!("masks/{id}.png"),
                    id,
                    caption: plan.caption.clone(),
                    referential_caption: rc.text,
                    referential: rc.referential,
                    tokens: plan.tokens.clone(),
                    characters: plan.cast.iter().map(|&(c, _)| c).collect(),
                    background: plan.place,
                    segments,
                },
            }
        })
        .collect()
}

fn story_id(index: usize) -> String {
    format!("s{index:05}")
}

/// Draws one planned frame. Characters are placed in left-to-right slots with jittered
/// positions and sizes; a layout where any character is less than half visible (hidden
/// behind another) is drawn again, up to 10 times.
fn render_frame(
    rng: &mut ChaCha8Rng,
    cast: &[CharacterStyle],
    plan: &story::FramePlan,
    size: u32,
) -> (Canvas, Vec<SegmentEntry>) {
    let s = size as f32;
    let n = plan.cast.len();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut canvas = Canvas::new(size as usize, size as usize, [0, 0, 0]);
        draw_place(plan.place, &mut canvas, rng);
        let ground = PLACES[plan.place].ground;
        // Slots: which caption entry stands where, left to right.
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = rng.random_range(0..=i);
            order.swap(i, j);
        }
        let (h_lo, h_hi) = match n {
            1 => (0.42, 0.58),
            2 => (0.36, 0.5),
            _ => (0.3, 0.42),
        };
        let mut placements: Vec<(usize, Placement)> = order
            .iter()
            .enumerate()
            .map(|(slot, &entry)| {
                let centre = (slot as f32 + 0.5) / n as f32;
                let spread = 0.35 / n as f32;
                let cx = (centre + rng.random_range(-spread..spread)) * s;
                let feet = rng.random_range((ground + 0.16).min(0.9)..0.97) * s;
                let height = rng.random_range(h_lo..h_hi) * s;
                let facing_right = if n == 1 {
                    rng.random_bool(0.5)
                } else {
                    cx < s / 2.0
                };
                let pose = plan.cast[entry].1;
                let pose = if pose == Pose::Stand && rng.random_bool(0.3) {
                    Pose::Walk
                } else {
                    pose
                };
                (
                    entry,
                    Placement {
                        cx,
                        feet_y: feet,
                        height,
                        pose,
                        facing_right,
                    },
                )
            })
            .collect();
        // Nearer (lower) characters are drawn last.
        placements.sort_by(|a, b| a.1.feet_y.total_cmp(&b.1.feet_y));
        let mut full_area = vec![0u32; n];
        for &(entry, p) in &placements {
            let character = plan.cast[entry].0;
            let mut alone = Canvas::new(size as usize, size as usize, [0, 0, 0]);
            cast[character].draw(&mut alone, p, 1);
            full_area[entry] = alone.labels.iter().filter(|&&l| l == 1).count() as u32;
            cast[character].draw(&mut canvas, p, entry as u8 + 1);
        }
        let segments = segments_of(&canvas, plan);
        let visible_enough = segments
            .iter()
            .all(|sg| sg.area * 2 >= full_area[sg.id as usize - 1]);
        if (visible_enough && segments.len() == n) || attempt >= 10 {
            return (canvas, segments);
        }
    }
}

/// Boxes and areas of each caption entry's label in the canvas.
fn segments_of(canvas: &Canvas, plan: &story::FramePlan) -> Vec<SegmentEntry> {
    let n = plan.cast.len();
    let mut bbox = vec![[u32::MAX, u32::MAX, 0u32, 0u32]; n];
    let mut area = vec![0u32; n];
    for y in 0..canvas.height {
        for x in 0..canvas.width {
            let l = canvas.labels[y * canvas.width + x] as usize;
            if l == 0 || l > n {
                continue;
            }
            let b = &mut bbox[l - 1];
            b[0] = b[0].min(x as u32);
            b[1] = b[1].min(y as u32);
            b[2] = b[2].max(x as u32 + 1);
            b[3] = b[3].max(y as u32 + 1);
            area[l - 1] += 1;
        }
    }
    (0..n)
        .filter(|&i| area[i] > 0)
        .map(|i| SegmentEntry {
            id: i as u32 + 1,
            character: plan.cast[i].0,
            start: plan.name_token[i],
            end: plan.name_token[i] + 1,
            bbox: bbox[i],
            area: area[i],
        })
        .collect()
}

/// Draws a character's reference portrait: standing, centred, on white.
pub fn portrait(style: &CharacterStyle, size: u32) -> Canvas {
    let s = size as f32;
    let mut c = Canvas::new(size as usize, size as usize, [255, 255, 255]);
    style.draw(
        &mut c,
        Placement {
            cx: s / 2.0,
            feet_y: 0.93 * s,
            height: 0.78 * s,
            pose: Pose::Stand,
            facing_right: true,
        },
        1,
    );
    c
}

fn encode_png(img: &image::DynamicImage) -> std::result::Result<Vec<u8>, image::ImageError> {
    use image::ImageEncoder;
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    let mut out = Vec::new();
    let enc = PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive);
    enc.write_image(
        img.as_bytes(),
        img.width(),
        img.height(),
        img.color().into(),
    )?;
    Ok(out)
}

fn write_png(path: &Path, img: image::DynamicImage) -> Result<()> {
    let bytes = encode_png(&img).map_err(|e| {
        Error::InvalidInput(format!("PNG encoding of {} failed: {e}", path.display()))
    })?;
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// Generates a story world into `out` (see the module docs and [`format`]).
///
/// Everything is written under a temporary folder next to `out` and renamed into place at the
/// end, so `out` never holds a partial dataset. An existing `out` is an error unless
/// `overwrite` is set. `progress(done, total)` is called after each story.
pub fn generate(
    config: &WorldConfig,
    out: &Path,
    overwrite: bool,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<GenerateReport> {
    config.validate()?;
    if out.exists() && !overwrite {
        return Err(Error::InvalidInput(format!(
            "{} already exists (pass --overwrite to replace it)",
            out.display()
        )));
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let name = out
        .file_name()
        .ok_or_else(|| Error::InvalidInput(format!("{} has no folder name", out.display())))?
        .to_string_lossy()
        .into_owned();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.partial-"))
        .tempdir_in(&parent)
        .map_err(|e| Error::io(&parent, e))?;
    let dir = tmp.path();
    for sub in ["frames", "masks", "chars"] {
        std::fs::create_dir(dir.join(sub)).map_err(|e| Error::io(dir.join(sub), e))?;
    }

    let start = Instant::now();
    let cast = cast::default_cast();
    let mut characters = Vec::new();
    for style in &cast {
        let rel = format!("chars/{}.png", style.name.to_lowercase());
        write_png(
            &dir.join(&rel),
            image::DynamicImage::ImageRgb8(portrait(style, config.size).to_image()),
        )?;
        characters.push(CharacterEntry {
            name: style.name.to_string(),
            gender: style.gender,
            portrait: rel,
        });
    }

    let threads = if config.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        config.threads
    }
    .min(config.stories);
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let stories: Mutex<Vec<Option<StoryEntry>>> = Mutex::new(vec![None; config.stories]);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= config.stories || first_error.lock().expect("lock").is_some() {
                        break;
                    }
                    match write_story(config, i, dir) {
                        Ok(entry) => stories.lock().expect("lock")[i] = Some(entry),
                        Err(e) => {
                            first_error.lock().expect("lock").get_or_insert(e);
                            break;
                        }
                    }
                    progress(done.fetch_add(1, Ordering::Relaxed) + 1, config.stories);
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().expect("lock") {
        return Err(e);
    }
    let stories: Vec<StoryEntry> = stories
        .into_inner()
        .expect("lock")
        .into_iter()
        .map(|s| s.expect("every story was written"))
        .collect();

    let n = config.stories;
    let n_test = split_count(n, config.test_fraction);
    let n_val = split_count(n, config.val_fraction);
    let n_train = n - n_test - n_val;
    let ids: Vec<String> = stories.iter().map(|s| s.id.clone()).collect();
    let splits = Splits {
        train: ids[..n_train].to_vec(),
        val: ids[n_train..n_train + n_val].to_vec(),
        test: ids[n_train + n_val..].to_vec(),
    };
    let frames = n * config.frames_per_story;
    let manifest = Manifest {
        format: FORMAT.to_string(),
        version: VERSION,
        generator: GeneratorInfo {
            seed: config.seed,
            stories: n,
            frames_per_story: config.frames_per_story,
            size: config.size,
            max_characters_per_frame: config.max_characters_per_frame,
            crate_version: env!("CARGO_PKG_VERSION").to_string(),
        },
        characters,
        backgrounds: PLACES.iter().map(|p| p.name.to_string()).collect(),
        splits,
        stories,
    };
    storygpt_core::fs::write_json_atomic(dir.join(MANIFEST), &manifest)?;
    storygpt_core::fs::write_atomic(dir.join("README.md"), dataset_card(&manifest).as_bytes())?;

    // Move into place.
    let tmp_path = tmp.keep();
    let mut old = None;
    if out.exists() {
        let trash = parent.join(format!(".{name}.old-{}", std::process::id()));
        std::fs::rename(out, &trash).map_err(|e| Error::io(out, e))?;
        old = Some(trash);
    }
    std::fs::rename(&tmp_path, out).map_err(|e| Error::io(out, e))?;
    if let Some(trash) = old {
        std::fs::remove_dir_all(&trash).map_err(|e| Error::io(&trash, e))?;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(GenerateReport {
        stories: n,
        frames,
        seconds,
        frames_per_second: frames as f64 / seconds.max(1e-9),
        threads,
    })
}

fn split_count(n: usize, fraction: f64) -> usize {
    if fraction <= 0.0 || n < 3 {
        0
    } else {
        ((n as f64 * fraction).round() as usize).max(1)
    }
}

fn write_story(config: &WorldConfig, index: usize, dir: &Path) -> Result<StoryEntry> {
    let frames = render_story(config, index);
    let mut entries = Vec::with_capacity(frames.len());
    for f in frames {
        let size = config.size;
        write_png(
            &dir.join(&f.entry.image),
            image::DynamicImage::ImageRgb8(f.canvas.to_image()),
        )?;
        let mask = image::GrayImage::from_raw(size, size, f.canvas.labels.clone())
            .expect("label buffer matches the size");
        write_png(
            &dir.join(&f.entry.mask),
            image::DynamicImage::ImageLuma8(mask),
        )?;
        entries.push(f.entry);
    }
    Ok(StoryEntry {
        id: story_id(index),
        frames: entries,
    })
}

fn dataset_card(m: &Manifest) -> String {
    let g = &m.generator;
    let cast: Vec<String> = m
        .characters
        .iter()
        .map(|c| format!("{} ({:?})", c.name, c.gender).to_lowercase())
        .collect();
    format!(
        "# storygpt story world\n\n\
         Generated by storygpt-data {} (`storygpt world generate --stories {} --frames {} \
         --size {} --seed {}`).\n\n\
         - {} stories of {} frames, {}x{} px; splits: {} train / {} val / {} test stories.\n\
         - Cast: {}.\n\
         - Places: {}.\n\n\
         Format: `manifest.json` (format `{}` version {}), `frames/*.png`, `masks/*.png` \
         (label maps, 0 = background, k = segment k), `chars/*.png` (reference portraits). \
         See docs/data.md in the storygpt repository.\n",
        g.crate_version,
        g.stories,
        g.frames_per_story,
        g.size,
        g.seed,
        g.stories,
        g.frames_per_story,
        g.size,
        g.size,
        m.splits.train.len(),
        m.splits.val.len(),
        m.splits.test.len(),
        cast.join(", "),
        m.backgrounds.join(", "),
        m.format,
        m.version,
    )
}

/// A contact sheet of `n` frames drawn at random (with `seed`) from a story world, captions
/// underneath, in `cols` columns.
pub fn preview(world: &StoryWorld, n: usize, cols: usize, seed: u64) -> Result<image::RgbImage> {
    use crate::dataset::{Split, StoryDataset};
    let all: Vec<&String> = Split::ALL
        .iter()
        .flat_map(|&s| world.frame_ids(s))
        .collect();
    if all.is_empty() {
        return Err(Error::InvalidInput("the story world has no frames".into()));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut picked: Vec<&String> = Vec::new();
    let mut pool = all.clone();
    while picked.len() < n.min(all.len()) {
        let i = rng.random_range(0..pool.len());
        picked.push(pool.swap_remove(i));
    }
    let mut tiles = Vec::with_capacity(picked.len());
    for id in picked {
        let img = world.load_image(id, 0)?.image;
        let caption = world.annotation(id)?.captions[0].clone();
        tiles.push((img, caption));
    }
    Ok(contact_sheet(&tiles, cols, 4, 6))
}

/// A sheet of the cast's reference portraits with their names.
pub fn cast_sheet(world: &StoryWorld) -> Result<image::RgbImage> {
    use crate::dataset::StoryDataset;
    let mut tiles = Vec::new();
    for c in world.characters() {
        let path = c.portrait.as_ref().expect("story world portraits");
        let img = format::read_png(path)?.to_rgb8();
        let gender = match c.gender {
            crate::dataset::Gender::Male => "male",
            crate::dataset::Gender::Female => "female",
        };
        tiles.push((img, format!("{} ({gender})", c.name)));
    }
    Ok(contact_sheet(&tiles, tiles.len(), 1, 6))
}
