//! CLIP text–image and image–image scores (the paper's supplementary Table 10 reports CLIP
//! T-I and I-I): the cosine similarity between the projected CLIP embeddings of a caption and
//! a generated frame, and of a generated frame and its ground-truth frame, averaged over frames.
//!
//! Any `CLIPModel` folder works (`config.json` with `text_config` / `vision_config`,
//! `model.safetensors`, the tokenizer files and `preprocessor_config.json`), e.g.
//! `openai/clip-vit-base-patch32` or the story world's own CLIP.

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Device, Int, Tensor, TensorData};
use image::{DynamicImage, RgbImage};
use serde::{Deserialize, Serialize};
use storygpt_core::Result;
use storygpt_models::clip::{
    ClipImageProcessor, ClipTextModelWithProjection, ClipTokenizer, ClipVisionModelWithProjection,
};

/// CLIP scores of a set of frames, in `[-1, 1]` (mean cosine similarity).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClipScores {
    /// Caption ↔ generated frame.
    pub text_image: f64,
    /// Generated frame ↔ ground-truth frame.
    pub image_image: f64,
    /// Frames scored.
    pub frames: usize,
}

/// A CLIP model with both projections, its tokenizer and its image processor.
#[derive(Debug)]
pub struct ClipScorer<B: Backend> {
    text: ClipTextModelWithProjection<B>,
    vision: ClipVisionModelWithProjection<B>,
    tokenizer: ClipTokenizer,
    processor: ClipImageProcessor,
}

impl<B: Backend> ClipScorer<B> {
    /// Loads a `CLIPModel` folder.
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &Device<B>) -> Result<Self> {
        let dir = dir.as_ref();
        Ok(Self {
            text: ClipTextModelWithProjection::from_pretrained(dir, device)?,
            vision: ClipVisionModelWithProjection::from_pretrained(dir, device)?,
            tokenizer: ClipTokenizer::from_dir(dir)?,
            processor: ClipImageProcessor::from_dir(dir)?,
        })
    }

    /// L2-normalised text embeddings `[n, proj]`.
    pub fn embed_texts(&self, texts: &[&str], device: &Device<B>) -> Result<Tensor<B, 2>> {
        let mut rows = Vec::with_capacity(texts.len());
        let mut len = 0;
        for t in texts {
            let enc = self.tokenizer.encode_padded(t)?;
            len = enc.input_ids.len();
            rows.extend(enc.input_ids.iter().map(|&i| i64::from(i)));
        }
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(rows, [texts.len(), len]), device);
        let (_, embeds) = self.text.forward(ids);
        Ok(l2_normalize(embeds))
    }

    /// L2-normalised image embeddings `[n, proj]`.
    pub fn embed_images(&self, images: &[RgbImage], device: &Device<B>) -> Result<Tensor<B, 2>> {
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(32) {
            let px = chunk
                .iter()
                .map(|im| {
                    self.processor
                        .preprocess(&DynamicImage::ImageRgb8(im.clone()), device)
                })
                .collect::<Result<Vec<_>>>()?;
            let (_, embeds) = self.vision.forward(Tensor::cat(px, 0));
            out.push(l2_normalize(embeds));
        }
        Ok(Tensor::cat(out, 0))
    }

    /// Mean T-I and I-I cosines over frames: `captions[i]` and `reference[i]` belong to
    /// `generated[i]`.
    pub fn score(
        &self,
        captions: &[&str],
        generated: &[RgbImage],
        reference: &[RgbImage],
        device: &Device<B>,
    ) -> Result<ClipScores> {
        let n = generated.len();
        if captions.len() != n || reference.len() != n || n == 0 {
            return Err(storygpt_core::Error::InvalidInput(format!(
                "CLIP score needs one caption and one reference per generated frame (got {} \
                 captions, {n} frames, {} references)",
                captions.len(),
                reference.len()
            )));
        }
        let mut ti = 0.0;
        let mut ii = 0.0;
        for start in (0..n).step_by(32) {
            let end = (start + 32).min(n);
            let g = self.embed_images(&generated[start..end], device)?;
            let r = self.embed_images(&reference[start..end], device)?;
            let t = self.embed_texts(&captions[start..end], device)?;
            ti += sum_rowwise_dot(g.clone(), t);
            ii += sum_rowwise_dot(g, r);
        }
        Ok(ClipScores {
            text_image: ti / n as f64,
            image_image: ii / n as f64,
            frames: n,
        })
    }
}

fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x
        .clone()
        .powf_scalar(2.0)
        .sum_dim(1)
        .sqrt()
        .clamp_min(1e-12);
    x / norm
}

fn sum_rowwise_dot<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> f64 {
    let v: Vec<f32> = (a * b)
        .sum()
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap_or_default();
    v.first().copied().map_or(0.0, f64::from)
}
