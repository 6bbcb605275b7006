//! Stage 2, LLM alignment (StoryGPT-V `train_llm.py` / `train_llm_v2.py`, `gill/`): a frozen
//! LLM reads the story so far, interleaved, and learns to emit `R` `[IMG]` tokens whose hidden
//! states the GILL mapper turns into Char-LDM conditioning.
//!
//! ```text
//! <BOS> Image: <img>[4 visual tokens of frame 0]</img> Caption: {caption 0, with pronouns}
//!       … Caption: {caption t, with pronouns} Image: [IMG0]…[IMG7]
//! ```
//!
//! (`storygpt_data::batch::stage2` builds the sequence; 1–3 history frames, max 160 tokens.)
//! The loss is `ce_weight · CE(text + [IMG0]) + align_weight · L2`, where L2 is the mean over
//! the `l` conditioning tokens of `‖ĉ − c‖₂` (the original v1 loss, `gill/losses.py`: a norm, not
//! squared) and `c` is the Char-LDM fused embedding of caption `t` **with names** (made by
//! `storygpt prepare-embeddings`). So the LLM has to resolve "he" to hit a target that holds
//! Fred's portrait features.
//!
//! What trains: `visual_embeddings` (CLIP `pooler_output` → 4 tokens), the mapper, and the `[IMG]`
//! rows of the LLM's input embedding table. The rest of the LLM is frozen (`no_grad`); the
//! gradient of the table's old rows is zeroed before clipping and, after each step, the old
//! rows are restored exactly (AdamW's decoupled weight decay would otherwise shrink them, as it
//! does in the original) and the `[IMG]` rows are rescaled to the mean norm of the old rows
//! (`train_llm_v2.py:625-630`). The CLIP vision tower is frozen, so each frame's features are
//! computed once at the start.
//!
//! Optionally (`[loss] diffusion_weight > 0`), the original v2's objective joins them: the
//! target frame's VAE latent is noised at `t ~ U[0, 1000)` and the **frozen** Char-LDM UNet
//! (`[components] ldm`), conditioned on the mapped `ĉ`, must predict the noise; its MSE flows
//! back through the UNet into the mapper, the `[IMG]` rows and the visual projection. Unlike the
//! original v2 (`train_llm_v2.py:580`, pixels 0..255), the frame enters the VAE in `[-1, 1]`,
//! and the L2 term stays in the objective unless `align_weight = 0`. The VAE posteriors of all
//! frames are cached once at the start ([`super::latents`]).
//!
//! `[components] init_from` starts from a trained head folder (sizes must match) instead of
//! random weights: a run can continue an exported head under another objective.
//!
//! Validation: the mean L2 and CE over every (story, target ≥ 1) of the validation split, and
//! with the diffusion loss on, its mean over the same targets under noise drawn from a fixed seed
//! (the same draws at every validation, so checkpoints are compared on equal terms). The head
//! with the best validation objective (`align_weight · L2`, plus `diffusion_weight · diffusion`
//! when on) is exported to `RUN/best/` (and becomes `RUN/model/` at the end), as the original
//! keeps the best checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::{AutodiffModule, Module, Param};
use burn::nn::Linear;
use burn::optim::GradientsParams;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Device, ElementConversion, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use storygpt_core::traits::{
    Autoencoder, ImageEncoder, LlmBackbone, mask_frozen_rows, rescale_new_rows,
};
use storygpt_core::{Error, Result};
use storygpt_data::batch::{IGNORE_INDEX, Stage2Batcher, Stage2Config};
use storygpt_data::{Split, StoryDataset};
use storygpt_models::auto_lm::AutoCausalLm;
use storygpt_models::autoencoder_kl::AutoencoderKL;
use storygpt_models::causal_lm::replace_param;
use storygpt_models::clip::ClipVisionModel;
use storygpt_models::gill_mapper::{GillMapper, GillMapperConfig};
use storygpt_models::llm_tokenizer::LlmTokenizer;
use storygpt_models::story_head::{StoryHead, StoryHeadConfig};
use storygpt_models::unet_2d_condition::UNet2DConditionModel;

use super::clip::{CLIP_MEAN, CLIP_STD};
use super::data::EpochSampler;
use super::embeddings::FusedEmbeddings;
use super::latents::{LatentCache, add_training_noise};
use super::{Metrics, Stage};

/// What stage 2 optimizes: the LLM (frozen but for its `[IMG]` rows), the visual projection and
/// the mapper.
#[derive(Module, Debug)]
pub struct Stage2Model<B: Backend> {
    /// The LLM, its vocabulary grown by the `[IMG]` tokens.
    pub lm: AutoCausalLm<B>,
    /// CLIP `pooler_output` → `m` LLM tokens.
    pub visual_embeddings: Linear<B>,
    /// `[IMG]` states → conditioning.
    pub gill_mapper: GillMapper<B>,
}

impl<B: Backend> Stage2Model<B> {
    /// The head to export: `visual_embeddings`, the `[IMG]` rows, the mapper.
    pub fn head(&self, base_vocab: usize) -> StoryHead<B> {
        let table = self.lm.input_embeddings().val();
        let [v, d] = table.dims();
        StoryHead {
            visual_embeddings: self.visual_embeddings.clone(),
            img_embeddings: Param::from_tensor(table.slice([base_vocab..v, 0..d])),
            gill_mapper: self.gill_mapper.clone(),
        }
    }
}

