//! # storygpt-data
//!
//! Datasets for StoryGPT-V, all behind one trait, [`StoryDataset`]:
//!
//! - [`world`]: the procedural story world (generator, on-disk format, reader, previews), the
//!   embedded default model's domain;
//! - [`original`]: FlintstonesSV and PororoSV in the layouts the original code reads
//!   (`split.json`, `cleaned_annotations.json`, `following_cache3.pkl`, `.npy` frames and
//!   masks, `labels.pkl`), with pickles parsed as data only ([`pickle`]);
//! - [`coref`]: Story-LDM's co-reference captions, with the original's gender bug fixed;
//! - [`batch`]: burn `Batcher`s for stage 1 (Char-LDM) and stage 2 (LLM alignment);
//! - [`draw`]: the raster canvas and bitmap text used for frames, previews and storyboards.
//!
//! The on-disk format and the readers are documented in `docs/data.md`.

pub mod batch;
pub mod coref;
pub mod dataset;
pub mod draw;
pub mod npy;
pub mod original;
pub mod pickle;
pub mod world;

pub use dataset::{
    Character, FrameAnnotation, FrameImage, Gender, RefCaption, Segment, Split, StoryDataset,
};
pub use world::{StoryWorld, WorldConfig};

/// Opens a dataset folder of any supported layout: a story world (`manifest.json`), or
/// FlintstonesSV / PororoSV in the original layout (`split.json`, ...).
pub fn open_dataset(
    dir: impl AsRef<std::path::Path>,
) -> storygpt_core::Result<Box<dyn StoryDataset>> {
    let dir = dir.as_ref();
    if dir.join("manifest.json").is_file() {
        Ok(Box::new(StoryWorld::open(dir)?))
    } else {
        Ok(Box::new(original::OriginalDataset::open(dir)?))
    }
}
