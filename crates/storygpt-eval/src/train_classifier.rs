//! Training the evaluation classifiers (`storygpt eval train-classifier`):
//!
//! - **Inception-v3** the original way (`1005427^:eval/train_cls.py` of StoryGPT-V):
//!   `BCEWithLogits(main) + 0.4 · BCEWithLogits(aux)`, Adam with lr 1e-4, batch 32, train
//!   transform `Resize(299)` + random horizontal flip + ImageNet normalisation. Start from
//!   ImageNet weights (`--init`, a torchvision `inception_v3` `.pth`/`.safetensors`) as the
//!   original does; the heads are re-initialised for the dataset's labels.
//! - **The small CNN** for the story world: BCE, AdamW with a linear decay, augmentation.
//!
//! Both evaluate the trained judge on the ground-truth test frames and write a classifier
//! folder ([`crate::classifier`]) with a model card.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::nn::DropoutConfig;
use burn::nn::loss::BinaryCrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Device, ElementConversion, Tensor, TensorData};
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use storygpt_core::{Error, Result};
use storygpt_data::{Split, StoryDataset};

use crate::classifier::{ClassifierMeta, LabelKind, MultiLabelClassifier, stack_chw};
use crate::inception::{InceptionConfig, InceptionV3};
use crate::metrics::{MultiLabelCounts, MultiLabelScores, per_label_accuracy, predict};
use crate::small_cnn::{FitConfig, LabelledImages, SmallCnnConfig, fit};
use crate::transforms::{IMAGENET_MEAN, IMAGENET_STD, normalize, resize_short_side, to_tensor};

/// Which network to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClassifierArch {
    /// The story world's small CNN.
    SmallCnn,
    /// The original evaluator's Inception-v3.
    Inception,
}

/// Settings of [`train_classifier`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainClassifierConfig {
    /// Characters or backgrounds.
    pub kind: LabelKind,
    /// Which network.
    pub arch: ClassifierArch,
    /// Optimizer steps.
    pub steps: usize,
    /// Batch size (the original: 32 for Inception).
    pub batch_size: usize,
    /// Learning rate (Inception: Adam 1e-4; small CNN: peak AdamW 3e-3).
    pub learning_rate: f64,
    /// Seed of initialisation, shuffling and augmentation.
    pub seed: u64,
    /// Small CNN input side.
    pub input_size: usize,
    /// Small CNN: augment training frames.
    pub augment: bool,
    /// Inception: width divisor (1 for the real network; tests use 8).
    pub width_divisor: usize,
    /// Inception: ImageNet weights to start from (torchvision layout, `.pth` or
    /// `.safetensors`; the `fc` and `AuxLogits.fc` heads are not loaded).
    pub init: Option<PathBuf>,
}

impl TrainClassifierConfig {
    /// Defaults per architecture: the small CNN trains 1,200 steps of 64 with augmentation;
    /// Inception follows the original (batch 32, Adam 1e-4).
    pub fn new(kind: LabelKind, arch: ClassifierArch) -> Self {
        match arch {
            ClassifierArch::SmallCnn => Self {
                kind,
                arch,
                steps: 1200,
                batch_size: 64,
                learning_rate: 3e-3,
                seed: 0,
                input_size: 64,
                augment: true,
                width_divisor: 1,
                init: None,
            },
            ClassifierArch::Inception => Self {
                kind,
                arch,
                steps: 2000,
                batch_size: 32,
                learning_rate: 1e-4,
                seed: 0,
                input_size: 299,
                augment: false,
                width_divisor: 1,
                init: None,
            },
        }
    }
}

/// What a training run reports (and writes into the model card).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainedClassifier {
    /// The settings.
    pub config: TrainClassifierConfig,
    /// Training frames.
    pub train_frames: usize,
    /// Test frames scored.
    pub test_frames: usize,
    /// Wall time of the optimisation, seconds.
    pub train_seconds: f64,
    /// Final training loss.
    pub final_loss: f32,
    /// Scores on the ground-truth test frames.
    pub test: MultiLabelScores,
    /// Per-label test accuracy.
    pub per_label_accuracy: Vec<(String, f64)>,
    /// Dataset name.
    pub dataset: String,
}

fn label_names(dataset: &dyn StoryDataset, kind: LabelKind) -> Vec<String> {
    match kind {
        LabelKind::Character => dataset
            .characters()
            .iter()
            .map(|c| c.name.clone())
            .collect(),
        LabelKind::Background => {
            let names = dataset.background_names();
            if names.len() == dataset.num_backgrounds() {
                names
            } else {
                (0..dataset.num_backgrounds())
                    .map(|i| format!("bg{i}"))
                    .collect()
            }
        }
    }
}

fn labels_of(dataset: &dyn StoryDataset, id: &str, kind: LabelKind, n: usize) -> Result<Vec<f32>> {
    let ann = dataset.annotation(id)?;
    Ok(match kind {
        LabelKind::Character => ann.character_labels(n),
        LabelKind::Background => ann.background_labels(n),
    })
}

