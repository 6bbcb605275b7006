//! Stage 1 (Char-LDM) batches: the frame, the caption ids with the character-token positions,
//! a reference crop per character and its mask at latent resolution, under the original's
//! 10 % unconditional / 10 % text-only / 80 % fused mixture (`models/data.py:686-771`).
//!
//! Per item, with its own seeded RNG (so a batch is reproducible and resumable):
//! 1. draw p ~ U[0,1): p < `uncond_prob` → **unconditional** (empty caption, no objects);
//!    else if the frame has ≤ 1 segment and p < `uncond_prob + text_only_prob` →
//!    **text-only** (caption, no objects); else **fused**, keeping at most `max_objects`
//!    segments (a random subset), sorted by their position in the caption;
//! 2. insert the tokenizer's marker after each kept name and tokenize; the token before each
//!    marker (the last piece of the name) is the character-token position;
//! 3. crop each character from the frame with every other pixel replaced by uniform noise
//!    0..254 (`RandomSegmentProcessor`), pad to square (centred, black), resize to
//!    `crop_size`, optionally flip horizontally;
//! 4. downsample each character's mask to the latent grid (fraction of each cell covered).
//!
//! Deviation from the original: its "unconditional" draw blanks the caption string but then
//! tokenizes the annotation's `tokens`, so the caption survives. Here unconditional means an
//! empty caption, as the paper describes.

use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use storygpt_core::{CaptionTokenizer, Error, Result};

use super::{item_seed, resize_rgb};
use crate::dataset::{Segment, Split, StoryDataset};
use crate::npy::SegMap;

/// Stage-1 batching settings (defaults mirror the original's `train_ldm.sh`).
#[derive(Debug, Clone, PartialEq)]
pub struct Stage1Config {
    /// Training resolution (the frame is resized to `resolution²`).
    pub resolution: u32,
    /// VAE downsampling factor: masks are `resolution / latent_factor` on a side.
    pub latent_factor: u32,
    /// Side of the character crops fed to the CLIP image encoder.
    pub crop_size: u32,
    /// At most this many characters per frame (`max_num_objects`).
    pub max_objects: usize,
    /// Probability of an unconditional sample.
    pub uncond_prob: f64,
    /// Probability of a text-only sample (frames with ≤ 1 character only).
    pub text_only_prob: f64,
    /// Flip crops horizontally with probability 0.5.
    pub flip_crops: bool,
}

impl Default for Stage1Config {
    fn default() -> Self {
        Self {
            resolution: 512,
            latent_factor: 8,
            crop_size: 224,
            max_objects: 4,
            uncond_prob: 0.1,
            text_only_prob: 0.1,
            flip_crops: true,
        }
    }
}

/// Which conditioning a sample trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage1Mode {
    /// Empty caption, no character images.
    Unconditional,
    /// Caption only.
    TextOnly,
    /// Caption fused with character images.
    Fused,
}

/// One frame, decoded, ready to batch.
#[derive(Debug, Clone)]
pub struct Stage1Item {
    /// Frame id.
    pub id: String,
    /// The frame.
    pub image: RgbImage,
    /// Its segment map, if the dataset has one.
    pub segmap: Option<SegMap>,
    /// Caption words (markers go after segment ends).
    pub tokens: Vec<String>,
    /// Character instances.
    pub segments: Vec<Segment>,
    /// Seed of this item's random choices.
    pub seed: u64,
}

/// A stage-1 batch.
#[derive(Debug, Clone)]
pub struct Stage1Batch<B: Backend> {
    /// `[B, 3, R, R]` in `[-1, 1]`.
    pub pixel_values: Tensor<B, 4>,
    /// `[B, L]` caption ids without markers, padded.
    pub input_ids: Tensor<B, 2, Int>,
    /// `[B, M]` positions of the last token piece of each character name (0 where unused).
    pub image_token_idx: Tensor<B, 2, Int>,
    /// `[B, M]` which of `image_token_idx` are real.
    pub image_token_idx_mask: Tensor<B, 2, Bool>,
    /// `[B, M, 3, S, S]` character crops in `[0, 1]` (zeros where unused).
    pub object_pixel_values: Tensor<B, 5>,
    /// `[B, M, r, r]` each character's mask at latent resolution (cell coverage in `[0, 1]`).
    pub object_masks: Tensor<B, 4>,
    /// Characters per sample.
    pub num_objects: Vec<usize>,
    /// The mixture draw per sample.
    pub modes: Vec<Stage1Mode>,
    /// Frame ids.
    pub ids: Vec<String>,
}

