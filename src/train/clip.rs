//! Stage 0, CLIP: a text and a vision tower with projections trained contrastively (InfoNCE,
//! as CLIP, with a learned temperature) on a dataset's captions and frames, plus each cast
//! member's name against crops of that character, so that Char-LDM's character-image
//! embeddings carry identity. Standing in for `openai/clip-vit-large-patch14` on the story
//! world.
//!
//! Validation: text→image top-1 retrieval among the validation frames, and crop→name accuracy
//! over the cast. The export is a transformers `CLIPModel` folder (`config.json` with
//! `text_config` / `vision_config`, `model.safetensors`, the tokenizer,
//! `preprocessor_config.json`).

use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Device, Int, Tensor, TensorData};
use image::RgbImage;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use storygpt_core::{Error, Result};
use storygpt_data::{Split, StoryDataset};
use storygpt_models::clip::{
    ClipTextConfig, ClipTextModelWithProjection, ClipTokenizer, ClipVisionConfig,
    ClipVisionModelWithProjection,
};

use super::data::{EpochSampler, resize};
use super::vae::DataConfig;
use super::{Metrics, Stage};

/// OpenAI CLIP's pixel mean / std (the image processor's `image_mean` / `image_std`).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// See [`CLIP_MEAN`].
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// Both towers and the temperature.
#[derive(Module, Debug)]
pub struct ClipPair<B: Backend> {
    /// Text tower + `text_projection`.
    pub text: ClipTextModelWithProjection<B>,
    /// Vision tower + `visual_projection`.
    pub vision: ClipVisionModelWithProjection<B>,
    /// `log(1 / τ)`, CLIP's `logit_scale` (stored as `[1]`).
    pub logit_scale: Param<Tensor<B, 1>>,
}

impl<B: Backend> ClipPair<B> {
    /// Random towers from configs; `logit_scale = ln(1 / 0.07)` as CLIP initialises it.
    pub fn new(
        text: &ClipTextConfig,
        vision: &ClipVisionConfig,
        device: &Device<B>,
    ) -> Result<Self> {
        Ok(Self {
            text: ClipTextModelWithProjection::new(text, device)?,
            vision: ClipVisionModelWithProjection::new(vision, device)?,
            logit_scale: Param::from_tensor(Tensor::from_floats([2.659_2f32], device)),
        })
    }

    /// L2-normalised text embeddings `[n, proj]`.
    pub fn text_embeds(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        normalize(self.text.forward(ids).1)
    }

    /// L2-normalised image embeddings `[n, proj]` of CLIP-normalised pixels.
    pub fn image_embeds(&self, pixels: Tensor<B, 4>) -> Tensor<B, 2> {
        normalize(self.vision.forward(pixels).1)
    }
}

fn normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let n = x.clone().powf_scalar(2.0).sum_dim(1).sqrt().clamp_min(1e-8);
    x / n
}

/// RGB images of one size → CLIP-normalised `[n, 3, s, s]`.
pub fn clip_pixels<B: Backend>(
    images: &[&RgbImage],
    size: u32,
    device: &Device<B>,
) -> Tensor<B, 4> {
    let s = size as usize;
    let mut data = Vec::with_capacity(images.len() * 3 * s * s);
    for img in images {
        let img = resize(img, size);
        let raw = img.as_raw();
        for c in 0..3 {
            data.extend(
                (0..s * s)
                    .map(|i| (f32::from(raw[3 * i + c]) / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c]),
            );
        }
    }
    Tensor::from_data(TensorData::new(data, [images.len(), 3, s, s]), device)
}

/// Tokenizes texts into `[n, max_length]` padded ids.
pub fn clip_ids<B: Backend>(
    tok: &ClipTokenizer,
    texts: &[&str],
    device: &Device<B>,
) -> Result<Tensor<B, 2, Int>> {
    let mut rows = Vec::new();
    let mut len = 0;
    for t in texts {
        let enc = tok.encode_padded(t)?;
        len = enc.input_ids.len();
        rows.extend(enc.input_ids.iter().map(|&i| i64::from(i)));
    }
    Ok(Tensor::from_data(
        TensorData::new(rows, [texts.len(), len]),
        device,
    ))
}