/// Ground-truth frames (image 0 of each clip) and labels of a split.
fn frames_of(
    dataset: &dyn StoryDataset,
    split: Split,
    kind: LabelKind,
    n: usize,
) -> Result<(Vec<RgbImage>, Vec<Vec<f32>>)> {
    let ids = dataset.frame_ids(split);
    let mut imgs = Vec::with_capacity(ids.len());
    let mut labels = Vec::with_capacity(ids.len());
    for id in ids {
        labels.push(labels_of(dataset, id, kind, n)?);
        imgs.push(dataset.load_image(id, 0)?.image);
    }
    Ok((imgs, labels))
}

fn test_scores<B: burn::tensor::backend::Backend>(
    model: &dyn MultiLabelClassifier<B>,
    imgs: &[RgbImage],
    labels: &[Vec<f32>],
    names: &[String],
    device: &Device<B>,
) -> Result<(MultiLabelScores, Vec<(String, f64)>)> {
    let preds = predict(&model.logits(imgs, device)?, names.len());
    let truth: Vec<Vec<bool>> = labels
        .iter()
        .map(|l| l.iter().map(|&v| v > 0.5).collect())
        .collect();
    let mut c = MultiLabelCounts::default();
    c.add(&preds, &truth)?;
    let per = names
        .iter()
        .cloned()
        .zip(per_label_accuracy(&preds, &truth))
        .collect();
    Ok((c.scores(), per))
}

/// Trains a classifier on `dataset`'s training split, scores it on the test split and writes
/// the classifier folder `out` (see the module docs). `on_step(step, loss)` after each step.
pub fn train_classifier<B: AutodiffBackend>(
    dataset: &dyn StoryDataset,
    config: &TrainClassifierConfig,
    out: &Path,
    device: &Device<B>,
    on_step: &mut dyn FnMut(usize, f32),
) -> Result<TrainedClassifier> {
    let names = label_names(dataset, config.kind);
    if names.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{} has no {} labels to train a classifier on",
            dataset.name(),
            config.kind.short()
        )));
    }
    if config.steps == 0 || config.batch_size == 0 {
        return Err(Error::InvalidInput(
            "steps and batch size must be positive".into(),
        ));
    }
    let n = names.len();
    let (test_imgs, test_labels) = frames_of(dataset, Split::Test, config.kind, n)?;
    let meta = ClassifierMeta {
        kind: config.kind,
        labels: names.clone(),
    };
    let (train_frames, train_seconds, final_loss, test, per_label) = match config.arch {
        ClassifierArch::SmallCnn => {
            let mut cnn_cfg = SmallCnnConfig::new(n);
            cnn_cfg.input_size = config.input_size;
            cnn_cfg.validate().map_err(|message| Error::InvalidConfig {
                path: None,
                message,
            })?;
            let mut train = LabelledImages::new(config.input_size, n);
            for id in dataset.frame_ids(Split::Train) {
                let labels = labels_of(dataset, id, config.kind, n)?;
                train.push(&dataset.load_image(id, 0)?.image, &labels)?;
            }
            let fit_cfg = FitConfig {
                steps: config.steps,
                batch_size: config.batch_size,
                learning_rate: config.learning_rate,
                seed: config.seed,
                augment: config.augment,
            };
            let t0 = Instant::now();
            let mut last = f32::NAN;
            let model = fit(
                cnn_cfg.init::<B>(config.seed, device),
                &train,
                &fit_cfg,
                device,
                &mut |s, l| {
                    last = l;
                    on_step(s, l);
                },
            )?;
            let secs = t0.elapsed().as_secs_f64();
            let model = model.valid();
            let (test, per) = test_scores(&model, &test_imgs, &test_labels, &names, device)?;
            model.save_pretrained(out)?;
            (train.len(), secs, last, test, per)
        }
        ClassifierArch::Inception => {
            let (model, frames, secs, last) =
                fit_inception::<B>(dataset, config, n, device, on_step)?;
            let model = model.valid();
            let (test, per) = test_scores(&model, &test_imgs, &test_labels, &names, device)?;
            model.save_pretrained(out)?;
            (frames, secs, last, test, per)
        }
    };
    storygpt_core::fs::write_json_atomic(out.join("classifier.json"), &meta)?;
    let report = TrainedClassifier {
        config: config.clone(),
        train_frames,
        test_frames: test_imgs.len(),
        train_seconds,
        final_loss,
        test,
        per_label_accuracy: per_label,
        dataset: dataset.name().to_string(),
    };
    storygpt_core::fs::write_atomic(out.join("README.md"), model_card(&report).as_bytes())?;
    Ok(report)
}

