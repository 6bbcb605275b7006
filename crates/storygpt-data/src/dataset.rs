//! The one trait every story-visualization dataset serves, and the records it hands out.
//!
//! The story world ([`crate::world::StoryWorld`]), FlintstonesSV and PororoSV
//! ([`crate::original`]) all implement [`StoryDataset`], so the batchers, training loops and the
//! evaluator never know which one they read.

use std::path::Path;

use image::RgbImage;
use serde::{Deserialize, Serialize};
use storygpt_core::{Error, Result};

use crate::npy::SegMap;

/// A character's grammatical gender, which picks the pronoun ("He" / "She").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gender {
    /// "He".
    Male,
    /// "She".
    Female,
}

impl Gender {
    /// The capitalised subject pronoun.
    pub fn pronoun(self) -> &'static str {
        match self {
            Gender::Male => "He",
            Gender::Female => "She",
        }
    }
}

/// One named character of a dataset's cast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Character {
    /// The name as captions write it ("Fred", "Mr Slate").
    pub name: String,
    /// Gender, for pronouns.
    pub gender: Gender,
    /// Reference portrait (`data/chars/{name}.jpeg` in the original), if the dataset has one.
    pub portrait: Option<std::path::PathBuf>,
}

/// A dataset split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training.
    Train,
    /// Validation.
    Val,
    /// Test.
    Test,
}

impl Split {
    /// All splits, in order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    /// The name used in `split.json` and the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }

    /// Parses `train` / `val` / `test`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(Split::Train),
            "val" | "validation" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            other => Err(Error::InvalidInput(format!(
                "unknown split `{other}` (expected train, val or test)"
            ))),
        }
    }
}

/// One character instance in a frame: its segment, box and the caption words naming it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// The value of this segment in the frame's segment map (`> 0`).
    pub id: u32,
    /// Index into [`StoryDataset::characters`], when the word names a cast member.
    pub character: Option<usize>,
    /// The word(s) naming it, lower case ("fred").
    pub word: String,
    /// First caption word (index into [`FrameAnnotation::tokens`]).
    pub start: usize,
    /// One past the last caption word: Char-LDM marks the last token piece before `end`.
    pub end: usize,
    /// Bounding box `[x1, y1, x2, y2]` as fractions of the frame width / height.
    pub bbox: [f32; 4],
}

/// Everything known about one frame (clip) without decoding its pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameAnnotation {
    /// Frame id.
    pub id: String,
    /// Captions with names (one; PororoSV has several per clip, see
    /// [`FrameAnnotation::caption_for_image`]).
    pub captions: Vec<String>,
    /// Caption words that [`Segment::start`] / [`Segment::end`] index, when the dataset has
    /// them (else the caption split on spaces).
    pub tokens: Vec<String>,
    /// Character instances with boxes and masks (empty when the dataset has no segments).
    pub segments: Vec<Segment>,
    /// Characters present: indices into [`StoryDataset::characters`] (the multi-hot label).
    pub characters: Vec<usize>,
    /// Background classes present (one for the story world, a multi-hot set for
    /// FlintstonesSV's 323 classes, none for PororoSV).
    pub backgrounds: Vec<usize>,
    /// How many images the clip holds (FlintstonesSV / PororoSV sample one at random).
    pub num_images: usize,
}

impl FrameAnnotation {
    /// The caption that goes with image `k` of the clip. With several captions (PororoSV),
    /// the original's rule: `min(ceil((k + 1) / n_images · n_captions), n_captions − 1)`.
    pub fn caption_for_image(&self, k: usize) -> &str {
        let n_caps = self.captions.len();
        if n_caps <= 1 {
            return self.captions.first().map_or("", String::as_str);
        }
        let n = self.num_images.max(1);
        let idx = ((k + 1) * n_caps).div_ceil(n);
        &self.captions[idx.min(n_caps - 1)]
    }

    /// The multi-hot character vector over a cast of `n` characters.
    pub fn character_labels(&self, n: usize) -> Vec<f32> {
        multi_hot(&self.characters, n)
    }

    /// The multi-hot background vector over `n` classes.
    pub fn background_labels(&self, n: usize) -> Vec<f32> {
        multi_hot(&self.backgrounds, n)
    }
}

fn multi_hot(idx: &[usize], n: usize) -> Vec<f32> {
    let mut v = vec![0.0; n];
    for &i in idx {
        if i < n {
            v[i] = 1.0;
        }
    }
    v
}

/// A decoded frame: pixels and, when the dataset has one, the segment map.
#[derive(Debug, Clone)]
pub struct FrameImage {
    /// The RGB image.
    pub image: RgbImage,
    /// Segment ids per pixel (same size as `image`).
    pub segmap: Option<SegMap>,
}

/// A caption after co-reference: names replaced by pronouns where the cast did not change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefCaption {
    /// The caption as the LLM reads it.
    pub text: String,
    /// Whether a name was replaced by a pronoun.
    pub referential: bool,
}

/// A story-visualization dataset.
pub trait StoryDataset: Send + Sync {
    /// A short name (`storyworld`, `flintstones`, `pororo`).
    fn name(&self) -> &str;

    /// The folder it was read from.
    fn root(&self) -> &Path;

    /// The cast, in label order.
    fn characters(&self) -> &[Character];

    /// Number of background classes (0 when the dataset has none).
    fn num_backgrounds(&self) -> usize;

    /// Background class names, when the dataset names them (the story world's places;
    /// FlintstonesSV's 323 classes are unnamed in the released data, so empty).
    fn background_names(&self) -> Vec<String> {
        Vec::new()
    }

    /// The frame ids of a split.
    fn frame_ids(&self, split: Split) -> &[String];

    /// The stories of a split, each the ids of its consecutive frames (four in the original).
    /// Stories of FlintstonesSV / PororoSV overlap, as in the original evaluation.
    fn stories(&self, split: Split) -> &[Vec<String>];

    /// The annotation of a frame.
    fn annotation(&self, id: &str) -> Result<&FrameAnnotation>;

    /// Decodes image `k` (`< num_images`) of a frame, with its segment map if there is one.
    fn load_image(&self, id: &str, k: usize) -> Result<FrameImage>;

    /// The referential (pronoun) captions of a story, computed with the dataset's
    /// co-reference rule. `images[i]` is the image index used for frame `i` (it picks the
    /// caption on PororoSV).
    fn referential_captions(&self, story: &[String], images: &[usize]) -> Result<Vec<RefCaption>>;
}
