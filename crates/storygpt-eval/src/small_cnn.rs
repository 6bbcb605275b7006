//! A small, fast multi-label CNN classifier for the story world: the judge that reads
//! characters (or the background) off frames when Inception-v3 weights are not at hand.
//!
//! Four 3×3 convolutions (three with stride 2) with ReLU (batch norm on the two 8×8 stages,
//! where it is cheap and steadies training), then the concatenation of global
//! average and global max pooling (max pooling answers "is this colour / shape anywhere?"),
//! then one linear head: one logit per label. Trained with binary cross-entropy; a label is
//! predicted present when `round(sigmoid(logit)) == 1`, as the original evaluator rounds
//! ([`crate::metrics::predict_label`]).
//!
//! Training can augment frames (blur, noise, colour gain and offset, horizontal flips) so the
//! judge reads generated frames, which are blurrier than the ground truth, as well.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::BinaryCrossEntropyLossConfig;
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::activation::relu;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use image::RgbImage;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use storygpt_core::weights::{TensorLayout, WeightLoader};
use storygpt_core::{Error, Result};
use storygpt_data::{Split, StoryDataset};

use crate::metrics::predict_label;

/// Shape of a [`SmallCnn`]; serialised as its `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SmallCnnConfig {
    /// Always `"small_cnn"`.
    #[serde(default = "small_cnn_name")]
    pub architecture: String,
    /// Input side: frames are resized to `input_size²`.
    pub input_size: usize,
    /// Channels of the convolution stages.
    pub channels: [usize; 3],
    /// Number of labels (7 characters, or 10 backgrounds).
    pub num_labels: usize,
}

impl SmallCnnConfig {
    /// A classifier of `num_labels` labels at 64×64 with 16/32/64 channels.
    pub fn new(num_labels: usize) -> Self {
        Self {
            architecture: small_cnn_name(),
            input_size: 64,
            channels: [16, 32, 64],
            num_labels,
        }
    }

    /// Checks the sizes; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.architecture != "small_cnn" {
            return Err(format!(
                "architecture is `{}`, expected `small_cnn`",
                self.architecture
            ));
        }
        if self.input_size < 8 || !self.input_size.is_multiple_of(8) {
            return Err(format!(
                "input_size ({}) must be a positive multiple of 8",
                self.input_size
            ));
        }
        if self.channels.contains(&0) || self.num_labels == 0 {
            return Err("channels and num_labels must be positive".into());
        }
        Ok(())
    }

    /// A freshly initialised model, from `seed` (the same seed gives the same weights).
    pub fn init<B: Backend>(&self, seed: u64, device: &B::Device) -> SmallCnn<B> {
        B::seed(device, seed);
        let [c1, c2, c3] = self.channels;
        let conv = |i: usize, o: usize, stride: usize| {
            Conv2dConfig::new([i, o], [3, 3])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        SmallCnn {
            conv1: conv(3, c1, 2),
            conv2: conv(c1, c2, 2),
            conv3: conv(c2, c3, 2),
            bn3: BatchNormConfig::new(c3).init(device),
            conv4: conv(c3, c3, 1),
            bn4: BatchNormConfig::new(c3).init(device),
            head: LinearConfig::new(2 * c3, self.num_labels).init(device),
            input_size: self.input_size,
        }
    }
}

fn small_cnn_name() -> String {
    "small_cnn".into()
}

/// The classifier (see the module docs).
#[derive(Module, Debug)]
pub struct SmallCnn<B: Backend> {
    conv1: Conv2d<B>,
    conv2: Conv2d<B>,
    conv3: Conv2d<B>,
    bn3: BatchNorm<B>,
    conv4: Conv2d<B>,
    bn4: BatchNorm<B>,
    head: Linear<B>,
    #[module(skip)]
    input_size: usize,
}

impl<B: Backend> SmallCnn<B> {
    /// Loads `dir/config.json` and `dir/model.safetensors`.
    pub fn from_pretrained(dir: impl AsRef<std::path::Path>, device: &B::Device) -> Result<Self> {
        let dir = dir.as_ref();
        let path = dir.join("config.json");
        let cfg: SmallCnnConfig = storygpt_core::config::read_json(&path)?;
        cfg.validate().map_err(|message| Error::InvalidConfig {
            path: Some(path),
            message,
        })?;
        WeightLoader::new().load_dir(cfg.init::<B>(0, device), dir, "model")
    }

