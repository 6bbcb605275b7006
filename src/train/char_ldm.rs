//! Stage 1, Char-LDM (StoryGPT-V §3.2, `models/model.py`, `models/train.py`): a latent
//! diffusion model whose caption conditioning is augmented, at each character name, with the
//! CLIP image embedding of that character, and whose cross-attention is pulled onto each
//! character's mask.
//!
//! Trained: the UNet, the [`FuseModule`] and the last 2 layers of the CLIP vision tower.
//! Frozen: the VAE and the CLIP text encoder (their outputs carry no gradient; the VAE latents
//! of the training frames are computed once and cached). Per step:
//!
//! 1. a stage-1 batch (the 10 % unconditional / 10 % text-only / 80 % fused mixture, the
//!    character-token positions, noise-background crops, masks at latent resolution);
//! 2. `z = scaling · (μ + σ ε₀)`, `t ~ U{0..999}`, `z_t = √ᾱ_t z + √(1 − ᾱ_t) ε` (DDPM,
//!    scaled-linear β 0.00085 → 0.012);
//! 3. `c = fuse(text_encoder(ids), image_encoder(crops))` at the marked positions;
//! 4. `ε̂ = unet(z_t, t, c)`, capturing the cross-attention probabilities of the middle
//!    `reg_layers` cross-attention blocks;
//! 5. `L = MSE(ε̂, ε)` (with probability `mask_loss_prob` both restricted to the characters'
//!    union mask) `+ reg_weight · L_reg`, where per hooked layer and character
//!    `L_reg = mean(A outside the mask) − mean(A inside)` ([`reg_loss_layer`]).
//!
//! Validation samples frames from captions *with names* of the validation split (DDIM, CFG,
//! delayed conditioning as the original pipeline), scores them with the story-world judges
//! (Char-Acc / BG-Acc), measures the share of each name token's attention that falls inside
//! its character's mask, and writes sample and attention-overlay PNGs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::module::Module;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Device, ElementConversion, Int, Tensor, TensorData};
use image::RgbImage;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use storygpt_core::pipeline::{
    Conditioning, DenoiseOptions, decode_to_images, denoise, images_to_rgb8, initial_latents,
};
use storygpt_core::traits::{Autoencoder, NoiseScheduler, SeededNoise};
use storygpt_core::{Error, Result};
use storygpt_data::batch::stage1::{
    Stage1Batch, Stage1Batcher, Stage1Config, Stage1Frames, Stage1Mode,
};
use storygpt_data::{Split, StoryDataset};
use storygpt_models::attention::AttentionCapture;
use storygpt_models::autoencoder_kl::AutoencoderKL;
use storygpt_models::clip::{
    ClipTextModel, ClipTokenizer, ClipVisionModelWithProjection, IMAGE_MARKER,
};
use storygpt_models::fuse::FuseModule;
use storygpt_models::schedulers::ddim::{DdimScheduler, DdimSchedulerConfig};
use storygpt_models::schedulers::dpm_solver_multistep::{
    DpmSolverMultistepScheduler, DpmSolverMultistepSchedulerConfig,
};
use storygpt_models::schedulers::{SchedulerBaseConfig, SchedulerKind, load_scheduler_as};
use storygpt_models::unet_2d_condition::{UNet2DConditionConfig, UNet2DConditionModel};

use super::clip::{CLIP_MEAN, CLIP_STD};
use super::data::{EpochSampler, normal};
use super::latents::{LatentCache, add_training_noise};
use super::{Metrics, Stage};

/// Padded caption ids `[n, len]` and, per caption, the marked (character-name) positions.
pub type MarkedIds<B> = (Tensor<B, 2, Int>, Vec<Vec<usize>>);

/// The pieces of one training objective: `(loss, denoise, reg, attention capture)`.
type ObjectiveParts<B> = (
    Tensor<B, 1>,
    Tensor<B, 1>,
    Option<Tensor<B, 1>>,
    AttentionCapture<B>,
);

/// The trained part of Char-LDM.
#[derive(Module, Debug)]
pub struct CharLdm<B: Backend> {
    /// The denoiser.
    pub unet: UNet2DConditionModel<B>,
    /// Fuses name tokens with character embeddings (`postfuse_module`).
    pub postfuse_module: FuseModule<B>,
    /// CLIP vision + projection; only the last 2 layers train.
    pub image_encoder: ClipVisionModelWithProjection<B>,
}

impl<B: Backend> CharLdm<B> {
    /// CLIP image embeddings of crops `[n, 3, s, s]` in `[0, 1]`: `[n, proj]`.
    pub fn embed_crops(&self, crops: Tensor<B, 4>) -> Tensor<B, 2> {
        let device = crops.device();
        let mean = Tensor::<B, 1>::from_floats(CLIP_MEAN, &device).reshape([1, 3, 1, 1]);
        let std = Tensor::<B, 1>::from_floats(CLIP_STD, &device).reshape([1, 3, 1, 1]);
        self.image_encoder.forward((crops - mean) / std).1
    }

    /// Fused conditioning: text-encoder output `[b, l, d]`, crops `[b, m, 3, s, s]`.
    pub fn condition(
        &self,
        text: Tensor<B, 3>,
        token_idx: Tensor<B, 2, Int>,
        valid: Tensor<B, 2, burn::tensor::Bool>,
        crops: Tensor<B, 5>,
    ) -> Tensor<B, 3> {
        let [b, m, c, s, _] = crops.dims();
        let emb = self.embed_crops(crops.reshape([b * m, c, s, s]));
        let d = emb.dims()[1];
        self.postfuse_module
            .fuse_object_embeddings(text, token_idx, valid, emb.reshape([b, m, d]))
    }
}

/// Frozen components and caches.
pub struct Frozen<B: Backend> {
    /// CLIP text encoder.
    pub text_encoder: ClipTextModel<B>,
    /// The VAE.
    pub vae: AutoencoderKL<B>,
    /// The tokenizer, with `<|image|>` added.
    pub tokenizer: ClipTokenizer,
    /// VAE scaling factor.
    pub scaling_factor: f64,
    /// A diffusers `scheduler/` folder whose `scheduler_config.json` sets the sampling noise
    /// schedule (betas, prediction type, steps offset), whichever [`Sampler`] draws; `None`:
    /// SD 1.x's, the one Char-LDM trains on. [`load_char_ldm`] points it at the folder's.
    pub scheduler_dir: Option<PathBuf>,
}

impl<B: Backend> Frozen<B> {
    /// Loads `text_encoder/`-style CLIP folder and a diffusers VAE folder.
    pub fn load(clip_dir: &Path, vae_dir: &Path, device: &Device<B>) -> Result<Self> {
        let mut tokenizer = ClipTokenizer::from_dir(clip_dir)?;
        tokenizer.add_special_tokens(&[IMAGE_MARKER]);
        let vae = AutoencoderKL::from_pretrained(vae_dir, device)?;
        let scaling_factor = vae.scaling_factor();
        Ok(Self {
            text_encoder: ClipTextModel::from_pretrained(clip_dir, device)?,
            vae,
            tokenizer,
            scaling_factor,
            scheduler_dir: None,
        })
    }

    /// `last_hidden_state` of padded ids.
    pub fn encode_text(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.text_encoder.forward(ids).last_hidden_state
    }

    /// Ids of captions (with `<|image|>` markers) and the marked positions.
    pub fn tokenize(&self, texts: &[String], device: &Device<B>) -> Result<MarkedIds<B>> {
        let mut rows = Vec::new();
        let mut marks = Vec::new();
        let mut len = 0;
        for t in texts {
            let (enc, m) = self.tokenizer.encode_with_marker(t, IMAGE_MARKER)?;
            len = enc.input_ids.len();
            rows.extend(enc.input_ids.iter().map(|&i| i64::from(i)));
            marks.push(m);
        }
        Ok((
            Tensor::from_data(TensorData::new(rows, [texts.len(), len]), device),
            marks,
        ))
    }
}

/// The training-noise table: `ᾱ_t` of SD's DDPM schedule.
pub fn alphas_cumprod() -> Vec<f64> {
    SchedulerBaseConfig::sd_v1().alphas_cumprod()
}