/// The loss weights and what the LLM reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage2LossConfig {
    /// Weight of the LM cross-entropy (0.5).
    #[serde(default = "half")]
    pub ce_weight: f64,
    /// Weight of the L2 alignment (1.0).
    #[serde(default = "one")]
    pub align_weight: f64,
    /// Weight of the diffusion loss through the frozen Char-LDM UNet of `[components] ldm`
    /// (the original v2's objective, with the frame normalised); 0 leaves it out (the default,
    /// the original v1 and the paper).
    #[serde(default)]
    pub diffusion_weight: f64,
}

fn half() -> f64 {
    0.5
}
fn one() -> f64 {
    1.0
}

impl Default for Stage2LossConfig {
    fn default() -> Self {
        Self {
            ce_weight: 0.5,
            align_weight: 1.0,
            diffusion_weight: 0.0,
        }
    }
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage2Data {
    /// The dataset folder.
    pub dataset: PathBuf,
    /// The `prepare-embeddings` output for it.
    pub embeddings: PathBuf,
}

/// `[components]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage2Components {
    /// The frozen LLM folder (OPT or Llama, transformers layout, with its tokenizer).
    pub llm: PathBuf,
    /// The CLIP folder whose vision tower encodes history frames.
    pub visual_encoder: PathBuf,
    /// The Char-LDM folder the embeddings came from (recorded in the export); its UNet and
    /// VAE serve the diffusion loss when `[loss] diffusion_weight > 0`.
    #[serde(default)]
    pub ldm: Option<PathBuf>,
    /// A stage-2 head folder to start from instead of random weights (its sizes, `[IMG]`
    /// tokens and LLM vocabulary must be this run's).
    #[serde(default)]
    pub init_from: Option<PathBuf>,
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage2ModelConfig {
    /// `m`, visual tokens per frame (4).
    #[serde(default = "four")]
    pub n_visual_tokens: usize,
    /// `R`, `[IMG]` tokens (8).
    #[serde(default = "eight")]
    pub num_img_tokens: usize,
    /// Longest sequence (160).
    #[serde(default = "len160")]
    pub max_len: usize,
    /// Also train frame 1 as a target, with no history (`Caption: … Image: [IMG…]`), so
    /// inference can draw frame 1 through the LLM too. The original never does (targets are
    /// frames 2–4), and bypasses the LLM for frame 1 at inference.
    #[serde(default)]
    pub first_frame_targets: bool,
    /// Mapper sizes; `in_dim`, `out_dim`, `num_input_tokens` and `num_output_tokens` are filled
    /// in from the LLM and the embeddings. Defaults are the original's (512, 4 heads, 4 + 4
    /// layers, FF 2048).
    #[serde(default)]
    pub mapper: MapperSizes,
}

fn four() -> usize {
    4
}
fn eight() -> usize {
    8
}
fn len160() -> usize {
    160
}

/// The mapper's Transformer sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapperSizes {
    /// Width (512).
    pub d_model: usize,
    /// Heads (4).
    pub nhead: usize,
    /// Encoder layers (4).
    pub num_encoder_layers: usize,
    /// Decoder layers (4).
    pub num_decoder_layers: usize,
    /// Feed-forward width (2048).
    pub dim_feedforward: usize,
}

impl Default for MapperSizes {
    fn default() -> Self {
        Self {
            d_model: 512,
            nhead: 4,
            num_encoder_layers: 4,
            num_decoder_layers: 4,
            dim_feedforward: 2048,
        }
    }
}

/// A stage-2 run config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage2RunConfig {
    /// Data.
    pub data: Stage2Data,
    /// Frozen inputs.
    pub components: Stage2Components,
    /// Sizes.
    #[serde(default = "default_model")]
    pub model: Stage2ModelConfig,
    /// Loss weights.
    #[serde(default)]
    pub loss: Stage2LossConfig,
    /// The loop.
    pub train: super::TrainConfig,
}

fn default_model() -> Stage2ModelConfig {
    Stage2ModelConfig {
        n_visual_tokens: 4,
        num_img_tokens: 8,
        max_len: 160,
        first_frame_targets: false,
        mapper: MapperSizes::default(),
    }
}

/// The `[IMG]` token strings.
pub fn img_token_names(r: usize) -> Vec<String> {
    (0..r).map(|i| format!("[IMG{i}]")).collect()
}

/// A story of the dataset with its referential captions.
#[derive(Debug, Clone)]
pub struct StoryItem {
    /// Frame ids.
    pub ids: Vec<String>,
    /// Captions with pronouns.
    pub captions: Vec<String>,
}

/// The stories of a split with at least two frames, with their referential captions.
pub fn story_items(dataset: &dyn StoryDataset, split: Split) -> Result<Vec<StoryItem>> {
    dataset
        .stories(split)
        .iter()
        .filter(|s| s.len() >= 2)
        .map(|story| {
            let images = vec![0; story.len()];
            Ok(StoryItem {
                ids: story.clone(),
                captions: dataset
                    .referential_captions(story, &images)?
                    .into_iter()
                    .map(|c| c.text)
                    .collect(),
            })
        })
        .collect()
}

/// CLIP `pooler_output` of every frame of `ids` (frame 0 of each), `[visual_dim]` each.
pub fn frame_features<B: Backend>(
    vision: &ClipVisionModel<B>,
    dataset: &dyn StoryDataset,
    ids: &[String],
    device: &Device<B>,
) -> Result<HashMap<String, Vec<f32>>> {
    let size = ImageEncoder::image_size(vision);
    let mut out = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(64) {
        let mut px = Vec::with_capacity(chunk.len() * 3 * size * size);
        for id in chunk {
            let img = dataset.load_image(id, 0)?.image;
            px.extend(clip_pixels(&img, size));
        }
        let x =
            Tensor::<B, 4>::from_data(TensorData::new(px, [chunk.len(), 3, size, size]), device);
        let pooled = vision.forward(x).pooler_output;
        let d = pooled.dims()[1];
        let v: Vec<f32> = pooled
            .into_data()
            .convert::<f32>()
            .into_vec()
            .map_err(|e| Error::InvalidInput(format!("CLIP features: {e:?}")))?;
        for (k, id) in chunk.iter().enumerate() {
            out.insert(id.clone(), v[k * d..(k + 1) * d].to_vec());
        }
    }
    Ok(out)
}