/// A character crop of a frame: its box (padded by 10 %), other characters' pixels kept (the
/// crop is a view a name should still match).
fn crop(img: &RgbImage, bbox: [f32; 4]) -> RgbImage {
    let (w, h) = (img.width() as f32, img.height() as f32);
    let (bw, bh) = ((bbox[2] - bbox[0]) * w, (bbox[3] - bbox[1]) * h);
    let side = bw.max(bh) * 1.1;
    let cx = (bbox[0] + bbox[2]) / 2.0 * w;
    let cy = (bbox[1] + bbox[3]) / 2.0 * h;
    let x0 = (cx - side / 2.0).round() as i64;
    let y0 = (cy - side / 2.0).round() as i64;
    let s = side.round().max(2.0) as u32;
    RgbImage::from_fn(s, s, |x, y| {
        let (sx, sy) = (x0 + i64::from(x), y0 + i64::from(y));
        if sx >= 0 && sy >= 0 && sx < img.width() as i64 && sy < img.height() as i64 {
            *img.get_pixel(sx as u32, sy as u32)
        } else {
            image::Rgb([255, 255, 255])
        }
    })
}

/// Frames, captions and character crops of one split, in memory.
pub struct ClipData {
    frames: Vec<RgbImage>,
    captions: Vec<String>,
    /// `(character index, crop)`.
    crops: Vec<(usize, RgbImage)>,
    names: Vec<String>,
    portraits: Vec<Option<RgbImage>>,
}

impl ClipData {
    /// Loads a split.
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
        let mut frames = Vec::new();
        let mut captions = Vec::new();
        let mut crops = Vec::new();
        for id in &ids {
            let ann = dataset.annotation(id)?;
            let img = dataset.load_image(id, 0)?.image;
            for seg in &ann.segments {
                if let Some(c) = seg.character {
                    crops.push((c, resize(&crop(&img, seg.bbox), size)));
                }
            }
            frames.push(resize(&img, size));
            captions.push(ann.caption_for_image(0).to_string());
        }
        let names = dataset
            .characters()
            .iter()
            .map(|c| c.name.clone())
            .collect();
        let portraits = super::char_ldm::portraits(dataset)?
            .into_iter()
            .map(|p| p.map(|img| resize(&img, size)))
            .collect();
        Ok(Self {
            frames,
            captions,
            crops,
            names,
            portraits,
        })
    }
}

/// The CLIP stage.
pub struct ClipStage<B: Backend> {
    train: ClipData,
    val: ClipData,
    tokenizer: ClipTokenizer,
    sampler: EpochSampler,
    batch_size: usize,
    size: u32,
    device: B::Device,
}

/// Symmetric InfoNCE on `[n, n]` logits with the diagonal as targets.
fn info_nce<B: Backend>(logits: Tensor<B, 2>) -> Tensor<B, 1> {
    let n = logits.dims()[0];
    let eye = Tensor::<B, 2>::from_data(
        TensorData::new(
            (0..n * n)
                .map(|k| if k / n == k % n { 1.0f32 } else { 0.0 })
                .collect::<Vec<_>>(),
            [n, n],
        ),
        &logits.device(),
    );
    let rows = -(log_softmax(logits.clone(), 1) * eye.clone()).sum() / n as f64;
    let cols = -(log_softmax(logits, 0) * eye).sum() / n as f64;
    (rows + cols) / 2.0
}

impl<B: AutodiffBackend> Stage<B> for ClipStage<B> {
    type Model = ClipPair<B>;

    fn name(&self) -> &str {
        "clip"
    }