/// Antialiased bilinear resampling weights (PyTorch's `interpolate(..., mode="bilinear",
/// antialias=True)`, the same triangle filter as Pillow's): `[out, in]`.
pub fn aa_bilinear_matrix(input: usize, output: usize) -> Vec<f32> {
    let scale = input as f64 / output as f64;
    let support = scale.max(1.0);
    let mut m = vec![0f32; output * input];
    for o in 0..output {
        let center = (o as f64 + 0.5) * scale;
        let lo = ((center - support + 0.5).floor().max(0.0)) as usize;
        let hi = ((center + support + 0.5).floor() as usize).min(input);
        let mut ws: Vec<(usize, f64)> = (lo..hi)
            .map(|i| {
                let x = (i as f64 - center + 0.5) / support;
                (i, (1.0 - x.abs()).max(0.0))
            })
            .collect();
        let total: f64 = ws.iter().map(|w| w.1).sum();
        if total > 0.0 {
            ws.iter_mut().for_each(|w| w.1 /= total);
        }
        for (i, w) in ws {
            m[o * input + i] = w as f32;
        }
    }
    m
}

/// Resizes masks `[b, m, r, r]` to `[b, m, s, s]` with [`aa_bilinear_matrix`].
pub fn resize_masks<B: Backend>(masks: Tensor<B, 4>, size: usize) -> Tensor<B, 4> {
    let [b, m, r, _] = masks.dims();
    if r == size {
        return masks;
    }
    let device = masks.device();
    let w = Tensor::<B, 2>::from_data(
        TensorData::new(aa_bilinear_matrix(r, size), [size, r]),
        &device,
    );
    // rows then columns: W · M · Wᵀ
    let x = masks.reshape([b * m, r, r]);
    let wy = w.clone().reshape([1, size, r]).expand([b * m, size, r]);
    let wx = w.transpose().reshape([1, r, size]).expand([b * m, r, size]);
    wy.matmul(x).matmul(wx).reshape([b, m, size, size])
}

/// L_reg of one hooked layer (`get_reg_loss_layer` with `RegL1Loss`).
///
/// # Shapes
/// - `probs`: `[b, heads, hw, l]` softmax probabilities of the layer's cross-attention;
/// - `masks`: `[b, m, r, r]`; `token_idx`, `valid`: `[b, m]`;
/// - returns `[1]`.
pub fn reg_loss_layer<B: Backend>(
    probs: Tensor<B, 4>,
    masks: Tensor<B, 4>,
    token_idx: Tensor<B, 2, Int>,
    valid: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let [b, heads, hw, _] = probs.dims();
    let m = token_idx.dims()[1];
    let size = (hw as f64).sqrt().round() as usize;
    let seg = resize_masks(masks, size)
        .reshape([b, m, hw])
        .swap_dims(1, 2)
        .reshape([b, 1, hw, m]);
    // attention to each character token: gather along the text axis
    let idx = token_idx.reshape([b, 1, 1, m]).expand([b, heads, hw, m]);
    let a = probs.gather(3, idx); // [b, heads, hw, m]
    let bg = seg.clone() * -1.0 + 1.0;
    let bg_sum = bg.clone().sum_dim(2) + 1e-5; // [b, 1, 1, m]
    let obj_sum = seg.clone().sum_dim(2) + 1e-5;
    let bg_loss = (a.clone() * bg).sum_dim(2) / bg_sum; // [b, heads, 1, m]
    let obj_loss = (a * seg).sum_dim(2) / obj_sum;
    let per = (bg_loss - obj_loss).reshape([b, heads, m]) * valid.clone().reshape([b, 1, m]);
    let cnt = valid.sum_dim(1).reshape([b, 1]) + 1e-5; // [b, 1]
    (per.sum_dim(2).reshape([b, heads]) / cnt).mean()
}

/// The share of each valid character token's attention that lies inside its mask, averaged
/// over heads, layers and characters (the validation measure of what L_reg does).
pub fn attention_mass_in_masks<B: Backend>(
    capture: &AttentionCapture<B>,
    masks: Tensor<B, 4>,
    token_idx: Tensor<B, 2, Int>,
    valid: &[Vec<bool>],
) -> Option<f64> {
    let (mut total, mut n) = (0.0, 0usize);
    for probs in capture.probs.values() {
        let [b, heads, hw, _] = probs.dims();
        let m = token_idx.dims()[1];
        let size = (hw as f64).sqrt().round() as usize;
        let seg = resize_masks(masks.clone(), size)
            .reshape([b, m, hw])
            .swap_dims(1, 2)
            .reshape([b, 1, hw, m]);
        let idx = token_idx
            .clone()
            .reshape([b, 1, 1, m])
            .expand([b, heads, hw, m]);
        let a = probs.clone().gather(3, idx);
        let inside = (a.clone() * (seg.clamp(0.0, 1.0))).sum_dim(2) / (a.sum_dim(2) + 1e-12);
        let v: Vec<f32> = inside
            .mean_dim(1)
            .reshape([b * m])
            .into_data()
            .convert::<f32>()
            .to_vec()
            .ok()?;
        for (bi, row) in valid.iter().enumerate() {
            for (mi, &ok) in row.iter().enumerate() {
                if ok {
                    total += f64::from(v[bi * m + mi]);
                    n += 1;
                }
            }
        }
    }
    (n > 0).then(|| total / n as f64)
}

/// The cross-attention layers L_reg hooks: those of the middle `n` of the UNet's blocks that
/// have cross-attention (SD 1.x with n = 5: down 1, down 2, mid, up 1, up 2).
pub fn reg_layers<B: Backend>(unet: &UNet2DConditionModel<B>, n: usize) -> Vec<String> {
    let layers = unet.cross_attention_layers();
    let mut blocks: Vec<String> = Vec::new();
    for l in &layers {
        let block = l.split(".attentions").next().unwrap_or("").to_string();
        if !blocks.contains(&block) {
            blocks.push(block);
        }
    }
    let k = n.min(blocks.len());
    let start = (blocks.len() - k) / 2;
    let chosen = &blocks[start..start + k];
    layers
        .into_iter()
        .filter(|l| {
            chosen
                .iter()
                .any(|b| l.starts_with(&format!("{b}.attentions")))
        })
        .collect()
}

/// Loss settings (defaults: the original `train_ldm.sh`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CharLdmLossConfig {
    /// Weight of L_reg (`--reg_weight 1e-3`); 0 disables the attention capture.
    #[serde(default = "d_reg")]
    pub reg_weight: f64,
    /// How many of the UNet's cross-attention blocks (the middle ones) L_reg hooks.
    #[serde(default = "d_layers")]
    pub reg_layers: usize,
    /// Probability of restricting the denoising loss to the characters' masks.
    #[serde(default = "d_mask")]
    pub mask_loss_prob: f64,
    /// Unconditional share of the mixture.
    #[serde(default = "d_uncond")]
    pub uncond_prob: f64,
    /// Text-only share (frames with ≤ 1 character).
    #[serde(default = "d_uncond")]
    pub text_only_prob: f64,
    /// CLIP vision layers that train (`--image_encoder_trainable_layers 2`).
    #[serde(default = "d_trainable")]
    pub image_encoder_trainable_layers: usize,
    /// Whether the FuseModule trains. With it frozen and `image_encoder_trainable_layers = 0`
    /// the fused conditioning of every caption stays what it was, so a stage-2 head aligned to
    /// the `init_from` model's embeddings stays aligned while only the UNet moves on.
    #[serde(default = "d_true")]
    pub train_postfuse_module: bool,
    /// How often a training frame is drawn per epoch by how many characters it shows: entry `k`
    /// for `k` characters, the last entry for any more (e.g. `[1, 1, 2, 3]` draws the two- and
    /// three-character scenes, where a small UNet drops characters, twice and three times).
    /// Empty (the default, and the original): every frame once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repeat_by_characters: Vec<usize>,
}

fn d_true() -> bool {
    true
}

fn d_reg() -> f64 {
    1e-3
}
fn d_layers() -> usize {
    5
}
fn d_mask() -> f64 {
    0.3
}
fn d_uncond() -> f64 {
    0.1
}
fn d_trainable() -> usize {
    2
}

impl Default for CharLdmLossConfig {
    fn default() -> Self {
        Self {
            reg_weight: d_reg(),
            reg_layers: d_layers(),
            mask_loss_prob: d_mask(),
            uncond_prob: d_uncond(),
            text_only_prob: d_uncond(),
            image_encoder_trainable_layers: d_trainable(),
            train_postfuse_module: true,
            repeat_by_characters: Vec::new(),
        }
    }
}

/// Sampling settings (validation and inference).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleConfig {
    /// Denoising steps.
    #[serde(default = "d_steps")]
    pub steps: usize,
    /// The sampler (default DDIM, as the original).
    #[serde(default)]
    pub scheduler: Sampler,
    /// Classifier-free guidance scale.
    #[serde(default = "d_guidance")]
    pub guidance_scale: f64,
    /// Last step index conditioned on the plain text (Char-LDM's `start_merge_step`).
    #[serde(default)]
    pub start_merge_step: usize,
}

