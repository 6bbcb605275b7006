//! Data helpers shared by the stages: an epoch sampler whose position is checkpointed, frames
//! held in memory, and Gaussian noise drawn on the host from the run's RNG (so every backend
//! sees the same numbers and a resumed run the same draws).

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use image::RgbImage;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};
use storygpt_core::{Error, Result};
use storygpt_data::{Split, StoryDataset};

/// Draws indices `0..n` epoch by epoch, each epoch a fresh permutation seeded by
/// `(seed, epoch)`; its position is two numbers. A weighted sampler repeats item `i`
/// `repeats[i]` times per epoch (and the unweighted one is all ones: the same permutations).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochSampler {
    /// Items.
    pub n: usize,
    /// Seed of the permutations.
    pub seed: u64,
    /// Current epoch.
    pub epoch: u64,
    /// Position in the current epoch.
    pub cursor: usize,
    #[serde(skip)]
    repeats: Option<Vec<usize>>,
    #[serde(skip)]
    order: Vec<usize>,
}

impl EpochSampler {
    /// A sampler over `n` items.
    pub fn new(n: usize, seed: u64) -> Self {
        let mut s = Self {
            n,
            seed,
            epoch: 0,
            cursor: 0,
            repeats: None,
            order: Vec::new(),
        };
        s.shuffle();
        s
    }

    /// A sampler over `repeats.len()` items, item `i` drawn `repeats[i]` times per epoch.
    pub fn weighted(repeats: Vec<usize>, seed: u64) -> Self {
        let mut s = Self {
            n: repeats.len(),
            seed,
            epoch: 0,
            cursor: 0,
            repeats: Some(repeats),
            order: Vec::new(),
        };
        s.shuffle();
        s
    }

    /// Draws per epoch.
    pub fn epoch_len(&self) -> usize {
        self.order.len()
    }

    fn shuffle(&mut self) {
        let mut rng =
            ChaCha8Rng::seed_from_u64(storygpt_data::batch::item_seed(self.seed, self.epoch, 0));
        self.order = match &self.repeats {
            None => (0..self.n).collect(),
            Some(r) => r
                .iter()
                .enumerate()
                .flat_map(|(i, &k)| std::iter::repeat_n(i, k))
                .collect(),
        };
        self.order.shuffle(&mut rng);
    }

    /// The next `k` indices.
    pub fn next(&mut self, k: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(k);
        while out.len() < k && !self.order.is_empty() {
            if self.cursor >= self.order.len() {
                self.epoch += 1;
                self.cursor = 0;
                self.shuffle();
            }
            out.push(self.order[self.cursor]);
            self.cursor += 1;
        }
        out
    }

    /// The position, for checkpoints.
    pub fn state(&self) -> serde_json::Value {
        serde_json::json!({"epoch": self.epoch, "cursor": self.cursor})
    }

    /// Restores a position.
    pub fn restore(&mut self, v: &serde_json::Value) -> Result<()> {
        let (Some(epoch), Some(cursor)) = (v["epoch"].as_u64(), v["cursor"].as_u64()) else {
            return Err(Error::InvalidInput(format!(
                "bad sampler state in checkpoint: {v}"
            )));
        };
        self.epoch = epoch;
        self.cursor = cursor as usize;
        self.shuffle();
        Ok(())
    }
}

/// Standard-normal noise of `shape`, drawn on the host from `rng`.
pub fn normal<B: Backend, const D: usize>(
    rng: &mut ChaCha8Rng,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// Frames of a split held in memory at `size²` (Pillow-style bilinear when resized).
#[derive(Debug, Clone)]
pub struct FrameStore {
    /// Frame ids.
    pub ids: Vec<String>,
    /// The frames.
    pub images: Vec<RgbImage>,
    /// Side.
    pub size: u32,
}

impl FrameStore {
    /// Loads image 0 of every frame of `split` (at most `limit` frames).
    pub fn load(
        dataset: &dyn StoryDataset,
        split: Split,
        size: u32,
        limit: Option<usize>,
    ) -> Result<Self> {
        let mut ids: Vec<String> = dataset.frame_ids(split).to_vec();
        if let Some(l) = limit {
            ids.truncate(l);
        }
        if ids.is_empty() {
            return Err(Error::InvalidInput(format!(
                "{} has no {} frames",
                dataset.name(),
                split.name()
            )));
        }
        let images = ids
            .iter()
            .map(|id| Ok(resize(&dataset.load_image(id, 0)?.image, size)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { ids, images, size })
    }

    /// Frames `idx` as `[len, 3, s, s]` in `[-1, 1]`.
    pub fn batch<B: Backend>(&self, idx: &[usize], device: &B::Device) -> Tensor<B, 4> {
        images_to_tensor(idx.iter().map(|&i| &self.images[i]), self.size, device)
    }
}

/// Resizes to `size²` (Pillow bilinear), a copy when already that size.
pub fn resize(img: &RgbImage, size: u32) -> RgbImage {
    use storygpt_models::clip::image_processor::{PilFilter, resize_pil};
    if img.dimensions() == (size, size) {
        img.clone()
    } else {
        resize_pil(img, size as usize, size as usize, PilFilter::Bilinear)
    }
}

/// RGB images of one size as `[n, 3, s, s]` in `[-1, 1]`.
pub fn images_to_tensor<'a, B: Backend>(
    images: impl Iterator<Item = &'a RgbImage>,
    size: u32,
    device: &B::Device,
) -> Tensor<B, 4> {
    let s = size as usize;
    let mut data = Vec::new();
    let mut n = 0;
    for img in images {
        let raw = img.as_raw();
        for c in 0..3 {
            data.extend((0..s * s).map(|i| f32::from(raw[3 * i + c]) / 127.5 - 1.0));
        }
        n += 1;
    }
    Tensor::from_data(TensorData::new(data, [n, 3, s, s]), device)
}

/// `[n, 3, h, w]` in `[-1, 1]` back to RGB images.
pub fn tensor_to_images<B: Backend>(x: Tensor<B, 4>) -> Vec<RgbImage> {
    let [n, _, h, w] = x.dims();
    let v: Vec<f32> = x.into_data().convert::<f32>().to_vec().unwrap_or_default();
    (0..n)
        .map(|i| {
            RgbImage::from_fn(w as u32, h as u32, |px, py| {
                let at = |c: usize| {
                    let f = v[((i * 3 + c) * h + py as usize) * w + px as usize];
                    ((f + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8
                };
                image::Rgb([at(0), at(1), at(2)])
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_weighted_sampler_repeats_items_per_epoch_and_all_ones_is_the_plain_one() {
        let mut plain = EpochSampler::new(7, 3);
        let mut ones = EpochSampler::weighted(vec![1; 7], 3);
        assert_eq!(plain.next(30), ones.next(30));
        let mut w = EpochSampler::weighted(vec![1, 0, 2, 3], 5);
        assert_eq!(w.epoch_len(), 6);
        let epoch = w.next(6);
        let count = |i: usize| epoch.iter().filter(|&&x| x == i).count();
        assert_eq!([count(0), count(1), count(2), count(3)], [1, 0, 2, 3]);
        // the position restores into the same stream
        let _ = w.next(4);
        let state = w.state();
        let ahead = w.next(9);
        let mut again = EpochSampler::weighted(vec![1, 0, 2, 3], 5);
        again.restore(&state).unwrap();
        assert_eq!(again.next(9), ahead);
        assert!(EpochSampler::weighted(vec![0, 0], 1).next(3).is_empty());
    }
}
