//! Stage 2 (LLM alignment) batches: the interleaved sequence of earlier frames and captions,
//! the `[IMG]` tokens, and the id of the frame whose *non-referential* fused embedding is the
//! regression target (`gill/data.py:28-141`).
//!
//! For a story of frames `0..n` and a target `t ∈ [1, n)` (drawn uniformly, as the original:
//! the first frame is never a target), the text is
//!
//! ```text
//! <BOS> Image: <img>[m image slots]</img> Caption: {ref caption 0} … Image: <img>[m slots]</img>
//!       Caption: {ref caption t-1} Caption: {ref caption t} Image: [IMG0]…[IMG{R-1}]
//! ```
//!
//! tokenized piece by piece between the image slots, BOS once. Captions are the referential
//! ones (pronouns); the target id names the frame whose caption *with names* the LLM must hit.
//! Image slots hold the pad id and are replaced by the `m` visual tokens of that frame in the
//! model. Labels are the ids, with `-100` on padding, image slots and `[IMG1]…[IMG{R-1}]`
//! (the original supervises the text and `[IMG0]`).
//!
//! Deviation: the original truncates at `max_len`, which can cut the `[IMG]` tokens off; here
//! the oldest history frames are dropped until the sequence fits, and a target that does not
//! fit even alone is an error.

use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use storygpt_core::{Error, LmTokenizer, Result};

use super::{item_seed, resize_rgb};
use crate::batch::stage1::to_chw;
use crate::dataset::{Split, StoryDataset};

/// The label value ignored by the loss.
pub const IGNORE_INDEX: i64 = -100;

/// Stage-2 batching settings (defaults mirror `train_llm_v2.sh`).
#[derive(Debug, Clone, PartialEq)]
pub struct Stage2Config {
    /// `[IMG]` tokens appended after the target caption (R = 8).
    pub img_tokens: Vec<String>,
    /// Visual tokens per history frame (m = 4).
    pub visual_tokens: usize,
    /// Maximum sequence length (160).
    pub max_len: usize,
    /// Side of the history frames for the CLIP vision encoder (224).
    pub image_size: u32,
    /// Per-channel normalisation mean (CLIP's).
    pub image_mean: [f32; 3],
    /// Per-channel normalisation std (CLIP's).
    pub image_std: [f32; 3],
}

impl Default for Stage2Config {
    fn default() -> Self {
        Self {
            img_tokens: (0..8).map(|i| format!("[IMG{i}]")).collect(),
            visual_tokens: 4,
            max_len: 160,
            image_size: 224,
            image_mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            image_std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
        }
    }
}

/// One story, decoded, with its target.
#[derive(Debug, Clone)]
pub struct Stage2Item {
    /// Frame ids of the story.
    pub ids: Vec<String>,
    /// The frames (only `..target` are fed as history).
    pub frames: Vec<RgbImage>,
    /// Referential captions, one per frame.
    pub captions: Vec<String>,
    /// The target frame index (≥ 1).
    pub target: usize,
}

/// A stage-2 batch.
#[derive(Debug, Clone)]
pub struct Stage2Batch<B: Backend> {
    /// `[B, L]` token ids (image slots hold the pad id), right-padded.
    pub input_ids: Tensor<B, 2, Int>,
    /// `[B, L]` 1 for real tokens and image slots, 0 for padding.
    pub attention_mask: Tensor<B, 2, Int>,
    /// `[B, L]` LM labels, [`IGNORE_INDEX`] where not supervised.
    pub labels: Tensor<B, 2, Int>,
    /// `[B, H, 3, S, S]` history frames, normalised (zeros past `num_history`).
    pub history_pixels: Tensor<B, 5>,
    /// `[B, H]` the first image-slot position of each history frame (0 past `num_history`).
    pub image_slot_starts: Tensor<B, 2, Int>,
    /// `[B, R]` positions of the `[IMG]` tokens.
    pub img_token_positions: Tensor<B, 2, Int>,
    /// History frames actually used per sample (after dropping what did not fit).
    pub num_history: Vec<usize>,
    /// The target frame index in its story.
    pub target_index: Vec<usize>,
    /// The target frame id: the key of its non-referential fused embedding.
    pub target_ids: Vec<String>,
}

/// Builds [`Stage2Batch`]es with an [`LmTokenizer`].
#[derive(Clone)]
pub struct Stage2Batcher {
    tokenizer: Arc<dyn LmTokenizer>,
    config: Stage2Config,
    img_ids: Vec<u32>,
}

impl std::fmt::Debug for Stage2Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage2Batcher")
            .field("config", &self.config)
            .field("img_ids", &self.img_ids)
            .finish_non_exhaustive()
    }
}

/// One sample's token sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    /// Token ids (image slots hold the pad id).
    pub ids: Vec<u32>,
    /// Labels ([`IGNORE_INDEX`] where not supervised).
    pub labels: Vec<i64>,
    /// First slot of each history frame's visual tokens.
    pub image_slot_starts: Vec<usize>,
    /// Positions of the `[IMG]` tokens.
    pub img_positions: Vec<usize>,
    /// History frames kept.
    pub num_history: usize,
}