fn d_steps() -> usize {
    25
}
fn d_guidance() -> f64 {
    4.0
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self {
            steps: d_steps(),
            scheduler: Sampler::default(),
            guidance_scale: d_guidance(),
            start_merge_step: 0,
        }
    }
}

/// The samplers Char-LDM draws with, on SD 1.x's noise schedule (the one it is trained on)
/// unless a model folder's `scheduler/scheduler_config.json` gives another.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Sampler {
    /// DDIM, η = 0 (the original's sampler).
    #[default]
    Ddim,
    /// DPM-Solver++ 2M (diffusers' `DPMSolverMultistepScheduler` defaults): about the quality
    /// of DDIM in half the steps.
    DpmSolverMultistep,
}

impl Sampler {
    /// A fresh scheduler of this kind on the noise schedule of `dir/scheduler_config.json`
    /// (the keys this kind does not know are ignored, as in diffusers' `from_config` swap), or on
    /// SD 1.x's when `dir` is `None`.
    ///
    /// Errors: an unreadable or invalid `scheduler_config.json`.
    pub fn build<B: Backend>(self, dir: Option<&Path>) -> Result<Box<dyn NoiseScheduler<B>>> {
        if let Some(dir) = dir {
            let kind = match self {
                Self::Ddim => SchedulerKind::Ddim,
                Self::DpmSolverMultistep => SchedulerKind::DpmSolverMultistep,
            };
            return load_scheduler_as(kind, dir);
        }
        let common = SchedulerBaseConfig {
            steps_offset: 1,
            ..SchedulerBaseConfig::sd_v1()
        };
        Ok(match self {
            Self::Ddim => Box::new(DdimScheduler::new(DdimSchedulerConfig::sd_v1())?),
            Self::DpmSolverMultistep => Box::new(DpmSolverMultistepScheduler::<B>::new(
                DpmSolverMultistepSchedulerConfig {
                    common,
                    ..Default::default()
                },
            )?),
        })
    }
}

/// What to generate: a caption with names and each named character's portrait.
#[derive(Debug, Clone)]
pub struct Prompt {
    /// Caption words with `<|image|>` after each character name.
    pub marked_caption: String,
    /// The caption without markers (the text-only branch).
    pub caption: String,
    /// Portrait of each marked character, in marker order.
    pub portraits: Vec<RgbImage>,
}

/// A portrait padded to a square (white) and resized, as `[3, s, s]` in `[0, 1]`.
pub fn portrait_pixels(img: &RgbImage, size: u32) -> Vec<f32> {
    let side = img.width().max(img.height());
    let mut sq = RgbImage::from_pixel(side, side, image::Rgb([255, 255, 255]));
    image::imageops::replace(
        &mut sq,
        img,
        i64::from((side - img.width()) / 2),
        i64::from((side - img.height()) / 2),
    );
    let r = super::data::resize(&sq, size);
    let s = size as usize;
    let raw = r.as_raw();
    let mut out = Vec::with_capacity(3 * s * s);
    for c in 0..3 {
        out.extend((0..s * s).map(|i| f32::from(raw[3 * i + c]) / 255.0));
    }
    out
}

/// The conditionings of prompts: `(uncond, text-only, fused)`, each `[n, l, d]`. Every marked
/// name that has a portrait is fused, however many there are in a caption.
pub fn prompt_conditioning<B: Backend>(
    model: &CharLdm<B>,
    frozen: &Frozen<B>,
    prompts: &[Prompt],
    crop_size: u32,
    device: &Device<B>,
) -> Result<(Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>)> {
    let n = prompts.len();
    let (marked_ids, marks) = frozen.tokenize(
        &prompts
            .iter()
            .map(|p| p.marked_caption.clone())
            .collect::<Vec<_>>(),
        device,
    )?;
    let (plain_ids, _) = frozen.tokenize(
        &prompts
            .iter()
            .map(|p| p.caption.clone())
            .collect::<Vec<_>>(),
        device,
    )?;
    let (null_ids, _) = frozen.tokenize(&vec![String::new(); n], device)?;
    // object slots per caption: the most (marked name, portrait) pairs in any of them; padding
    // slots are masked out of the fusion
    let max_objects = prompts
        .iter()
        .zip(&marks)
        .map(|(p, m)| p.portraits.len().min(m.len()))
        .max()
        .unwrap_or(0)
        .max(1);
    let s = crop_size as usize;
    let mut idx = vec![0i64; n * max_objects];
    let mut valid = vec![false; n * max_objects];
    let mut crops = vec![0f32; n * max_objects * 3 * s * s];
    for (b, (p, m)) in prompts.iter().zip(&marks).enumerate() {
        for (j, (&pos, portrait)) in m.iter().zip(&p.portraits).enumerate().take(max_objects) {
            idx[b * max_objects + j] = pos as i64;
            valid[b * max_objects + j] = true;
            let off = (b * max_objects + j) * 3 * s * s;
            crops[off..off + 3 * s * s].copy_from_slice(&portrait_pixels(portrait, crop_size));
        }
    }
    let text = frozen.encode_text(marked_ids);
    let fused = model.condition(
        text,
        Tensor::from_data(TensorData::new(idx, [n, max_objects]), device),
        Tensor::from_data(TensorData::new(valid, [n, max_objects]), device),
        Tensor::from_data(TensorData::new(crops, [n, max_objects, 3, s, s]), device),
    );
    Ok((
        frozen.encode_text(null_ids),
        frozen.encode_text(plain_ids),
        fused,
    ))
}

/// Samples frames (DDIM, CFG, delayed conditioning) for prompts; `seed` fixes the noise.
#[allow(clippy::too_many_arguments)]
pub fn sample<B: Backend>(
    model: &CharLdm<B>,
    frozen: &Frozen<B>,
    prompts: &[Prompt],
    cfg: &SampleConfig,
    latent: [usize; 3],
    crop_size: u32,
    seed: u64,
    device: &Device<B>,
) -> Result<Vec<RgbImage>> {
    let (null, plain, fused) = prompt_conditioning(model, frozen, prompts, crop_size, device)?;
    let cond = Conditioning::delayed(null, plain, fused, cfg.start_merge_step);
    sample_with(
        model,
        frozen,
        &cond,
        cfg,
        [prompts.len(), latent[0], latent[1], latent[2]],
        seed,
        device,
    )
}

/// Samples from a ready conditioning (stage 2 passes the mapper's output as `late`).
pub fn sample_with<B: Backend>(
    model: &CharLdm<B>,
    frozen: &Frozen<B>,
    cond: &Conditioning<B>,
    cfg: &SampleConfig,
    shape: [usize; 4],
    seed: u64,
    device: &Device<B>,
) -> Result<Vec<RgbImage>> {
    let sched = cfg.scheduler.build::<B>(frozen.scheduler_dir.as_deref())?;
    let mut noise = SeededNoise::new(seed);
    let latents = initial_latents::<B>(sched.as_ref(), shape, None, &mut noise, device)?;
    denoise_to_images(model, frozen, cond, cfg, sched, latents, noise)
}