/// A frame as CLIP input: resized to `size`², `[3, size, size]`, CLIP-normalised.
pub fn clip_pixels(img: &image::RgbImage, size: usize) -> Vec<f32> {
    let s = size as u32;
    let img = if img.dimensions() == (s, s) {
        img.clone()
    } else {
        image::imageops::resize(img, s, s, image::imageops::FilterType::Triangle)
    };
    let raw = img.as_raw();
    let mut out = Vec::with_capacity(3 * size * size);
    for c in 0..3 {
        out.extend(
            (0..size * size)
                .map(|i| (f32::from(raw[3 * i + c]) / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c]),
        );
    }
    out
}

/// One assembled batch (host side) of [`Stage2Stage`].
struct HostBatch {
    ids: Vec<i64>,
    mask: Vec<i64>,
    /// Next-token targets (`labels` shifted left), [`IGNORE_INDEX`] where not supervised.
    next: Vec<i64>,
    /// Row of the flattened `[B·L + H·m]` table for each position.
    gather: Vec<i64>,
    /// Flattened positions of the `[IMG]` tokens, `[B·R]`.
    img_pos: Vec<i64>,
    /// History frame ids, in slot order.
    history: Vec<String>,
    target_ids: Vec<String>,
    b: usize,
    l: usize,
}

/// Builds the host side of a batch: ids, masks, next-token targets, where each position's
/// input embedding comes from (its own token row, or a visual token of a history frame), and
/// the `[IMG]` positions.
fn assemble(
    batcher: &Stage2Batcher,
    pad: u32,
    m: usize,
    items: &[(&StoryItem, usize)],
) -> Result<HostBatch> {
    let seqs = items
        .iter()
        .map(|(s, t)| match t {
            0 => batcher.window(&s.captions, 0, 0),
            _ => batcher.sequence(&s.captions, *t),
        })
        .collect::<Result<Vec<_>>>()?;
    let b = seqs.len();
    let l = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(1);
    let r = seqs.first().map_or(0, |s| s.img_positions.len());
    let mut host = HostBatch {
        ids: vec![i64::from(pad); b * l],
        mask: vec![0; b * l],
        next: vec![IGNORE_INDEX; b * l],
        gather: (0..(b * l) as i64).collect(),
        img_pos: Vec::with_capacity(b * r),
        history: Vec::new(),
        target_ids: Vec::with_capacity(b),
        b,
        l,
    };
    for (i, (seq, (story, t))) in seqs.iter().zip(items).enumerate() {
        for (j, (&id, &lab)) in seq.ids.iter().zip(&seq.labels).enumerate() {
            host.ids[i * l + j] = i64::from(id);
            host.mask[i * l + j] = 1;
            if j > 0 {
                host.next[i * l + j - 1] = lab;
            }
        }
        let first = t - seq.num_history;
        for (h, &start) in seq.image_slot_starts.iter().enumerate() {
            let slot = host.history.len();
            host.history.push(story.ids[first + h].clone());
            for k in 0..m {
                host.gather[i * l + start + k] = (b * l + slot * m + k) as i64;
            }
        }
        host.img_pos
            .extend(seq.img_positions.iter().map(|&p| (i * l + p) as i64));
        host.target_ids.push(story.ids[*t].clone());
    }
    Ok(host)
}

/// The pieces of the stage-2 objective on one batch.
pub struct Stage2Losses<B: Backend> {
    /// Mean next-token cross-entropy over supervised positions (`[1]`).
    pub ce: Tensor<B, 1>,
    /// Mean over conditioning tokens of `‖ĉ − c‖₂` (`[1]`).
    pub align: Tensor<B, 1>,
    /// The mapped conditioning `[b, l, d]`.
    pub conditioning: Tensor<B, 3>,
}

