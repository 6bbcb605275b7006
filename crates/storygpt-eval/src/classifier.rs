//! Multi-label frame classifiers behind one trait, [`MultiLabelClassifier`]: the original
//! evaluator's Inception-v3 and the story world's small CNN.
//!
//! A trained classifier is a folder:
//!
//! ```text
//! DIR/
//!   config.json        the network (InceptionConfig, or SmallCnnConfig with "architecture")
//!   classifier.json    what it judges: {"kind": "character" | "background", "labels": [...]}
//!   model.safetensors  weights (PyTorch layout)
//!   README.md          model card: data, steps, time, test accuracy
//! ```
//!
//! [`load_classifier`] opens either kind.

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use storygpt_core::{Error, Result};

use crate::inception::InceptionV3;
use crate::small_cnn::SmallCnn;
use crate::transforms::{resize_short_side, storygpt_eval_transform, to_tensor};

/// What a classifier reads off a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelKind {
    /// Which characters are present (Char-Acc / Char-F1).
    Character,
    /// Which background (BG-Acc / BG-F1).
    Background,
}

impl LabelKind {
    /// Parses `char`/`character` or `bg`/`background`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "char" | "character" | "characters" => Ok(LabelKind::Character),
            "bg" | "background" | "backgrounds" => Ok(LabelKind::Background),
            other => Err(Error::InvalidInput(format!(
                "unknown label kind `{other}` (expected char or bg)"
            ))),
        }
    }

    /// `char` / `bg`, as in file names and metric keys.
    pub fn short(self) -> &'static str {
        match self {
            LabelKind::Character => "char",
            LabelKind::Background => "bg",
        }
    }
}

/// `classifier.json`: the labels a classifier folder predicts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierMeta {
    /// Characters or backgrounds.
    pub kind: LabelKind,
    /// Label names in output order.
    pub labels: Vec<String>,
}

/// A multi-label classifier of frames (one logit per label; present iff
/// `round(sigmoid(logit)) == 1`, see [`crate::metrics`]).
pub trait MultiLabelClassifier<B: Backend> {
    /// Number of labels.
    fn num_labels(&self) -> usize;

    /// Logits `[n, num_labels]`, row-major, for RGB frames of any size: the classifier applies
    /// its own evaluation transform.
    fn logits(&self, images: &[RgbImage], device: &Device<B>) -> Result<Vec<f32>>;

    /// Pooled features before the head `[n, feature_dim]` (for the classifier-feature FID of
    /// the story world).
    fn features(&self, images: &[RgbImage], device: &Device<B>) -> Result<Vec<f32>>;

    /// Width of [`MultiLabelClassifier::features`].
    fn feature_dim(&self) -> usize;

    /// A one-line description ("small CNN 64² (16/32/64)", "Inception-v3 (torchvision)").
    fn describe(&self) -> String;
}

fn check_nonempty(images: &[RgbImage]) -> Result<()> {
    if let Some(i) = images
        .iter()
        .position(|im| im.width() == 0 || im.height() == 0)
    {
        return Err(Error::InvalidInput(format!(
            "image {i} has a zero side ({}x{})",
            images[i].width(),
            images[i].height()
        )));
    }
    Ok(())
}

/// Stacks CHW images of one size into `[n, 3, h, w]`.
pub(crate) fn stack_chw<B: Backend>(
    images: Vec<crate::transforms::ChwImage>,
    device: &Device<B>,
) -> Tensor<B, 4> {
    let n = images.len();
    let (h, w) = images.first().map_or((0, 0), |i| (i.height, i.width));
    let mut data = Vec::with_capacity(n * 3 * h * w);
    for im in images {
        data.extend(im.data);
    }
    Tensor::from_data(TensorData::new(data, [n, 3, h, w]), device)
}

pub(crate) fn to_vec(t: Tensor<impl Backend, 2>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap_or_default()
}

/// Frames are classified in chunks of this many images.
const CHUNK: usize = 32;

impl<B: Backend> MultiLabelClassifier<B> for InceptionV3<B> {
    fn num_labels(&self) -> usize {
        self.num_classes()
    }

    /// The original evaluator's transform: `Resize(299)`, `CenterCrop(299)`, `ToTensor`,
    /// ImageNet `Normalize` (then `transform_input` inside the network).
    fn logits(&self, images: &[RgbImage], device: &Device<B>) -> Result<Vec<f32>> {
        check_nonempty(images)?;
        let mut out = Vec::new();
        for chunk in images.chunks(CHUNK) {
            let x = stack_chw(
                chunk
                    .iter()
                    .map(|im| storygpt_eval_transform(im, 299))
                    .collect(),
                device,
            );
            out.extend(to_vec(self.forward(x).0));
        }
        Ok(out)
    }