/// Builds [`Stage1Batch`]es from [`Stage1Item`]s with a [`CaptionTokenizer`].
#[derive(Clone)]
pub struct Stage1Batcher {
    tokenizer: Arc<dyn CaptionTokenizer>,
    config: Stage1Config,
}

impl std::fmt::Debug for Stage1Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage1Batcher")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

struct Prepared {
    pixels: Vec<f32>,
    ids: Vec<u32>,
    positions: Vec<usize>,
    crops: Vec<Vec<f32>>,
    masks: Vec<Vec<f32>>,
    mode: Stage1Mode,
}

impl Stage1Batcher {
    /// A batcher.
    pub fn new(tokenizer: Arc<dyn CaptionTokenizer>, config: Stage1Config) -> Result<Self> {
        if config.resolution == 0
            || config.latent_factor == 0
            || !config.resolution.is_multiple_of(config.latent_factor)
            || config.crop_size == 0
            || config.max_objects == 0
        {
            return Err(Error::InvalidInput(format!(
                "stage-1 batcher: invalid config {config:?}"
            )));
        }
        Ok(Self { tokenizer, config })
    }

    /// The settings.
    pub fn config(&self) -> &Stage1Config {
        &self.config
    }

    fn prepare(&self, item: &Stage1Item) -> Result<Prepared> {
        let c = &self.config;
        let mut rng = ChaCha8Rng::seed_from_u64(item.seed);
        let p: f64 = rng.random();
        let mut segments: Vec<Segment> = item
            .segments
            .iter()
            .filter(|s| s.end > 0 && s.end <= item.tokens.len())
            .cloned()
            .collect();
        let mode = if p < c.uncond_prob {
            Stage1Mode::Unconditional
        } else if segments.len() <= 1 && p < c.uncond_prob + c.text_only_prob {
            Stage1Mode::TextOnly
        } else {
            Stage1Mode::Fused
        };
        if mode != Stage1Mode::Fused {
            segments.clear();
        }
        if segments.len() > c.max_objects {
            // A random subset, as random.sample does.
            for i in 0..c.max_objects {
                let j = rng.random_range(i..segments.len());
                segments.swap(i, j);
            }
            segments.truncate(c.max_objects);
        }
        segments.sort_by_key(|s| s.end);

        let text = if mode == Stage1Mode::Unconditional {
            String::new()
        } else {
            let mut words = item.tokens.clone();
            for s in segments.iter().rev() {
                words.insert(s.end, self.tokenizer.marker().to_string());
            }
            words.join(" ")
        };
        let (ids, positions) = self.tokenizer.encode_marked(&text)?;
        if ids.len() != self.tokenizer.max_len() {
            return Err(Error::InvalidInput(format!(
                "the caption tokenizer returned {} ids, expected {}",
                ids.len(),
                self.tokenizer.max_len()
            )));
        }
        // Markers past the truncation point are gone: drop their characters.
        segments.truncate(positions.len());

        let res = c.resolution;
        let pixels = to_chw(&resize_rgb(&item.image, res, res), |v| v / 127.5 - 1.0);
        let mut crops = Vec::with_capacity(segments.len());
        let mut masks = Vec::with_capacity(segments.len());
        let latent = (res / c.latent_factor) as usize;
        for s in &segments {
            let crop = noise_crop(&item.image, item.segmap.as_ref(), s, &mut rng);
            let mut crop = resize_rgb(&pad_to_square(&crop), c.crop_size, c.crop_size);
            if c.flip_crops && rng.random_bool(0.5) {
                crop = image::imageops::flip_horizontal(&crop);
            }
            crops.push(to_chw(&crop, |v| v / 255.0));
            masks.push(match &item.segmap {
                Some(m) => mask_coverage(m, s.id, latent),
                None => vec![0.0; latent * latent],
            });
        }
        Ok(Prepared {
            pixels,
            ids,
            positions,
            crops,
            masks,
            mode,
        })
    }
}

