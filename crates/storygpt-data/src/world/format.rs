//! The story world's on-disk format (version 1) and its reader, [`StoryWorld`].
//!
//! ```text
//! DIR/
//!   manifest.json        everything but pixels: cast, places, splits, stories, captions,
//!                        referential captions, labels, segments (see `Manifest`)
//!   README.md            a dataset card (how it was generated)
//!   chars/{name}.png     one reference portrait per character (`data/chars/*.jpeg` in the original)
//!   frames/{frame}.png   RGB frames, `size × size`
//!   masks/{frame}.png    8-bit label maps: 0 = background, k = the frame's segment with id k
//! ```
//!
//! Frame ids are `s{story:05}_f{k:02}`. Bounding boxes are `[x1, y1, x2, y2]` in pixels with
//! exclusive `x2, y2`. The generator writes the whole folder under a temporary name and
//! renames it into place at the end, so a reader never sees half a dataset.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use storygpt_core::{Error, Result};

use crate::dataset::{
    Character, FrameAnnotation, FrameImage, Gender, RefCaption, Segment, Split, StoryDataset,
};
use crate::npy::SegMap;

/// The value of [`Manifest::format`].
pub const FORMAT: &str = "storygpt-world";
/// The format version this crate writes and reads.
pub const VERSION: u32 = 1;
/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`].
    pub version: u32,
    /// How the data was generated.
    pub generator: GeneratorInfo,
    /// The cast, in label order.
    pub characters: Vec<CharacterEntry>,
    /// Background class names, in label order.
    pub backgrounds: Vec<String>,
    /// Story ids per split.
    pub splits: Splits,
    /// Every story.
    pub stories: Vec<StoryEntry>,
}

/// The generator settings recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratorInfo {
    /// The seed.
    pub seed: u64,
    /// Number of stories.
    pub stories: usize,
    /// Frames per story.
    pub frames_per_story: usize,
    /// Frame width and height in pixels.
    pub size: u32,
    /// At most this many characters per frame.
    pub max_characters_per_frame: usize,
    /// The storygpt-data version that wrote it.
    pub crate_version: String,
}

/// One cast member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CharacterEntry {
    /// Name as captions write it.
    pub name: String,
    /// Gender.
    pub gender: Gender,
    /// Portrait, relative to the dataset folder.
    pub portrait: String,
}

/// Story ids per split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Splits {
    /// Training stories.
    pub train: Vec<String>,
    /// Validation stories.
    pub val: Vec<String>,
    /// Test stories.
    pub test: Vec<String>,
}

/// One story.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoryEntry {
    /// `s00042`.
    pub id: String,
    /// Its frames, in order.
    pub frames: Vec<FrameEntry>,
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameEntry {
    /// `s00042_f01`.
    pub id: String,
    /// The PNG frame, relative to the dataset folder.
    pub image: String,
    /// The PNG label map, relative to the dataset folder.
    pub mask: String,
    /// The caption with names.
    pub caption: String,
    /// The caption after co-reference (names → pronouns where the cast repeats).
    pub referential_caption: String,
    /// Whether `referential_caption` differs from `caption`.
    pub referential: bool,
    /// Caption words (punctuation split off) that segments index.
    pub tokens: Vec<String>,
    /// Characters present (cast indices, in caption order).
    pub characters: Vec<usize>,
    /// Background class.
    pub background: usize,
    /// One segment per character present.
    pub segments: Vec<SegmentEntry>,
}

/// One character instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentEntry {
    /// Its value in the label map (1, 2, 3).
    pub id: u32,
    /// Cast index.
    pub character: usize,
    /// First caption word naming it.
    pub start: usize,
    /// One past the last word naming it.
    pub end: usize,
    /// `[x1, y1, x2, y2]` in pixels, `x2`/`y2` exclusive.
    pub bbox: [u32; 4],
    /// Visible pixels.
    pub area: u32,
}

/// A story world folder, validated and indexed.
#[derive(Debug)]
pub struct StoryWorld {
    root: PathBuf,
    manifest: Manifest,
    characters: Vec<Character>,
    annotations: Vec<FrameAnnotation>,
    entries: Vec<(usize, usize)>,
    files: Vec<(PathBuf, PathBuf)>,
    index: HashMap<String, usize>,
    frame_ids: [Vec<String>; 3],
    stories: [Vec<Vec<String>>; 3],
}

impl StoryWorld {
    /// Opens and validates a story world folder: the manifest's structure, every label and
    /// index, and that every file it lists exists. The first problem is returned as an error
    /// naming the file (and the story / frame inside the manifest).
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let mpath = root.join(MANIFEST);
        let manifest: Manifest = storygpt_core::config::read_json(&mpath)?;
        let bad = |reason: String| Error::data_file(&mpath, reason);
        if manifest.format != FORMAT {
            return Err(bad(format!(
                "`format` is {:?}, expected {FORMAT:?}",
                manifest.format
            )));
        }
        if manifest.version != VERSION {
            return Err(bad(format!(
                "format version {} is not supported (this build reads version {VERSION})",
                manifest.version
            )));
        }
        let size = manifest.generator.size;
        let n_chars = manifest.characters.len();
        let n_bg = manifest.backgrounds.len();
        let file = |rel: &str, what: &str| -> Result<PathBuf> {
            let p = Path::new(rel);
            if rel.is_empty()
                || p.is_absolute()
                || p.components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(bad(format!(
                    "{what}: path {rel:?} must be relative and stay inside the folder"
                )));
            }
            let full = root.join(p);
            if !full.is_file() {
                return Err(Error::data_file(
                    &full,
                    format!("listed in {MANIFEST} ({what}) but missing"),
                ));
            }
            Ok(full)
        };

        let mut characters = Vec::with_capacity(n_chars);
        for c in &manifest.characters {
            characters.push(Character {
                name: c.name.clone(),
                gender: c.gender,
                portrait: Some(file(&c.portrait, &format!("portrait of {}", c.name))?),
            });
        }

        let mut annotations = Vec::new();
        let mut entries = Vec::new();
        let mut files = Vec::new();
        let mut index = HashMap::new();
        let mut story_frames: HashMap<&str, Vec<String>> = HashMap::new();
        for (si, story) in manifest.stories.iter().enumerate() {
            if story.frames.is_empty() {
                return Err(bad(format!("story {} has no frames", story.id)));
            }
            let mut ids = Vec::with_capacity(story.frames.len());
            for (fi, f) in story.frames.iter().enumerate() {
                let at = format!("story {} frame {}", story.id, f.id);
                if index.insert(f.id.clone(), annotations.len()).is_some() {
                    return Err(bad(format!("{at}: duplicate frame id")));
                }
                if f.characters.iter().any(|&c| c >= n_chars) {
                    return Err(bad(format!(
                        "{at}: character index out of range (the cast has {n_chars})"
                    )));
                }
                if f.background >= n_bg {
                    return Err(bad(format!(
                        "{at}: background {} out of range (there are {n_bg})",
                        f.background
                    )));
                }
                let mut segments = Vec::with_capacity(f.segments.len());
                for s in &f.segments {
                    let [x1, y1, x2, y2] = s.bbox;
                    if s.id == 0
                        || s.character >= n_chars
                        || s.start >= s.end
                        || s.end > f.tokens.len()
                        || x1 >= x2
                        || y1 >= y2
                        || x2 > size
                        || y2 > size
                    {
                        return Err(bad(format!("{at}: invalid segment {s:?}")));
                    }
                    segments.push(Segment {
                        id: s.id,
                        character: Some(s.character),
                        word: f.tokens[s.start..s.end].join(" ").to_lowercase(),
                        start: s.start,
                        end: s.end,
                        bbox: [x1, y1, x2, y2].map(|v| v as f32 / size as f32),
                    });
                }
                files.push((
                    file(&f.image, &format!("{at} image"))?,
                    file(&f.mask, &format!("{at} mask"))?,
                ));
                annotations.push(FrameAnnotation {
                    id: f.id.clone(),
                    captions: vec![f.caption.clone()],
                    tokens: f.tokens.clone(),
                    segments,
                    characters: f.characters.clone(),
                    backgrounds: vec![f.background],
                    num_images: 1,
                });
                entries.push((si, fi));
                ids.push(f.id.clone());
            }
            if story_frames.insert(&story.id, ids).is_some() {
                return Err(bad(format!("duplicate story id {}", story.id)));
            }
        }

        let mut frame_ids: [Vec<String>; 3] = Default::default();
        let mut stories: [Vec<Vec<String>>; 3] = Default::default();
        for (slot, list) in [
            &manifest.splits.train,
            &manifest.splits.val,
            &manifest.splits.test,
        ]
        .into_iter()
        .enumerate()
        {
            for sid in list {
                let frames = story_frames
                    .get(sid.as_str())
                    .ok_or_else(|| bad(format!("split lists unknown story {sid}")))?;
                frame_ids[slot].extend(frames.iter().cloned());
                stories[slot].push(frames.clone());
            }
        }
        Ok(Self {
            root,
            manifest,
            characters,
            annotations,
            entries,
            files,
            index,
            frame_ids,
            stories,
        })
    }

    /// The parsed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Frame size in pixels.
    pub fn size(&self) -> u32 {
        self.manifest.generator.size
    }

    /// Background class names.
    pub fn background_names(&self) -> &[String] {
        &self.manifest.backgrounds
    }

    /// The image and mask paths of a frame.
    pub fn frame_files(&self, id: &str) -> Result<(&Path, &Path)> {
        let i = self.position(id)?;
        Ok((&self.files[i].0, &self.files[i].1))
    }

    fn position(&self, id: &str) -> Result<usize> {
        self.index.get(id).copied().ok_or_else(|| {
            Error::InvalidInput(format!(
                "frame `{id}` is not in {}",
                self.root.join(MANIFEST).display()
            ))
        })
    }

    /// Decodes every frame and mask and checks them against the manifest (size, label values,
    /// visible areas). Returns the first bad file. `progress(done, total)` is called as it
    /// goes.
    pub fn validate_files(&self, progress: &(dyn Fn(usize, usize) + Sync)) -> Result<()> {
        let total = self.annotations.len();
        for (i, ann) in self.annotations.iter().enumerate() {
            let img = self.load_image(&ann.id, 0)?;
            let seg = img.segmap.expect("the world always has masks");
            let (_, mask_path) = &self.files[i];
            let frame = &self.manifest_frame(i);
            let mut areas = HashMap::new();
            for &v in &seg.ids {
                *areas.entry(v).or_insert(0u32) += 1;
            }
            for (&v, &n) in &areas {
                if v == 0 {
                    continue;
                }
                match frame.segments.iter().find(|s| s.id == v) {
                    Some(s) if s.area == n => {}
                    Some(s) => {
                        return Err(Error::data_file(
                            mask_path,
                            format!(
                                "segment {v} covers {n} pixels, the manifest says {}",
                                s.area
                            ),
                        ));
                    }
                    None => {
                        return Err(Error::data_file(
                            mask_path,
                            format!("label {v} is not a segment of frame {}", ann.id),
                        ));
                    }
                }
            }
            if let Some(s) = frame.segments.iter().find(|s| !areas.contains_key(&s.id)) {
                return Err(Error::data_file(
                    mask_path,
                    format!("segment {} of frame {} is not in the mask", s.id, ann.id),
                ));
            }
            progress(i + 1, total);
        }
        Ok(())
    }

    fn manifest_frame(&self, i: usize) -> &FrameEntry {
        let (si, fi) = self.entries[i];
        &self.manifest.stories[si].frames[fi]
    }
}

/// Decodes a PNG, naming the file on failure.
pub(crate) fn read_png(path: &Path) -> Result<image::DynamicImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .map_err(|e| Error::data_file(path, format!("not a readable PNG: {e}")))
}

impl StoryDataset for StoryWorld {
    fn name(&self) -> &str {
        "storyworld"
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn characters(&self) -> &[Character] {
        &self.characters
    }

    fn num_backgrounds(&self) -> usize {
        self.manifest.backgrounds.len()
    }

    fn background_names(&self) -> Vec<String> {
        self.manifest.backgrounds.clone()
    }

    fn frame_ids(&self, split: Split) -> &[String] {
        &self.frame_ids[split as usize]
    }

    fn stories(&self, split: Split) -> &[Vec<String>] {
        &self.stories[split as usize]
    }

    fn annotation(&self, id: &str) -> Result<&FrameAnnotation> {
        Ok(&self.annotations[self.position(id)?])
    }

    fn load_image(&self, id: &str, k: usize) -> Result<FrameImage> {
        let i = self.position(id)?;
        if k != 0 {
            return Err(Error::InvalidInput(format!(
                "frame `{id}` has one image, asked for image {k}"
            )));
        }
        let (img_path, mask_path) = &self.files[i];
        let size = self.size();
        let image = read_png(img_path)?.to_rgb8();
        if image.dimensions() != (size, size) {
            return Err(Error::data_file(
                img_path,
                format!(
                    "image is {}x{}, the manifest says {size}x{size}",
                    image.width(),
                    image.height()
                ),
            ));
        }
        let mask = match read_png(mask_path)? {
            image::DynamicImage::ImageLuma8(m) => m,
            other => {
                return Err(Error::data_file(
                    mask_path,
                    format!("a mask must be 8-bit grayscale, found {:?}", other.color()),
                ));
            }
        };
        if mask.dimensions() != (size, size) {
            return Err(Error::data_file(
                mask_path,
                format!(
                    "mask is {}x{}, expected {size}x{size}",
                    mask.width(),
                    mask.height()
                ),
            ));
        }
        Ok(FrameImage {
            image,
            segmap: Some(SegMap {
                height: size as usize,
                width: size as usize,
                ids: mask.into_raw().into_iter().map(u32::from).collect(),
            }),
        })
    }

    /// Computed with [`crate::coref::by_character_sets`] over the given frames, so any
    /// sequence works; for a stored story it equals the manifest's `referential_caption`s.
    fn referential_captions(&self, story: &[String], _images: &[usize]) -> Result<Vec<RefCaption>> {
        let anns = story
            .iter()
            .map(|id| self.annotation(id))
            .collect::<Result<Vec<_>>>()?;
        let frames: Vec<crate::coref::CastFrame<'_>> = anns
            .iter()
            .map(|a| crate::coref::CastFrame {
                caption: &a.captions[0],
                cast: a
                    .characters
                    .iter()
                    .map(|&c| (self.characters[c].name.as_str(), self.characters[c].gender))
                    .collect(),
            })
            .collect();
        Ok(crate::coref::by_character_sets(&frames))
    }
}