/// Runs the model on an assembled batch (see the module docs for the formula).
fn forward<B: Backend>(
    model: &Stage2Model<B>,
    host: &HostBatch,
    features: &HashMap<String, Vec<f32>>,
    visual_dim: usize,
    targets: &FusedEmbeddings,
    device: &Device<B>,
) -> Result<Stage2Losses<B>> {
    let (b, l) = (host.b, host.l);
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(host.ids.clone(), [b, l]), device);
    let d = model.lm.embed_dim();
    let mut rows = model.lm.embed_tokens(ids).reshape([b * l, d]);
    if !host.history.is_empty() {
        let mut px = Vec::with_capacity(host.history.len() * visual_dim);
        for id in &host.history {
            px.extend_from_slice(features.get(id).ok_or_else(|| {
                Error::InvalidInput(format!("no CLIP features for frame `{id}`"))
            })?);
        }
        let pooled = Tensor::<B, 2>::from_data(
            TensorData::new(px, [host.history.len(), visual_dim]),
            device,
        );
        let visual = model.visual_embeddings.forward(pooled); // [H, m·d]
        let n = visual.dims()[0] * visual.dims()[1] / d;
        rows = Tensor::cat(vec![rows, visual.reshape([n, d])], 0);
    }
    let gather =
        Tensor::<B, 1, Int>::from_data(TensorData::new(host.gather.clone(), [b * l]), device);
    let embeds = rows.select(0, gather); // [b·l, d]
    let mask = Tensor::<B, 2, Int>::from_data(TensorData::new(host.mask.clone(), [b, l]), device);
    let out =
        model
            .lm
            .forward_embeds(embeds.clone().reshape([b, l, d]), Some(mask), None, false)?;
    // Cross-entropy of the next token where supervised.
    let v = out.logits.dims()[2];
    let logp = log_softmax(out.logits.reshape([b * l, v]), 1);
    let weights: Vec<f32> = host
        .next
        .iter()
        .map(|&t| f32::from(u8::from(t != IGNORE_INDEX)))
        .collect();
    let n_sup: f32 = weights.iter().sum();
    let tgt: Vec<i64> = host.next.iter().map(|&t| t.max(0)).collect();
    let tgt = Tensor::<B, 2, Int>::from_data(TensorData::new(tgt, [b * l, 1]), device);
    let w = Tensor::<B, 1>::from_data(TensorData::new(weights, [b * l]), device);
    let ce = -(logp.gather(1, tgt).reshape([b * l]) * w).sum() / f64::from(n_sup.max(1.0));
    // [IMG] states + their input embeddings → mapper.
    let r = host.img_pos.len() / b;
    let pos =
        Tensor::<B, 1, Int>::from_data(TensorData::new(host.img_pos.clone(), [b * r]), device);
    let hidden = out
        .last_hidden_state
        .reshape([b * l, d])
        .select(0, pos.clone())
        .reshape([b, r, d]);
    let img_embeds = embeds.select(0, pos).reshape([b, r, d]);
    let conditioning = model.gill_mapper.forward(hidden, img_embeds);
    let target = targets.batch::<B>(&host.target_ids, device)?;
    let [_, lt, dt] = target.dims();
    let [_, lc, dc] = conditioning.dims();
    if [lt, dt] != [lc, dc] {
        return Err(Error::InputShape {
            what: "fused embedding targets".into(),
            expected: format!("[{lc}, {dc}] (the mapper's output)"),
            found: vec![lt, dt],
        });
    }
    let align = (conditioning.clone() - target)
        .powi_scalar(2)
        .sum_dim(2)
        .add_scalar(1e-12)
        .sqrt()
        .mean();
    Ok(Stage2Losses {
        ce,
        align,
        conditioning,
    })
}

/// The diffusion loss's frozen parts: the Char-LDM UNet (no parameter trains; the gradient
/// reaches the conditioning through it) and the cached VAE posteriors of every frame.
pub struct DiffusionObjective<B: Backend> {
    /// The frozen denoiser.
    pub unet: UNet2DConditionModel<B>,
    /// Posteriors of the frames that can be targets.
    pub latents: LatentCache,
    /// `ᾱ_t` of the training noise schedule (SD 1.x's, as Char-LDM trained).
    pub alphas_cumprod: Vec<f64>,
}

/// `‖ε̂(x_t, t, ĉ) − ε‖²` averaged over the batch: the target frames `ids` noised at random
/// timesteps and denoised by `unet` under the mapped `conditioning`.
pub fn diffusion_loss<B: Backend>(
    unet: &UNet2DConditionModel<B>,
    latents: &LatentCache,
    alphas_cumprod: &[f64],
    conditioning: Tensor<B, 3>,
    ids: &[String],
    rng: &mut ChaCha8Rng,
    device: &Device<B>,
) -> Result<Tensor<B, 1>> {
    let z = latents.sample::<B>(ids, rng, device)?;
    let (noisy, eps, t) = add_training_noise(z, alphas_cumprod, rng, device);
    let pred = unet.forward(noisy, t, conditioning);
    Ok((pred - eps).powf_scalar(2.0).mean())
}

/// The seed of the validation noise: every validation draws the same latents, noise and steps.
const VALIDATION_NOISE_SEED: u64 = 0x5707_9697;

/// Writes the best head when validation improves.
type HeadExporter<B> = Box<dyn Fn(&Stage2Model<B>, &Metrics, usize) -> Result<()>>;

/// The stage.
pub struct Stage2Stage<B: AutodiffBackend> {
    batcher: Stage2Batcher,
    pad: u32,
    train: Vec<StoryItem>,
    val: Vec<StoryItem>,
    features: HashMap<String, Vec<f32>>,
    visual_dim: usize,
    targets: FusedEmbeddings,
    sampler: EpochSampler,
    batch_size: usize,
    base_vocab: usize,
    frozen_rows: Tensor<B, 2>,
    loss: Stage2LossConfig,
    diffusion: Option<DiffusionObjective<B>>,
    m: usize,
    first_target: usize,
    /// The best validation objective so far (see the module docs).
    best_score: f64,
    /// Step and validation metrics of the best head so far.
    best: Option<(usize, Metrics)>,
    export: HeadExporter<B::InnerBackend>,
    device: Device<B>,
}

impl<B: AutodiffBackend> Stage<B> for Stage2Stage<B> {
    type Model = Stage2Model<B>;

    fn name(&self) -> &str {
        "stage2"
    }

