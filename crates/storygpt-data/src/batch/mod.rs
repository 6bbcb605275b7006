//! burn `Batcher`s and `Dataset`s for both training stages.
//!
//! Items carry their own seed, derived from `(seed, epoch, index)`, so every random choice
//! (mixture draw, crop noise, flips, the clip image, the stage-2 target) is reproducible and a
//! resumed run sees exactly the batches an uninterrupted one would.

pub mod stage1;
pub mod stage2;

pub use stage1::{Stage1Batch, Stage1Batcher, Stage1Config, Stage1Frames, Stage1Item, Stage1Mode};
pub use stage2::{
    IGNORE_INDEX, Sequence, Stage2Batch, Stage2Batcher, Stage2Config, Stage2Item, Stage2Stories,
};

use image::RgbImage;

/// The seed of item `index` in `epoch` (SplitMix64 mixing, so nearby indices are unrelated).
pub fn item_seed(seed: u64, epoch: u64, index: usize) -> u64 {
    let mut z = seed
        ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Bilinear (triangle-filter) resize; a no-op copy at the same size.
pub(crate) fn resize_rgb(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    if img.dimensions() == (w, h) {
        return img.clone();
    }
    image::imageops::resize(img, w, h, image::imageops::FilterType::Triangle)
}