/// Samples a batch whose item `i` starts from the noise of `seeds[i]`: each frame is the one
/// [`sample_with`] draws alone with that seed (up to float rounding), at batch speed. For the
/// deterministic samplers only (DDIM with η = 0 and DPM-Solver++ draw no noise after the start).
pub fn sample_with_seeds<B: Backend>(
    model: &CharLdm<B>,
    frozen: &Frozen<B>,
    cond: &Conditioning<B>,
    cfg: &SampleConfig,
    item: [usize; 3],
    seeds: &[u64],
    device: &Device<B>,
) -> Result<Vec<RgbImage>> {
    let sched = cfg.scheduler.build::<B>(frozen.scheduler_dir.as_deref())?;
    let starts = seeds
        .iter()
        .map(|&seed| {
            let mut noise = SeededNoise::new(seed);
            initial_latents::<B>(
                sched.as_ref(),
                [1, item[0], item[1], item[2]],
                None,
                &mut noise,
                device,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    if starts.is_empty() {
        return Ok(Vec::new());
    }
    let noise = SeededNoise::new(seeds[0]);
    denoise_to_images(
        model,
        frozen,
        cond,
        cfg,
        sched,
        Tensor::cat(starts, 0),
        noise,
    )
}

fn denoise_to_images<B: Backend>(
    model: &CharLdm<B>,
    frozen: &Frozen<B>,
    cond: &Conditioning<B>,
    cfg: &SampleConfig,
    mut sched: Box<dyn NoiseScheduler<B>>,
    latents: Tensor<B, 4>,
    mut noise: SeededNoise,
) -> Result<Vec<RgbImage>> {
    let latents = denoise(
        &model.unet,
        sched.as_mut(),
        latents,
        cond,
        DenoiseOptions {
            num_inference_steps: cfg.steps,
            guidance_scale: cfg.guidance_scale,
        },
        &mut noise,
        &mut |_| {},
    )?;
    let imgs = images_to_rgb8(decode_to_images(&frozen.vae, latents));
    Ok(imgs
        .into_iter()
        .map(|(h, w, px)| {
            RgbImage::from_raw(w as u32, h as u32, px).unwrap_or_else(|| RgbImage::new(1, 1))
        })
        .collect())
}

/// The prompt of a dataset frame: its caption with names, markers after each cast member's
/// name, and the cast members' portraits.
pub fn frame_prompt(
    dataset: &dyn StoryDataset,
    id: &str,
    portraits: &[Option<RgbImage>],
) -> Result<Prompt> {
    let ann = dataset.annotation(id)?;
    let mut segs: Vec<_> = ann
        .segments
        .iter()
        .filter(|s| s.character.is_some())
        .collect();
    segs.sort_by_key(|s| s.end);
    segs.dedup_by_key(|s| s.end);
    let mut words = ann.tokens.clone();
    let mut imgs = Vec::new();
    for s in segs.iter().rev() {
        if let Some(Some(p)) = s.character.and_then(|c| portraits.get(c)) {
            words.insert(s.end.min(words.len()), IMAGE_MARKER.to_string());
            imgs.push(p.clone());
        }
    }
    imgs.reverse();
    Ok(Prompt {
        marked_caption: words.join(" "),
        caption: ann.caption_for_image(0).to_string(),
        portraits: imgs,
    })
}

/// The cast's portraits, decoded, in the dataset's character order (`None` for a character the
/// manifest gives no portrait).
///
/// # Errors
/// A portrait file that cannot be read or decoded, naming it.
pub fn portraits(dataset: &dyn StoryDataset) -> Result<Vec<Option<RgbImage>>> {
    dataset
        .characters()
        .iter()
        .map(|c| {
            c.portrait
                .as_deref()
                .map(storygpt_eval::report::read_rgb)
                .transpose()
        })
        .collect()
}

/// The Char-LDM stage.
pub struct CharLdmStage<B: AutodiffBackend> {
    frozen: Frozen<B::InnerBackend>,
    frames: Stage1Frames,
    batcher: Stage1Batcher,
    sampler: EpochSampler,
    /// Cached posteriors of every training frame's latent.
    latents: LatentCache,
    alphas: Vec<f64>,
    loss: CharLdmLossConfig,
    layers: Vec<String>,
    batch_size: usize,
    crop_size: u32,
    val: ValidationSet<B::InnerBackend>,
    device: B::Device,
}

/// What validation samples and judges.
pub struct ValidationSet<B: Backend> {
    /// The dataset.
    pub dataset: Arc<dyn StoryDataset>,
    /// Frame ids (captions with names).
    pub ids: Vec<String>,
    /// Portraits of the cast.
    pub portraits: Vec<Option<RgbImage>>,
    /// Character judge.
    pub char_judge: Option<storygpt_eval::classifier::LoadedClassifier<B>>,
    /// Background judge.
    pub bg_judge: Option<storygpt_eval::classifier::LoadedClassifier<B>>,
    /// Sampling settings.
    pub sample: SampleConfig,
}

/// Char-Acc / BG-Acc (and F1) of generated frames for dataset frames `ids`.
pub fn judge_frames<B: Backend>(
    val: &ValidationSet<B>,
    ids: &[String],
    frames: &[RgbImage],
    device: &Device<B>,
    metrics: &mut Metrics,
) -> Result<()> {
    use storygpt_eval::metrics::MultiLabelCounts;
    for (name, chars) in [("char", true), ("bg", false)] {
        let Some((preds, truth)) = judged_labels(val, ids, frames, chars, device)? else {
            continue;
        };
        let mut c = MultiLabelCounts::default();
        c.add(&preds, &truth)?;
        let s = c.scores();
        metrics.insert(format!("{name}_acc"), s.accuracy);
        metrics.insert(format!("{name}_f1"), s.f1);
    }
    Ok(())
}

/// `(predictions, ground truth)`, one multi-hot vector per frame.
pub type JudgedLabels = (Vec<Vec<bool>>, Vec<Vec<bool>>);

/// The character (`chars`) or background judge's predictions for generated `frames` and the
/// ground truth of dataset frames `ids`, as multi-hot vectors; `None` without that judge.
pub fn judged_labels<B: Backend>(
    val: &ValidationSet<B>,
    ids: &[String],
    frames: &[RgbImage],
    chars: bool,
    device: &Device<B>,
) -> Result<Option<JudgedLabels>> {
    let judge = if chars {
        &val.char_judge
    } else {
        &val.bg_judge
    };
    let Some(j) = judge else { return Ok(None) };
    let l = j.meta.labels.len();
    let preds = storygpt_eval::metrics::predict(&j.model.logits(frames, device)?, l);
    let truth = ids
        .iter()
        .map(|id| {
            let a = val.dataset.annotation(id)?;
            let v = if chars {
                a.character_labels(l)
            } else {
                a.background_labels(l)
            };
            Ok(v.iter().map(|&x| x > 0.5).collect())
        })
        .collect::<Result<Vec<Vec<bool>>>>()?;
    Ok(Some((preds, truth)))
}

impl<B: AutodiffBackend> CharLdmStage<B> {
    fn make_batch(&mut self, rng: &mut ChaCha8Rng) -> Result<Stage1Batch<B>> {
        let epoch = self.sampler.epoch;
        let idx = self.sampler.next(self.batch_size);
        // the sampler may have rolled into a new epoch mid-batch; items keep their own epoch
        let _ = epoch;
        self.frames.set_epoch(self.sampler.epoch);
        let items = idx
            .iter()
            .map(|&i| {
                let mut it = self.frames.load(i)?;
                it.seed = rng.random();
                Ok(it)
            })
            .collect::<Vec<Result<_>>>();
        self.batcher.batch(items, &self.device)
    }

    /// One forward of the training objective on a batch: `(loss, denoise, reg)`, and the
    /// attention capture.
    fn objective(
        &self,
        model: &CharLdm<B>,
        batch: &Stage1Batch<B>,
        rng: &mut ChaCha8Rng,
    ) -> Result<ObjectiveParts<B>> {
        let z = self.latents.sample(&batch.ids, rng, &self.device)?;
        let (noisy, eps, t) = add_training_noise(z, &self.alphas, rng, &self.device);
        let text =
            Tensor::<B, 3>::from_inner(self.frozen.encode_text(batch.input_ids.clone().inner()));
        let valid_b = batch.image_token_idx_mask.clone();
        let cond = model.condition(
            text,
            batch.image_token_idx.clone(),
            valid_b,
            batch.object_pixel_values.clone(),
        );
        let mut capture = AttentionCapture::new(if self.loss.reg_weight > 0.0 {
            self.layers.clone()
        } else {
            Vec::new()
        });
        let pred = model
            .unet
            .forward_with_capture(noisy, t, cond, &mut capture);
        let (pred, target) =
            if self.loss.mask_loss_prob > 0.0 && rng.random_bool(self.loss.mask_loss_prob) {
                let union = batch
                    .object_masks
                    .clone()
                    .sum_dim(1)
                    .greater_elem(0.0)
                    .float(); // [n, 1, r, r]
                (pred * union.clone(), eps * union)
            } else {
                (pred, eps)
            };
        let denoise = (pred - target).powf_scalar(2.0).mean();
        let reg = if self.loss.reg_weight > 0.0 && !capture.probs.is_empty() {
            let valid = batch.image_token_idx_mask.clone().float();
            let mut total: Option<Tensor<B, 1>> = None;
            for probs in capture.probs.values() {
                let l = reg_loss_layer(
                    probs.clone(),
                    batch.object_masks.clone(),
                    batch.image_token_idx.clone(),
                    valid.clone(),
                );
                total = Some(match total {
                    Some(t) => t + l,
                    None => l,
                });
            }
            total.map(|t| t / capture.probs.len() as f64)
        } else {
            None
        };
        let loss = match &reg {
            Some(r) => denoise.clone() + r.clone() * self.loss.reg_weight,
            None => denoise.clone(),
        };
        Ok((loss, denoise, reg, capture))
    }
}

impl<B: AutodiffBackend> Stage<B> for CharLdmStage<B> {
    type Model = CharLdm<B>;

    fn name(&self) -> &str {
        "char-ldm"
    }

    fn loss(
        &mut self,
        model: &CharLdm<B>,
        rng: &mut ChaCha8Rng,
    ) -> Result<(Tensor<B, 1>, Metrics)> {
        let batch = self.make_batch(rng)?;
        let (loss, denoise, reg, _) = self.objective(model, &batch, rng)?;
        let mut m = Metrics::new();
        m.insert("denoise".into(), denoise.into_scalar().elem());
        if let Some(r) = reg {
            m.insert("reg".into(), r.into_scalar().elem());
        }
        let _ = batch
            .modes
            .iter()
            .filter(|m| **m == Stage1Mode::Fused)
            .count();
        Ok((loss, m))
    }

    fn validate(
        &mut self,
        model: &CharLdm<B::InnerBackend>,
        step: usize,
        run: &Path,
    ) -> Result<Metrics> {
        validate(
            model,
            &self.frozen,
            &self.val,
            self.latents.shape(),
            self.crop_size,
            step,
            run,
            &self.device,
            &self.layers,
            &self.batcher,
        )
    }

    fn data_state(&self) -> serde_json::Value {
        self.sampler.state()
    }

    fn restore_data_state(&mut self, state: &serde_json::Value) -> Result<()> {
        self.sampler.restore(state)
    }
}

/// Validation (see the module docs): samples, judges, attention mass inside the masks,
/// sample and overlay PNGs.
#[allow(clippy::too_many_arguments)]
pub fn validate<B: Backend>(
    model: &CharLdm<B>,
    frozen: &Frozen<B>,
    val: &ValidationSet<B>,
    latent: [usize; 3],
    crop_size: u32,
    step: usize,
    run: &Path,
    device: &Device<B>,
    layers: &[String],
    batcher: &Stage1Batcher,
) -> Result<Metrics> {
    let mut metrics = Metrics::new();
    let prompts = val
        .ids
        .iter()
        .map(|id| frame_prompt(val.dataset.as_ref(), id, &val.portraits))
        .collect::<Result<Vec<_>>>()?;
    let mut frames = Vec::with_capacity(prompts.len());
    for (k, chunk) in prompts.chunks(16).enumerate() {
        frames.extend(sample(
            model,
            frozen,
            chunk,
            &val.sample,
            latent,
            crop_size,
            1000 + k as u64,
            device,
        )?);
    }
    judge_frames(val, &val.ids, &frames, device, &mut metrics)?;
    // a sheet of the first samples with their captions
    let tiles: Vec<(RgbImage, String)> = frames
        .iter()
        .zip(&prompts)
        .take(16)
        .map(|(f, p)| (super::data::resize(f, 96), p.caption.clone()))
        .collect();
    storygpt_data::draw::save_png(
        &run.join(format!("samples-{step:06}.png")),
        &storygpt_data::draw::contact_sheet(&tiles, 8, 3, 4),
    )?;
    // attention mass inside the masks at t = 500, on fused ground-truth frames
    if let Some((mass, overlay)) =
        attention_probe(model, frozen, val, latent, layers, batcher, device)?
    {
        metrics.insert("attn_in_mask".into(), mass);
        storygpt_data::draw::save_png(&run.join(format!("attention-{step:06}.png")), &overlay)?;
    }
    Ok(metrics)
}

/// Runs the UNet at t = 500 on validation frames (fused conditioning, every character kept)
/// and returns the attention mass inside the masks and an overlay sheet (frame, then each
/// character token's attention map, upsampled, in red over the frame).
fn attention_probe<B: Backend>(
    model: &CharLdm<B>,
    frozen: &Frozen<B>,
    val: &ValidationSet<B>,
    latent: [usize; 3],
    layers: &[String],
    batcher: &Stage1Batcher,
    device: &Device<B>,
) -> Result<Option<(f64, RgbImage)>> {
    use burn::data::dataloader::batcher::Batcher as _;
    let mut cfg = batcher.config().clone();
    cfg.uncond_prob = 0.0;
    cfg.text_only_prob = 0.0;
    cfg.flip_crops = false;
    let probe_batcher = Stage1Batcher::new(frozen_tokenizer_arc(frozen), cfg)?;
    let frames = Stage1Frames::new(val.dataset.clone(), Split::Val, 1, 7)?;
    let n = frames.len().min(16);
    if n == 0 {
        return Ok(None);
    }
    let items = (0..n).map(|i| frames.load(i)).collect::<Vec<_>>();
    let batch: Stage1Batch<B> = probe_batcher.batch(items, device)?;
    let enc = frozen.vae.encode(batch.pixel_values.clone()).mode() * frozen.scaling_factor;
    let [_, c, h, w] = enc.dims();
    debug_assert_eq!([c, h, w], latent);
    let a = alphas_cumprod()[500];
    let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(11);
    let eps = normal::<B, 4>(&mut rng, enc.dims(), device);
    let noisy = enc * a.sqrt() + eps * (1.0 - a).sqrt();
    let text = frozen.encode_text(batch.input_ids.clone());
    let cond = model.condition(
        text,
        batch.image_token_idx.clone(),
        batch.image_token_idx_mask.clone(),
        batch.object_pixel_values.clone(),
    );
    let mut capture = AttentionCapture::new(layers.to_vec());
    let _ = model.unet.forward_with_capture(
        noisy,
        Tensor::from_floats(vec![500.0f32; n].as_slice(), device),
        cond,
        &mut capture,
    );
    let m = batch.image_token_idx.dims()[1];
    let valid: Vec<Vec<bool>> = (0..n)
        .map(|b| (0..m).map(|j| j < batch.num_objects[b]).collect())
        .collect();
    let Some(mass) = attention_mass_in_masks(
        &capture,
        batch.object_masks.clone(),
        batch.image_token_idx.clone(),
        &valid,
    ) else {
        return Ok(None);
    };
    // overlay: average the hooked layers' maps (each resized to the latent grid)
    let overlay = overlay_sheet(&capture, &batch, latent[1], n.min(6))?;
    Ok(Some((mass, overlay)))
}

fn frozen_tokenizer_arc<B: Backend>(
    frozen: &Frozen<B>,
) -> Arc<dyn storygpt_core::CaptionTokenizer> {
    Arc::new(frozen.tokenizer.clone())
}

/// Frame | each character token's attention (red) for the first `rows` samples.
fn overlay_sheet<B: Backend>(
    capture: &AttentionCapture<B>,
    batch: &Stage1Batch<B>,
    grid: usize,
    rows: usize,
) -> Result<RgbImage> {
    let [_, _, res, _] = batch.pixel_values.dims();
    let m = batch.image_token_idx.dims()[1];
    let mut maps: Option<Tensor<B, 4>> = None; // [b, m, grid, grid]
    for probs in capture.probs.values() {
        let [b, heads, hw, _] = probs.dims();
        let s = (hw as f64).sqrt().round() as usize;
        let idx = batch
            .image_token_idx
            .clone()
            .reshape([b, 1, 1, m])
            .expand([b, heads, hw, m]);
        let a = probs
            .clone()
            .gather(3, idx)
            .mean_dim(1)
            .reshape([b, s, s, m])
            .permute([0, 3, 1, 2]);
        let a = if s == grid {
            a
        } else {
            burn::tensor::module::interpolate(
                a,
                [grid, grid],
                burn::tensor::ops::InterpolateOptions::new(
                    burn::tensor::ops::InterpolateMode::Bilinear,
                ),
            )
        };
        maps = Some(match maps {
            Some(x) => x + a,
            None => a,
        });
    }
    let Some(maps) = maps else {
        return Err(Error::InvalidInput("no attention captured".into()));
    };
    let frames = super::data::tensor_to_images(batch.pixel_values.clone());
    let mv: Vec<f32> = maps
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap_or_default();
    let mut tiles = Vec::new();
    let cols = 1 + m;
    for b in 0..rows {
        tiles.push((super::data::resize(&frames[b], 96), batch.ids[b].clone()));
        for j in 0..m {
            if j >= batch.num_objects[b] {
                tiles.push((
                    RgbImage::from_pixel(96, 96, image::Rgb([255, 255, 255])),
                    String::new(),
                ));
                continue;
            }
            let map = &mv[(b * m + j) * grid * grid..(b * m + j + 1) * grid * grid];
            let max = map.iter().cloned().fold(1e-12f32, f32::max);
            let f = &frames[b];
            let img = RgbImage::from_fn(res as u32, res as u32, |x, y| {
                let gx = (x as usize * grid / res).min(grid - 1);
                let gy = (y as usize * grid / res).min(grid - 1);
                let v = map[gy * grid + gx] / max;
                let p = f.get_pixel(x, y).0;
                let mix = |c: u8, t: f32| ((1.0 - 0.6 * v) * f32::from(c) + 0.6 * v * t) as u8;
                image::Rgb([mix(p[0] / 2, 255.0), mix(p[1] / 2, 0.0), mix(p[2] / 2, 0.0)])
            });
            tiles.push((super::data::resize(&img, 96), format!("token {j}")));
        }
    }
    Ok(storygpt_data::draw::contact_sheet(&tiles, cols, 1, 4))
}

/// Where the frozen parts come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Components {
    /// A diffusers VAE folder (stage 0's `RUN/model`, or SD's `vae/`).
    pub vae: PathBuf,
    /// A `CLIPModel` folder with its tokenizer (stage 0's, or a real one): the text encoder is
    /// frozen, the vision tower is the character image encoder.
    pub clip: PathBuf,
    /// A Char-LDM folder (a finished run's `RUN/model`) whose UNet, FuseModule and image
    /// encoder start this run instead of a fresh UNet and FuseModule: fine-tuning, or
    /// continuing a finished run under another schedule. Its `unet/config.json` must agree with
    /// every key of `[model]`, and it must have been trained on this `clip`'s text encoder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
    /// A Char-LDM folder whose FuseModule and image encoder start this run under a *fresh*
    /// UNet built from `[model]`: a new (e.g. wider) denoiser on a finished run's
    /// conditioning. With the FuseModule and the image encoder frozen
    /// (`loss.train_postfuse_module = false`, `loss.image_encoder_trainable_layers = 0`) every
    /// caption's fused conditioning stays that folder's, so a stage-2 head trained on it stays
    /// aligned. Excludes `init_from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_path_from: Option<PathBuf>,
}

/// Judges for validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Judges {
    /// Character judge folder.
    #[serde(default)]
    pub char: Option<PathBuf>,
    /// Background judge folder.
    #[serde(default)]
    pub bg: Option<PathBuf>,
}

/// A Char-LDM run config (TOML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CharLdmRunConfig {
    /// Frames (`val_frames` are sampled at each validation).
    pub data: super::vae::DataConfig,
    /// Frozen VAE and CLIP.
    pub components: Components,
    /// The UNet, as diffusers' `config.json` (`cross_attention_dim` is set to the text
    /// encoder's width).
    pub model: serde_json::Value,
    /// The loop.
    pub train: super::TrainConfig,
    /// Loss and mixture.
    #[serde(default)]
    pub loss: CharLdmLossConfig,
    /// Validation sampling.
    #[serde(default)]
    pub sample: SampleConfig,
    /// Validation judges.
    #[serde(default)]
    pub judges: Judges,
}