    /// The config this model was built from.
    pub fn config(&self) -> SmallCnnConfig {
        SmallCnnConfig {
            architecture: small_cnn_name(),
            input_size: self.input_size,
            channels: [
                self.conv1.weight.dims()[0],
                self.conv2.weight.dims()[0],
                self.conv3.weight.dims()[0],
            ],
            num_labels: self.num_labels(),
        }
    }

    /// Writes `dir/config.json` and `dir/model.safetensors` (PyTorch layout), atomically.
    pub fn save_pretrained(&self, dir: impl AsRef<std::path::Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        storygpt_core::weights::save_file(
            self,
            &dir.join("model.safetensors"),
            TensorLayout::PyTorch,
        )?;
        storygpt_core::fs::write_json_atomic(dir.join("config.json"), &self.config())
    }

    /// Input side the model was trained at.
    pub fn input_size(&self) -> usize {
        self.input_size
    }

    /// Number of labels.
    pub fn num_labels(&self) -> usize {
        self.head.weight.dims()[1]
    }

    /// Width of [`SmallCnn::features`].
    pub fn feature_dim(&self) -> usize {
        self.head.weight.dims()[0]
    }

    /// `[B, 3, S, S]` pixels in `[0, 1]` → `[B, num_labels]` logits.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.head.forward(self.features(x))
    }

    /// The pooled features the head reads: `[B, 2·c3]` (average and max pooling).
    pub fn features(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let x = x * 2.0 - 1.0;
        let x = relu(self.conv1.forward(x));
        let x = relu(self.conv2.forward(x));
        let x = relu(self.bn3.forward(self.conv3.forward(x)));
        let x = relu(self.bn4.forward(self.conv4.forward(x)));
        let [b, c, h, w] = x.dims();
        let flat = x.reshape([b, c, h * w]);
        let avg = flat.clone().mean_dim(2).reshape([b, c]);
        let max = flat.max_dim(2).reshape([b, c]);
        Tensor::cat(vec![avg, max], 1)
    }

    /// Presence predictions (`round(sigmoid(logit)) == 1`) for `[B, 3, S, S]` pixels.
    pub fn predict(&self, x: Tensor<B, 4>) -> Vec<Vec<bool>> {
        let logits = self.forward(x);
        let [b, l] = logits.dims();
        let v: Vec<f32> = logits
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap_or_default();
        (0..b)
            .map(|i| {
                v[i * l..(i + 1) * l]
                    .iter()
                    .map(|&z| predict_label(z))
                    .collect()
            })
            .collect()
    }
}

/// Frames and their multi-hot labels, held in memory at the classifier's input size.
#[derive(Debug, Clone)]
pub struct LabelledImages {
    /// `N * 3 * S * S` pixels in `[0, 1]`, channel-first.
    pub pixels: Vec<f32>,
    /// `N * L` labels in `{0, 1}`.
    pub labels: Vec<f32>,
    /// Image side.
    pub size: usize,
    /// Labels per image.
    pub num_labels: usize,
}

impl LabelledImages {
    /// An empty set for `size²` images with `num_labels` labels.
    pub fn new(size: usize, num_labels: usize) -> Self {
        Self {
            pixels: Vec::new(),
            labels: Vec::new(),
            size,
            num_labels,
        }
    }

    /// The ground-truth frames of a split (image 0 of each clip) with their character
    /// (`backgrounds == false`) or background labels.
    pub fn from_dataset(
        dataset: &dyn StoryDataset,
        split: Split,
        size: usize,
        backgrounds: bool,
    ) -> Result<Self> {
        let n = if backgrounds {
            dataset.num_backgrounds()
        } else {
            dataset.characters().len()
        };
        if n == 0 {
            return Err(Error::InvalidInput(format!(
                "{} has no {} labels",
                dataset.name(),
                if backgrounds {
                    "background"
                } else {
                    "character"
                }
            )));
        }
        let mut out = Self::new(size, n);
        for id in dataset.frame_ids(split) {
            let ann = dataset.annotation(id)?;
            let labels = if backgrounds {
                ann.background_labels(n)
            } else {
                ann.character_labels(n)
            };
            out.push(&dataset.load_image(id, 0)?.image, &labels)?;
        }
        Ok(out)
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len() / self.num_labels.max(1)
    }