    fn loss(
        &mut self,
        model: &Self::Model,
        rng: &mut ChaCha8Rng,
    ) -> Result<(Tensor<B, 1>, Metrics)> {
        let idx = self.sampler.next(self.batch_size);
        let items: Vec<(&StoryItem, usize)> = idx
            .iter()
            .map(|&i| {
                let s = &self.train[i];
                (s, rng.random_range(self.first_target..s.ids.len()))
            })
            .collect();
        let host = assemble(&self.batcher, self.pad, self.m, &items)?;
        let parts = forward(
            model,
            &host,
            &self.features,
            self.visual_dim,
            &self.targets,
            &self.device,
        )?;
        let mut metrics = Metrics::new();
        metrics.insert("ce".into(), parts.ce.clone().into_scalar().elem::<f64>());
        metrics.insert(
            "align_l2".into(),
            parts.align.clone().into_scalar().elem::<f64>(),
        );
        let mut loss = parts.ce * self.loss.ce_weight + parts.align * self.loss.align_weight;
        if let Some(d) = &self.diffusion {
            let diffusion = diffusion_loss(
                &d.unet,
                &d.latents,
                &d.alphas_cumprod,
                parts.conditioning,
                &host.target_ids,
                rng,
                &self.device,
            )?;
            metrics.insert(
                "diffusion".into(),
                diffusion.clone().into_scalar().elem::<f64>(),
            );
            loss = loss + diffusion * self.loss.diffusion_weight;
        }
        Ok((loss, metrics))
    }

    fn edit_grads(&self, model: &Self::Model, grads: &mut GradientsParams) {
        // The table's id is read off the model, not remembered from the start: parameter ids
        // are random per process and a resumed run's model carries its checkpoint's ids, so a
        // remembered id would miss the table and leave the frozen rows' gradient in the norm.
        let id = model.lm.input_embeddings().id;
        if let Some(g) = grads.remove::<B::InnerBackend, 2>(id) {
            grads.register(id, mask_frozen_rows(g, self.base_vocab));
        }
    }

    fn after_step(&self, mut model: Self::Model) -> Self::Model {
        let table = model.lm.input_embeddings().val();
        let [v, d] = table.dims();
        let new_rows = table.slice([self.base_vocab..v, 0..d]);
        let restored = Tensor::cat(vec![self.frozen_rows.clone(), new_rows], 0);
        let rescaled = rescale_new_rows(restored, self.base_vocab);
        replace_param(model.lm.input_embeddings_mut(), rescaled.detach());
        model
    }

    fn validate(
        &mut self,
        model: &Stage2Model<B::InnerBackend>,
        step: usize,
        _run: &Path,
    ) -> Result<Metrics> {
        let unet = self.diffusion.as_ref().map(|d| d.unet.valid());
        let diffusion = self
            .diffusion
            .as_ref()
            .zip(unet.as_ref())
            .map(|(d, unet)| (unet, &d.latents, d.alphas_cumprod.as_slice()));
        let mut metrics = validation_metrics(
            model,
            &self.batcher,
            self.pad,
            self.m,
            self.first_target,
            &self.val,
            &self.features,
            self.visual_dim,
            &self.targets,
            diffusion,
            &self.device,
        )?;
        let score = validation_score(&metrics, &self.loss);
        metrics.insert("val_objective".into(), score);
        if score < self.best_score {
            self.best_score = score;
            self.best = Some((step, metrics.clone()));
            (self.export)(model, &metrics, step)?;
            tracing::info!(val_objective = score, "new best stage-2 head exported");
        }
        Ok(metrics)
    }

    fn data_state(&self) -> serde_json::Value {
        serde_json::json!({
            "sampler": self.sampler.state(),
            "best_score": self.best_score,
            "best_step": self.best.as_ref().map(|b| b.0),
            "best_metrics": self.best.as_ref().map(|b| &b.1),
        })
    }

    fn restore_data_state(&mut self, state: &serde_json::Value) -> Result<()> {
        self.sampler.restore(&state["sampler"])?;
        // checkpoints before the diffusion loss named the score after the L2 it then was
        self.best_score = state["best_score"]
            .as_f64()
            .or_else(|| state["best_l2"].as_f64())
            .unwrap_or(f64::INFINITY);
        // checkpoints before the card fix hold no best step: the card then says step 0
        let step = state["best_step"].as_u64().unwrap_or(0) as usize;
        let metrics: Metrics =
            serde_json::from_value(state["best_metrics"].clone()).unwrap_or_default();
        self.best = self.best_score.is_finite().then_some((step, metrics));
        Ok(())
    }
}

/// What selects the best head: `align_weight · val_align_l2`, plus
/// `diffusion_weight · val_diffusion` when the diffusion loss is on; the L2 alone when neither
/// weight says otherwise (the original's criterion).
fn validation_score(metrics: &Metrics, loss: &Stage2LossConfig) -> f64 {
    let l2 = metrics
        .get("val_align_l2")
        .copied()
        .unwrap_or(f64::INFINITY);
    match metrics.get("val_diffusion") {
        Some(d) if loss.diffusion_weight > 0.0 => {
            loss.align_weight * l2 + loss.diffusion_weight * d
        }
        _ => l2,
    }
}

/// The frozen UNet, the latents and `ᾱ` for the validation diffusion loss.
type ValDiffusion<'a, B> = (&'a UNet2DConditionModel<B>, &'a LatentCache, &'a [f64]);