    fn loss(
        &mut self,
        model: &ClipPair<B>,
        rng: &mut ChaCha8Rng,
    ) -> Result<(Tensor<B, 1>, Metrics)> {
        let idx = self.sampler.next(self.batch_size);
        // frames ↔ captions
        let imgs: Vec<&RgbImage> = idx.iter().map(|&i| &self.train.frames[i]).collect();
        let texts: Vec<&str> = idx
            .iter()
            .map(|&i| self.train.captions[i].as_str())
            .collect();
        // one crop per cast member ↔ its name (distinct texts within the batch)
        let mut crop_imgs = Vec::new();
        let mut crop_names = Vec::new();
        for (c, name) in self.train.names.iter().enumerate() {
            let of_c: Vec<&RgbImage> = self
                .train
                .crops
                .iter()
                .filter(|(k, _)| *k == c)
                .map(|(_, im)| im)
                .collect();
            if of_c.is_empty() {
                continue;
            }
            crop_imgs.push(of_c[rng.random_range(0..of_c.len())]);
            crop_names.push(name.as_str());
        }
        let all_imgs: Vec<&RgbImage> = imgs.iter().copied().chain(crop_imgs).collect();
        let all_texts: Vec<&str> = texts.iter().copied().chain(crop_names).collect();
        let ie = model.image_embeds(clip_pixels(&all_imgs, self.size, &self.device));
        let te = model.text_embeds(clip_ids(&self.tokenizer, &all_texts, &self.device)?);
        let scale = model
            .logit_scale
            .val()
            .clamp(0.0, 4.6052)
            .exp()
            .reshape([1, 1]);
        let logits = te.matmul(ie.transpose()) * scale;
        Ok((info_nce(logits), Metrics::new()))
    }

    fn validate(
        &mut self,
        model: &ClipPair<B::InnerBackend>,
        _step: usize,
        _run: &Path,
    ) -> Result<Metrics> {
        retrieval_metrics(model, &self.val, &self.tokenizer, self.size, &self.device)
    }

    fn data_state(&self) -> serde_json::Value {
        self.sampler.state()
    }

    fn restore_data_state(&mut self, state: &serde_json::Value) -> Result<()> {
        self.sampler.restore(state)
    }
}

/// Text→image top-1 among the frames, crop→name accuracy over the cast, and portrait→name.
pub fn retrieval_metrics<B: Backend>(
    model: &ClipPair<B>,
    data: &ClipData,
    tok: &ClipTokenizer,
    size: u32,
    device: &Device<B>,
) -> Result<Metrics> {
    let n = data.frames.len();
    let mut img_e = Vec::new();
    let mut txt_e = Vec::new();
    for start in (0..n).step_by(64) {
        let end = (start + 64).min(n);
        let imgs: Vec<&RgbImage> = data.frames[start..end].iter().collect();
        let texts: Vec<&str> = data.captions[start..end]
            .iter()
            .map(String::as_str)
            .collect();
        img_e.push(model.image_embeds(clip_pixels(&imgs, size, device)));
        txt_e.push(model.text_embeds(clip_ids(tok, &texts, device)?));
    }
    let sims = Tensor::cat(txt_e, 0).matmul(Tensor::cat(img_e, 0).transpose());
    let best: Vec<i64> = sims
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .to_vec()
        .unwrap_or_default();
    // a retrieved frame counts when its caption is the same text (identical captions exist)
    let t2i = best
        .iter()
        .enumerate()
        .filter(|(i, b)| data.captions[**b as usize] == data.captions[*i])
        .count() as f64
        / n.max(1) as f64;
    let names: Vec<&str> = data.names.iter().map(String::as_str).collect();
    let name_e = model.text_embeds(clip_ids(tok, &names, device)?);
    let mut right = 0usize;
    for chunk in data.crops.chunks(64) {
        let imgs: Vec<&RgbImage> = chunk.iter().map(|(_, im)| im).collect();
        let e = model.image_embeds(clip_pixels(&imgs, size, device));
        let pred: Vec<i64> = e
            .matmul(name_e.clone().transpose())
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .to_vec()
            .unwrap_or_default();
        right += chunk
            .iter()
            .zip(&pred)
            .filter(|((c, _), p)| *c as i64 == **p)
            .count();
    }
    let mut m = Metrics::new();
    m.insert("text_to_image_top1".into(), t2i);
    m.insert(
        "crop_to_name".into(),
        right as f64 / data.crops.len().max(1) as f64,
    );
    let ports: Vec<(usize, &RgbImage)> = data
        .portraits
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.as_ref().map(|p| (i, p)))
        .collect();
    if !ports.is_empty() {
        let imgs: Vec<&RgbImage> = ports.iter().map(|(_, p)| *p).collect();
        let pred: Vec<i64> = model
            .image_embeds(clip_pixels(&imgs, size, device))
            .matmul(name_e.transpose())
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .to_vec()
            .unwrap_or_default();
        let ok = ports
            .iter()
            .zip(&pred)
            .filter(|((c, _), p)| *c as i64 == **p)
            .count();
        m.insert("portrait_to_name".into(), ok as f64 / ports.len() as f64);
    }
    Ok(m)
}