/// What trained, in a model card's words, from the run's `[loss]`.
fn card_description(loss: &CharLdmLossConfig) -> String {
    let mut trained = vec!["UNet".to_string()];
    if loss.train_postfuse_module {
        trained.push("FuseModule".into());
    }
    match loss.image_encoder_trainable_layers {
        0 => {}
        1 => trained.push("the last CLIP vision layer".into()),
        n => trained.push(format!("the last {n} CLIP vision layers")),
    }
    let mut frozen = vec!["VAE", "text encoder"];
    if !loss.train_postfuse_module {
        frozen.push("FuseModule");
    }
    if loss.image_encoder_trainable_layers == 0 {
        frozen.push("image encoder");
    }
    let mut losses = vec!["the denoising loss".to_string()];
    if loss.mask_loss_prob > 0.0 {
        losses.push(format!(
            "the mask loss on {:.0} % of the steps",
            loss.mask_loss_prob * 100.0
        ));
    }
    if loss.reg_weight > 0.0 {
        losses.push(format!(
            "the cross-attention control loss L_reg (weight {}, {} blocks)",
            loss.reg_weight, loss.reg_layers
        ));
    }
    let mut d = format!(
        "StoryGPT-V's character-augmented latent diffusion model: {} trained with {}; {} frozen.",
        trained.join(" + "),
        losses.join(", "),
        frozen.join(", ")
    );
    if !loss.repeat_by_characters.is_empty() {
        d.push_str(&format!(
            " Training frames drawn per epoch by their character count: {:?} (index = characters).",
            loss.repeat_by_characters
        ));
    }
    d
}