/// Mean L2 and CE over every (story, target ≥ 1) of `stories`, and, when `diffusion` is
/// given, the mean diffusion loss under [`VALIDATION_NOISE_SEED`] (`val_diffusion`) and under
/// the same draws with the fused targets as conditioning (`val_diffusion_fused`: the value a
/// mapper that hit its targets exactly would reach).
#[allow(clippy::too_many_arguments)]
fn validation_metrics<B: Backend>(
    model: &Stage2Model<B>,
    batcher: &Stage2Batcher,
    pad: u32,
    m: usize,
    first_target: usize,
    stories: &[StoryItem],
    features: &HashMap<String, Vec<f32>>,
    visual_dim: usize,
    targets: &FusedEmbeddings,
    diffusion: Option<ValDiffusion<'_, B>>,
    device: &Device<B>,
) -> Result<Metrics> {
    let mut rng = ChaCha8Rng::seed_from_u64(VALIDATION_NOISE_SEED);
    let (mut diff, mut diff_fused) = (0.0, 0.0);
    let pairs: Vec<(&StoryItem, usize)> = stories
        .iter()
        .flat_map(|s| (first_target..s.ids.len()).map(move |t| (s, t)))
        .collect();
    let (mut ce, mut l2, mut n) = (0.0, 0.0, 0usize);
    for chunk in pairs.chunks(32) {
        let host = assemble(batcher, pad, m, chunk)?;
        let parts = forward(model, &host, features, visual_dim, targets, device)?;
        let k = chunk.len();
        if let Some((unet, latents, alphas)) = diffusion {
            // the same draws under the fused target itself: what a perfect mapper would score
            let mut same_draws = rng.clone();
            let fused = targets.batch::<B>(&host.target_ids, device)?;
            let f = diffusion_loss(
                unet,
                latents,
                alphas,
                fused,
                &host.target_ids,
                &mut same_draws,
                device,
            )?;
            diff_fused += f.into_scalar().elem::<f64>() * k as f64;
            let d = diffusion_loss(
                unet,
                latents,
                alphas,
                parts.conditioning,
                &host.target_ids,
                &mut rng,
                device,
            )?;
            diff += d.into_scalar().elem::<f64>() * k as f64;
        }
        ce += parts.ce.into_scalar().elem::<f64>() * k as f64;
        l2 += parts.align.into_scalar().elem::<f64>() * k as f64;
        n += k;
    }
    let mut out = Metrics::new();
    out.insert("val_ce".into(), ce / n.max(1) as f64);
    out.insert("val_align_l2".into(), l2 / n.max(1) as f64);
    out.insert("val_targets".into(), n as f64);
    if diffusion.is_some() {
        out.insert("val_diffusion".into(), diff / n.max(1) as f64);
        out.insert("val_diffusion_fused".into(), diff_fused / n.max(1) as f64);
    }
    Ok(out)
}

/// What a stage-2 run reports.
#[derive(Debug, Clone, Serialize)]
pub struct Stage2Report {
    /// Steps done.
    pub steps: usize,
    /// All done (`RUN/model/` written).
    pub finished: bool,
    /// Last validation metrics.
    pub metrics: Metrics,
    /// Validation L2 of the exported (best) head.
    pub best_align_l2: f64,
    /// Its validation objective, which selected it (see the module docs).
    pub best_score: f64,
    /// Training seconds.
    pub seconds: f64,
}