impl<B: Backend> Batcher<B, Result<Stage1Item>, Result<Stage1Batch<B>>> for Stage1Batcher {
    fn batch(&self, items: Vec<Result<Stage1Item>>, device: &B::Device) -> Result<Stage1Batch<B>> {
        let items = items.into_iter().collect::<Result<Vec<_>>>()?;
        if items.is_empty() {
            return Err(Error::InvalidInput("stage-1 batch of no items".into()));
        }
        let c = &self.config;
        let (n, m, l) = (items.len(), c.max_objects, self.tokenizer.max_len());
        let res = c.resolution as usize;
        let s = c.crop_size as usize;
        let r = res / c.latent_factor as usize;
        let mut pixels = Vec::with_capacity(n * 3 * res * res);
        let mut ids = Vec::with_capacity(n * l);
        let mut idx = vec![0i64; n * m];
        let mut idx_mask = vec![false; n * m];
        let mut crops = vec![0f32; n * m * 3 * s * s];
        let mut masks = vec![0f32; n * m * r * r];
        let mut num_objects = Vec::with_capacity(n);
        let mut modes = Vec::with_capacity(n);
        for (b, item) in items.iter().enumerate() {
            let p = self.prepare(item)?;
            pixels.extend_from_slice(&p.pixels);
            ids.extend(p.ids.iter().map(|&x| i64::from(x)));
            for (j, &pos) in p.positions.iter().enumerate().take(m) {
                idx[b * m + j] = pos as i64;
                idx_mask[b * m + j] = true;
            }
            for (j, crop) in p.crops.iter().enumerate().take(m) {
                let off = (b * m + j) * 3 * s * s;
                crops[off..off + crop.len()].copy_from_slice(crop);
            }
            for (j, mask) in p.masks.iter().enumerate().take(m) {
                let off = (b * m + j) * r * r;
                masks[off..off + mask.len()].copy_from_slice(mask);
            }
            num_objects.push(p.positions.len().min(m));
            modes.push(p.mode);
        }
        Ok(Stage1Batch {
            pixel_values: Tensor::from_data(TensorData::new(pixels, [n, 3, res, res]), device),
            input_ids: Tensor::from_data(TensorData::new(ids, [n, l]), device),
            image_token_idx: Tensor::from_data(TensorData::new(idx, [n, m]), device),
            image_token_idx_mask: Tensor::from_data(TensorData::new(idx_mask, [n, m]), device),
            object_pixel_values: Tensor::from_data(TensorData::new(crops, [n, m, 3, s, s]), device),
            object_masks: Tensor::from_data(TensorData::new(masks, [n, m, r, r]), device),
            num_objects,
            modes,
            ids: items.into_iter().map(|i| i.id).collect(),
        })
    }
}

/// `[3, H, W]` floats from an RGB image, each byte mapped by `f`.
pub(crate) fn to_chw(img: &RgbImage, f: impl Fn(f32) -> f32) -> Vec<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let raw = img.as_raw();
    let mut out = vec![0f32; 3 * h * w];
    for i in 0..h * w {
        for ch in 0..3 {
            out[ch * h * w + i] = f(f32::from(raw[3 * i + ch]));
        }
    }
    out
}