/// A CLIP run config: `[data]`, `[model]` (transformers `CLIPModel` config with `text_config`
/// and `vision_config`; `text_config.vocab_size` is set from the tokenizer built at the start),
/// `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipRunConfig {
    /// Frames and captions.
    pub data: DataConfig,
    /// The towers.
    pub model: serde_json::Value,
    /// The loop.
    pub train: super::TrainConfig,
    /// Longest caption in tokens (also the text tower's `max_position_embeddings`).
    #[serde(default = "d_len")]
    pub max_length: usize,
}

fn d_len() -> usize {
    32
}

/// Builds the tokenizer folder for `dataset` and the resolved model config.
fn prepare(
    cfg: &ClipRunConfig,
    dataset: &dyn StoryDataset,
    tok_dir: &Path,
) -> Result<(serde_json::Value, ClipTokenizer)> {
    let vocab = super::tokenizer::vocabulary(dataset)?;
    let n = super::tokenizer::write_clip_tokenizer(tok_dir, &vocab, cfg.max_length)?;
    let tokenizer = ClipTokenizer::from_dir(tok_dir)?;
    let mut model = cfg.model.clone();
    let tc = model
        .get_mut("text_config")
        .ok_or_else(|| Error::InvalidConfig {
            path: None,
            message: "[model] needs a text_config table".into(),
        })?;
    tc["vocab_size"] = n.into();
    tc["max_position_embeddings"] = cfg.max_length.into();
    tc["bos_token_id"] = tokenizer.bos_token_id.into();
    tc["eos_token_id"] = tokenizer.eos_token_id.into();
    tc["pad_token_id"] = tokenizer.pad_token_id.into();
    model["architectures"] = json!(["CLIPModel"]);
    model["model_type"] = "clip".into();
    Ok((model, tokenizer))
}

/// What a CLIP run reports.
#[derive(Debug, Clone, Serialize)]
pub struct ClipReport {
    /// Steps done.
    pub steps: usize,
    /// All done (model exported).
    pub finished: bool,
    /// Final validation metrics.
    pub metrics: Metrics,
    /// Training seconds.
    pub seconds: f64,
}