/// Trains (or resumes) stage 2. Writes `RUN/best/` whenever validation L2 improves and, when
/// all steps are done, `RUN/model/` (the best head: `config.json`, `model.safetensors`,
/// `README.md`).
pub fn train_stage2<B: AutodiffBackend>(
    cfg: &Stage2RunConfig,
    opts: &super::RunOptions,
    device: &B::Device,
) -> Result<Stage2Report> {
    let config_toml = super::config::to_toml(cfg)?;
    let dataset: Arc<dyn StoryDataset> = Arc::from(storygpt_data::open_dataset(&cfg.data.dataset)?);
    let targets = FusedEmbeddings::open(&cfg.data.embeddings)?;
    let r = cfg.model.num_img_tokens;
    let img_tokens = img_token_names(r);
    // The LLM and its tokenizer, grown by the [IMG] tokens.
    let mut tokenizer = LlmTokenizer::from_dir(&cfg.components.llm)?;
    let base_tok = tokenizer.len();
    let names: Vec<&str> = img_tokens.iter().map(String::as_str).collect();
    let img_ids = tokenizer.add_special_tokens(&names);
    let mut lm = AutoCausalLm::<B>::from_pretrained(&cfg.components.llm, device)?;
    let base_vocab = lm.vocab_size();
    if img_ids.iter().any(|&i| (i as usize) < base_vocab) || base_tok > base_vocab {
        return Err(Error::InvalidInput(format!(
            "{}: the tokenizer already holds some of {img_tokens:?} or is larger than the model's vocabulary ({base_tok} > {base_vocab})",
            cfg.components.llm.display()
        )));
    }
    let vocab = img_ids
        .iter()
        .map(|&i| i as usize + 1)
        .max()
        .unwrap_or(base_vocab);
    lm.resize_token_embeddings(vocab)?;
    let lm = lm.no_grad();
    let d_llm = lm.embed_dim();
    let tok: Arc<LlmTokenizer> = Arc::new(tokenizer.clone());
    let batcher = Stage2Batcher::new(
        tok,
        Stage2Config {
            img_tokens: img_tokens.clone(),
            visual_tokens: cfg.model.n_visual_tokens,
            max_len: cfg.model.max_len,
            ..Stage2Config::default()
        },
    )?;
    let pad = tokenizer.pad_token_id().unwrap_or(0);
    // Frame features from the frozen CLIP vision tower, once.
    let vision = ClipVisionModel::<B::InnerBackend>::from_pretrained(
        &cfg.components.visual_encoder,
        device,
    )?;
    let train = story_items(dataset.as_ref(), Split::Train)?;
    let val = story_items(dataset.as_ref(), Split::Val)?;
    if train.is_empty() || val.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{}: stage 2 needs training and validation stories of at least two frames",
            cfg.data.dataset.display()
        )));
    }
    let all_ids: Vec<String> = train
        .iter()
        .chain(&val)
        .flat_map(|s| s.ids.iter().cloned())
        .collect();
    tracing::info!(
        frames = all_ids.len(),
        "encoding frames with the frozen CLIP vision tower"
    );
    let features = frame_features(&vision, dataset.as_ref(), &all_ids, device)?;
    let visual_dim = features.values().next().map_or(0, Vec::len);
    let [lc, dc] = targets.shape();
    let mapper_cfg = GillMapperConfig {
        in_dim: d_llm,
        out_dim: dc,
        num_input_tokens: r,
        num_output_tokens: lc,
        d_model: cfg.model.mapper.d_model,
        nhead: cfg.model.mapper.nhead,
        num_encoder_layers: cfg.model.mapper.num_encoder_layers,
        num_decoder_layers: cfg.model.mapper.num_decoder_layers,
        dim_feedforward: cfg.model.mapper.dim_feedforward,
        layer_norm_eps: 1e-5,
    };
    let head_cfg = StoryHeadConfig {
        llm: std::fs::canonicalize(&cfg.components.llm).unwrap_or(cfg.components.llm.clone()),
        visual_encoder: std::fs::canonicalize(&cfg.components.visual_encoder)
            .unwrap_or(cfg.components.visual_encoder.clone()),
        ldm: cfg.components.ldm.clone(),
        n_visual_tokens: cfg.model.n_visual_tokens,
        img_tokens: img_tokens.clone(),
        base_vocab_size: base_vocab,
        visual_dim,
        llm_dim: d_llm,
        max_len: cfg.model.max_len,
        first_frame_trained: cfg.model.first_frame_targets,
        mapper: mapper_cfg,
    };
    B::seed(device, cfg.train.seed);
    let head = head_cfg.init::<B>(device)?;
    let head = match &cfg.components.init_from {
        Some(dir) => init_head_from::<B>(dir, &head_cfg, device)?,
        None => head,
    };
    let diffusion = if cfg.loss.diffusion_weight > 0.0 {
        Some(diffusion_objective::<B>(
            cfg,
            dataset.as_ref(),
            &all_ids,
            [lc, dc],
            device,
        )?)
    } else {
        None
    };
    // The [IMG] rows start from the head's rows (random, or `init_from`'s), rescaled to the frozen rows' mean norm.
    let table = lm.input_embeddings().val();
    let frozen_rows = table.clone().slice([0..base_vocab, 0..d_llm]).detach();
    let fresh = Tensor::cat(vec![frozen_rows.clone(), head.img_embeddings.val()], 0);
    let mut lm = lm;
    replace_param(
        lm.input_embeddings_mut(),
        rescale_new_rows(fresh, base_vocab).detach(),
    );
    let table = lm.input_embeddings().clone().set_require_grad(true);
    *lm.input_embeddings_mut() = table;
    let model = Stage2Model {
        lm,
        visual_embeddings: head.visual_embeddings,
        gill_mapper: head.gill_mapper,
    };
    let run_dir = opts.run_dir.clone();
    let export_cfg = head_cfg.clone();
    let export_toml = config_toml.clone();
    let export = Box::new(
        move |m: &Stage2Model<B::InnerBackend>, metrics: &Metrics, step: usize| {
            export_head(
                &run_dir.join("best"),
                &m.head(base_vocab),
                &export_cfg,
                &head_card(&export_toml, metrics, step, None),
            )
        },
    );
    let mut stage = Stage2Stage::<B> {
        batcher,
        pad,
        sampler: EpochSampler::new(train.len(), cfg.train.seed),
        train,
        val,
        features,
        visual_dim,
        targets,
        batch_size: cfg.train.batch_size,
        base_vocab,
        frozen_rows,
        loss: cfg.loss.clone(),
        diffusion,
        m: cfg.model.n_visual_tokens,
        first_target: usize::from(!cfg.model.first_frame_targets),
        best_score: f64::INFINITY,
        best: None,
        export,
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
        let best = opts.run_dir.join("best");
        if !best.join("config.json").exists() {
            return Err(Error::InvalidInput(format!(
                "stage 2 finished without a validation: set validate_every so that at least one runs ({})",
                best.display()
            )));
        }
        let tmp = tempfile::Builder::new()
            .prefix(".stage2-model.partial-")
            .tempdir_in(&opts.run_dir)
            .map_err(|e| Error::io(&opts.run_dir, e))?;
        for entry in std::fs::read_dir(&best).map_err(|e| Error::io(&best, e))? {
            let p = entry.map_err(|e| Error::io(&best, e))?.path();
            if let Some(name) = p.file_name() {
                std::fs::copy(&p, tmp.path().join(name)).map_err(|e| Error::io(&p, e))?;
            }
        }
        // The card of the final folder: the whole run's steps and time, the best step's metrics.
        let (best_step, best_metrics) = stage.best.clone().unwrap_or_default();
        let card = head_card(
            &config_toml,
            &best_metrics,
            out.state.step,
            Some((best_step, out.state.seconds)),
        );
        storygpt_core::fs::write_atomic(tmp.path().join("README.md"), card.markdown().as_bytes())?;
        super::export::replace_dir(tmp, &opts.run_dir.join("model"))?;
    }
    Ok(Stage2Report {
        steps: out.state.step,
        finished: out.finished,
        metrics,
        best_align_l2: stage
            .best
            .as_ref()
            .and_then(|(_, m)| m.get("val_align_l2").copied())
            .unwrap_or(f64::INFINITY),
        best_score: stage.best_score,
        seconds: out.state.seconds,
    })
}