impl Stage2Batcher {
    /// A batcher. Every `[IMG]` token must be in the tokenizer's vocabulary.
    pub fn new(tokenizer: Arc<dyn LmTokenizer>, config: Stage2Config) -> Result<Self> {
        if config.img_tokens.is_empty() || config.visual_tokens == 0 || config.max_len == 0 {
            return Err(Error::InvalidInput(format!(
                "stage-2 batcher: invalid config {config:?}"
            )));
        }
        let img_ids = config
            .img_tokens
            .iter()
            .map(|t| {
                tokenizer.token_id(t).ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "`{t}` is not a token: add the [IMG] tokens to the LLM tokenizer first"
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            tokenizer,
            config,
            img_ids,
        })
    }

    /// The token sequence for `captions[..=target]`, keeping the newest history frames that
    /// fit in `max_len`.
    pub fn sequence(&self, captions: &[String], target: usize) -> Result<Sequence> {
        if target == 0 || target >= captions.len() {
            return Err(Error::InvalidInput(format!(
                "stage-2 target {target} must be in 1..{} (the first frame is never a target)",
                captions.len()
            )));
        }
        for first in 0..target {
            let seq = self.build(captions, first, target)?;
            if seq.ids.len() <= self.config.max_len {
                return Ok(seq);
            }
        }
        let seq = self.build(captions, target, target)?;
        if seq.ids.len() <= self.config.max_len {
            return Ok(seq);
        }
        Err(Error::InvalidInput(format!(
            "the target caption alone needs {} tokens, more than max_len {}: {:?}",
            seq.ids.len(),
            self.config.max_len,
            captions[target]
        )))
    }

    /// The token sequence with history frames `first..target` and target `target`, without
    /// the `max_len` rule (inference checks the LLM's own context instead). `first == target`
    /// gives a context with no history, which is how frame 1 can take the LLM path.
    pub fn window(&self, captions: &[String], first: usize, target: usize) -> Result<Sequence> {
        if first > target || target >= captions.len() {
            return Err(Error::InvalidInput(format!(
                "stage-2 window {first}..={target} outside a story of {} captions",
                captions.len()
            )));
        }
        self.build(captions, first, target)
    }

    fn build(&self, captions: &[String], first: usize, target: usize) -> Result<Sequence> {
        let pad = self.tokenizer.pad_id();
        let m = self.config.visual_tokens;
        let mut ids: Vec<u32> = Vec::new();
        let mut labels: Vec<i64> = Vec::new();
        let mut starts = Vec::new();
        let mut text = String::new();
        let mut bos = true;
        let mut flush =
            |text: &mut String, ids: &mut Vec<u32>, labels: &mut Vec<i64>| -> Result<()> {
                let piece = self.tokenizer.encode_text(text, bos)?;
                bos = false;
                labels.extend(piece.iter().map(|&x| i64::from(x)));
                ids.extend(piece);
                text.clear();
                Ok(())
            };
        for cap in &captions[first..target] {
            text.push_str(" Image: <img>");
            flush(&mut text, &mut ids, &mut labels)?;
            starts.push(ids.len());
            ids.extend(std::iter::repeat_n(pad, m));
            labels.extend(std::iter::repeat_n(IGNORE_INDEX, m));
            text.push_str("</img> Caption: ");
            text.push_str(cap);
        }
        text.push_str(" Caption: ");
        text.push_str(&captions[target]);
        text.push_str(" Image: ");
        flush(&mut text, &mut ids, &mut labels)?;
        let mut img_positions = Vec::with_capacity(self.img_ids.len());
        for (i, &id) in self.img_ids.iter().enumerate() {
            img_positions.push(ids.len());
            ids.push(id);
            labels.push(if i == 0 { i64::from(id) } else { IGNORE_INDEX });
        }
        Ok(Sequence {
            ids,
            labels,
            image_slot_starts: starts,
            img_positions,
            num_history: target - first,
        })
    }
}