/// The training-frame sampler: each frame once per epoch, or as often as `repeats` says for
/// its number of characters.
fn frame_sampler(
    dataset: &dyn StoryDataset,
    ids: &[String],
    repeats: &[usize],
    seed: u64,
) -> Result<EpochSampler> {
    if repeats.is_empty() {
        return Ok(EpochSampler::new(ids.len(), seed));
    }
    let per_frame = ids
        .iter()
        .map(|id| {
            let k = dataset.annotation(id)?.characters.len();
            Ok(repeats[k.min(repeats.len() - 1)])
        })
        .collect::<Result<Vec<usize>>>()?;
    if per_frame.iter().all(|&r| r == 0) {
        return Err(Error::InvalidConfig {
            path: None,
            message: format!(
                "[loss] repeat_by_characters = {repeats:?} draws none of the {} training frames",
                ids.len()
            ),
        });
    }
    Ok(EpochSampler::weighted(per_frame, seed))
}

/// What a Char-LDM run reports.
#[derive(Debug, Clone, Serialize)]
pub struct CharLdmReport {
    /// Steps done.
    pub steps: usize,
    /// All done (model exported).
    pub finished: bool,
    /// Last validation.
    pub metrics: Metrics,
    /// Training seconds.
    pub seconds: f64,
}