/// Loads the head folder `dir` to start a run, after checking it has this run's sizes.
fn init_head_from<B: Backend>(
    dir: &Path,
    want: &StoryHeadConfig,
    device: &Device<B>,
) -> Result<StoryHead<B>> {
    let (head, have) = StoryHead::<B>::from_pretrained(dir, device)?;
    let mismatch = |key: &str, have: String, want: String| Error::InvalidConfig {
        path: Some(dir.join("config.json")),
        message: format!("`init_from`: the head's `{key}` is {have}, this run's is {want}"),
    };
    let pairs = [
        (
            "n_visual_tokens",
            have.n_visual_tokens,
            want.n_visual_tokens,
        ),
        (
            "base_vocab_size",
            have.base_vocab_size,
            want.base_vocab_size,
        ),
        ("visual_dim", have.visual_dim, want.visual_dim),
        ("llm_dim", have.llm_dim, want.llm_dim),
    ];
    for (key, h, w) in pairs {
        if h != w {
            return Err(mismatch(key, h.to_string(), w.to_string()));
        }
    }
    if have.img_tokens != want.img_tokens {
        return Err(mismatch(
            "img_tokens",
            format!("{:?}", have.img_tokens),
            format!("{:?}", want.img_tokens),
        ));
    }
    if have.mapper != want.mapper {
        return Err(mismatch(
            "mapper",
            format!("{:?}", have.mapper),
            format!("{:?}", want.mapper),
        ));
    }
    Ok(head)
}

/// The frozen UNet of `[components] ldm` and the VAE posteriors of frames `ids`, for the
/// diffusion loss. The UNet's conditioning must be the embeddings' `[l, d]`.
fn diffusion_objective<B: AutodiffBackend>(
    cfg: &Stage2RunConfig,
    dataset: &dyn StoryDataset,
    ids: &[String],
    [l, d]: [usize; 2],
    device: &Device<B>,
) -> Result<DiffusionObjective<B>> {
    let ldm = cfg.components.ldm.as_ref().ok_or_else(|| Error::InvalidConfig {
        path: None,
        message: "[loss] diffusion_weight > 0 needs [components] ldm, the Char-LDM folder whose UNet the loss runs through".into(),
    })?;
    // only the UNet and the VAE: the text path is not run
    let index = super::char_ldm::CharLdmIndex::read(ldm)?;
    let vae = AutoencoderKL::<B::InnerBackend>::from_pretrained(index.component("vae"), device)?;
    let unet = UNet2DConditionModel::<B>::from_pretrained(ldm.join("unet"), device)?.no_grad();
    let cross = storygpt_core::traits::Denoiser::cross_attention_dim(&unet);
    if cross != d {
        return Err(Error::InvalidConfig {
            path: Some(ldm.join("unet").join("config.json")),
            message: format!(
                "the UNet's cross_attention_dim is {cross}, the stage-2 targets are [{l}, {d}]"
            ),
        });
    }
    let mut latents = LatentCache::new(Autoencoder::scaling_factor(&vae));
    let bar = indicatif::ProgressBar::new(ids.len() as u64);
    bar.set_message("caching VAE latents of the target frames");
    for chunk in ids.chunks(64) {
        let images = chunk
            .iter()
            .map(|id| Ok(dataset.load_image(id, 0)?.image))
            .collect::<Result<Vec<_>>>()?;
        latents.encode(&vae, chunk, &images, index.resolution(), device)?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    tracing::info!(
        frames = latents.len(),
        shape = ?latents.shape(),
        "VAE latents cached for the diffusion loss"
    );
    Ok(DiffusionObjective {
        unet,
        latents,
        alphas_cumprod: super::char_ldm::alphas_cumprod(),
    })
}

/// The model card of a head folder. `run` = (step of the best checkpoint, training seconds of
/// the whole run) for the final folder; `None` while training (a `best/` snapshot at `step`).
fn head_card(
    config_toml: &str,
    metrics: &Metrics,
    step: usize,
    run: Option<(usize, f64)>,
) -> super::export::ModelCard {
    let (selected, seconds) = match run {
        Some((best, seconds)) => (
            format!(
                "The weights are those of step {best}, the best validation objective of the run."
            ),
            seconds,
        ),
        None => (
            format!("A snapshot of step {step}, the best validation objective so far."),
            0.0,
        ),
    };
    super::export::ModelCard {
        title: "StoryGPT-V stage-2 head".into(),
        description: format!(
            "What stage 2 trains on top of a frozen LLM: the visual projection (CLIP \
             pooler_output → 4 LLM tokens), the [IMG] input embeddings and the GILL mapper \
             ([IMG] hidden states → Char-LDM conditioning), selected by the validation objective \
             (the L2 alignment, plus the diffusion loss when it trains). {selected}"
        ),
        data: "see the config below".into(),
        steps: step,
        seconds,
        metrics: metrics
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    *v,
                    "validation stories, every target frame".to_string(),
                )
            })
            .collect(),
        config_toml: config_toml.to_string(),
        command: "storygpt train-llm --config CONFIG --out RUN".into(),
    }
}

/// Writes a head folder (see `storygpt_models::story_head`).
fn export_head<B: Backend>(
    dir: &Path,
    head: &StoryHead<B>,
    cfg: &StoryHeadConfig,
    card: &super::export::ModelCard,
) -> Result<()> {
    let json = serde_json::to_value(cfg)
        .map_err(|e| Error::InvalidInput(format!("stage-2 head config: {e}")))?;
    super::export::write_model_folder(
        dir,
        &json,
        super::export::Weights::new("model.safetensors", head, StoryHead::<B>::EXPORT_RENAMES),
        &[],
        card,
    )
}