    fn features(&self, images: &[RgbImage], device: &Device<B>) -> Result<Vec<f32>> {
        check_nonempty(images)?;
        let mut out = Vec::new();
        for chunk in images.chunks(CHUNK) {
            let x = stack_chw(
                chunk
                    .iter()
                    .map(|im| storygpt_eval_transform(im, 299))
                    .collect(),
                device,
            );
            out.extend(to_vec(self.pool_features(x)));
        }
        Ok(out)
    }

    fn feature_dim(&self) -> usize {
        self.fc.weight.dims()[0]
    }

    fn describe(&self) -> String {
        format!(
            "Inception-v3 (torchvision layout, {} labels, pool {})",
            self.num_classes(),
            self.fc.weight.dims()[0]
        )
    }
}

/// The small CNN's input: Pillow-bilinear resize of the whole frame to `size²` (antialiased),
/// bytes / 255.
pub fn small_cnn_input(img: &RgbImage, size: usize) -> crate::transforms::ChwImage {
    use storygpt_models::clip::image_processor::{PilFilter, resize_pil};
    let (w, h) = (img.width() as usize, img.height() as usize);
    if (w, h) == (size, size) {
        return to_tensor(img);
    }
    // Square frames (the story world) are resized directly; others keep the original
    // evaluator's shorter-side resize and centre crop.
    if w == h {
        to_tensor(&resize_pil(img, size, size, PilFilter::Bilinear))
    } else {
        to_tensor(&crate::transforms::center_crop(
            &resize_short_side(img, size),
            size,
        ))
    }
}

impl<B: Backend> MultiLabelClassifier<B> for SmallCnn<B> {
    fn num_labels(&self) -> usize {
        self.num_labels()
    }

    fn logits(&self, images: &[RgbImage], device: &Device<B>) -> Result<Vec<f32>> {
        check_nonempty(images)?;
        let s = self.input_size();
        let mut out = Vec::new();
        for chunk in images.chunks(4 * CHUNK) {
            let x = stack_chw(
                chunk.iter().map(|im| small_cnn_input(im, s)).collect(),
                device,
            );
            out.extend(to_vec(self.forward(x)));
        }
        Ok(out)
    }

    fn features(&self, images: &[RgbImage], device: &Device<B>) -> Result<Vec<f32>> {
        check_nonempty(images)?;
        let s = self.input_size();
        let mut out = Vec::new();
        for chunk in images.chunks(4 * CHUNK) {
            let x = stack_chw(
                chunk.iter().map(|im| small_cnn_input(im, s)).collect(),
                device,
            );
            out.extend(to_vec(self.features(x)));
        }
        Ok(out)
    }

    fn feature_dim(&self) -> usize {
        self.feature_dim()
    }

    fn describe(&self) -> String {
        format!(
            "small CNN ({}², {} labels)",
            self.input_size(),
            self.num_labels()
        )
    }
}

/// A classifier folder, loaded (see the module docs).
pub struct LoadedClassifier<B: Backend> {
    /// The network.
    pub model: Box<dyn MultiLabelClassifier<B>>,
    /// Its labels.
    pub meta: ClassifierMeta,
}

impl<B: Backend> std::fmt::Debug for LoadedClassifier<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedClassifier")
            .field("model", &self.model.describe())
            .field("meta", &self.meta)
            .finish()
    }
}

#[derive(Deserialize)]
struct ArchitectureProbe {
    architecture: Option<String>,
}

/// Opens a classifier folder of either architecture.
pub fn load_classifier<B: Backend + 'static>(
    dir: impl AsRef<Path>,
    device: &Device<B>,
) -> Result<LoadedClassifier<B>> {
    let dir = dir.as_ref();
    let meta: ClassifierMeta = storygpt_core::config::read_json(dir.join("classifier.json"))?;
    let probe: ArchitectureProbe = storygpt_core::config::read_json(dir.join("config.json"))?;
    let model: Box<dyn MultiLabelClassifier<B>> = match probe.architecture.as_deref() {
        Some("inception_v3") => Box::new(InceptionV3::<B>::from_pretrained(dir, device)?),
        Some("small_cnn") => Box::new(SmallCnn::<B>::from_pretrained(dir, device)?),
        other => {
            return Err(Error::InvalidConfig {
                path: Some(dir.join("config.json")),
                message: format!(
                    "architecture {other:?} is not a classifier (expected inception_v3 or small_cnn)"
                ),
            });
        }
    };
    if model.num_labels() != meta.labels.len() {
        return Err(Error::InvalidConfig {
            path: Some(dir.join("classifier.json")),
            message: format!(
                "{} label names for a network with {} outputs",
                meta.labels.len(),
                model.num_labels()
            ),
        });
    }
    Ok(LoadedClassifier { model, meta })
}