/// Trains (or resumes) Char-LDM; on completion writes `RUN/model/`, a self-contained Char-LDM
/// folder ([`load_char_ldm`]).
pub fn train_char_ldm<B: AutodiffBackend>(
    cfg: &CharLdmRunConfig,
    opts: &super::RunOptions,
    device: &B::Device,
) -> Result<CharLdmReport> {
    let config_toml = super::config::to_toml(cfg)?;
    let inner_dev: &Device<B::InnerBackend> = device;
    let frozen =
        Frozen::<B::InnerBackend>::load(&cfg.components.clip, &cfg.components.vae, inner_dev)?;
    let f = frozen.vae.downsample_factor();
    let res = cfg.data.resolution;
    B::seed(device, cfg.train.seed);
    let d = frozen.text_encoder.text_model.final_layer_norm.gamma.dims()[0];
    let (model, unet_json) = init_char_ldm::<B>(cfg, d, f, device)?;
    let model = CharLdm {
        image_encoder: model
            .image_encoder
            .train_only_last_layers(cfg.loss.image_encoder_trainable_layers),
        postfuse_module: if cfg.loss.train_postfuse_module {
            model.postfuse_module
        } else {
            model.postfuse_module.no_grad()
        },
        ..model
    };
    let crop_size =
        storygpt_models::clip::ClipVisionConfig::from_dir(&cfg.components.clip)?.image_size as u32;
    let layers = reg_layers(&model.unet, cfg.loss.reg_layers);
    let dataset: Arc<dyn StoryDataset> = Arc::from(storygpt_data::open_dataset(&cfg.data.dataset)?);
    let frames = Stage1Frames::new(dataset.clone(), Split::Train, 1, cfg.train.seed)?;
    let n_frames = cfg
        .data
        .train_frames
        .map_or(frames.len(), |l| l.min(frames.len()));
    let sampler = frame_sampler(
        dataset.as_ref(),
        &frames.ids()[..n_frames],
        &cfg.loss.repeat_by_characters,
        cfg.train.seed,
    )?;
    // 1. cache the VAE posteriors of the training frames
    let mut latents = LatentCache::new(frozen.scaling_factor);
    let bar = indicatif::ProgressBar::new(n_frames as u64);
    bar.set_message("caching VAE latents");
    for start in (0..n_frames).step_by(64) {
        let end = (start + 64).min(n_frames);
        let items: Vec<_> = (start..end)
            .map(|i| frames.load(i))
            .collect::<Result<_>>()?;
        let ids: Vec<String> = items.iter().map(|it| it.id.clone()).collect();
        let images: Vec<RgbImage> = items.into_iter().map(|it| it.image).collect();
        latents.encode(&frozen.vae, &ids, &images, res, inner_dev)?;
        bar.inc((end - start) as u64);
    }
    bar.finish_and_clear();
    let batch_cfg = Stage1Config {
        resolution: res,
        latent_factor: f as u32,
        crop_size,
        max_objects: 4,
        uncond_prob: cfg.loss.uncond_prob,
        text_only_prob: cfg.loss.text_only_prob,
        flip_crops: true,
    };
    let batcher = Stage1Batcher::new(Arc::new(frozen.tokenizer.clone()), batch_cfg)?;
    let val_ids: Vec<String> = dataset
        .frame_ids(Split::Val)
        .iter()
        .filter(|id| {
            dataset
                .annotation(id)
                .is_ok_and(|a| !a.characters.is_empty())
        })
        .take(cfg.data.val_frames)
        .cloned()
        .collect();
    let load_judge = |p: &Option<PathBuf>| {
        p.as_ref()
            .map(|d| storygpt_eval::classifier::load_classifier::<B::InnerBackend>(d, inner_dev))
            .transpose()
    };
    let val = ValidationSet {
        dataset: dataset.clone(),
        ids: val_ids,
        portraits: portraits(dataset.as_ref())?,
        char_judge: load_judge(&cfg.judges.char)?,
        bg_judge: load_judge(&cfg.judges.bg)?,
        sample: cfg.sample.clone(),
    };
    let mut stage = CharLdmStage::<B> {
        frozen,
        sampler,
        frames,
        batcher,
        latents,
        alphas: alphas_cumprod(),
        loss: cfg.loss.clone(),
        layers,
        batch_size: cfg.train.batch_size,
        crop_size,
        val,
        device: device.clone(),
    };
    let out = super::run(&mut stage, model, &cfg.train, cfg, opts, device)?;
    let metrics = out
        .state
        .validations
        .last()
        .map(|v| v.metrics.clone())
        .unwrap_or_default();
    if out.finished {
        let model = out.export();
        export_char_ldm(
            &opts.run_dir.join("model"),
            &model,
            &unet_json,
            cfg,
            &config_toml,
            &out.state,
            &metrics,
        )?;
    }
    Ok(CharLdmReport {
        steps: out.state.step,
        finished: out.finished,
        metrics,
        seconds: out.state.seconds,
    })
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let p = entry.map_err(|e| Error::io(from, e))?.path();
        if p.is_file() {
            let name = p.file_name().unwrap_or_default();
            if name == "README.md" {
                continue;
            }
            std::fs::copy(&p, to.join(name)).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(())
}

/// The Char-LDM a run starts from (a fresh UNet and FuseModule with the `clip` vision tower,
/// or the `init_from` folder's trained parts) and the UNet's diffusers `config.json`, for a
/// text encoder of width `d` and a VAE that downsamples by `f`.
fn init_char_ldm<B: Backend>(
    cfg: &CharLdmRunConfig,
    d: usize,
    f: usize,
    device: &Device<B>,
) -> Result<(CharLdm<B>, serde_json::Value)> {
    let mut unet_json = cfg.model.clone();
    unet_json["cross_attention_dim"] = d.into();
    unet_json["_class_name"] = "UNet2DConditionModel".into();
    unet_json["sample_size"] = (cfg.data.resolution as usize / f).into();
    let unet_cfg: UNet2DConditionConfig = super::export::model_config(&unet_json, "model")?;
    match (&cfg.components.init_from, &cfg.components.text_path_from) {
        (Some(_), Some(_)) => {
            return Err(Error::InvalidConfig {
                path: None,
                message: "[components]: `init_from` (a whole Char-LDM) and `text_path_from` \
                          (its text path under a fresh UNet) exclude each other"
                    .into(),
            });
        }
        (Some(dir), None) => {
            return init_from_folder(dir, &unet_json, d, device).map(|m| (m, unet_json));
        }
        (None, Some(dir)) => {
            let loaded = load_text_path::<B>(dir, d, device)?;
            let unet = UNet2DConditionModel::<B>::new(&unet_cfg, device)?;
            return Ok((CharLdm { unet, ..loaded }, unet_json));
        }
        (None, None) => {}
    }
    let unet = UNet2DConditionModel::<B>::new(&unet_cfg, device)?;
    let image_encoder =
        ClipVisionModelWithProjection::<B>::from_pretrained(&cfg.components.clip, device)?;
    let proj = image_encoder.visual_projection.weight.dims()[1];
    if proj != d {
        return Err(Error::InvalidConfig {
            path: Some(cfg.components.clip.clone()),
            message: format!(
                "the CLIP image projection ({proj}) must match the text width ({d}) for the fuse module"
            ),
        });
    }
    Ok((
        CharLdm {
            unet,
            postfuse_module: FuseModule::new(d, device),
            image_encoder,
        },
        unet_json,
    ))
}

/// Loads the trained parts of the Char-LDM folder `dir` to start a run, after checking that its
/// UNet is the one `unet_json` describes and its conditioning is `d` wide.
fn init_from_folder<B: Backend>(
    dir: &Path,
    unet_json: &serde_json::Value,
    d: usize,
    device: &Device<B>,
) -> Result<CharLdm<B>> {
    let config_path = dir.join("unet").join("config.json");
    let saved: serde_json::Value = storygpt_core::config::read_json(&config_path)?;
    let numbers_equal = |a: &serde_json::Value, b: &serde_json::Value| {
        a == b || matches!((a.as_f64(), b.as_f64()), (Some(x), Some(y)) if x == y)
    };
    for (key, want) in unet_json.as_object().into_iter().flatten() {
        if key.starts_with('_') {
            continue;
        }
        let have = saved.get(key).unwrap_or(&serde_json::Value::Null);
        if !numbers_equal(have, want) {
            return Err(Error::InvalidConfig {
                path: Some(config_path),
                message: format!(
                    "`init_from`: the UNet's `{key}` is {have}, the run config's [model] says {want}"
                ),
            });
        }
    }
    let loaded = load_char_ldm::<B>(dir, device)?;
    check_fuse_width(&loaded.model, dir, "init_from", d)?;
    Ok(loaded.model)
}

/// Loads the Char-LDM folder `dir` for its text path (FuseModule and image encoder), after
/// checking that its conditioning is `d` wide; its UNet is replaced by the caller.
fn load_text_path<B: Backend>(dir: &Path, d: usize, device: &Device<B>) -> Result<CharLdm<B>> {
    let loaded = load_char_ldm::<B>(dir, device)?;
    check_fuse_width(&loaded.model, dir, "text_path_from", d)?;
    Ok(loaded.model)
}

fn check_fuse_width<B: Backend>(model: &CharLdm<B>, dir: &Path, key: &str, d: usize) -> Result<()> {
    let width = model.postfuse_module.embed_dim();
    if width != d {
        return Err(Error::InvalidConfig {
            path: Some(dir.join("postfuse_module")),
            message: format!("`{key}`: the FuseModule is {width} wide, the text encoder {d}"),
        });
    }
    Ok(())
}

/// Exports the newest checkpoint of a Char-LDM run folder (its EMA weights when the run keeps
/// an EMA) as a Char-LDM folder, without finishing the run: for a run stopped early, or to
/// look at a run in progress. The model card records the checkpoint's step and metrics.
pub fn export_char_ldm_checkpoint<B: Backend>(
    run: &Path,
    out: &Path,
    device: &Device<B>,
) -> Result<usize> {
    let ckpt = super::checkpoint::latest(run)?
        .ok_or_else(|| Error::InvalidInput(format!("{} holds no checkpoint", run.display())))?;
    let state = super::checkpoint::read_state(&ckpt)?;
    let cfg: CharLdmRunConfig =
        toml::from_str(&state.config).map_err(|e| Error::InvalidConfig {
            path: Some(ckpt.join("state.json")),
            message: format!("the run config in the checkpoint: {e}"),
        })?;
    let frozen = Frozen::<B>::load(&cfg.components.clip, &cfg.components.vae, device)?;
    let d = frozen.text_encoder.text_model.final_layer_norm.gamma.dims()[0];
    let (model, unet_json) = init_char_ldm::<B>(&cfg, d, frozen.vae.downsample_factor(), device)?;
    let weights = if ckpt.join("ema.mpk").is_file() {
        "ema.mpk"
    } else {
        "model.mpk"
    };
    let model = super::checkpoint::load_module::<B, _>(model, &ckpt.join(weights), device)?;
    let metrics = state
        .validations
        .iter()
        .rev()
        .find(|v| v.step == state.step)
        .map(|v| v.metrics.clone())
        .unwrap_or_default();
    export_char_ldm(
        out,
        &model,
        &unet_json,
        &cfg,
        &state.config,
        &state,
        &metrics,
    )?;
    Ok(state.step)
}

/// Writes the self-contained Char-LDM folder:
///
/// ```text
/// model_index.json, README.md
/// unet/            diffusers UNet2DConditionModel
/// vae/             diffusers AutoencoderKL (copied)
/// text_encoder/    the CLIPModel folder with its tokenizer (copied; its text tower is used)
/// image_encoder/   CLIPVisionModelWithProjection (the fine-tuned vision tower)
/// postfuse_module/ FuseModule (config.json: {"embed_dim": d})
/// scheduler/       DDIM scheduler_config.json
/// ```
fn export_char_ldm<B: Backend>(
    dir: &Path,
    model: &CharLdm<B>,
    unet_json: &serde_json::Value,
    cfg: &CharLdmRunConfig,
    config_toml: &str,
    state: &super::checkpoint::LoopState,
    metrics: &Metrics,
) -> Result<()> {
    use super::export::{ModelCard, Weights, write_model_folder};
    let parent = dir.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".char-ldm.partial-")
        .tempdir_in(parent)
        .map_err(|e| Error::io(parent, e))?;
    let root = tmp.path();
    let card = ModelCard {
        title: "Char-LDM (stage 1)".into(),
        description: card_description(&cfg.loss),
        data: format!("{} at {}²", cfg.data.dataset.display(), cfg.data.resolution),
        steps: state.step,
        seconds: state.seconds,
        metrics: metrics
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    *v,
                    format!(
                        "{} validation frames, captions with names",
                        cfg.data.val_frames
                    ),
                )
            })
            .collect(),
        config_toml: config_toml.to_string(),
        command: "storygpt train-ldm --config CONFIG --out RUN".into(),
    };
    write_model_folder(
        &root.join("unet"),
        unet_json,
        Weights::new(
            "diffusion_pytorch_model.safetensors",
            &model.unet,
            &[(r"\.ff\.net_(\d+)\.", ".ff.net.$1.")],
        ),
        &[],
        &card,
    )?;
    let clip_cfg: serde_json::Value =
        storygpt_core::config::read_json(cfg.components.clip.join("config.json"))?;
    write_model_folder(
        &root.join("image_encoder"),
        &clip_cfg,
        Weights::new("model.safetensors", &model.image_encoder, &[]),
        &[],
        &card,
    )?;
    write_model_folder(
        &root.join("postfuse_module"),
        &serde_json::json!({"embed_dim": model.postfuse_module.embed_dim()}),
        Weights::new("model.safetensors", &model.postfuse_module, &[]),
        &[],
        &card,
    )?;
    copy_dir(&cfg.components.vae, &root.join("vae"))?;
    copy_dir(&cfg.components.clip, &root.join("text_encoder"))?;
    std::fs::create_dir_all(root.join("scheduler")).map_err(|e| Error::io(root, e))?;
    storygpt_core::fs::write_json_atomic(
        root.join("scheduler/scheduler_config.json"),
        &serde_json::json!({"_class_name": "DDIMScheduler", "num_train_timesteps": 1000,
            "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "clip_sample": false, "set_alpha_to_one": false, "steps_offset": 1,
            "prediction_type": "epsilon"}),
    )?;
    storygpt_core::fs::write_json_atomic(
        root.join("model_index.json"),
        &serde_json::json!({"_class_name": "CharLdmPipeline", "unet": "unet", "vae": "vae",
            "text_encoder": "text_encoder", "image_encoder": "image_encoder",
            "postfuse_module": "postfuse_module", "scheduler": "scheduler",
            "resolution": cfg.data.resolution, "sample": cfg.sample}),
    )?;
    storygpt_core::fs::write_atomic(root.join("README.md"), card.markdown().as_bytes())?;
    super::export::replace_dir(tmp, dir)
}