/// The character's box, with every pixel outside its segment replaced by noise 0..254.
fn noise_crop(
    img: &RgbImage,
    segmap: Option<&SegMap>,
    s: &Segment,
    rng: &mut ChaCha8Rng,
) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let px = |f: f32, n: u32| ((f * n as f32).round().max(0.0) as u32).min(n);
    let (x1, y1) = (px(s.bbox[0], w), px(s.bbox[1], h));
    let (x2, y2) = (
        px(s.bbox[2], w).max(x1 + 1).min(w),
        px(s.bbox[3], h).max(y1 + 1).min(h),
    );
    let (x1, y1) = (x1.min(x2 - 1), y1.min(y2 - 1));
    let mut out = RgbImage::new(x2 - x1, y2 - y1);
    for y in y1..y2 {
        for x in x1..x2 {
            let inside = segmap.is_some_and(|m| {
                (x as usize) < m.width
                    && (y as usize) < m.height
                    && m.ids[y as usize * m.width + x as usize] == s.id
            });
            let p = if inside {
                *img.get_pixel(x, y)
            } else {
                image::Rgb([
                    rng.random_range(0..255),
                    rng.random_range(0..255),
                    rng.random_range(0..255),
                ])
            };
            out.put_pixel(x - x1, y - y1, p);
        }
    }
    out
}

/// Pads to a square with black, centred (FastComposer's `PadToSquare`).
fn pad_to_square(img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    let side = w.max(h);
    let mut out = RgbImage::new(side, side);
    image::imageops::replace(
        &mut out,
        img,
        i64::from((side - w) / 2),
        i64::from((side - h) / 2),
    );
    out
}

/// Fraction of each cell of a `side × side` grid covered by segment `id`.
pub fn mask_coverage(m: &SegMap, id: u32, side: usize) -> Vec<f32> {
    let mut hits = vec![0f32; side * side];
    let mut counts = vec![0f32; side * side];
    for y in 0..m.height {
        let cy = y * side / m.height;
        for x in 0..m.width {
            let cx = x * side / m.width;
            let cell = cy * side + cx;
            counts[cell] += 1.0;
            if m.ids[y * m.width + x] == id {
                hits[cell] += 1.0;
            }
        }
    }
    hits.iter()
        .zip(&counts)
        .map(|(&h, &c)| if c > 0.0 { h / c } else { 0.0 })
        .collect()
}

/// A burn [`Dataset`] of stage-1 items: the frames of a split that show at least
/// `min_objects` characters (`--min_num_objects 1` in the original). Item `i` uses image
/// `k` of its clip and a seed, both drawn from `(seed, epoch, i)`.
pub struct Stage1Frames {
    dataset: Arc<dyn StoryDataset>,
    ids: Vec<String>,
    seed: u64,
    epoch: u64,
}

impl Stage1Frames {
    /// The frames of `split` with at least `min_objects` segments.
    pub fn new(
        dataset: Arc<dyn StoryDataset>,
        split: Split,
        min_objects: usize,
        seed: u64,
    ) -> Result<Self> {
        let mut ids = Vec::new();
        for id in dataset.frame_ids(split) {
            if dataset.annotation(id)?.segments.len() >= min_objects {
                ids.push(id.clone());
            }
        }
        Ok(Self {
            dataset,
            ids,
            seed,
            epoch: 0,
        })
    }

    /// The frame ids, in item order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Sets the epoch, which changes every item's random draws.
    pub fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
    }

    /// Loads item `index`.
    pub fn load(&self, index: usize) -> Result<Stage1Item> {
        let id = self.ids.get(index).ok_or_else(|| {
            Error::InvalidInput(format!("item {index} of {} stage-1 frames", self.ids.len()))
        })?;
        let seed = item_seed(self.seed, self.epoch, index);
        let ann = self.dataset.annotation(id)?;
        let k = (seed % ann.num_images.max(1) as u64) as usize;
        let img = self.dataset.load_image(id, k)?;
        Ok(Stage1Item {
            id: id.clone(),
            image: img.image,
            segmap: img.segmap,
            tokens: ann.tokens.clone(),
            segments: ann.segments.clone(),
            seed,
        })
    }
}

impl Dataset<Result<Stage1Item>> for Stage1Frames {
    fn get(&self, index: usize) -> Option<Result<Stage1Item>> {
        (index < self.ids.len()).then(|| self.load(index))
    }

    fn len(&self) -> usize {
        self.ids.len()
    }
}