/// Trains (or resumes) CLIP; on completion writes `RUN/model/` (a `CLIPModel` folder).
pub fn train_clip<B: AutodiffBackend>(
    cfg: &ClipRunConfig,
    opts: &super::RunOptions,
    device: &B::Device,
) -> Result<ClipReport> {
    let config_toml = super::config::to_toml(cfg)?;
    let dataset = storygpt_data::open_dataset(&cfg.data.dataset)?;
    let tok_dir: PathBuf = opts.run_dir.join("tokenizer");
    let (model_json, tokenizer) = prepare(cfg, dataset.as_ref(), &tok_dir)?;
    let bad = |what: &str, m: String| Error::InvalidConfig {
        path: None,
        message: format!("[{what}]: {m}"),
    };
    let text_cfg: ClipTextConfig = serde_json::from_value(model_json["text_config"].clone())
        .map_err(|e| bad("model.text_config", e.to_string()))?;
    text_cfg
        .validate()
        .map_err(|m| bad("model.text_config", m))?;
    let vision_cfg: ClipVisionConfig = serde_json::from_value(model_json["vision_config"].clone())
        .map_err(|e| bad("model.vision_config", e.to_string()))?;
    vision_cfg
        .validate()
        .map_err(|m| bad("model.vision_config", m))?;
    if vision_cfg.image_size != cfg.data.resolution as usize {
        return Err(Error::InvalidConfig {
            path: None,
            message: format!(
                "model.vision_config.image_size ({}) must equal data.resolution ({})",
                vision_cfg.image_size, cfg.data.resolution
            ),
        });
    }
    let size = cfg.data.resolution;
    let train = ClipData::load(dataset.as_ref(), Split::Train, size, cfg.data.train_frames)?;
    let val = ClipData::load(
        dataset.as_ref(),
        Split::Val,
        size,
        Some(cfg.data.val_frames),
    )?;
    B::seed(device, cfg.train.seed);
    let model = super::optim::init_transformer(
        ClipPair::<B>::new(&text_cfg, &vision_cfg, device)?,
        0.02,
        cfg.train.seed,
    );
    let mut stage = ClipStage::<B> {
        sampler: EpochSampler::new(train.frames.len(), cfg.train.seed),
        train,
        val,
        tokenizer,
        batch_size: cfg.train.batch_size,
        size,
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
        export_clip(
            &opts.run_dir.join("model"),
            &model,
            &model_json,
            &tok_dir,
            &config_toml,
            &out.state,
            &metrics,
            cfg,
        )?;
    }
    Ok(ClipReport {
        steps: out.state.step,
        finished: out.finished,
        metrics,
        seconds: out.state.seconds,
    })
}

#[allow(clippy::too_many_arguments)]
fn export_clip<B: Backend>(
    dir: &Path,
    model: &ClipPair<B>,
    model_json: &serde_json::Value,
    tok_dir: &Path,
    config_toml: &str,
    state: &super::checkpoint::LoopState,
    metrics: &Metrics,
    cfg: &ClipRunConfig,
) -> Result<()> {
    let card = super::export::ModelCard {
        title: "Story-world CLIP (stage 0)".into(),
        description: "A transformers `CLIPModel` (text and vision towers with projections) trained from \
                      scratch with CLIP's symmetric InfoNCE on story-world captions ↔ frames and \
                      character names ↔ character crops, with a word-level tokenizer of the world's \
                      vocabulary."
            .into(),
        data: format!("{} at {}²", cfg.data.dataset.display(), cfg.data.resolution),
        steps: state.step,
        seconds: state.seconds,
        metrics: metrics
            .iter()
            .map(|(k, v)| (k.clone(), *v, "validation split".to_string()))
            .collect(),
        config_toml: config_toml.to_string(),
        command: "storygpt train-clip --config CONFIG --out RUN".into(),
    };
    let s = cfg.data.resolution;
    let preprocessor = json!({
        "crop_size": {"height": s, "width": s}, "do_center_crop": true, "do_convert_rgb": true,
        "do_normalize": true, "do_rescale": true, "do_resize": true,
        "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "image_processor_type": "CLIPImageProcessor",
        "resample": 3, "rescale_factor": 1.0 / 255.0, "size": {"shortest_edge": s}
    });
    let tok_json: serde_json::Value =
        storygpt_core::config::read_json(tok_dir.join("tokenizer.json"))?;
    let tok_cfg: serde_json::Value =
        storygpt_core::config::read_json(tok_dir.join("tokenizer_config.json"))?;
    super::export::write_model_folder(
        dir,
        model_json,
        super::export::Weights::new(
            "model.safetensors",
            model,
            &[(r"^text\.", ""), (r"^vision\.", "")],
        ),
        &[
            ("preprocessor_config.json", preprocessor),
            ("tokenizer.json", tok_json),
            ("tokenizer_config.json", tok_cfg),
        ],
        &card,
    )?;
    super::export::scalar_tensor(&dir.join("model.safetensors"), "logit_scale")
}