    /// Whether there is no image.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds an image (resized to `size²` as [`crate::classifier::small_cnn_input`] does) with
    /// its multi-hot labels.
    pub fn push(&mut self, image: &RgbImage, labels: &[f32]) -> Result<()> {
        if labels.len() != self.num_labels {
            return Err(Error::InvalidInput(format!(
                "{} labels for a classifier of {}",
                labels.len(),
                self.num_labels
            )));
        }
        // The same transform the classifier applies at evaluation.
        self.pixels
            .extend(crate::classifier::small_cnn_input(image, self.size).data);
        self.labels.extend_from_slice(labels);
        Ok(())
    }

    /// Images `idx` as a `[len, 3, S, S]` tensor and `[len, L]` labels.
    pub fn batch<B: Backend>(
        &self,
        idx: &[usize],
        device: &B::Device,
    ) -> (Tensor<B, 4>, Tensor<B, 2>) {
        let (s, l) = (self.size, self.num_labels);
        let per = 3 * s * s;
        let mut px = Vec::with_capacity(idx.len() * per);
        let mut lb = Vec::with_capacity(idx.len() * l);
        for &i in idx {
            px.extend_from_slice(&self.pixels[i * per..(i + 1) * per]);
            lb.extend_from_slice(&self.labels[i * l..(i + 1) * l]);
        }
        (
            Tensor::from_data(TensorData::new(px, [idx.len(), 3, s, s]), device),
            Tensor::from_data(TensorData::new(lb, [idx.len(), l]), device),
        )
    }
}

impl LabelledImages {
    /// Like [`LabelledImages::batch`], with every image passed through [`augment`].
    pub fn augmented_batch<B: Backend>(
        &self,
        idx: &[usize],
        rng: &mut ChaCha8Rng,
        device: &B::Device,
    ) -> (Tensor<B, 4>, Tensor<B, 2>) {
        let (s, l) = (self.size, self.num_labels);
        let per = 3 * s * s;
        let mut px = Vec::with_capacity(idx.len() * per);
        let mut lb = Vec::with_capacity(idx.len() * l);
        for &i in idx {
            let start = px.len();
            px.extend_from_slice(&self.pixels[i * per..(i + 1) * per]);
            augment(&mut px[start..], s, rng);
            lb.extend_from_slice(&self.labels[i * l..(i + 1) * l]);
        }
        (
            Tensor::from_data(TensorData::new(px, [idx.len(), 3, s, s]), device),
            Tensor::from_data(TensorData::new(lb, [idx.len(), l]), device),
        )
    }
}

/// Training settings for [`fit`].
#[derive(Debug, Clone, PartialEq)]
pub struct FitConfig {
    /// Optimizer steps.
    pub steps: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Peak AdamW learning rate (decayed linearly to zero).
    pub learning_rate: f64,
    /// Seed of the initialisation-independent shuffling and augmentation.
    pub seed: u64,
    /// Augment training frames ([`augment`]): blur, noise, colour gain/offset, flips.
    pub augment: bool,
}

impl Default for FitConfig {
    fn default() -> Self {
        Self {
            steps: 300,
            batch_size: 64,
            learning_rate: 3e-3,
            seed: 0,
            augment: false,
        }
    }
}