/// The model card of a trained classifier.
pub fn model_card(r: &TrainedClassifier) -> String {
    let mut s = format!(
        "# {} classifier ({:?})\n\nJudge for `storygpt eval run`: predicts which {} a frame \
         shows (multi-label; present iff round(sigmoid(logit)) = 1).\n\n\
         - data: {} ({} training frames, ground truth)\n- steps: {} × batch {}, lr {}, seed {}\n\
         - training time: {:.1} s\n- final training loss: {:.4}\n\n\
         ## Ground-truth test frames ({})\n\n| Acc | F1 |\n|---|---|\n| {:.2} | {:.2} |\n\n",
        r.config.kind.short(),
        r.config.arch,
        match r.config.kind {
            LabelKind::Character => "characters",
            LabelKind::Background => "background",
        },
        r.dataset,
        r.train_frames,
        r.config.steps,
        r.config.batch_size,
        r.config.learning_rate,
        r.config.seed,
        r.train_seconds,
        r.final_loss,
        r.test_frames,
        r.test.accuracy,
        r.test.f1,
    );
    for (label, acc) in &r.per_label_accuracy {
        s += &format!("- {label}: {:.2} %\n", 100.0 * acc);
    }
    s += &format!(
        "\n## Config\n\n```json\n{}\n```\n",
        serde_json::to_string_pretty(&r.config).unwrap_or_default()
    );
    s
}

/// The original train transform: `Resize(299)` (shorter side), random horizontal flip,
/// `ToTensor`, ImageNet `Normalize`; then a centre crop to a square so frames batch (a no-op
/// on square frames).
fn inception_train_input(img: &RgbImage, flip: bool) -> crate::transforms::ChwImage {
    let mut r = crate::transforms::center_crop(&resize_short_side(img, 299), 299);
    if flip {
        image::imageops::flip_horizontal_in_place(&mut r);
    }
    let mut t = to_tensor(&r);
    normalize(&mut t, IMAGENET_MEAN, IMAGENET_STD);
    t
}

/// The Inception-v3 training loop (see the module docs). Returns the model, the number of
/// training frames, the wall time and the last loss.
fn fit_inception<B: AutodiffBackend>(
    dataset: &dyn StoryDataset,
    config: &TrainClassifierConfig,
    n: usize,
    device: &Device<B>,
    on_step: &mut dyn FnMut(usize, f32),
) -> Result<(InceptionV3<B>, usize, f64, f32)> {
    let mut cfg = InceptionConfig::classifier(n);
    cfg.width_divisor = config.width_divisor;
    B::seed(device, config.seed);
    let mut model = cfg.init::<B>(device)?;
    if let Some(init) = &config.init {
        model = load_backbone(model, init, &cfg, device)?;
    }
    let ids: Vec<String> = dataset.frame_ids(Split::Train).to_vec();
    if ids.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{} has no training frames",
            dataset.name()
        )));
    }
    let bce = BinaryCrossEntropyLossConfig::new()
        .with_logits(true)
        .init(device);
    let dropout = DropoutConfig::new(0.5).init();
    let mut optim = AdamConfig::new().with_epsilon(1e-8).init();
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut order: Vec<usize> = (0..ids.len()).collect();
    let mut cursor = order.len();
    let t0 = Instant::now();
    let mut last = f32::NAN;
    for step in 0..config.steps {
        let mut xs = Vec::with_capacity(config.batch_size);
        let mut ys = Vec::with_capacity(config.batch_size * n);
        while xs.len() < config.batch_size.min(ids.len()) {
            if cursor == order.len() {
                order.shuffle(&mut rng);
                cursor = 0;
            }
            let id = &ids[order[cursor]];
            cursor += 1;
            let ann = dataset.annotation(id)?;
            // A random image of the clip, as the original samples one from each npy.
            let k = rng.random_range(0..ann.num_images.max(1));
            let img = dataset.load_image(id, k)?.image;
            xs.push(inception_train_input(&img, rng.random_bool(0.5)));
            ys.extend(labels_of(dataset, id, config.kind, n)?);
        }
        let b = xs.len();
        let x = stack_chw::<B>(xs, device);
        let y = Tensor::<B, 2>::from_data(TensorData::new(ys, [b, n]), device).int();
        let (logits, aux) = model.forward_train(x, &dropout);
        let mut loss = bce.forward(logits, y.clone());
        if let Some(aux) = aux {
            loss = loss + bce.forward(aux, y) * 0.4;
        }
        last = loss.clone().into_scalar().elem();
        if !last.is_finite() {
            return Err(Error::NonFinite {
                what: "Inception classifier training loss".into(),
                index: vec![step],
            });
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(config.learning_rate, model, grads);
        on_step(step, last);
    }
    Ok((model, ids.len(), t0.elapsed().as_secs_f64(), last))
}

/// Loads ImageNet weights into everything but the two heads.
fn load_backbone<B: AutodiffBackend>(
    model: InceptionV3<B>,
    path: &Path,
    cfg: &InceptionConfig,
    device: &Device<B>,
) -> Result<InceptionV3<B>> {
    // Load into a network with ImageNet's 1000-way heads, then move the trunk over.
    let mut imagenet = cfg.clone();
    imagenet.num_classes = 1000;
    let pretrained = InceptionV3::<B>::from_file(path, &imagenet, device)?;
    let mut model = model;
    let heads = (model.fc, model.AuxLogits.as_mut().map(|a| a.fc.clone()));
    let mut out = pretrained;
    out.fc = heads.0;
    if let (Some(aux), Some(fc)) = (out.AuxLogits.as_mut(), heads.1) {
        aux.fc = fc;
    }
    Ok(out.with_config(cfg.clone()))
}