impl<B: Backend> Batcher<B, Result<Stage2Item>, Result<Stage2Batch<B>>> for Stage2Batcher {
    fn batch(&self, items: Vec<Result<Stage2Item>>, device: &B::Device) -> Result<Stage2Batch<B>> {
        let items = items.into_iter().collect::<Result<Vec<_>>>()?;
        if items.is_empty() {
            return Err(Error::InvalidInput("stage-2 batch of no items".into()));
        }
        let c = &self.config;
        let seqs = items
            .iter()
            .map(|it| {
                if it.frames.len() != it.captions.len() || it.ids.len() != it.captions.len() {
                    return Err(Error::InvalidInput(format!(
                        "stage-2 item: {} ids, {} frames and {} captions",
                        it.ids.len(),
                        it.frames.len(),
                        it.captions.len()
                    )));
                }
                self.sequence(&it.captions, it.target)
            })
            .collect::<Result<Vec<_>>>()?;
        let n = items.len();
        let l = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(1);
        let h = seqs.iter().map(|s| s.num_history).max().unwrap_or(0).max(1);
        let r = self.img_ids.len();
        let s = c.image_size as usize;
        let pad = i64::from(self.tokenizer.pad_id());
        let mut ids = vec![pad; n * l];
        let mut mask = vec![0i64; n * l];
        let mut labels = vec![IGNORE_INDEX; n * l];
        let mut starts = vec![0i64; n * h];
        let mut img_pos = vec![0i64; n * r];
        let mut pixels = vec![0f32; n * h * 3 * s * s];
        for (b, (seq, item)) in seqs.iter().zip(&items).enumerate() {
            for (j, (&id, &lab)) in seq.ids.iter().zip(&seq.labels).enumerate() {
                ids[b * l + j] = i64::from(id);
                labels[b * l + j] = lab;
                mask[b * l + j] = 1;
            }
            for (j, &p) in seq.image_slot_starts.iter().enumerate() {
                starts[b * h + j] = p as i64;
            }
            for (j, &p) in seq.img_positions.iter().enumerate() {
                img_pos[b * r + j] = p as i64;
            }
            let first = item.target - seq.num_history;
            for (j, frame) in item.frames[first..item.target].iter().enumerate() {
                let img = resize_rgb(frame, c.image_size, c.image_size);
                let chw = to_chw(&img, |v| v / 255.0);
                let off = (b * h + j) * 3 * s * s;
                for ch in 0..3 {
                    let (mean, std) = (c.image_mean[ch], c.image_std[ch]);
                    for (dst, &v) in pixels[off + ch * s * s..off + (ch + 1) * s * s]
                        .iter_mut()
                        .zip(&chw[ch * s * s..(ch + 1) * s * s])
                    {
                        *dst = (v - mean) / std;
                    }
                }
            }
        }
        Ok(Stage2Batch {
            input_ids: Tensor::from_data(TensorData::new(ids, [n, l]), device),
            attention_mask: Tensor::from_data(TensorData::new(mask, [n, l]), device),
            labels: Tensor::from_data(TensorData::new(labels, [n, l]), device),
            history_pixels: Tensor::from_data(TensorData::new(pixels, [n, h, 3, s, s]), device),
            image_slot_starts: Tensor::from_data(TensorData::new(starts, [n, h]), device),
            img_token_positions: Tensor::from_data(TensorData::new(img_pos, [n, r]), device),
            num_history: seqs.iter().map(|s| s.num_history).collect(),
            target_index: items.iter().map(|i| i.target).collect(),
            target_ids: items.iter().map(|i| i.ids[i.target].clone()).collect(),
        })
    }
}

/// A burn [`Dataset`] of stage-2 items: the stories of a split, each with a target drawn
/// uniformly from `1..len` and one image per clip, both from `(seed, epoch, i)`.
pub struct Stage2Stories {
    dataset: Arc<dyn StoryDataset>,
    split: Split,
    seed: u64,
    epoch: u64,
}

impl Stage2Stories {
    /// The stories of `split` with at least two frames.
    pub fn new(dataset: Arc<dyn StoryDataset>, split: Split, seed: u64) -> Self {
        Self {
            dataset,
            split,
            seed,
            epoch: 0,
        }
    }

    /// Sets the epoch, which changes every item's random draws.
    pub fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
    }

    /// Loads item `index`.
    pub fn load(&self, index: usize) -> Result<Stage2Item> {
        let stories = self.dataset.stories(self.split);
        let story = stories.get(index).ok_or_else(|| {
            Error::InvalidInput(format!("item {index} of {} stories", stories.len()))
        })?;
        if story.len() < 2 {
            return Err(Error::InvalidInput(format!(
                "story starting at {} has one frame: stage 2 needs at least two",
                story[0]
            )));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(item_seed(self.seed, self.epoch, index));
        let mut frames = Vec::with_capacity(story.len());
        let mut images = Vec::with_capacity(story.len());
        for id in story {
            let n = self.dataset.annotation(id)?.num_images.max(1);
            let k = rng.random_range(0..n);
            frames.push(self.dataset.load_image(id, k)?.image);
            images.push(k);
        }
        let captions = self
            .dataset
            .referential_captions(story, &images)?
            .into_iter()
            .map(|c| c.text)
            .collect();
        let target = rng.random_range(1..story.len());
        Ok(Stage2Item {
            ids: story.clone(),
            frames,
            captions,
            target,
        })
    }
}

impl Dataset<Result<Stage2Item>> for Stage2Stories {
    fn get(&self, index: usize) -> Option<Result<Stage2Item>> {
        (index < self.len()).then(|| self.load(index))
    }

    fn len(&self) -> usize {
        self.dataset.stories(self.split).len()
    }
}