/// Augments one `[3, s, s]` image in place, so the judge tolerates generated frames: with
/// p = 0.5 a 3×3 box blur; Gaussian noise of σ ∈ [0, 0.04]; per-channel gain ∈ [0.9, 1.1]
/// and offset ∈ [−0.05, 0.05]; a horizontal flip with p = 0.5 (labels do not depend on
/// facing). Values are clamped to `[0, 1]`.
pub fn augment(px: &mut [f32], s: usize, rng: &mut ChaCha8Rng) {
    use rand::Rng;
    let n = s * s;
    if rng.random_bool(0.5) {
        let src = px.to_vec();
        for c in 0..3 {
            for y in 0..s {
                for x in 0..s {
                    let (mut acc, mut cnt) = (0.0f32, 0.0f32);
                    for dy in y.saturating_sub(1)..=(y + 1).min(s - 1) {
                        for dx in x.saturating_sub(1)..=(x + 1).min(s - 1) {
                            acc += src[c * n + dy * s + dx];
                            cnt += 1.0;
                        }
                    }
                    px[c * n + y * s + x] = acc / cnt;
                }
            }
        }
    }
    if rng.random_bool(0.5) {
        for c in 0..3 {
            for y in 0..s {
                px[c * n + y * s..c * n + (y + 1) * s].reverse();
            }
        }
    }
    let sigma: f32 = rng.random_range(0.0..0.04);
    for c in 0..3 {
        let gain: f32 = rng.random_range(0.9..1.1);
        let offset: f32 = rng.random_range(-0.05..0.05);
        for v in &mut px[c * n..(c + 1) * n] {
            // Box–Muller-free noise: the sum of 4 uniforms, rescaled to unit variance.
            let u: f32 = (0..4).map(|_| rng.random::<f32>()).sum::<f32>() - 2.0;
            *v = (*v * gain + offset + sigma * u * 1.732).clamp(0.0, 1.0);
        }
    }
}

/// Trains `model` on `data` with BCE and AdamW; `on_step(step, loss)` is called after each
/// step. Returns the trained model.
pub fn fit<B: AutodiffBackend>(
    mut model: SmallCnn<B>,
    data: &LabelledImages,
    config: &FitConfig,
    device: &B::Device,
    on_step: &mut dyn FnMut(usize, f32),
) -> Result<SmallCnn<B>> {
    if data.is_empty() {
        return Err(Error::InvalidInput("no training images".into()));
    }
    let mut optim = AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(1e-4)
        .init();
    let bce = BinaryCrossEntropyLossConfig::new()
        .with_logits(true)
        .init(device);
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut order: Vec<usize> = (0..data.len()).collect();
    let mut cursor = order.len();
    for step in 0..config.steps {
        let mut idx = Vec::with_capacity(config.batch_size);
        while idx.len() < config.batch_size.min(data.len()) {
            if cursor == order.len() {
                order.shuffle(&mut rng);
                cursor = 0;
            }
            idx.push(order[cursor]);
            cursor += 1;
        }
        let (x, y) = if config.augment {
            data.augmented_batch::<B>(&idx, &mut rng, device)
        } else {
            data.batch::<B>(&idx, device)
        };
        let logits = model.forward(x);
        let loss = bce.forward(logits, y.int());
        let value: f32 = loss.clone().into_scalar().elem();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        // Linear decay to zero: the last steps settle the decision boundaries.
        let lr = config.learning_rate * (1.0 - step as f64 / config.steps as f64);
        model = optim.step(lr, model, grads);
        on_step(step, value);
    }
    Ok(model)
}

/// Per-label and exact-match accuracy of `model` on `data`.
#[derive(Debug, Clone, PartialEq)]
pub struct Accuracy {
    /// Fraction of images whose label is predicted right, per label.
    pub per_label: Vec<f64>,
    /// Fraction of images whose whole multi-hot vector is right.
    pub exact: f64,
}

/// Evaluates `model` on `data` in batches of 128.
pub fn accuracy<B: Backend>(
    model: &SmallCnn<B>,
    data: &LabelledImages,
    device: &B::Device,
) -> Accuracy {
    let l = data.num_labels;
    let mut right = vec![0usize; l];
    let mut exact = 0usize;
    let all: Vec<usize> = (0..data.len()).collect();
    for chunk in all.chunks(128) {
        let (x, _) = data.batch::<B>(chunk, device);
        for (pred, &i) in model.predict(x).iter().zip(chunk) {
            let truth = &data.labels[i * l..(i + 1) * l];
            let mut all_right = true;
            for (j, (&p, &t)) in pred.iter().zip(truth).enumerate() {
                if p == (t > 0.5) {
                    right[j] += 1;
                } else {
                    all_right = false;
                }
            }
            exact += usize::from(all_right);
        }
    }
    let n = data.len().max(1) as f64;
    Accuracy {
        per_label: right.iter().map(|&r| r as f64 / n).collect(),
        exact: exact as f64 / n,
    }
}