/// A loaded Char-LDM folder (see [`export_char_ldm`]'s layout).
pub struct CharLdmFolder<B: Backend> {
    /// Trained parts.
    pub model: CharLdm<B>,
    /// Frozen parts.
    pub frozen: Frozen<B>,
    /// Frame side.
    pub resolution: u32,
    /// Character-crop side (the image encoder's input).
    pub crop_size: u32,
    /// Sampling defaults.
    pub sample: SampleConfig,
}

/// A Char-LDM folder's `model_index.json`: where its components are.
pub struct CharLdmIndex {
    dir: PathBuf,
    json: serde_json::Value,
}

impl CharLdmIndex {
    /// Reads `dir/model_index.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        Ok(Self {
            dir: dir.to_path_buf(),
            json: storygpt_core::config::read_json(dir.join("model_index.json"))?,
        })
    }

    /// The folder of component `key` (`unet`, `vae`, `text_encoder`, …): a sub-folder by
    /// default; an index may point elsewhere (relative to the folder), e.g. the embedded
    /// story-world model shares `../clip` and `../vae` with stage 0.
    pub fn component(&self, key: &str) -> PathBuf {
        let p = Path::new(self.json[key].as_str().unwrap_or(key));
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    /// The training resolution (64 when the index does not say).
    pub fn resolution(&self) -> u32 {
        self.json["resolution"].as_u64().unwrap_or(64) as u32
    }
}

/// Loads a Char-LDM folder.
pub fn load_char_ldm<B: Backend>(dir: &Path, device: &Device<B>) -> Result<CharLdmFolder<B>> {
    let index = CharLdmIndex::read(dir)?;
    let component = |key: &str| index.component(key);
    let mut frozen = Frozen::load(&component("text_encoder"), &component("vae"), device)?;
    let fuse_cfg: serde_json::Value =
        storygpt_core::config::read_json(dir.join("postfuse_module/config.json"))?;
    let d = fuse_cfg["embed_dim"]
        .as_u64()
        .ok_or_else(|| Error::InvalidConfig {
            path: Some(dir.join("postfuse_module/config.json")),
            message: "missing embed_dim".into(),
        })? as usize;
    let postfuse_module = storygpt_core::weights::WeightLoader::new().load_dir(
        FuseModule::new(d, device),
        &dir.join("postfuse_module"),
        "model",
    )?;
    let image_encoder =
        ClipVisionModelWithProjection::from_pretrained(dir.join("image_encoder"), device)?;
    let crop_size = storygpt_models::clip::ClipVisionConfig::from_dir(dir.join("image_encoder"))?
        .image_size as u32;
    let sample: SampleConfig = match index.json.get("sample") {
        None | Some(serde_json::Value::Null) => SampleConfig::default(),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| Error::InvalidConfig {
            path: Some(dir.join("model_index.json")),
            message: format!("`sample`: {e}"),
        })?,
    };
    let scheduler_dir = component("scheduler");
    if scheduler_dir
        .join(storygpt_models::schedulers::CONFIG_FILE)
        .is_file()
    {
        frozen.scheduler_dir = Some(scheduler_dir);
    }
    Ok(CharLdmFolder {
        model: CharLdm {
            unet: UNet2DConditionModel::from_pretrained(dir.join("unet"), device)?,
            postfuse_module,
            image_encoder,
        },
        frozen,
        resolution: index.resolution(),
        crop_size,
        sample,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_repeated_by_their_character_count() {
        let (_tmp, world) = crate::test_support::tiny_world(6, 32);
        let ids = world.frame_ids(Split::Train).to_vec();
        let chars = |id: &String| world.annotation(id).unwrap().characters.len();
        let plain = frame_sampler(world.as_ref(), &ids, &[], 0).unwrap();
        assert_eq!(plain.epoch_len(), ids.len());
        let repeats = [1, 1, 2, 3];
        let mut w = frame_sampler(world.as_ref(), &ids, &repeats, 0).unwrap();
        let expected: usize = ids.iter().map(|id| repeats[chars(id).min(3)]).sum();
        assert!(expected > ids.len(), "the world has multi-character frames");
        assert_eq!(w.epoch_len(), expected);
        let epoch = w.next(expected);
        for (i, id) in ids.iter().enumerate() {
            let drawn = epoch.iter().filter(|&&x| x == i).count();
            assert_eq!(drawn, repeats[chars(id).min(3)], "{id}");
        }
        let err = frame_sampler(world.as_ref(), &ids, &[0], 0).unwrap_err();
        assert!(err.to_string().contains("repeat_by_characters"), "{err}");
    }

    #[test]
    fn the_model_card_says_what_trained_and_with_which_losses() {
        let d = card_description(&CharLdmLossConfig::default());
        assert_eq!(
            d,
            "StoryGPT-V's character-augmented latent diffusion model: UNet + FuseModule + the last \
             2 CLIP vision layers trained with the denoising loss, the mask loss on 30 % of the \
             steps, the cross-attention control loss L_reg (weight 0.001, 5 blocks); VAE, text \
             encoder frozen."
        );
        let d = card_description(&CharLdmLossConfig {
            reg_weight: 0.0,
            mask_loss_prob: 0.5,
            image_encoder_trainable_layers: 0,
            train_postfuse_module: false,
            repeat_by_characters: vec![1, 1, 2, 3],
            ..CharLdmLossConfig::default()
        });
        assert!(
            d.contains(": UNet trained with the denoising loss, the mask loss on 50 %"),
            "{d}"
        );
        assert!(
            d.contains("VAE, text encoder, FuseModule, image encoder frozen"),
            "{d}"
        );
        assert!(d.contains("[1, 1, 2, 3]"), "{d}");
    }
}
